//! Resume ring: one stream's recent frames, indexed by seq, bounded by frame count and payload bytes.
//!
//! Seqs are assigned by the ring: 1 for the first frame, then +1 per frame, so frame `seq` sits at index
//! `seq - first_seq`. Payloads live in one byte arena; the oldest frames are dropped as bounds demand and
//! the dead front of the arena is compacted away once it is at least half of it (amortised O(1) append).
//! `since(seq)` encodes everything after `seq` into one buffer in the requested wire format.

use std::collections::VecDeque;

use crate::error::RingError;
use crate::frame::{self, FrameKind};
use crate::sse;

/// The wire formats a ring can render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    Sse,
    Binary,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Offset of the payload from the start of everything ever written to the arena.
    start: u64,
    len: u32,
    kind: FrameKind,
}

#[derive(Debug, Clone)]
pub struct Ring {
    entries: VecDeque<Entry>,
    arena: Vec<u8>,
    /// Absolute offset of `arena[0]`.
    arena_base: u64,
    /// Seq of `entries[0]` (or of the next frame when empty).
    first_seq: u64,
    payload_bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    /// SSE ids are `id_prefix` followed by the seq.
    id_prefix: String,
}

/// Arena front garbage below this is never worth a compaction.
const COMPACT_MIN: usize = 4096;

impl Ring {
    /// A ring holding at most `max_frames` frames (at least 1) and `max_bytes` payload bytes.
    /// `id_prefix` must pass [`sse::check_id`]; the caller checks it once.
    pub fn new(id_prefix: String, max_frames: usize, max_bytes: usize) -> Self {
        Self {
            entries: VecDeque::new(),
            arena: Vec::new(),
            arena_base: 0,
            first_seq: 1,
            payload_bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes,
            id_prefix,
        }
    }

    /// An empty ring whose first frame will get seq `first_seq` (at least 1): a copy of another node's
    /// stream that starts where the copied history starts.
    pub fn starting_at(id_prefix: String, max_frames: usize, max_bytes: usize, first_seq: u64) -> Self {
        Self {
            first_seq: first_seq.max(1),
            ..Self::new(id_prefix, max_frames, max_bytes)
        }
    }

