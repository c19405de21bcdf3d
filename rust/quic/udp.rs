//! Batched UDP I/O with quinn-udp: `recvmmsg` (and GRO) in, `sendmsg` with GSO out. The socket is a std
//! `UdpSocket` (made with socket2, for `SO_REUSEPORT`), non-blocking; its file descriptor is what the event loop
//! watches.

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use quinn_udp::{RecvMeta, UdpSocketState, BATCH_SIZE};
use socket2::{Domain, Protocol, Socket, Type};

/// Bytes of one received datagram at most (a QUIC datagram is at most 65 527 bytes).
const MAX_DATAGRAM: usize = 65_535;

/// Bytes of one GSO send at most (the UDP length field), and the largest segment (quinn's MTU discovery
/// stops at 1452 by default; 1500 leaves room).
const MAX_GSO_BYTES: usize = 65_000;
const MAX_SEGMENT: usize = 1500;

/// Socket buffers asked for; the kernel may grant less (`net.core.rmem_max` / `wmem_max`).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Counters of the socket's traffic.
#[derive(Debug, Default, Clone, Copy)]
pub struct IoStats {
    pub packets_in: u64,
    pub bytes_in: u64,
    pub packets_out: u64,
    pub bytes_out: u64,
    pub recv_calls: u64,
    pub send_calls: u64,
    /// Packets not sent because the socket's send buffer was full (QUIC recovers them as losses).
    pub send_dropped: u64,
    /// Packets the kernel refused otherwise (an unreachable peer, a size it does not take).
    pub send_errors: u64,
}

/// One received datagram: where from, the local address it was sent to, its ECN bits.
#[derive(Debug, Clone, Copy)]
pub struct Received {
    pub from: SocketAddr,
    pub dst_ip: Option<std::net::IpAddr>,
    pub ecn: Option<quinn_udp::EcnCodepoint>,
}

pub struct UdpIo {
    socket: UdpSocket,
    state: UdpSocketState,
    /// `BATCH_SIZE` receive slots of `slot` bytes each, one allocation.
    buf: Vec<u8>,
    slot: usize,
    meta: Vec<RecvMeta>,
    /// Bound to a wildcard address: each packet names its source (the address its peer sent to, for a host with
    /// several). Bound to one address, the kernel uses that one anyway, so packets go without the cmsg (and the
    /// kernel's look-up of it).
    wildcard: bool,
    pub stats: IoStats,
}

impl UdpIo {
    /// Binds `addr` (port 0: any free port), non-blocking. `reuse_port`: with `SO_REUSEPORT`, so that other
    /// processes' sockets bound the same way share the port (the kernel spreads datagrams over them by their
    /// 4-tuple). `buffer`: the receive and send buffer sizes asked of the kernel (0: its defaults).
    pub fn bind(addr: SocketAddr, reuse_port: bool, buffer: usize) -> io::Result<Self> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if reuse_port {
            socket.set_reuse_port(true)?;
        }
        socket.bind(&addr.into())?;
        socket.set_nonblocking(true)?;
        let socket = UdpSocket::from(socket);
        let state = UdpSocketState::new((&socket).into())?;
        // Best effort: a kernel that caps the size keeps its own maximum.
        if buffer > 0 {
            let _ = state.set_recv_buffer_size((&socket).into(), buffer);
            let _ = state.set_send_buffer_size((&socket).into(), buffer);
        }
        // A slot takes one datagram, or one GRO train of up to 64 KiB.
        let slot = MAX_DATAGRAM;
        let wildcard = socket.local_addr()?.ip().is_unspecified();
        Ok(Self {
            wildcard,
            socket,
            state,
            buf: vec![0; slot * BATCH_SIZE],
            slot,
            meta: vec![RecvMeta::default(); BATCH_SIZE],
            stats: IoStats::default(),
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// The socket's receive and send buffer sizes as the kernel granted them (0 if it does not say).
    pub fn buffer_sizes(&self) -> (usize, usize) {
        let recv = self.state.recv_buffer_size((&self.socket).into()).unwrap_or(0);
        let send = self.state.send_buffer_size((&self.socket).into()).unwrap_or(0);
        (recv, send)
    }

    /// Datagrams one GSO send may carry (1 where the kernel has no GSO): the kernel's 64, but no more than
    /// fit in one UDP datagram's 64 KiB at the largest segment quinn uses (a longer train fails `EMSGSIZE`).
    pub fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments().clamp(1, MAX_GSO_BYTES / MAX_SEGMENT)
    }

    /// Receives one batch (one `recvmmsg`) and calls `f` for every datagram in it (GRO buffers are split at
    /// their stride). Returns the datagrams received; 0 when the socket had nothing (would block).
    pub fn recv_batch(&mut self, mut f: impl FnMut(Received, &[u8])) -> io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = self.buf.chunks_mut(self.slot).map(IoSliceMut::new).collect();
        self.stats.recv_calls += 1;
        let n = match self.state.recv((&self.socket).into(), &mut slices, &mut self.meta) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut datagrams = 0;
        for (meta, slice) in self.meta.iter().zip(slices.iter()).take(n) {
            let received = Received {
                from: meta.addr,
                dst_ip: meta.dst_ip,
                ecn: meta.ecn,
            };
            let stride = if meta.stride == 0 { meta.len } else { meta.stride };
            for datagram in slice[..meta.len].chunks(stride.max(1)) {
                datagrams += 1;
                self.stats.packets_in += 1;
                self.stats.bytes_in += datagram.len() as u64;
                f(received, datagram);
            }
        }
        Ok(datagrams)
    }

    /// Sends one transmit (one datagram, or several of `segment_size` bytes each through GSO). A full send
    /// buffer drops it, and so does any other error (an unreachable peer): counted apart; QUIC retransmits,
    /// and a dead path ends in an idle timeout.
    pub fn send(&mut self, transmit: &quinn_proto::Transmit, contents: &[u8]) {
        let segments = transmit.segment_size.map_or(1, |s| contents.len().div_ceil(s.max(1))) as u64;
        let udp = quinn_udp::Transmit {
            destination: transmit.destination,
            ecn: transmit.ecn.and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents,
            segment_size: transmit.segment_size,
            src_ip: if self.wildcard { transmit.src_ip } else { None },
        };
        self.stats.send_calls += 1;
        match self.state.try_send((&self.socket).into(), &udp) {
            Ok(()) => {
                self.stats.packets_out += segments;
                self.stats.bytes_out += contents.len() as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.send_dropped += segments,
            Err(_) => self.stats.send_errors += segments,
        }
    }
}
