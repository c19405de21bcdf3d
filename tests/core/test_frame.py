"""Binary frames and QUIC varints: ``_core`` encoders against ``FrameDecoder`` and a reference decoder."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwire import _core
from tokenwire.errors import FrameError, LocalProtocolError

MAX = _core.MAX_VARINT
KINDS = (_core.FRAME_TOKEN, _core.FRAME_DONE, _core.FRAME_ERROR, _core.FRAME_HEARTBEAT)
SEQUENCED = (_core.FRAME_TOKEN, _core.FRAME_DONE, _core.FRAME_ERROR)


# -- reference implementation (RFC 9000 §16 and the layout in rust/frame.rs) ----------------------------


def ref_varint_encode(v: int) -> bytes:
    if v < 1 << 6:
        return bytes([v])
    if v < 1 << 14:
        return (v | 0x4000).to_bytes(2, "big")
    if v < 1 << 30:
        return (v | 0x8000_0000).to_bytes(4, "big")
    return (v | 0xC000_0000_0000_0000).to_bytes(8, "big")


def ref_varint_decode(b: bytes) -> tuple[int, int] | None:
    if not b:
        return None
    n = 1 << (b[0] >> 6)
    if len(b) < n:
        return None
    return int.from_bytes(bytes([b[0] & 0x3F]) + b[1:n], "big"), n


def ref_decode(b: bytes, max_payload: int) -> tuple[list[tuple[int, int, str]], str]:
    """Frames of a whole byte string and how it ends: ``"ok"``, ``"truncated"`` or ``"error"``."""
    frames: list[tuple[int, int, str]] = []
    pos = 0
    while pos < len(b):
        kind = b[pos]
        if kind not in KINDS:
            return frames, "error"
        seq_v = ref_varint_decode(b[pos + 1 :])
        if seq_v is None:
            return frames, "truncated"
        seq, n1 = seq_v
        if kind in SEQUENCED and seq == 0:
            return frames, "error"
        len_v = ref_varint_decode(b[pos + 1 + n1 :])
        if len_v is None:
            return frames, "truncated"
        length, n2 = len_v
        if length > max_payload:
            return frames, "error"
        start = pos + 1 + n1 + n2
        if len(b) < start + length:
            return frames, "truncated"
        try:
            payload = b[start : start + length].decode("utf-8")
        except UnicodeDecodeError:
            return frames, "error"
        frames.append((kind, seq, payload))
        pos = start + length
    return frames, "ok"


def ref_frame(kind: int, seq: int, payload: str) -> bytes:
    p = payload.encode()
    return bytes([kind]) + ref_varint_encode(seq) + ref_varint_encode(len(p)) + p


# -- strategies ----------------------------------------------------------------------------------------

seqs = st.one_of(
    st.integers(1, 100), st.integers(1, MAX), st.sampled_from([63, 64, 16383, 16384, 2**30 - 1, 2**30, MAX])
)
payloads = st.one_of(st.text(), st.text(alphabet="ab\n\x00é𝄞", max_size=400), st.just("x" * 20000))


@st.composite
def frames(draw: st.DrawFn) -> tuple[int, int, str]:
    kind = draw(st.sampled_from(KINDS))
    seq = draw(st.integers(0, MAX) if kind == _core.FRAME_HEARTBEAT else seqs)
    return kind, seq, draw(payloads)


def feed_chunks(dec: _core.FrameDecoder, data: bytes, cuts: list[int]) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        out += dec.feed(data[prev:cut])
        prev = cut
    return out


# -- round trips ---------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(fs=st.lists(frames(), max_size=8), data=st.data())
def test_encode_frame_round_trip_any_chunking(fs: list[tuple[int, int, str]], data: st.DataObject) -> None:
    encoded = [_core.encode_frame(*f) for f in fs]
    assert encoded == [ref_frame(*f) for f in fs]
    stream = b"".join(encoded)

    dec = _core.FrameDecoder()
    assert dec.feed(stream) == fs
    assert dec.buffered == 0
    dec.close()

    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    dec = _core.FrameDecoder()
    assert feed_chunks(dec, stream, cuts) == fs
    dec.close()


@settings(max_examples=100, deadline=None)
@given(fs=st.lists(frames(), max_size=5).filter(lambda fs: sum(len(p) for _, _, p in fs) < 5000))
def test_round_trip_byte_by_byte_and_buffered(fs: list[tuple[int, int, str]]) -> None:
    encoded = [_core.encode_frame(*f) for f in fs]
    stream = b"".join(encoded)
    boundaries = [0]
    for e in encoded:
        boundaries.append(boundaries[-1] + len(e))
    dec = _core.FrameDecoder()
    got: list[tuple[int, int, str]] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i : i + 1])
        fed = i + 1
        done = max(b for b in boundaries if b <= fed)
        assert dec.buffered == fed - done
        assert len(got) == boundaries.index(done)
    assert got == fs
    dec.close()


@settings(max_examples=200, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    first=seqs,
    ps=st.lists(st.text(), max_size=10),
    data=st.data(),
)
def test_encode_frames_round_trip(kind: int, first: int, ps: list[str], data: st.DataObject) -> None:
    if first + len(ps) - 1 > MAX:
        with pytest.raises(LocalProtocolError):
            _core.encode_frames(kind, first, ps)
        return
    stream = _core.encode_frames(kind, first, ps)
    assert stream == b"".join(_core.encode_frame(kind, first + i, p) for i, p in enumerate(ps))
    assert _core.encode_frames(kind, first, tuple(ps)) == stream
    assert _core.encode_frames(kind, first, iter(ps)) == stream
    dec = _core.FrameDecoder()
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20), label="cuts")
    assert feed_chunks(dec, stream, cuts) == [(kind, first + i, p) for i, p in enumerate(ps)]
    dec.close()


def test_heartbeat_and_known_bytes() -> None:
    assert _core.encode_frame(_core.FRAME_HEARTBEAT, 0, "") == b"\x04\x00\x00"
    assert _core.encode_frame(_core.FRAME_TOKEN, 1, "Hé") == b"\x01\x01\x03H\xc3\xa9"
    assert _core.encode_frame(_core.FRAME_TOKEN, 64, "") == b"\x01\x40\x40\x00"
    assert _core.FrameDecoder().feed(b"\x04\x00\x00\x02\x05\x02{}") == [(4, 0, ""), (2, 5, "{}")]


# -- encoder refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [0, 5, 127, 255])
def test_unknown_kind_is_refused(kind: int) -> None:
    with pytest.raises(LocalProtocolError):
        _core.encode_frame(kind, 1, "x")
    with pytest.raises(LocalProtocolError):
        _core.encode_frames(kind, 1, ["x"])


@pytest.mark.parametrize("kind", SEQUENCED)
def test_zero_seq_is_refused(kind: int) -> None:
    with pytest.raises(LocalProtocolError):
        _core.encode_frame(kind, 0, "x")
    with pytest.raises(LocalProtocolError):
        _core.encode_frames(kind, 0, ["x"])


@pytest.mark.parametrize("seq", [MAX + 1, 2**63, 2**64 - 1])
def test_seq_over_varint_max_is_refused(seq: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        _core.encode_frame(_core.FRAME_TOKEN, seq, "x")
    assert isinstance(info.value, ValueError)
    with pytest.raises(LocalProtocolError):
        _core.encode_frames(_core.FRAME_TOKEN, MAX, ["a", "b"])


# -- decoder on hostile input --------------------------------------------------------------------------


@st.composite
def hostile(draw: st.DrawFn) -> bytes:
    """Random bytes, or valid frames with garbage spliced in or bytes flipped."""
    fs = draw(st.lists(frames(), max_size=4))
    stream = bytearray(b"".join(ref_frame(*f) for f in fs))
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["insert", "flip", "cut"]))
        at = draw(st.integers(0, len(stream)))
        if op == "insert":
            stream[at:at] = draw(st.binary(max_size=12))
        elif op == "flip" and at < len(stream):
            stream[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del stream[at:]
    return draw(st.one_of(st.binary(max_size=64), st.just(bytes(stream))))


@settings(max_examples=600, deadline=None)
@given(stream=hostile(), max_payload=st.sampled_from([0, 1, 5, 300, _core.DEFAULT_MAX_PAYLOAD, MAX]), data=st.data())
def test_decoder_on_any_bytes_matches_reference(stream: bytes, max_payload: int, data: st.DataObject) -> None:
    want_frames, want_end = ref_decode(stream, max_payload)
    cuts = data.draw(st.one_of(st.lists(st.integers(0, len(stream)), max_size=10), st.just(list(range(len(stream))))))
    dec = _core.FrameDecoder(max_payload)
    got: list[tuple[int, int, str]] = []
    failed = False
    prev = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        try:
            got += dec.feed(stream[prev:cut])
        except FrameError:
            failed = True
            break
        prev = cut
    if not failed:
        try:
            dec.close()
        except FrameError:
            failed = True
    assert got == want_frames
    assert failed == (want_end != "ok")
    if want_end == "truncated":
        with pytest.raises(FrameError):
            dec.close()
    elif want_end == "error":
        # A malformed frame leaves the decoder failed for good.
        with pytest.raises(FrameError):
            dec.feed(b"")
        with pytest.raises(FrameError):
            dec.feed(_core.encode_frame(_core.FRAME_TOKEN, 1, "x"))
        with pytest.raises(FrameError):
            dec.close()
    else:
        assert dec.buffered == 0


@settings(max_examples=500, deadline=None)
@given(stream=st.binary(max_size=200))
def test_random_bytes_only_ever_raise_frame_error(stream: bytes) -> None:
    dec = _core.FrameDecoder()
    try:
        frames_ = dec.feed(stream)
        assert all(isinstance(f, tuple) and len(f) == 3 for f in frames_)
        dec.feed(b"")
        dec.close()
    except FrameError as e:
        assert isinstance(e, ValueError)


def test_error_after_frames_is_raised_by_next_call() -> None:
    good = _core.encode_frame(_core.FRAME_TOKEN, 1, "a") + _core.encode_frame(_core.FRAME_DONE, 2, "{}")
    dec = _core.FrameDecoder()
    assert dec.feed(good + b"\x7f") == [(1, 1, "a"), (2, 2, "{}")]
    with pytest.raises(FrameError):
        dec.feed(b"")
    with pytest.raises(FrameError):
        dec.close()
    # Error straight away when no frame precedes it.
    with pytest.raises(FrameError):
        _core.FrameDecoder().feed(b"\x00")


@pytest.mark.parametrize(
    "bad",
    [
        b"\x00",  # unknown kind
        b"\x09\x01\x00",  # unknown kind
        b"\x01\x00\x00",  # token with seq 0
        b"\x02\x00",  # done with seq 0 (detected before the length)
        b"\x01\x01\x01\xff",  # payload not UTF-8
        b"\x01\x01\x03\xed\xa0\x80",  # UTF-8-encoded surrogate
        b"\x01\x01\x02\xc0\xaf",  # overlong encoding
    ],
)
def test_malformed_frames(bad: bytes) -> None:
    with pytest.raises(FrameError):
        _core.FrameDecoder().feed(bad)
    dec = _core.FrameDecoder()
    with pytest.raises(FrameError):
        for i in range(len(bad)):
            dec.feed(bad[i : i + 1])
        dec.close()


@settings(max_examples=200, deadline=None)
@given(fs=st.lists(frames(), min_size=1, max_size=4), data=st.data())
def test_truncated_input_raises_at_close(fs: list[tuple[int, int, str]], data: st.DataObject) -> None:
    stream = b"".join(_core.encode_frame(*f) for f in fs)
    last = _core.encode_frame(*fs[-1])
    cut = data.draw(st.integers(len(stream) - len(last) + 1, len(stream) - 1)) if len(last) > 1 else None
    if cut is None:
        return
    dec = _core.FrameDecoder()
    assert dec.feed(stream[:cut]) == fs[:-1]
    assert dec.buffered == cut - (len(stream) - len(last))
    with pytest.raises(FrameError):
        dec.close()
    with pytest.raises(FrameError):
        dec.close()


@settings(max_examples=200, deadline=None)
@given(size=st.integers(1, 3000), limit=st.integers(0, 2999), data=st.data())
def test_oversized_frames_rejected(size: int, limit: int, data: st.DataObject) -> None:
    payload = "y" * size
    frame = _core.encode_frame(_core.FRAME_TOKEN, 7, payload)
    if size <= limit:
        assert _core.FrameDecoder(limit).feed(frame) == [(1, 7, payload)]
        return
    with pytest.raises(FrameError):
        _core.FrameDecoder(limit).feed(frame)
    # Refused as soon as the header is in, before the payload arrives.
    header = len(frame) - size
    dec = _core.FrameDecoder(limit)
    with pytest.raises(FrameError):
        for i in range(header):
            dec.feed(frame[i : i + 1])
    assert dec.buffered <= header


def test_default_max_payload() -> None:
    big = "z" * _core.DEFAULT_MAX_PAYLOAD
    assert _core.FrameDecoder().feed(_core.encode_frame(1, 1, big)) == [(1, 1, big)]
    with pytest.raises(FrameError):
        _core.FrameDecoder().feed(_core.encode_frame(1, 1, big + "z"))
    # Length prefix alone of a multi-exabyte payload: refused, not allocated.
    with pytest.raises(FrameError):
        _core.FrameDecoder().feed(b"\x01\x01" + ref_varint_encode(MAX))


def test_huge_declared_length_with_huge_limit_just_waits() -> None:
    dec = _core.FrameDecoder(MAX)
    assert dec.feed(b"\x01\x01" + ref_varint_encode(MAX) + b"abc") == []
    assert dec.buffered == 2 + 8 + 3
    with pytest.raises(FrameError):
        dec.close()


# -- varints -------------------------------------------------------------------------------------------

varints = st.one_of(
    st.integers(0, MAX),
    st.integers(0, 2**14),
    st.sampled_from([0, 63, 64, 16383, 16384, 2**30 - 1, 2**30, MAX]),
)


@settings(max_examples=500, deadline=None)
@given(v=varints, tail=st.binary(max_size=8))
def test_varint_round_trip(v: int, tail: bytes) -> None:
    enc = _core.encode_varint(v)
    assert enc == ref_varint_encode(v)
    assert len(enc) == (1 if v < 2**6 else 2 if v < 2**14 else 4 if v < 2**30 else 8)
    assert _core.decode_varint(enc) == (v, len(enc))
    assert _core.decode_varint(enc + tail) == (v, len(enc))
    for i in range(len(enc)):
        assert _core.decode_varint(enc[:i]) is None


@settings(max_examples=500, deadline=None)
@given(b=st.binary(max_size=12))
def test_varint_decode_any_bytes(b: bytes) -> None:
    got = _core.decode_varint(b)
    assert got == ref_varint_decode(b)
    if got is not None:
        assert 0 <= got[0] <= MAX


@settings(max_examples=200, deadline=None)
@given(v=st.integers(MAX + 1, 2**64 - 1))
def test_varint_over_max_is_refused(v: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        _core.encode_varint(v)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("v", [-1, 2**64, 2**100])
def test_varint_out_of_integer_range(v: int) -> None:
    # Not representable as u64 at all: refused at the boundary (OverflowError), never encoded.
    with pytest.raises((OverflowError, ValueError)):
        _core.encode_varint(v)


@pytest.mark.parametrize(
    ("hex_", "value"),
    [
        # RFC 9000 appendix A.1 sample decodings.
        ("c2197c5eff14e88c", 151_288_809_941_952_652),
        ("9d7f3e7d", 494_878_333),
        ("7bbd", 15_293),
        ("25", 37),
        ("4025", 37),  # non-minimal, accepted by the decoder
    ],
)
def test_rfc9000_vectors(hex_: str, value: int) -> None:
    raw = bytes.fromhex(hex_)
    assert _core.decode_varint(raw) == (value, len(raw))
    if hex_ != "4025":
        assert _core.encode_varint(value) == raw
    else:
        assert _core.encode_varint(value) == b"\x25"


def test_max_varint_constant() -> None:
    assert MAX == 2**62 - 1
    assert _core.encode_varint(MAX) == b"\xff" * 8
    assert _core.decode_varint(b"\xff" * 8) == (MAX, 8)
