"""The WebTransport session layer (``tokenwire.protocol.wt_session``) without sockets: HTTP/3 and WebTransport
events in, actions out; time is an argument."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenwire import _core
from tokenwire.errors import StreamNotFound
from tokenwire.protocol.webtransport import (
    CAPSULE_CLOSE_SESSION,
    CAPSULE_WT_MAX_DATA,
    MAX_PREVIEW_BYTES,
    SESSION_GONE,
    SETTINGS_WT_INITIAL_MAX_DATA,
    SETTINGS_WT_MAX_SESSIONS,
    WT_FLOW_CONTROL_ERROR,
    AttachRequested,
    CancelRequested,
    StartRequested,
    WtCode,
    connect_headers,
    encode_capsule,
    encode_request,
    http3_error_code,
    parse_preview,
)
from tokenwire.protocol.wt_session import (
    H3_EXCESSIVE_LOAD,
    H3_REQUEST_CANCELLED,
    H3_REQUEST_REJECTED,
    MAX_HELD_CAPSULE_BYTES,
    SETTINGS_H3_DATAGRAM,
    Action,
    Authorize,
    CreditAvailable,
    CreditBlocked,
    FinishSession,
    ForgetStream,
    RequestReceived,
    ResetStream,
    SendCapsules,
    SendData,
    SendDatagram,
    SendHeaders,
    SessionState,
    StopSending,
    StreamDetached,
    StreamState,
    WtConnection,
    WtRules,
    feed,
)

AUTHORITY = "example.test:4433"
CONNECT = connect_headers(AUTHORITY)
SID = 0  # the first client bidirectional stream: the session's CONNECT stream
WT_DATA_BLOCKED = 0x190B4D41


class Gate:
    """The process-wide admission, counting the sessions it was told about."""

    def __init__(self, refuse: int = 0) -> None:
        self.refuse = refuse
        self.open = 0

    def refusal(self) -> int:
        return self.refuse

    def opened(self) -> None:
        self.open += 1

    def closed(self) -> None:
        self.open -= 1


def layer(gate: Gate | None = None, **rules: Any) -> WtConnection:
    return WtConnection(WtRules(**rules), gate if gate is not None else Gate())


def ready(conn: WtConnection, settings: dict[int, int] | None = None) -> list[Action]:
    conn.handshake_completed(0.0)
    conn.settings_received(settings or {}, 0.0)
    return conn.take_actions()


def session(conn: WtConnection, sid: int = SID, headers: list[tuple[bytes, bytes]] = CONNECT) -> list[Action]:
    conn.headers_received(sid, headers, False, 0.0)
    return conn.take_actions()


def bidi(n: int) -> int:
    """The id of the client's ``n``-th bidirectional stream after the CONNECT stream."""
    return 4 * n


def _varint(data: bytes, i: int) -> tuple[int, int]:
    """A QUIC varint decoded by hand (not by the code under test): its value and the index after it."""
    size = 1 << (data[i] >> 6)
    return int.from_bytes(bytes([data[i] & 0x3F]) + data[i + 1 : i + size], "big"), i + size


def message_of(data: bytes) -> tuple[int, dict[str, Any]]:
    """``(kind, body)`` of one whole reply message (docs/protocol.md §3.1)."""
    length, start = _varint(data, 1)
    assert len(data) == start + length
    body: dict[str, Any] = json.loads(data[start:])
    return data[0], body


def sent(actions: list[Action], stream_id: int) -> tuple[bytes, bool]:
    """Every byte sent on ``stream_id`` and whether FIN followed."""
    data = [a for a in actions if isinstance(a, SendData) and a.stream_id == stream_id]
    return b"".join(a.data for a in data), any(a.end for a in data)


def error_of(actions: list[Action], stream_id: int) -> dict[str, Any]:
    data, fin = sent(actions, stream_id)
    assert fin
    kind, body = message_of(data)
    assert kind == 0x23  # REPLY_ERROR
    return body


def status_of(actions: list[Action], sid: int = SID) -> tuple[int, bool]:
    (headers,) = [a for a in actions if isinstance(a, SendHeaders) and a.stream_id == sid]
    return int(dict(headers.headers)[b":status"]), headers.end


