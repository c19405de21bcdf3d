// @ts-check
/**
 * tokenwire browser client: WebTransport first, SSE (over fetch) otherwise, exact resume.
 *
 * One ES module with no dependencies: the wire decoders of docs/protocol.md (QUIC varints, binary frames
 * §3, WebTransport request and reply messages §3.1, WHATWG SSE parsing §2) and `TokenwireClient`, which
 * hands an application each token of a generation once, in order, across drops, transport changes and
 * page reloads. API reference: docs/client.md.
 *
 * @module
 */

// ---------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------

/** @typedef {"token" | "done" | "error" | "heartbeat"} FrameKind */
/** @typedef {{kind: FrameKind, seq: number, payload: string}} Frame */
/** @typedef {{event: string, data: string, id: string}} SseEvent */
/** @typedef {{kind: "stream" | "cancelled" | "error", body: Record<string, any>}} Reply */
/** @typedef {"start" | "attach" | "cancel"} MessageKind */
/** @typedef {"auto" | "webtransport" | "sse"} TransportChoice */
/** @typedef {"webtransport" | "sse"} Transport */
/**
 * @typedef {object} ClientOptions
 * @property {TransportChoice} [transport] "auto" (default): WebTransport where it works, else SSE.
 * @property {number} [connectTimeoutMs] WebTransport connect timeout before SSE is used (3000).
 * @property {Record<string, string>} [headers] Added to every HTTP request (authorization, say).
 * @property {string} [accessToken] An API key: `Authorization: Bearer` on HTTP requests, `?access_token=` on the
 *   WebTransport CONNECT (a browser sets no headers there).
 * @property {number} [maxRetries] Reconnect attempts per outage before `ConnectError` (10).
 * @property {number} [idleTimeoutMs] An SSE connection on which nothing (not even a heartbeat) arrives this
 * long while the stream waits for tokens counts as lost, and is resumed (45000; 0: never).
 */
/**
 * @typedef {object} Kpis
 * @property {Transport} transport The transport in use now.
 * @property {number | null} ttftMs Time from the request to the first token.
 * @property {number | null} tokensPerS Tokens per second since the first token.
 * @property {number} tokens Tokens this object delivered.
 * @property {number} reconnects Connections re-established after a loss.
 * @property {number | null} recoveryMs Last outage: from the loss to the new connection.
 * @property {number} fallbacks Switches from WebTransport to SSE in the middle of the answer.
 */
/**
 * @typedef {object} Final
 * @property {string} reason "stop", "length", "cancelled", ..., or "error" for an error frame.
 * @property {Record<string, number>} [usage]
 * @property {string} [code] For an error frame.
 * @property {string} [message] For an error frame.
 */
/**
 * The events of a `TokenStream`, each with its `detail`.
 * @typedef {object} StreamEvents
 * @property {CustomEvent<{token: string, seq: number}>} token A token handed to the loop.
 * @property {CustomEvent<Kpis>} kpi After each token, a reconnect, and the end: a copy of `kpis`.
 * @property {CustomEvent<Transport>} transport The stream moved to SSE.
 * @property {CustomEvent<{attempt: number, delayMs: number, error: unknown}>} reconnect Before each wait of the backoff.
 * @property {CustomEvent<Final | {reason: "error", error: unknown} | null>} end The stream ended.
 */
/** @typedef {{persist?: string}} StreamOptions */
/** @typedef {{kind: string, seq: number, payload: string}} Item */
/** @typedef {{read(): Promise<Item[] | null>, close(): void, cut(): void, parser?: SseParser}} Conn */

const EMPTY = new Uint8Array(0);
const MAX = Number.MAX_SAFE_INTEGER;
const HOLD = 600000; // ms a failed WebTransport connect keeps "auto" on SSE for an origin
const RETRY_CAP = 30000;
const PREFIX = "tokenwire:";
const te = new TextEncoder();
const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const now = () => performance.now();
const noop = () => {};
/** @param {number} ms */
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
/** @param {Uint8Array} a @param {Uint8Array} b */
const cat = (a, b) => {
  if (!a.length) return b;
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
};
/** @param {"localStorage" | "sessionStorage"} name @returns {Storage | null} */
const storage = (name) => {
  try {
    return globalThis[name] || null;
  } catch {
    return null; // storage refused (sandboxed frame, privacy settings)
  }
};

// ---------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------

