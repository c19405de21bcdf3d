//! The native QUIC engine, client against server over 127.0.0.1: the handshake (the server's self-signed
//! certificate trusted by its SHA-256, as `serverCertificateHashes` does), an extended CONNECT and its
//! response, a WebTransport stream echoed, an HTTP/3 datagram each way, a flush from a registry, and the
//! refusals (a wrong hash, an unknown connection), and 0-RTT on a resumed connection (accepted, refused, off).
//! Last, two engines without sockets, where the test sets each datagram's source: a NAT rebinding mid-handshake.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use _core::frame::FrameKind;
use _core::quic::tls::{self, Trust};
use _core::quic::{Config, Driver, DriverError, Engine, EngineError, Event, FlushItem, FlushStatus};
use _core::registry::{Limits, Registry, StreamState};
use _core::ring::Wire;

const SETTINGS: [(u64, u64); 4] = [(0x01, 0), (0x08, 1), (0x33, 1), (0x2b60_3742, 1)];

/// An extended CONNECT (a WebTransport session).
const CONNECT: [(&[u8], &[u8]); 5] = [
    (b":method", b"CONNECT"),
    (b":protocol", b"webtransport"),
    (b":scheme", b"https"),
    (b":authority", b"localhost"),
    (b":path", b"/wt"),
];

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

struct Cert {
    chain_pem: Vec<u8>,
    key_pem: Vec<u8>,
    sha256: [u8; 32],
}

fn cert() -> Cert {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    Cert {
        chain_pem: ck.cert.pem().into_bytes(),
        key_pem: ck.key_pair.serialize_pem().into_bytes(),
        sha256: tls::cert_sha256(ck.cert.der()),
    }
}

fn config() -> Config {
    Config {
        server: None,
        client: None,
        h3_settings: SETTINGS.to_vec(),
        idle_timeout: Duration::from_secs(10),
        keepalive: None,
        ack_frequency: None,
        max_bidi_streams: 100,
        stream_window: 1 << 20,
        conn_window: 16 << 20,
        stream_send_window: None,
        max_pending_datagrams: None,
        endpoint_key: None,
    }
}

fn server(cert: &Cert) -> Driver {
    server_with(cert, config())
}

/// Sessions a test server keeps for resumption.
const TICKETS: usize = 100;

fn server_with(cert: &Cert, config: Config) -> Driver {
    server_tickets(cert, config, TICKETS)
}

fn server_tickets(cert: &Cert, config: Config, tickets: usize) -> Driver {
    server_on(cert, config, localhost(), false, tickets).unwrap()
}

fn server_on(
    cert: &Cert,
    config: Config,
    bind: SocketAddr,
    reuse_port: bool,
    tickets: usize,
) -> Result<Driver, DriverError> {
    let alpn = vec![b"h3".to_vec()];
    let tls = tls::server_config(&cert.chain_pem, &cert.key_pem, &alpn, tickets).unwrap();
    Driver::new(
        Config {
            server: Some(Arc::new(tls)),
            ..config
        },
        bind,
        reuse_port,
    )
}

fn client(trust: &Trust) -> Driver {
    let tls = tls::client_config(trust, &[b"h3".to_vec()], true).unwrap();
    Driver::new(
        Config {
            client: Some(Arc::new(tls)),
            ..config()
        },
        localhost(),
        false,
    )
    .unwrap()
}

/// Both drivers and everything they reported.
struct Pair {
    server: Driver,
    client: Driver,
    server_events: Vec<Event>,
    client_events: Vec<Event>,
}

impl Pair {
    fn new(server: Driver, client: Driver) -> Self {
        Self {
            server,
            client,
            server_events: Vec::new(),
            client_events: Vec::new(),
        }
    }

    /// Drives both ends until `done` holds (panics after 5 s).
    fn pump(&mut self, what: &str, done: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = self.server.poll_io();
            self.server_events.extend(s);
            let c = self.client.poll_io();
            self.client_events.extend(c);
            if done(self) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: server {:?} client {:?}",
                self.server_events,
                self.client_events
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn connect(&mut self) -> (u64, u64) {
        let addr = self.server.local_addr().unwrap();
        let c = self.client.engine().connect(Instant::now(), addr, "localhost").unwrap();
        self.client.transmit();
        self.pump("the handshake and both SETTINGS", |p| {
            p.client_events.iter().any(|e| matches!(e, Event::Settings { .. }))
                && p.server_events.iter().any(|e| matches!(e, Event::Settings { .. }))
        });
        (c, self.server_conn())
    }

    /// The server's newest connection.
    fn server_conn(&self) -> u64 {
        self.server_events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Connected { conn, .. } => Some(*conn),
                _ => None,
            })
            .unwrap()
    }

    /// An extended CONNECT from the client answered 200 by the server; the session (CONNECT stream) id.
    fn session(&mut self, c: u64, s: u64) -> u64 {
        let sid = self.client.engine().open_bidi(c).unwrap();
        self.client.engine().send_headers(c, sid, &CONNECT, false).unwrap();
        self.client.transmit();
        self.pump("the CONNECT", |p| {
            p.server_events
                .iter()
                .any(|e| matches!(e, Event::Headers { stream_id, .. } if *stream_id == sid))
        });
        let headers = self
            .server_events
            .iter()
            .find_map(|e| match e {
                Event::Headers {
                    conn,
                    stream_id,
                    headers,
                    fin,
                } if *stream_id == sid => {
                    assert_eq!(*conn, s);
                    assert!(!fin);
                    Some(headers.clone())
                }
                _ => None,
            })
            .unwrap();
        assert!(headers.contains(&(b":protocol".to_vec(), b"webtransport".to_vec())));
        assert!(headers.contains(&(b":path".to_vec(), b"/wt".to_vec())));
        self.server
            .engine()
            .send_headers(s, sid, &[(b":status", b"200")], false)
            .unwrap();
        self.server.transmit();
        self.pump("the response", |p| {
            p.client_events
                .iter()
                .any(|e| matches!(e, Event::Headers { stream_id, .. } if *stream_id == sid))
        });
        let status = self.client_events.iter().find_map(|e| match e {
            Event::Headers { stream_id, headers, .. } if *stream_id == sid => Some(headers.clone()),
            _ => None,
        });
        assert_eq!(status.unwrap(), vec![(b":status".to_vec(), b"200".to_vec())]);
        sid
    }

    /// A session and a WT stream of it that the client opened and wrote "start" on, seen by the server:
    /// (client conn, server conn, session, stream).
    fn wt_request(&mut self) -> (u64, u64, u64, u64) {
        let (c, s) = self.connect();
        let session = self.session(c, s);
        let ws = self.client.engine().open_wt_stream(c, session).unwrap();
        self.client.engine().send_data(c, ws, b"start", false).unwrap();
        self.client.transmit();
        self.pump("the request", |p| !wt_bytes(&p.server_events, ws).0.is_empty());
        (c, s, session, ws)
    }
}

