// QUIC varints and binary frames (docs/protocol.md §3): readVarint, writeVarint and FrameDecoder of js/src/client.js
// against the shared vectors, fed whole, byte by byte and cut at every position.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { FrameDecoder, WireError, readVarint, writeVarint } from "../src/client.js";
import { MAX_SAFE, WIRE, assertWireError, bytesOf, checkStream, frameOf, jsExpectation, splits, tohex } from "./vectors.js";

const HEARTBEAT = new Uint8Array([4, 0, 0]);

describe("readVarint", () => {
  for (const c of WIRE.varint.decode) {
    test(c.name, () => {
      const raw = bytesOf(c);
      const tooLarge = c.value !== undefined && BigInt(c.value) > MAX_SAFE;
      assert.equal(tooLarge, c.js_error === "varint_too_large", "js_error marks the values over 2^53-1");
      if (c.incomplete) {
        assert.equal(readVarint(raw, c.at), null);
        return;
      }
      if (tooLarge) {
        assert.throws(() => readVarint(raw, c.at), (e) => (assertWireError(WireError, e, "varint_too_large", c.name), true));
      } else {
        assert.deepEqual(readVarint(raw, c.at), [Number(c.value), c.next]);
      }
      // Any shorter prefix of the varint is incomplete, whatever its value would be.
      for (let end = c.at; end < c.next; end++) assert.equal(readVarint(raw.subarray(0, end), c.at), null, `prefix of ${end}`);
    });
  }
});

describe("writeVarint", () => {
  const safe = WIRE.varint.encode.filter((/** @type {any} */ c) => BigInt(c.value) <= MAX_SAFE);
  assert.ok(safe.length > 10);
  for (const c of safe) {
    test(`${c.value} -> ${c.hex}`, () => {
      const out = writeVarint(Number(c.value));
      assert.ok(out instanceof Uint8Array);
      assert.equal(tohex(out), c.hex);
      assert.deepEqual(readVarint(out, 0), [Number(c.value), out.length]);
    });
  }
});

describe("FrameDecoder", () => {
  assert.equal(WIRE.frames.default_max_payload, 1048576);
  for (const c of WIRE.frames.decode) {
    test(c.name, () => {
      const raw = bytesOf(c);
      const { error, frames } = jsExpectation(c);
      const items = frames.map((/** @type {any} */ f) => ({ value: frameOf(f), end: f.end }));
      for (const [how, chunks] of splits(raw, c)) {
        const decoder = c.max_payload === undefined ? new FrameDecoder() : new FrameDecoder(c.max_payload);
        const feed = (/** @type {Uint8Array} */ chunk) =>
          decoder.feed(chunk).map((f) => ({ kind: f.kind, seq: f.seq, payload: f.payload }));
        checkStream(how, chunks, { feed, close: () => decoder.close(), poke: HEARTBEAT, WireError }, { items, error });
      }
    });
  }

  test("the decoder does not keep the caller's buffer", () => {
    // A transport may reuse its read buffer: a frame split across reads must survive the first read being overwritten.
    const frame = new Uint8Array([1, 1, 3, 0x61, 0x62, 0x63]);
    const decoder = new FrameDecoder();
    const buf = frame.slice(0, 4);
    assert.deepEqual(decoder.feed(buf), []);
    buf.fill(0xff);
    assert.deepEqual(
      decoder.feed(frame.subarray(4)).map((f) => ({ kind: f.kind, seq: f.seq, payload: f.payload })),
      [{ kind: "token", seq: 1, payload: "abc" }],
    );
    decoder.close();
  });
});
