// Generates types/client.d.ts from the JSDoc of src/client.js (tsconfig.types.json), without the members
// tagged @internal (tsc's stripInternal does not apply to JavaScript sources).
// Usage: node scripts/types.mjs          writes types/client.d.ts
//        node scripts/types.mjs --check  exits 1 when the committed file is not what the source gives
import { readFile, writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import ts from "typescript";

const root = fileURLToPath(new URL("..", import.meta.url));
const target = `${root}types/client.d.ts`;

const config = ts.getParsedCommandLineOfConfigFile(`${root}tsconfig.types.json`, {}, {
  ...ts.sys,
  onUnRecoverableConfigFileDiagnostic: (d) => fail([d]),
});
const program = ts.createProgram(config.fileNames, config.options);
let emitted = "";
const result = program.emit(undefined, (name, text) => {
  if (name.endsWith("client.d.ts")) emitted = text;
});
const problems = [...ts.getPreEmitDiagnostics(program), ...result.diagnostics];
if (problems.length || !emitted) fail(problems);

// A member is its JSDoc block and the one line tsc prints for it; drop those whose block says @internal.
const text = emitted.replace(/\n( *)\/\*\*(?:(?!\*\/)[\s\S])*@internal[\s\S]*?\*\/\n\1[^\n]*;(?=\n)/g, "");
if (/\b_[a-zA-Z]\w*[(:?]/.test(text.replace(/\/\*\*[\s\S]*?\*\//g, ""))) fail([], "an underscore member is not tagged @internal");

if (process.argv.includes("--check")) {
  const current = await readFile(target, "utf8").catch(() => "");
  if (current !== text) {
    console.error("types/client.d.ts is not current: run `node scripts/types.mjs` in js/ and commit it");
    process.exit(1);
  }
} else {
  await writeFile(target, text);
}

/** @param {readonly ts.Diagnostic[]} diagnostics @param {string} [message] @returns {never} */
function fail(diagnostics, message = "tsc failed") {
  const host = { getCanonicalFileName: (f) => f, getCurrentDirectory: () => root, getNewLine: () => "\n" };
  console.error(ts.formatDiagnostics(diagnostics, host) + message);
  process.exit(1);
}
