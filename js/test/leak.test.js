// A page's clients come and go (one per view, say): once the application lets go of a client, nothing of the page may
// keep it alive. Node has no window; a real EventTarget stands in for it as the client's `globalThis` listeners, and
// V8's collector (exposed here) tells whether the client is still reachable.
import assert from "node:assert/strict";
import { test } from "node:test";
import v8 from "node:v8";
import vm from "node:vm";

const page = new EventTarget();
Object.assign(globalThis, {
  addEventListener: page.addEventListener.bind(page),
  removeEventListener: page.removeEventListener.bind(page),
});
v8.setFlagsFromString("--expose-gc");
const gc = vm.runInNewContext("gc");
// Loaded once the page's listeners are there, as in a browser.
const { TokenwireClient } = await import("../src/client.js");

test("a client the application no longer holds is collected (the page's listeners do not keep it)", async () => {
  /** @type {InstanceType<typeof TokenwireClient> | null} */
  let client = new TokenwireClient("http://127.0.0.1:9", { transport: "sse" });
  client.resume("some-stream:epoch1:3", { persist: "kept" }); // never iterated: holds nothing open
  const ref = new WeakRef(client);
  client.close();
  client = null;
  await new Promise((resolve) => setImmediate(resolve));
  gc();
  assert.equal(ref.deref(), undefined, "the client is still reachable");
});