/// The bytes of every `WtStream` event of `stream` (of any connection), and whether one had FIN.
fn wt_bytes(events: &[Event], stream: u64) -> (Vec<u8>, bool) {
    stream_bytes(events, None, stream)
}

/// The bytes of `stream` of connection `conn` (`None`: any), and whether one had FIN.
fn stream_bytes(events: &[Event], conn: Option<u64>, stream: u64) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut fin = false;
    for e in events {
        if let Event::WtStream {
            conn: c,
            stream_id,
            data,
            fin: f,
            ..
        } = e
        {
            if *stream_id == stream && conn.is_none_or(|want| want == *c) {
                out.extend_from_slice(data);
                fin |= *f;
            }
        }
    }
    (out, fin)
}

#[test]
fn handshake_by_certificate_hash() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s) = pair.connect();
    let client_addr = pair.client.local_addr().unwrap();
    assert!(pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, peer } if *conn == s && *peer == client_addr)));
    assert!(pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Handshake { conn } if *conn == s)));
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == c)));
    // Each side got the other's SETTINGS as announced.
    for events in [&pair.server_events, &pair.client_events] {
        let settings = events
            .iter()
            .find_map(|e| match e {
                Event::Settings { settings, .. } => Some(settings.clone()),
                _ => None,
            })
            .unwrap();
        assert_eq!(settings, SETTINGS.to_vec());
    }
    let stats = pair.server.stats();
    assert!(stats.io.packets_in > 0 && stats.io.packets_out > 0);
    assert_eq!(stats.connections, 1);
}

#[test]
fn wrong_hash_is_refused() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![[7; 32]])));
    let addr = pair.server.local_addr().unwrap();
    let c = pair.client.engine().connect(Instant::now(), addr, "localhost").unwrap();
    pair.client.transmit();
    pair.pump("the refusal", |p| {
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Closed { conn, .. } if *conn == c))
    });
    assert!(!pair.client_events.iter().any(|e| matches!(e, Event::Connected { .. })));
}

#[test]
fn ca_trust_checks_the_name() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Ca(cert.chain_pem.clone())));
    let addr = pair.server.local_addr().unwrap();
    // The certificate names "localhost": that name passes, another one does not.
    let bad = pair
        .client
        .engine()
        .connect(Instant::now(), addr, "example.com")
        .unwrap();
    pair.client.transmit();
    pair.pump("the refusal of a wrong name", |p| {
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Closed { conn, .. } if *conn == bad))
    });
    let (c, _) = pair.connect();
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == c)));
}

#[test]
fn connect_stream_echo_and_datagrams() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s) = pair.connect();
    let session = pair.session(c, s);

    // A WebTransport stream: the client's bytes reach the server as WtStream events of the session...
    let ws = pair.client.engine().open_wt_stream(c, session).unwrap();
    assert_eq!(pair.client.engine().send_data(c, ws, b"hello ", false).unwrap(), 6);
    assert_eq!(pair.client.engine().send_data(c, ws, b"world", true).unwrap(), 5);
    pair.client.transmit();
    pair.pump("the WT stream", |p| wt_bytes(&p.server_events, ws).1);
    assert_eq!(wt_bytes(&pair.server_events, ws), (b"hello world".to_vec(), true));
    assert!(pair.server_events.iter().any(
        |e| matches!(e, Event::WtStream { stream_id, session_id, .. } if *stream_id == ws && *session_id == session)
    ));
    // ...and the server's reply comes back raw on the same stream.
    assert_eq!(pair.server.engine().send_data(s, ws, b"dlrow olleh", true).unwrap(), 11);
    pair.server.transmit();
    pair.pump("the echo", |p| wt_bytes(&p.client_events, ws).1);
    assert_eq!(wt_bytes(&pair.client_events, ws), (b"dlrow olleh".to_vec(), true));

    // HTTP/3 datagrams both ways, tagged with the session.
    assert!(pair.client.engine().send_datagram(c, session, b"ping").unwrap());
    pair.client.transmit();
    pair.pump("the datagram", |p| {
        p.server_events.iter().any(|e| matches!(e, Event::Datagram { .. }))
    });
    assert!(pair.server_events.iter().any(|e| matches!(
        e, Event::Datagram { conn, session_id, payload } if *conn == s && *session_id == session && payload == b"ping"
    )));
    assert!(pair.server.engine().send_datagram(s, session, b"pong").unwrap());
    pair.server.transmit();
    pair.pump("the datagram back", |p| {
        p.client_events.iter().any(|e| matches!(e, Event::Datagram { .. }))
    });
    assert!(pair.client_events.iter().any(|e| matches!(
        e, Event::Datagram { session_id, payload, .. } if *session_id == session && payload == b"pong"
    )));

    // A reset from the client reaches the server as Reset; closing reports Closed on both sides.
    let ws2 = pair.client.engine().open_wt_stream(c, session).unwrap();
    pair.client.engine().send_data(c, ws2, b"x", false).unwrap();
    pair.client.transmit();
    pair.pump("the second stream", |p| !wt_bytes(&p.server_events, ws2).0.is_empty());
    pair.client.engine().reset_stream(c, ws2, 7).unwrap();
    pair.client.transmit();
    pair.pump("the reset", |p| {
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::Reset { stream_id, code: 7, .. } if *stream_id == ws2))
    });
    pair.server.engine().close(Instant::now(), s, 0x100, b"bye").unwrap();
    pair.server.transmit();
    pair.pump("the close", |p| {
        p.client_events.iter().any(|e| matches!(e, Event::Closed { .. }))
            && p.server_events.iter().any(|e| matches!(e, Event::Closed { .. }))
    });
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Closed { conn, code: 0x100, reason } if *conn == c && reason == "bye")));
}

