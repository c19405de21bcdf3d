"""The kernel floor of one-write-per-token SSE on this machine: CPU time of one small loopback TCP send.

1,000 connected loopback pairs with TCP_NODELAY; each round sends one ~70-byte SSE event on every connection
(and, in the first measurement, the peer reads it). On loopback the receive path runs in the sender's
context, so "send only" is what a server pays per token write, whatever it is written in.

    taskset -c 0 .venv/bin/python -m benches.syscall_floor
"""

from __future__ import annotations

import argparse
import resource
import socket

N, ROUNDS = 1000, 50
MSG = b"event: token\ndata:  hello\nid: Iq2pi76UhUgHqpO3RZi5qA:Irjf4eVk:123\n\n"


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options; --help says what it is
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2048)
    clients, servers = [], []
    for _ in range(N):
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        clients.append(c)
        servers.append(s)
    t = cpu()
    for _ in range(ROUNDS):
        for s in servers:
            s.send(MSG)
        for c in clients:
            c.recv(65536)
    print(f"send + peer recv: {(cpu() - t) / (ROUNDS * N) * 1e6:.2f} us CPU per message")
    t = cpu()
    for _ in range(ROUNDS):
        for s in servers:
            s.send(MSG)
    print(f"send only:        {(cpu() - t) / (ROUNDS * N) * 1e6:.2f} us CPU per message (incl. loopback receive)")
    for sock in (*clients, *servers, srv):
        sock.close()


if __name__ == "__main__":
    main()
