//! The native QUIC engine: [`engine::Engine`] (sans-I/O: quinn-proto + HTTP/3) driven over one UDP socket
//! ([`udp::UdpIo`]) by [`Driver`], in batches. An event loop watches [`Driver::fd`] and one timer at
//! [`Driver::next_timeout`]; each wake-up is one [`Driver::poll_io`] (drain the socket, run due timers,
//! advance every touched connection, send every packet) and each flush tick one [`Driver::flush`] (every
//! dirty stream's new frames straight from the [`Registry`] into QUIC streams, then one transmit).
//! Nothing blocks and nothing runs on another thread.

pub mod engine;
pub mod tls;
pub mod udp;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::error::{RegistryError, RingError};
use crate::registry::{Handle, Registry};
use crate::ring::Wire;

pub use engine::{Config, Engine, EngineError, Event};
use udp::UdpIo;

/// recvmmsg batches one wake-up drains at most (the socket stays readable, so the loop calls again).
const MAX_RECV_BATCHES: usize = 64;
/// A flush sends what its items wrote every this many items (at the next connection boundary), not only at
/// its end: the first connections' packets leave while later streams are still being written, so a big
/// flush (1,000 sessions in one engine step) does not hold every packet until its last write, and the peer
/// starts reading sooner.
const FLUSH_TRANSMIT_EVERY: usize = 64;

/// What [`Driver::flush`] did with one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FlushStatus {
    /// Every frame after `after` went out (or nothing was new).
    Ok = 0,
    /// The final frame went out and the stream is finished (FIN).
    Ended = 1,
    /// The stream could not take it all: the rest waits in the engine, `Writable` comes.
    Paused = 2,
    /// `after` is older than the oldest frame the ring holds.
    Expired = 3,
    /// No such registry handle, or `after` is beyond its last frame.
    Gone = 4,
    /// The connection or stream is closed.
    StreamClosed = 5,
}

/// One stream of a flush: the registry's frames of `handle` after `after`, behind `prefix`, into
/// `stream_id` of `conn`.
#[derive(Debug, Clone, Copy)]
pub struct FlushItem<'a> {
    pub conn: u64,
    pub stream_id: u64,
    pub handle: Handle,
    pub after: u64,
    pub prefix: &'a [u8],
}

/// Counters of a driver: the socket's and the engine's.
#[derive(Debug, Default, Clone, Copy)]
pub struct DriverStats {
    pub io: udp::IoStats,
    pub engine: engine::Stats,
    pub lost_packets: u64,
    pub connections: u64,
    pub wakeups: u64,
    /// Datagrams one GSO send carries at most (1: no GSO).
    pub gso_segments: u64,
    /// The socket's buffers as the kernel granted them (it caps a request at `net.core.rmem_max` /
    /// `wmem_max`).
    pub recv_buffer: u64,
    pub send_buffer: u64,
    /// Connections whose 0-RTT data the server accepted (server: took; client: saw taken) at the handshake.
    pub early_data_accepted: u64,
    /// Client: connections that sent 0-RTT data the server refused (sent again after the handshake).
    pub early_data_rejected: u64,
}

pub struct Driver {
    engine: Engine,
    io: UdpIo,
    wakeups: u64,
    scratch: Vec<u8>,
    /// Bytes every flush has written into streams (prefixes and frames), since the start.
    flushed_bytes: u64,
    /// Socket buffer size asked for (kept for `rebind`).
    socket_buffer: usize,
    early_data_accepted: u64,
    early_data_rejected: u64,
}

impl Driver {
    /// Binds `bind` (with `SO_REUSEPORT` if `reuse_port`: see [`UdpIo::bind`]) and sets up the engine; socket
    /// buffers of `udp::SOCKET_BUFFER` bytes.
    pub fn new(config: Config, bind: SocketAddr, reuse_port: bool) -> Result<Self, DriverError> {
        Self::with_socket_buffer(config, bind, reuse_port, udp::SOCKET_BUFFER)
    }

    /// As [`Self::new`], with socket buffers of `socket_buffer` bytes (0: the kernel's defaults).
    pub fn with_socket_buffer(
        config: Config,
        bind: SocketAddr,
        reuse_port: bool,
        socket_buffer: usize,
    ) -> Result<Self, DriverError> {
        let engine = Engine::new(config).map_err(DriverError::Engine)?;
        let io = UdpIo::bind(bind, reuse_port, socket_buffer).map_err(DriverError::Io)?;
        Ok(Self {
            engine,
            io,
            socket_buffer,
            wakeups: 0,
            flushed_bytes: 0,
            early_data_accepted: 0,
            early_data_rejected: 0,
            scratch: Vec::new(),
        })
    }

