//! The QUIC engine, sans-I/O: a quinn-proto endpoint and its connections, one [`H3Conn`] per connection.
//!
//! Datagrams and the time go in ([`Engine::handle_datagram`], [`Engine::handle_timeouts`]); events come out
//! ([`Engine::process`] fills [`Engine::take_events`]) and so do packets ([`Engine::transmit`] hands each
//! to a sender). Connections are named by ids this engine gives (never reused); streams by their QUIC ids.
//!
//! Sending: a request stream (a CONNECT and its response) carries HTTP/3 frames (HEADERS, DATA); a
//! WebTransport stream carries raw bytes after its 0x41 header. What QUIC does not take at once (the peer's
//! flow control, or this end's send window: the bytes it may leave unacknowledged, see
//! [`Config::stream_send_window`]) waits in the stream's pending buffer (bounded by one call's bytes) and goes
//! out as credit or acknowledgements come; the writer hears `Writable` then.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    AckFrequencyConfig, ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Dir, EcnCodepoint, Endpoint,
    EndpointConfig, Event as QuicEvent, HashedConnectionIdGenerator, IdleTimeout, ReadError, SendDatagramError,
    ServerConfig, StreamEvent, StreamId, TransportConfig, VarInt, WriteError,
};
// Every map here is keyed by small integers this process or quinn hands out (connection ids and handles) or by
// stream ids within the peer's stream limit: FxHash, not SipHash (a flush and a wake-up look them up per stream
// and per datagram).
use rustc_hash::{FxHashMap, FxHashSet};

use crate::h3::{self, H3Conn, H3Error, H3Event, Role};

/// Every error of a call on the engine: the caller's (unknown connection, closed stream, bad argument).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineError {
    /// No such connection (never was, or it is gone).
    NoConnection(u64),
    /// The stream cannot take this (never opened, finished, reset or stopped).
    StreamClosed(u64),
    /// The peer's stream limit is reached: no new stream now.
    StreamsExhausted,
    /// A value out of range (a code or id above 2^62, a bad address).
    Invalid(String),
    /// A client call on a server engine or the other way round.
    WrongSide(&'static str),
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoConnection(c) => write!(f, "no connection {c} (never opened, or closed)"),
            Self::StreamClosed(s) => write!(f, "stream {s} is closed for sending"),
            Self::StreamsExhausted => f.write_str("the peer's stream limit is reached"),
            Self::Invalid(m) => f.write_str(m),
            Self::WrongSide(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for EngineError {}

/// What the engine reports, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Server: a new connection (handshake under way). Client: the handshake completed.
    Connected {
        conn: u64,
        peer: SocketAddr,
    },
    /// Server: the handshake completed.
    Handshake {
        conn: u64,
    },
    Settings {
        conn: u64,
        settings: Vec<(u64, u64)>,
    },
    Headers {
        conn: u64,
        stream_id: u64,
        headers: h3::HeaderList,
        fin: bool,
    },
    Data {
        conn: u64,
        stream_id: u64,
        data: Vec<u8>,
        fin: bool,
    },
    WtStream {
        conn: u64,
        stream_id: u64,
        session_id: u64,
        data: Vec<u8>,
        fin: bool,
    },
    Datagram {
        conn: u64,
        session_id: u64,
        payload: Vec<u8>,
    },
    GoAway {
        conn: u64,
        id: u64,
    },
    /// The peer reset a stream it was sending on (`RESET_STREAM`).
    Reset {
        conn: u64,
        stream_id: u64,
        code: u64,
    },
    /// The peer asked this end to stop sending on a stream (`STOP_SENDING`).
    StopSending {
        conn: u64,
        stream_id: u64,
        code: u64,
    },
    /// A stream that was blocked (a short write or a PAUSED flush) can take more.
    Writable {
        conn: u64,
        stream_id: u64,
    },
    /// The connection is gone: the last event of it.
    Closed {
        conn: u64,
        code: u64,
        reason: String,
    },
}

/// How the engine's connections are set up.
#[derive(Clone)]
pub struct Config {
    /// Server mode (accepts connections) with this TLS; `None`: client mode.
    pub server: Option<Arc<quinn_proto::crypto::rustls::QuicServerConfig>>,
    /// Client mode's TLS.
    pub client: Option<Arc<quinn_proto::crypto::rustls::QuicClientConfig>>,
    /// Every HTTP/3 setting this end announces.
    pub h3_settings: Vec<(u64, u64)>,
    pub idle_timeout: Duration,
    pub keepalive: Option<Duration>,
    /// Ask a peer that supports the ACK frequency extension (quinn does; aioquic and browsers do not say so)
    /// to acknowledge only every `threshold + 1` ack-eliciting packets or after `max_delay`: fewer ACK
    /// packets to read, slower loss detection. quinn caps the delay at the round trip (at least 25 ms).
    /// `None`: the peer's own defaults.
    pub ack_frequency: Option<(u32, Duration)>,
    pub max_bidi_streams: u64,
    pub stream_window: u64,
    pub conn_window: u64,
    /// Bytes each WebTransport stream this end sends on may leave unacknowledged (unsent or in flight), pooled
    /// per connection: its send window is this times its open WebTransport send streams (at least one), so a
    /// peer that stops acknowledging blocks the writes (`Writable` once ACKs free room). `None`: the send
    /// window is `conn_window`.
    pub stream_send_window: Option<u64>,
    /// Datagrams a connection keeps waiting to be sent (a full congestion window, a dead path), counted: at most
    /// this many sit in quinn's queue, the rest wait in the engine, and [`Engine::trim_datagrams`] drops the
    /// oldest beyond it. `None`: quinn's own queue, bounded only in bytes (it drops the oldest silently).
    pub max_pending_datagrams: Option<usize>,
    /// A secret the servers of one deployment share: their stateless reset tokens and connection-id checks
    /// agree, so a server that gets a packet of a connection another one holds answers with a stateless reset
    /// the client accepts, and the client reconnects at once instead of at its idle timeout. Only for servers
    /// that packets reach by connection id (RFC 9000 §21.11: where an attacker can steer a packet with a live
    /// connection's id to another instance, a shared key hands out that connection's reset token).
    /// `None`: a random secret of this engine's own.
    pub endpoint_key: Option<Vec<u8>>,
}

/// Unidirectional streams a peer may open (control, QPACK encoder and decoder, a few WebTransport ones).
const MAX_UNI_STREAMS: u32 = 100;
/// `Conn::reset_sends` is pruned of the streams quinn has let go of once it holds this many.
const RESET_SENDS_PRUNE: usize = 256;
/// A stream's pending buffer keeps its allocation up to this size once drained.
const PENDING_KEEP: usize = 16 * 1024;
/// Bytes of received datagrams buffered before quinn drops the oldest.
const DATAGRAM_BUFFER: usize = 1 << 20;

/// The round trip assumed before the first sample (quinn's default is RFC 9002's 333 ms). It sets how soon a
/// lost first flight is sent again: the PTO is about three of these, doubling each time. A server whose first
/// flight was lost waits for its own PTO (a client's repeated Initial only gets an ACK), so at 333 ms a handshake
/// that lost two flights takes 1 + 2 + 4 s; 100 ms, as aioquic and Chromium assume, makes that 0.3 + 0.6 + 1.2 s.
const INITIAL_RTT: Duration = Duration::from_millis(100);

/// The endpoint's reset key and connection-id generator: from `key` (see `Config::endpoint_key`) or random.
fn endpoint_config(key: Option<&[u8]>) -> EndpointConfig {
    let Some(key) = key else {
        return EndpointConfig::default();
    };
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    // The connection-id generator's own key, derived apart from the reset key (one secret, two uses).
    let tag = ring::hmac::sign(&reset, b"tokenwire connection ids");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config = EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

/// Frames a connection has read that a client's handshake packet carries (a sign its packet decrypted).
fn frames_read(quic: &quinn_proto::Connection) -> u64 {
    let rx = quic.stats().frame_rx;
    rx.crypto + rx.acks + rx.ping + rx.stream + rx.connection_close
}

fn varint(v: u64) -> Result<VarInt, EngineError> {
    VarInt::from_u64(v).map_err(|_| EngineError::Invalid(format!("{v} is above 2^62-1")))
}

fn transport(config: &Config) -> Result<Arc<TransportConfig>, EngineError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(varint(config.max_bidi_streams)?)
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .stream_receive_window(varint(config.stream_window)?)
        .receive_window(varint(config.conn_window)?)
        .send_window(config.stream_send_window.unwrap_or(config.conn_window))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(config.idle_timeout)
                .map_err(|_| EngineError::Invalid("idle_timeout is out of range".into()))?,
        ))
        .keep_alive_interval(config.keepalive)
        .initial_rtt(INITIAL_RTT)
        .ack_frequency_config(config.ack_frequency.map(|(threshold, max_delay)| {
            let mut ack = AckFrequencyConfig::default();
            ack.ack_eliciting_threshold(VarInt::from_u32(threshold))
                .max_ack_delay(Some(max_delay));
            ack
        }))
        .datagram_receive_buffer_size(Some(DATAGRAM_BUFFER))
        .datagram_send_buffer_size(DATAGRAM_BUFFER);
    Ok(Arc::new(t))
}

