// docs/client.md's examples as a TypeScript application writes them against the published types
// (types/client.d.ts): `make lint-js` type-checks this file (tsconfig.json includes it). Never run.
import { ResumeExpired, StreamNotFound, TokenwireClient, type Final, type Kpis } from "../types/client.js";

export async function examples(): Promise<void> {
  const client = new TokenwireClient();
  const stream = await client.generate({ prompt: "Hello", max_tokens: 32 });
  for await (const token of stream) console.log(token.length);
  const final: Final | null = stream.final;
  const kpis: Kpis = stream.kpis;
  console.log(stream.transport, final, kpis);

  const badge = document.body.appendChild(document.createElement("p"));
  const next = await client.generate({ prompt: "Hello again", max_tokens: 64 });
  next.addEventListener("kpi", (e) => (badge.textContent = `${e.detail.transport} · ${e.detail.tokensPerS?.toFixed(0)} tok/s`));
  for await (const token of next) console.log(token.length);

  // Each event's detail has the type the docs give it.
  stream.addEventListener("token", (e) => console.log(e.detail.token.length, e.detail.seq + 1));
  stream.addEventListener("transport", (e) => console.log(e.detail === "sse"));
  stream.addEventListener("reconnect", (e) => console.log(e.detail.attempt + e.detail.delayMs, e.detail.error));
  stream.addEventListener("end", (e) => console.log(e.detail?.reason));
  // @ts-expect-error: a kpi event's detail is Kpis, not any
  stream.addEventListener("kpi", (e) => e.detail.nothing);
  const onToken = (e: CustomEvent<{ token: string; seq: number }>) => console.log(e.detail.token);
  stream.addEventListener("token", onToken);
  stream.removeEventListener("token", onToken);
  stream.addEventListener("other", (e: Event) => console.log(e.type)); // any other type: a plain Event

  const page = document.getElementById("out") as HTMLElement;
  const kept =
    client.restore("answer") ?? (await client.generate({ prompt: "Hello", max_tokens: 200 }, { persist: "answer" }));
  page.textContent = kept.text;
  for await (const token of kept) page.textContent += token;

  const out = document.body.appendChild(document.createElement("pre"));
  const saved = `nosuchstream:${stream.epoch}:0`;
  try {
    for await (const token of client.resume(saved)) out.textContent += token;
  } catch (e) {
    if (e instanceof ResumeExpired) {
      // @ts-expect-error: a 410 without tokenwire's error body (a proxy's) has no oldest_seq
      const oldest: number = e.oldestSeq;
      out.textContent += ` [frames before ${oldest ?? "?"} are gone]`;
    }
    else if (e instanceof StreamNotFound) out.textContent = "That answer is gone: ask again.";
    else throw e;
  }
}