    pub fn engine(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.io.fd()
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    /// One wake-up: drain the socket, run due timers, advance every connection with news, send every
    /// packet; the events of all of it, in order.
    pub fn poll_io(&mut self) -> Vec<Event> {
        let now = Instant::now();
        self.wakeups += 1;
        let engine = &mut self.engine;
        for _ in 0..MAX_RECV_BATCHES {
            let received = self.io.recv_batch(|r, datagram| {
                let ecn = r.ecn.and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                engine.handle_datagram(now, r.from, r.dst_ip, ecn, datagram);
            });
            // Errors of an unconnected UDP socket are ICMP news about one peer: nothing to stop for.
            if !matches!(received, Ok(n) if n > 0) {
                break;
            }
        }
        self.engine.handle_timeouts(now);
        self.engine.process(now);
        self.transmit_at(now);
        let events = self.engine.take_events();
        self.count_early_data(&events);
        events
    }

    /// Counts 0-RTT at each completed handshake (the server's `Handshake`, the client's `Connected`).
    fn count_early_data(&mut self, events: &[Event]) {
        let server = self.engine.is_server();
        for event in events {
            let id = match event {
                Event::Handshake { conn } => *conn,
                Event::Connected { conn, .. } if !server => *conn,
                _ => continue,
            };
            match self.engine.early_data(id) {
                Ok((_, true)) => self.early_data_accepted += 1,
                Ok((true, false)) => self.early_data_rejected += 1,
                _ => {}
            }
        }
    }

    /// Moves to a new UDP socket bound to `bind` (a client's migration: a new local port); every connection
    /// follows, and its PING goes out at once. The old socket is closed: its file descriptor is no longer
    /// [`Self::fd`].
    pub fn rebind(&mut self, bind: SocketAddr) -> io::Result<()> {
        let mut io = UdpIo::bind(bind, false, self.socket_buffer)?;
        io.stats = self.io.stats;
        self.io = io;
        self.engine.local_address_changed();
        self.transmit();
        Ok(())
    }

    /// Sends every pending packet (after a group of `send_*` calls).
    pub fn transmit(&mut self) {
        self.transmit_at(Instant::now());
    }

    fn transmit_at(&mut self, now: Instant) {
        let segments = self.io.max_gso_segments();
        let io = &mut self.io;
        self.engine.transmit(now, segments, &mut |t, bytes| io.send(t, bytes));
    }

    /// Time until the engine's next deadline (zero if it is past); `None`: nothing pending.
    pub fn next_timeout(&self) -> Option<Duration> {
        self.engine
            .next_timeout()
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Writes every item's new frames from `registry` into its stream and sends them (every
    /// `FLUSH_TRANSMIT_EVERY` items, and at the end). `out` gets, per item, the new `after` and a status.
    pub fn flush(&mut self, registry: &Registry, items: &[FlushItem<'_>], out: &mut Vec<(u64, FlushStatus)>) {
        let mut since_transmit = 0;
        for (i, item) in items.iter().enumerate() {
            if since_transmit >= FLUSH_TRANSMIT_EVERY && items[i - 1].conn != item.conn {
                self.transmit();
                since_transmit = 0;
            }
            out.push(self.flush_one(registry, item));
            since_transmit += 1;
        }
        self.transmit();
    }

    fn flush_one(&mut self, registry: &Registry, item: &FlushItem<'_>) -> (u64, FlushStatus) {
        let after = item.after;
        match self.engine.flush_ready(item.conn, item.stream_id) {
            Ok(true) => {}
            Ok(false) => return (after, FlushStatus::Paused),
            Err(_) => return (after, FlushStatus::StreamClosed),
        }
        self.scratch.clear();
        let (last, ended) = match registry.poll(item.handle, after, Wire::Binary, &mut self.scratch) {
            Ok((last, _)) if last < after => return (after, FlushStatus::Gone),
            Ok(polled) => polled,
            Err(RegistryError::Ring(RingError::Expired { .. })) => return (after, FlushStatus::Expired),
            Err(_) => return (after, FlushStatus::Gone),
        };
        if self.scratch.is_empty() && item.prefix.is_empty() && !ended {
            return (after, FlushStatus::Ok);
        }
        let written = self
            .engine
            .write_flush(item.conn, item.stream_id, item.prefix, &self.scratch, ended);
        if written.is_ok() {
            self.flushed_bytes += (item.prefix.len() + self.scratch.len()) as u64;
        }
        match written {
            // With FIN queued the engine owns the rest: it goes out as credit comes, then the FIN.
            Ok(_) if ended => (last, FlushStatus::Ended),
            Ok(true) => (last, FlushStatus::Ok),
            Ok(false) => (last, FlushStatus::Paused),
            Err(_) => (after, FlushStatus::StreamClosed),
        }
    }

    /// Bytes every flush has written into streams (prefixes and frames), since the start.
    pub fn flushed_bytes(&self) -> u64 {
        self.flushed_bytes
    }

    pub fn stats(&self) -> DriverStats {
        let (recv_buffer, send_buffer) = self.io.buffer_sizes();
        DriverStats {
            io: self.io.stats,
            engine: self.engine.stats,
            lost_packets: self.engine.lost_packets(),
            connections: self.engine.connection_count() as u64,
            wakeups: self.wakeups,
            gso_segments: self.io.max_gso_segments() as u64,
            recv_buffer: recv_buffer as u64,
            send_buffer: send_buffer as u64,
            early_data_accepted: self.early_data_accepted,
            early_data_rejected: self.early_data_rejected,
        }
    }
}

/// Why a driver could not start.
#[derive(Debug)]
pub enum DriverError {
    Engine(EngineError),
    Io(io::Error),
}

impl std::fmt::Display for DriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Engine(e) => e.fmt(f),
            Self::Io(e) => write!(f, "UDP socket: {e}"),
        }
    }
}

impl std::error::Error for DriverError {}