def resets(actions: list[Action]) -> dict[int, int]:
    return {a.stream_id: a.code for a in actions if isinstance(a, ResetStream)}


START = encode_request(StartRequested("hi", 3))


# -- sessions: when a CONNECT is answered -------------------------------------------------------------------


@pytest.mark.parametrize("settings_first", [True, False])
def test_a_0rtt_connect_waits_for_the_handshake_and_the_settings(settings_first: bool) -> None:
    conn = layer()
    assert session(conn) == []
    (held,) = conn.held_connects
    assert held.early and held.state is SessionState.HELD
    if settings_first:
        conn.settings_received({}, 0.0)
    else:
        conn.handshake_completed(0.0)
    assert conn.take_actions() == [] and conn.sessions == {}
    if settings_first:
        conn.handshake_completed(0.0)
    else:
        conn.settings_received({}, 0.0)
    assert status_of(conn.take_actions()) == (200, False)
    assert conn.sessions[SID].state is SessionState.ESTABLISHED
    assert conn.counters.early_sessions_total == 1 and conn.counters.sessions_total == 1


def test_a_connect_after_the_handshake_waits_only_for_the_settings() -> None:
    conn = layer()
    conn.handshake_completed(0.0)
    assert session(conn) == []
    assert not conn.held_connects[0].early
    conn.settings_received({}, 0.0)
    assert status_of(conn.take_actions()) == (200, False)
    assert conn.counters.early_sessions_total == 0


def test_early_requests_are_served_only_after_the_handshake() -> None:
    conn = layer()
    session(conn)
    attach = encode_request(AttachRequested("abc"))
    conn.wt_stream_data(bidi(1), SID, START, True, 0.0)
    conn.wt_stream_data(bidi(2), SID, attach[:3], False, 0.0)
    conn.wt_stream_data(bidi(2), SID, attach[3:], False, 0.0)
    assert conn.take_actions() == [] and conn.streams == {}
    actions = ready(conn)
    requests = [a for a in actions if isinstance(a, RequestReceived)]
    assert [(r.stream_id, type(r.request)) for r in requests] == [
        (bidi(1), StartRequested),
        (bidi(2), AttachRequested),
    ]
    assert conn.counters.deferred_starts_total == 1 and conn.counters.early_requests_total == 1


def test_held_streams_per_session_are_bounded() -> None:
    conn = layer(max_early_streams=2)
    session(conn)
    for n in (1, 2, 3):
        conn.wt_stream_data(bidi(n), SID, START, False, 0.0)
    assert resets(conn.take_actions()) == {bidi(3): SESSION_GONE}
    assert [a.stream_id for a in ready(conn) if isinstance(a, RequestReceived)] == [bidi(1), bidi(2)]


def test_held_connects_are_bounded() -> None:
    conn = layer(max_sessions_per_connection=1)
    session(conn, 0)
    assert status_of(session(conn, 4), 4) == (429, True)


def test_a_connect_the_client_resets_before_its_answer_is_dropped_with_its_streams() -> None:
    conn = layer()
    session(conn)
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    assert conn.stream_reset(SID, 0) is False
    assert resets(conn.take_actions()) == {SID: H3_REQUEST_CANCELLED, bidi(1): SESSION_GONE}
    assert ready(conn) == [] and conn.sessions == {}
    conn.wt_stream_data(bidi(2), SID, START, False, 0.0)  # a late stream of the dropped session
    assert resets(conn.take_actions()) == {bidi(2): SESSION_GONE}


def test_capsules_sent_before_the_answer_apply_once_it_is_sent() -> None:
    conn = layer()
    session(conn)
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.data_received(SID, encode_capsule(CAPSULE_CLOSE_SESSION, b"\0\0\0\0"), False)
    actions = ready(conn)
    assert status_of(actions) == (200, False)
    assert FinishSession(SID) in actions and not any(isinstance(a, RequestReceived) for a in actions)
    assert resets(actions) == {bidi(1): SESSION_GONE}
    assert conn.sessions == {} and SID in conn.closed_sessions


def test_too_many_capsule_bytes_before_the_answer_reset_the_connect() -> None:
    conn = layer()
    session(conn)
    conn.data_received(SID, b"\x00" * MAX_HELD_CAPSULE_BYTES, False)
    assert conn.take_actions() == []
    conn.data_received(SID, b"\x00", False)
    assert resets(conn.take_actions()) == {SID: H3_EXCESSIVE_LOAD}
    assert conn.held_connects == [] and conn.counters.sessions_refused_total == 1


