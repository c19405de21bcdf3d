//! The one door between Python and the core: argument conversion and error mapping only.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

use crate::error::{FrameError, RegistryError, RingError};
use crate::frame::{self, Decoder, FrameKind};
use crate::registry::{
    Limits, Registry, StreamState, DEFAULT_MAX_BYTES_PER_STREAM, DEFAULT_MAX_FRAMES_PER_STREAM,
    DEFAULT_MAX_TOTAL_BYTES, DEFAULT_TTL,
};
use crate::ring::{Ring, Wire};
use crate::{sse, varint};

/// The classes of `tokenwire.errors`, raised from here.
mod exc {
    pyo3::import_exception!(tokenwire.errors, LocalProtocolError);
    pyo3::import_exception!(tokenwire.errors, FrameError);
    pyo3::import_exception!(tokenwire.errors, ResumeExpired);
    pyo3::import_exception!(tokenwire.errors, ResumeFromFuture);
    pyo3::import_exception!(tokenwire.errors, StreamNotFound);
    pyo3::import_exception!(tokenwire.errors, StreamClosed);
    pyo3::import_exception!(tokenwire.errors, HubFull);
    pyo3::import_exception!(tokenwire.errors, RemoteProtocolError);
}
use exc::{HubFull, LocalProtocolError, ResumeExpired, ResumeFromFuture, StreamClosed, StreamNotFound};

/// Output above this size is rendered with the GIL released.
const DETACH_BYTES: usize = 256 * 1024;

/// Errors of what this side encodes (SSE fields, frames, varints) are this side's fault.
fn local(e: impl std::fmt::Display) -> PyErr {
    LocalProtocolError::new_err(e.to_string())
}

fn ring_err(e: RingError) -> PyErr {
    match e {
        RingError::Expired { oldest_seq, .. } => ResumeExpired::new_err((e.to_string(), oldest_seq)),
        RingError::Future { last_seq, .. } => ResumeFromFuture::new_err((e.to_string(), last_seq)),
        RingError::TooLarge { .. } | RingError::NotHistory(_) => local(e),
    }
}

fn registry_err(e: RegistryError) -> PyErr {
    match e {
        RegistryError::NotFound => StreamNotFound::new_err(e.to_string()),
        RegistryError::Duplicate(_) => local(e),
        RegistryError::Full { .. } => HubFull::new_err(e.to_string()),
        RegistryError::Closed(_) => StreamClosed::new_err(e.to_string()),
        RegistryError::Ring(r) => ring_err(r),
    }
}

fn kind_arg(kind: u8) -> PyResult<FrameKind> {
    FrameKind::from_u8(kind).map_err(|e| local(&e))
}

fn wire_arg(wire: u8) -> PyResult<Wire> {
    match wire {
        0 => Ok(Wire::Sse),
        1 => Ok(Wire::Binary),
        _ => Err(PyValueError::new_err(format!(
            "unknown wire format {wire} (WIRE_SSE=0, WIRE_BINARY=1)"
        ))),
    }
}

/// Calls `f` with each string of a list (fast path) or any other sequence/iterable of `str`.
fn for_each_str(texts: &Bound<'_, PyAny>, mut f: impl FnMut(&str) -> PyResult<()>) -> PyResult<()> {
    if let Ok(list) = texts.cast::<PyList>() {
        for item in list.iter() {
            f(item.cast::<PyString>()?.to_str()?)?;
        }
    } else {
        for item in texts.try_iter()? {
            f(item?.cast::<PyString>()?.to_str()?)?;
        }
    }
    Ok(())
}

fn frames_to_list<'py>(py: Python<'py>, frames: Vec<(FrameKind, u64, &str)>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, frames.into_iter().map(|(k, s, p)| (k as u8, s, p)))
}

#[pyfunction]
fn encode_varint(py: Python<'_>, value: u64) -> PyResult<Bound<'_, PyBytes>> {
    let mut out = Vec::with_capacity(8);
    varint::encode(value, &mut out).map_err(local)?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn decode_varint(data: &[u8]) -> Option<(u64, usize)> {
    varint::decode(data)
}

#[pyfunction]
#[pyo3(signature = (data, *, id=None, event=None))]
fn sse_event<'py>(py: Python<'py>, data: &str, id: Option<&str>, event: Option<&str>) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(data.len() + 32);
    sse::write_event(&mut out, id, event, data).map_err(local)?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
#[pyo3(signature = (text=""))]
fn sse_comment<'py>(py: Python<'py>, text: &str) -> Bound<'py, PyBytes> {
    let mut out = Vec::with_capacity(text.len() + 4);
    sse::write_comment(&mut out, text);
    PyBytes::new(py, &out)
}