    /// The seq of the newest frame, 0 before the first.
    #[inline]
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.entries.len() as u64 - 1
    }

    /// The seq of the oldest frame still held (`last_seq + 1` when nothing is held).
    pub fn oldest_seq(&self) -> u64 {
        self.first_seq
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    pub fn id_prefix(&self) -> &str {
        &self.id_prefix
    }

    /// Heap and inline bytes this ring accounts for (allocated capacity, not just what is used).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.arena.capacity()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.id_prefix.capacity()
    }

    /// The most bytes [`Self::memory_bytes`] can reach while `frames` frames of at most `frame_bytes` bytes
    /// each are appended: an upper bound over capacity doubling (arena and index) and, once the bounds evict,
    /// the arena's dead front (at most as large as what it holds before a compaction). What a registry
    /// reserves for a generation whose length it knows before the first token.
    pub fn memory_bound(&self, frames: u64, frame_bytes: usize) -> usize {
        let all = usize::try_from(frames).unwrap_or(usize::MAX);
        let held = all.min(self.max_frames);
        let payload = held.saturating_mul(frame_bytes).min(self.max_bytes);
        let evicts = all > self.max_frames || all.saturating_mul(frame_bytes) > self.max_bytes;
        let arena_len = if evicts {
            payload.saturating_mul(2).saturating_add(COMPACT_MIN)
        } else {
            payload
        };
        let arena = arena_len.max(8).saturating_mul(2);
        let entries = held
            .max(4)
            .next_power_of_two()
            .saturating_mul(std::mem::size_of::<Entry>());
        (std::mem::size_of::<Self>() + self.id_prefix.capacity())
            .saturating_add(arena)
            .saturating_add(entries)
    }

    /// The largest payload one frame may carry: the byte bound, and never more than a decoder accepts
    /// by default ([`frame::DEFAULT_MAX_PAYLOAD`]), so whatever is stored can be delivered.
    pub fn max_payload(&self) -> usize {
        self.max_bytes.min(frame::DEFAULT_MAX_PAYLOAD)
    }

    /// Appends one frame and returns its seq, dropping the oldest frames as the bounds require.
    /// Heartbeats are not history and are refused.
    pub fn append(&mut self, kind: FrameKind, payload: &[u8]) -> Result<u64, RingError> {
        if !kind.is_sequenced() {
            return Err(RingError::NotHistory(kind as u8));
        }
        if payload.len() > self.max_payload() {
            return Err(RingError::TooLarge {
                len: payload.len(),
                max: self.max_payload(),
            });
        }
        let start = self.arena_base + self.arena.len() as u64;
        self.arena.extend_from_slice(payload);
        self.entries.push_back(Entry {
            start,
            len: payload.len() as u32,
            kind,
        });
        self.payload_bytes += payload.len();
        if self.entries.len() > self.max_frames || self.payload_bytes > self.max_bytes {
            self.evict();
        }
        Ok(self.last_seq())
    }

    fn evict(&mut self) {
        while self.entries.len() > self.max_frames || self.payload_bytes > self.max_bytes {
            let Some(old) = self.entries.pop_front() else { break };
            self.payload_bytes -= old.len as usize;
            self.first_seq += 1;
        }
        let live_start = self
            .entries
            .front()
            .map_or(self.arena_base + self.arena.len() as u64, |e| e.start);
        let dead = (live_start - self.arena_base) as usize;
        if dead >= COMPACT_MIN && dead * 2 >= self.arena.len() {
            self.arena.drain(..dead);
            self.arena_base = live_start;
            // Give memory back when the arena is far larger than what it holds.
            if self.arena.capacity() > 4 * self.arena.len().max(COMPACT_MIN) {
                self.arena.shrink_to(2 * self.arena.len().max(COMPACT_MIN));
            }
        }
    }

    #[inline]
    fn payload(&self, e: &Entry) -> &[u8] {
        let from = (e.start - self.arena_base) as usize;
        &self.arena[from..from + e.len as usize]
    }

    /// Index of the first entry after `after`, or the reason there is none to give.
    fn start_index(&self, after: u64) -> Result<usize, RingError> {
        let last = self.last_seq();
        if after > last {
            return Err(RingError::Future {
                requested: after,
                last_seq: last,
            });
        }
        if after + 1 < self.first_seq {
            return Err(RingError::Expired {
                requested: after,
                oldest_seq: self.first_seq,
            });
        }
        Ok((after + 1 - self.first_seq) as usize)
    }

    /// Appends every frame after `after` to `out` in `wire` format; returns how many.
    pub fn since(&self, after: u64, wire: Wire, out: &mut Vec<u8>) -> Result<usize, RingError> {
        let from = self.start_index(after)?;
        let mut seq = after;
        for e in self.entries.range(from..) {
            seq += 1;
            let payload = self.payload(e);
            match wire {
                Wire::Sse => {
                    // Payloads entered as &str; the arena holds them byte for byte (UTF-8 already).
                    sse::write_seq_event(out, &self.id_prefix, seq, Some(e.kind.sse_event()), payload);
                }
                Wire::Binary => {
                    // seq <= 2^62-1 in any ring that could exist, so this cannot fail.
                    let _ = frame::encode(out, e.kind, seq, payload);
                }
            }
        }
        Ok(self.entries.len() - from)
    }

    /// Payload bytes of the frames held after seq `after` (everything held when `after` has expired, none
    /// when it is the newest): how far a reader at `after` is behind, in bytes.
    pub fn bytes_after(&self, after: u64) -> usize {
        let from = match self.start_index(after) {
            Ok(i) => i,
            Err(RingError::Expired { .. }) => 0,
            Err(_) => return 0,
        };
        match self.entries.get(from) {
            Some(e) => {
                let end = self.arena_base + self.arena.len() as u64;
                usize::try_from(end - e.start).unwrap_or(usize::MAX)
            }
            None => 0,
        }
    }

    /// Every frame after `after` as `(kind, seq, payload)`.
    pub fn frames_since(&self, after: u64) -> Result<Vec<(FrameKind, u64, &str)>, RingError> {
        let from = self.start_index(after)?;
        Ok(self
            .entries
            .range(from..)
            .enumerate()
            .map(|(i, e)| {
                (
                    e.kind,
                    after + 1 + i as u64,
                    std::str::from_utf8(self.payload(e)).unwrap_or_default(),
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bytes_after_counts_the_payload_a_reader_has_not_taken() {
        let mut r = Ring::new("s:e:".into(), 3, 1 << 20);
        assert_eq!(r.bytes_after(0), 0);
        for p in ["ab", "cde", "f"] {
            r.append(FrameKind::Token, p.as_bytes()).unwrap();
        }
        assert_eq!(r.bytes_after(0), 6);
        assert_eq!(r.bytes_after(1), 4);
        assert_eq!(r.bytes_after(3), 0);
        assert_eq!(r.bytes_after(9), 0);
        r.append(FrameKind::Token, b"gh").unwrap(); // drops "ab": a reader at 0 has expired
        assert_eq!(r.bytes_after(0), 6);
        assert_eq!(r.bytes_after(2), 3);
    }

    use super::*;

    fn ring(max_frames: usize, max_bytes: usize) -> Ring {
        Ring::new("s:e:".into(), max_frames, max_bytes)
    }

    #[test]
    fn seqs_start_at_one_and_since_renders_both_wires() {
        let mut r = ring(10, 1000);
        assert_eq!(r.last_seq(), 0);
        assert_eq!(r.append(FrameKind::Token, b"a").unwrap(), 1);
        assert_eq!(r.append(FrameKind::Token, b"b\nc").unwrap(), 2);
        let mut out = Vec::new();
        assert_eq!(r.since(0, Wire::Sse, &mut out).unwrap(), 2);
        assert_eq!(
            out,
            b"event: token\ndata: a\nid: s:e:1\n\nevent: token\ndata: b\ndata: c\nid: s:e:2\n\n"
        );
        let mut out = Vec::new();
        assert_eq!(r.since(1, Wire::Binary, &mut out).unwrap(), 1);
        assert_eq!(out, [1, 2, 3, b'b', b'\n', b'c']);
        let mut out = Vec::new();
        assert_eq!(r.since(2, Wire::Binary, &mut out).unwrap(), 0);
    }

    #[test]
    fn future_and_expired() {
        let mut r = ring(3, 1000);
        for _ in 0..5 {
            r.append(FrameKind::Token, b"x").unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(
            r.since(6, Wire::Sse, &mut out),
            Err(RingError::Future {
                requested: 6,
                last_seq: 5
            })
        );
        assert_eq!(
            r.since(1, Wire::Sse, &mut out),
            Err(RingError::Expired {
                requested: 1,
                oldest_seq: 3
            })
        );
        assert_eq!(r.since(2, Wire::Sse, &mut out).unwrap(), 3);
        assert_eq!(r.oldest_seq(), 3);
    }

    #[test]
    fn byte_bound_and_too_large() {
        let mut r = ring(1000, 10);
        r.append(FrameKind::Token, b"12345").unwrap();
        r.append(FrameKind::Token, b"12345").unwrap();
        assert_eq!(r.len(), 2);
        r.append(FrameKind::Token, b"1").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.payload_bytes(), 6);
        assert_eq!(
            r.append(FrameKind::Token, &[b'x'; 11]),
            Err(RingError::TooLarge { len: 11, max: 10 })
        );
        assert_eq!(r.last_seq(), 3);
        assert_eq!(r.append(FrameKind::Heartbeat, b""), Err(RingError::NotHistory(4)));
        let mut big = ring(10, 100 << 20);
        assert_eq!(big.max_payload(), frame::DEFAULT_MAX_PAYLOAD);
        assert!(big
            .append(FrameKind::Token, &vec![b'x'; frame::DEFAULT_MAX_PAYLOAD + 1])
            .is_err());
    }

    #[test]
    fn memory_stays_bounded_over_many_appends() {
        let mut r = ring(100, 10_000);
        let payload = [b'y'; 50];
        for _ in 0..200_000 {
            r.append(FrameKind::Token, &payload).unwrap();
        }
        assert!(r.memory_bytes() < 64 * 1024, "{}", r.memory_bytes());
        let frames = r.frames_since(r.last_seq() - 3).unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].1, 200_000);
        assert_eq!(frames[0].2.len(), 50);
    }
}