#[test]
fn flush_from_registry() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    // The client asks on a WT stream; the server answers it from the registry.
    let (_, s, session, ws) = pair.wt_request();

    let mut registry = Registry::new(Limits::default());
    let h = registry.create("k", "s1".into()).unwrap();
    registry
        .append(h, FrameKind::Token, [&b"Hello"[..], b", ", b"world"])
        .unwrap();
    let mut out = Vec::new();
    let items = [FlushItem {
        conn: s,
        stream_id: ws,
        handle: h,
        after: 0,
        prefix: b"PRE",
    }];
    pair.server.flush(&registry, &items, &mut out);
    assert_eq!(out, vec![(3, FlushStatus::Ok)]);
    registry
        .end(h, FrameKind::Done, b"{}", StreamState::Finished, 0.0)
        .unwrap();
    out.clear();
    let items = [FlushItem {
        after: 3,
        prefix: b"",
        ..items[0]
    }];
    pair.server.flush(&registry, &items, &mut out);
    assert_eq!(out, vec![(4, FlushStatus::Ended)]);
    pair.pump("the frames", |p| wt_bytes(&p.client_events, ws).1);
    let mut expected = b"PRE".to_vec();
    registry.since(h, 0, Wire::Binary, &mut expected).unwrap();
    assert_eq!(wt_bytes(&pair.client_events, ws), (expected, true));

    // Statuses: an unknown handle, a closed stream (its FIN acknowledged by now), an unknown connection.
    let acked = Instant::now() + Duration::from_millis(100);
    pair.pump("the acknowledgements", |_| Instant::now() > acked);
    out.clear();
    let gone = FlushItem {
        handle: h + 1,
        stream_id: session,
        ..items[0]
    };
    let closed = items[0];
    let no_conn = FlushItem { conn: 999, ..items[0] };
    pair.server.flush(&registry, &[gone, closed, no_conn], &mut out);
    assert_eq!(
        out,
        vec![
            (3, FlushStatus::Gone),
            (3, FlushStatus::StreamClosed),
            (3, FlushStatus::StreamClosed)
        ]
    );
    // Nor do sends reach a finished stream, a stream never opened, or the peer's unidirectional stream.
    for stream in [ws, 400, 2] {
        assert!(
            pair.server.engine().send_data(s, stream, b"x", false).is_err(),
            "{stream}"
        );
    }
}

#[test]
fn flush_expired() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (_, s, _, ws) = pair.wt_request();
    let mut registry = Registry::new(Limits {
        max_frames_per_stream: 2,
        ..Limits::default()
    });
    let h = registry.create("k", "s1".into()).unwrap();
    registry
        .append(h, FrameKind::Token, [&b"a"[..], b"b", b"c", b"d"])
        .unwrap();
    let mut out = Vec::new();
    let item = FlushItem {
        conn: s,
        stream_id: ws,
        handle: h,
        after: 0,
        prefix: b"",
    };
    pair.server.flush(&registry, &[item], &mut out);
    assert_eq!(out, vec![(0, FlushStatus::Expired)]);
}

/// More than the peer's stream window (1 MiB), or than the server's own send window (its unacknowledged bytes,
/// `conn_window`), at once: QUIC takes what fits, `Writable` comes when more does, and every byte arrives.
fn big_write_pauses_then_writable(server: Driver) {
    let cert_pair = Pair::new(server, client(&Trust::Hashes(vec![CERT.with(|c| c.sha256)])));
    let mut pair = cert_pair;
    let (_, s, _, ws) = pair.wt_request();
    let big = vec![b'x'; 3 << 20];
    let n = pair.server.engine().send_data(s, ws, &big, false).unwrap();
    assert!(n < big.len(), "took {n}");
    pair.server.transmit();
    let mut sent = n;
    let mut writables = 0;
    while sent < big.len() {
        pair.pump("writable", |p| {
            p.server_events
                .iter()
                .filter(|e| matches!(e, Event::Writable { stream_id, .. } if *stream_id == ws))
                .count()
                > writables
        });
        writables += 1;
        sent += pair.server.engine().send_data(s, ws, &big[sent..], false).unwrap();
        pair.server.transmit();
    }
    pair.pump("everything", |p| wt_bytes(&p.client_events, ws).0.len() >= big.len());
    assert_eq!(wt_bytes(&pair.client_events, ws).0, big);
}

thread_local! {
    static CERT: Cert = cert();
}

#[test]
fn stream_window_pauses_then_writable() {
    big_write_pauses_then_writable(CERT.with(server));
}

#[test]
fn send_window_pauses_then_writable() {
    let config = Config {
        conn_window: 256 << 10,
        ..config()
    };
    big_write_pauses_then_writable(CERT.with(|c| server_with(c, config)));
}

impl Pair {
    /// Drives both ends for `ms` milliseconds (acknowledgements come and go).
    fn settle(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        self.pump("time", |_| Instant::now() > until);
    }