#[pyfunction]
fn sse_retry(py: Python<'_>, retry_ms: u64) -> Bound<'_, PyBytes> {
    let mut out = Vec::with_capacity(32);
    sse::write_retry(&mut out, retry_ms);
    PyBytes::new(py, &out)
}

#[pyfunction]
#[pyo3(signature = (tokens, *, id_prefix, first_seq, event=Some("token")))]
fn sse_batch<'py>(
    py: Python<'py>,
    tokens: &Bound<'py, PyAny>,
    id_prefix: &str,
    first_seq: u64,
    event: Option<&str>,
) -> PyResult<Bound<'py, PyBytes>> {
    sse::check_id(id_prefix).map_err(local)?;
    if let Some(event) = event {
        sse::check_event(event).map_err(local)?;
    }
    let mut out = Vec::with_capacity(4096);
    let mut seq = first_seq;
    for_each_str(tokens, |t| {
        // Seqs are the binary wire's varints too: the same bound holds on both wires.
        if seq > varint::MAX {
            return Err(local(FrameError::VarintOverflow(seq)));
        }
        sse::write_seq_event(&mut out, id_prefix, seq, event, t.as_bytes());
        seq += 1;
        Ok(())
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn encode_frame<'py>(py: Python<'py>, kind: u8, seq: u64, payload: &str) -> PyResult<Bound<'py, PyBytes>> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    frame::encode(&mut out, kind_arg(kind)?, seq, payload.as_bytes()).map_err(local)?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn encode_frames<'py>(
    py: Python<'py>,
    kind: u8,
    first_seq: u64,
    payloads: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyBytes>> {
    let kind = kind_arg(kind)?;
    let mut out = Vec::with_capacity(4096);
    let mut seq = first_seq;
    for_each_str(payloads, |p| {
        frame::encode(&mut out, kind, seq, p.as_bytes()).map_err(local)?;
        seq += 1;
        Ok(())
    })?;
    Ok(PyBytes::new(py, &out))
}

#[pyclass(name = "FrameDecoder", module = "tokenwire._core")]
struct PyFrameDecoder {
    inner: Decoder,
}

#[pymethods]
impl PyFrameDecoder {
    #[new]
    #[pyo3(signature = (max_payload=frame::DEFAULT_MAX_PAYLOAD))]
    fn py_new(max_payload: usize) -> Self {
        Self {
            inner: Decoder::new(max_payload),
        }
    }

    #[pyo3(name = "feed")]
    fn py_feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let mut frames = Vec::new();
        let result = self.inner.feed_with(data, |kind, seq, payload| {
            frames.push((kind as u8, seq, PyString::new(py, payload)));
        });
        if let Err(e) = result {
            // Frames before the error are delivered; the (poisoned) decoder raises on the next call.
            if frames.is_empty() {
                return Err(exc::FrameError::new_err(e.to_string()));
            }
        }
        PyList::new(py, frames)
    }

    #[pyo3(name = "close")]
    fn py_close(&self) -> PyResult<()> {
        self.inner.finish().map_err(|e| exc::FrameError::new_err(e.to_string()))
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

#[pyclass(name = "Ring", module = "tokenwire._core")]
struct PyRing {
    inner: Ring,
}

#[pymethods]
impl PyRing {
    #[new]
    #[pyo3(signature = (id_prefix="", *, max_frames=DEFAULT_MAX_FRAMES_PER_STREAM, max_bytes=DEFAULT_MAX_BYTES_PER_STREAM))]
    fn py_new(id_prefix: &str, max_frames: usize, max_bytes: usize) -> PyResult<Self> {
        sse::check_id(id_prefix).map_err(local)?;
        Ok(Self {
            inner: Ring::new(id_prefix.to_owned(), max_frames, max_bytes),
        })
    }

    #[pyo3(name = "append", signature = (text, kind=FrameKind::Token as u8))]
    fn py_append(&mut self, text: &str, kind: u8) -> PyResult<u64> {
        self.inner.append(kind_arg(kind)?, text.as_bytes()).map_err(ring_err)
    }

    #[pyo3(name = "append_many", signature = (texts, kind=FrameKind::Token as u8))]
    fn py_append_many(&mut self, texts: &Bound<'_, PyAny>, kind: u8) -> PyResult<u64> {
        let kind = kind_arg(kind)?;
        let mut last = self.inner.last_seq();
        for_each_str(texts, |t| {
            last = self.inner.append(kind, t.as_bytes()).map_err(ring_err)?;
            Ok(())
        })?;
        Ok(last)
    }

    #[pyo3(name = "since", signature = (after, wire=0))]
    fn py_since<'py>(&self, py: Python<'py>, after: u64, wire: u8) -> PyResult<Bound<'py, PyBytes>> {
        let wire = wire_arg(wire)?;
        let mut out = Vec::new();
        let ring = &self.inner;
        if ring.payload_bytes() >= DETACH_BYTES {
            py.detach(|| ring.since(after, wire, &mut out)).map_err(ring_err)?;
        } else {
            ring.since(after, wire, &mut out).map_err(ring_err)?;
        }
        Ok(PyBytes::new(py, &out))
    }

    #[pyo3(name = "frames_since")]
    fn py_frames_since<'py>(&self, py: Python<'py>, after: u64) -> PyResult<Bound<'py, PyList>> {
        frames_to_list(py, self.inner.frames_since(after).map_err(ring_err)?)
    }

    #[getter]
    fn last_seq(&self) -> u64 {
        self.inner.last_seq()
    }

    #[getter]
    fn oldest_seq(&self) -> u64 {
        self.inner.oldest_seq()
    }

    #[getter]
    fn payload_bytes(&self) -> usize {
        self.inner.payload_bytes()
    }

    #[getter]
    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

#[pyclass(name = "Registry", module = "tokenwire._core")]
struct PyRegistry {
    inner: Registry,
}

