"""Resume points: the ``{stream_id}:{epoch}:{seq}`` form of every event id and ``Last-Event-ID``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire.errors import LocalProtocolError, RemoteProtocolError
from tokenwire.protocol.resume import (
    ResumePoint,
    format_id_prefix,
    new_epoch,
    new_stream_id,
    parse_resume_point,
    validate_stream_id,
)

_token = st.text("ABCxyz019_-", min_size=1, max_size=40)


@given(stream_id=_token, epoch=_token, seq=st.integers(0, 2**62 - 1))
def test_round_trip(stream_id: str, epoch: str, seq: int) -> None:
    point = ResumePoint(stream_id, epoch, seq)
    assert parse_resume_point(str(point)) == point
    assert str(point) == f"{format_id_prefix(stream_id, epoch)}{seq}"


@given(st.text(max_size=300))
def test_any_text_parses_or_raises_remote_protocol_error(text: str) -> None:
    try:
        point = parse_resume_point(text)
    except RemoteProtocolError as exc:
        assert exc.status_hint == 400
    else:
        assert str(point) == text.strip(" \t")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "abc:def",
        "a:b:c:1",
        "a:b:-1",
        "a:b:01",
        "a:b:1.0",
        "a:b: 1",
        "a b:c:1",
        "a:b:4611686018427387904",  # 2**62
        "a:b:99999999999999999999",
        ":b:1",
        "a::1",
        "x" * 129 + ":b:1",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_resume_point(text)


def test_largest_parts_fit() -> None:
    longest = f"{'s' * 128}:{'e' * 64}:{2**62 - 1}"
    assert parse_resume_point(longest).seq == 2**62 - 1


def test_generated_ids_are_unguessable_and_url_safe() -> None:
    ids = {new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000
    for i in ids:
        assert len(i) == 22  # 128 bits in URL-safe base64
        assert validate_stream_id(i) == i
    assert len(new_epoch()) == 8


@pytest.mark.parametrize("bad", ["", "a:b", "a b", "a/b", "é", "x" * 129])
def test_caller_ids_are_validated(bad: str) -> None:
    with pytest.raises(LocalProtocolError):
        validate_stream_id(bad)
