"""tokenwire: resumable LLM token streaming over SSE and WebTransport, with a Rust wire core.

A :class:`Hub` holds every stream's recent tokens in a Rust ring. Producers ``send`` tokens to a
:class:`TokenStream`; subscribers attach at any seq, detach, and resume while generation goes on. Every reader
reads through a :class:`Cursor` (``stream.cursor(after)``): its place in the stream and one read per batch.
"""

from tokenwire._core import __version__
from tokenwire.errors import (
    BackpressureExceeded,
    DuplicateStreamId,
    EpochMismatch,
    FrameError,
    GenerationRefused,
    HubFull,
    InvalidBody,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    ResumeError,
    ResumeExpired,
    ResumeFromFuture,
    StorageUnavailable,
    StreamClosed,
    StreamFailed,
    StreamNotFound,
    TokenwireError,
)
from tokenwire.fake_model import FakeEngine, FakeModel
from tokenwire.generation import Engine, GenerationRequest, Generator
from tokenwire.hub import Cursor, Frame, FrameKind, Hub, Render, StreamState, Subscription, TokenStream, Wire
from tokenwire.protocol.resume import ResumePoint, parse_resume_point
from tokenwire.server.config import ServerConfig, ServerOptions
from tokenwire.storage import MemoryStorage, Storage

__all__ = [
    "BackpressureExceeded",
    "Cursor",
    "DuplicateStreamId",
    "Engine",
    "EpochMismatch",
    "FakeEngine",
    "FakeModel",
    "Frame",
    "FrameError",
    "FrameKind",
    "GenerationRefused",
    "GenerationRequest",
    "Generator",
    "Hub",
    "HubFull",
    "InvalidBody",
    "LocalProtocolError",
    "MemoryStorage",
    "ProtocolError",
    "RemoteProtocolError",
    "Render",
    "ResumeError",
    "ResumeExpired",
    "ResumeFromFuture",
    "ResumePoint",
    "ServerConfig",
    "ServerOptions",
    "Storage",
    "StorageUnavailable",
    "StreamClosed",
    "StreamFailed",
    "StreamNotFound",
    "StreamState",
    "Subscription",
    "TokenStream",
    "TokenwireError",
    "Wire",
    "__version__",
    "parse_resume_point",
]