# -- sessions: refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (connect_headers(AUTHORITY, "/elsewhere"), 404),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"x"), (b":path", b"/")], 404),
        ([h for h in CONNECT if h[0] != b":protocol"], 400),
        (connect_headers(AUTHORITY, origin="https://evil.test"), 403),
    ],
)
def test_a_connect_that_is_not_a_session_here_is_refused(headers: list[tuple[bytes, bytes]], status: int) -> None:
    conn = layer()
    ready(conn)
    assert status_of(session(conn, headers=headers)) == (status, True)
    assert conn.sessions == {} and conn.counters.sessions_refused_total == 1


@pytest.mark.parametrize(
    ("origin", "allow", "status"),
    [
        (f"https://{AUTHORITY}", (), 200),  # a page of this server itself
        ("https://app.test", ("https://app.test",), 200),
        ("https://app.test", ("*",), 200),
        ("https://app.test", ("https://other.test",), 403),
    ],
)
def test_the_origin_of_a_page_is_checked_as_cors_would(origin: str, allow: tuple[str, ...], status: int) -> None:
    conn = layer(allow_origins=allow)
    ready(conn)
    assert status_of(session(conn, headers=connect_headers(AUTHORITY, origin=origin)))[0] == status


@pytest.mark.parametrize("refusal", [503, 429])
def test_the_gate_refuses_sessions_for_the_whole_process(refusal: int) -> None:
    gate = Gate(refusal)
    conn = layer(gate)
    ready(conn)
    assert status_of(session(conn)) == (refusal, True)
    assert gate.open == 0


def test_sessions_per_connection_are_limited_closed_ones_included() -> None:
    gate = Gate()
    conn = layer(gate, max_sessions_per_connection=2)
    ready(conn)
    assert status_of(session(conn, 0), 0)[0] == 200
    conn.data_received(0, b"", True)  # the client ends the first session
    assert FinishSession(0) in conn.take_actions() and gate.open == 0
    assert status_of(session(conn, 4), 4)[0] == 200
    assert status_of(session(conn, 8), 8) == (429, True)
    assert gate.open == 1


def test_a_draft13_client_without_flow_control_gets_one_session() -> None:
    conn = layer()
    ready(conn, {SETTINGS_WT_MAX_SESSIONS: 1})
    assert status_of(session(conn, 0), 0)[0] == 200
    assert conn.sessions[0].credit is None
    assert resets(session(conn, 4)) == {4: H3_REQUEST_REJECTED}


# -- sessions: credentials ---------------------------------------------------------------------------------


def test_with_auth_on_a_session_waits_for_its_verdict() -> None:
    gate = Gate()
    conn = layer(gate, auth=True)
    ready(conn)
    headers = connect_headers(AUTHORITY, "/v1/webtransport?access_token=t0k", extra=[("authorization", "Bearer a")])
    (ask,) = session(conn, headers=headers)
    assert ask == Authorize(SID, {"authorization": "Bearer a"}, {"access_token": "t0k"}, "/v1/webtransport")
    assert conn.authorizing[SID].state is SessionState.AUTHORIZING and gate.open == 0
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)  # held meanwhile
    assert conn.take_actions() == []
    conn.session_authorized(SID, "team-a", 1.0)
    actions = conn.take_actions()
    assert status_of(actions)[0] == 200 and gate.open == 1
    assert conn.sessions[SID].principal == "team-a"
    assert [a.stream_id for a in actions if isinstance(a, RequestReceived)] == [bidi(1)]
    assert conn.streams[bidi(1)].opened_at == 1.0  # held streams open with their session


@pytest.mark.parametrize(("challenge", "status"), [('Bearer realm="tokenwire"', 401), (None, 500)])
def test_a_refused_verdict_refuses_the_session_and_its_held_streams(challenge: str | None, status: int) -> None:
    conn = layer(auth=True)
    ready(conn)
    session(conn)
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.session_refused(SID, challenge)
    actions = conn.take_actions()
    assert status_of(actions) == (status, True)
    (answer,) = [a for a in actions if isinstance(a, SendHeaders)]
    assert dict(answer.headers).get(b"www-authenticate") == (challenge.encode() if challenge else None)
    assert resets(actions) == {bidi(1): SESSION_GONE}
    conn.session_authorized(SID, "late", 2.0)  # a verdict for a CONNECT no longer waiting: nothing
    assert conn.take_actions() == [] and conn.sessions == {}