/// A stream's send side as this engine sees it.
// Four independent facts of one stream's send side.
#[allow(clippy::struct_excessive_bools)]
#[derive(Debug, Default)]
struct SendState {
    /// Raw bytes (a WebTransport stream) rather than HTTP/3 frames (a request stream).
    wt: bool,
    /// Bytes accepted from the caller that QUIC has not taken yet.
    pending: Vec<u8>,
    pending_off: usize,
    /// FIN once `pending` is out.
    fin: bool,
    /// A caller was told to wait: report `Writable` once `pending` is out.
    blocked: bool,
    /// Finished, reset or stopped: nothing more goes out.
    closed: bool,
}

impl SendState {
    fn has_pending(&self) -> bool {
        self.pending_off < self.pending.len()
    }
}

/// The datagrams a connection sends when the engine bounds their number ([`Config::max_pending_datagrams`]).
/// quinn's queue is bounded only in bytes and gives nothing back, so the engine hands it datagrams only while it
/// has none left (it sent them all: the path takes them), at most the limit at a time, and the rest wait here,
/// where [`Engine::trim_datagrams`] drops the oldest. So what a dead path strands in quinn's queue is one such
/// hand-over (the previews of the flush that met the full congestion window), and the newest wait here. quinn
/// tells only the bytes its queue holds (`send_buffer_space`); it sends datagrams in order, so the lengths of
/// those handed over tell how many are still there.
#[derive(Debug, Default)]
struct DatagramQueue {
    waiting: VecDeque<Bytes>,
    /// Lengths of the datagrams handed to quinn and maybe not sent yet, oldest first, and the memory quinn counts
    /// for them (each length plus `overhead`).
    in_quinn: VecDeque<usize>,
    in_quinn_memory: usize,
    /// quinn's `send_buffer_space()` with its queue empty, and what it counts per datagram besides the bytes.
    space_empty: usize,
    overhead: usize,
    /// On the engine's backlog list (`waiting` was not empty).
    in_backlog: bool,
}

impl DatagramQueue {
    fn new(quic: &mut quinn_proto::Connection) -> Self {
        let space_empty = quic.datagrams().send_buffer_space();
        Self {
            space_empty,
            overhead: DATAGRAM_BUFFER.saturating_sub(space_empty),
            ..Self::default()
        }
    }

    /// Forgets the datagrams quinn has sent since.
    fn sync(&mut self, quic: &mut quinn_proto::Connection) {
        let queued = self.space_empty.saturating_sub(quic.datagrams().send_buffer_space());
        while self.in_quinn_memory > queued {
            let Some(len) = self.in_quinn.pop_front() else {
                self.in_quinn_memory = 0;
                break;
            };
            self.in_quinn_memory -= len + self.overhead;
        }
    }

    /// Hands up to `limit` waiting datagrams to quinn if it has sent all it had. Returns how many went, and how
    /// many quinn refused (the path's datagram size shrank meanwhile).
    fn feed(&mut self, quic: &mut quinn_proto::Connection, limit: usize) -> (usize, u64) {
        if self.waiting.is_empty() {
            return (0, 0);
        }
        self.sync(quic);
        if !self.in_quinn.is_empty() {
            return (0, 0); // the path takes none now: they would only go stale in quinn's queue
        }
        let (mut fed, mut refused) = (0, 0);
        while self.in_quinn.len() < limit {
            let Some(datagram) = self.waiting.pop_front() else {
                break;
            };
            let len = datagram.len();
            match quic.datagrams().send(datagram, false) {
                Ok(()) => {
                    self.in_quinn.push_back(len);
                    self.in_quinn_memory += len + self.overhead;
                    fed += 1;
                }
                Err(SendDatagramError::Blocked(datagram)) => {
                    self.waiting.push_front(datagram);
                    break;
                }
                Err(_) => refused += 1,
            }
        }
        (fed, refused)
    }

