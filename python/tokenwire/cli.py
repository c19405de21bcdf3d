"""The ``tokenwire`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Sequence

from tokenwire import __version__
from tokenwire.fake_model import FakeModel
from tokenwire.hub import FrameKind, Hub

__all__ = ["main"]


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop where it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _demo(args: argparse.Namespace) -> int:
    """Stream a fake completion, drop the subscriber mid-answer, resume, and prove nothing was lost."""
    model = FakeModel(seed=args.seed, ttft=args.ttft, tokens_per_s=args.rate)
    expected = model.tokens(args.prompt, args.max_tokens)
    out = sys.stdout
    async with Hub() as hub:
        stream = hub.start(model.generate(args.prompt, args.max_tokens))
        print(f"tokenwire {__version__}: stream {stream.id} (epoch {hub.epoch}), {args.max_tokens} tokens", file=out)
        print("--- live ---", file=out)
        received: list[str] = []
        sub = hub.subscribe(stream.id)
        async for batch in sub:
            for frame in batch:
                if frame.kind is FrameKind.TOKEN:
                    received.append(frame.text)
                    out.write(frame.text)
            if len(received) >= args.drop_after:
                break
        sub.close()
        last_event_id = f"{stream.id}:{hub.epoch}:{sub.position}"
        out.write(f"\n--- connection dropped at seq {sub.position}; generation goes on ---\n")
        out.flush()
        await asyncio.sleep(args.away)
        print(f"--- resuming with Last-Event-ID {last_event_id} ---", file=out)
        started = time.perf_counter()
        async with hub.resume(last_event_id) as again:
            first = True
            async for batch in again:
                if first:
                    print(f"[{len(batch)} frames replayed in {1e3 * (time.perf_counter() - started):.2f} ms]", file=out)
                    first = False
                for frame in batch:
                    if frame.kind is FrameKind.TOKEN:
                        received.append(frame.text)
                        out.write(frame.text)
                    else:
                        out.write(f"\n--- {frame.kind.name.lower()}: {frame.text} ---\n")
        ok = received == expected
        print(
            f"tokens received {len(received)}/{len(expected)}, in order and exactly once: {ok}; "
            f"model runs: {model.calls}",
            file=out,
        )
        return 0 if ok and model.calls == 1 else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tokenwire", description="Resumable LLM token streaming.")
    p.add_argument("--version", action="version", version=f"tokenwire {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="stream, drop the connection mid-answer, resume, verify")
    demo.add_argument("--prompt", default="Explain resumable streams.")
    demo.add_argument("--max-tokens", type=int, default=80)
    demo.add_argument("--rate", type=float, default=80.0, help="tokens per second")
    demo.add_argument("--ttft", type=float, default=0.2, help="time to first token, seconds")
    demo.add_argument("--drop-after", type=int, default=25, help="drop the subscriber after this many tokens")
    demo.add_argument("--away", type=float, default=0.3, help="seconds spent disconnected")
    demo.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    factory = _loop_factory()
    logging.getLogger("tokenwire").info("event loop: %s", "uvloop" if factory else "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.command == "demo":
            return runner.run(_demo(args))
    raise AssertionError(args.command)  # argparse rejects unknown commands
