/**
 * One QUIC varint (RFC 9000 §16) at `at`: `[value, next]`, or null when `buf` ends inside it. Non-minimal
 * forms are accepted; a value above `Number.MAX_SAFE_INTEGER` throws `WireError` "varint_too_large".
 * @param {Uint8Array} buf
 * @param {number} at
 * @returns {[number, number] | null}
 */
export function readVarint(buf: Uint8Array, at: number): [number, number] | null;
/**
 * The minimal varint encoding of `n` (an integer from 0 to `Number.MAX_SAFE_INTEGER`).
 * @param {number} n
 * @returns {Uint8Array}
 */
export function writeVarint(n: number): Uint8Array;
/**
 * A WebTransport request message (§3.1): kind byte, varint length, JSON body.
 * @param {MessageKind} kind
 * @param {object} body
 * @returns {Uint8Array}
 */
export function encodeMessage(kind: MessageKind, body: object): Uint8Array;
/** Base of every error this module throws. `type` is the server's error type (or the class name). */
export class TokenwireError extends Error {
    /**
     * @param {string} message
     * @param {number} [status] HTTP status (0 when none applies).
     * @param {Record<string, any>} [body] The server's error object, as it sent it.
     */
    constructor(message: string, status?: number, body?: Record<string, any>);
    status: number;
    /** @type {string} */
    type: string;
    body: Record<string, any>;
}
/** 404: the stream is unknown (never created, expired, evicted). */
export class StreamNotFound extends TokenwireError {
}
/** 409: the server's history changed (a restart); `epoch` is the server's. */
export class EpochMismatch extends TokenwireError {
    /** @param {string} m @param {number} s @param {Record<string, any>} b */
    constructor(m: string, s: number, b: Record<string, any>);
    /** @type {string | undefined} */
    epoch: string | undefined;
}
/** 410: the frames after the resume point are no longer held; `oldestSeq` is the oldest still held. */
export class ResumeExpired extends TokenwireError {
    /** @param {string} m @param {number} s @param {Record<string, any>} b */
    constructor(m: string, s: number, b: Record<string, any>);
    /** @type {number | undefined} undefined where the answer had no tokenwire error body (a proxy's) */
    oldestSeq: number | undefined;
}
/** 400: the resume point is past the stream's last frame (`lastSeq`). */
export class ResumeFromFuture extends TokenwireError {
    /** @param {string} m @param {number} s @param {Record<string, any>} b */
    constructor(m: string, s: number, b: Record<string, any>);
    /** @type {number | undefined} undefined where the answer had no tokenwire error body (a proxy's) */
    lastSeq: number | undefined;
}
/** The generation ended with an `error` frame; `code` is its code (such as "generation_failed"). */
export class GenerationFailed extends TokenwireError {
    /** @param {string} m @param {number} s @param {Record<string, any>} b */
    constructor(m: string, s: number, b: Record<string, any>);
    /** @type {string} */
    code: string;
}
/** The server could not be reached within the retry budget (`cause`: the last failure). */
export class ConnectError extends TokenwireError {
    /** @param {string} m @param {unknown} [cause] */
    constructor(m: string, cause?: unknown);
    cause: unknown;
}
/** Malformed bytes from the server; `code` says what (see docs/client.md). */
export class WireError extends TokenwireError {
    /** @param {string} code @param {string} m */
    constructor(code: string, m: string);
    code: string;
}
/**
 * Incremental decoder of binary frames (§3): feed any split of the bytes. Errors (`WireError` codes
 * unknown_kind, zero_seq, oversized, invalid_utf8, truncated, varint_too_large) are raised where the Rust
 * decoder raises them; after the first one every call raises it again. Frames completed before an error
 * in one `feed` are returned, and the next call raises.
 */
export class FrameDecoder {
    /** @param {number} [maxPayload] Largest payload accepted, in bytes. */
    constructor(maxPayload?: number);
    maxPayload: number;
    /** @param {Uint8Array} chunk @returns {Frame[]} */
    feed(chunk: Uint8Array): Frame[];
    /** The end of the bytes: `WireError` "truncated" if part of a frame is buffered. */
    close(): void;
}
/**
 * The reader of one request stream (§3.1): the reply message (reported once, by the `feed` that completes
 * it), then binary frames. Errors: `WireError` unknown_kind, oversized, invalid_utf8, invalid_body (not a
 * JSON object), unexpected_bytes (bytes after a reply that carries no stream), truncated, and those of
 * `FrameDecoder`.
 */
