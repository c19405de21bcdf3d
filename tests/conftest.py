from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import pytest
import uvloop
from hypothesis import HealthCheck, settings

if TYPE_CHECKING:
    from tests.support.compare_report import RealRun
    from tests.support.redis_server import RedisProcess

settings.register_profile("fast", max_examples=100, deadline=None)
settings.register_profile(
    "ci", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Every async test runs on both the stdlib loop and uvloop."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


WT_ENGINES = ("aioquic", "native")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that uses ``wt_engine`` runs once per WebTransport server engine (aioquic alone if marked
    ``aioquic_only``; the native run expected to fail if marked ``native_xfail``)."""
    if "wt_engine" not in metafunc.fixturenames:
        return
    node = metafunc.definition
    params: list[Any] = ["aioquic"]
    if node.get_closest_marker("aioquic_only") is None:
        xfail = node.get_closest_marker("native_xfail")
        marks = [pytest.mark.xfail(reason=xfail.args[0], strict=True)] if xfail is not None else []
        params.append(pytest.param("native", marks=marks))
    metafunc.parametrize("wt_engine", params, indirect=True)


@pytest.fixture
def wt_engine(request: pytest.FixtureRequest) -> Iterator[str]:
    """The WebTransport server engine of this run: what ``tests.support.servers.wt_server`` starts."""
    from tests.support.servers import wt_engine as default

    engine: str = request.param
    assert engine in WT_ENGINES
    before, default.current = default.current, engine
    try:
        yield engine
    finally:
        default.current = before


@pytest.fixture
async def no_leaks() -> AsyncIterator[None]:
    """Fails the test if it leaves tasks running on the loop."""
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not leaked, f"tasks left running: {leaked}"


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """A ``redis-server`` of this test's own (127.0.0.1, free port): stop, restart with or without its data."""
    from tests.support.redis_server import RedisProcess  # redis only for the tests that ask

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps)")
    with RedisProcess() as server:
        yield server


@pytest.fixture(scope="session")
def _redis_session() -> Iterator[RedisProcess]:
    from tests.support.redis_server import RedisProcess  # redis only for the tests that ask

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (make system-deps)")
    with RedisProcess(unix_socket=True) as server:
        yield server


@pytest.fixture
def redis_url(_redis_session: RedisProcess) -> str:
    """The URL of one ``redis-server`` shared by the session (a unix socket), emptied before each test; a test
    that restarts Redis takes ``redis_server`` instead."""
    if not _redis_session.running:
        _redis_session.start()  # a test stopped it
    with _redis_session.client() as client:
        client.flushall()
    return _redis_session.url


@pytest.fixture(scope="session")
def real_compare(tmp_path_factory: pytest.TempPathFactory) -> RealRun:
    """One real ``tokenwire loadtest --compare sse,webtransport --impair ... --json --report`` run against a
    ``tokenwire serve`` process, shared by the session's HTML report tests (a few seconds)."""
    from tests.support.compare_report import real_run

    return real_run(tmp_path_factory.mktemp("real-compare"))
