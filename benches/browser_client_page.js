// Page side of benches/browser_client.py: the tokenwire browser client (/v1/client.js) read by a lean
// application loop, timed with the page's own clock (performance.now()).
//
// The bench evaluates this file once per page load through its PageDriver; it imports the client the server
// serves and defines `globalThis.twb`. Every answer is plain JSON: the timings, the stream's fields and KPIs,
// the whole text (the Python side checks it against a clean replay), the error as data.
async ({module = "/v1/client.js"} = {}) => {
  const client = await import(module);
  const clients = {};
  const now = () => performance.now();
  const errorOf = (e) => ({name: e?.name ?? null, message: String(e?.message ?? e), status: e?.status ?? null});

  globalThis.twb = {
    hasWebTransport: typeof globalThis.WebTransport === "function",

    newClient(name, options = {}) {
      clients[name]?.close();
      clients[name] = new client.TokenwireClient(location.origin, options);
      return null;
    },

    closeClient(name) {
      clients[name]?.close();
      delete clients[name];
      return null;
    },

    // One generation, from generate() to the end of the loop. `cut`: at the `cut.at`-th token, cut the
    // connection: "drop" calls stream.drop(); "kill" sends `POST cut.path` (the server kills the connection)
    // without waiting for its answer, as a network event the application does not see coming. The recovery
    // is the time from the cut to the first token the loop gets over the new connection (the first one
    // after kpis.reconnects went up): tokens already received before the cut are delivered first and do not
    // count as recovered.
    async run({client: name = "c", request, cut = null}) {
      const c = clients[name];
      const t0 = now();
      let stream;
      try {
        stream = await c.generate(request);
      } catch (e) {
        return {error: errorOf(e), generateMs: now() - t0};
      }
      const generateMs = now() - t0;
      const startTransport = stream.transport;
      let n = 0;
      let first = null;
      let last = null;
      let cutAt = null;
      let reconnectsAtCut = 0;
      let recovered = null;
      let kill = null;
      let waitMs = 0;
      const reconnects = [];
      let error = null;
      // The backoff the client waits before reconnecting (part of the recovery: SSE waits, a fallback not).
      stream.addEventListener("reconnect", (ev) => {
        if (cutAt === null || recovered !== null) return;
        waitMs += ev.detail.delayMs;
        const {attempt, delayMs, error: e} = ev.detail;
        reconnects.push({attempt, delayMs, error: e ? errorOf(e) : null, atMs: now() - cutAt});
      });
      try {
        for await (const _token of stream) {
          const t = now();
          n++;
          if (n === 1) first = t;
          last = t;
          if (cutAt !== null && recovered === null && stream.kpis.reconnects > reconnectsAtCut) recovered = t;
          if (cut && n === cut.at) {
            reconnectsAtCut = stream.kpis.reconnects;
            cutAt = now();
            if (cut.how === "drop") stream.drop();
            else {
              const path = cut.path.replace("{id}", stream.id);
              kill = fetch(path, {method: "POST"}).then(
                async (r) => ({status: r.status, body: await r.json(), ms: now() - cutAt}),
                (e) => ({error: errorOf(e)}),
              );
            }
          }
        }
      } catch (e) {
        error = errorOf(e);
      }
      return {
        error,
        id: stream.id,
        epoch: stream.epoch,
        startTransport,
        transport: stream.transport,
        final: stream.final,
        kpis: {...stream.kpis},
        tokens: n,
        text: stream.text,
        generateMs,
        ttftMs: first === null ? null : first - t0,
        totalMs: last === null ? null : last - t0,
        streamMs: last === null ? null : last - first,
        recoveryMs: recovered === null ? null : recovered - cutAt,
        waitMs,
        reconnects,
        kill: kill === null ? null : await kill,
      };
    },

    storageKeys() {
      return Object.keys(localStorage);
    },

    clearStorage() {
      localStorage.clear();
      sessionStorage.clear();
      return null;
    },
  };
  return {hasWebTransport: globalThis.twb.hasWebTransport, exports: Object.keys(client).sort()};
}
