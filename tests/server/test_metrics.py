"""Write accounting: a reader's WriteMeter, the accounting hook of its cursor."""

from __future__ import annotations

from tokenwire import Hub
from tokenwire.metrics import ServerMetrics, WriteMeter


def test_a_meter_times_the_first_write_from_the_request_then_between_writes() -> None:
    now = [10.0]
    metrics = ServerMetrics()
    meter = WriteMeter(metrics, lambda: now[0], last_write=9.0)
    hub = Hub()
    stream = hub.create_stream()
    cursor = stream.cursor(0)
    cursor.on_read = meter.observe
    meter.requested_at = 9.5
    stream.send("a")
    first = cursor.poll()[0]
    assert (metrics.ttft.count, metrics.ttft.sum, meter.requested_at) == (1, 0.5, 0.0)
    now[0] = 10.25
    cursor.poll()  # nothing new: nothing counted
    stream.send_many(["b", "c"])
    second = cursor.poll()[0]
    assert (metrics.inter_token.count, metrics.inter_token.sum, meter.last_write) == (1, 0.25, 10.25)
    assert (metrics.flushes_total, metrics.tokens_sent_total) == (2, 3)
    assert metrics.bytes_sent_total == len(first) + len(second)
    # A resume: the first write after its request feeds the resume histogram, not the time to first token.
    resume_meter = WriteMeter(metrics, lambda: 11.0)
    resume_meter.requested_at = 10.0
    again = stream.cursor(1)
    again.on_read = resume_meter.observe
    again.poll()
    assert (metrics.ttft.count, metrics.resume_latency.count, metrics.resume_latency.sum) == (1, 1, 1.0)