# -- request streams ---------------------------------------------------------------------------------------------


def established(settings: dict[int, int] | None = None, **rules: Any) -> WtConnection:
    conn = layer(**rules)
    ready(conn, settings)
    session(conn)
    return conn


@pytest.mark.parametrize("split", [False, True])
def test_a_request_is_handed_over_once_whole(split: bool) -> None:
    conn = established()
    request = encode_request(CancelRequested("s-1"))
    pieces = [request[i : i + 1] for i in range(len(request))] if split else [request]
    for piece in pieces[:-1]:
        conn.wt_stream_data(bidi(1), SID, piece, False, 0.0)
        assert conn.take_actions() == []
        assert conn.streams[bidi(1)].state is StreamState.READING
    conn.wt_stream_data(bidi(1), SID, pieces[-1], False, 0.0)
    assert conn.take_actions() == [RequestReceived(bidi(1), SID, CancelRequested("s-1"))]
    assert conn.streams[bidi(1)].state is StreamState.SERVING and conn.counters.requests_total == 1


def test_a_stream_that_carried_only_its_header_counts_from_then() -> None:
    conn = established(max_streams_per_session=1, header_timeout=10.0)
    conn.wt_stream_data(bidi(1), SID, b"", False, 5.0)
    conn.tick(14.9)
    assert conn.take_actions() == []
    conn.wt_stream_data(bidi(2), SID, START, False, 6.0)
    assert error_of(conn.take_actions(), bidi(2))["status"] == 503
    conn.tick(15.0)
    actions = conn.take_actions()
    assert error_of(actions, bidi(1))["status"] == 408
    assert StopSending(bidi(1), http3_error_code(WtCode.BAD_REQUEST)) in actions  # not read whole


def test_a_malformed_request_gets_an_error_reply_and_stop_sending() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, b"\x99garbage", False, 0.0)
    actions = conn.take_actions()
    assert error_of(actions, bidi(1))["status"] == 400
    assert StopSending(bidi(1), http3_error_code(WtCode.BAD_REQUEST)) in actions
    assert conn.counters.bad_requests_total == 1


def test_a_request_read_whole_but_invalid_gets_no_stop_sending() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, b"\x12\x02{}", False, 0.0)  # an attach without its stream id
    actions = conn.take_actions()
    assert error_of(actions, bidi(1))["status"] == 400
    assert not any(isinstance(a, StopSending) for a in actions)


def test_a_request_over_the_limit_is_413() -> None:
    conn = established(max_request_bytes=16)
    conn.wt_stream_data(bidi(1), SID, encode_request(StartRequested("x" * 40)), False, 0.0)
    assert error_of(conn.take_actions(), bidi(1))["status"] == 413


def test_bytes_after_the_request_reset_the_stream() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.take_actions()
    conn.wt_stream_data(bidi(1), SID, b"x", False, 0.0)
    actions = conn.take_actions()
    code = http3_error_code(WtCode.BAD_REQUEST)
    assert resets(actions) == {bidi(1): code} and StreamDetached(bidi(1)) in actions
    conn.send(bidi(1), b"reply", True)  # the application answers late: nothing goes out
    assert conn.take_actions() == []


def test_the_stream_limit_frees_a_place_when_a_stream_has_sent_its_end() -> None:
    conn = established(max_streams_per_session=1)
    conn.wt_stream_data(bidi(1), SID, START, True, 0.0)
    conn.take_actions()
    conn.send(bidi(1), b"all", True)
    assert conn.take_actions() == [SendData(bidi(1), b"all", True), ForgetStream(bidi(1))]
    conn.wt_stream_data(bidi(2), SID, START, False, 0.0)
    assert [a.stream_id for a in conn.take_actions() if isinstance(a, RequestReceived)] == [bidi(2)]


