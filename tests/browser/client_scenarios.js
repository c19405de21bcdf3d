// Page-side scenarios of the tokenwire browser client (js/src/client.js), the same in every browser.
//
// A test evaluates this file once per page load through its PageDriver (`driver.run(source, options)`): it
// imports the client the server serves and defines `globalThis.twt`. Everything else is a one-line call such
// as `driver.run("(a) => twt.start('one', a)", {...})`; every answer is plain JSON (a snapshot of a run: the
// tokens the application's loop received, the stream's own fields, its events, its error as data).
//
// options.webTransport === false removes `WebTransport` from the page before the client is imported: what a
// browser without it gives the client.
async ({webTransport = true, module = "/v1/client.js"} = {}) => {
  if (!webTransport) delete globalThis.WebTransport;
  const client = await import(module);
  const clients = {};
  const runs = {};
  const now = () => performance.now();
  // As JSON, errors included (name and message: JSON.stringify alone makes an Error `{}`).
  const asJson = (_, v) => (v instanceof Error ? {name: v.name, message: v.message} : v);
  const plain = (value) => (value === undefined ? null : JSON.parse(JSON.stringify(value, asJson)));
  const ERRORS = [
    "TokenwireError", "StreamNotFound", "EpochMismatch", "ResumeExpired", "ResumeFromFuture", "GenerationFailed",
    "ConnectError",
  ];

  // An error as data: its class (and every exported error class it is an instance of) and its typed fields.
  const errorOf = (e) => ({
    name: e?.name ?? null,
    message: String(e?.message ?? e),
    classes: ERRORS.filter((k) => typeof client[k] === "function" && e instanceof client[k]),
    status: e?.status ?? null,
    type: e?.type ?? null,
    epoch: e?.epoch ?? null,
    oldestSeq: e?.oldestSeq ?? null,
    lastSeq: e?.lastSeq ?? null,
    code: e?.code ?? null,
  });

  const snapshot = (run) => {
    const s = run.stream;
    return {
      id: s?.id ?? null,
      epoch: s?.epoch ?? null,
      seq: s?.seq ?? null,
      lastEventId: s?.lastEventId ?? null,
      transport: s?.transport ?? null,
      text: s?.text ?? null,
      final: plain(s?.final),
      kpis: plain(s?.kpis),
      textAtStart: run.textAtStart,
      tokens: run.tokens,
      transports: run.transports,
      events: run.events,
      kpiEvents: run.kpiEvents,
      lastKpi: run.lastKpi,
      error: run.error,
      done: run.done,
      broke: run.broke,
      generateMs: run.generateMs,
      firstTokenMs: run.firstTokenMs,
    };
  };

  // Reads `stream` as an application does (for await), in the background; `breakAfter`: leave the loop with
  // `break` after that many tokens (a detach).
  const consume = (name, stream, {breakAfter = 0, startedAt = now(), generateMs = null} = {}) => {
    const run = {
      stream, tokens: [], transports: [], events: [], error: null, done: false, broke: false,
      textAtStart: stream.text ?? null, generateMs, firstTokenMs: null, kpiEvents: 0, lastKpi: null,
    };
    for (const type of ["transport", "reconnect", "end"]) {
      stream.addEventListener(type, (ev) => run.events.push({type, detail: plain(ev.detail), at: run.tokens.length}));
    }
    stream.addEventListener("kpi", (ev) => {
      run.kpiEvents++;
      run.lastKpi = plain(ev.detail);
    });
    run.finished = (async () => {
      try {
        for await (const token of stream) {
          if (run.firstTokenMs === null) run.firstTokenMs = now() - startedAt;
          run.tokens.push(token);
          run.transports.push(stream.transport);
          if (breakAfter && run.tokens.length >= breakAfter) {
            run.broke = true;
            break;
          }
        }
      } catch (e) {
        run.error = errorOf(e);
      } finally {
        run.done = true;
      }
    })();
    runs[name] = run;
    return run;
  };

  const within = (promise, ms) =>
    Promise.race([promise.then(() => false), new Promise((resolve) => setTimeout(() => resolve(true), ms))]);

  globalThis.twt = {
    client,
    clients,
    runs,
    hasWebTransport: typeof globalThis.WebTransport === "function",

    // A TokenwireClient of this page's origin.
    newClient(name, options = {}) {
      clients[name] = new client.TokenwireClient(location.origin, options);
      return null;
    },

    // client.generate(request, opts), then read it in the background; the run's first snapshot, or the error
    // generate() threw.
    async start(name, {client: clientName = "c", request, persist = null, breakAfter = 0}) {
      const startedAt = now();
      let stream;
      try {
        stream = await clients[clientName].generate(request, persist === null ? undefined : {persist});
      } catch (e) {
        return {error: errorOf(e), generateMs: now() - startedAt};
      }
      return snapshot(consume(name, stream, {breakAfter, startedAt, generateMs: now() - startedAt}));
    },

    // client.resume(lastEventId), read in the background.
    resume(name, {client: clientName = "c", lastEventId, breakAfter = 0}) {
      let stream;
      try {
        stream = clients[clientName].resume(lastEventId);
      } catch (e) {
        return {error: errorOf(e)};
      }
      return snapshot(consume(name, stream, {breakAfter}));
    },

    // client.restore(key) after a reload: null when nothing was kept, else read in the background.
    restore(name, {client: clientName = "c", key}) {
      const stream = clients[clientName].restore(key);
      return stream === null ? null : snapshot(consume(name, stream));
    },

    state(name) {
      return snapshot(runs[name]);
    },

    // Resolves once the run holds `n` tokens (or has ended); false after `timeoutMs`.
    async waitTokens(name, n, timeoutMs = 10000) {
      const run = runs[name];
      const deadline = now() + timeoutMs;
      while (run.tokens.length < n && !run.done) {
        if (now() > deadline) return false;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      return run.tokens.length >= n;
    },

    // The run at its end (its loop left); `timedOut` when it did not end within `timeoutMs`.
    async finished(name, timeoutMs = 15000) {
      const run = runs[name];
      const timedOut = await within(run.finished, timeoutMs);
      return {...snapshot(run), timedOut};
    },

    drop(name) {
      runs[name].stream.drop();
      return null;
    },

    // stream.abort(): resolves when the server has been told; then the loop ends.
    async abort(name, timeoutMs = 10000) {
      const run = runs[name];
      let error = null;
      try {
        await run.stream.abort();
      } catch (e) {
        error = errorOf(e);
      }
      const timedOut = await within(run.finished, timeoutMs);
      return {...snapshot(run), abortError: error, timedOut};
    },

    storageKeys() {
      return {session: Object.keys(sessionStorage), local: Object.keys(localStorage)};
    },
  };
  return {hasWebTransport: globalThis.twt.hasWebTransport, exports: Object.keys(client).sort()};
}
