//! The per-connection HTTP/3 state machine.

use super::frame::{put_varint, SETTINGS, STREAM_CONTROL};
use super::{H3Error, H3Event, Role};

/// One HTTP/3 connection's parse state: the peer's control stream, its QPACK streams, and every open
/// stream that carries requests, responses or WebTransport data.
#[derive(Debug)]
pub struct H3Conn {
    role: Role,
    local_settings: Vec<(u64, u64)>,
    peer_settings: Option<Vec<(u64, u64)>>,
}

impl H3Conn {
    /// `local_settings`: every setting this end announces, in order.
    pub fn new(role: Role, local_settings: &[(u64, u64)]) -> Self {
        Self {
            role,
            local_settings: local_settings.to_vec(),
            peer_settings: None,
        }
    }

    /// The first bytes of the local control stream: stream type 0x00 and the SETTINGS frame.
    pub fn control_stream_bytes(&self) -> Vec<u8> {
        let mut payload = Vec::new();
        for &(id, value) in &self.local_settings {
            put_varint(id, &mut payload);
            put_varint(value, &mut payload);
        }
        let mut out = Vec::new();
        put_varint(STREAM_CONTROL, &mut out);
        put_varint(SETTINGS, &mut out);
        put_varint(payload.len() as u64, &mut out);
        out.extend_from_slice(&payload);
        out
    }

    /// Feeds bytes that arrived on a peer stream (or, client role, a stream this end opened).
    pub fn on_stream_data(
        &mut self,
        stream_id: u64,
        data: &[u8],
        fin: bool,
        out: &mut Vec<H3Event>,
    ) -> Result<(), H3Error> {
        let _ = (stream_id, data, fin, out, self.role);
        Ok(())
    }

    /// The peer reset the stream (or the driver gave up on it): forget its parse state.
    pub fn on_stream_reset(&mut self, stream_id: u64) {
        let _ = stream_id;
    }

    /// A QUIC datagram arrived.
    pub fn on_datagram(&mut self, data: &[u8], out: &mut Vec<H3Event>) -> Result<(), H3Error> {
        let _ = (data, out);
        Ok(())
    }

    /// The peer's SETTINGS, once they arrived.
    pub fn peer_settings(&self) -> Option<&[(u64, u64)]> {
        self.peer_settings.as_deref()
    }
}
