"""Request bodies: one check for HTTP and WebTransport (``tokenwire.protocol.json_body``), whole and byte by byte."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire import _core
from tokenwire.errors import FrameError, InvalidBody
from tokenwire.protocol.json_body import MAX_JSON_DEPTH, loads_object
from tokenwire.protocol.webtransport import (
    REQUEST_START,
    RequestReader,
    error_from_reply,
    error_reply,
)

REFUSED = [
    # (body, field named, words of the message)
    (b'{"model": "\\ud800"}', "model", "lone surrogate"),
    (b'{"messages": [{"content": "ok"}, {"content": "a\\uDFFFb"}]}', "messages[1].content", "lone surrogate"),
    (b'{"prompt": "x", "opts": {"\\ud83d": 1}}', "opts.\\ud83d", "a key of 'opts'"),
    (b'{"prompt": "\\ud83dx"}', "prompt", "lone surrogate"),  # a high surrogate without its low half
    (b'{"a": "\xed\xa0\x80"}', "", "not UTF-8 JSON"),  # an encoded surrogate: json.loads(bytes) would pass it
    (b'{"a": "\xff"}', "", "not UTF-8 JSON"),
    (b'{"n": 1' + b"0" * 5000 + b"}", "", "not UTF-8 JSON"),  # past the int parser's digit limit
    (b'{"prompt": "ab', "", "not UTF-8 JSON"),  # cut short
    (b"[1]", "", "must be a JSON object"),
    (b"", "", "must be a JSON object"),
    (b"[" * 100_000 + b"]" * 100_000, "", "nested deeper than 64"),  # RecursionError in the parser
    (b'{"a":' + b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH + b"}", "a" + "[0]" * (MAX_JSON_DEPTH - 1), "deeper"),
]


@pytest.mark.parametrize(("body", "field", "words"), REFUSED)
def test_refused_bodies_name_the_field(body: bytes, field: str, words: str) -> None:
    with pytest.raises(InvalidBody, match=words) as info:
        loads_object(body)
    assert info.value.field == field
    assert info.value.status_hint == 400
    json.dumps({"message": str(info.value), "field": info.value.field}).encode()  # what a server writes: encodable


def test_accepted_bodies_keep_their_text() -> None:
    body = (
        '{"prompt": "é 😀 \\ud83d\\ude00 \\\\ud800", "deep": ' + "[" * 63 + "]" * 63 + "}"
    )  # 64 levels with the body itself
    parsed = loads_object(body.encode())
    assert parsed["prompt"] == "é 😀 😀 \\ud800"  # a surrogate pair is one character; an escaped backslash is text


@given(st.dictionaries(st.text(), st.recursive(st.text() | st.integers(), st.lists, max_leaves=8), max_size=4))
def test_any_unicode_object_round_trips(obj: dict[str, object]) -> None:
    assert loads_object(json.dumps(obj).encode()) == obj
    assert loads_object(json.dumps(obj, ensure_ascii=False).encode()) == obj


def _start(body: bytes) -> bytes:
    return bytes([REQUEST_START]) + _core.encode_varint(len(body)) + body


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte-by-byte"])
def test_a_webtransport_start_request_gets_the_same_check(split: bool) -> None:
    data = _start(b'{"prompt": "hi \\udc00", "max_tokens": 3}')
    reader = RequestReader()
    with pytest.raises(InvalidBody) as info:
        if split:
            for i in range(len(data)):
                reader.feed(data[i : i + 1])
        else:
            reader.feed(data)
    assert info.value.field == "prompt"
    with pytest.raises(InvalidBody):
        reader.feed(b"")  # poisoned
    reply = error_reply(info.value)
    assert (reply.type, reply.status, reply.extra) == ("InvalidBody", 400, {"field": "prompt"})
    again = error_from_reply(reply)
    assert isinstance(again, InvalidBody) and again.field == "prompt"
    with pytest.raises(FrameError, match="nested deeper"):  # a body that is no usable JSON stays a FrameError
        RequestReader().feed(_start(b"[" * 2000))
