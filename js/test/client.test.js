// TokenwireClient over SSE against a real `tokenwire serve` (Node has fetch and no WebTransport): the failure paths
// a page meets, each checked against a clean replay of the stream and the server's counters.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ConnectError, StreamNotFound, TokenwireClient, TokenwireError } from "../src/client.js";
import { metric, proxy, replay, serve } from "./server.js";

/** Resolves once every promise callback queued so far has run, and the ones they queued: before any timer or I/O. */
const settled = () => new Promise((resolve) => setImmediate(resolve));

/**
 * Reads `stream` in the background; `drop` after that many tokens (cuts the connection: the client waits its backoff).
 * @param {import("../src/client.js").TokenStream} stream
 * @param {number} [drop]
 */
function read(stream, drop = 0) {
  const run = { tokens: /** @type {string[]} */ ([]), ended: false, error: /** @type {unknown} */ (null) };
  const done = (async () => {
    try {
      for await (const token of stream) {
        run.tokens.push(token);
        if (run.tokens.length == drop) stream.drop();
      }
    } catch (e) {
      run.error = e;
    }
    run.ended = true;
  })();
  return { run, done };
}

/** @param {EventTarget} target @param {string} type */
const once = (target, type) => new Promise((resolve) => target.addEventListener(type, resolve, { once: true }));

test("abort() while the client waits to reconnect ends the loop at once, and cancels", async (t) => {
  const base = await serve(t);
  const client = new TokenwireClient(base, { transport: "sse" });
  const stream = await client.generate({ prompt: "abort in the backoff", max_tokens: 400, tokens_per_s: 40 });
  const waiting = once(stream, "reconnect"); // the drop's backoff has begun (500-1000 ms after `retry: 1000`)
  const { run, done } = read(stream, 3);
  await waiting;
  const aborted = stream.abort();
  await settled();
  assert.equal(run.ended, true, "the loop still waits for the backoff to end");
  await aborted;
  await done;
  assert.equal(run.error, null);
  assert.deepEqual(stream.final, { reason: "cancelled" });
  const clean = await replay(base, stream.id);
  assert.equal(clean.final.reason, "cancelled");
  assert.deepEqual(run.tokens, clean.tokens.slice(0, run.tokens.length));
});

test("client.close() while a stream waits to reconnect ends its loop at once; iterating again resumes it", async (t) => {
  const base = await serve(t);
  const client = new TokenwireClient(base, { transport: "sse" });
  const stream = await client.generate({ prompt: "close in the backoff", max_tokens: 40, tokens_per_s: 40 });
  const waiting = once(stream, "reconnect");
  const first = read(stream, 3);
  await waiting;
  client.close();
  await settled();
  assert.equal(first.run.ended, true, "the loop still waits for the backoff to end");
  await first.done;
  const rest = read(stream);
  await rest.done;
  assert.equal(first.run.error, null);
  assert.equal(rest.run.error, null);
  const clean = await replay(base, stream.id);
  assert.deepEqual([...first.run.tokens, ...rest.run.tokens], clean.tokens);
  assert.equal(stream.final?.reason, "length");
});

test("abort() that cannot reach the server rejects with ConnectError, and a later abort() cancels", async (t) => {
  const base = await serve(t);
  const network = await proxy(t, base);
  const client = new TokenwireClient(network.url, { transport: "sse" });
  const stream = await client.generate({ prompt: "abort offline", max_tokens: 100, tokens_per_s: 40 });
  const first = once(stream, "token");
  const { run, done } = read(stream);
  await first;
  const waiting = once(stream, "reconnect");
  network.down();
  await waiting;
  await assert.rejects(stream.abort(), (e) => e instanceof ConnectError && e.cause instanceof Error);
  await done;
  assert.equal(run.error, null);
  network.up();
  await stream.abort(); // the cancel that did not arrive is sent now
  const clean = await replay(base, stream.id);
  assert.equal(clean.final.reason, "cancelled");
  assert.ok(clean.tokens.length < 100);
  assert.deepEqual(run.tokens, clean.tokens.slice(0, run.tokens.length));
});

