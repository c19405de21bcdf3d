//! Hub bookkeeping: every stream's ring and state, a global memory cap, and a time-to-live after a stream
//! ends so that late reconnects can still resume.
//!
//! Rules:
//! - A stream is `Open` until it is finished, failed or cancelled; its final frame (`done` or `error`) is
//!   appended to its ring, so a client that resumes after the end still learns how it ended.
//! - An ended stream stays resumable for `ttl` seconds after it ended; [`Registry::sweep`] removes it then.
//! - When the total memory passes the cap, ended streams are evicted oldest-ended first. An open stream's
//!   frames are never dropped for the cap: its own ring bounds apply (and a resume point they pushed out
//!   is answered "expired" with the oldest seq held, never served a gap). If only open streams hold the
//!   memory, [`Registry::create`] refuses new streams with [`RegistryError::Full`].
//! - A stream created with a known length ([`Registry::create_reserved`]) is charged, while it is open, the
//!   most its ring can hold by its end ([`Ring::memory_bound`]), not what it holds so far: a start whose
//!   eventual bytes would pass the cap is refused at once (`Full`, a 503), instead of every open stream
//!   growing past the cap later. Its end charges what the ring holds (final frame included) and gives the
//!   unused part of the reservation back; ended streams are evictable as ever.
//! - Handles carry a generation, so a handle to a removed stream never reaches the stream that reuses
//!   its slot.
//!
//! Time is an argument (seconds, any monotonic clock); this module never reads a clock.

use std::collections::{HashMap, VecDeque};

use crate::error::RegistryError;
use crate::frame::FrameKind;
use crate::ring::{Ring, Wire};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum StreamState {
    Open = 0,
    Finished = 1,
    Failed = 2,
    Cancelled = 3,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Finished => "finished",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Open),
            1 => Some(Self::Finished),
            2 => Some(Self::Failed),
            3 => Some(Self::Cancelled),
            _ => None,
        }
    }
}

/// Limits of a registry.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_frames_per_stream: usize,
    pub max_bytes_per_stream: usize,
    pub max_total_bytes: usize,
    /// Seconds an ended stream stays resumable.
    pub ttl: f64,
}

/// The defaults of [`Limits`] (also the defaults of the Python constructors).
pub const DEFAULT_MAX_FRAMES_PER_STREAM: usize = 65_536;
pub const DEFAULT_MAX_BYTES_PER_STREAM: usize = 8 << 20;
pub const DEFAULT_MAX_TOTAL_BYTES: usize = 1 << 30;
pub const DEFAULT_TTL: f64 = 300.0;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frames_per_stream: DEFAULT_MAX_FRAMES_PER_STREAM,
            max_bytes_per_stream: DEFAULT_MAX_BYTES_PER_STREAM,
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            ttl: DEFAULT_TTL,
        }
    }
}

#[derive(Debug)]
struct Stream {
    key: String,
    ring: Ring,
    state: StreamState,
    mem: usize,
    /// Bytes charged for the ring while the stream is open (0: charge what it holds).
    reserve: usize,
    /// Appends put the handle on the registry's dirty list (a storage that ships new frames elsewhere).
    tracked: bool,
    /// On the dirty list now.
    dirty: bool,
}

impl Stream {
    fn measure(&self) -> usize {
        self.ring.memory_bytes().max(self.reserve) + self.key.capacity() + std::mem::size_of::<Slot>()
    }
}

#[derive(Debug, Default)]
struct Slot {
    generation: u32,
    stream: Option<Stream>,
}

/// An opaque stream handle: slot index in the low 32 bits, slot generation in the high 32.
pub type Handle = u64;

#[derive(Debug, Default)]
pub struct Registry {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_key: HashMap<String, Handle>,
    /// Ended streams in the order they ended (may hold handles already removed).
    ended: VecDeque<(f64, Handle)>,
    total_mem: usize,
    limits: Limits,
    evicted: Vec<String>,
    /// Tracked streams appended to since the last [`Registry::take_dirty`].
    dirty: Vec<Handle>,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Streams held, open or ended.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Bytes accounted to all streams.
    pub fn memory_bytes(&self) -> usize {
        self.total_mem
    }

    pub fn lookup(&self, key: &str) -> Option<Handle> {
        self.by_key.get(key).copied()
    }

