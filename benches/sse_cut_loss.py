"""Tokens an SSE client that records ``id:`` as it reads the line loses to connection cuts (docs/protocol.md §2.2,
"Field order").

A server (``--python``: any build's interpreter, e.g. main's venv for the "before" number) runs ``tokenwire
serve``; one finished stream of ``--tokens`` tokens is made; then ``@microsoft/fetch-event-source`` (npm, in
Node) reads it with ``GET /v1/streams/{id}/events`` through a proxy that ends each connection after a random
number of response-body bytes (uniform in ``[0, --max-offset)``, seeded) until ``--cuts`` cuts are made. The
client resumes with the id it recorded last. Printed: cuts made, tokens lost (seqs never dispatched), tokens
lost per cut, and whether the client saw the final event.

    .venv/bin/python -m benches.sse_cut_loss --tokens 3000 --cuts 300
    .venv/bin/python -m benches.sse_cut_loss --tokens 3000 --cuts 300 --python /work/main/.venv/bin/python
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from tests.support.cut_proxy import cut_proxy
from tests.support.fetch_event_source import install, run_client


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_ready(client: httpx.AsyncClient, proc: asyncio.subprocess.Process) -> None:
    for _ in range(300):
        if proc.returncode is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if (await client.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def measure(args: argparse.Namespace, npm_dir: Path) -> dict[str, Any]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the interpreter's own install
    cmd = [args.python, "-m", "tokenwire", "serve", "--port", str(port), "--no-webtransport", "--tokens-per-s", "0"]
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            await _wait_ready(client, proc)
            r = await client.post("/v1/streams", json={"prompt": "cut loss", "max_tokens": args.tokens})
            stream_id = r.headers["x-tokenwire-stream-id"]
            assert r.text.count("event: token") == args.tokens
        rng = random.Random(args.seed)
        offsets = [rng.randrange(args.max_offset) for _ in range(args.cuts)]
        cut = lambda k: offsets[k] if k < len(offsets) else None
        async with cut_proxy(port, cut, body_only=True) as proxy:
            async with asyncio.timeout(600):
                result = await run_client(npm_dir, f"http://127.0.0.1:{proxy.port}/v1/streams/{stream_id}/events")
        seqs = {int(m["id"].rsplit(":", 1)[1]) for m in result["messages"] if m["event"] == "token"}
        lost = args.tokens - len(seqs)
        return {
            "python": args.python,
            "tokens": args.tokens,
            "cuts": len(proxy.cuts),
            "lost": lost,
            "lost_per_cut": round(lost / max(1, len(proxy.cuts)), 4),
            "finished": result["finished"],
            "requests": result["opens"],
        }
    finally:
        proc.terminate()
        await proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--python", default=sys.executable, help="interpreter whose tokenwire serves (default: this one)")
    p.add_argument("--tokens", type=int, default=3000)
    p.add_argument("--cuts", type=int, default=300)
    p.add_argument("--max-offset", type=int, default=1500, help="cuts fall uniformly in [0, this) body bytes")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reason = install(Path(tmp))
        if reason is not None:
            print(reason, file=sys.stderr)
            return 2
        print(json.dumps(asyncio.run(measure(args, Path(tmp)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