    /// Drives the server alone for `ms` milliseconds: the client is deaf, it acknowledges nothing.
    fn server_alone(&mut self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while Instant::now() < until {
            let events = self.server.poll_io();
            self.server_events.extend(events);
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn writables(&self, stream: u64) -> usize {
        self.server_events
            .iter()
            .filter(|e| matches!(e, Event::Writable { stream_id, .. } if *stream_id == stream))
            .count()
    }
}

/// `stream_send_window`: a connection's unacknowledged bytes are bounded by one share per open WebTransport
/// stream; a deaf peer blocks the writes there, its ACKs unblock them (`Writable`), and a reset stream gives its
/// share back.
#[test]
fn unacknowledged_bytes_are_bounded_per_stream() {
    const SHARE: usize = 4096;
    let config = Config {
        stream_send_window: Some(SHARE as u64),
        ..config()
    };
    let mut pair = Pair::new(
        CERT.with(|c| server_with(c, config)),
        client(&Trust::Hashes(vec![CERT.with(|c| c.sha256)])),
    );
    let (c, s, session, ws) = pair.wt_request();
    let other = pair.client.engine().open_wt_stream(c, session).unwrap();
    pair.client.engine().send_data(c, other, b"start", false).unwrap();
    pair.client.transmit();
    pair.pump("the second request", |p| {
        !wt_bytes(&p.server_events, other).0.is_empty()
    });
    pair.server.engine().send_data(s, other, b"ok", false).unwrap();
    pair.settle(100); // everything so far acknowledged

    // Two streams: two shares. The deaf client acknowledges nothing, so nothing more goes in.
    let big = vec![b'y'; 64 << 10];
    let n = pair.server.engine().send_data(s, ws, &big, false).unwrap();
    assert!(n > SHARE && n <= 2 * SHARE, "took {n}");
    pair.server.transmit();
    pair.server_alone(100);
    assert_eq!(pair.writables(ws), 0);
    assert_eq!(pair.server.engine().send_data(s, ws, &big[n..], false).unwrap(), 0);

    // Its ACKs free the window: the rest goes as they come.
    let mut sent = n;
    while sent < big.len() {
        let seen = pair.writables(ws);
        pair.pump("writable", |p| p.writables(ws) > seen);
        sent += pair.server.engine().send_data(s, ws, &big[sent..], false).unwrap();
        pair.server.transmit();
    }
    pair.pump("everything", |p| wt_bytes(&p.client_events, ws).0.len() >= big.len());
    assert_eq!(wt_bytes(&pair.client_events, ws).0, big);

    // The other stream reset: one share left.
    pair.server.engine().reset_stream(s, other, 0).unwrap();
    pair.server.transmit();
    pair.settle(100);
    let n = pair.server.engine().send_data(s, ws, &big, false).unwrap();
    assert!(n > 0 && n <= SHARE, "took {n}");
}

/// The datagram payloads the client received, in order.
fn datagrams_received(events: &[Event]) -> Vec<Vec<u8>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Datagram { payload, .. } => Some(payload.clone()),
            _ => None,
        })
        .collect()
}

/// `max_pending_datagrams`: the datagrams a connection cannot send yet are counted, and `trim_datagrams` keeps the
/// newest of them; on a clear path all go out, in order.
#[test]
fn pending_datagrams_are_bounded_by_count() {
    let config = Config {
        max_pending_datagrams: Some(4),
        ..config()
    };
    let mut pair = Pair::new(
        CERT.with(|c| server_with(c, config)),
        client(&Trust::Hashes(vec![CERT.with(|c| c.sha256)])),
    );
    let (_, s, session, ws) = pair.wt_request();
    pair.settle(50);
    let payload = |i: u8| vec![b'd', i];

    // A clear path: ten in one go all leave (the limit bounds what waits from one trim to the next).
    for i in 0..10 {
        assert!(pair.server.engine().send_datagram(s, session, &payload(i)).unwrap());
    }
    assert_eq!(pair.server.engine().pending_datagrams(s).unwrap(), 10);
    pair.server.transmit();
    assert_eq!(pair.server.engine().pending_datagrams(s).unwrap(), 0);
    assert_eq!(pair.server.engine().trim_datagrams(), 0);
    pair.pump("ten datagrams", |p| datagrams_received(&p.client_events).len() >= 10);
    assert_eq!(
        datagrams_received(&pair.client_events),
        (0..10).map(payload).collect::<Vec<_>>()
    );

    // A deaf client: stream bytes fill the congestion window, so the next datagram stays in quinn's queue and
    // those after it wait in the engine; a trim keeps four in all: that one (quinn gives nothing back) and the
    // newest three.
    let big = vec![b'z'; 256 << 10];
    pair.server.engine().send_data(s, ws, &big, false).unwrap();
    pair.server.transmit();
    assert!(pair.server.engine().send_datagram(s, session, &payload(10)).unwrap());
    pair.server.transmit();
    for i in 11..20 {
        assert!(pair.server.engine().send_datagram(s, session, &payload(i)).unwrap());
        pair.server.transmit();
    }
    assert_eq!(pair.server.engine().pending_datagrams(s).unwrap(), 10);
    assert_eq!(pair.server.engine().trim_datagrams(), 6);
    assert_eq!(pair.server.engine().pending_datagrams(s).unwrap(), 4);
    assert_eq!(pair.server.stats().engine.datagrams_dropped, 6);

    // The client hears again: its ACKs open the window and the four kept go out, in order.
    pair.pump("four more datagrams", |p| {
        datagrams_received(&p.client_events).len() >= 14
    });
    pair.settle(50);
    let received = datagrams_received(&pair.client_events);
    assert_eq!(received[10..], [10, 17, 18, 19].map(payload));
    assert_eq!(pair.server.engine().pending_datagrams(s).unwrap(), 0);
}

/// `reuse_port`: servers (one per worker process) share a port with `SO_REUSEPORT`; a socket without it cannot
/// join them, and a client reaches one of them.
#[test]
fn servers_share_a_port_with_reuse_port() {
    let first = CERT
        .with(|c| server_on(c, config(), localhost(), true, TICKETS))
        .unwrap();
    let addr = first.local_addr().unwrap();
    let second = CERT.with(|c| server_on(c, config(), addr, true, TICKETS)).unwrap();
    assert_eq!(second.local_addr().unwrap(), addr);
    match CERT.with(|c| server_on(c, config(), addr, false, TICKETS)) {
        Err(DriverError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse),
        other => panic!("bound without SO_REUSEPORT: {:?}", other.err()),
    }
    // A client's connection lands on one of the two (the kernel hashes its 4-tuple) and completes there.
    let mut servers = [first, second];
    let mut client = client(&Trust::Hashes(vec![CERT.with(|c| c.sha256)]));
    let c = client.engine().connect(Instant::now(), addr, "localhost").unwrap();
    client.transmit();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut client_events = Vec::new();
    while !client_events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == c))
    {
        assert!(Instant::now() < deadline, "no handshake: {client_events:?}");
        for server in &mut servers {
            server.poll_io();
        }
        client_events.extend(client.poll_io());
        std::thread::sleep(Duration::from_millis(1));
    }
    let accepted: Vec<u64> = servers.iter().map(|s| s.stats().engine.connections_accepted).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 1, "{accepted:?}");
}