export class ReplyDecoder {
    /** @param {number} [maxPayload] */
    constructor(maxPayload?: number);
    /** @type {Reply | null} */
    reply: Reply | null;
    /** @param {Uint8Array} chunk @returns {{reply: Reply | null, frames: Frame[]}} */
    feed(chunk: Uint8Array): {
        reply: Reply | null;
        frames: Frame[];
    };
    /** The stream's end (FIN): `WireError` "truncated" inside the reply or a frame, or before any reply. */
    close(): void;
}
/**
 * Incremental WHATWG `text/event-stream` parser: feed bytes (decoded as UTF-8 with replacement) or text;
 * returns the events dispatched. `retry` is the last valid `retry:` value (ms), `lastEventId` the last
 * event ID string.
 */
export class SseParser {
    /** @type {number | null} */
    retry: number | null;
    lastEventId: string;
    /** @param {Uint8Array | string} chunk @returns {SseEvent[]} */
    feed(chunk: Uint8Array | string): SseEvent[];
}
/** Client of one tokenwire server. */
export class TokenwireClient {
    /**
     * @param {string} [baseUrl] The server, such as "https://example.com" or "/api" (default: the page's origin).
     * @param {ClientOptions} [options]
     */
    constructor(baseUrl?: string, options?: ClientOptions);
    baseUrl: string;
    /** @type {Required<ClientOptions>} */
    options: Required<ClientOptions>;
    /**
     * Starts a generation: `POST /v1/streams`, or a start request over WebTransport. Resolves once the server
     * has named the stream. `body` is the request's JSON (`prompt`, `max_tokens`, other fields pass through).
     * @param {Record<string, unknown>} body
     * @param {StreamOptions} [options] `persist`: keep the stream's text and resume point in sessionStorage
     *   under this key (see `restore`).
     * @returns {Promise<TokenStream>}
     */
    generate(body: Record<string, unknown>, options?: StreamOptions): Promise<TokenStream>;
    /**
     * A stream to read from a resume point ("id:epoch:seq", a stream's `lastEventId`): synchronous; it attaches
     * when iterated, and yields the tokens after that point.
     * @param {string} lastEventId
     * @param {StreamOptions} [options]
     */
    resume(lastEventId: string, options?: StreamOptions): TokenStream;
    /**
     * The stream kept under `key` by `generate(..., {persist: key})` (after a reload, say): its `text` so far,
     * `final` if it ended, and iteration continues from its resume point. Null when nothing is kept.
     * @param {string} key
     */
    restore(key: string): TokenStream | null;
    /** Detaches every stream being read (their generations go on) and closes the WebTransport session. */
    close(): void;
}
/**
 * One generation's tokens: iterate it (`for await`) to get each token once, in order. Leaving the loop
 * detaches (the generation goes on); iterating again attaches again. Events: "token", "kpi",
 * "transport", "reconnect", "end" (`CustomEvent`, `detail` = the data).
 */