    /// Drops the oldest waiting datagrams so that at most `limit` are pending in all (quinn's count first: it
    /// cannot give any back); returns how many.
    fn trim(&mut self, quic: &mut quinn_proto::Connection, limit: usize) -> u64 {
        self.sync(quic);
        let keep = limit.saturating_sub(self.in_quinn.len());
        let excess = self.waiting.len().saturating_sub(keep);
        self.waiting.drain(..excess);
        excess as u64
    }

    /// Datagrams not sent yet: waiting here or in quinn's queue.
    fn pending(&mut self, quic: &mut quinn_proto::Connection) -> usize {
        self.sync(quic);
        self.waiting.len() + self.in_quinn.len()
    }
}

/// A bidirectional stream: a request, a CONNECT or a WebTransport stream (not a control or QPACK one).
fn is_bidi(sid: u64) -> bool {
    sid & 0b10 == 0
}

/// quinn still holds the send side of `sid` (open, or finished or reset but not yet acknowledged).
fn quinn_sends(quic: &mut quinn_proto::Connection, sid: u64) -> bool {
    VarInt::from_u64(sid).is_ok_and(|v| quic.send_stream(StreamId::from(v)).priority().is_ok())
}

impl Conn {
    /// `sid` carries raw bytes (a WebTransport stream, or this end's control and QPACK streams): its send state,
    /// made if need be. A new bidirectional one widens the connection's send window.
    fn wt_send(&mut self, sid: u64) -> &mut SendState {
        let send = self.sends.entry(sid).or_default();
        if !send.wt {
            send.wt = true;
            if is_bidi(sid) {
                self.wt_streams += 1;
                self.resize_send_window();
            }
        }
        self.sends.entry(sid).or_default()
    }

    /// This end is done sending on `sid` (all of it acknowledged, stopped or reset): its send state goes, and a
    /// WebTransport stream's share of the send window with it.
    fn forget_send(&mut self, sid: u64) {
        if self.sends.remove(&sid).is_some_and(|s| s.wt) && is_bidi(sid) {
            self.wt_streams -= 1;
            self.resize_send_window();
        }
    }

    /// Resets this end's send half of `sid` with `code` (its bytes leave the send window at once) and keeps it
    /// from being written or counted again while quinn still holds it.
    fn reset_send(&mut self, sid: u64, code: VarInt) {
        self.forget_send(sid);
        if let Ok(var) = VarInt::from_u64(sid) {
            let _ = self.quic.send_stream(StreamId::from(var)).reset(code);
        }
        if self.reset_sends.len() >= RESET_SENDS_PRUNE {
            // Bounded by the streams quinn still holds: drop those it has let go of.
            let quic = &mut self.quic;
            self.reset_sends.retain(|&s| quinn_sends(quic, s));
        }
        self.reset_sends.insert(sid);
    }

    /// This end may (still) send on `sid` as far as quinn knows, and has not reset it.
    fn send_live(&mut self, sid: u64) -> bool {
        !self.reset_sends.contains(&sid) && quinn_sends(&mut self.quic, sid)
    }

    /// Where a packet quinn addresses to `to` goes: the new address of a handshake's NAT rebinding
    /// (`rebound`), or `to`.
    fn destination(&self, to: SocketAddr) -> SocketAddr {
        match self.rebound {
            Some((known, new)) if known == to => new,
            _ => to,
        }
    }

    /// Hands quinn one datagram's event; whether it read frames from it (it decrypted, and was no duplicate).
    fn read_datagram(&mut self, event: quinn_proto::ConnectionEvent) -> bool {
        let before = frames_read(&self.quic);
        self.quic.handle_event(event);
        frames_read(&self.quic) != before
    }

    /// The send window (`Config::stream_send_window`): one share per open WebTransport send stream, at least one.
    /// A wider window lets the streams quinn blocked write again (`Writable` at its next poll).
    fn resize_send_window(&mut self) {
        let Some(per_stream) = self.stream_send_window else {
            return;
        };
        let window = per_stream.saturating_mul(self.wt_streams.max(1));
        if window != self.send_window {
            self.send_window = window;
            self.quic.set_send_window(window);
        }
    }
}

struct Conn {
    handle: ConnectionHandle,
    quic: quinn_proto::Connection,
    h3: H3Conn,
    /// How many of this end's three unidirectional streams (control, QPACK encoder, QPACK decoder) are open.
    uni_opened: u8,
    sends: FxHashMap<u64, SendState>,
    /// Send halves this end reset (its own reset, or the answer to the peer's `STOP_SENDING`) that quinn may still
    /// hold until the reset is acknowledged: nothing is written on them again and they are not counted again.
    reset_sends: FxHashSet<u64>,
    /// Bidirectional WebTransport streams in `sends` (the data streams that size the send window).
    wt_streams: u64,
    /// `Config::stream_send_window`, and the send window last given to quinn.
    stream_send_window: Option<u64>,
    send_window: u64,
    datagrams: DatagramQueue,
    /// The `Closed` event went out.
    closed_reported: bool,
    /// On the engine's dirty list.
    dirty: bool,
    /// The deadline last put on the timer heap.
    timer: Option<Instant>,
    /// Server: the client's address changed before the handshake completed (a NAT rebinding, `(known, new)`).
    /// quinn drops such packets until the handshake is over, and the client never sends from `known` again,
    /// so the handshake would stall; the engine hands them to quinn as from `known` and sends quinn's packets
    /// for `known` to `new`, until quinn's own path leaves `known` (once established, quinn migrates itself),
    /// or a packet from `known` decrypts again (the client is still there: `new` may have been an observer
    /// racing in a copy of the client's Initial, which anyone on the path can read and send).
    rebound: Option<(SocketAddr, SocketAddr)>,
}

/// Counters over the engine's life.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub connections_accepted: u64,
    pub connections_refused: u64,
    pub lost_packets_closed: u64,
    /// Datagrams dropped unsent: the oldest beyond `max_pending_datagrams`, or refused by quinn once queued.
    pub datagrams_dropped: u64,
}

