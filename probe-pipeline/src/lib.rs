//! probe's event pipeline: everything after the ring buffer. Decoded events, packet identity,
//! the filter, the correlator that joins sightings into journeys, their diagnosis, the host's
//! topology, recordings, and the renderers. It knows nothing of eBPF, the kernel or an async
//! runtime (no aya, tokio or libc), so a recording is replayed with this crate alone.
//!
//! Data flows one way: bytes → [`decode`] → [`event::Event`] → [`sink::Sink`] (filter,
//! [`timeline::Correlator`], [`record`]) → [`render`].

pub mod addr;
pub mod bounded;
pub mod decode;
pub mod event;
pub mod filter;
pub mod host;
pub mod identity;
pub mod knowledge;
pub mod names;
pub mod otlp;
pub mod packet;
pub mod pcapng;
pub mod record;
pub mod render;
pub mod schema;
pub mod sink;
pub mod timeline;
pub mod topology;
pub mod tuple;

/// Serializes a probe-common struct into bytes the way the kernel writes it (tests only).
#[cfg(test)]
pub(crate) fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: only called with probe-common's #[repr(C)] event types: plain integers and
    // arrays with explicit padding fields, so every byte is initialised.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}
