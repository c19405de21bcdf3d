// The client where Node 18's globals are all there is: no `crypto` and no `CustomEvent` (both became globals only in
// Node 19). docs/client.md runs it in Node 18 or later, and package.json's engines says >= 18. Against a real
// `tokenwire serve`, over SSE (Node has no WebTransport).
import assert from "node:assert/strict";
import { test } from "node:test";

delete (/** @type {any} */ (globalThis).crypto);
delete (/** @type {any} */ (globalThis).CustomEvent);
// Loaded once the globals are gone, as on Node 18.
const { TokenwireClient } = await import("../src/client.js");
const { metric, replay, serve } = await import("./server.js");

test("docs/client.md's Node example runs on Node 18's globals, each token once", async (t) => {
  assert.equal(typeof (/** @type {any} */ (globalThis).CustomEvent), "undefined");
  const base = await serve(t);
  const client = new TokenwireClient(base);
  const stream = await client.generate({ prompt: "Hello", max_tokens: 32, tokens_per_s: 1000 });
  /** @type {string[]} */
  const events = [];
  stream.addEventListener("token", (e) => events.push(/** @type {any} */ (e).detail.token));
  /** @type {string[]} */
  const tokens = [];
  for await (const token of stream) tokens.push(token);

  const clean = await replay(base, stream.id);
  assert.equal(tokens.length, 32);
  assert.deepEqual(tokens, clean.tokens);
  assert.deepEqual(events, tokens);
  assert.equal(stream.text, tokens.join(""));
  assert.deepEqual(stream.final, clean.final);
  assert.equal(stream.transport, "sse");
  assert.equal(await metric(base, "tokenwire_streams_started_total"), 1);
});
