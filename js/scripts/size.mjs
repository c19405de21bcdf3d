// Prints the client's size: raw, minified (esbuild), and minified + gzipped (level 9) bytes.
// Usage: node scripts/size.mjs [--max-gzip BYTES]   (exits 1 when the gzipped size is over BYTES)
import { readFile } from "node:fs/promises";
import { gzipSync } from "node:zlib";
import { transform } from "esbuild";

const source = await readFile(new URL("../src/client.js", import.meta.url), "utf8");
const { code } = await transform(source, { minify: true, format: "esm", target: "es2022" });
const sizes = {
  raw: Buffer.byteLength(source),
  minified: Buffer.byteLength(code),
  gzipped: gzipSync(code, { level: 9 }).length,
};
for (const [name, bytes] of Object.entries(sizes)) console.log(`${name.padEnd(9)} ${String(bytes).padStart(7)} bytes`);
const at = process.argv.indexOf("--max-gzip");
if (at > 0 && sizes.gzipped > Number(process.argv[at + 1])) {
  console.error(`minified + gzipped: ${sizes.gzipped} bytes, over the ${process.argv[at + 1]} allowed`);
  process.exit(1);
}