pub struct Engine {
    endpoint: Endpoint,
    config: Config,
    client_config: Option<ClientConfig>,
    conns: FxHashMap<u64, Conn>,
    by_handle: FxHashMap<ConnectionHandle, u64>,
    next_id: u64,
    /// Every connection's deadline, earliest first (one entry per connection: `Conn::timer`).
    timers: BTreeSet<(Instant, u64)>,
    dirty: Vec<u64>,
    events: Vec<Event>,
    /// Packets of the endpoint itself (version negotiation, stateless resets, refusals), with their bytes.
    responses: Vec<(quinn_proto::Transmit, Vec<u8>)>,
    h3_events: Vec<H3Event>,
    buf: Vec<u8>,
    /// Connections with datagrams waiting in the engine (`DatagramQueue::in_backlog`).
    datagram_backlog: Vec<u64>,
    /// Datagrams dropped since the last [`Engine::trim_datagrams`].
    datagrams_dropped_unreported: u64,
    pub stats: Stats,
}

impl Engine {
    pub fn new(config: Config) -> Result<Self, EngineError> {
        let transport = transport(&config)?;
        let server = match &config.server {
            Some(tls) => {
                let mut server = ServerConfig::with_crypto(tls.clone());
                server.transport_config(transport.clone());
                Some(Arc::new(server))
            }
            None => None,
        };
        let client_config = match &config.client {
            Some(tls) if server.is_none() => {
                let mut client = ClientConfig::new(tls.clone());
                client.transport_config(transport);
                Some(client)
            }
            Some(_) => {
                return Err(EngineError::Invalid(
                    "an engine is a server or a client, not both".into(),
                ))
            }
            None if server.is_none() => {
                return Err(EngineError::Invalid("a client engine needs a client TLS config".into()))
            }
            None => None,
        };
        Ok(Self {
            endpoint: Endpoint::new(
                Arc::new(endpoint_config(config.endpoint_key.as_deref())),
                server,
                true,
                None,
            ),
            config,
            client_config,
            conns: FxHashMap::default(),
            by_handle: FxHashMap::default(),
            next_id: 1,
            timers: BTreeSet::new(),
            dirty: Vec::new(),
            events: Vec::new(),
            responses: Vec::new(),
            h3_events: Vec::new(),
            buf: Vec::new(),
            datagram_backlog: Vec::new(),
            datagrams_dropped_unreported: 0,
            stats: Stats::default(),
        })
    }

    pub fn is_server(&self) -> bool {
        self.config.server.is_some()
    }

    /// The address a connection sends to now (its active path: after a migration, the new one).
    pub fn peer_address(&self, id: u64) -> Result<SocketAddr, EngineError> {
        let conn = self.live(id)?;
        Ok(conn.destination(conn.quic.remote_address()))
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Packets lost on the live connections plus those of the closed ones.
    pub fn lost_packets(&self) -> u64 {
        self.stats.lost_packets_closed
            + self
                .conns
                .values()
                .map(|c| c.quic.stats().path.lost_packets)
                .sum::<u64>()
    }

    /// The events since the last call.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Appends the events since the last call to `out`.
    pub fn drain_events_into(&mut self, out: &mut Vec<Event>) {
        out.append(&mut self.events);
    }

    fn mark_dirty(dirty: &mut Vec<u64>, conn: &mut Conn, id: u64) {
        if !conn.dirty {
            conn.dirty = true;
            dirty.push(id);
        }
    }

    fn new_conn(&mut self, handle: ConnectionHandle, mut quic: quinn_proto::Connection, role: Role) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let datagrams = DatagramQueue::new(&mut quic);
        let mut conn = Conn {
            handle,
            quic,
            h3: H3Conn::new(role, &self.config.h3_settings),
            uni_opened: 0,
            sends: FxHashMap::default(),
            reset_sends: FxHashSet::default(),
            wt_streams: 0,
            stream_send_window: self.config.stream_send_window,
            send_window: self.config.stream_send_window.unwrap_or(self.config.conn_window),
            datagrams,
            closed_reported: false,
            dirty: false,
            timer: None,
            rebound: None,
        };
        Self::mark_dirty(&mut self.dirty, &mut conn, id);
        self.conns.insert(id, conn);
        self.by_handle.insert(handle, id);
        id
    }

