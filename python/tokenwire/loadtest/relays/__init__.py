"""User-space network impairment: a UDP relay and a TCP relay on loopback, and both in a child process."""

from tokenwire.loadtest.relays.tcp import (
    MSS,
    Address,
    Direction,
    DirectionStats,
    RelayProcess,
    RelayProcessError,
    RelayStats,
    TcpRelay,
    TcpRelayStats,
    UdpRelay,
)

__all__ = [
    "MSS",
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