#[test]
fn http3_error_closes_the_connection() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s) = pair.connect();
    // DATA before HEADERS on a request stream: H3_FRAME_UNEXPECTED (0x105), the connection closes with it.
    let sid = pair.client.engine().open_bidi(c).unwrap();
    pair.client.engine().send_data(c, sid, b"no headers", false).unwrap();
    pair.client.transmit();
    pair.pump("the close", |p| {
        p.client_events.iter().any(|e| matches!(e, Event::Closed { .. }))
    });
    assert!(pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Closed { conn, code: 0x105, .. } if *conn == s)));
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Closed { conn, code: 0x105, .. } if *conn == c)));
    // Nothing more goes to a closed connection.
    assert!(pair.client.engine().send_data(c, sid, b"x", false).is_err());
}

#[test]
fn oversized_datagram_is_refused() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s) = pair.connect();
    let session = pair.session(c, s);
    assert!(!pair.client.engine().send_datagram(c, session, &[0; 1500]).unwrap());
    assert!(pair.client.engine().send_datagram(c, session, &[0; 1000]).unwrap());
}

#[test]
fn junk_datagrams_do_not_disturb_the_server() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let addr = pair.server.local_addr().unwrap();
    let junk = std::net::UdpSocket::bind(localhost()).unwrap();
    // Short headers for no connection, long headers of an unknown version, truncated Initials, 1-byte and
    // 1500-byte noise: dropped or answered statelessly, never a connection, never a panic.
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for i in 0..300_usize {
        let len = [1, 20, 1200, 1500][i % 4];
        let mut datagram: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        match i % 3 {
            0 => datagram[0] = 0x40 | (datagram[0] & 0x3f), // short header
            1 if len > 5 => datagram[..5].copy_from_slice(&[0xc0, 0xba, 0xad, 0xf0, 0x0d]), // unknown version
            _ if len > 5 => datagram[..5].copy_from_slice(&[0xc0, 0, 0, 0, 1]), // v1 Initial, garbage inside
            _ => {}
        }
        junk.send_to(&datagram, addr).unwrap();
    }
    let deadline = Instant::now() + Duration::from_millis(200);
    pair.pump("the junk", |_| Instant::now() > deadline);
    assert_eq!(pair.server.stats().connections, 0);
    assert!(pair.server_events.is_empty(), "{:?}", pair.server_events);
    // And a real client still gets through.
    let (c, _) = pair.connect();
    assert!(pair
        .client_events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == c)));
}

#[test]
fn client_rebind_moves_every_connection() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s, _, ws) = pair.wt_request();
    let old = pair.client.local_addr().unwrap();
    pair.client.rebind(localhost()).unwrap();
    let new = pair.client.local_addr().unwrap();
    assert_ne!(old.port(), new.port());
    // The server's answer reaches the client at its new address, and the client's bytes still reach the
    // server: the connection moved, nothing was reopened.
    pair.server.engine().send_data(s, ws, b"after the move", true).unwrap();
    pair.server.transmit();
    pair.pump("the answer", |p| wt_bytes(&p.client_events, ws).1);
    assert_eq!(wt_bytes(&pair.client_events, ws).0, b"after the move");
    pair.client.engine().send_data(c, ws, b" and back", true).unwrap();
    pair.client.transmit();
    pair.pump("the bytes", |p| wt_bytes(&p.server_events, ws).1);
    assert_eq!(wt_bytes(&pair.server_events, ws).0, b"start and back");
    assert_eq!(pair.server.stats().connections, 1);
    assert!(!pair.server_events.iter().any(|e| matches!(e, Event::Closed { .. })));
}

#[test]
fn stop_sending_reaches_the_writer() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s, _, ws) = pair.wt_request();
    pair.stop_mid_answer(c, s, ws);
    // The server's side of the stream is over: sends and flushes are refused.
    assert!(pair.server.engine().send_data(s, ws, b"more", false).is_err());
}

/// `STOP_SENDING` is answered with `RESET_STREAM` (RFC 9000 §3.5): until then the stream would keep its slot in
/// the client's `MAX_STREAMS`, and a client that stops answers mid-way (a cancelled reader) would run out of
/// streams. Three times the limit, stopped one after the other on one connection.
#[test]
fn stopped_streams_give_their_slots_back() {
    let cert = cert();
    let limited = Config {
        max_bidi_streams: 8,
        ..config()
    };
    let mut pair = Pair::new(server_with(&cert, limited), client(&Trust::Hashes(vec![cert.sha256])));
    let (c, s) = pair.connect();
    let session = pair.session(c, s);
    for round in 0..24 {
        let deadline = Instant::now() + Duration::from_secs(5);
        let ws = loop {
            match pair.client.engine().open_wt_stream(c, session) {
                Ok(ws) => break ws,
                Err(EngineError::StreamsExhausted) => {
                    assert!(Instant::now() < deadline, "round {round}: no stream credit came back");
                    let later = Instant::now() + Duration::from_millis(2);
                    pair.pump("stream credit", |_| Instant::now() > later);
                }
                Err(e) => panic!("round {round}: {e}"),
            }
        };
        pair.client.engine().send_data(c, ws, b"start", true).unwrap();
        pair.client.transmit();
        pair.pump("the request", |p| wt_bytes(&p.server_events, ws).1);
        pair.stop_mid_answer(c, s, ws);
        // Reset now: neither written again nor brought back by more bytes from the peer.
        assert!(pair.server.engine().send_data(s, ws, b"more", false).is_err());
        assert!(pair.server.engine().reset_stream(s, ws, 1).is_err());
        pair.client_events.clear();
        pair.server_events.clear();
    }
}