#[pymethods]
impl PyRegistry {
    #[new]
    #[pyo3(signature = (
        *,
        max_frames_per_stream=DEFAULT_MAX_FRAMES_PER_STREAM,
        max_bytes_per_stream=DEFAULT_MAX_BYTES_PER_STREAM,
        max_total_bytes=DEFAULT_MAX_TOTAL_BYTES,
        ttl=DEFAULT_TTL,
    ))]
    fn py_new(max_frames_per_stream: usize, max_bytes_per_stream: usize, max_total_bytes: usize, ttl: f64) -> Self {
        let limits = Limits {
            max_frames_per_stream,
            max_bytes_per_stream,
            max_total_bytes,
            ttl,
        };
        Self {
            inner: Registry::new(limits),
        }
    }

    #[pyo3(name = "create", signature = (key, id_prefix, frames = 0, frame_bytes = 0, *, first_seq = 1, tracked = false))]
    fn py_create(
        &mut self,
        key: &str,
        id_prefix: &str,
        frames: u64,
        frame_bytes: usize,
        first_seq: u64,
        tracked: bool,
    ) -> PyResult<u64> {
        sse::check_id(id_prefix).map_err(local)?;
        self.inner
            .create_with(key, id_prefix.to_owned(), frames, frame_bytes, first_seq, tracked)
            .map_err(registry_err)
    }

    #[pyo3(name = "take_dirty")]
    fn py_take_dirty(&mut self) -> Vec<u64> {
        self.inner.take_dirty()
    }

    #[pyo3(name = "lookup")]
    fn py_lookup(&self, key: &str) -> Option<u64> {
        self.inner.lookup(key)
    }

    #[pyo3(name = "append")]
    fn py_append(&mut self, handle: u64, text: &str) -> PyResult<u64> {
        self.inner
            .append(handle, FrameKind::Token, [text.as_bytes()])
            .map_err(registry_err)
    }

    #[pyo3(name = "append_many")]
    fn py_append_many(&mut self, handle: u64, texts: &Bound<'_, PyAny>) -> PyResult<u64> {
        // Collect borrowed slices first: the registry appends them in one call.
        let mut strs: Vec<Bound<'_, PyString>> = Vec::new();
        if let Ok(list) = texts.cast::<PyList>() {
            for item in list.iter() {
                strs.push(item.cast_into::<PyString>()?);
            }
        } else {
            for item in texts.try_iter()? {
                strs.push(item?.cast_into::<PyString>()?);
            }
        }
        let slices = strs
            .iter()
            .map(|s| s.to_str().map(str::as_bytes))
            .collect::<PyResult<Vec<&[u8]>>>()?;
        self.inner
            .append(handle, FrameKind::Token, slices)
            .map_err(registry_err)
    }

    #[pyo3(name = "end")]
    fn py_end(&mut self, handle: u64, kind: u8, payload: &str, state: u8, now: f64) -> PyResult<u64> {
        let kind = kind_arg(kind)?;
        if !matches!(kind, FrameKind::Done | FrameKind::Error) {
            return Err(local("a stream ends with a FRAME_DONE or FRAME_ERROR frame"));
        }
        let state = match StreamState::from_u8(state) {
            Some(s) if s != StreamState::Open => s,
            _ => {
                return Err(local(
                    "end state must be STATE_FINISHED, STATE_FAILED or STATE_CANCELLED",
                ))
            }
        };
        self.inner
            .end(handle, kind, payload.as_bytes(), state, now)
            .map_err(registry_err)
    }

    #[pyo3(name = "since", signature = (handle, after, wire=0))]
    fn py_since<'py>(&self, py: Python<'py>, handle: u64, after: u64, wire: u8) -> PyResult<Bound<'py, PyBytes>> {
        let wire = wire_arg(wire)?;
        let mut out = Vec::new();
        self.inner.since(handle, after, wire, &mut out).map_err(registry_err)?;
        Ok(PyBytes::new(py, &out))
    }

    #[pyo3(name = "poll", signature = (handle, after, wire=0))]
    fn py_poll<'py>(
        &self,
        py: Python<'py>,
        handle: u64,
        after: u64,
        wire: u8,
    ) -> PyResult<(Bound<'py, PyBytes>, u64, bool)> {
        let wire = wire_arg(wire)?;
        let mut out = Vec::new();
        let (last, ended) = self.inner.poll(handle, after, wire, &mut out).map_err(registry_err)?;
        Ok((PyBytes::new(py, &out), last, ended))
    }

    #[pyo3(name = "frames_since")]
    fn py_frames_since<'py>(&self, py: Python<'py>, handle: u64, after: u64) -> PyResult<Bound<'py, PyList>> {
        frames_to_list(py, self.inner.frames_since(handle, after).map_err(registry_err)?)
    }

    #[pyo3(name = "last_seq")]
    fn py_last_seq(&self, handle: u64) -> PyResult<u64> {
        self.inner.last_seq(handle).map_err(registry_err)
    }

    #[pyo3(name = "oldest_seq")]
    fn py_oldest_seq(&self, handle: u64) -> PyResult<u64> {
        self.inner.oldest_seq(handle).map_err(registry_err)
    }

    #[pyo3(name = "bytes_after")]
    fn py_bytes_after(&self, handle: u64, after: u64) -> PyResult<usize> {
        self.inner.bytes_after(handle, after).map_err(registry_err)
    }

    #[pyo3(name = "state")]
    fn py_state(&self, handle: u64) -> PyResult<u8> {
        self.inner.state(handle).map(|s| s as u8).map_err(registry_err)
    }

    #[pyo3(name = "key")]
    fn py_key(&self, handle: u64) -> PyResult<String> {
        self.inner.key(handle).map(str::to_owned).map_err(registry_err)
    }

    #[pyo3(name = "remove")]
    fn py_remove(&mut self, handle: u64) -> PyResult<String> {
        self.inner.remove(handle).map_err(registry_err)
    }

    #[pyo3(name = "sweep")]
    fn py_sweep(&mut self, now: f64) -> Vec<String> {
        self.inner.sweep(now)
    }

    #[getter]
    fn memory_bytes(&self) -> usize {
        self.inner.memory_bytes()
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }
}

