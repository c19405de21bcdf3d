"""``tokenwire loadtest``: thousands of concurrent SSE clients, exactly-once checks, latency figures."""

from tokenwire.loadtest.runner import LoadTestConfig, run_loadtest

__all__ = ["LoadTestConfig", "run_loadtest"]
