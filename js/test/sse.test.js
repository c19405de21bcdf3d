// Server-sent events parsing (WHATWG rules, as rust/sse_parse.rs implements them): SseParser of js/src/client.js
// against the shared vectors, fed as bytes whole, byte by byte, cut at every position and in the vectors' chunks,
// and as text. The encoder vectors (rust/sse.rs output) are parsed too.
import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { SseParser } from "../src/client.js";
import { WIRE, bytesOf, splits } from "./vectors.js";

/**
 * Feeds `chunks` and checks each event, and the call that dispatches it; then `retry` and `lastEventId`.
 * @param {string} label
 * @param {(Uint8Array | string)[]} chunks
 * @param {any} c
 * @param {boolean} where whether to check the byte at which each event is dispatched
 */
function check(label, chunks, c, where) {
  const parser = new SseParser();
  /** @type {any[]} */
  const got = [];
  let fed = 0;
  for (const chunk of chunks) {
    const before = fed;
    fed += typeof chunk === "string" ? new TextEncoder().encode(chunk).length : chunk.length;
    for (const ev of parser.feed(chunk)) {
      const i = got.length;
      const want = c.events[i];
      assert.ok(want, `${label}: extra event ${JSON.stringify(ev)}`);
      got.push({ event: ev.event, data: ev.data, id: ev.id });
      assert.deepEqual(got[i], { event: want.event, data: want.data, id: want.id }, `${label}: event ${i}`);
      if (where && want.dispatched_after !== undefined) {
        assert.ok(
          before < want.dispatched_after && want.dispatched_after <= fed,
          `${label}: event ${i} dispatched by the call for bytes ${before}..${fed}, expected at byte ${want.dispatched_after}`,
        );
      }
    }
  }
  assert.equal(got.length, c.events.length, `${label}: events missing`);
  assert.equal(parser.retry, c.retry, `${label}: retry`);
  if (c.last_event_id !== undefined) assert.equal(parser.lastEventId, c.last_event_id, `${label}: lastEventId`);
}

/**
 * The text split at every code point, whole and one code point at a time.
 * @param {string} text
 * @returns {[string, string[]][]}
 */
function textSplits(text) {
  const points = Array.from(text);
  /** @type {[string, string[]][]} */
  const out = [
    ["text whole", [text]],
    ["text by code point", points],
  ];
  for (let cut = 0; cut <= points.length; cut++) {
    out.push([`text cut at code point ${cut}`, [points.slice(0, cut).join(""), points.slice(cut).join("")]]);
  }
  return out;
}

for (const [section, cases] of [["parse", WIRE.sse.parse], ["encoder output", WIRE.sse.encode]]) {
  describe(`SseParser: ${section}`, () => {
    for (const c of cases) {
      test(c.name, () => {
        const raw = bytesOf(c);
        for (const [how, chunks] of splits(raw, c)) check(how, chunks, c, true);
        // Text in, as from a TextDecoderStream: a BOM there was already taken off by the decoder (a leading U+FEFF in
        // text is ambiguous), so those cases are fed as bytes only.
        if (c.text !== undefined && !c.text.startsWith("\ufeff")) {
          for (const [how, chunks] of textSplits(c.text)) check(how, chunks, c, false);
        }
      });
    }
  });
}