// -- SSE client side: decoder, stream tracker, lag histogram (rust/sse_parse.rs, rust/tracker.rs) ------

use crate::error::{SseParseError, TrackerError};
use crate::sse_parse::{SseParser, DEFAULT_MAX_EVENT_BYTES};
use crate::tracker::{LagHistogram, Tracker};

impl From<SseParseError> for PyErr {
    fn from(e: SseParseError) -> Self {
        match e {
            SseParseError::Closed => local(e),
            SseParseError::Oversized { .. } => exc::RemoteProtocolError::new_err(e.to_string()),
        }
    }
}

fn tracker_err(e: TrackerError) -> PyErr {
    match e {
        TrackerError::Parse(p) => p.into(),
        TrackerError::BadId { .. } => exc::RemoteProtocolError::new_err(e.to_string()),
    }
}

#[pyclass(name = "SseDecoder", module = "tokenwire._core")]
struct PySseDecoder {
    inner: SseParser,
}

#[pymethods]
impl PySseDecoder {
    #[new]
    #[pyo3(signature = (max_event_bytes=DEFAULT_MAX_EVENT_BYTES))]
    fn py_new(max_event_bytes: usize) -> Self {
        Self {
            inner: SseParser::new(max_event_bytes),
        }
    }

    #[pyo3(name = "feed")]
    fn py_feed<'py>(&mut self, py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        let result = self.inner.feed_with(data, |ev| {
            list.append((ev.last_event_id, ev.event_type, ev.data).into_pyobject(py)?)
        });
        match result {
            // Events before a parse error are delivered; the (poisoned) decoder raises on the next call.
            Err(_) if self.inner.error().is_some() && !list.is_empty() => Ok(list),
            Err(e) => Err(e),
            Ok(()) => Ok(list),
        }
    }

    #[pyo3(name = "close")]
    fn py_close(&mut self) -> PyResult<()> {
        Ok(self.inner.close()?)
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.inner.retry()
    }

    #[getter]
    fn last_event_id(&self) -> &str {
        self.inner.last_event_id()
    }

    #[getter]
    fn buffered(&self) -> usize {
        self.inner.buffered()
    }
}

#[pyclass(name = "LagHistogram", module = "tokenwire._core")]
#[derive(Default)]
struct PyLagHistogram {
    inner: LagHistogram,
}

fn seconds(us: f64) -> f64 {
    us / 1e6
}

#[pymethods]
impl PyLagHistogram {
    #[new]
    fn py_new() -> Self {
        Self::default()
    }

    #[pyo3(name = "record")]
    fn py_record(&mut self, lag_us: u64) {
        self.inner.record(lag_us);
    }

    #[pyo3(name = "merge")]
    fn py_merge(slf: &Bound<'_, Self>, other: &Bound<'_, Self>) {
        let copy = other.borrow().inner.clone(); // `other` may be `slf`
        slf.borrow_mut().inner.merge(&copy);
    }

    #[pyo3(name = "percentiles")]
    fn py_percentiles(&self, percentiles: Vec<f64>) -> PyResult<Vec<f64>> {
        percentiles_of(&self.inner, percentiles)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.inner.count()
    }

    #[getter]
    #[allow(clippy::cast_precision_loss)]
    fn max(&self) -> f64 {
        if self.inner.count() == 0 {
            f64::NAN
        } else {
            seconds(self.inner.max() as f64)
        }
    }

    #[getter]
    fn mean(&self) -> f64 {
        self.inner.mean().map_or(f64::NAN, seconds)
    }
}

fn percentiles_of(h: &LagHistogram, ps: Vec<f64>) -> PyResult<Vec<f64>> {
    ps.into_iter()
        .map(|p| {
            if !(0.0..=100.0).contains(&p) {
                return Err(PyValueError::new_err(format!("percentile {p} is outside 0..=100")));
            }
            Ok(h.percentile(p).map_or(f64::NAN, seconds))
        })
        .collect()
}

#[pyclass(name = "StreamTracker", module = "tokenwire._core")]
struct PyStreamTracker {
    inner: Tracker,
    lag: Py<PyLagHistogram>,
}