    /// Registers a new open stream. `id_prefix` must already be a valid SSE id.
    pub fn create(&mut self, key: &str, id_prefix: String) -> Result<Handle, RegistryError> {
        self.create_reserved(key, id_prefix, 0, 0)
    }

    /// [`Self::create_reserved`] with where seqs start (`first_seq`, 1 for a new stream; a copy of another
    /// node's stream starts where the copied history does) and whether appends mark it dirty (`tracked`).
    pub fn create_with(
        &mut self,
        key: &str,
        id_prefix: String,
        frames: u64,
        frame_bytes: usize,
        first_seq: u64,
        tracked: bool,
    ) -> Result<Handle, RegistryError> {
        let handle = self.create_reserved(key, id_prefix, frames, frame_bytes)?;
        let limits = self.limits;
        let stream = self.get_mut(handle)?;
        if first_seq > 1 {
            stream.ring = Ring::starting_at(
                stream.ring.id_prefix().to_owned(),
                limits.max_frames_per_stream,
                limits.max_bytes_per_stream,
                first_seq,
            );
        }
        stream.tracked = tracked;
        Ok(handle)
    }

    /// The tracked streams appended to (or ended) since the last call, each once, in first-append order.
    pub fn take_dirty(&mut self) -> Vec<Handle> {
        let handles = std::mem::take(&mut self.dirty);
        for &h in &handles {
            if let Ok(stream) = self.get_mut(h) {
                stream.dirty = false;
            }
        }
        handles
    }

    /// Registers a new open stream that will carry at most `frames` tokens of at most `frame_bytes` bytes,
    /// charged at the most its ring can hold by then while it is open; `frames` 0:
    /// no reservation, as [`Self::create`]. `Full` if that charge does not fit below the cap.
    pub fn create_reserved(
        &mut self,
        key: &str,
        id_prefix: String,
        frames: u64,
        frame_bytes: usize,
    ) -> Result<Handle, RegistryError> {
        if self.by_key.contains_key(key) {
            return Err(RegistryError::Duplicate(key.to_owned()));
        }
        let ring = Ring::new(
            id_prefix,
            self.limits.max_frames_per_stream,
            self.limits.max_bytes_per_stream,
        );
        let reserve = if frames == 0 {
            0
        } else {
            ring.memory_bound(frames, frame_bytes)
        };
        let cap = self.limits.max_total_bytes;
        if self.total_mem.saturating_add(reserve) >= cap {
            // Make room below the cap (not merely down to it) for the new stream.
            self.evict_ended(cap.saturating_sub(reserve).saturating_sub(1));
            if self.total_mem.saturating_add(reserve) >= cap {
                return Err(RegistryError::Full {
                    used: self.total_mem.saturating_add(reserve),
                    cap,
                });
            }
        }
        let mut stream = Stream {
            key: key.to_owned(),
            ring,
            state: StreamState::Open,
            mem: 0,
            reserve,
            tracked: false,
            dirty: false,
        };
        stream.mem = stream.measure();
        self.total_mem += stream.mem;
        let index = if let Some(i) = self.free.pop() {
            i
        } else {
            self.slots.push(Slot::default());
            (self.slots.len() - 1) as u32
        };
        let slot = &mut self.slots[index as usize];
        slot.stream = Some(stream);
        let handle = (u64::from(slot.generation) << 32) | u64::from(index);
        self.by_key.insert(key.to_owned(), handle);
        Ok(handle)
    }

    /// The slot index of a live handle: in range, same generation, holding a stream.
    fn slot_index(&self, handle: Handle) -> Result<usize, RegistryError> {
        let index = (handle & 0xffff_ffff) as usize;
        match self.slots.get(index) {
            Some(slot) if u64::from(slot.generation) == handle >> 32 && slot.stream.is_some() => Ok(index),
            _ => Err(RegistryError::NotFound),
        }
    }

    fn get(&self, handle: Handle) -> Result<&Stream, RegistryError> {
        let index = self.slot_index(handle)?;
        self.slots[index].stream.as_ref().ok_or(RegistryError::NotFound)
    }

