"""The model seam (tokenwire.generation): a user's generator behind ``tokenwire serve --model``, engine-style
producers, sync iterators in a thread, refusals before the first token, and load errors that say what failed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import serve_process, sse_server, wt_client, wt_server
from tokenwire import GenerationRefused, GenerationRequest, Hub, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.generation import Engine, Generator, GeneratorLoadError, aiter_source, load_generator

#: A user's model module, as ``tokenwire serve --model usermodel:...`` loads it from the current directory.
USER_MODEL = '''
import asyncio
import time


class Words:
    """A sync model that blocks while it "computes" each token (the server runs it in a thread)."""

    def generate(self, request):
        return WordsRun(request)


class WordsRun:
    def __init__(self, request):
        self.words = [f"{w} " for w in request.prompt.split()][: request.max_tokens]
        self.finish_reason = None
        self.usage = None

    def __iter__(self):
        for word in self.words:
            time.sleep(0.02)
            yield word
        self.finish_reason = "stop"
        self.usage = {"prompt_tokens": len(self.words), "completion_tokens": len(self.words), "total_tokens": 0}


class Shout:
    """An async generator function per request."""

    def generate(self, request):
        return self.run(request)

    async def run(self, request):
        for word in request.prompt.upper().split():
            await asyncio.sleep(0)
            yield word


class Stepper:
    """Engine style: one loop steps every stream, one character each per step."""

    def __init__(self):
        self.jobs = []
        self.task = None

    def enqueue(self, request, stream):
        self.jobs.append((stream, list(request.prompt)))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.run())

    async def run(self):
        while self.jobs:
            await asyncio.sleep(0.005)
            for job in list(self.jobs):
                stream, chars = job
                if stream.is_open:
                    stream.send(chars.pop(0))
                if not chars or not stream.is_open:
                    self.jobs.remove(job)
                    if stream.is_open:
                        stream.finish("stop")


def make_stepper():
    return Stepper()


def broken():
    raise ValueError("no weights here")


def not_a_model():
    return 42
'''


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "usermodel.py").write_text(textwrap.dedent(USER_MODEL))
    return tmp_path


def sse_events(text: str) -> list[tuple[str, str, str]]:
    """``(event, id, data)`` of each event of an SSE body (the fields tokenwire writes, one line each)."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":"))
        if "data" in fields:
            events.append((fields.get("event", "message"), fields.get("id", ""), fields["data"]))
    return events


async def test_serve_model_runs_a_sync_generator_in_a_thread_and_resumes_exactly_once(model_dir: Path) -> None:
    words = [f"w{i}" for i in range(30)]
    async with serve_process("--model", "usermodel:Words", cwd=str(model_dir)) as base, httpx.AsyncClient() as http:
        held: list[str] = []
        last_id = ""
        async with http.stream("POST", f"{base}/v1/streams", json={"prompt": " ".join(words), "max_tokens": 30}) as r:
            assert r.status_code == 200
            buffer = ""
            async for chunk in r.aiter_text():
                buffer += chunk
                complete, _, buffer = buffer.rpartition("\n\n")
                for event, event_id, data in sse_events(complete):
                    if event == "token":
                        held.append(data)
                        last_id = event_id
                if len(held) >= 5:
                    break  # the client drops the connection mid-answer
        stream_id = last_id.split(":")[0]
        again = await http.get(f"{base}/v1/streams/{stream_id}/events", headers={"Last-Event-ID": last_id})
        rest = sse_events(again.text)
    tokens = held + [data for event, _, data in rest if event == "token"]
    assert tokens == [f"{w} " for w in words]
    done = json.loads(next(data for event, _, data in rest if event == "done"))
    assert done == {"reason": "stop", "usage": {"prompt_tokens": 30, "completion_tokens": 30, "total_tokens": 0}}


