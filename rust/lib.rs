//! tokenwire's wire core: SSE and binary token framing, resume rings and the stream registry.
//!
//! Everything here is plain Rust over bytes, strings and integers: no Python types, no I/O, no clock.
//! The Python extension (`tokenwire._core`) is the `py` module, built only with the `python` feature.

pub mod error;
pub mod frame;
pub mod h3;
pub mod quic;
pub mod registry;
pub mod ring;
pub mod sse;
pub mod sse_parse;
pub mod tracker;
pub mod varint;

#[cfg(feature = "python")]
mod py;