def test_a_reset_before_the_request_was_whole_answers_with_a_reset() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, START[:2], False, 0.0)
    assert conn.stream_reset(bidi(1), 0) is True
    assert conn.take_actions() == [
        ResetStream(bidi(1), http3_error_code(WtCode.NO_ERROR)),
        ForgetStream(bidi(1)),
    ]
    assert conn.sessions[SID].streams == set()


def test_a_reset_of_a_served_stream_lets_its_answer_finish() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.take_actions()
    assert conn.stream_reset(bidi(1), 0) is True
    assert conn.take_actions() == [] and conn.active(bidi(1))
    conn.send(bidi(1), b"end", True)
    assert conn.take_actions() == [SendData(bidi(1), b"end", True), ForgetStream(bidi(1))]


def test_stop_sending_detaches_a_stream() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, START, True, 0.0)
    conn.take_actions()
    assert conn.stop_sending(bidi(1), 0) is True
    assert conn.take_actions() == [StreamDetached(bidi(1)), ForgetStream(bidi(1))]
    assert conn.stop_sending(bidi(1), 0) is False  # not a request stream any more


def test_a_close_session_capsule_resets_every_stream_of_the_session() -> None:
    gate = Gate()
    conn = layer(gate)
    ready(conn)
    session(conn)
    for n in (1, 2):
        conn.wt_stream_data(bidi(n), SID, START, False, 0.0)
    conn.take_actions()
    capsule = encode_capsule(CAPSULE_CLOSE_SESSION, b"\0\0\0\0bye")
    for i in range(len(capsule)):  # byte by byte
        conn.data_received(SID, capsule[i : i + 1], False)
    actions = conn.take_actions()
    assert resets(actions) == {bidi(1): SESSION_GONE, bidi(2): SESSION_GONE}
    assert {StreamDetached(bidi(1)), StreamDetached(bidi(2)), FinishSession(SID)} <= set(actions)
    assert conn.sessions == {} and gate.open == 0
    conn.wt_stream_data(bidi(3), SID, START, False, 0.0)
    assert resets(conn.take_actions()) == {bidi(3): SESSION_GONE}


def test_the_end_of_the_connection_detaches_every_stream() -> None:
    gate = Gate()
    conn = layer(gate)
    ready(conn)
    session(conn, 0)
    session(conn, 100)
    conn.wt_stream_data(bidi(1), 0, START, False, 0.0)
    conn.wt_stream_data(bidi(2), 100, START[:1], False, 0.0)
    conn.take_actions()
    assert gate.open == 2
    conn.connection_terminated()
    assert set(conn.take_actions()) == {StreamDetached(bidi(1)), StreamDetached(bidi(2))}
    assert gate.open == 0 and conn.closed and conn.sessions == {} and conn.streams == {}
    conn.wt_stream_data(bidi(3), 0, START, False, 0.0)
    conn.headers_received(200, CONNECT, False, 0.0)
    assert conn.take_actions() == []


def test_unidirectional_streams_are_ignored() -> None:
    conn = established()
    conn.wt_stream_data(2, SID, START, False, 0.0)
    assert conn.take_actions() == [] and conn.streams == {}


def test_an_application_error_is_a_typed_reply() -> None:
    conn = established()
    conn.wt_stream_data(bidi(1), SID, encode_request(AttachRequested("gone")), False, 0.0)
    conn.take_actions()
    conn.reply_error(bidi(1), StreamNotFound("no stream 'gone'"))
    actions = conn.take_actions()
    body = error_of(actions, bidi(1))
    assert (body["type"], body["status"], body["code"]) == ("StreamNotFound", 404, WtCode.STREAM_NOT_FOUND)
    assert not any(isinstance(a, StopSending) for a in actions)  # the request was read whole


# -- flow control ---------------------------------------------------------------------------------------------------


def max_data(limit: int) -> bytes:
    value = limit.to_bytes(8, "big")
    value = bytes([value[0] | 0xC0]) + value[1:]  # an 8-byte varint
    return encode_capsule(CAPSULE_WT_MAX_DATA, value)


