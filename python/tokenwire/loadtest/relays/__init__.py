"""User-space network impairment: a UDP relay and a TCP relay on loopback, and both in a child process.

This kernel has no ``netem`` qdisc, so a load test (``tokenwire loadtest --impair``) or a test that needs a bad
network puts a relay between client and server: :class:`UdpRelay` in front of a QUIC / WebTransport server,
:class:`TcpRelay` in front of an HTTP (SSE) server, :class:`RelayProcess` runs both in a child process of their
own with one :class:`~tokenwire.loadtest.impair.Impairment`. How each knob maps onto each protocol, and what it
does not model: ``docs/impairment.md``.

One module a concern: ``udp`` (:class:`UdpRelay`, its counters), ``tcp`` (:class:`TcpRelay`, its counters),
``process`` (:class:`RelayProcess` and the child's main), ``_base`` (what both relays share: one heap of timed
entries behind one timer handle, the lifecycle, the rebind timer, the seeded generators, the ``rate`` link).
Import the names from here: ``from tokenwire.loadtest.relays import TcpRelay``.
"""

from tokenwire.loadtest.relays._base import Address, Direction
from tokenwire.loadtest.relays.process import RelayProcess, RelayProcessError
from tokenwire.loadtest.relays.tcp import MSS, SYN_RTO, TcpRelay, TcpRelayStats
from tokenwire.loadtest.relays.udp import DirectionStats, RelayStats, UdpRelay

__all__ = [
    "MSS",
    "SYN_RTO",
    "Address",
    "Direction",
    "DirectionStats",
    "RelayProcess",
    "RelayProcessError",
    "RelayStats",
    "TcpRelay",
    "TcpRelayStats",
    "UdpRelay",
]
