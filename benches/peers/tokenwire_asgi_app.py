"""tokenwire's ASGI app (:class:`tokenwire.asgi.TokenwireASGI`) under uvicorn, as a FastAPI user meets it.

The same endpoints and bytes as ``tokenwire serve``, served by uvicorn with the peers' settings (uvloop +
httptools, :mod:`benches.peers.uvicorn_serve`). ``--producer engine`` drives every stream from tokenwire's
:class:`~tokenwire.fake_model.FakeEngine` at ``--steps-per-s`` (as ``tokenwire serve --engine-steps-per-s``);
``--producer per-stream`` starts one ``FakeModel.generate`` per request at its ``tokens_per_s`` (as
``tokenwire serve`` without an engine).

    python -m benches.peers.tokenwire_asgi_app --port 8104 --steps-per-s 20 --producer engine
"""

from __future__ import annotations

from benches.peers.common import parse_args
from benches.peers.uvicorn_serve import serve
from tokenwire import FakeEngine, ServerOptions
from tokenwire.asgi import TokenwireASGI
from tokenwire.fake_model import FakeModel
from tokenwire.hub import Hub

__all__ = ["create_app", "main"]


def create_app(steps_per_s: float = 20.0, producer: str = "engine") -> TokenwireASGI:
    model = FakeModel(seed=0)
    engine = producer == "engine" and steps_per_s
    return TokenwireASGI(
        Hub(), ServerOptions(generator=FakeEngine(model, steps_per_s=steps_per_s) if engine else model)
    )


def main() -> int:
    args = parse_args("python -m benches.peers.tokenwire_asgi_app", "TokenwireASGI on uvicorn.")
    serve(create_app(args.steps_per_s, args.producer), args.host, args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