/// One flush of 3 connections x 40 streams (more than the 64 items after which it sends as it goes, with the
/// boundary inside a connection's run): every item Ok, every stream gets its bytes, once.
#[test]
fn a_flush_across_many_connections_sends_as_it_goes() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    let mut registry = Registry::new(Limits::default());
    let h = registry.create("k", "s1".into()).unwrap();
    registry
        .append(h, FrameKind::Token, [&b"one"[..], b" two", b" three"])
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..3 {
        pair.client_events.clear();
        pair.server_events.clear();
        let (c, s) = pair.connect();
        let session = pair.session(c, s);
        let opened: Vec<u64> = (0..40)
            .map(|_| {
                let ws = pair.client.engine().open_wt_stream(c, session).unwrap();
                pair.client.engine().send_data(c, ws, b"start", false).unwrap();
                ws
            })
            .collect();
        pair.client.transmit();
        pair.pump("40 requests", |p| {
            opened.iter().all(|ws| !wt_bytes(&p.server_events, *ws).0.is_empty())
        });
        streams.extend(opened.into_iter().map(|ws| (c, s, ws)));
    }
    let items: Vec<FlushItem<'_>> = streams
        .iter()
        .map(|&(_, s, ws)| FlushItem {
            conn: s,
            stream_id: ws,
            handle: h,
            after: 0,
            prefix: b"",
        })
        .collect();
    pair.client_events.clear();
    let mut out = Vec::new();
    pair.server.flush(&registry, &items, &mut out);
    assert_eq!(out, vec![(3, FlushStatus::Ok); 120]);
    let mut expected = Vec::new();
    registry.since(h, 0, Wire::Binary, &mut expected).unwrap();
    pair.pump("every stream's frames", |p| {
        streams
            .iter()
            .all(|&(c, _, ws)| stream_bytes(&p.client_events, Some(c), ws).0.len() >= expected.len())
    });
    for &(c, _, ws) in &streams {
        assert_eq!(
            stream_bytes(&pair.client_events, Some(c), ws),
            (expected.clone(), false)
        );
    }
}

impl Pair {
    /// The server writes part of an answer on `ws`; once it is in, the client stops reading (`STOP_SENDING`
    /// code 9) and the server hears it.
    fn stop_mid_answer(&mut self, c: u64, s: u64, ws: u64) {
        self.server.engine().send_data(s, ws, b"partial answer", false).unwrap();
        self.server.transmit();
        self.pump("the first bytes", |p| !wt_bytes(&p.client_events, ws).0.is_empty());
        self.client.engine().stop_sending(c, ws, 9).unwrap();
        self.client.transmit();
        self.pump("STOP_SENDING", |p| {
            p.server_events
                .iter()
                .any(|e| matches!(e, Event::StopSending { stream_id, code: 9, .. } if *stream_id == ws))
        });
    }

    /// A first connection, kept until the server's session ticket has had time to arrive, then closed.
    fn connect_for_ticket(&mut self) {
        let (c, _) = self.connect();
        let later = Instant::now() + Duration::from_millis(50);
        self.pump("the ticket", |_| Instant::now() > later);
        self.client.engine().close(Instant::now(), c, 0x100, b"").unwrap();
        self.client.transmit();
    }

    /// A new connection that opens a session and one WT stream with "early" on it before its handshake:
    /// (client conn, session, stream, 0-RTT offered).
    fn connect_early(&mut self) -> (u64, u64, u64, bool) {
        let addr = self.server.local_addr().unwrap();
        let c = self.client.engine().connect(Instant::now(), addr, "localhost").unwrap();
        let (offered, accepted) = self.client.engine().early_data(c).unwrap();
        assert!(!accepted, "not known before the handshake");
        let session = self.client.engine().open_bidi(c).unwrap();
        self.client.engine().send_headers(c, session, &CONNECT, false).unwrap();
        let ws = self.client.engine().open_wt_stream(c, session).unwrap();
        self.client.engine().send_data(c, ws, b"early", true).unwrap();
        self.client.transmit();
        (c, session, ws, offered)
    }

    /// Drives both ends until the client's connection `c` has completed its handshake.
    fn client_handshake(&mut self, c: u64) {
        self.pump("the client's handshake", |p| {
            p.client_events
                .iter()
                .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == c))
        });
    }
}

fn position(events: &[Event], what: impl Fn(&Event) -> bool) -> usize {
    events.iter().position(what).expect("no such event")
}

#[test]
fn zero_rtt_streams_reach_the_server_before_its_handshake_completes() {
    let cert = cert();
    let mut pair = Pair::new(server(&cert), client(&Trust::Hashes(vec![cert.sha256])));
    pair.connect_for_ticket();
    assert_eq!(pair.client.stats().early_data_accepted, 0);
    pair.server_events.clear();
    pair.client_events.clear();

    let (c, session, ws, offered) = pair.connect_early();
    assert!(offered, "the ticket allows 0-RTT");
    pair.pump("the early stream and the handshake", |p| {
        wt_bytes(&p.server_events, ws).1 && p.server_events.iter().any(|e| matches!(e, Event::Handshake { .. }))
    });
    // The server read the CONNECT and the request in 0-RTT: before its handshake completed.
    let s = pair.server_conn();
    let handshake = position(
        &pair.server_events,
        |e| matches!(e, Event::Handshake { conn } if *conn == s),
    );
    let connect = position(
        &pair.server_events,
        |e| matches!(e, Event::Headers { conn, stream_id, .. } if *conn == s && *stream_id == session),
    );
    let request = position(
        &pair.server_events,
        |e| matches!(e, Event::WtStream { conn, stream_id, .. } if *conn == s && *stream_id == ws),
    );
    assert!(connect < handshake && request < handshake, "{:?}", pair.server_events);
    assert_eq!(wt_bytes(&pair.server_events, ws), (b"early".to_vec(), true));
    assert_eq!(pair.server.engine().early_data(s).unwrap(), (true, true));
    pair.client_handshake(c);
    assert_eq!(pair.client.engine().early_data(c).unwrap(), (true, true));
    assert_eq!(pair.server.stats().early_data_accepted, 1);
    assert_eq!(pair.client.stats().early_data_accepted, 1);
    // The stream goes on after the handshake: the server's answer reaches the client.
    pair.server.engine().send_data(s, ws, b"answer", true).unwrap();
    pair.server.transmit();
    pair.pump("the answer", |p| wt_bytes(&p.client_events, ws).1);
    assert_eq!(wt_bytes(&pair.client_events, ws).0, b"answer");
}

