"""WebTransport request/reply messages (docs/protocol.md §4.4): no sockets, no loop; whole and byte by byte."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire import _core
from tokenwire.errors import (
    DuplicateStreamId,
    EpochMismatch,
    FrameError,
    HubFull,
    RemoteProtocolError,
    ResumeExpired,
    ResumeFromFuture,
    StreamNotFound,
)
from tokenwire.protocol.http1 import HttpError
from tokenwire.protocol.webtransport import (
    CAPSULE_CLOSE_SESSION,
    CAPSULE_WT_MAX_DATA,
    MAX_PREVIEW_BYTES,
    REPLY_KINDS,
    REQUEST_ATTACH,
    REQUEST_KINDS,
    REQUEST_START,
    SERVER_FLOW_CONTROL_LIMIT,
    SETTINGS_ENABLE_WEBTRANSPORT,
    SETTINGS_WEBTRANSPORT_MAX_SESSIONS,
    SETTINGS_WT_ENABLED,
    SETTINGS_WT_INITIAL_MAX_DATA,
    SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI,
    SETTINGS_WT_INITIAL_MAX_STREAMS_UNI,
    SETTINGS_WT_MAX_SESSIONS,
    AttachRequested,
    CancelConfirmed,
    CancelRequested,
    CapsuleReader,
    Message,
    MessageReader,
    ReplyReader,
    RequestFailed,
    RequestReader,
    RequestTooLarge,
    SendCredit,
    StartRequested,
    StreamAttached,
    WtCode,
    code_for_status,
    connect_headers,
    encode_capsule,
    encode_message,
    encode_preview,
    encode_reply,
    encode_request,
    error_from_reply,
    error_reply,
    flow_control_enabled,
    http3_error_code,
    is_webtransport_connect,
    max_data_of,
    parse_preview,
    parse_reply,
    parse_request,
    server_settings,
    speaks_draft13_on,
    wt_error_code,
)

REQUESTS = [
    StartRequested("Tell me about resumable streams", 200, {"tokens_per_s": 20.0, "stamp": True}),
    StartRequested("ünïcode\r\n日本語", None, {}),
    AttachRequested("Zp3Q0sJ5tXkq8yRzWb1Lmg", "q7Vd1aXe", 42),
    AttachRequested("s", "", 0),
    AttachRequested("Zp3Q0sJ5tXkq8yRzWb1Lmg", "q7Vd1aXe", 42, previews=True),
    StartRequested("previews please", 8, {"previews": True}),
    CancelRequested("Zp3Q0sJ5tXkq8yRzWb1Lmg"),
]


def feed_bytewise(reader: RequestReader, data: bytes) -> object:
    out = None
    for i in range(len(data)):
        got = reader.feed(data[i : i + 1], end=i == len(data) - 1)
        if got is not None:
            assert out is None
            out = got
    return out


@pytest.mark.parametrize("request_", REQUESTS)
def test_requests_round_trip_whole_and_byte_by_byte(request_: object) -> None:
    data = encode_request(request_)  # type: ignore[arg-type]
    assert data[0] in REQUEST_KINDS
    assert RequestReader().feed(data, end=True) == request_
    assert feed_bytewise(RequestReader(), data) == request_


def test_layout_is_kind_varint_json() -> None:
    data = encode_request(AttachRequested("t2", "q7Vd1aXe", 300))
    body = b'{"stream_id":"t2","after":300,"epoch":"q7Vd1aXe"}'
    assert data == bytes([REQUEST_ATTACH]) + _core.encode_varint(len(body)) + body
    big = encode_message(REQUEST_START, {"prompt": "x" * 100})
    assert big[1:3] == _core.encode_varint(len(big) - 3)  # a 2-byte length


@given(st.text(max_size=300), st.integers(1, 10_000), st.lists(st.integers(0, 400), max_size=6))
def test_any_split_decodes_the_same(prompt: str, max_tokens: int, cuts: list[int]) -> None:
    request = StartRequested(prompt, max_tokens, {"stream_id": "abc"})
    data = encode_request(request)
    reader = RequestReader()
    got = None
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for a, b in itertools.pairwise(points):
        got = reader.feed(data[a:b], end=b == len(data)) or got
    assert got == request


def test_errors_are_detected_early_and_poison_the_reader() -> None:
    reader = MessageReader(REQUEST_KINDS)
    with pytest.raises(FrameError, match="unknown message kind 0x01"):
        reader.feed(b"\x01")  # a frame kind is not a request
    with pytest.raises(FrameError, match="unknown message kind"):
        reader.feed(b"")  # poisoned

    small = MessageReader(REQUEST_KINDS, max_bytes=10)
    assert small.feed(bytes([REQUEST_START])) is None
    with pytest.raises(RequestTooLarge) as info:
        small.feed(_core.encode_varint(11))  # refused before any body byte arrives
    assert info.value.status_hint == 413
    assert isinstance(info.value, FrameError)

    for body, match in ((b"\xff\xfe", "UTF-8 JSON"), (b"[1]", "JSON object"), (b"{x", "UTF-8 JSON")):
        bad = MessageReader(REQUEST_KINDS)
        with pytest.raises(FrameError, match=match):
            bad.feed(bytes([REQUEST_START]) + _core.encode_varint(len(body)) + body)


def test_truncated_and_trailing_bytes() -> None:
    data = encode_request(CancelRequested("abc"))
    with pytest.raises(FrameError, match="ended inside a message"):
        RequestReader().feed(data[:-1], end=True)
    with pytest.raises(FrameError, match="before any message"):
        RequestReader().feed(b"", end=True)
    with pytest.raises(FrameError, match="one request"):
        RequestReader().feed(data + b"\x11", end=False)
    reader = RequestReader()
    assert reader.feed(data) == CancelRequested("abc")
    with pytest.raises(FrameError, match="one request"):
        reader.feed(b"more")


@pytest.mark.parametrize(
    ("kind", "body", "match"),
    [
        (REQUEST_START, {}, "'prompt'"),
        (REQUEST_START, {"prompt": "x", "max_tokens": True}, "'max_tokens'"),
        (REQUEST_START, {"prompt": "x", "max_tokens": "3"}, "'max_tokens'"),
        (REQUEST_ATTACH, {"after": 1, "epoch": "e"}, "'stream_id'"),
        (REQUEST_ATTACH, {"stream_id": "a:b"}, "stream id"),
        (REQUEST_ATTACH, {"stream_id": "abc", "after": 5}, "epoch"),
        (REQUEST_ATTACH, {"stream_id": "abc", "after": -1, "epoch": "e"}, "'after'"),
        (REQUEST_ATTACH, {"stream_id": "abc", "after": 1 << 62, "epoch": "e"}, "'after'"),
        (REQUEST_ATTACH, {"stream_id": "abc", "after": False}, "'after'"),
        (REQUEST_ATTACH, {"stream_id": "abc", "epoch": 7}, "'epoch'"),
        (REQUEST_ATTACH, {"stream_id": "abc", "epoch": "a b", "after": 1}, "epoch"),
        (REQUEST_ATTACH, {"stream_id": "abc", "epoch": "a:b", "after": 1}, "epoch"),
        (REQUEST_ATTACH, {"stream_id": "abc", "epoch": "é"}, "epoch"),
        (REQUEST_ATTACH, {"stream_id": "abc", "epoch": "e" * 65, "after": 1}, "epoch"),
        (REQUEST_ATTACH, {"stream_id": "abc", "previews": 1}, "'previews'"),
        (REQUEST_START, {"prompt": "x", "previews": "yes"}, "'previews'"),
    ],
)
def test_invalid_fields_are_remote_protocol_errors(kind: int, body: dict[str, object], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        parse_request(Message(kind, body))


def test_replies_then_frames_in_any_split() -> None:
    head = encode_reply(StreamAttached("abc", "q7Vd1aXe", 2))
    frames = _core.encode_frames(_core.FRAME_TOKEN, 3, ["Hel", "lo\r\n"]) + _core.encode_frame(
        _core.FRAME_DONE, 5, '{"reason":"stop"}'
    )
    data = head + frames
    expected = [(1, 3, "Hel"), (1, 4, "lo\r\n"), (2, 5, '{"reason":"stop"}')]
    whole = ReplyReader()
    assert whole.feed(data) == expected
    assert whole.reply == StreamAttached("abc", "q7Vd1aXe", 2)
    whole.close()
    bytewise = ReplyReader()
    got = [f for i in range(len(data)) for f in bytewise.feed(data[i : i + 1])]
    assert got == expected
    assert bytewise.reply == whole.reply

    truncated = ReplyReader()
    truncated.feed(data[:-1])
    with pytest.raises(FrameError):
        truncated.close()
    with pytest.raises(FrameError):
        ReplyReader().close()


def test_error_and_cancel_replies_carry_no_frames() -> None:
    for reply in (
        CancelConfirmed("abc"),
        RequestFailed("ResumeExpired", "gone", 410, WtCode.RESUME_EXPIRED, {"oldest_seq": 3}),
    ):
        reader = ReplyReader()
        assert reader.feed(encode_reply(reply)) == []
        assert reader.reply == reply
        reader.close()
        with pytest.raises(FrameError, match="no stream"):
            ReplyReader().feed(encode_reply(reply) + b"\x01\x01\x01a")


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (StreamNotFound("no stream 'x'"), 404, WtCode.STREAM_NOT_FOUND),
        (EpochMismatch("other history", expected="q7Vd1aXe", got="zz"), 409, WtCode.EPOCH_MISMATCH),
        (ResumeExpired("expired", 7), 410, WtCode.RESUME_EXPIRED),
        (ResumeFromFuture("future", 9), 400, WtCode.BAD_REQUEST),
        (FrameError("unknown message kind 0x01"), 400, WtCode.BAD_REQUEST),
        (RequestTooLarge("too big"), 413, WtCode.TOO_LARGE),
        (HubFull("full"), 503, WtCode.BUSY),
        (HttpError(503, "too many streams"), 503, WtCode.BUSY),
        (RemoteProtocolError("bad"), 400, WtCode.BAD_REQUEST),
        (DuplicateStreamId("stream 'x' exists already"), 409, WtCode.STREAM_EXISTS),
        (HttpError(408, "no complete request in time"), 408, WtCode.BAD_REQUEST),
    ],
)
def test_error_replies_round_trip_to_typed_errors(exc: Exception, status: int, code: WtCode) -> None:
    reply = error_reply(exc)
    assert (reply.status, reply.code, reply.type) == (status, code, type(exc).__name__)
    reader = ReplyReader()
    reader.feed(encode_reply(reply))
    assert reader.reply == reply
    again = error_from_reply(reply)
    assert again.status_hint == status
    if not isinstance(exc, HttpError) and type(exc) is not RemoteProtocolError:
        assert type(again) is type(exc)
    for attr in ("oldest_seq", "last_seq", "expected"):
        if hasattr(exc, attr):
            assert getattr(again, attr) == getattr(exc, attr)


def test_internal_errors_hide_their_message() -> None:
    reply = error_reply(KeyError("secret"))
    assert (reply.status, reply.code, reply.message) == (500, WtCode.INTERNAL_ERROR, "internal server error")
    assert code_for_status(418) == WtCode.BAD_REQUEST


@given(st.integers(0, 0xFFFFFFFF))
def test_http3_error_code_mapping_round_trips(code: int) -> None:
    h3 = http3_error_code(code)
    assert 0x52E4A40FA8DB <= h3 <= 0x52E5AC983162
    assert (h3 - 0x21) % 0x1F != 0  # never a reserved codepoint
    assert wt_error_code(h3) == code


def test_http3_error_code_known_values() -> None:
    assert http3_error_code(0) == 0x52E4A40FA8DB
    assert http3_error_code(0x1E) == 0x52E4A40FA8DB + 0x1E + 1  # skips the reserved codepoint
    assert wt_error_code(0x100) is None  # H3_NO_ERROR carries no application code
    assert wt_error_code(0x52E4A40FA8DB + 0x1E) is None  # reserved
    with pytest.raises(ValueError, match="32-bit"):
        http3_error_code(1 << 32)


def test_connect_headers() -> None:
    headers = connect_headers("127.0.0.1:8000", origin="https://example.com")
    assert is_webtransport_connect(headers) == (True, "/v1/webtransport")
    assert is_webtransport_connect([(b":method", b"GET"), (b":path", b"/")]) == (False, "/")
    # draft 15's upgrade token is accepted beside the older one; anything else is not WebTransport.
    for protocol, ok in ((b"webtransport-h3", True), (b"webtransport", True), (b"websocket", False)):
        fields = [(b":method", b"CONNECT"), (b":protocol", protocol), (b":path", b"/v1/webtransport")]
        assert is_webtransport_connect(fields) == (ok, "/v1/webtransport")
    # A query (the browser's token form) stays in :path; extra headers (the header form) follow, lower case.
    headers = connect_headers("h:1", "/v1/webtransport?access_token=k", extra=[("Authorization", "Bearer k")])
    assert is_webtransport_connect(headers) == (True, "/v1/webtransport?access_token=k")
    assert headers[-1] == (b"authorization", b"Bearer k")


def test_server_settings_name_every_draft_and_the_initial_flow_control_limits() -> None:
    settings = server_settings(16)
    assert settings == {
        0x2B603742: 1,  # SETTINGS_ENABLE_WEBTRANSPORT, drafts 02-06
        0xC671706A: 16,  # SETTINGS_WEBTRANSPORT_MAX_SESSIONS, drafts 07-12
        0x14E9CD29: 16,  # SETTINGS_WT_MAX_SESSIONS, drafts 13-14
        0x2C7CF000: 1,  # SETTINGS_WT_ENABLED, draft 15 on
        0x2B61: 1 << 60,  # SETTINGS_WT_INITIAL_MAX_DATA
        0x2B64: 1 << 60,  # SETTINGS_WT_INITIAL_MAX_STREAMS_UNI
        0x2B65: 1 << 60,  # SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI
    }
    assert tuple(settings) == (
        SETTINGS_ENABLE_WEBTRANSPORT,
        SETTINGS_WEBTRANSPORT_MAX_SESSIONS,
        SETTINGS_WT_MAX_SESSIONS,
        SETTINGS_WT_ENABLED,
        SETTINGS_WT_INITIAL_MAX_DATA,
        SETTINGS_WT_INITIAL_MAX_STREAMS_UNI,
        SETTINGS_WT_INITIAL_MAX_STREAMS_BIDI,
    )
    assert SERVER_FLOW_CONTROL_LIMIT == 1 << 60  # the most streams a WT_MAX_STREAMS may grant (draft 14 §5.6.1)
    assert REPLY_KINDS.isdisjoint(REQUEST_KINDS)
    assert not REPLY_KINDS & {1, 2, 3, 4}


@pytest.mark.parametrize(
    ("client", "enabled", "draft13_on"),
    [
        ({}, False, False),  # aioquic's client, webtransport-go without a Config
        ({0x2B603742: 1, 0x33: 1}, False, False),  # Chromium, Firefox (draft 02)
        ({0x14E9CD29: 1}, False, True),  # draft 14, one session: no flow control
        ({0x14E9CD29: 4}, True, True),  # draft 14, several sessions
        ({0x14E9CD29: 1, 0x2B64: 100, 0x2B65: 100}, True, True),  # Safari 26.4 (WebKit's initial stream limits)
        ({0x2C7CF000: 1, 0x2B61: 300}, True, True),  # draft 15 on with a data limit (webtransport-go's Config)
        ({0x2C7CF000: 1, 0x2B61: 0, 0x2B64: 0}, False, True),  # zeros declare nothing
        ({0xC671706A: 16}, False, False),  # draft 07's setting: no flow control in that draft
    ],
)
def test_flow_control_is_on_when_the_client_declares_it(
    client: dict[int, int], enabled: bool, draft13_on: bool
) -> None:
    assert flow_control_enabled(client) is enabled
    assert speaks_draft13_on(client) is draft13_on


def test_send_credit_grants_up_to_the_limit_and_only_raises() -> None:
    credit = SendCredit(300)
    assert credit.take(200) == 200 and credit.take(200) == 100 and credit.take(1) == 0
    assert credit.available == 0 and credit.sent == 300
    # WT_DATA_BLOCKED once per limit: type, length, then the limit it blocked at.
    assert (
        credit.blocked()
        == bytes.fromhex("990b4d41 02 412c".replace(" ", ""))
        == encode_capsule(0x190B4D41, b"\x41\x2c")
    )
    assert credit.blocked() == b""
    credit.raise_limit(300)  # the same limit again is allowed
    credit.raise_limit(1000)
    assert credit.available == 700 and credit.blocked() != b""
    with pytest.raises(RemoteProtocolError, match="went down"):
        credit.raise_limit(999)
    assert SendCredit(0).take(1) == 0  # no SETTINGS_WT_INITIAL_MAX_DATA: nothing until a capsule


CAPSULE_STREAM = b"".join(
    (
        encode_capsule(0x190B4D3D, _core.encode_varint(5000)),  # WT_MAX_DATA
        encode_capsule(0x00, b"d" * 20),  # DATAGRAM: skipped
        encode_capsule(0x190B4D3F, _core.encode_varint(7)),  # WT_MAX_STREAMS: skipped (the server opens none)
        encode_capsule(0x29, b"x" * 9000),  # unknown and long: skipped, never kept
        encode_capsule(0x190B4D3D, _core.encode_varint(1 << 40)),
        encode_capsule(0x2843, b"\x00\x00\x00\x07bye"),  # CLOSE_WEBTRANSPORT_SESSION
    )
)


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_capsule_reader_keeps_what_the_server_acts_on(split: str) -> None:
    reader = CapsuleReader()
    chunks = [CAPSULE_STREAM] if split == "whole" else [CAPSULE_STREAM[i : i + 1] for i in range(len(CAPSULE_STREAM))]
    got = [capsule for chunk in chunks for capsule in reader.feed(chunk)]
    assert got == [
        (CAPSULE_WT_MAX_DATA, _core.encode_varint(5000)),
        (CAPSULE_WT_MAX_DATA, _core.encode_varint(1 << 40)),
        (CAPSULE_CLOSE_SESSION, b"\x00\x00\x00\x07bye"),
    ]
    assert [max_data_of(value) for kind, value in got if kind == CAPSULE_WT_MAX_DATA] == [5000, 1 << 40]
    assert len(reader._buf) == 0


def test_capsule_reader_skips_an_oversized_capsule_it_would_read_and_values_are_checked() -> None:
    reader = CapsuleReader()
    huge = encode_capsule(0x2843, b"m" * 5000)  # a CLOSE with a message over the bound: skipped as it comes
    assert reader.feed(huge[:100]) == [] and len(reader._buf) == 0
    assert reader.feed(huge[100:] + encode_capsule(0x190B4D3D, b"\x01")) == [(CAPSULE_WT_MAX_DATA, b"\x01")]
    for bad in (b"", b"\x01\x02", b"\x40"):
        with pytest.raises(FrameError, match="one varint"):
            max_data_of(bad)


def test_stream_reply_says_whether_previews_were_granted() -> None:
    for reply in (StreamAttached("abc", "e", 0), StreamAttached("abc", "e", 7, preview=3)):
        data = encode_reply(reply)
        reader = MessageReader(REPLY_KINDS)
        message = reader.feed(data)
        assert message is not None and parse_reply(message) == reply
    assert StreamAttached("abc", "e", 7, preview=3).previews and not StreamAttached("abc", "e", 0).previews
    assert b"preview" not in encode_reply(StreamAttached("abc", "e", 0))  # absent unless granted
    with pytest.raises(RemoteProtocolError, match="'preview'"):
        parse_reply(Message(0x21, {"stream_id": "abc", "epoch": "e", "after": 0, "preview": True}))


def test_preview_datagram_round_trip_and_malformed() -> None:
    frames = _core.encode_frames(_core.FRAME_TOKEN, 9, ["to", "ken"])
    for tag in (1, 63, 64, 16_384, (1 << 62) - 1):
        assert parse_preview(encode_preview(tag, frames)) == (tag, [(1, 9, "to"), (1, 10, "ken")])
    assert parse_preview(encode_preview(8, b"")) == (8, [])
    with pytest.raises(FrameError):
        parse_preview(b"")  # no tag
    with pytest.raises(FrameError):
        parse_preview(encode_preview(8, frames[:-1]))  # a frame cut: a preview holds whole frames
    with pytest.raises(FrameError):
        parse_preview(encode_preview(8, b"\x09\x01\x00"))  # not a frame kind
    big = _core.encode_frame(_core.FRAME_TOKEN, 1, "x" * (MAX_PREVIEW_BYTES + 1))
    with pytest.raises(FrameError):
        parse_preview(encode_preview(8, big))  # larger than any preview the server sends
