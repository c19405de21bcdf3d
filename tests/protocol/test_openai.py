"""tokenwire.protocol.openai: what raw chat.completion.chunk JSON carries, and the completion it adds up to."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.sse_spec_parser import parse
from tokenwire import _core
from tokenwire.errors import RemoteProtocolError
from tokenwire.protocol.openai import (
    CompletionBuilder,
    assemble_completion,
    chunk_content,
    chunk_error,
    chunk_finish_reason,
    chunk_usage,
    error_chunk,
    may_end,
    native_render,
    openai_chunks_render,
    parse_chunk,
)

HEAD = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 17, "model": "m", "system_fingerprint": "fp"}


def chunk(delta: dict[str, Any], finish: str | None = None, index: int = 0, **extra: Any) -> dict[str, Any]:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra}


def text(obj: dict[str, Any], *, compact: bool = True) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":") if compact else None)


def test_content_of_each_kind_of_chunk() -> None:
    assert chunk_content(text(chunk({"role": "assistant", "content": ""}))) == ""
    assert chunk_content(text(chunk({"role": "assistant", "content": None}))) == ""
    assert chunk_content(text(chunk({"content": ' "東京"\n'}))) == ' "東京"\n'
    assert chunk_content(text(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}))) == ""
    assert chunk_content(text(chunk({}, "stop"))) == ""
    assert chunk_content(text({**HEAD, "choices": [], "usage": {"total_tokens": 3}})) == ""
    two = {**HEAD, "choices": [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]}
    assert chunk_content(two) == "ab"


def test_odd_members_count_as_absent() -> None:
    for odd in (
        {"choices": None},
        {"choices": [1, "x"]},
        {"choices": [{"delta": "x"}]},
        {"choices": [{"delta": {"content": 5}}]},
    ):
        assert chunk_content(odd) == ""
        assert chunk_finish_reason(odd) is None
        assert chunk_usage(odd) is None
        assert chunk_error(odd) is None


def test_finish_usage_and_error() -> None:
    assert chunk_finish_reason(text(chunk({"content": "x"}))) is None
    assert chunk_finish_reason(text(chunk({}, "tool_calls"))) == "tool_calls"
    assert chunk_usage(text(chunk({}, "stop"))) is None
    assert chunk_usage(text(chunk({}, None, usage=None))) is None
    usage = {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert chunk_usage(text({**HEAD, "choices": [], "usage": usage})) == usage
    assert chunk_error('{"error": {"message": "boom", "type": "internal"}}') == {"message": "boom", "type": "internal"}
    assert chunk_error('{"error": "boom"}') == {"message": "boom"}
    assert chunk_error(text(chunk({"content": "error"}))) is None


@pytest.mark.parametrize("bad", ["", "not json", "[1, 2]", '"text"', "{", "null"])
def test_text_that_is_not_an_object_is_a_remote_protocol_error(bad: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_chunk(bad)
    with pytest.raises(RemoteProtocolError):
        CompletionBuilder().add(bad)


def test_may_end_on_real_shapes() -> None:
    for compact in (True, False):
        assert not may_end(text(chunk({"content": "x"}), compact=compact))
        assert not may_end(text(chunk({"content": "x"}, usage=None), compact=compact))
        assert not may_end(text(chunk({"content": 'finish_reason": "stop usage": {'}), compact=compact))
        assert may_end(text(chunk({}, "length"), compact=compact))
        assert may_end(text({**HEAD, "choices": [], "usage": {"total_tokens": 1}}, compact=compact))
        assert may_end(text({"error": {"message": "x"}}, compact=compact))


# Any JSON a chunk could hold, built around the members that matter.
_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_deltas = st.fixed_dictionaries(
    {}, optional={"content": st.none() | st.text(max_size=10), "role": st.just("assistant"), "x": _values}
)
_choices = st.fixed_dictionaries(
    {"index": st.integers(0, 2), "delta": _deltas},
    optional={"finish_reason": st.none() | st.sampled_from(["stop", "length", "tool_calls"]), "logprobs": st.none()},
)
_chunks = st.fixed_dictionaries({"choices": st.lists(_choices, max_size=2)}, optional={"usage": st.none() | st.dictionaries(st.text(max_size=5), st.integers(), max_size=3), "error": _values, "id": st.text(max_size=5), "extra": _values})  # fmt: skip


@given(_chunks, st.booleans())
def test_may_end_false_means_nothing_ends(obj: dict[str, Any], compact: bool) -> None:
    raw = text(obj, compact=compact)
    if not may_end(raw):
        assert chunk_finish_reason(raw) is None
        assert chunk_usage(raw) is None
        assert chunk_error(raw) is None


def test_assembles_a_text_answer() -> None:
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Hello"}),
        chunk({"content": ", wörld"}),
        chunk({}, "length"),
        {**HEAD, "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}},
    ]
    assert assemble_completion(text(c) for c in chunks) == {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 17,
        "model": "m",
        "system_fingerprint": "fp",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, wörld"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


def test_assembles_tool_calls_merged_by_index() -> None:
    chunks = [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "get", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "put", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}, {"index": 0, "function": {"arguments": '"x"}'}}]}),
        chunk({}, "tool_calls"),
    ]  # fmt: skip
    message = assemble_completion(chunks)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get", "arguments": '{"q": "x"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "put", "arguments": "{}"}},
        ],
    }
    assert assemble_completion(chunks)["choices"][0]["finish_reason"] == "tool_calls"
    assert "usage" not in assemble_completion(chunks)


def test_assembles_several_choices_refusal_and_logprobs() -> None:
    lp = {"content": [{"token": "a", "logprob": -0.1}]}
    chunks = [
        {**HEAD, "choices": [{"index": 1, "delta": {"role": "assistant", "content": "B"}, "logprobs": lp}]},
        {**HEAD, "choices": [{"index": 0, "delta": {"refusal": "no"}, "finish_reason": None}]},
        {**HEAD, "choices": [{"index": 1, "delta": {"content": "b"}, "logprobs": lp, "finish_reason": "stop"}]},
        {**HEAD, "choices": [{"index": 0, "delta": {"refusal": "pe"}, "finish_reason": "stop"}]},
    ]
    builder = CompletionBuilder()
    for c in chunks:
        builder.add(c)
    choices = builder.completion()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    assert choices[0]["message"] == {"role": "assistant", "content": "", "refusal": "nope"}
    assert choices[1]["message"] == {"role": "assistant", "content": "Bb"}
    assert choices[1]["logprobs"] == {"content": lp["content"] * 2}
    assert builder.finish_reason == "stop"
    assert builder.chunks == 4


def test_no_chunks_gives_one_empty_choice() -> None:
    answer = assemble_completion([])
    assert answer["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    ]


_pieces = st.text(max_size=30).flatmap(
    lambda s: st.lists(st.integers(0, len(s)), max_size=6).map(
        lambda cuts: [s[a:b] for a, b in zip([0, *sorted(cuts)], [*sorted(cuts), len(s)], strict=True)]
    )
)
_calls = st.lists(st.tuples(st.text(min_size=1, max_size=8), _pieces, _pieces), max_size=3)


@given(_pieces, _calls, st.randoms(use_true_random=False), st.booleans())
def test_any_split_assembles_back(
    content: list[str], calls: list[tuple[str, list[str], list[str]]], rnd: Any, compact: bool
) -> None:
    """Content and tool calls cut into pieces anywhere, the calls' deltas interleaved: the completion holds each
    whole, calls in index order."""
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": p} for p in content]
    streams = []
    for i, (call_id, name, arguments) in enumerate(calls):
        first = {
            "index": i,
            "id": call_id,
            "type": "function",
            "function": {"name": name[0] if name else "", "arguments": ""},
        }
        rest = [{"index": i, "function": {"name": p}} for p in name[1:]] + [
            {"index": i, "function": {"arguments": p}} for p in arguments
        ]
        streams.append([first, *rest])
    while any(streams):  # interleave the calls' deltas, each call's in order
        pick = rnd.choice([s for s in streams if s])
        deltas.append({"tool_calls": [pick.pop(0)]})
    chunks = [text(chunk(d), compact=compact) for d in deltas] + [text(chunk({}, "stop"), compact=compact)]
    message = assemble_completion(chunks)["choices"][0]["message"]
    joined = "".join(content)
    assert message["content"] == (None if calls and not joined else joined)
    assert [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls", [])] == [
        (call_id, "".join(name), "".join(arguments)) for call_id, name, arguments in calls
    ]
    assert "".join(chunk_content(c) for c in chunks) == joined


# -- renderings of raw-chunk frames ----------------------------------------------------------------------------

PREFIX = "s1:ep:"
_chunk_texts = st.one_of(
    st.text(max_size=12).map(lambda t: text(chunk({"content": t}))),
    st.just(text(chunk({"role": "assistant", "content": ""}))),
    st.just(text(chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}))),
    st.just(text({**HEAD, "choices": [], "usage": {"total_tokens": 1}})),
    st.just("not json"),
)
_finals = st.sampled_from(
    [(_core.FRAME_DONE, '{"reason":"stop"}'), (_core.FRAME_ERROR, '{"code":"upstream_error","message":"cut"}'), None]
)


def _frames(texts: list[str], final: tuple[int, str] | None) -> list[tuple[int, int, str]]:
    frames = [(_core.FRAME_TOKEN, i + 1, t) for i, t in enumerate(texts)]
    if final is not None:
        frames.append((final[0], len(texts) + 1, final[1]))
    return frames


@given(st.lists(_chunk_texts, max_size=8), _finals, st.sampled_from([_core.WIRE_SSE, _core.WIRE_BINARY]), st.data())
def test_native_render_equals_the_core_rendering_of_the_contents(
    texts: list[str], final: tuple[int, str] | None, wire: int, data: st.DataObject
) -> None:
    """What a native reader gets of a raw-chunk stream is byte for byte what the core renders for a stream whose
    tokens are the chunks' contents; split into reads anywhere, the reads add up to the same."""
    expected_ring = _core.Ring(PREFIX)
    contents = [chunk_content(t) if t != "not json" else "" for t in texts]
    for c in contents:
        expected_ring.append(c)
    if final is not None:
        expected_ring.append(final[1], final[0])
    frames = _frames(texts, final)
    cut = data.draw(st.integers(0, len(frames)))
    render = native_render(PREFIX, wire)
    assert render(frames[:cut]) + render(frames[cut:]) == expected_ring.since(0, wire)