#[pymethods]
impl PyStreamTracker {
    #[new]
    #[pyo3(signature = (*, max_event_bytes=DEFAULT_MAX_EVENT_BYTES, lag=None))]
    fn py_new(py: Python<'_>, max_event_bytes: usize, lag: Option<Py<PyLagHistogram>>) -> PyResult<Self> {
        let lag = match lag {
            Some(lag) => lag,
            None => Py::new(py, PyLagHistogram::default())?,
        };
        Ok(Self {
            inner: Tracker::new(max_event_bytes),
            lag,
        })
    }

    #[pyo3(name = "feed", signature = (data, now_us=0))]
    fn py_feed(&mut self, py: Python<'_>, data: &[u8], now_us: u64) -> PyResult<u64> {
        let mut lag = self.lag.bind(py).try_borrow_mut()?;
        self.inner.feed_into(data, now_us, &mut lag.inner).map_err(tracker_err)
    }

    #[pyo3(name = "new_response")]
    fn py_new_response(&mut self) {
        self.inner.new_response();
    }

    #[pyo3(name = "lag_percentiles")]
    fn py_lag_percentiles(&self, py: Python<'_>, percentiles: Vec<f64>) -> PyResult<Vec<f64>> {
        percentiles_of(&self.lag.bind(py).try_borrow()?.inner, percentiles)
    }

    #[getter]
    fn lag(&self, py: Python<'_>) -> Py<PyLagHistogram> {
        self.lag.clone_ref(py)
    }

    /// Record the lags of later feeds in another histogram (a load tester's per-interval one); the lags
    /// already recorded stay where they are.
    #[setter(lag)]
    fn py_set_lag(&mut self, lag: Py<PyLagHistogram>) {
        self.lag = lag;
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.inner.progress().tokens
    }

    #[getter]
    fn duplicates(&self) -> u64 {
        self.inner.progress().duplicates
    }

    #[getter]
    fn lost(&self) -> u64 {
        self.inner.progress().lost
    }

    #[getter]
    fn last_seq(&self) -> u64 {
        self.inner.progress().last_seq
    }

    #[getter]
    fn last_event_id(&self) -> &str {
        &self.inner.progress().last_event_id
    }

    #[getter]
    fn done(&self) -> bool {
        self.inner.progress().done
    }

    #[getter]
    fn done_data(&self) -> Option<&str> {
        self.inner.progress().done_data.as_deref()
    }

    #[getter]
    fn error(&self) -> Option<&str> {
        self.inner.progress().error.as_deref()
    }

    #[getter]
    fn content_hash(&self) -> u64 {
        self.inner.progress().content_hash
    }

    #[getter]
    fn lag_count(&self) -> u64 {
        self.inner.progress().lag_count
    }

    #[getter]
    fn first_token_at_us(&self) -> Option<u64> {
        self.inner.progress().first_token_at_us
    }

    #[getter]
    fn retry(&self) -> Option<u64> {
        self.inner.retry()
    }
}

#[pyfunction]
fn fnv1a64(text: &str) -> u64 {
    crate::tracker::fnv1a64(text.as_bytes())
}

// -- The native QUIC engine (rust/quic) ------------------------------------------------------------------

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyBlockingIOError;
use pyo3::types::{PyDict, PyTuple};

use crate::quic::tls::{self, Trust};
use crate::quic::{Config as QuicConfig, Driver, DriverError, EngineError, Event as QuicEvent, FlushItem};

fn engine_err(e: EngineError) -> PyErr {
    match e {
        EngineError::NoConnection(_) | EngineError::StreamClosed(_) => StreamClosed::new_err(e.to_string()),
        EngineError::StreamsExhausted => PyBlockingIOError::new_err(e.to_string()),
        EngineError::Invalid(_) | EngineError::WrongSide(_) => local(e),
    }
}

/// The first address of `host:port` (an IP literal, or a name resolved now: this may block on DNS), of the
/// family of `like` when given.
fn resolve(host: &str, port: u16, like: Option<SocketAddr>) -> PyResult<SocketAddr> {
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| PyValueError::new_err(format!("cannot resolve {host}:{port}: {e}")))?;
    let mut first = None;
    for addr in addrs {
        if like.is_none_or(|l| l.is_ipv4() == addr.is_ipv4()) {
            return Ok(addr);
        }
        first.get_or_insert(addr);
    }
    first.ok_or_else(|| PyValueError::new_err(format!("{host}:{port} has no address")))
}

fn seconds_arg(name: &str, secs: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| PyValueError::new_err(format!("{name} must be seconds >= 0")))
}