test('transport "webtransport" where there is none (Node): ConnectError at once, and never SSE', async (t) => {
  const base = await serve(t);
  const started = await new TokenwireClient(base, { transport: "sse" }).generate({ prompt: "over SSE", max_tokens: 5 });
  for await (const _ of started);
  const client = new TokenwireClient(base, { transport: "webtransport", maxRetries: 2 });
  const noWebTransport = (/** @type {unknown} */ e) => e instanceof ConnectError && /no WebTransport/.test(e.message);
  // Nothing to wait for and retry: this runtime has no WebTransport.
  await assert.rejects(client.generate({ prompt: "over WebTransport", max_tokens: 5 }), noWebTransport);
  const stream = client.resume(`${started.id}:${started.epoch}:0`);
  /** @type {unknown[]} */
  const reconnects = [];
  stream.addEventListener("reconnect", (e) => reconnects.push(e.detail));
  /** @type {string[]} */
  const tokens = [];
  await assert.rejects(async () => {
    for await (const token of stream) tokens.push(token);
  }, noWebTransport);
  assert.deepEqual(tokens, []);
  assert.deepEqual(reconnects, []);
  assert.equal(stream.transport, "webtransport");
  assert.equal(await metric(base, "tokenwire_streams_started_total"), 1);
  assert.equal(await metric(base, "tokenwire_resumes_total"), 0);
});

test("generate() with a body that is not JSON throws its TypeError at once: nothing is sent or retried", async (t) => {
  const base = await serve(t);
  const client = new TokenwireClient(base, { transport: "sse", maxRetries: 2 });
  await assert.rejects(client.generate({ prompt: "a BigInt", max_tokens: 5, seed: 1n }), TypeError);
  assert.equal(await metric(base, "tokenwire_streams_started_total"), 0);
});

test("an SSE connection that goes silent without a reset is cut after idleTimeoutMs and resumed", async (t) => {
  const base = await serve(t);
  const network = await proxy(t, base);
  const client = new TokenwireClient(network.url, { transport: "sse", idleTimeoutMs: 300 });
  const stream = await client.generate({ prompt: "silent network", max_tokens: 40, tokens_per_s: 100 });
  /** @type {unknown[]} */
  const reconnects = [];
  stream.addEventListener("reconnect", (e) => reconnects.push(e.detail));
  const first = once(stream, "token");
  const { run, done } = read(stream);
  await first;
  network.silence(); // the first connection delivers nothing more, and is never closed
  await done;
  assert.equal(run.error, null);
  assert.equal(reconnects.length, 1);
  const clean = await replay(base, stream.id);
  assert.deepEqual(run.tokens, clean.tokens);
  assert.equal(stream.final?.reason, "length");
  assert.equal(await metric(base, "tokenwire_streams_started_total"), 1);
});

test("accessToken: every request carries the key (start, resume after a drop, cancel); none or another is refused", async (t) => {
  const [alice, bob] = ["alice-key-0123456789", "bob-key-9876543210"];
  const base = await serve(t, ["--api-key", alice, "--api-key", bob, "--retry-ms", "100"]);
  const client = new TokenwireClient(base, { transport: "sse", accessToken: alice });
  const stream = await client.generate({ prompt: "with a key", max_tokens: 400, tokens_per_s: 40 });
  const { run, done } = read(stream, 3); // the resume after the drop is an authorized GET too
  while (run.tokens.length < 6) await new Promise((resolve) => setTimeout(resolve, 20));
  const theirs = new TokenwireClient(base, { transport: "sse", accessToken: bob, maxRetries: 0 });
  await assert.rejects(
    async () => {
      for await (const _ of theirs.resume(stream.lastEventId));
    },
    (e) => e instanceof StreamNotFound && e.status == 404,
  );
  await stream.abort(); // a DELETE with Alice's key
  await done;
  assert.equal(run.error, null);
  assert.deepEqual(stream.final, { reason: "cancelled" });
  const nobody = new TokenwireClient(base, { transport: "sse", maxRetries: 3 });
  await assert.rejects(nobody.generate({ prompt: "no key", max_tokens: 2 }), (e) => {
    assert.ok(e instanceof TokenwireError && !(e instanceof ConnectError)); // refused at once, not retried
    assert.equal(e.status, 401);
    assert.equal(e.body.code, "unauthorized");
    return true;
  });
  assert.equal(await metric(base, "tokenwire_streams_started_total"), 1);
});
