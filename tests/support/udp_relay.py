"""The UDP relay the WebTransport tests put between client and server: the library's, re-exported here so the
tests that import it from ``tests.support`` keep working (``tokenwire.loadtest.relays``)."""

from tokenwire.loadtest.relays import Address, DirectionStats, RelayStats, UdpRelay

__all__ = ["Address", "DirectionStats", "RelayStats", "UdpRelay"]
