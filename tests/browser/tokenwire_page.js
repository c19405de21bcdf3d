// A browser client of tokenwire, written from docs/protocol.md alone (no tokenwire code in the page):
// WebTransport requests and replies (§3.1), the core's binary frames (§3), and EventSource (§2).
// The test evaluates this file in a page of the SSE server's origin; it defines `window.tw`.
// Everything a test reads back is plain data in `tw.runs[name]`; `tw.finished[name]` resolves at its end.
() => {
  const REQUEST = {start: 0x11, attach: 0x12, cancel: 0x13};
  const REPLY = {0x21: "stream", 0x22: "cancelled", 0x23: "error"};
  const FRAME = {1: "token", 2: "done", 3: "error", 4: "heartbeat"};
  const utf8 = new TextEncoder();
  // fatal: invalid UTF-8 is an error, not U+FFFD; ignoreBOM: a payload that starts with U+FEFF keeps it.
  const text = new TextDecoder("utf-8", {fatal: true, ignoreBOM: true});

  // QUIC variable-length integer (RFC 9000 §16), also non-minimal forms; null when incomplete.
  const readVarint = (buf, at) => {
    if (at >= buf.length) return null;
    const size = 1 << (buf[at] >> 6);
    if (at + size > buf.length) return null;
    let value = buf[at] & 0x3f;
    for (let i = 1; i < size; i++) value = value * 256 + buf[at + i];
    if (!Number.isSafeInteger(value)) throw new Error(`varint ${value} is beyond what this page handles`);
    return [value, at + size];
  };
  const writeVarint = (n) => {
    if (n < 0x40) return [n];
    if (n < 0x4000) return [0x40 | (n >> 8), n & 0xff];
    if (n < 0x40000000) return [0x80 | (n >>> 24), (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
    throw new Error("message too long for this page");
  };
  const encodeMessage = (kind, body) => {
    const json = utf8.encode(JSON.stringify(body));
    return new Uint8Array([kind, ...writeVarint(json.length), ...json]);
  };
  const concat = (a, b) => {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  };

  // One binary frame (§3) at `at`: [{kind, seq, payload}, end], or null when incomplete.
  const readFrame = (buf, at) => {
    const kind = FRAME[buf[at]];
    if (kind === undefined) throw new Error(`frame kind ${buf[at]} unknown`);
    const seq = readVarint(buf, at + 1);
    if (seq === null) return null;
    if (seq[0] === 0 && kind !== "heartbeat") throw new Error(`${kind} frame with seq 0`);
    const len = readVarint(buf, seq[1]);
    if (len === null || len[1] + len[0] > buf.length) return null;
    const end = len[1] + len[0];
    return [{kind, seq: seq[0], payload: text.decode(buf.subarray(len[1], end))}, end];
  };

  // One request stream's reader: the reply message, then frames; any split of the bytes.
  class StreamParser {
    constructor(run, onReply) {
      this.run = run;
      this.onReply = onReply;
      this.buf = new Uint8Array(0);
    }
    feed(chunk) {
      this.buf = concat(this.buf, chunk);
      let at = 0;
      for (;;) {
        const used = this.run.reply === null ? this.reply(at) : this.frame(at);
        if (used === null) break;
        at = used;
      }
      this.buf = this.buf.subarray(at);
    }
    reply(at) {
      const buf = this.buf;
      if (at >= buf.length) return null;
      const kind = REPLY[buf[at]];
      if (kind === undefined) throw new Error(`reply kind 0x${buf[at].toString(16)} unknown`);
      const len = readVarint(buf, at + 1);
      if (len === null || len[1] + len[0] > buf.length) return null;
      const end = len[1] + len[0];
      this.run.reply = {kind, body: JSON.parse(text.decode(buf.subarray(len[1], end)))};
      this.onReply(this.run.reply);
      return end;
    }
    frame(at) {
      if (at >= this.buf.length) return null;
      if (this.run.reply.kind !== "stream") throw new Error("bytes after a reply that carries no stream");
      const got = readFrame(this.buf, at);
      if (got === null) return null;
      const [{kind, seq, payload}, end] = got;
      const run = this.run;
      if (kind === "heartbeat") run.heartbeats++;
      else if (run.end !== null) throw new Error(`${kind} frame after the final frame`);
      else if (kind === "token") {
        run.tokens.push(payload);
        run.seqs.push(seq);
      } else run.end = {kind, seq, body: JSON.parse(payload)};
      return end;
    }
    close() {
      if (this.buf.length) throw new Error(`the stream ended inside a message or frame (${this.buf.length} bytes)`);
    }
  }

  const tw = (window.tw = {runs: {}, finished: {}, sessions: {}});

  // Where the WebTransport server is and the certificate hash to pin: the SSE server's JSON endpoint.
  tw.certificate = async () => (await fetch("/v1/webtransport/certificate")).json();

  // Opens a session pinned by the certificate's SHA-256; resolves to null, or the reason it failed.
  tw.open = async (name, info) => {
    const hash = new Uint8Array(info.sha256.match(/../g).map((h) => parseInt(h, 16)));
    const wt = new WebTransport(info.url, {serverCertificateHashes: [{algorithm: info.algorithm, value: hash}]});
    tw.sessions[name] = wt;
    try {
      await wt.ready;
      return null;
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
  };

  // Closes a session (CLOSE_WEBTRANSPORT_SESSION); its streams' reads then fail.
  tw.close = async (name) => {
    const wt = tw.sessions[name];
    wt.close({closeCode: 0, reason: "test"});
    try {
      await wt.closed;
    } catch (e) {
      return `${e.name}: ${e.message}`;
    }
    return null;
  };

  // One request on a new bidirectional stream of session `session`; resolves with the reply, and
  // `tw.finished[name]` once the stream has ended (FIN), failed, or been reset.
  tw.request = (name, session, kind, body) => {
    const run = (tw.runs[name] = {
      reply: null, tokens: [], seqs: [], end: null, heartbeats: 0, reads: 0, fin: false, failed: null,
    });
    let replied;
    const reply = new Promise((resolve) => { replied = resolve; });
    tw.finished[name] = (async () => {
      try {
        const stream = await tw.sessions[session].createBidirectionalStream();
        const writer = stream.writable.getWriter();
        await writer.write(encodeMessage(REQUEST[kind], body));
        await writer.close();
        const parser = new StreamParser(run, replied);
        const reader = stream.readable.getReader();
        for (;;) {
          const {value, done} = await reader.read();
          if (done) {
            parser.close();
            run.fin = true;
            break;
          }
          run.reads++;
          parser.feed(value);
        }
      } catch (e) {
        run.failed = `${e.name}: ${e.message}`;
      }
      replied(run.reply);  // (no reply: null)
      return run;
    })();
    return reply;
  };

  // Datagram previews (§4.5) of session `session`: `tw.previews[session]` collects {tag, frames} per
  // datagram (whole frames after the tag; a malformed one is counted and dropped) until the session ends.
  tw.previews = {};
  tw.readPreviews = (session) => {
    const got = (tw.previews[session] = {datagrams: [], malformed: 0});
    (async () => {
      const reader = tw.sessions[session].datagrams.readable.getReader();
      for (;;) {
        let value;
        try {
          ({value} = await reader.read());
        } catch (e) {
          return;  // the session is gone
        }
        if (value === undefined) return;
        try {
          const tag = readVarint(value, 0);
          const frames = [];
          for (let at = tag[1]; at < value.length;) {
            const one = readFrame(value, at);
            if (one === null) throw new Error("a cut frame");
            frames.push(one[0]);
            at = one[1];
          }
          got.datagrams.push({tag: tag[0], frames});
        } catch (e) {
          got.malformed++;
        }
      }
    })();
  };

  // EventSource on a stream's events; `tw.finished[name]` resolves on its `done` event (then it is closed,
  // as it would reconnect otherwise).
  tw.eventSource = (name, url) => {
    const run = (tw.runs[name] = {tokens: [], ids: [], starts: [], end: null, opens: 0, errors: 0});
    tw.finished[name] = new Promise((resolve) => {
      const es = new EventSource(url);
      es.addEventListener("open", () => { run.opens++; });
      es.addEventListener("error", () => { run.errors++; });
      es.addEventListener("stream", (e) => {
        run.starts.push({after: JSON.parse(e.data).after, seen: run.tokens.length});
      });
      es.addEventListener("token", (e) => {
        run.tokens.push(e.data);
        run.ids.push(e.lastEventId);
      });
      es.addEventListener("done", (e) => {
        es.close();
        run.end = {body: JSON.parse(e.data), id: e.lastEventId};
        resolve(run);
      });
    });
  };
}