def test_bytes_beyond_the_clients_credit_wait_for_wt_max_data() -> None:
    conn = established(settings={SETTINGS_WT_INITIAL_MAX_DATA: 10})
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.take_actions()
    conn.send(bidi(1), b"0123456789abcdef", False)
    actions = conn.take_actions()
    assert sent(actions, bidi(1)) == (b"0123456789", False)
    assert CreditBlocked(bidi(1)) in actions
    (blocked,) = [a for a in actions if isinstance(a, SendCapsules)]
    kind, i = _varint(blocked.data, 0)
    length, i = _varint(blocked.data, i)
    assert (kind, length) == (WT_DATA_BLOCKED, 1) and _varint(blocked.data, i)[0] == 10
    assert conn.waiting_for_credit(bidi(1))
    conn.send(bidi(1), b"!", True)  # queued behind the held bytes, FIN too
    actions = conn.take_actions()
    assert sent(actions, bidi(1)) == (b"", False)
    assert not any(isinstance(a, SendCapsules) for a in actions)  # one WT_DATA_BLOCKED per limit
    assert conn.active(bidi(1)) and conn.streams[bidi(1)].state is StreamState.ENDED
    conn.data_received(SID, max_data(20), False)
    actions = conn.take_actions()
    assert sent(actions, bidi(1)) == (b"abcdef!", True)
    assert CreditAvailable(bidi(1)) in actions and conn.sessions[SID].credit is not None
    assert conn.sessions[SID].credit.sent == 17
    assert conn.counters.credit_waits_total == 1


def test_wt_max_data_is_ignored_when_flow_control_is_off() -> None:
    conn = established()
    assert conn.sessions[SID].credit is None
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.take_actions()
    conn.data_received(SID, max_data(0), False)
    conn.send(bidi(1), b"x" * 100, False)
    assert sent(conn.take_actions(), bidi(1)) == (b"x" * 100, False)


def test_a_wt_max_data_that_goes_down_closes_the_session() -> None:
    conn = established(settings={SETTINGS_WT_INITIAL_MAX_DATA: 100})
    conn.wt_stream_data(bidi(1), SID, START, False, 0.0)
    conn.take_actions()
    conn.data_received(SID, max_data(50), False)
    actions = conn.take_actions()
    assert resets(actions) == {SID: WT_FLOW_CONTROL_ERROR, bidi(1): SESSION_GONE}
    assert StreamDetached(bidi(1)) in actions and conn.sessions == {}


def test_a_reset_drops_the_bytes_held_for_credit() -> None:
    conn = established(settings={SETTINGS_WT_INITIAL_MAX_DATA: 4})
    conn.wt_stream_data(bidi(1), SID, START, True, 0.0)
    conn.take_actions()
    conn.send(bidi(1), b"0123456789", True)
    conn.take_actions()
    conn.reset_stream(bidi(1), WtCode.RESUME)
    actions = conn.take_actions()
    assert resets(actions) == {bidi(1): http3_error_code(WtCode.RESUME)}  # FIN was held: still a reset
    assert ForgetStream(bidi(1)) in actions and conn.sessions[SID].blocked == {}
    conn.data_received(SID, max_data(100), False)
    assert sent(conn.take_actions(), bidi(1)) == (b"", False)


# -- datagram previews -------------------------------------------------------------------------------------------


def previewing() -> WtConnection:
    conn = established(datagram_previews=True, settings={SETTINGS_H3_DATAGRAM: 1})
    conn.wt_stream_data(bidi(3), SID, START, False, 0.0)
    conn.take_actions()
    return conn


def test_previews_are_granted_only_when_enabled_and_the_peer_takes_datagrams() -> None:
    assert previewing().grant_previews(bidi(3), 1200) == bidi(3) // 4 + 1
    assert previewing().grant_previews(bidi(3), 0) == 0  # no DATAGRAM frames
    off = established(settings={SETTINGS_H3_DATAGRAM: 1})
    off.wt_stream_data(bidi(3), SID, START, False, 0.0)
    assert off.grant_previews(bidi(3), 1200) == 0  # not enabled here
    no_h3 = established(datagram_previews=True)
    no_h3.wt_stream_data(bidi(3), SID, START, False, 0.0)
    assert no_h3.grant_previews(bidi(3), 1200) == 0  # no SETTINGS_H3_DATAGRAM