@given(st.lists(_chunk_texts, max_size=8), _finals)
def test_openai_render_is_the_chunks_verbatim_then_done(texts: list[str], final: tuple[int, str] | None) -> None:
    raw = openai_chunks_render(PREFIX)(_frames(texts, final))
    events, _ = parse(raw)
    n = len(texts)
    expected = [(t, f"{PREFIX}{i + 1}") for i, t in enumerate(texts)]
    if final is not None and final[0] == _core.FRAME_ERROR:
        expected.append(
            (
                json.dumps({"error": {"message": "cut", "type": "upstream_error", "code": "upstream_error"}}),
                f"{PREFIX}{n + 1}:error",
            )
        )
    if final is not None:
        expected.append(("[DONE]", f"{PREFIX}{n + 1}"))
    assert [(e.data, e.last_event_id) for e in events] == expected
    assert all(e.type == "message" for e in events)


def test_openai_render_leaves_out_an_error_chunk_the_client_holds() -> None:
    frames = [(_core.FRAME_ERROR, 4, '{"code":"upstream_timeout","message":"late"}')]
    events, _ = parse(openai_chunks_render(PREFIX, skip_error_of=4)(frames))
    assert [(e.data, e.last_event_id) for e in events] == [("[DONE]", f"{PREFIX}4")]
    assert error_chunk("not json") == {"error": {"message": "", "type": "error", "code": "error"}}