#[test]
fn zero_rtt_refused_by_a_server_without_the_session_is_sent_again() {
    let cert = cert();
    let trust = Trust::Hashes(vec![cert.sha256]);
    let mut pair = Pair::new(server(&cert), client(&trust));
    pair.connect_for_ticket();
    // Another server with the same certificate and name: it never issued that ticket.
    let mut pair = Pair::new(server(&cert), pair.client);
    let (c, session, ws, offered) = pair.connect_early();
    assert!(offered);
    pair.client_handshake(c);
    assert_eq!(pair.client.engine().early_data(c).unwrap(), (true, false));
    assert_eq!(pair.client.stats().early_data_rejected, 1);
    // Nothing of the 0-RTT flight reached the server; the streams are gone and their ids are free again.
    let s = pair.server_conn();
    assert_eq!(pair.server.engine().early_data(s).unwrap(), (false, false));
    assert!(!pair
        .server_events
        .iter()
        .any(|e| matches!(e, Event::Headers { .. } | Event::WtStream { .. })));
    assert_eq!(pair.client.engine().open_bidi(c).unwrap(), session);
    pair.client.engine().send_headers(c, session, &CONNECT, false).unwrap();
    assert_eq!(pair.client.engine().open_wt_stream(c, session).unwrap(), ws);
    pair.client.engine().send_data(c, ws, b"again", true).unwrap();
    pair.client.transmit();
    pair.pump("the request, sent again", |p| wt_bytes(&p.server_events, ws).1);
    assert_eq!(wt_bytes(&pair.server_events, ws), (b"again".to_vec(), true));
    assert_eq!(pair.server.stats().early_data_accepted, 0);
}

#[test]
fn no_session_tickets_no_zero_rtt() {
    let cert = cert();
    let server = server_tickets(&cert, config(), 0);
    let mut pair = Pair::new(server, client(&Trust::Hashes(vec![cert.sha256])));
    pair.connect_for_ticket();
    let addr = pair.server.local_addr().unwrap();
    let c = pair.client.engine().connect(Instant::now(), addr, "localhost").unwrap();
    assert_eq!(
        pair.client.engine().early_data(c).unwrap(),
        (false, false),
        "no ticket came"
    );
    // Without 0-RTT no stream opens before the handshake (the server's stream limits are not known yet).
    assert_eq!(pair.client.engine().open_bidi(c), Err(EngineError::StreamsExhausted));
    pair.client.transmit();
    pair.client_handshake(c);
    assert_eq!(pair.client.engine().early_data(c).unwrap(), (false, false));
    assert_eq!(pair.server.stats().early_data_accepted, 0);
}

// -- the engine without sockets: the test decides what each datagram's source address is ---------------

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn engine_server(cert: &Cert) -> Engine {
    engine_server_keyed(cert, None)
}

fn engine_server_keyed(cert: &Cert, endpoint_key: Option<&[u8]>) -> Engine {
    let tls = tls::server_config(&cert.chain_pem, &cert.key_pem, &[b"h3".to_vec()], TICKETS).unwrap();
    Engine::new(Config {
        server: Some(Arc::new(tls)),
        endpoint_key: endpoint_key.map(<[u8]>::to_vec),
        ..config()
    })
    .unwrap()
}

fn engine_client(cert: &Cert) -> Engine {
    let tls = tls::client_config(&Trust::Hashes(vec![cert.sha256]), &[b"h3".to_vec()], true).unwrap();
    Engine::new(Config {
        client: Some(Arc::new(tls)),
        ..config()
    })
    .unwrap()
}

/// What `engine` sends at `now` (timers run first): each datagram's destination and bytes.
fn sends(engine: &mut Engine, now: Instant) -> Vec<(SocketAddr, Vec<u8>)> {
    engine.handle_timeouts(now);
    engine.process(now);
    let mut out = Vec::new();
    engine.transmit(now, 1, &mut |t, bytes| out.push((t.destination, bytes.to_vec())));
    out
}

#[test]
fn a_nat_rebinding_during_the_handshake_moves_the_server_to_the_new_address() {
    let cert = cert();
    let (server_addr, first, second, forger) = (
        addr("192.0.2.1:443"),
        addr("198.51.100.7:40000"),
        addr("198.51.100.7:50000"),
        addr("203.0.113.9:60000"),
    );
    let mut server = engine_server(&cert);
    let mut client = engine_client(&cert);
    let mut now = Instant::now();
    client.connect(now, server_addr, "localhost").unwrap();

    // The client's first flight reaches the server from `first`; the server's answer is lost.
    let flight = sends(&mut client, now);
    assert!(!flight.is_empty() && flight.iter().all(|(to, _)| *to == server_addr));
    for (_, d) in &flight {
        server.handle_datagram(now, first, None, None, d);
    }
    let lost = sends(&mut server, now);
    assert!(!lost.is_empty() && lost.iter().all(|(to, _)| *to == first));
    let sid = match server.take_events().as_slice() {
        [Event::Connected { conn, peer }, ..] if *peer == first => *conn,
        other => panic!("expected the server's Connected from {first}: {other:?}"),
    };

    // A forged datagram: a real header (the connection's id) with a garbled payload, from another address.
    // It does not decrypt, so it redirects nothing.
    let mut garbled = flight[0].1.clone();
    let n = garbled.len();
    for b in &mut garbled[n - 64..] {
        *b ^= 0x5a;
    }
    server.handle_datagram(now, forger, None, None, &garbled);
    assert!(sends(&mut server, now).iter().all(|(to, _)| *to == first));
    assert_eq!(server.peer_address(sid).unwrap(), first);

    // The NAT rebinds: from now on the client's packets reach the server from `second`. The client sends again
    // when its timer fires; the handshake must complete over the new address.
    // (What the server sends to `first` is lost: that mapping is gone.)
    let (mut client_done, mut server_done, mut heard) = (false, false, false);
    for _ in 0..200 {
        now += Duration::from_millis(20);
        for (to, d) in sends(&mut client, now) {
            assert_eq!(to, server_addr);
            server.handle_datagram(now, second, None, None, &d);
            heard = true;
        }
        let out = sends(&mut server, now);
        server_done |= server
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Handshake { .. }));
        for (to, d) in out {
            // Once established, quinn migrates by itself, and probes the old path once (RFC 9000 §9.3.3).
            if to == first && (!heard || server_done) {
                continue;
            }
            assert_eq!(
                to, second,
                "once it heard from the new address the server sends there only"
            );
            client.handle_datagram(now, server_addr, None, None, &d);
        }
        client_done |= client
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }));
        if client_done && server_done {
            break;
        }
    }
    assert!(
        client_done && server_done,
        "the handshake did not complete over the new address"
    );
    assert_eq!(server.peer_address(sid).unwrap(), second);
}