    fn get_mut(&mut self, handle: Handle) -> Result<&mut Stream, RegistryError> {
        let index = self.slot_index(handle)?;
        self.slots[index].stream.as_mut().ok_or(RegistryError::NotFound)
    }

    pub fn key(&self, handle: Handle) -> Result<&str, RegistryError> {
        Ok(&self.get(handle)?.key)
    }

    pub fn state(&self, handle: Handle) -> Result<StreamState, RegistryError> {
        Ok(self.get(handle)?.state)
    }

    pub fn last_seq(&self, handle: Handle) -> Result<u64, RegistryError> {
        Ok(self.get(handle)?.ring.last_seq())
    }

    pub fn oldest_seq(&self, handle: Handle) -> Result<u64, RegistryError> {
        Ok(self.get(handle)?.ring.oldest_seq())
    }

    /// Payload bytes held after seq `after` ([`Ring::bytes_after`]).
    pub fn bytes_after(&self, handle: Handle, after: u64) -> Result<usize, RegistryError> {
        Ok(self.get(handle)?.ring.bytes_after(after))
    }

    /// Appends frames to an open stream; returns the seq of the last one (the current last seq if none).
    pub fn append<'a>(
        &mut self,
        handle: Handle,
        kind: FrameKind,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<u64, RegistryError> {
        let stream = self.get_mut(handle)?;
        if stream.state != StreamState::Open {
            return Err(RegistryError::Closed(stream.state));
        }
        let newly_dirty = stream.tracked && !stream.dirty;
        stream.dirty |= stream.tracked;
        let mut result = Ok(stream.ring.last_seq());
        for p in payloads {
            match stream.ring.append(kind, p) {
                Ok(seq) => result = Ok(seq),
                Err(e) => {
                    result = Err(e.into());
                    break;
                }
            }
        }
        let (old, new) = (stream.mem, stream.measure());
        stream.mem = new;
        self.total_mem = self.total_mem + new - old;
        if newly_dirty {
            self.dirty.push(handle);
        }
        if self.total_mem > self.limits.max_total_bytes {
            self.evict_ended(self.limits.max_total_bytes);
        }
        result
    }

    /// Ends an open stream with its final frame (`Done` or `Error`); returns that frame's seq.
    pub fn end(
        &mut self,
        handle: Handle,
        kind: FrameKind,
        payload: &[u8],
        state: StreamState,
        now: f64,
    ) -> Result<u64, RegistryError> {
        let seq = self.append(handle, kind, [payload])?;
        let stream = self.get_mut(handle)?;
        stream.state = state;
        // Give back what the reservation held beyond the ring's bytes.
        stream.reserve = 0;
        let (old, new) = (stream.mem, stream.measure());
        stream.mem = new;
        self.total_mem = self.total_mem + new - old;
        self.ended.push_back((now, handle));
        Ok(seq)
    }

    /// Appends every frame after `after` in `wire` format to `out`; returns how many.
    pub fn since(&self, handle: Handle, after: u64, wire: Wire, out: &mut Vec<u8>) -> Result<usize, RegistryError> {
        Ok(self.get(handle)?.ring.since(after, wire, out)?)
    }

    /// What a stream connection needs per flush, in one call: frames after `after` appended to `out` in
    /// `wire` format (nothing if none), the last seq, and whether the stream has ended.
    pub fn poll(
        &self,
        handle: Handle,
        after: u64,
        wire: Wire,
        out: &mut Vec<u8>,
    ) -> Result<(u64, bool), RegistryError> {
        let stream = self.get(handle)?;
        let last = stream.ring.last_seq();
        if last > after {
            stream.ring.since(after, wire, out)?;
        }
        Ok((last, stream.state != StreamState::Open))
    }

    pub fn frames_since(&self, handle: Handle, after: u64) -> Result<Vec<(FrameKind, u64, &str)>, RegistryError> {
        Ok(self.get(handle)?.ring.frames_since(after)?)
    }

    /// Removes a stream now, whatever its state; returns its key.
    pub fn remove(&mut self, handle: Handle) -> Result<String, RegistryError> {
        let index = self.slot_index(handle)?;
        let slot = &mut self.slots[index];
        let stream = slot.stream.take().ok_or(RegistryError::NotFound)?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(index as u32);
        self.total_mem -= stream.mem;
        self.by_key.remove(&stream.key);
        Ok(stream.key)
    }