export class TokenStream extends EventTarget {
    /** The stream id. */
    id: string;
    /** The server history the stream belongs to. */
    epoch: string;
    /** Seq of the last frame delivered (the final frame's once ended). */
    seq: number;
    /** Every token delivered so far, joined (with what `restore` brought back). */
    text: string;
    /** @type {Transport} */
    transport: Transport;
    /** @type {Final | null} The final frame's data once the stream has ended. */
    final: Final | null;
    /** @type {Kpis} */
    kpis: Kpis;
    /** The resume point: "id:epoch:seq". */
    get lastEventId(): string;
    /**
     * Cancels the generation on the server (WebTransport cancel request, or `DELETE`); the loop ends.
     * @returns {Promise<void>}
     */
    abort(): Promise<void>;
    /**
     * Listens to one of the stream's events, typed as `StreamEvents` gives them (any other type as `EventTarget` does).
     * @template {keyof StreamEvents} K
     * @overload
     * @param {K} type
     * @param {(event: StreamEvents[K]) => void} listener
     * @param {boolean | AddEventListenerOptions} [options]
     * @returns {void}
     */
    addEventListener<K extends keyof StreamEvents>(type: K, listener: (event: StreamEvents[K]) => void, options?: boolean | AddEventListenerOptions | undefined): void;
    /**
     * @overload
     * @param {string} type
     * @param {EventListenerOrEventListenerObject | null} listener
     * @param {boolean | AddEventListenerOptions} [options]
     * @returns {void}
     */
    addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions | undefined): void;
    /**
     * @template {keyof StreamEvents} K
     * @overload
     * @param {K} type
     * @param {(event: StreamEvents[K]) => void} listener
     * @param {boolean | EventListenerOptions} [options]
     * @returns {void}
     */
    removeEventListener<K extends keyof StreamEvents>(type: K, listener: (event: StreamEvents[K]) => void, options?: boolean | EventListenerOptions | undefined): void;
    /**
     * @overload
     * @param {string} type
     * @param {EventListenerOrEventListenerObject | null} listener
     * @param {boolean | EventListenerOptions} [options]
     * @returns {void}
     */
    removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions | undefined): void;
    /** Cuts the current connection as a network failure would; the stream recovers by itself. */
    drop(): void;
    /** @returns {AsyncIterator<string>} */
    [Symbol.asyncIterator](): AsyncIterator<string>;
}
export type FrameKind = "token" | "done" | "error" | "heartbeat";
export type Frame = {
    kind: FrameKind;
    seq: number;
    payload: string;
};
export type SseEvent = {
    event: string;
    data: string;
    id: string;
};
export type Reply = {
    kind: "stream" | "cancelled" | "error";
    body: Record<string, any>;
};
export type MessageKind = "start" | "attach" | "cancel";
export type TransportChoice = "auto" | "webtransport" | "sse";
export type Transport = "webtransport" | "sse";
export type ClientOptions = {
    /**
     * "auto" (default): WebTransport where it works, else SSE.
     */
    transport?: TransportChoice | undefined;
    /**
     * WebTransport connect timeout before SSE is used (3000).
     */
    connectTimeoutMs?: number | undefined;
    /**
     * Added to every HTTP request (authorization, say).
     */
    headers?: Record<string, string> | undefined;
    /**
     * An API key: `Authorization: Bearer` on HTTP requests, `?access_token=` on the
     * WebTransport CONNECT (a browser sets no headers there).
     */
    accessToken?: string | undefined;
    /**
     * Reconnect attempts per outage before `ConnectError` (10).
     */
    maxRetries?: number | undefined;
    /**
     * An SSE connection on which nothing (not even a heartbeat) arrives this
     * long while the stream waits for tokens counts as lost, and is resumed (45000; 0: never).
     */
    idleTimeoutMs?: number | undefined;
};
export type Kpis = {
    /**
     * The transport in use now.
     */
    transport: Transport;
    /**
     * Time from the request to the first token.
     */
    ttftMs: number | null;
    /**
     * Tokens per second since the first token.
     */
    tokensPerS: number | null;
    /**
     * Tokens this object delivered.
     */
    tokens: number;
    /**
     * Connections re-established after a loss.
     */
    reconnects: number;
    /**
     * Last outage: from the loss to the new connection.
     */
    recoveryMs: number | null;
    /**
     * Switches from WebTransport to SSE in the middle of the answer.
     */
    fallbacks: number;
};
export type Final = {
    /**
     * "stop", "length", "cancelled", ..., or "error" for an error frame.
     */
    reason: string;
    usage?: Record<string, number> | undefined;
    /**
     * For an error frame.
     */
    code?: string | undefined;
    /**
     * For an error frame.
     */
    message?: string | undefined;
};
/**
 * The events of a `TokenStream`, each with its `detail`.
 */
export type StreamEvents = {
    /**
     * A token handed to the loop.
     */
    token: CustomEvent<{
        token: string;
        seq: number;
    }>;
    /**
     * After each token, a reconnect, and the end: a copy of `kpis`.
     */
    kpi: CustomEvent<Kpis>;
    /**
     * The stream moved to SSE.
     */
    transport: CustomEvent<Transport>;
    /**
     * Before each wait of the backoff.
     */
    reconnect: CustomEvent<{
        attempt: number;
        delayMs: number;
        error: unknown;
    }>;
    /**
     * The stream ended.
     */
    end: CustomEvent<Final | {
        reason: "error";
        error: unknown;
    } | null>;
};
export type StreamOptions = {
    persist?: string;
};
export type Item = {
    kind: string;
    seq: number;
    payload: string;
};
export type Conn = {
    read(): Promise<Item[] | null>;
    close(): void;
    cut(): void;
    parser?: SseParser;
};