def test_previews_fit_one_packet_and_the_peers_limit() -> None:
    conn = previewing()
    tag = conn.grant_previews(bidi(3), 1200)
    frames = b"\x01" * 50
    conn.preview(bidi(3), frames, 1200)
    (datagram,) = conn.take_actions()
    assert isinstance(datagram, SendDatagram) and datagram.session_id == SID
    assert datagram.payload[0] == tag and datagram.payload[1:] == frames
    conn.preview(bidi(3), b"\x01" * (MAX_PREVIEW_BYTES - 15), 65536)  # over the preview bound
    conn.preview(bidi(3), frames, 16 + 50 + 3)  # the DATAGRAM frame would reach the peer's limit
    assert conn.take_actions() == []
    assert (conn.counters.previews_sent_total, conn.counters.previews_dropped_total) == (1, 2)


def test_a_preview_payload_parses_back() -> None:
    conn = previewing()
    tag = conn.grant_previews(bidi(3), 1200)
    frames = _core.encode_frame(_core.FRAME_TOKEN, 1, "hi")
    conn.preview(bidi(3), frames, 1200)
    (datagram,) = conn.take_actions()
    assert isinstance(datagram, SendDatagram)
    got_tag, decoded = parse_preview(datagram.payload)
    assert got_tag == tag and [text for _, _, text in decoded] == ["hi"]


# -- a native engine's events ------------------------------------------------------------------------------------


def test_a_native_engines_event_tuples_drive_the_layer() -> None:
    conn = layer()
    c = 7  # the engine's connection id
    assert feed(conn, ("connected", c, "127.0.0.1", 5000), 0.0) is False
    assert feed(conn, ("headers", c, SID, CONNECT, False), 0.0)
    assert feed(conn, ("wt_stream", c, bidi(1), SID, b"", False), 0.0)  # opened: its header only
    assert conn.take_actions() == []
    assert feed(conn, ("settings", c, {SETTINGS_WT_INITIAL_MAX_DATA: 1 << 20}), 0.5)
    assert feed(conn, ("handshake", c), 1.0)
    assert status_of(conn.take_actions())[0] == 200 and conn.sessions[SID].credit is not None
    assert conn.streams[bidi(1)].opened_at == 1.0
    assert feed(conn, ("wt_stream", c, bidi(1), SID, START, True), 1.5)
    assert [type(a) for a in conn.take_actions()] == [RequestReceived]
    assert feed(conn, ("reset", c, bidi(1), 0), 2.0) is True
    assert feed(conn, ("stop_sending", c, bidi(9), 0), 2.0) is False  # not a request stream
    assert feed(conn, ("writable", c, bidi(1)), 2.0) is False
    assert feed(conn, ("data", c, SID, encode_capsule(CAPSULE_CLOSE_SESSION, b"\0\0\0\0"), False), 2.0)
    assert FinishSession(SID) in conn.take_actions() and conn.sessions == {}
    assert feed(conn, ("closed", c, 0, ""), 3.0) and conn.closed


# -- any split of the bytes ------------------------------------------------------------------------------------


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(st.lists(st.integers(0, 1 << 16), max_size=12), st.booleans())
def test_any_split_of_a_request_gives_it_once(cuts: list[int], fin: bool) -> None:
    request = StartRequested("héllo wörld", 7, {"stamp": True})
    pieces = _split(encode_request(request), cuts)
    conn = established()
    for i, piece in enumerate(pieces):
        conn.wt_stream_data(bidi(1), SID, piece, fin and i == len(pieces) - 1, 0.0)
    assert conn.take_actions() == [RequestReceived(bidi(1), SID, request)]


@given(
    st.lists(st.integers(0, 1 << 40), min_size=1, max_size=6),
    st.lists(st.integers(0, 1 << 16), max_size=12),
)
def test_any_split_of_the_capsules_raises_the_credit_as_sent(limits: list[int], cuts: list[int]) -> None:
    limits = sorted(limits)  # WT_MAX_DATA never goes down
    stream = b"".join(encode_capsule(0x29, b"grease" * n) + max_data(limit) for n, limit in enumerate(limits))
    conn = established(settings={SETTINGS_WT_MAX_SESSIONS: 4})  # flow control on, no initial credit
    for piece in _split(stream, cuts):
        conn.data_received(SID, piece, False)
    credit = conn.sessions[SID].credit
    assert credit is not None and credit.limit == limits[-1]
    assert conn.take_actions() == []