/// One engine event as the tuple the contract names (`("data", conn, stream_id, bytes, fin)`, ...).
fn event_tuple(py: Python<'_>, event: QuicEvent) -> PyResult<Bound<'_, PyTuple>> {
    let tag = |name: &'static str| pyo3::types::PyString::intern(py, name);
    Ok(match event {
        QuicEvent::Connected { conn, peer } => {
            (tag("connected"), conn, peer.ip().to_string(), peer.port()).into_pyobject(py)?
        }
        QuicEvent::Handshake { conn } => (tag("handshake"), conn).into_pyobject(py)?,
        QuicEvent::Settings { conn, settings } => {
            let dict = PyDict::new(py);
            for (k, v) in settings {
                dict.set_item(k, v)?;
            }
            (tag("settings"), conn, dict).into_pyobject(py)?
        }
        QuicEvent::Headers {
            conn,
            stream_id,
            headers,
            fin,
        } => {
            let list = PyList::new(
                py,
                headers.iter().map(|(n, v)| (PyBytes::new(py, n), PyBytes::new(py, v))),
            )?;
            (tag("headers"), conn, stream_id, list, fin).into_pyobject(py)?
        }
        QuicEvent::Data {
            conn,
            stream_id,
            data,
            fin,
        } => (tag("data"), conn, stream_id, PyBytes::new(py, &data), fin).into_pyobject(py)?,
        QuicEvent::WtStream {
            conn,
            stream_id,
            session_id,
            data,
            fin,
        } => (
            tag("wt_stream"),
            conn,
            stream_id,
            session_id,
            PyBytes::new(py, &data),
            fin,
        )
            .into_pyobject(py)?,
        QuicEvent::Datagram {
            conn,
            session_id,
            payload,
        } => (tag("datagram"), conn, session_id, PyBytes::new(py, &payload)).into_pyobject(py)?,
        QuicEvent::GoAway { conn, id } => (tag("goaway"), conn, id).into_pyobject(py)?,
        QuicEvent::Reset { conn, stream_id, code } => (tag("reset"), conn, stream_id, code).into_pyobject(py)?,
        QuicEvent::StopSending { conn, stream_id, code } => {
            (tag("stop_sending"), conn, stream_id, code).into_pyobject(py)?
        }
        QuicEvent::Writable { conn, stream_id } => (tag("writable"), conn, stream_id).into_pyobject(py)?,
        QuicEvent::Closed { conn, code, reason } => (tag("closed"), conn, code, reason).into_pyobject(py)?,
    })
}

#[pyclass(name = "QuicEngine", module = "tokenwire._core")]
struct PyQuicEngine {
    inner: Driver,
}

#[pymethods]
impl PyQuicEngine {
    #[new]
    #[pyo3(signature = (
        *,
        server,
        host,
        port,
        h3_settings,
        cert_chain_pem=None,
        key_pem=None,
        server_cert_hashes=None,
        ca_pem=None,
        alpn=None,
        idle_timeout=30.0,
        keepalive=None,
        ack_frequency=None,
        max_bidi_streams=1024,
        stream_window=1_048_576,
        conn_window=16_777_216,
        session_tickets=10_000,
        early_data=true,
        stream_send_window=None,
        max_pending_datagrams=None,
        reuse_port=false,
        socket_buffer=4_194_304,
        endpoint_key=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn py_new(
        server: bool,
        host: &str,
        port: u16,
        h3_settings: &Bound<'_, PyDict>,
        cert_chain_pem: Option<&[u8]>,
        key_pem: Option<&[u8]>,
        server_cert_hashes: Option<Vec<Vec<u8>>>,
        ca_pem: Option<&[u8]>,
        alpn: Option<Vec<Vec<u8>>>,
        idle_timeout: f64,
        keepalive: Option<f64>,
        ack_frequency: Option<(u32, f64)>,
        max_bidi_streams: u64,
        stream_window: u64,
        conn_window: u64,
        session_tickets: usize,
        early_data: bool,
        stream_send_window: Option<u64>,
        max_pending_datagrams: Option<usize>,
        reuse_port: bool,
        socket_buffer: usize,
        endpoint_key: Option<Vec<u8>>,
    ) -> PyResult<Self> {
        if endpoint_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(local("endpoint_key must be a secret of at least 16 bytes"));
        }
        if stream_send_window == Some(0) {
            return Err(local("stream_send_window must be at least 1 byte"));
        }
        let alpn = alpn.unwrap_or_else(|| vec![b"h3".to_vec()]);
        let mut settings = Vec::with_capacity(h3_settings.len());
        for (k, v) in h3_settings.iter() {
            settings.push((k.extract::<u64>()?, v.extract::<u64>()?));
        }
        let mut config = QuicConfig {
            server: None,
            client: None,
            h3_settings: settings,
            idle_timeout: seconds_arg("idle_timeout", idle_timeout)?,
            keepalive: keepalive.map(|k| seconds_arg("keepalive", k)).transpose()?,
            ack_frequency: ack_frequency
                .map(|(threshold, delay)| Ok::<_, PyErr>((threshold, seconds_arg("ack_frequency delay", delay)?)))
                .transpose()?,
            max_bidi_streams,
            stream_window,
            conn_window,
            stream_send_window,
            max_pending_datagrams,
            endpoint_key,
        };
        if server {
            let (Some(chain), Some(key)) = (cert_chain_pem, key_pem) else {
                return Err(local("a server engine needs cert_chain_pem and key_pem"));
            };
            config.server = Some(Arc::new(
                tls::server_config(chain, key, &alpn, session_tickets).map_err(local)?,
            ));
        } else {
            let trust = match (server_cert_hashes, ca_pem) {
                (Some(hashes), None) => {
                    let hashes = hashes
                        .into_iter()
                        .map(|h| <[u8; 32]>::try_from(h.as_slice()))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|_| local("a server certificate hash is 32 bytes (SHA-256)"))?;
                    Trust::Hashes(hashes)
                }
                (None, Some(pem)) => Trust::Ca(pem.to_vec()),
                _ => {
                    return Err(local(
                        "a client engine needs server_cert_hashes or ca_pem (one of them)",
                    ))
                }
            };
            config.client = Some(Arc::new(tls::client_config(&trust, &alpn, early_data).map_err(local)?));
        }
        let bind = resolve(host, port, None)?;
        let inner = Driver::with_socket_buffer(config, bind, reuse_port, socket_buffer).map_err(|e| match e {
            DriverError::Io(io) => PyErr::from(io),
            DriverError::Engine(e) => engine_err(e),
        })?;
        Ok(Self { inner })
    }

    fn fileno(&self) -> i32 {
        self.inner.fd()
    }

    #[getter]
    fn local_address(&self) -> PyResult<(String, u16)> {
        let addr = self.inner.local_addr()?;
        Ok((addr.ip().to_string(), addr.port()))
    }

    /// One wake-up: drain the socket, run due timers, advance HTTP/3, send; every event of the batch.
    fn poll_io<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let events = self.inner.poll_io();
        let list = PyList::empty(py);
        for event in events {
            list.append(event_tuple(py, event)?)?;
        }
        Ok(list)
    }

    fn next_timeout(&self) -> Option<f64> {
        self.inner.next_timeout().map(|d| d.as_secs_f64())
    }

    #[allow(clippy::needless_pass_by_value)] // PyO3 hands extracted arguments over by value
    fn send_headers(&mut self, conn: u64, stream_id: u64, headers: Vec<(Vec<u8>, Vec<u8>)>, fin: bool) -> PyResult<()> {
        let fields: Vec<(&[u8], &[u8])> = headers.iter().map(|(n, v)| (n.as_slice(), v.as_slice())).collect();
        self.inner
            .engine()
            .send_headers(conn, stream_id, &fields, fin)
            .map_err(engine_err)
    }

    fn send_data(&mut self, conn: u64, stream_id: u64, data: &[u8], fin: bool) -> PyResult<usize> {
        self.inner
            .engine()
            .send_data(conn, stream_id, data, fin)
            .map_err(engine_err)
    }

    fn reset_stream(&mut self, conn: u64, stream_id: u64, code: u64) -> PyResult<()> {
        self.inner
            .engine()
            .reset_stream(conn, stream_id, code)
            .map_err(engine_err)
    }

    fn stop_sending(&mut self, conn: u64, stream_id: u64, code: u64) -> PyResult<()> {
        self.inner
            .engine()
            .stop_sending(conn, stream_id, code)
            .map_err(engine_err)
    }

    /// The address connection `conn` sends to now (after a migration, the new one).
    fn peer_address(&mut self, conn: u64) -> PyResult<(String, u16)> {
        let addr = self.inner.engine().peer_address(conn).map_err(engine_err)?;
        Ok((addr.ip().to_string(), addr.port()))
    }

    fn send_datagram(&mut self, conn: u64, session_id: u64, payload: &[u8]) -> PyResult<bool> {
        self.inner
            .engine()
            .send_datagram(conn, session_id, payload)
            .map_err(engine_err)
    }

    /// With `max_pending_datagrams`: drop each connection's oldest waiting datagrams beyond it; the datagrams
    /// dropped since the last call.
    fn trim_datagrams(&mut self) -> u64 {
        self.inner.engine().trim_datagrams()
    }

    /// Datagrams of `conn` not sent yet (0 without `max_pending_datagrams`).
    fn pending_datagrams(&mut self, conn: u64) -> PyResult<usize> {
        self.inner.engine().pending_datagrams(conn).map_err(engine_err)
    }

    fn close(&mut self, conn: u64, code: u64, reason: &[u8]) -> PyResult<()> {
        self.inner
            .engine()
            .close(Instant::now(), conn, code, reason)
            .map_err(engine_err)
    }

    fn close_all(&mut self, code: u64, reason: &[u8]) {
        self.inner.engine().close_all(Instant::now(), code, reason);
    }

    /// Per item `(conn, stream_id, handle, after, prefix)`: the registry's binary frames after `after`,
    /// behind `prefix`, into the stream (FIN after the final frame), sending as it goes (every 64 items at a
    /// connection boundary, and at the end). Returns per item `(conn, stream_id, new_after, status)`.
    #[allow(clippy::needless_pass_by_value)] // PyO3 hands extracted arguments over by value
    fn flush(
        &mut self,
        registry: &Bound<'_, PyRegistry>,
        batch: Vec<(u64, u64, u64, u64, Bound<'_, PyBytes>)>,
    ) -> PyResult<Vec<(u64, u64, u64, u8)>> {
        let registry = registry.try_borrow()?;
        let items: Vec<FlushItem<'_>> = batch
            .iter()
            .map(|(conn, stream_id, handle, after, prefix)| FlushItem {
                conn: *conn,
                stream_id: *stream_id,
                handle: *handle,
                after: *after,
                prefix: prefix.as_bytes(),
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        self.inner.flush(&registry.inner, &items, &mut out);
        Ok(items
            .iter()
            .zip(out)
            .map(|(item, (after, status))| (item.conn, item.stream_id, after, status as u8))
            .collect())
    }

    fn transmit(&mut self) {
        self.inner.transmit();
    }

    /// Client: a new connection to `host:port` (an IP, or a name resolved now), TLS server name
    /// `server_name`; `("connected", ...)` comes when its handshake completes.
    fn connect(&mut self, host: &str, port: u16, server_name: &str) -> PyResult<u64> {
        let remote = resolve(host, port, self.inner.local_addr().ok())?;
        let conn = self
            .inner
            .engine()
            .connect(Instant::now(), remote, server_name)
            .map_err(engine_err)?;
        self.inner.transmit();
        Ok(conn)
    }

    /// Moves to a new UDP socket on `host:port` (0: a free port): every connection follows (migration). The
    /// file descriptor changes: take the old one off the event loop first, watch `fileno()` after.
    fn rebind(&mut self, host: &str, port: u16) -> PyResult<()> {
        let bind = resolve(host, port, self.inner.local_addr().ok())?;
        Ok(self.inner.rebind(bind)?)
    }

    /// 0-RTT on connection `conn`: `(offered, accepted)` (see the stub).
    fn early_data(&mut self, conn: u64) -> PyResult<(bool, bool)> {
        self.inner.engine().early_data(conn).map_err(engine_err)
    }

    fn open_bidi(&mut self, conn: u64) -> PyResult<u64> {
        self.inner.engine().open_bidi(conn).map_err(engine_err)
    }

    fn open_wt_stream(&mut self, conn: u64, session_id: u64) -> PyResult<u64> {
        self.inner.engine().open_wt_stream(conn, session_id).map_err(engine_err)
    }

    /// Bytes every `flush` has written into streams (prefixes and frames), since the start: what a server
    /// adds to its write metrics after each flush (one call, not one per stream).
    #[getter]
    fn flushed_bytes(&self) -> u64 {
        self.inner.flushed_bytes()
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.inner.stats();
        let dict = PyDict::new(py);
        for (name, value) in [
            ("packets_in", s.io.packets_in),
            ("bytes_in", s.io.bytes_in),
            ("packets_out", s.io.packets_out),
            ("bytes_out", s.io.bytes_out),
            ("recv_calls", s.io.recv_calls),
            ("send_calls", s.io.send_calls),
            ("send_dropped", s.io.send_dropped),
            ("send_errors", s.io.send_errors),
            ("lost_packets", s.lost_packets),
            ("connections", s.connections),
            ("connections_accepted", s.engine.connections_accepted),
            ("connections_refused", s.engine.connections_refused),
            ("datagrams_dropped", s.engine.datagrams_dropped),
            ("wakeups", s.wakeups),
            ("gso_segments", s.gso_segments),
            ("recv_buffer", s.recv_buffer),
            ("send_buffer", s.send_buffer),
            ("early_data_accepted", s.early_data_accepted),
            ("early_data_rejected", s.early_data_rejected),
        ] {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }
}

#[pymodule(gil_used = false)]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("FRAME_TOKEN", FrameKind::Token as u8)?;
    m.add("FRAME_DONE", FrameKind::Done as u8)?;
    m.add("FRAME_ERROR", FrameKind::Error as u8)?;
    m.add("FRAME_HEARTBEAT", FrameKind::Heartbeat as u8)?;
    m.add("WIRE_SSE", 0u8)?;
    m.add("WIRE_BINARY", 1u8)?;
    m.add("STATE_OPEN", StreamState::Open as u8)?;
    m.add("STATE_FINISHED", StreamState::Finished as u8)?;
    m.add("STATE_FAILED", StreamState::Failed as u8)?;
    m.add("STATE_CANCELLED", StreamState::Cancelled as u8)?;
    m.add("MAX_VARINT", varint::MAX)?;
    m.add("DEFAULT_MAX_PAYLOAD", frame::DEFAULT_MAX_PAYLOAD)?;
    m.add_function(wrap_pyfunction!(encode_varint, m)?)?;
    m.add_function(wrap_pyfunction!(decode_varint, m)?)?;
    m.add_function(wrap_pyfunction!(sse_event, m)?)?;
    m.add_function(wrap_pyfunction!(sse_comment, m)?)?;
    m.add_function(wrap_pyfunction!(sse_retry, m)?)?;
    m.add_function(wrap_pyfunction!(sse_batch, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frame, m)?)?;
    m.add_function(wrap_pyfunction!(encode_frames, m)?)?;
    m.add_class::<PyFrameDecoder>()?;
    m.add_class::<PyRing>()?;
    m.add_class::<PyRegistry>()?;
    m.add("DEFAULT_MAX_EVENT_BYTES", DEFAULT_MAX_EVENT_BYTES)?;
    m.add_function(wrap_pyfunction!(fnv1a64, m)?)?;
    m.add_class::<PySseDecoder>()?;
    m.add_class::<PyLagHistogram>()?;
    m.add_class::<PyStreamTracker>()?;
    m.add_class::<PyQuicEngine>()?;
    m.add("FLUSH_OK", crate::quic::FlushStatus::Ok as u8)?;
    m.add("FLUSH_ENDED", crate::quic::FlushStatus::Ended as u8)?;
    m.add("FLUSH_PAUSED", crate::quic::FlushStatus::Paused as u8)?;
    m.add("FLUSH_EXPIRED", crate::quic::FlushStatus::Expired as u8)?;
    m.add("FLUSH_GONE", crate::quic::FlushStatus::Gone as u8)?;
    m.add("FLUSH_STREAM_CLOSED", crate::quic::FlushStatus::StreamClosed as u8)?;
    Ok(())
}
