// The shared wire vectors (tests/vectors/wire.json, also read by rust/tests/wire_vectors.rs and
// tests/protocol/test_wire_vectors.py) and the ways the tests feed their bytes. Not a test file itself.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

/** @type {any} */
export const WIRE = JSON.parse(readFileSync(new URL("../../tests/vectors/wire.json", import.meta.url), "utf8"));

/** @param {string} hex */
export function unhex(hex) {
  assert.equal(hex.length % 2, 0, `odd hex length: ${hex}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) {
    const byte = Number.parseInt(hex.slice(2 * i, 2 * i + 2), 16);
    assert.ok(!Number.isNaN(byte), `bad hex: ${hex}`);
    out[i] = byte;
  }
  return out;
}

/** @param {Uint8Array} bytes */
export function tohex(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * The case's bytes; its `text`, where given, must be the same bytes.
 * @param {any} c
 */
export function bytesOf(c) {
  const raw = unhex(c.hex);
  if (c.text !== undefined) assert.equal(tohex(new TextEncoder().encode(c.text)), c.hex, `${c.name}: text and hex differ`);
  return raw;
}

/**
 * Every way a byte string is fed: whole, byte by byte, in two pieces cut at every position, and as the case's own
 * `chunks` (empty ones included).
 * @param {Uint8Array} raw
 * @param {any} [c]
 * @returns {[string, Uint8Array[]][]}
 */
export function splits(raw, c) {
  /** @type {[string, Uint8Array[]][]} */
  const out = [
    ["whole", [raw]],
    ["byte by byte", Array.from(raw, (_, i) => raw.subarray(i, i + 1))],
  ];
  for (let cut = 0; cut <= raw.length; cut++) out.push([`cut at ${cut}`, [raw.subarray(0, cut), raw.subarray(cut)]]);
  if (c?.chunks) {
    /** @type {Uint8Array[]} */
    const chunks = c.chunks.map(unhex);
    assert.equal(chunks.map(tohex).join(""), c.hex, `${c.name}: chunks do not make up hex`);
    out.push(["the case's chunks", chunks]);
  }
  return out;
}

export const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

/**
 * A frame of the vectors as the JS decoders give it (`seq` a number: only cases whose seqs fit are compared).
 * @param {any} f
 */
export function frameOf(f) {
  return { kind: f.kind, seq: Number(f.seq), payload: f.payload };
}

/**
 * The error a JS decoder must raise for a case (`js_error` where integers pass 2^53-1), and the frames before it.
 * @param {any} c
 * @returns {{error: any, frames: any[]}}
 */
export function jsExpectation(c) {
  if (c.js_error) return { error: c.js_error, frames: c.frames.slice(0, c.js_error.frames) };
  for (const f of c.frames) assert.ok(BigInt(f.seq) <= MAX_SAFE, `${c.name}: seq ${f.seq} needs a js_error`);
  return { error: c.error ?? null, frames: c.frames };
}

/**
 * Checks a thrown value: a `WireError` (an `Error`) with the expected `code`.
 * @param {Function} WireError
 * @param {unknown} e
 * @param {string} code
 * @param {string} label
 */
export function assertWireError(WireError, e, code, label) {
  assert.ok(e instanceof WireError, `${label}: expected WireError ${code}, got ${e}`);
  assert.ok(e instanceof Error, `${label}: WireError is an Error`);
  assert.equal(/** @type {any} */ (e).code, code, `${label}: ${e}`);
}

/**
 * Feeds `chunks` to an incremental decoder and checks, after every call, that exactly the items (frames, a reply)
 * whose last byte has arrived were delivered; that the expected error is raised by the call that supplies byte
 * `error.after` (or, when that call returns items completed before the error, by the next call), or by `close()`
 * for `error.at === "close"`; and that the decoder stays poisoned.
 * @param {string} label
 * @param {Uint8Array[]} chunks
 * @param {{feed: (chunk: Uint8Array) => any[], close: () => void, poke: Uint8Array, WireError: Function}} decoder
 * @param {{items: {value: any, end: number}[], error: any, offset?: number}} want
 */
export function checkStream(label, chunks, decoder, want) {
  const { feed, close, poke, WireError } = decoder;
  const { items, error } = want;
  const poisoned = () => {
    assert.throws(() => feed(new Uint8Array(0)), (e) => (assertWireError(WireError, e, error.code, `${label}: poisoned`), true));
    assert.throws(() => feed(poke), (e) => (assertWireError(WireError, e, error.code, `${label}: poisoned`), true));
    assert.throws(close, (e) => (assertWireError(WireError, e, error.code, `${label}: poisoned at close`), true));
  };
  /** @type {any[]} */
  const got = [];
  let fed = want.offset ?? 0;
  for (const chunk of chunks) {
    const before = fed;
    fed += chunk.length;
    /** @type {any[]} */
    let delivered;
    try {
      delivered = feed(chunk);
    } catch (e) {
      assert.ok(error, `${label}: unexpected ${e} after ${fed} bytes`);
      assertWireError(WireError, e, error.code, label);
      assert.ok(error.after !== undefined, `${label}: ${error.code} raised by a feed, expected at close`);
      assert.ok(
        before < error.after && error.after <= fed,
        `${label}: ${error.code} raised by the call for bytes ${before}..${fed}, expected at byte ${error.after}`,
      );
      assert.deepEqual(got, items.map((i) => i.value), `${label}: items before the error`);
      poisoned();
      return;
    }
    got.push(...delivered);
    assert.deepEqual(got, items.filter((i) => i.end <= fed).map((i) => i.value), `${label}: items after ${fed} bytes`);
    if (error?.after !== undefined && error.after <= fed) {
      // Only a call that completed items before the error may return; the next call raises it.
      assert.ok(delivered.length > 0, `${label}: no ${error.code} from the call for bytes ${before}..${fed}`);
      poisoned();
      return;
    }
  }
  if (!error) {
    close();
    return;
  }
  assert.equal(error.at, "close", `${label}: ${error.code} never raised (expected after byte ${error.after})`);
  assert.throws(close, (e) => (assertWireError(WireError, e, error.code, `${label}: close`), true));
  assert.throws(close, (e) => (assertWireError(WireError, e, error.code, `${label}: close again`), true));
}