    /// One received UDP datagram.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        data: &[u8],
    ) {
        self.buf.clear();
        let event = self
            .endpoint
            .handle(now, from, local_ip, ecn, BytesMut::from(data), &mut self.buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                let Some(conn) = self.by_handle.get(&handle).and_then(|id| self.conns.get_mut(id)) else {
                    return;
                };
                let known = conn.quic.remote_address();
                if from == known && conn.rebound.is_some() {
                    // The client is (still) at `known`: a decrypted packet from there ends the alias (it may
                    // have come from a copy raced in from another address).
                    if conn.read_datagram(event) {
                        conn.rebound = None;
                    }
                } else if from == known || !conn.quic.is_handshaking() || conn.quic.side().is_client() {
                    conn.quic.handle_event(event);
                } else {
                    // A NAT rebinding during the handshake (see `Conn::rebound`): the same datagram again, as
                    // from the address quinn knows. Only a packet quinn could decrypt (frames were read) moves
                    // the connection: a forged one with a known connection id redirects nothing.
                    self.buf.clear();
                    let again = self
                        .endpoint
                        .handle(now, known, local_ip, ecn, BytesMut::from(data), &mut self.buf);
                    let Some(DatagramEvent::ConnectionEvent(same, event)) = again else {
                        return;
                    };
                    if same != handle {
                        return;
                    }
                    if conn.read_datagram(event) {
                        conn.rebound = Some((known, from));
                    }
                }
                let id = self.by_handle[&handle];
                Self::mark_dirty(&mut self.dirty, conn, id);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                if self.config.server.is_none() {
                    self.endpoint.ignore(incoming);
                    return;
                }
                let peer = incoming.remote_address();
                self.buf.clear();
                match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                    Ok((handle, quic)) => {
                        self.stats.connections_accepted += 1;
                        let id = self.new_conn(handle, quic, Role::Server);
                        self.events.push(Event::Connected { conn: id, peer });
                    }
                    Err(e) => {
                        self.stats.connections_refused += 1;
                        if let Some(transmit) = e.response {
                            let bytes = self.buf[..transmit.size].to_vec();
                            self.responses.push((transmit, bytes));
                        }
                    }
                }
            }
            Some(DatagramEvent::Response(transmit)) => {
                let bytes = self.buf[..transmit.size].to_vec();
                self.responses.push((transmit, bytes));
            }
            None => {}
        }
    }

    /// Runs every connection timer due at `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            conn.timer = None;
            conn.quic.handle_timeout(now);
            Self::mark_dirty(&mut self.dirty, conn, id);
        }
    }

    /// The earliest deadline of any connection (`None`: nothing pending).
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|&(at, _)| at)
    }

    /// Advances every connection that had input: QUIC events become engine events (through HTTP/3).
    pub fn process(&mut self, now: Instant) {
        for &id in &self.dirty {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            Self::process_conn(
                &mut self.endpoint,
                &mut self.events,
                &mut self.h3_events,
                self.config.server.is_some(),
                id,
                conn,
                now,
            );
        }
    }

    fn route_endpoint_events(endpoint: &mut Endpoint, conn: &mut Conn) {
        while let Some(event) = conn.quic.poll_endpoint_events() {
            if let Some(reply) = endpoint.handle_event(conn.handle, event) {
                conn.quic.handle_event(reply);
            }
        }
    }

    fn process_conn(
        endpoint: &mut Endpoint,
        events: &mut Vec<Event>,
        h3_events: &mut Vec<H3Event>,
        server: bool,
        id: u64,
        conn: &mut Conn,
        now: Instant,
    ) {
        Self::route_endpoint_events(endpoint, conn);
        while let Some(event) = conn.quic.poll() {
            match event {
                QuicEvent::Connected => {
                    if server {
                        events.push(Event::Handshake { conn: id });
                    } else {
                        if conn.quic.has_0rtt() && !conn.quic.accepted_0rtt() {
                            // The server refused the 0-RTT data: quinn dropped every stream opened in it (their
                            // ids are given again); the caller sends its requests again (`early_data`).
                            for sid in conn.sends.keys() {
                                conn.h3.on_stream_reset(*sid);
                            }
                            conn.sends.clear();
                            conn.reset_sends.clear();
                            conn.wt_streams = 0;
                            conn.resize_send_window();
                        }
                        events.push(Event::Connected {
                            conn: id,
                            peer: conn.quic.remote_address(),
                        });
                    }
                }
                QuicEvent::ConnectionLost { reason } => {
                    if !conn.closed_reported {
                        conn.closed_reported = true;
                        let (code, reason) = describe_close(&reason);
                        events.push(Event::Closed { conn: id, code, reason });
                    }
                }
                QuicEvent::Stream(StreamEvent::Opened { dir }) => {
                    while let Some(stream) = conn.quic.streams().accept(dir) {
                        Self::read_stream(events, h3_events, id, conn, stream, now);
                    }
                }
                QuicEvent::Stream(StreamEvent::Readable { id: stream }) => {
                    Self::read_stream(events, h3_events, id, conn, stream, now);
                }
                QuicEvent::Stream(StreamEvent::Writable { id: stream }) => {
                    let sid = u64::from(stream);
                    Self::drain_pending(conn, sid);
                    if let Some(send) = conn.sends.get_mut(&sid) {
                        if send.blocked && !send.has_pending() {
                            send.blocked = false;
                            events.push(Event::Writable {
                                conn: id,
                                stream_id: sid,
                            });
                        }
                    }
                }
                QuicEvent::Stream(StreamEvent::Finished { id: stream }) => {
                    conn.forget_send(u64::from(stream));
                }
                QuicEvent::Stream(StreamEvent::Stopped { id: stream, error_code }) => {
                    // RFC 9000 §3.5: STOP_SENDING is answered with RESET_STREAM (quinn leaves it to us; until the
                    // reset or a FIN is acknowledged the stream keeps its slot in the peer's MAX_STREAMS).
                    let sid = u64::from(stream);
                    conn.reset_send(sid, error_code);
                    events.push(Event::StopSending {
                        conn: id,
                        stream_id: sid,
                        code: error_code.into_inner(),
                    });
                }
                QuicEvent::HandshakeDataReady
                | QuicEvent::Stream(StreamEvent::Available { .. })
                | QuicEvent::DatagramsUnblocked => {}
                QuicEvent::DatagramReceived => {
                    while let Some(datagram) = conn.quic.datagrams().recv() {
                        let result = conn.h3.on_datagram(&datagram, h3_events);
                        Self::h3_outcome(events, h3_events, id, conn, result, now);
                    }
                }
            }
        }
        if conn.uni_opened < 3 && !conn.closed_reported && !conn.quic.is_handshaking() {
            Self::open_uni_streams(conn);
        }
    }

    /// Opens the control stream (SETTINGS) and the QPACK encoder and decoder streams (empty: no dynamic
    /// table), as aioquic and browsers do.
    fn open_uni_streams(conn: &mut Conn) {
        let control = conn.h3.control_stream_bytes();
        let streams: [&[u8]; 3] = [&control, &[0x02], &[0x03]];
        for bytes in &streams[usize::from(conn.uni_opened)..] {
            let Some(stream) = conn.quic.streams().open(Dir::Uni) else {
                return; // the rest when the peer's limit allows (it must allow 3: RFC 9114 §6.2)
            };
            conn.uni_opened += 1;
            let sid = u64::from(stream);
            conn.wt_send(sid).pending.extend_from_slice(bytes);
            Self::drain_pending(conn, sid);
        }
    }

    fn read_stream(
        events: &mut Vec<Event>,
        h3_events: &mut Vec<H3Event>,
        id: u64,
        conn: &mut Conn,
        stream: StreamId,
        now: Instant,
    ) {
        let sid = u64::from(stream);
        let mut data = Vec::new();
        let mut fin = false;
        let mut reset = None;
        {
            let mut recv = conn.quic.recv_stream(stream);
            let Ok(mut chunks) = recv.read(true) else { return };
            loop {
                match chunks.next(usize::MAX) {
                    Ok(Some(chunk)) => data.extend_from_slice(&chunk.bytes),
                    Ok(None) => {
                        fin = true;
                        break;
                    }
                    Err(ReadError::Blocked) => break,
                    Err(ReadError::Reset(code)) => {
                        reset = Some(code.into_inner());
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if !data.is_empty() || fin {
            let result = conn.h3.on_stream_data(sid, &data, fin, h3_events);
            Self::h3_outcome(events, h3_events, id, conn, result, now);
        }
        if let Some(code) = reset {
            conn.h3.on_stream_reset(sid);
            if let Some(e) = conn.h3.error().cloned() {
                // The peer reset its control or a QPACK stream.
                Self::close_conn(events, id, conn, now, e.code, e.reason.as_bytes());
                return;
            }
            events.push(Event::Reset {
                conn: id,
                stream_id: sid,
                code,
            });
        }
    }

    /// Turns HTTP/3 events into engine events, or closes the connection on an HTTP/3 error.
    fn h3_outcome(
        events: &mut Vec<Event>,
        h3_events: &mut Vec<H3Event>,
        id: u64,
        conn: &mut Conn,
        result: Result<(), H3Error>,
        now: Instant,
    ) {
        for event in h3_events.drain(..) {
            events.push(match event {
                H3Event::Settings(settings) => Event::Settings { conn: id, settings },
                H3Event::Headers {
                    stream_id,
                    headers,
                    fin,
                } => Event::Headers {
                    conn: id,
                    stream_id,
                    headers,
                    fin,
                },
                H3Event::Data { stream_id, data, fin } => Event::Data {
                    conn: id,
                    stream_id,
                    data,
                    fin,
                },
                H3Event::WtStream {
                    stream_id,
                    session_id,
                    data,
                    fin,
                } => {
                    // A bidirectional WebTransport stream: this end's replies are raw bytes (while its send side
                    // lives: a finished one is not brought back).
                    if is_bidi(stream_id)
                        && !conn.sends.get(&stream_id).is_some_and(|s| s.wt)
                        && conn.send_live(stream_id)
                    {
                        conn.wt_send(stream_id);
                    }
                    Event::WtStream {
                        conn: id,
                        stream_id,
                        session_id,
                        data,
                        fin,
                    }
                }
                H3Event::Datagram { session_id, payload } => Event::Datagram {
                    conn: id,
                    session_id,
                    payload,
                },
                H3Event::GoAway(goaway) => Event::GoAway { conn: id, id: goaway },
            });
        }
        if let Err(e) = result {
            Self::close_conn(events, id, conn, now, e.code, e.reason.as_bytes());
        }
    }

    fn close_conn(events: &mut Vec<Event>, id: u64, conn: &mut Conn, now: Instant, code: u64, reason: &[u8]) {
        let code_varint = VarInt::from_u64(code).unwrap_or(VarInt::from_u32(0x102));
        conn.quic.close(now, code_varint, Bytes::copy_from_slice(reason));
        if !conn.closed_reported {
            conn.closed_reported = true;
            events.push(Event::Closed {
                conn: id,
                code,
                reason: String::from_utf8_lossy(reason).into_owned(),
            });
        }
    }

    /// Writes what QUIC takes of a stream's pending bytes; FIN once they are all out.
    fn drain_pending(conn: &mut Conn, sid: u64) {
        let Some(send) = conn.sends.get_mut(&sid) else { return };
        if send.closed {
            return;
        }
        let Ok(var) = VarInt::from_u64(sid) else { return };
        let mut stream = conn.quic.send_stream(StreamId::from(var));
        // Until all is taken or Blocked: only a Blocked write registers the stream for quinn's Writable.
        while send.has_pending() {
            match stream.write(&send.pending[send.pending_off..]) {
                Ok(n) => send.pending_off += n,
                Err(WriteError::Blocked) => break,
                Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                    send.closed = true;
                    break;
                }
            }
        }
        if !send.has_pending() {
            if send.pending.capacity() > PENDING_KEEP {
                send.pending = Vec::new(); // a large burst's buffer is not held for the stream's life
            } else {
                send.pending.clear();
            }
            send.pending_off = 0;
            if send.fin && !send.closed {
                send.closed = true;
                let _ = stream.finish();
            }
        }
    }

    /// Sends every packet the connections (and the endpoint) have, GSO batches of up to `max_segments`.
    /// Also retires drained connections.
    pub fn transmit(
        &mut self,
        now: Instant,
        max_segments: usize,
        send: &mut impl FnMut(&quinn_proto::Transmit, &[u8]),
    ) {
        for (transmit, bytes) in self.responses.drain(..) {
            send(&transmit, &bytes);
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let Some(conn) = self.conns.get_mut(&id) else { continue };
            conn.dirty = false;
            // Datagrams waiting in the engine go to quinn as it sends the ones it has (see `DatagramQueue`).
            // Feed, send; while some wait, feed again once quinn has sent what it had (and stop when it takes none).
            let mut first = true;
            loop {
                let (fed, refused) = match self.config.max_pending_datagrams {
                    // At least one: with a bound of 0 the flush's newest preview still goes (as on aioquic).
                    Some(limit) => conn.datagrams.feed(&mut conn.quic, limit.max(1)),
                    None => (0, 0),
                };
                self.stats.datagrams_dropped += refused;
                self.datagrams_dropped_unreported += refused;
                if !first && fed == 0 {
                    break;
                }
                first = false;
                if let Some((known, _)) = conn.rebound {
                    if conn.quic.remote_address() != known {
                        conn.rebound = None; // quinn's path moved on: the rebinding is its own business now
                    }
                }
                loop {
                    self.buf.clear();
                    let Some(mut transmit) = conn.quic.poll_transmit(now, max_segments.max(1), &mut self.buf) else {
                        break;
                    };
                    transmit.destination = conn.destination(transmit.destination);
                    send(&transmit, &self.buf[..transmit.size]);
                }
                if conn.datagrams.waiting.is_empty() {
                    break;
                }
            }
            Self::route_endpoint_events(&mut self.endpoint, conn);
            if conn.quic.is_drained() {
                self.retire(id);
                continue;
            }
            let timer = conn.quic.poll_timeout();
            if timer != conn.timer {
                if let Some(old) = conn.timer {
                    self.timers.remove(&(old, id));
                }
                conn.timer = timer;
                if let Some(at) = timer {
                    self.timers.insert((at, id));
                }
            }
        }
    }

    fn retire(&mut self, id: u64) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        self.by_handle.remove(&conn.handle);
        if let Some(at) = conn.timer {
            self.timers.remove(&(at, id));
        }
        self.stats.lost_packets_closed += conn.quic.stats().path.lost_packets;
        if !conn.closed_reported {
            conn.closed_reported = true;
            self.events.push(Event::Closed {
                conn: id,
                code: 0,
                reason: "drained".into(),
            });
        }
    }

    /// A live connection (one that is closing, its `Closed` reported, takes nothing more), to read.
    fn live(&self, id: u64) -> Result<&Conn, EngineError> {
        self.conns
            .get(&id)
            .filter(|c| !c.closed_reported)
            .ok_or(EngineError::NoConnection(id))
    }

    /// A live connection, for a call that changes it (it is marked dirty, for the next transmit).
    fn conn_mut(&mut self, id: u64) -> Result<&mut Conn, EngineError> {
        let conn = self
            .conns
            .get_mut(&id)
            .filter(|c| !c.closed_reported)
            .ok_or(EngineError::NoConnection(id))?;
        Self::mark_dirty(&mut self.dirty, conn, id);
        Ok(conn)
    }

    /// The local address changed (the driver moved to a new socket): every connection moves with it (a new
    /// connection id where the peer gave a spare one, and a PING at once so the peer sees the new address).
    pub fn local_address_changed(&mut self) {
        for (&id, conn) in &mut self.conns {
            if !conn.closed_reported {
                conn.quic.local_address_changed();
                Self::mark_dirty(&mut self.dirty, conn, id);
            }
        }
    }

    /// 0-RTT on a connection: (offered, accepted). Client: offered once `connect` resumed a session whose
    /// ticket allows early data (streams opened before `Connected` then leave in 0-RTT); accepted, known at
    /// `Connected`: the server took them (if not, they are gone and their ids free again: send again).
    /// Server: both say the client's early data was accepted (its streams are read before `Handshake`).
    pub fn early_data(&self, id: u64) -> Result<(bool, bool), EngineError> {
        let conn = self.live(id)?;
        let offered = conn.quic.has_0rtt();
        let accepted = offered && (self.is_server() || (!conn.quic.is_handshaking() && conn.quic.accepted_0rtt()));
        Ok((offered, accepted))
    }

    /// Client: starts a connection; its `Connected` event comes when the handshake completes.
    pub fn connect(&mut self, now: Instant, remote: SocketAddr, server_name: &str) -> Result<u64, EngineError> {
        let config = self
            .client_config
            .clone()
            .ok_or(EngineError::WrongSide("connect() is for a client engine"))?;
        let (handle, quic) = self
            .endpoint
            .connect(now, config, remote, server_name)
            .map_err(|e| EngineError::Invalid(format!("cannot connect to {remote}: {e}")))?;
        Ok(self.new_conn(handle, quic, Role::Client))
    }

    /// Writes `bytes` to a stream: what QUIC takes now goes, the rest waits in the stream's pending
    /// buffer. Returns whether all of it went into QUIC (false: the caller hears `Writable` later).
    fn write_queued(conn: &mut Conn, sid: u64, parts: &[&[u8]], fin: bool) -> Result<bool, EngineError> {
        let send = conn.sends.entry(sid).or_default();
        if send.closed || send.fin {
            return Err(EngineError::StreamClosed(sid));
        }
        for part in parts {
            send.pending.extend_from_slice(part);
        }
        send.fin = fin;
        Self::drain_pending(conn, sid);
        let send = conn.sends.get_mut(&sid).ok_or(EngineError::StreamClosed(sid))?;
        if send.closed && !send.fin {
            return Err(EngineError::StreamClosed(sid)); // stopped or reset meanwhile
        }
        if send.has_pending() {
            send.blocked = true;
            Ok(false)
        } else {
            Ok(true)
        }
    }

    /// A stream this end may send on: not the peer's unidirectional one, open in QUIC (not finished, reset or
    /// never opened) and not ended here.
    fn check_send_stream(conn: &mut Conn, sid: u64, server: bool) -> Result<(), EngineError> {
        let peer_uni = !is_bidi(sid) && ((sid & 1 == 1) != server);
        if peer_uni || conn.sends.get(&sid).is_some_and(|s| s.closed || s.fin) || !conn.send_live(sid) {
            return Err(EngineError::StreamClosed(sid));
        }
        Ok(())
    }

    /// HEADERS on a request stream.
    pub fn send_headers(
        &mut self,
        conn: u64,
        sid: u64,
        headers: &[(&[u8], &[u8])],
        fin: bool,
    ) -> Result<(), EngineError> {
        let server = self.is_server();
        let conn = self.conn_mut(conn)?;
        Self::check_send_stream(conn, sid, server)?;
        let mut frame = Vec::new();
        h3::encode_headers_frame(headers, &mut frame);
        Self::write_queued(conn, sid, &[&frame], fin)?;
        Ok(())
    }

    /// Data on a stream: a DATA frame on a request stream, raw bytes on a WebTransport stream. Returns the
    /// bytes taken: all of them on a request stream (queued if need be), what QUIC took on a WebTransport
    /// stream (less than all: wait for `Writable`).
    pub fn send_data(&mut self, conn: u64, sid: u64, data: &[u8], fin: bool) -> Result<usize, EngineError> {
        let server = self.is_server();
        let conn = self.conn_mut(conn)?;
        Self::check_send_stream(conn, sid, server)?;
        let send = conn.sends.entry(sid).or_default();
        if send.closed || send.fin {
            return Err(EngineError::StreamClosed(sid));
        }
        if send.wt {
            if send.has_pending() {
                Self::drain_pending(conn, sid);
            }
            let send = conn.sends.get_mut(&sid).ok_or(EngineError::StreamClosed(sid))?;
            if send.has_pending() {
                send.blocked = true;
                return Ok(0);
            }
            let mut stream = conn.quic.send_stream(StreamId::from(varint(sid)?));
            // Write until all is taken or QUIC says Blocked: only a Blocked write registers the stream for
            // quinn's Writable event (a short Ok write does not).
            let mut n = 0;
            while n < data.len() {
                match stream.write(&data[n..]) {
                    Ok(k) => n += k,
                    Err(WriteError::Blocked) => break,
                    Err(WriteError::Stopped(_) | WriteError::ClosedStream) => {
                        send.closed = true;
                        return Err(EngineError::StreamClosed(sid));
                    }
                }
            }
            if n == data.len() && fin {
                send.closed = true;
                let _ = stream.finish();
            } else if n < data.len() {
                send.blocked = true;
            }
            Ok(n)
        } else {
            let mut frame = Vec::with_capacity(data.len() + 9);
            if !data.is_empty() {
                h3::encode_data_frame_header(data.len() as u64, &mut frame);
                frame.extend_from_slice(data);
            }
            Self::write_queued(conn, sid, &[&frame], fin)?;
            Ok(data.len())
        }
    }

    /// Writes `prefix` and `body` to a WebTransport stream for a flush: everything is accepted (what QUIC
    /// does not take waits in the stream's buffer). Returns `Ok(true)` if all went into QUIC.
    pub fn write_flush(
        &mut self,
        conn: u64,
        sid: u64,
        prefix: &[u8],
        body: &[u8],
        fin: bool,
    ) -> Result<bool, EngineError> {
        let conn = self.conn_mut(conn)?;
        conn.wt_send(sid);
        Self::write_queued(conn, sid, &[prefix, body], fin)
    }

    /// Whether a stream can take a flush now: `Ok(false)` while earlier bytes still wait for credit.
    pub fn flush_ready(&mut self, conn: u64, sid: u64) -> Result<bool, EngineError> {
        let server = self.is_server();
        let conn = self.conn_mut(conn)?;
        Self::check_send_stream(conn, sid, server)?;
        if conn.sends.get(&sid).is_some_and(SendState::has_pending) {
            Self::drain_pending(conn, sid);
            let send = conn.sends.get_mut(&sid).ok_or(EngineError::StreamClosed(sid))?;
            if send.closed {
                return Err(EngineError::StreamClosed(sid));
            }
            if send.has_pending() {
                send.blocked = true;
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn reset_stream(&mut self, conn: u64, sid: u64, code: u64) -> Result<(), EngineError> {
        let server = self.is_server();
        let code = varint(code)?;
        let conn = self.conn_mut(conn)?;
        Self::check_send_stream(conn, sid, server)?;
        conn.reset_send(sid, code);
        Ok(())
    }

    pub fn stop_sending(&mut self, conn: u64, sid: u64, code: u64) -> Result<(), EngineError> {
        let server = self.is_server();
        let code = varint(code)?;
        let conn = self.conn_mut(conn)?;
        // A stream this end opened one way has no receive side.
        let own_uni = sid & 0b10 != 0 && ((sid & 1 == 1) == server);
        if own_uni {
            return Err(EngineError::StreamClosed(sid));
        }
        let _ = conn.quic.recv_stream(StreamId::from(varint(sid)?)).stop(code);
        conn.h3.on_stream_reset(sid);
        Ok(())
    }

    /// An HTTP/3 datagram for session `session_id`; false if QUIC refused it (too large, datagrams off).
    /// With `max_pending_datagrams` it waits in the engine's queue (see [`Self::trim_datagrams`]).
    pub fn send_datagram(&mut self, conn: u64, session_id: u64, payload: &[u8]) -> Result<bool, EngineError> {
        let id = conn;
        let limit = self.config.max_pending_datagrams;
        let conn = self.conn_mut(id)?;
        let mut out = Vec::with_capacity(payload.len() + 8);
        h3::encode_datagram(session_id, payload, &mut out);
        if limit.is_none() {
            return Ok(conn.quic.datagrams().send(Bytes::from(out), true).is_ok());
        }
        if conn.quic.datagrams().max_size().is_none_or(|max| out.len() > max) {
            return Ok(false);
        }
        conn.datagrams.waiting.push_back(Bytes::from(out));
        if !conn.datagrams.in_backlog {
            conn.datagrams.in_backlog = true;
            self.datagram_backlog.push(id);
        }
        Ok(true)
    }

    /// With `max_pending_datagrams`: every connection keeps at most that many datagrams pending (unsent, in the
    /// engine or in quinn's queue), dropping the oldest that wait in the engine. Returns the datagrams dropped
    /// since the last call (these, and any quinn refused once queued). A server calls it once per flush, before
    /// the flush's new datagrams, so what waits from one flush to the next is bounded.
    pub fn trim_datagrams(&mut self) -> u64 {
        let mut trimmed = 0;
        if let Some(limit) = self.config.max_pending_datagrams {
            let conns = &mut self.conns;
            self.datagram_backlog.retain(|id| {
                let Some(conn) = conns.get_mut(id) else { return false };
                trimmed += conn.datagrams.trim(&mut conn.quic, limit);
                conn.datagrams.in_backlog = !conn.datagrams.waiting.is_empty();
                conn.datagrams.in_backlog
            });
        }
        self.stats.datagrams_dropped += trimmed;
        trimmed + std::mem::take(&mut self.datagrams_dropped_unreported)
    }

    /// Datagrams of a connection not sent yet (waiting in the engine or in quinn's queue; 0 without
    /// `max_pending_datagrams`, where quinn does not say).
    pub fn pending_datagrams(&mut self, conn: u64) -> Result<usize, EngineError> {
        let conn = self
            .conns
            .get_mut(&conn)
            .filter(|c| !c.closed_reported)
            .ok_or(EngineError::NoConnection(conn))?;
        Ok(conn.datagrams.pending(&mut conn.quic))
    }

    /// Closes a connection; its `Closed` event comes with the next events.
    pub fn close(&mut self, now: Instant, conn: u64, code: u64, reason: &[u8]) -> Result<(), EngineError> {
        let id = conn;
        let conn = self.conns.get_mut(&id).ok_or(EngineError::NoConnection(id))?;
        Self::mark_dirty(&mut self.dirty, conn, id);
        Self::close_conn(&mut self.events, id, conn, now, code, reason);
        Ok(())
    }

    pub fn close_all(&mut self, now: Instant, code: u64, reason: &[u8]) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let _ = self.close(now, id, code, reason);
        }
    }

    /// Opens a bidirectional stream (a request).
    pub fn open_bidi(&mut self, conn: u64) -> Result<u64, EngineError> {
        let conn = self.conn_mut(conn)?;
        let stream = conn.quic.streams().open(Dir::Bi).ok_or(EngineError::StreamsExhausted)?;
        let sid = u64::from(stream);
        conn.sends.insert(sid, SendState::default());
        Ok(sid)
    }

    /// Opens a bidirectional WebTransport stream of `session_id` and writes its header (0x41 + session).
    pub fn open_wt_stream(&mut self, conn: u64, session_id: u64) -> Result<u64, EngineError> {
        let sid = self.open_bidi(conn)?;
        let conn = self.conn_mut(conn)?;
        let mut header = Vec::with_capacity(9);
        h3::encode_wt_stream_header(session_id, &mut header);
        conn.wt_send(sid);
        // The peer's bytes on it are raw WebTransport data, not a response.
        conn.h3.register_wt_stream(sid, session_id);
        Self::write_queued(conn, sid, &[&header], false)?;
        Ok(sid)
    }
}

fn describe_close(reason: &ConnectionError) -> (u64, String) {
    match reason {
        ConnectionError::ApplicationClosed(c) => (
            c.error_code.into_inner(),
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        ConnectionError::ConnectionClosed(c) => (
            u64::from(c.error_code),
            format!("transport: {}", String::from_utf8_lossy(&c.reason)),
        ),
        ConnectionError::TransportError(e) => (u64::from(e.code), format!("transport: {}", e.reason)),
        ConnectionError::TimedOut => (0, "idle timeout".into()),
        ConnectionError::Reset => (0, "stateless reset".into()),
        ConnectionError::VersionMismatch => (0, "version mismatch".into()),
        ConnectionError::LocallyClosed => (0, "closed".into()),
        ConnectionError::CidsExhausted => (0, "connection ids exhausted".into()),
    }
}
