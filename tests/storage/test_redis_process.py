"""The test support's real ``redis-server``: it answers on its URL, and a restart keeps or loses its data."""

from __future__ import annotations

import os

import pytest
import redis

from tests.support.redis_server import RedisProcess


@pytest.mark.parametrize("keep_data", [True, False], ids=["with-data", "empty"])
def test_restart_keeps_the_data_only_when_asked(redis_server: RedisProcess, keep_data: bool) -> None:
    with redis_server.client() as client:
        client.xadd("tw:s", {"t": "hello"}, id="1-0")
        client.set("tw:epoch", "e1")
    first_pid = redis_server.pid
    redis_server.restart(keep_data=keep_data)
    assert redis_server.pid not in (None, first_pid)
    with redis_server.client() as client:  # the same URL reaches the new process
        if keep_data:
            assert client.get("tw:epoch") == b"e1"
            assert client.xrange("tw:s") == [(b"1-0", {b"t": b"hello"})]
        else:
            assert client.dbsize() == 0


def test_unix_socket_stop_and_start_again() -> None:
    with RedisProcess(unix_socket=True) as server:
        assert server.url.startswith("unix:///") and server.url.endswith("redis.sock?db=0")
        with server.client() as client:
            client.set("k", "v")
        pid = server.pid
        assert pid is not None
        server.stop(save=True)
        assert not server.running
        with pytest.raises(redis.ConnectionError), server.client() as client:
            client.ping()
        server.start()
        with server.client() as client:
            assert client.get("k") == b"v"
    assert not server.directory.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped


@pytest.mark.parametrize("run", [1, 2])
def test_shared_redis_url_is_empty_for_each_test(redis_url: str, run: int) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next user of redis_url must not see it