/// `client` connects to `server` (at `server_addr`, the client seen at `client_addr`), every datagram delivered:
/// the client's connection id, once both ends completed the handshake.
fn handshake(client: &mut Engine, server: &mut Engine, server_addr: SocketAddr, client_addr: SocketAddr) -> u64 {
    let mut now = Instant::now();
    let id = client.connect(now, server_addr, "localhost").unwrap();
    let (mut client_done, mut server_done) = (false, false);
    for _ in 0..50 {
        for (_, d) in sends(client, now) {
            server.handle_datagram(now, client_addr, None, None, &d);
        }
        for (_, d) in sends(server, now) {
            client.handle_datagram(now, server_addr, None, None, &d);
        }
        client_done |= client
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }));
        server_done |= server
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Handshake { .. }));
        if client_done && server_done {
            return id;
        }
        now += Duration::from_millis(5);
    }
    panic!("no handshake");
}

/// Two workers on one address (`SO_REUSEPORT`): the client's packets now reach `other`, which does not hold its
/// connection. Whether the client's connection is closed by what `other` answers.
fn lands_on_another_worker(key_a: Option<&[u8]>, key_b: Option<&[u8]>) -> bool {
    let cert = cert();
    let (server_addr, client_addr) = (addr("192.0.2.1:443"), addr("198.51.100.7:40000"));
    let mut first = engine_server_keyed(&cert, key_a);
    let mut other = engine_server_keyed(&cert, key_b);
    let mut client = engine_client(&cert);
    let id = handshake(&mut client, &mut first, server_addr, client_addr);
    let now = Instant::now() + Duration::from_millis(500);
    let sid = client.open_bidi(id).unwrap();
    client.send_data(id, sid, &[7; 200], false).unwrap();
    let out = sends(&mut client, now);
    assert!(!out.is_empty());
    for (_, d) in out {
        other.handle_datagram(now, client_addr, None, None, &d);
    }
    for (to, d) in sends(&mut other, now) {
        assert_eq!(to, client_addr);
        client.handle_datagram(now, server_addr, None, None, &d);
    }
    client.process(now);
    let closed = client
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Closed { conn, .. } if *conn == id));
    closed
}

#[test]
fn servers_sharing_an_endpoint_key_reset_each_others_connections() {
    let key = b"one deployment's secret, 32 byte";
    assert!(
        lands_on_another_worker(Some(key), Some(key)),
        "the client took the other worker's reset"
    );
    // Without a shared key the other worker cannot tell the connection id is one of the deployment's: it
    // drops the packet, and the client learns nothing until its idle timeout.
    assert!(!lands_on_another_worker(None, None));
    assert!(!lands_on_another_worker(
        Some(key),
        Some(b"another deployment's secret, 32b")
    ));
}

#[test]
fn a_copy_of_the_clients_initial_raced_in_from_elsewhere_redirects_only_until_the_client_speaks_again() {
    // Initial packets decrypt for anyone on the path: an observer may send a copy of the client's own repeated
    // Initial from its address, ahead of the original. The handshake must still complete with the client.
    let cert = cert();
    let (server_addr, first, observer) = (
        addr("192.0.2.1:443"),
        addr("198.51.100.7:40000"),
        addr("203.0.113.9:60000"),
    );
    let mut server = engine_server(&cert);
    let mut client = engine_client(&cert);
    let mut now = Instant::now();
    client.connect(now, server_addr, "localhost").unwrap();
    for (_, d) in sends(&mut client, now) {
        server.handle_datagram(now, first, None, None, &d);
    }
    assert!(!sends(&mut server, now).is_empty()); // the server's first flight: lost
    let sid = match server.take_events().as_slice() {
        [Event::Connected { conn, .. }, ..] => *conn,
        other => panic!("expected the server's Connected: {other:?}"),
    };
    let (mut raced, mut done) = (false, false);
    for _ in 0..300 {
        now += Duration::from_millis(20);
        for (_, d) in sends(&mut client, now) {
            if !raced {
                server.handle_datagram(now, observer, None, None, &d); // the copy, first (once)
                assert_eq!(server.peer_address(sid).unwrap(), observer, "taken for a NAT rebinding");
                raced = true;
            }
            server.handle_datagram(now, first, None, None, &d);
        }
        for (to, d) in sends(&mut server, now) {
            if to != observer {
                assert_eq!(to, first);
                client.handle_datagram(now, server_addr, None, None, &d);
            } // what goes to the observer, it keeps
        }
        done |= client
            .take_events()
            .iter()
            .any(|e| matches!(e, Event::Connected { .. }));
        if done {
            break;
        }
    }
    assert!(raced && done, "the handshake stalled after one raced copy");
    assert_eq!(server.peer_address(sid).unwrap(), first);
}
