"""An independent OpenAI-compatible upstream for tests and benches (aiohttp.web; it imports nothing of tokenwire).

Run it as a process, as a real upstream runs::

    python -m tests.support.upstream --port 0 [--tokens-per-s R] [--ttft S] [--mode ok|fail-before|fail-mid|stall]
        [--after N] [--fail-status 429] [--api-key KEY] [--length N] [--uvloop]

It prints one line ``upstream listening on http://127.0.0.1:PORT/v1`` when it accepts connections (port 0 picks a
free one), and serves:

- ``POST /v1/chat/completions``: with ``stream: true``, ``chat.completion.chunk`` SSE as OpenAI and vLLM send it:
  a role chunk, one chunk per content token, a chunk with ``finish_reason``, a usage chunk (``choices: []``) when
  ``stream_options.include_usage``, then ``data: [DONE]``. The content is deterministic: a function of the
  prompt (the messages' contents joined by ``"\\n"``) and ``max_tokens`` (:func:`content_tokens`), with
  non-ASCII text, quotes, tabs and newlines among its tokens, so byte-faithfulness is tested. A request with
  ``tools`` streams ``tool_calls`` deltas instead (one call per tool, at most two: id, type and name first, the
  arguments in pieces) and ends with ``finish_reason: "tool_calls"``. Without ``stream`` the answer is one
  ``chat.completion`` JSON.
- ``GET /calls``: counters (``calls``, ``completed``, ``disconnects``: the client went away mid-stream, ``cut``:
  fail-mid cuts, ``refused``: fail-before answers, ``active``: streams being sent now) and
  ``last_authorization`` (as received: this is a test app). ``GET /calls/{n}`` (1-based): that call's request
  body, its ``Authorization``, the exact ``data:`` payloads it sent (``chunks``) and its ``state``.
  ``DELETE /calls`` resets everything.

The mode of a request comes from the process (``--mode``, ``--after``...), overridden per request by the header
``X-Upstream-Mode`` or by a query in the model name (the proxy forwards the body, not the headers):
``"test-model?mode=fail-mid&after=3&tokens_per_s=50&ttft=0.1&status=503&length=200"``.

- ``fail-before``: answers ``status`` (429) with an OpenAI-style error JSON body, before any chunk.
- ``fail-mid``: sends ``after`` chunks (the role chunk counts), then cuts the connection (no ``[DONE]``).
- ``stall``: sends ``after`` chunks, then nothing more while keeping the connection open.

:class:`Upstream` starts and stops the process for a test and reads its counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl

from aiohttp import web

__all__ = ["MODES", "Upstream", "content_tokens", "tool_arguments"]

MODES = ("ok", "fail-before", "fail-mid", "stall")

# Tokens a test can only get back intact if every layer keeps bytes: non-ASCII, JSON escapes, SSE-hostile
# characters (a newline, a carriage return inside a token, "data:" text).
_VOCABULARY = (
    "Hello",
    " world",
    ",",
    " the",
    " stream",
    " résumé",
    " naïve",
    " 東京",
    " 🙂",
    ' "quoted"',
    " back\\slash",
    "\n",
    "\t",
    " data: not-an-event",
    " </tag>",
    " a&b",
    " —",
    ".",
    " token",
    " end\r",
)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def natural_length(prompt: str) -> int:
    """How many tokens the upstream "wants" to say for ``prompt``: 8 to 39."""
    return 8 + _digest("length", prompt)[0] % 32


def content_tokens(prompt: str, max_tokens: int, length: int = 0) -> list[str]:
    """The content tokens answered to ``prompt``: ``min(length or natural_length(prompt), max_tokens)`` of them
    (``finish_reason`` is ``"length"`` when ``max_tokens`` cut it short, ``"stop"`` otherwise)."""
    n = min(length or natural_length(prompt), max_tokens)
    return [_VOCABULARY[_digest(prompt, i)[0] % len(_VOCABULARY)] for i in range(n)]


def tool_arguments(prompt: str, name: str) -> str:
    """The JSON arguments of the call to tool ``name`` answered to ``prompt``."""
    return json.dumps({"query": prompt[:40], "tool": name, "n": _digest(prompt, name)[1]}, ensure_ascii=False)


def _prompt_of(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # content parts: [{"type": "text", "text": ...}]
            parts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def _dumps(obj: object) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


@dataclasses.dataclass
class Behaviour:
    """How one request is answered (the process's defaults, overridden per request)."""

    mode: str = "ok"
    after: int = 3
    status: int = 429
    tokens_per_s: float = 0.0
    ttft: float = 0.0
    length: int = 0  # content tokens of an answer (still capped by max_tokens); 0: natural_length(prompt)

    def override(self, query: str) -> Behaviour:
        out = dataclasses.replace(self)
        for key, value in parse_qsl(query, keep_blank_values=True):
            if key == "mode" and value in MODES:
                out.mode = value
            elif key in ("after", "status", "length"):
                setattr(out, key, int(value))
            elif key in ("tokens_per_s", "ttft"):
                setattr(out, key, float(value))
        return out


@dataclasses.dataclass
class CallRecord:
    number: int
    body: Any
    authorization: str | None
    state: str = "streaming"  # streaming, completed, disconnected, cut, stalled, refused, unauthorized
    chunks: list[str] = dataclasses.field(default_factory=list)


class UpstreamApp:
    """The request handlers and their counters (one per process)."""

    def __init__(self, defaults: Behaviour, api_key: str | None, model: str) -> None:
        self.defaults = defaults
        self.api_key = api_key
        self.model = model
        self.records: list[CallRecord] = []
        self.counters = dict.fromkeys(("calls", "completed", "disconnects", "cut", "refused", "unauthorized"), 0)
        self.active = 0
        self.last_authorization: str | None = None

    def build(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/calls", self.calls)
        app.router.add_delete("/calls", self.reset)
        app.router.add_get("/calls/{n}", self.call)
        return app

    # -- introspection -------------------------------------------------------------------------------------

    async def calls(self, request: web.Request) -> web.Response:
        return web.json_response(
            {**self.counters, "active": self.active, "last_authorization": self.last_authorization}
        )

    async def call(self, request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if not 1 <= n <= len(self.records):
            return web.json_response({"error": f"no call {n}"}, status=404)
        return web.json_response(dataclasses.asdict(self.records[n - 1]))

    async def reset(self, request: web.Request) -> web.Response:
        self.records.clear()
        self.counters = dict.fromkeys(self.counters, 0)
        self.last_authorization = None
        return web.json_response({"reset": True})

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": self.model, "object": "model", "owned_by": "test"}]}
        )

    # -- chat completions ----------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, message: str, type_: str, code: str | None) -> web.Response:
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return web.Response(status=status, text=_dumps(body), content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        authorization = request.headers.get("Authorization")
        self.last_authorization = authorization
        self.counters["calls"] += 1
        try:
            body = await request.json()
        except ValueError:
            body = None
        record = CallRecord(len(self.records) + 1, body, authorization)
        self.records.append(record)
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            record.state = "unauthorized"
            self.counters["unauthorized"] += 1
            return self._error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            record.state = "refused"
            return self._error(400, "'messages' is a required property", "invalid_request_error", None)
        model = body["model"] if isinstance(body.get("model"), str) else self.model
        query = model.partition("?")[2]
        behaviour = self.defaults.override(query)
        if "X-Upstream-Mode" in request.headers:
            behaviour = behaviour.override(f"mode={request.headers['X-Upstream-Mode']}")
        if behaviour.mode == "fail-before":
            record.state = "refused"
            self.counters["refused"] += 1
            return self._error(
                behaviour.status, "Rate limit reached for test-model (test upstream).", "rate_limit_error",
                "rate_limit_exceeded",
            )  # fmt: skip
        chunks = list(self._chunks(body, model, record.number, behaviour.length))
        if not body.get("stream"):
            return self._whole(record, chunks)
        return await self._stream(request, record, chunks, behaviour)

    def _chunks(self, body: dict[str, Any], model: str, number: int, length: int) -> Iterator[dict[str, Any]]:
        """The chunks of one streamed answer (without ``[DONE]``)."""
        prompt = _prompt_of(body)
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 16
        head = {
            "id": f"chatcmpl-up{number:06d}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000 + number,
            "model": model,
            "system_fingerprint": "fp_upstream",
        }
        options = body.get("stream_options")
        usage_on = isinstance(options, dict) and bool(options.get("include_usage"))
        extra: dict[str, Any] = {"usage": None} if usage_on else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**head, "choices": [choice], **extra}

        tools = body.get("tools") if body.get("tool_choice") != "none" else None
        completion = 0
        if isinstance(tools, list) and tools:
            yield chunk({"role": "assistant", "content": None})
            for index, tool in enumerate(tools[:2]):
                name = str(tool.get("function", {}).get("name", "tool")) if isinstance(tool, dict) else "tool"
                call_id = f"call_{_digest(prompt, name, number).hex()[:24]}"
                first = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
                yield chunk({"tool_calls": [first]})
                arguments = tool_arguments(prompt, name)
                for k in range(0, len(arguments), 7):
                    yield chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[k : k + 7]}}]})
                    completion += 1
            finish = "tool_calls"
        else:
            yield chunk({"role": "assistant", "content": "", "refusal": None})
            tokens = content_tokens(prompt, int(max_tokens), length)
            for token in tokens:
                yield chunk({"content": token})
            completion = len(tokens)
            finish = "length" if completion == max_tokens else "stop"
        yield chunk({}, finish)
        if usage_on:
            prompt_tokens = len(prompt.split())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                     "total_tokens": prompt_tokens + completion}  # fmt: skip
            yield {**head, "choices": [], "usage": usage}

    def _whole(self, record: CallRecord, chunks: list[dict[str, Any]]) -> web.Response:
        """A non-streaming answer: the same content as one ``chat.completion``."""
        head = chunks[0]
        content = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        calls: dict[int, dict[str, Any]] = {}
        for c in chunks:
            for call in (c["choices"][0]["delta"].get("tool_calls") or []) if c["choices"] else []:
                merged = calls.setdefault(
                    call["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
                )
                merged["id"] = call.get("id", merged["id"])
                merged["function"]["name"] += call.get("function", {}).get("name", "")
                merged["function"]["arguments"] += call.get("function", {}).get("arguments", "")
        message: dict[str, Any] = {"role": "assistant", "content": None if calls else content, "refusal": None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        finish = next(c["choices"][0]["finish_reason"] for c in reversed(chunks) if c["choices"])
        # As the streamed usage counts: content tokens, or pieces of tool-call arguments.
        deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
        completion = sum(1 for d in deltas if d.get("content") or any("id" not in t for t in d.get("tool_calls", [])))
        prompt_tokens = len(_prompt_of(record.body).split())
        answer = {
            "id": head["id"], "object": "chat.completion", "created": head["created"], "model": head["model"],
            "system_fingerprint": head["system_fingerprint"],
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                      "total_tokens": prompt_tokens + completion},
        }  # fmt: skip
        record.chunks.append(_dumps(answer))
        record.state = "completed"
        self.counters["completed"] += 1
        return web.Response(text=_dumps(answer), content_type="application/json")

    async def _stream(
        self, request: web.Request, record: CallRecord, chunks: list[dict[str, Any]], behaviour: Behaviour
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        self.active += 1
        try:
            await response.prepare(request)
            if behaviour.ttft > 0:
                await asyncio.sleep(behaviour.ttft)
            gap = 1.0 / behaviour.tokens_per_s if behaviour.tokens_per_s > 0 else 0.0
            loop = asyncio.get_running_loop()
            due = loop.time()
            for i, chunk in enumerate(chunks):
                if behaviour.mode in ("fail-mid", "stall") and i >= behaviour.after:
                    if behaviour.mode == "stall":
                        record.state = "stalled"
                        await asyncio.sleep(3600)  # until the client goes away (the handler is cancelled)
                    record.state = "cut"
                    self.counters["cut"] += 1
                    assert request.transport is not None
                    request.transport.close()  # what was written goes out, then FIN: no [DONE], no last chunk
                    return response
                if i > 1 and gap:  # the role chunk and the first token go out together, at the TTFT; then a
                    due += gap  # chunk every gap after it, on a fixed schedule (a late wake-up does not push the rest)
                    await asyncio.sleep(max(0.0, due - loop.time()))
                payload = _dumps(chunk)
                await response.write(f"data: {payload}\n\n".encode())
                record.chunks.append(payload)
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            record.state = "completed"
            self.counters["completed"] += 1
        except (asyncio.CancelledError, ConnectionError):
            # The client went away mid-stream (handler_cancellation=True cancels the handler on a disconnect).
            record.state = "disconnected"
            self.counters["disconnects"] += 1
            raise
        finally:
            self.active -= 1
        return response


async def _serve(args: argparse.Namespace) -> None:
    defaults = Behaviour(args.mode, args.after, args.fail_status, args.tokens_per_s, args.ttft, args.length)
    api_key = args.api_key or os.environ.get("UPSTREAM_API_KEY") or None
    app = UpstreamApp(defaults, api_key, args.model).build()
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock, backlog=4096).start()
    print(f"upstream listening on http://{args.host}:{port}/v1", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.upstream", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    parser.add_argument("--tokens-per-s", type=float, default=0.0, help="pace of content chunks (0: unpaced)")
    parser.add_argument("--ttft", type=float, default=0.0, help="seconds before the first chunk")
    parser.add_argument(
        "--length", type=int, default=0, help="content tokens of every answer, up to max_tokens (0: 8 to 39 by prompt)"
    )
    parser.add_argument("--mode", choices=MODES, default="ok")
    parser.add_argument("--after", type=int, default=3, help="chunks sent before fail-mid cuts or stall stalls")
    parser.add_argument("--fail-status", type=int, default=429, help="the status fail-before answers")
    parser.add_argument("--api-key", help="require Authorization: Bearer KEY (or env UPSTREAM_API_KEY)")
    parser.add_argument("--model", default="test-model", help="the model /v1/models lists")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        uvloop.run(_serve(args))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve(args))


# -- for tests and benches: the process -----------------------------------------------------------------------

_ROOT = Path(__file__).resolve().parents[2]


class Upstream:
    """``python -m tests.support.upstream ARGS`` as a child process; ``url`` is the base an OpenAI SDK takes
    (``http://127.0.0.1:PORT/v1``). A context manager (sync, so module-scoped fixtures can hold one)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, start_timeout: float = 20.0) -> None:
        self.args = args
        self.env = env
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT``, where ``/calls`` lives."""
        return self.url.removesuffix("/v1")

    def start(self) -> None:
        env = {**os.environ, **(self.env or {})}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_ROOT), env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
            [sys.executable, "-m", "tests.support.upstream", *self.args],
            stdout=subprocess.PIPE, text=True, env=env, cwd=_ROOT,
        )  # fmt: skip
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.start_timeout
        line = self.proc.stdout.readline()  # the ready line (or "" if it died)
        found = re.search(r"(http://\S+/v1)", line)
        if found is None or time.monotonic() > deadline:
            self.close()
            raise RuntimeError(f"the upstream did not start: {line!r}")
        self.url = found[1]

    async def counters(self) -> dict[str, Any]:
        """``GET /calls``."""
        return await self._get("/calls")

    async def record(self, n: int) -> dict[str, Any]:
        """``GET /calls/{n}``: call ``n`` (1-based): ``body``, ``authorization``, ``chunks``, ``state``."""
        return await self._get(f"/calls/{n}")

    async def reset(self) -> None:
        """``DELETE /calls``: counters and records back to zero."""
        import httpx

        async with httpx.AsyncClient() as http:
            (await http.delete(self.origin + "/calls")).raise_for_status()

    async def wait_for(self, key: str, value: int, within: float = 10.0) -> dict[str, Any]:
        """Polls ``/calls`` until ``counters[key] >= value``; the counters (AssertionError after ``within`` s)."""
        deadline = time.monotonic() + within
        while True:
            counters = await self.counters()
            if counters[key] >= value or time.monotonic() > deadline:
                assert counters[key] >= value, f"upstream {key}: {counters}"
                return counters
            await asyncio.sleep(0.02)

    async def _get(self, path: str) -> dict[str, Any]:
        import httpx  # the upstream process itself does not need it

        async with httpx.AsyncClient() as http:
            response = await http.get(self.origin + path)
            response.raise_for_status()
            result: dict[str, Any] = response.json()
            return result

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    main()
