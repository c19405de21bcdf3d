// WebTransport request and reply messages (docs/protocol.md §3.1): encodeMessage and ReplyDecoder of js/src/client.js
// against the shared vectors (the server's codec passes the same ones in tests/protocol/test_wire_vectors.py).
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { ReplyDecoder, WireError, encodeMessage } from "../src/client.js";
import { WIRE, bytesOf, checkStream, frameOf, jsExpectation, splits, tohex } from "./vectors.js";

describe("encodeMessage", () => {
  for (const c of WIRE.messages.requests) {
    test(c.name, () => {
      bytesOf(c);
      const out = encodeMessage(c.kind, c.body);
      assert.ok(out instanceof Uint8Array);
      assert.equal(tohex(out), c.hex);
    });
  }
});

describe("ReplyDecoder", () => {
  for (const c of WIRE.messages.replies) {
    test(c.name, () => {
      const raw = bytesOf(c);
      const { error, frames } = jsExpectation(c);
      /** @type {{value: any, end: number}[]} */
      const items = [];
      if (c.reply) items.push({ value: { reply: { kind: c.reply.kind, body: c.reply.body } }, end: c.reply.end });
      for (const f of frames) items.push({ value: { frame: frameOf(f) }, end: f.end });
      for (const [how, chunks] of splits(raw, c)) {
        const decoder = new ReplyDecoder();
        const feed = (/** @type {Uint8Array} */ chunk) => {
          const { reply, frames: got } = decoder.feed(chunk);
          return [
            ...(reply ? [{ reply: { kind: reply.kind, body: reply.body } }] : []),
            ...got.map((f) => ({ frame: { kind: f.kind, seq: f.seq, payload: f.payload } })),
          ];
        };
        // A stray heartbeat: refused before a reply (not a reply kind), and by a poisoned decoder in any case.
        const poke = new Uint8Array([4, 0, 0]);
        checkStream(how, chunks, { feed, close: () => decoder.close(), poke, WireError }, { items, error });
      }
    });
  }
});