/** Base of every error this module throws. `type` is the server's error type (or the class name). */
export class TokenwireError extends Error {
  /**
   * @param {string} message
   * @param {number} [status] HTTP status (0 when none applies).
   * @param {Record<string, any>} [body] The server's error object, as it sent it.
   */
  constructor(message, status = 0, body = {}) {
    super(message);
    this.status = status;
    /** @type {string} */
    this.type = body.type || this.name;
    this.body = body;
  }
}
/** 404: the stream is unknown (never created, expired, evicted). */
export class StreamNotFound extends TokenwireError {}
/** 409: the server's history changed (a restart); `epoch` is the server's. */
export class EpochMismatch extends TokenwireError {
  /** @param {string} m @param {number} s @param {Record<string, any>} b */
  constructor(m, s, b) {
    super(m, s, b);
    /** @type {string | undefined} */
    this.epoch = b.epoch;
  }
}
/** 410: the frames after the resume point are no longer held; `oldestSeq` is the oldest still held. */
export class ResumeExpired extends TokenwireError {
  /** @param {string} m @param {number} s @param {Record<string, any>} b */
  constructor(m, s, b) {
    super(m, s, b);
    /** @type {number | undefined} undefined where the answer had no tokenwire error body (a proxy's) */
    this.oldestSeq = b.oldest_seq;
  }
}
/** 400: the resume point is past the stream's last frame (`lastSeq`). */
export class ResumeFromFuture extends TokenwireError {
  /** @param {string} m @param {number} s @param {Record<string, any>} b */
  constructor(m, s, b) {
    super(m, s, b);
    /** @type {number | undefined} undefined where the answer had no tokenwire error body (a proxy's) */
    this.lastSeq = b.last_seq;
  }
}
/** The generation ended with an `error` frame; `code` is its code (such as "generation_failed"). */
export class GenerationFailed extends TokenwireError {
  /** @param {string} m @param {number} s @param {Record<string, any>} b */
  constructor(m, s, b) {
    super(m, s, b);
    /** @type {string} */
    this.code = b.code;
  }
}
/** The server could not be reached within the retry budget (`cause`: the last failure). */
export class ConnectError extends TokenwireError {
  /** @param {string} m @param {unknown} [cause] */
  constructor(m, cause) {
    super(m);
    this.cause = cause;
  }
}
/** Malformed bytes from the server; `code` says what (see docs/client.md). */
export class WireError extends TokenwireError {
  /** @param {string} code @param {string} m */
  constructor(code, m) {
    super(m);
    this.code = code;
  }
}
// Names survive minification.
for (const [c, n] of /** @type {const} */ ([
  [TokenwireError, "TokenwireError"],
  [StreamNotFound, "StreamNotFound"],
  [EpochMismatch, "EpochMismatch"],
  [ResumeExpired, "ResumeExpired"],
  [ResumeFromFuture, "ResumeFromFuture"],
  [GenerationFailed, "GenerationFailed"],
  [ConnectError, "ConnectError"],
  [WireError, "WireError"],
]))
  c.prototype.name = n;

/** @type {Record<string, typeof TokenwireError>} */
const TYPED = { StreamNotFound, EpochMismatch, ResumeExpired, ResumeFromFuture };

/** The typed error for a server's error object. @param {number} status @param {Record<string, any>} body */
const typedError = (status, body) => {
  status = body.status || status;
  const C = TYPED[body.type] || (status == 404 ? StreamNotFound : status == 410 ? ResumeExpired : TokenwireError);
  return new C(String(body.message || "HTTP " + status), status, body);
};
/** @param {Response} res */
const httpError = async (res) => {
  let body = {};
  try {
    body = (await res.json()).error || {};
  } catch {} // not tokenwire's JSON (a proxy's page): the status alone
  return typedError(res.status, body);
};
/** A `ConnectError` that no retry mends (no WebTransport in this runtime, or none on the server). @param {string} m */
const hopeless = (m) => Object.assign(new ConnectError(m), { _final: 1 });
/** Errors after which nothing is retried: the server's 4xx answers (but 408, 429), a failed generation, `hopeless`. */
const final = (/** @type {any} */ e) =>
  e instanceof GenerationFailed ||
  e?._final ||
  (e instanceof TokenwireError && e.status >= 400 && e.status < 500 && e.status != 408 && e.status != 429);

// ---------------------------------------------------------------------------------------------------
// Decoders (docs/protocol.md §2, §3, §3.1)
// ---------------------------------------------------------------------------------------------------

/**
 * One QUIC varint (RFC 9000 §16) at `at`: `[value, next]`, or null when `buf` ends inside it. Non-minimal
 * forms are accepted; a value above `Number.MAX_SAFE_INTEGER` throws `WireError` "varint_too_large".
 * @param {Uint8Array} buf
 * @param {number} at
 * @returns {[number, number] | null}
 */
export function readVarint(buf, at) {
  const got = varint(buf, at);
  if (got && got[0] > MAX) throw new WireError("varint_too_large", "varint above 2^53-1");
  return got;
}

/** As `readVarint`, but a value above 2^53-1 comes back rounded (a length: it is over any limit anyway).
 * @param {Uint8Array} buf @param {number} at @returns {[number, number] | null} */
const varint = (buf, at) => {
  if (at >= buf.length) return null;
  const n = 1 << (buf[at] >> 6);
  if (at + n > buf.length) return null;
  let v = buf[at] & 63;
  for (let i = 1; i < n; i++) v = v * 256 + buf[at + i];
  return [v, at + n];
};

/**
 * The minimal varint encoding of `n` (an integer from 0 to `Number.MAX_SAFE_INTEGER`).
 * @param {number} n
 * @returns {Uint8Array}
 */
