"""What both peer servers share: the request body, the event ids, the final event, the readiness line."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from tokenwire.fake_model import FakeCompletion, FakeModel

__all__ = [
    "MAX_TOKENS_LIMIT",
    "BadRequest",
    "done_data",
    "encode_event",
    "event_id",
    "parse_args",
    "parse_request",
    "per_stream_generation",
    "ready",
]


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def encode_event(eid: str, event: str, data: str) -> bytes:
    """One SSE event as tokenwire writes it: ``event``, one ``data:`` line per line of ``data``, ``id``, a blank
    line."""
    if "\n" in data or "\r" in data:
        lines = "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:
        lines = f"data: {data}\n"
    return f"event: {event}\n{lines}id: {eid}\n\n".encode()


def done_data(sent: int, max_tokens: int) -> str:
    """Data of the final ``done`` event: ``length`` after ``max_tokens`` tokens, else the engine shut down."""
    return '{"reason":"length"}' if sent >= max_tokens else '{"reason":"shutdown"}'


#: Largest ``max_tokens`` a request may ask for.
MAX_TOKENS_LIMIT = 1_000_000


class BadRequest(ValueError):
    """The request body is not a valid stream request (answered with 400)."""


def event_id(seq: int) -> str:
    """The SSE ``id:`` of the ``seq``-th event (1-based), shaped like tokenwire's ``stream:epoch:seq``."""
    return f"peer:0:{seq}"


def parse_request(body: Any) -> tuple[str, int, bool]:
    """``{"prompt": str, "max_tokens": int, "stamp": bool?, "tokens_per_s": float?}`` -> (prompt, max_tokens, stamp).

    ``tokens_per_s`` is accepted and ignored: the pace belongs to the shared engine (``--steps-per-s``).
    """
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 0 <= max_tokens <= MAX_TOKENS_LIMIT:
        raise BadRequest(f"max_tokens must be an integer in 0..{MAX_TOKENS_LIMIT}")
    stamp = body.get("stamp", False)
    if not isinstance(stamp, bool):
        raise BadRequest("stamp must be a boolean")
    rate = body.get("tokens_per_s")
    if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float)):
        raise BadRequest("tokens_per_s must be a number")
    return prompt, max_tokens, stamp


#: The model every per-stream peer generation comes from: the same tokens as tokenwire's ``FakeModel(seed=0)``.
_MODEL = FakeModel(seed=0, tokens_per_s=None)


def per_stream_generation(body: dict[str, Any], prompt: str, max_tokens: int, stamp: bool) -> FakeCompletion:
    """One producer per request, as ``async for token in model.generate(...)`` servers are written: the same
    generator ``tokenwire serve`` runs without an engine, paced by the request's ``tokens_per_s`` (0/absent:
    unthrottled; items are then lists of tokens)."""
    rate = body.get("tokens_per_s") or 0.0
    return _MODEL.generate(prompt, max_tokens, tokens_per_s=float(rate), stamp=stamp)


def parse_args(prog: str, description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (the ready line names it)")
    p.add_argument("--steps-per-s", type=float, default=20.0, help="engine steps per second; 0 = unthrottled")
    p.add_argument(
        "--producer",
        choices=("engine", "per-stream"),
        default="engine",
        help="engine: one loop feeds every stream per step (queues); per-stream: each request iterates its own "
        "FakeModel.generate(), paced by the request's tokens_per_s, and writes each token as it comes",
    )
    args = p.parse_args()
    if args.steps_per_s < 0:
        p.error("--steps-per-s must be >= 0")
    return args


def ready(host: str, port: int) -> None:
    """Print the one readiness line a benchmark harness waits for."""
    sys.stdout.write(f"listening on http://{host}:{port}\n")
    sys.stdout.flush()