    /// Evicts ended streams, oldest-ended first, until at most `target` bytes are held or none is left.
    fn evict_ended(&mut self, target: usize) {
        while self.total_mem > target && self.drop_oldest_ended() {}
    }

    /// Removes the oldest ended stream (if still held) and records its key; false when none is left.
    fn drop_oldest_ended(&mut self) -> bool {
        let Some((_, handle)) = self.ended.pop_front() else {
            return false;
        };
        if let Ok(key) = self.remove(handle) {
            self.evicted.push(key);
        }
        true
    }

    /// Removes ended streams whose time-to-live has run out at `now`; returns the keys of every stream
    /// removed since the last sweep (expired here, or evicted for the memory cap).
    pub fn sweep(&mut self, now: f64) -> Vec<String> {
        while let Some(&(ended_at, _)) = self.ended.front() {
            if ended_at + self.limits.ttl > now {
                break;
            }
            self.drop_oldest_ended();
        }
        std::mem::take(&mut self.evicted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_frames_per_stream: 100,
            max_bytes_per_stream: 10_000,
            max_total_bytes: 50_000,
            ttl: 10.0,
        }
    }

    #[test]
    fn tracked_streams_go_on_the_dirty_list_once_and_copies_start_at_their_seq() {
        let mut reg = Registry::new(limits());
        let own = reg.create_with("own", "own:e:".into(), 0, 0, 1, true).unwrap();
        let copy = reg.create_with("copy", "copy:e:".into(), 0, 0, 40, false).unwrap();
        reg.append(own, FrameKind::Token, [&b"a"[..], b"b"]).unwrap();
        reg.append(own, FrameKind::Token, [&b"c"[..]]).unwrap();
        assert_eq!(reg.append(copy, FrameKind::Token, [&b"x"[..]]).unwrap(), 40);
        assert_eq!(reg.oldest_seq(copy).unwrap(), 40);
        assert_eq!(reg.take_dirty(), vec![own]);
        assert!(reg.take_dirty().is_empty());
        reg.end(own, FrameKind::Done, b"{}", StreamState::Finished, 0.0)
            .unwrap();
        assert_eq!(reg.take_dirty(), vec![own]);
        reg.remove(own).unwrap();
        assert!(reg.take_dirty().is_empty());
    }

    #[test]
    fn lifecycle_and_ttl() {
        let mut r = Registry::new(limits());
        let h = r.create("a", "a:e:".into()).unwrap();
        assert_eq!(r.append(h, FrameKind::Token, [&b"x"[..], b"y"]).unwrap(), 2);
        assert_eq!(
            r.end(h, FrameKind::Done, b"{}", StreamState::Finished, 100.0).unwrap(),
            3
        );
        assert_eq!(
            r.append(h, FrameKind::Token, [&b"z"[..]]),
            Err(RegistryError::Closed(StreamState::Finished))
        );
        assert_eq!(r.state(h).unwrap(), StreamState::Finished);
        assert!(r.sweep(109.9).is_empty());
        let mut out = Vec::new();
        assert_eq!(r.since(h, 0, Wire::Binary, &mut out).unwrap(), 3);
        let mut polled = Vec::new();
        assert_eq!(r.poll(h, 3, Wire::Binary, &mut polled).unwrap(), (3, true));
        assert!(polled.is_empty());
        assert_eq!(r.poll(h, 0, Wire::Binary, &mut polled).unwrap(), (3, true));
        assert_eq!(polled, out);
        assert_eq!(r.sweep(110.0), vec!["a".to_string()]);
        assert_eq!(r.last_seq(h), Err(RegistryError::NotFound));
        assert_eq!(r.memory_bytes(), 0);
    }