export function writeVarint(n) {
  if (!Number.isInteger(n) || n < 0) throw new RangeError("not a varint: " + n);
  if (n > MAX) throw new WireError("varint_too_large", "varint above 2^53-1");
  const size = n < 64 ? 1 : n < 16384 ? 2 : n < 2 ** 30 ? 4 : 8;
  const out = new Uint8Array(size);
  for (let i = size, v = n; i--; v = Math.floor(v / 256)) out[i] = v % 256;
  out[0] |= Math.log2(size) << 6;
  return out;
}

/** @param {Uint8Array} bytes */
const utf8 = (bytes) => {
  try {
    return strict.decode(bytes);
  } catch {
    throw new WireError("invalid_utf8", "payload is not UTF-8");
  }
};

/** @type {(FrameKind | undefined)[]} */
const KINDS = [, "token", "done", "error", "heartbeat"];

/**
 * Incremental decoder of binary frames (§3): feed any split of the bytes. Errors (`WireError` codes
 * unknown_kind, zero_seq, oversized, invalid_utf8, truncated, varint_too_large) are raised where the Rust
 * decoder raises them; after the first one every call raises it again. Frames completed before an error
 * in one `feed` are returned, and the next call raises.
 */
export class FrameDecoder {
  /** @param {number} [maxPayload] Largest payload accepted, in bytes. */
  constructor(maxPayload = 1048576) {
    this.maxPayload = maxPayload;
    /** @internal @type {Uint8Array} */
    this._buf = EMPTY;
    /** @internal @type {unknown} */
    this._err = null;
  }
  /** @param {Uint8Array} chunk @returns {Frame[]} */
  feed(chunk) {
    if (this._err) throw this._err;
    const buf = cat(this._buf, chunk);
    /** @type {Frame[]} */
    const out = [];
    let at = 0;
    try {
      while (at < buf.length) {
        const kind = KINDS[buf[at]];
        if (!kind) throw new WireError("unknown_kind", "unknown frame kind " + buf[at]);
        const s = readVarint(buf, at + 1);
        if (!s) break;
        if (!s[0] && kind != "heartbeat") throw new WireError("zero_seq", kind + " frame with seq 0");
        const l = varint(buf, s[1]);
        if (!l) break;
        if (l[0] > this.maxPayload) throw new WireError("oversized", `payload of ${l[0]} bytes`);
        const end = l[1] + l[0];
        if (end > buf.length) break;
        out.push({ kind, seq: s[0], payload: utf8(buf.subarray(l[1], end)) });
        at = end;
      }
    } catch (e) {
      this._err = e;
      this._buf = EMPTY;
      if (out.length) return out;
      throw e;
    }
    this._buf = buf.slice(at);
    return out;
  }
  /** The end of the bytes: `WireError` "truncated" if part of a frame is buffered. */
  close() {
    if (this._err) throw this._err;
    if (this._buf.length) throw (this._err = new WireError("truncated", "the bytes end inside a frame"));
  }
}

/** @type {Record<MessageKind, number>} */
const REQUESTS = { start: 0x11, attach: 0x12, cancel: 0x13 };
/** @type {Record<number, Reply["kind"]>} */
const REPLIES = { 0x21: "stream", 0x22: "cancelled", 0x23: "error" };

/**
 * A WebTransport request message (§3.1): kind byte, varint length, JSON body.
 * @param {MessageKind} kind
 * @param {object} body
 * @returns {Uint8Array}
 */
export function encodeMessage(kind, body) {
  const code = REQUESTS[kind];
  if (!code) throw new TypeError("unknown message kind " + kind);
  const json = te.encode(JSON.stringify(body));
  return cat(cat(Uint8Array.of(code), writeVarint(json.length)), json);
}

/**
 * The reader of one request stream (§3.1): the reply message (reported once, by the `feed` that completes
 * it), then binary frames. Errors: `WireError` unknown_kind, oversized, invalid_utf8, invalid_body (not a
 * JSON object), unexpected_bytes (bytes after a reply that carries no stream), truncated, and those of
 * `FrameDecoder`.
 */
export class ReplyDecoder {
  /** @param {number} [maxPayload] */
  constructor(maxPayload = 1048576) {
    /** @type {Reply | null} */
    this.reply = null;
    /** @internal */
    this._max = maxPayload;
    /** @internal @type {Uint8Array} */
    this._buf = EMPTY;
    /** @internal */
    this._frames = new FrameDecoder(maxPayload);
    /** @internal @type {unknown} */
    this._err = null;
  }
  /** @param {Uint8Array} chunk @returns {{reply: Reply | null, frames: Frame[]}} */
  feed(chunk) {
    if (this._err) throw this._err;
    /** @type {Reply | null} */
    let reply = null;
    try {
      if (!this.reply) {
        const buf = cat(this._buf, chunk);
        this._buf = buf;
        if (!buf.length) return { reply, frames: [] };
        const kind = REPLIES[buf[0]];
        if (!kind) throw new WireError("unknown_kind", "unknown reply kind " + buf[0]);
        const l = varint(buf, 1);
        if (!l) return { reply, frames: [] };
        if (l[0] > this._max) throw new WireError("oversized", `reply of ${l[0]} bytes`);
        const end = l[1] + l[0];
        if (end > buf.length) return { reply, frames: [] };
        const text = utf8(buf.subarray(l[1], end));
        let body;
        try {
          body = JSON.parse(text);
        } catch {}
        if (!body || typeof body != "object" || Array.isArray(body))
          throw new WireError("invalid_body", "reply body is not a JSON object");
        this.reply = reply = { kind, body };
        this._buf = EMPTY;
        chunk = buf.subarray(end);
      }
      if (chunk.length && this.reply.kind != "stream")
        throw new WireError("unexpected_bytes", "bytes after a reply that carries no stream");
      return { reply, frames: this._frames.feed(chunk) };
    } catch (e) {
      this._err = e;
      this._buf = EMPTY;
      if (reply) return { reply, frames: [] }; // the reply now; the error at the next call
      throw e;
    }
  }
  /** The stream's end (FIN): `WireError` "truncated" inside the reply or a frame, or before any reply. */
  close() {
    if (this._err) throw this._err;
    if (!this.reply) throw (this._err = new WireError("truncated", "the stream ended before its reply"));
    this._frames.close();
  }
}