@pytest.mark.parametrize("factory", ["usermodel:Shout", "usermodel:make_stepper"])
async def test_serve_model_async_and_engine_style(model_dir: Path, factory: str) -> None:
    prompt = "many streams per step"
    async with serve_process("--model", factory, cwd=str(model_dir)) as base, httpx.AsyncClient() as http:
        answers = [
            (await http.post(f"{base}/v1/chat/completions", json={"messages": [{"role": "user", "content": p}]})).json()
            for p in (prompt, "again")
        ]
    contents = [a["choices"][0]["message"]["content"] for a in answers]
    if factory.endswith("Shout"):
        assert contents == ["MANYSTREAMSPERSTEP", "AGAIN"]
    else:
        assert contents == [prompt, "again"]
    assert [a["choices"][0]["finish_reason"] for a in answers] == ["stop", "stop"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("usermodel", "--model takes package.module:factory, got 'usermodel'"),
        ("no_such_module_here:make", "cannot import 'no_such_module_here': ModuleNotFoundError"),
        ("usermodel:missing", "module 'usermodel' has no attribute 'missing'"),
        ("usermodel:broken", "usermodel:broken() failed: ValueError: no weights here"),
        ("usermodel:not_a_model", "made a int, which has neither generate(request) nor enqueue(request, stream)"),
    ],
)
def test_serve_model_load_errors_say_what_failed(model_dir: Path, spec: str, message: str) -> None:
    proc = subprocess.run(  # noqa: S603 - fixed arguments
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0", "--no-webtransport", "--model", spec],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=model_dir,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "serving" not in proc.stdout


def test_load_generator_takes_instances_classes_and_factories(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(model_dir))
    assert isinstance(load_generator("usermodel:Words"), Generator)  # a class is called
    assert isinstance(load_generator("usermodel:make_stepper"), Engine)
    assert isinstance(load_generator("tokenwire.fake_model:FakeModel"), Generator)
    with pytest.raises(GeneratorLoadError, match=r"has no attribute 'FakeModel\.nope'"):
        load_generator("tokenwire.fake_model:FakeModel.nope")


class _Counted:
    """A plain iterator with the attributes a source reports when exhausted."""

    def __init__(self) -> None:
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        yield "a"
        yield "b"
        self.usage, self.finish_reason = {"completion_tokens": 2}, "length"


async def test_a_sync_source_is_driven_in_a_thread_and_reports_its_end() -> None:
    async with Hub() as hub:
        stream = hub.start(aiter_source(_Counted()))
        async with hub.subscribe(stream.id) as sub:
            frames = [f async for batch in sub for f in batch]
    assert [f.text for f in frames[:2]] == ["a", "b"]
    assert frames[2].json() == {"reason": "length", "usage": {"completion_tokens": 2}}
    with pytest.raises(TypeError, match="an iterator of text, got str"):
        aiter_source("not a source")  # type: ignore[arg-type]


REFUSAL = b'{"error": {"message": "slow down", "type": "rate_limit"}}'


class _Refused:
    """A source that refuses before its first token, as an upstream's 429 does."""

    def __init__(self, refuser: Refuser) -> None:
        self.refuser = refuser

    async def open(self) -> None:
        self.refuser.opened += 1
        raise GenerationRefused(429, REFUSAL)

    def __aiter__(self) -> AsyncIterator[str]:
        raise AssertionError("a refused source is never iterated")


class Refuser:
    def __init__(self) -> None:
        self.opened = 0

    def generate(self, request: GenerationRequest) -> _Refused:
        return _Refused(self)


async def test_a_refusal_before_the_first_token_is_the_answer_on_every_transport() -> None:
    hub = Hub()
    refuser = Refuser()
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with sse_server(hub, model=refuser) as server, httpx.AsyncClient() as http:
        r = await http.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json=body)
        assert (r.status_code, r.content, r.headers["content-type"]) == (429, REFUSAL, "application/json")
        r = await http.post(f"http://127.0.0.1:{server.port}/v1/streams", json={"prompt": "hi"})
        assert (r.status_code, r.content) == (429, REFUSAL)
    app = TokenwireASGI(hub, ServerOptions(generator=refuser))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tw") as http:
        r = await http.post("/v1/chat/completions", json=body)
        assert (r.status_code, r.content) == (429, REFUSAL)
    async with wt_server(hub, model=refuser) as server, wt_client(server) as client:
        with pytest.raises(GenerationRefused) as refused:
            await client.generate("hi", max_tokens=5)
    assert refused.value.status == 429 and refused.value.body == REFUSAL
    assert len(hub) == 0  # nothing started
    assert refuser.opened == 4


async def test_the_readme_model_example_is_the_file_and_serves() -> None:
    root = Path(__file__).parent.parent
    example = (root / "examples" / "word_model.py").read_text()
    assert example.split('"""\n\n', 1)[1] in (root / "README.md").read_text()
    served = serve_process("--model", "examples.word_model:WordModel", cwd=str(root))
    async with served as base, httpx.AsyncClient() as http:
        r = await http.post(f"{base}/v1/streams", json={"prompt": "one two three"})
    assert [data for event, _, data in sse_events(r.text) if event == "token"] == ["three ", "two ", "one "]