    #[test]
    fn stale_handles_never_reach_a_reused_slot() {
        let mut r = Registry::new(limits());
        let a = r.create("a", "a:e:".into()).unwrap();
        r.remove(a).unwrap();
        let b = r.create("b", "b:e:".into()).unwrap();
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff);
        assert_eq!(r.append(a, FrameKind::Token, [&b"x"[..]]), Err(RegistryError::NotFound));
        assert_eq!(r.last_seq(b).unwrap(), 0);
        assert_eq!(r.create("b", "b:e:".into()), Err(RegistryError::Duplicate("b".into())));
    }

    #[test]
    fn cap_evicts_ended_first_and_never_open() {
        let mut r = Registry::new(limits());
        let big = [b'x'; 1000];
        let mut handles = Vec::new();
        let mut now = 0.0;
        // Fill with ended streams.
        loop {
            let key = format!("s{}", handles.len());
            let Ok(h) = r.create(&key, format!("{key}:e:")) else {
                break;
            };
            r.append(h, FrameKind::Token, std::iter::repeat_n(&big[..], 9)).unwrap();
            now += 1.0;
            r.end(h, FrameKind::Done, b"{}", StreamState::Finished, now).unwrap();
            handles.push(h);
            if handles.len() == 20 {
                break;
            }
        }
        assert!(r.memory_bytes() <= limits().max_total_bytes + 20_000);
        // The oldest ended streams were evicted to make room; the newest is still there.
        assert!(r.last_seq(handles[0]).is_err());
        assert_eq!(r.last_seq(*handles.last().unwrap()).unwrap(), 10);
        let evicted = r.sweep(now);
        assert!(evicted.contains(&"s0".to_string()));

        // Open streams fill the cap: they keep every frame their ring allows, and new streams are refused.
        let mut r = Registry::new(limits());
        let mut open = Vec::new();
        let full = loop {
            match r.create(&format!("o{}", open.len()), "o:e:".into()) {
                Ok(h) => {
                    r.append(h, FrameKind::Token, std::iter::repeat_n(&big[..], 9)).unwrap();
                    open.push(h);
                }
                Err(e) => break e,
            }
        };
        assert!(matches!(full, RegistryError::Full { .. }));
        for h in &open {
            assert_eq!(r.oldest_seq(*h).unwrap(), 1);
            assert_eq!(r.last_seq(*h).unwrap(), 9);
        }
    }

    #[test]
    fn reservations_count_against_the_cap_until_the_end() {
        let mut r = Registry::new(limits());
        // Charged what 5,000 frames of 40 bytes could hold (the ring keeps 100 of them): over half the cap.
        let a = r.create_reserved("a", "a:e:".into(), 5_000, 40).unwrap();
        let charged = r.memory_bytes();
        assert!(charged > limits().max_total_bytes / 2, "{charged}");
        // Frames within the reservation do not add to the charge.
        r.append(a, FrameKind::Token, std::iter::repeat_n(&[b'x'; 40][..], 300))
            .unwrap();
        assert_eq!(r.memory_bytes(), charged);
        // A second one would pass the cap: refused before anything is held.
        assert!(matches!(
            r.create_reserved("b", "b:e:".into(), 5_000, 40),
            Err(RegistryError::Full { .. })
        ));
        assert_eq!(r.memory_bytes(), charged);
        assert!(r.lookup("b").is_none());
        // A short one fits, and so does a stream without a reservation.
        let small = r.create_reserved("s", "s:e:".into(), 64, 12).unwrap();
        let plain = r.create("p", "p:e:".into()).unwrap();
        r.remove(small).unwrap();
        r.remove(plain).unwrap();
        // The end charges what the ring holds and gives the rest back; then the second fits.
        r.end(a, FrameKind::Done, b"{}", StreamState::Finished, 1.0).unwrap();
        assert!(r.memory_bytes() < charged, "{} {charged}", r.memory_bytes());
        r.create_reserved("b", "b:e:".into(), 5_000, 40).unwrap();
    }

    #[test]
    fn memory_bound_holds_for_any_append_pattern() {
        for (frames, size) in [
            (1_u64, 1_usize),
            (7, 3),
            (99, 37),
            (100, 100),
            (101, 5),
            (1_000, 7),
            (3_000, 64),
        ] {
            let mut ring = Ring::new("x:e:".into(), 100, 10_000);
            let bound = ring.memory_bound(frames, size);
            let payload = vec![b'y'; size];
            let mut peak = ring.memory_bytes();
            for _ in 0..frames {
                ring.append(FrameKind::Token, &payload).unwrap();
                peak = peak.max(ring.memory_bytes());
            }
            assert!(
                peak <= bound,
                "frames {frames} size {size}: peak {peak} > bound {bound}"
            );
        }
    }
}