/**
 * Incremental WHATWG `text/event-stream` parser: feed bytes (decoded as UTF-8 with replacement) or text;
 * returns the events dispatched. `retry` is the last valid `retry:` value (ms), `lastEventId` the last
 * event ID string.
 */
export class SseParser {
  constructor() {
    /** @type {number | null} */
    this.retry = null;
    this.lastEventId = "";
    /** @internal */
    this._dec = new TextDecoder("utf-8", { ignoreBOM: true });
    /** @internal */
    this._line = ""; // an incomplete line
    /** @internal */
    this._data = "";
    /** @internal */
    this._event = "";
    /** @internal */
    this._id = ""; // the last event ID buffer
    /** @internal */
    this._cr = false; // the last chunk ended with CR: an LF first in the next is part of that line end
    /** @internal */
    this._bom = true; // a leading BOM may still come
  }
  /** @param {Uint8Array | string} chunk @returns {SseEvent[]} */
  feed(chunk) {
    let s = typeof chunk == "string" ? chunk : this._dec.decode(chunk, { stream: true });
    if (!s) return [];
    if (this._bom) {
      this._bom = false;
      if (s[0] == "\ufeff") s = s.slice(1);
    }
    if (this._cr && s[0] == "\n") s = s.slice(1);
    this._cr = false;
    const buf = this._line + s;
    /** @type {SseEvent[]} */
    const out = [];
    const re = /\r\n|\r|\n/g;
    let at = 0;
    for (let m; (m = re.exec(buf)); at = re.lastIndex) {
      if (m[0] == "\r" && re.lastIndex == buf.length) this._cr = true;
      const line = buf.slice(at, m.index);
      if (!line) {
        this.lastEventId = this._id;
        if (this._data) out.push({ event: this._event || "message", data: this._data.slice(0, -1), id: this._id });
        this._data = this._event = "";
        continue;
      }
      const c = line.indexOf(":");
      if (!c) continue; // a comment
      const name = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? "" : line.slice(c + 1);
      if (value[0] == " ") value = value.slice(1);
      if (name == "event") this._event = value;
      else if (name == "data") this._data += value + "\n";
      else if (name == "id") {
        if (!value.includes("\0")) this._id = value;
      } else if (name == "retry" && /^[0-9]+$/.test(value)) this.retry = +value;
    }
    this._line = buf.slice(at);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------------
// Connections: each opens one request and reads its frames
// ---------------------------------------------------------------------------------------------------

/**
 * One request on a new bidirectional stream of `wt`; resolves once the reply has arrived (an error reply
 * rejects with its typed error).
 * @param {WebTransport} wt
 * @param {MessageKind} kind
 * @param {object} body
 * @returns {Promise<Conn & {reply: Reply}>}
 */
async function wtRequest(wt, kind, body) {
  const bidi = await wt.createBidirectionalStream();
  const w = bidi.writable.getWriter();
  w.write(encodeMessage(kind, body)).catch(noop);
  w.close().catch(noop);
  const reader = bidi.readable.getReader();
  const dec = new ReplyDecoder();
  const next = async () => {
    const { value, done } = await reader.read();
    if (done) dec.close(); // throws where the stream ended inside a reply or frame
    return done ? null : dec.feed(value);
  };
  const close = () => void reader.cancel().catch(noop);
  /** @type {Item[] | null} */
  let first = [];
  let reply;
  while (!reply) {
    const got = await next();
    first = got && got.frames;
    reply = got && got.reply;
  }
  if (reply.kind == "error") {
    close();
    throw typedError(reply.body.status, reply.body);
  }
  return {
    reply,
    async read() {
      // A clean FIN with no final frame: the stream had ended and its final frame was held (§4.4).
      const got = first || (await next())?.frames || [{ kind: "fin", seq: 0, payload: "" }];
      first = null;
      return got;
    },
    close,
    cut: () => wt.close(),
  };
}

/**
 * An HTTP request answered by an event stream; null for 204 (the stream ended, nothing left).
 * @param {TokenwireClient} client
 * @param {string} method
 * @param {string} path
 * @param {Record<string, string>} headers
 * @param {string} [body]
 * @returns {Promise<(Conn & {parser: SseParser}) | null>}
 */
async function sseRequest(client, method, path, headers, body) {
  const ac = new AbortController();
  // A connection that died without a reset (a phone that lost its network, say) delivers nothing, not even the
  // server's heartbeats (every 15 s): while a read waits longer than idleTimeoutMs, it is cut and resumed.
  const idle = client.options.idleTimeoutMs;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  /** @template T @param {Promise<T>} p @returns {Promise<T>} */
  const watched = (p) => {
    if (idle > 0) timer = setTimeout(() => ac.abort(new TypeError(`nothing arrived in ${idle} ms`)), idle);
    return p.finally(() => clearTimeout(timer));
  };
  const res = await watched(
    client._fetch(path, {
      method,
      body,
      signal: ac.signal,
      headers: { accept: "text/event-stream", ...headers },
    }),
  );
  if (res.status == 204) return null;
  if (!res.ok || !res.body) throw await httpError(res);
  const reader = res.body.getReader();
  const parser = new SseParser();
  const close = () => ac.abort();
  return {
    parser,
    async read() {
      const { value, done } = await watched(reader.read());
      if (done) return null;
      return parser.feed(value).map((e) => ({ kind: e.event, seq: +e.id.split(":")[2] || 0, payload: e.data }));
    },
    close,
    cut: close,
  };
}

/** @param {number} fails @param {number} retry The server's `retry:`, in ms. */
const backoff = (fails, retry) => Math.min(RETRY_CAP, retry * 2 ** (fails - 1)) * (0.5 + Math.random() / 2);

// ---------------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------------

/** Client of one tokenwire server. */
export class TokenwireClient {
  /**
   * @param {string} [baseUrl] The server, such as "https://example.com" or "/api" (default: the page's origin).
   * @param {ClientOptions} [options]
   */
  constructor(baseUrl, options = {}) {
    this.baseUrl = new URL(baseUrl ?? "/", globalThis.location?.href).href.replace(/\/+$/, "");
    /** @type {Required<ClientOptions>} */
    this.options = {
      transport: "auto",
      connectTimeoutMs: 3000,
      headers: {},
      accessToken: "",
      maxRetries: 10,
      idleTimeoutMs: 45000,
      ...options,
    };
    /** @internal @type {Promise<WebTransport | null> | null} */
    this._wt = null;
    /** @internal */
    this._skipWt = 0; // until when (Date.now()) "auto" does not try WebTransport
  }

  /**
   * Starts a generation: `POST /v1/streams`, or a start request over WebTransport. Resolves once the server
   * has named the stream. `body` is the request's JSON (`prompt`, `max_tokens`, other fields pass through).
   * @param {Record<string, unknown>} body
   * @param {StreamOptions} [options] `persist`: keep the stream's text and resume point in sessionStorage
   *   under this key (see `restore`).
   * @returns {Promise<TokenStream>}
   */
  async generate(body, options = {}) {
    const t0 = now();
    const bytes = new Uint8Array(16); // the idempotency key: 128 random bits (Node 18 has no global crypto)
    globalThis.crypto ? crypto.getRandomValues(bytes) : bytes.forEach((_, i) => (bytes[i] = Math.random() * 256));
    const key = Array.from(bytes, (b) => (b + 256).toString(16).slice(1)).join("");
    const json = JSON.stringify(body); // a body that is not JSON throws here, before anything is sent or retried
    let useWt = this.options.transport != "sse";
    for (let fails = 0; ; ) {
      try {
        const wt = useWt && (await this._session());
        if (wt) {
          const c = await wtRequest(wt, "start", { ...body, idempotency_key: key });
          return new TokenStream(this, c.reply.body.stream_id, c.reply.body.epoch, 0, "webtransport", options, t0, c);
        }
        const c = await sseRequest(
          this,
          "POST",
          "/v1/streams",
          { "content-type": "application/json", "idempotency-key": key },
          json,
        );
        if (!c) throw new TokenwireError("no stream in the answer", 204);
        /** @type {Item[]} */
        const items = [];
        for (;;) {
          const got = await c.read();
          if (!got) throw new TypeError("the answer ended before it named the stream");
          items.push(...got);
          const named = items.find((i) => i.kind == "stream");
          if (named) {
            const info = JSON.parse(named.payload);
            return new TokenStream(this, info.stream_id, info.epoch, 0, "sse", options, t0, c, items);
          }
        }
      } catch (e) {
        if (final(e)) throw e;
        if (++fails > this.options.maxRetries) throw new ConnectError("could not start the generation", e);
        if (useWt && this.options.transport == "auto") useWt = false; // SSE at once, same Idempotency-Key
        else await sleep(backoff(fails, 1000));
      }
    }
  }

  /**
   * A stream to read from a resume point ("id:epoch:seq", a stream's `lastEventId`): synchronous; it attaches
   * when iterated, and yields the tokens after that point.
   * @param {string} lastEventId
   * @param {StreamOptions} [options]
   */
  resume(lastEventId, options = {}) {
    const m = /^([\w-]{1,128}):([\w-]{1,64}):(\d{1,19})$/.exec(String(lastEventId).trim());
    if (!m) throw new TokenwireError("not a resume point: " + lastEventId, 400, { type: "RemoteProtocolError" });
    const t = this.options.transport;
    const wt = t == "webtransport" || (t == "auto" && globalThis.WebTransport) ? "webtransport" : "sse";
    return new TokenStream(this, m[1], m[2], +m[3], wt, options);
  }

  /**
   * The stream kept under `key` by `generate(..., {persist: key})` (after a reload, say): its `text` so far,
   * `final` if it ended, and iteration continues from its resume point. Null when nothing is kept.
   * @param {string} key
   */
  restore(key) {
    let kept;
    try {
      kept = JSON.parse(storage("sessionStorage")?.getItem(PREFIX + key) || "null");
    } catch {}
    if (!kept) return null;
    const s = this.resume(kept.id, { persist: key });
    s.text = kept.text;
    s.final = kept.final;
    s._save(true);
    if (kept.final) {
      s._state = ENDED;
      READING.delete(s);
    }
    return s;
  }

  /** Detaches every stream being read (their generations go on) and closes the WebTransport session. */
  close() {
    for (const s of READING) if (s._c == this) s._detach();
    this._wt?.then((wt) => wt?.close(), noop);
    this._wt = null;
  }

  /** @internal @param {string} path @param {RequestInit} [init] */
  _fetch(path, init = {}) {
    const t = this.options.accessToken;
    /** @type {Record<string, string>} */
    const auth = t ? { authorization: "Bearer " + t } : {};
    return fetch(this.baseUrl + path, { ...init, headers: { ...auth, ...this.options.headers, ...init.headers } });
  }

  /** @internal The WebTransport session; null where "auto" uses SSE. @returns {Promise<WebTransport | null>} */
  _session() {
    const auto = this.options.transport == "auto";
    return (this._wt ||= this._connectWt().catch((e) => {
      this._wt = null;
      if (auto) return null;
      throw e;
    }));
  }

  /** @internal */
  async _connectWt() {
    const key = PREFIX + "wt-failed:" + this.baseUrl;
    const local = storage("localStorage");
    const WT = globalThis.WebTransport;
    if (!WT) throw hopeless("no WebTransport in this browser");
    if (this.options.transport == "auto" && Math.max(this._skipWt, +(local?.getItem(key) || 0)) > Date.now())
      throw new ConnectError("WebTransport failed here recently");
    const res = await this._fetch("/v1/webtransport/certificate");
    if (!res.ok) {
      const e = "no WebTransport certificate: HTTP " + res.status;
      if (res.status != 404) throw new ConnectError(e);
      this._skipWt = Infinity; // not served here: SSE for this client's lifetime ("auto")
      throw hopeless(e);
    }
    const info = await res.json();
    const t = this.options.accessToken;
    const wt = new WT(
      info.url + (t ? "?access_token=" + encodeURIComponent(t) : ""),
      info.self_signed
        ? {
            serverCertificateHashes: [
              { algorithm: "sha-256", value: Uint8Array.from(info.sha256.match(/../g), (h) => parseInt(h, 16)) },
            ],
          }
        : {},
    );
    const p = this._wt;
    wt.closed.catch(noop).then(() => this._wt == p && (this._wt = null));
    if (await Promise.race([wt.ready.then(() => 1, noop), sleep(this.options.connectTimeoutMs)])) {
      local?.removeItem(key);
      return wt;
    }
    try {
      wt.close();
    } catch {}
    this._skipWt = Date.now() + HOLD;
    try {
      local?.setItem(key, String(this._skipWt));
    } catch {}
    throw new ConnectError("WebTransport did not connect");
  }
}

const LIVE = 0;
const DETACHED = 1;
const ENDED = 2;

/** @type {Set<TokenStream>} The streams being read, of every client (a stream holds its client, not the reverse). */
const READING = new Set();
// A reload or a closed tab: each kept stream writes its last state now (saves are 100 ms apart otherwise). One
// listener for the module: one per client kept every client alive as long as the page.
globalThis.addEventListener?.("pagehide", () => READING.forEach((s) => s._save(true)));

/**
 * One generation's tokens: iterate it (`for await`) to get each token once, in order. Leaving the loop
 * detaches (the generation goes on); iterating again attaches again. Events: "token", "kpi",
 * "transport", "reconnect", "end" (`CustomEvent`, `detail` = the data).
 */
export class TokenStream extends EventTarget {
  /**
   * Made by `TokenwireClient` (`generate`, `resume`, `restore`), not by applications.
   * @internal
   * @param {TokenwireClient} client
   * @param {string} id
   * @param {string} epoch
   * @param {number} seq
   * @param {Transport} transport
   * @param {StreamOptions} options
   * @param {number} [t0]
   * @param {Conn | null} [conn]
   * @param {Item[]} [items]
   */
  constructor(client, id, epoch, seq, transport, options, t0 = 0, conn = null, items = []) {
    super();
    /** The stream id. */
    this.id = id;
    /** The server history the stream belongs to. */
    this.epoch = epoch;
    /** Seq of the last frame delivered (the final frame's once ended). */
    this.seq = seq;
    /** Every token delivered so far, joined (with what `restore` brought back). */
    this.text = "";
    /** @type {Transport} */
    this.transport = transport;
    /** @type {Final | null} The final frame's data once the stream has ended. */
    this.final = null;
    /** @type {Kpis} */
    this.kpis = { transport, ttftMs: null, tokensPerS: null, tokens: 0, reconnects: 0, recoveryMs: null, fallbacks: 0 };
    /** @internal */
    this._c = client;
    /** @internal */
    this._conn = conn;
    /** @internal */
    this._q = items;
    /** @internal */
    this._state = LIVE;
    /** @internal */
    this._key = options.persist;
    /** @internal */
    this._t0 = t0;
    /** @internal */
    this._t1 = 0; // the first token's time
    /** @internal */
    this._down = 0; // when the connection was lost (0: it is not)
    /** @internal */
    this._fails = 0; // failures since the last frame that moved `seq`
    /** @internal */
    this._retry = 1000;
    /** @internal */
    this._saved = 0;
    /** @internal @type {ReturnType<typeof setTimeout> | 0} */
    this._later = 0; // the save that ends a window of skipped ones
    /** @internal @type {unknown} */
    this._error = null;
    /** @internal */
    this._wake = noop; // ends the backoff's wait
    /** @internal */
    this._unsent = 0; // 1: an abort() has not reached the server yet
    READING.add(this);
    this._save(true);
  }

  /** The resume point: "id:epoch:seq". */
  get lastEventId() {
    return `${this.id}:${this.epoch}:${this.seq}`;
  }

  /** @returns {AsyncIterator<string>} */
  [Symbol.asyncIterator]() {
    if (this._state == DETACHED) {
      this._state = LIVE;
      READING.add(this);
    }
    return {
      next: () => this._next(),
      return: async () => (this._detach(), { done: true, value: undefined }),
    };
  }

  /**
   * Cancels the generation on the server (WebTransport cancel request, or `DELETE`); the loop ends.
   * @returns {Promise<void>}
   */
  async abort() {
    if (this._state == ENDED && !this._unsent) return;
    this._unsent = 1; // until the server has the cancel: a later abort() sends it again
    this._end(null, { reason: "cancelled" });
    const c = this._c;
    try {
      const wt = this.transport == "webtransport" && (await c._session());
      if (wt) {
        (await wtRequest(wt, "cancel", { stream_id: this.id })).close();
        return void (this._unsent = 0);
      }
    } catch (e) {
      const status = final(e) && /** @type {TokenwireError} */ (e).status; // the server's answer (no session: DELETE)
      if (status == 404) return void (this._unsent = 0);
      if (status) throw e;
    }
    let res;
    try {
      res = await c._fetch("/v1/streams/" + this.id, { method: "DELETE" });
    } catch (e) {
      throw new ConnectError("the cancel did not reach the server", e);
    }
    if (!res.ok && res.status != 404) throw await httpError(res);
    this._unsent = 0;
  }

  /**
   * Listens to one of the stream's events, typed as `StreamEvents` gives them (any other type as `EventTarget` does).
   * @template {keyof StreamEvents} K
   * @overload
   * @param {K} type
   * @param {(event: StreamEvents[K]) => void} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | AddEventListenerOptions} [options]
   * @returns {void}
   */
  /** @param {string} type @param {any} listener @param {boolean | AddEventListenerOptions} [options] */
  addEventListener(type, listener, options) {
    super.addEventListener(type, listener, options);
  }

  /**
   * @template {keyof StreamEvents} K
   * @overload
   * @param {K} type
   * @param {(event: StreamEvents[K]) => void} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /**
   * @overload
   * @param {string} type
   * @param {EventListenerOrEventListenerObject | null} listener
   * @param {boolean | EventListenerOptions} [options]
   * @returns {void}
   */
  /** @param {string} type @param {any} listener @param {boolean | EventListenerOptions} [options] */
  removeEventListener(type, listener, options) {
    super.removeEventListener(type, listener, options);
  }

  /** Cuts the current connection as a network failure would; the stream recovers by itself. */
  drop() {
    this._conn?.cut();
  }

  /** @internal @param {string} type @param {unknown} detail */
  _emit(type, detail) {
    // Node 18 has no global CustomEvent: an Event with `detail` there.
    this.dispatchEvent(globalThis.CustomEvent ? new CustomEvent(type, { detail }) : Object.assign(new Event(type), { detail }));
  }

  /** @internal @returns {Promise<IteratorResult<string>>} */
  async _next() {
    for (;;) {
      if (this._state != LIVE) return { done: true, value: undefined };
      try {
        const item = this._q.shift();
        if (item) {
          const token = this._take(item);
          if (token != null) return { done: false, value: token };
        } else if (this._conn) {
          const items = await this._conn.read();
          if (!items) throw new TypeError("the answer ended without its final frame");
          this._q.push(...items);
        } else {
          const conn = await this._connect();
          if (this._state != LIVE) conn?.close();
          else if (conn) this._conn = conn;
          else this._end(null, this.final); // 204: it had ended, and its final frame was read before
        }
      } catch (e) {
        if (this._state != LIVE) {
          if (e === this._error) throw e;
          return { done: true, value: undefined };
        }
        if (final(e)) {
          this._end(e, this.final);
          // The server refused the resume point (404, 409, 410, 400): a kept one can never resume, so forget it.
          if (this._key && TYPED[/** @type {TokenwireError} */ (e).type])
            storage("sessionStorage")?.removeItem(PREFIX + this._key);
          throw e;
        }
        this._lost(e);
      }
    }
  }

  /** @internal One frame or event; the token it delivers, if any. @param {Item} item */
  _take(item) {
    const { kind, seq, payload } = item;
    if (kind == "fin") return void this._end(null, this.final);
    if (kind == "stream") {
      const info = JSON.parse(payload);
      this.id = info.stream_id;
      this.epoch = info.epoch;
    }
    if (!(kind == "token" || kind == "done" || kind == "error") || seq <= this.seq) return;
    if (seq > this.seq + 1) throw new WireError("seq_gap", `seq ${seq} after ${this.seq}`);
    this.seq = seq;
    this._fails = 0;
    if (kind == "token") {
      const k = this.kpis;
      const t = now();
      if (!k.tokens++) {
        k.ttftMs = t - this._t0;
        this._t1 = t;
      }
      k.tokensPerS = t > this._t1 ? ((k.tokens - 1) * 1000) / (t - this._t1) : null;
      this.text += payload;
      this._save();
      this._emit("token", { token: payload, seq });
      this._emit("kpi", { ...k });
      return payload;
    }
    const body = JSON.parse(payload);
    if (kind == "done") return void this._end(null, body);
    this.final = { reason: "error", ...body };
    throw new GenerationFailed(String(body.message), 0, { type: "GenerationFailed", ...body });
  }

  /** @internal A new connection after the last one, with backoff; null: the stream had ended (204). */
  async _connect() {
    const c = this._c;
    this._t0 ||= now();
    for (;;) {
      if (this._fails > c.options.maxRetries) {
        const e = new ConnectError(`no connection after ${this._fails} tries`, this._error);
        this._end(e, this.final);
        throw e;
      }
      if (this._fails) {
        const delayMs = backoff(this._fails, this._retry);
        this._emit("reconnect", { attempt: this._fails, delayMs, error: this._error });
        await new Promise((r) => {
          const timer = setTimeout(r, delayMs);
          this._wake = () => r(clearTimeout(timer)); // an abort, a detach: no more waiting
        });
        if (this._state != LIVE) return null;
      }
      try {
        const conn = await this._open();
        if (this._down) {
          this.kpis.reconnects++;
          this.kpis.recoveryMs = now() - this._down;
          this._down = 0;
          this._emit("kpi", { ...this.kpis });
        }
        return conn;
      } catch (e) {
        if (final(e)) throw e;
        this._error = e;
        this._fails++;
      }
    }
  }

  /** @internal @returns {Promise<Conn | null>} */
  async _open() {
    if (this.transport == "webtransport") {
      const wt = await this._c._session();
      if (wt) return wtRequest(wt, "attach", { stream_id: this.id, epoch: this.epoch, after: this.seq });
      this._switch();
    }
    return sseRequest(this._c, "GET", `/v1/streams/${this.id}/events`, { "last-event-id": this.lastEventId });
  }

  /** @internal @param {unknown} error */
  _lost(error) {
    this._retry = this._conn?.parser?.retry ?? this._retry;
    this._conn?.close();
    this._conn = null;
    this._q = [];
    this._error = error;
    this._down ||= now();
    this._fails++;
    if (this.transport == "webtransport" && this._c.options.transport == "auto") {
      this.kpis.fallbacks++;
      this._switch();
      this._fails = 0; // another transport: no wait before its first try
    }
  }

  /** @internal */
  _switch() {
    this.transport = this.kpis.transport = "sse";
    this._emit("transport", "sse");
  }

  /** @internal */
  _detach() {
    if (this._state != LIVE) return;
    this._state = DETACHED;
    this._close();
  }

  /** @internal @param {unknown} error @param {Final | null} end */
  _end(error, end) {
    if (this._state == ENDED) return;
    this._state = ENDED;
    this._error = error;
    this.final = end;
    this._close();
    this._emit("end", end || (error ? { reason: "error", error } : null));
    this._emit("kpi", { ...this.kpis });
  }

  /** @internal */
  _close() {
    this._wake();
    this._conn?.close();
    this._conn = null;
    this._q = [];
    READING.delete(this);
    this._save(true);
  }

  /** @internal @param {boolean} [force] */
  _save(force) {
    if (!this._key) return;
    const wait = this._saved + 100 - now();
    if (!force && wait > 0) {
      // The last state of a burst is saved too, even when no token follows it (a held or slow generation).
      this._later ||= setTimeout(() => {
        this._later = 0;
        this._save(true);
      }, wait);
      return;
    }
    clearTimeout(this._later);
    this._later = 0;
    this._saved = now();
    try {
      storage("sessionStorage")?.setItem(
        PREFIX + this._key,
        JSON.stringify({ id: this.lastEventId, text: this.text, final: this.final }),
      );
    } catch {} // full or refused: the stream goes on, a reload starts over
  }
}
