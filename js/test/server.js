// A real `tokenwire serve` for the client's tests (not a test file itself): the repository's Python package, SSE
// only, on a free port of 127.0.0.1, stopped when the test ends. Python is TOKENWIRE_PYTHON, else the venv of
// `make install` (.venv), else python3; it imports tokenwire from this checkout's python/.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import net from "node:net";
import { fileURLToPath } from "node:url";

import { SseParser } from "../src/client.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/**
 * Starts the server for test `t` (stopped by `t.after`); its base URL, such as "http://127.0.0.1:41234".
 * @param {import("node:test").TestContext} t
 * @param {string[]} [args] more `tokenwire serve` options
 * @returns {Promise<string>}
 */
export async function serve(t, args = []) {
  const venv = `${ROOT}.venv/bin/python`;
  const python = process.env.TOKENWIRE_PYTHON || (existsSync(venv) ? venv : "python3");
  const path = [`${ROOT}python`, process.env.PYTHONPATH].filter(Boolean).join(":");
  const child = spawn(
    python,
    ["-m", "tokenwire", "serve", "--port", "0", "--no-webtransport", "--drain-timeout", "0", ...args],
    { env: { ...process.env, PYTHONPATH: path }, stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise((resolve) => child.once("exit", resolve));
  t.after(async () => {
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(killer);
  });
  let output = "";
  return await new Promise((resolve, reject) => {
    const look = (/** @type {Buffer} */ chunk) => {
      output += chunk;
      const m = /serving SSE on (http:\/\/\S+)/.exec(output);
      if (m) resolve(m[1]);
    };
    child.stdout.on("data", look);
    child.stderr.on("data", look);
    child.once("error", reject);
    exited.then((code) => reject(new Error(`${python} -m tokenwire serve exited (${code}): ${output} (run make install)`)));
  });
}

/**
 * A clean replay of stream `id` from seq 0 (GET without Last-Event-ID): its tokens and its final event.
 * @param {string} base
 * @param {string} id
 */
export async function replay(base, id) {
  const res = await fetch(`${base}/v1/streams/${id}/events`);
  assert.equal(res.status, 200);
  const events = new SseParser().feed(new Uint8Array(await res.arrayBuffer()));
  const last = events[events.length - 1];
  assert.ok(last.event == "done" || last.event == "error", `the replay ends with ${last.event}`);
  return { tokens: events.filter((e) => e.event == "token").map((e) => e.data), final: JSON.parse(last.data) };
}

/**
 * A counter of the server's /metrics, such as "tokenwire_streams_started_total", summed over its labels.
 * @param {string} base
 * @param {string} name
 */
export async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  let sum = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)$`, "gm"))) sum += Number(m[1]);
  return sum;
}

/**
 * A TCP proxy to `base` for test `t`: a network a test can break (`down()`: every connection through it cut, new ones
 * closed at once), mend (`up()`), or make lose every connection open now without a reset (`silence()`: their bytes
 * stop flowing both ways and nobody is told, as when a phone changes networks; new connections work).
 * @param {import("node:test").TestContext} t
 * @param {string} base
 */
export async function proxy(t, base) {
  const target = new URL(base);
  let open = true;
  /** @type {Set<net.Socket>} */
  const sockets = new Set();
  /** @type {Set<() => void>} */
  const silencers = new Set();
  const server = net.createServer((near) => {
    if (!open) return near.destroy();
    const far = net.connect(Number(target.port), target.hostname);
    for (const s of [near, far]) {
      sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        sockets.delete(s);
        near.destroy();
        far.destroy();
      });
    }
    near.pipe(far).pipe(near);
    silencers.add(() => {
      near.unpipe(far);
      far.unpipe(near);
      near.pause();
      far.pause();
    });
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve(null)));
  t.after(() => {
    for (const s of sockets) s.destroy();
    server.close();
  });
  const { port } = /** @type {net.AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${port}`,
    down() {
      open = false;
      for (const s of sockets) s.destroy();
    },
    up() {
      open = true;
    },
    silence() {
      for (const silence of silencers) silence();
      silencers.clear();
    },
  };
}
