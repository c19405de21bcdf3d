"""The WebTransport message vectors of ``tests/vectors/wire.json`` (shared with the Rust tests and the JS client's
tests) against the server's own codec, ``tokenwire.protocol.webtransport``: the requests a client writes, the
replies and frames it reads, fed whole, byte by byte and cut at every position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tokenwire import _core
from tokenwire.errors import FrameError
from tokenwire.protocol.webtransport import (
    CancelConfirmed,
    ReplyReader,
    RequestFailed,
    RequestReader,
    StreamAttached,
    encode_message,
    encode_reply,
    encode_request,
)

WIRE = json.loads((Path(__file__).parents[1] / "vectors" / "wire.json").read_text(encoding="utf-8"))
MESSAGES = WIRE["messages"]
KINDS: dict[str, int] = MESSAGES["kinds"]
FRAME_KINDS: dict[str, int] = WIRE["frames"]["kinds"]
REPLY_TYPES = {"stream": StreamAttached, "cancelled": CancelConfirmed, "error": RequestFailed}


def splits(raw: bytes) -> list[tuple[str, list[bytes]]]:
    """Whole, byte by byte, and two pieces cut at every position."""
    out = [("whole", [raw]), ("byte by byte", [raw[i : i + 1] for i in range(len(raw))])]
    out += [(f"cut at {cut}", [raw[:cut], raw[cut:]]) for cut in range(len(raw) + 1)]
    return out


def by_name(cases: list[dict[str, Any]]) -> Any:
    return pytest.mark.parametrize("case", cases, ids=[c["name"] for c in cases])


@by_name(MESSAGES["requests"])
def test_request(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    assert encode_message(KINDS[case["kind"]], case["body"]) == raw
    for how, chunks in splits(raw):
        reader = RequestReader()
        got = [r for i, chunk in enumerate(chunks) if (r := reader.feed(chunk, end=i == len(chunks) - 1))]
        assert len(got) == 1, how
        # The typed request writes back the same kind and members: every member was understood and kept.
        again = encode_request(got[0])
        length = _core.decode_varint(again[1:])
        assert length is not None
        assert (again[0], json.loads(again[1 + length[1] :])) == (raw[0], case["body"]), how


@by_name(MESSAGES["replies"])
def test_reply(case: dict[str, Any]) -> None:
    raw = bytes.fromhex(case["hex"])
    want_reply = case["reply"]
    want_frames = [(FRAME_KINDS[f["kind"]], int(f["seq"]), f["payload"]) for f in case["frames"]]
    ends = [f["end"] for f in case["frames"]]
    error = case.get("error")
    for how, chunks in splits(raw):
        reader = ReplyReader()
        frames: list[tuple[int, int, str]] = []
        fed = 0
        raised = False
        for chunk in chunks:
            before, fed = fed, fed + len(chunk)
            try:
                frames += reader.feed(chunk)
            except FrameError:
                assert error is not None, f"{how}: unexpected error after {fed} bytes"
                assert "after" in error, f"{how}: raised by a feed, expected at close"
                assert before < error["after"] <= fed, f"{how}: raised by the call for bytes {before}..{fed}"
                raised = True
                break
            # A call that completes frames before an error returns them; the error comes with the next call.
            poisoned = error is not None and error.get("after", fed + 1) <= fed
            assert frames == want_frames[: sum(end <= fed for end in ends)], f"{how}: frames after {fed} bytes"
            if want_reply is not None and want_reply["end"] <= fed:
                assert isinstance(reader.reply, REPLY_TYPES[want_reply["kind"]]), how
                assert encode_reply(reader.reply) == raw[: want_reply["end"]], how
            elif not poisoned:
                assert reader.reply is None, f"{how}: reply before its last byte"
            if poisoned:
                with pytest.raises(FrameError):
                    reader.feed(b"")
                raised = True
                break
        assert frames == want_frames, how
        if error is None:
            reader.close()
        elif not raised:
            assert error["at"] == "close", f"{how}: {error} never raised"
            with pytest.raises(FrameError):
                reader.close()
        else:
            with pytest.raises(FrameError):  # poisoned
                reader.close()
