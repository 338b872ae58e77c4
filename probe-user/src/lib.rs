//! probe: an eBPF datapath observer for container hosts.
//!
//! Data flows one way: kernel sighting → ring buffer → the pipeline (probe-pipeline: decode,
//! filter, correlate, diagnose, record, render). This crate is the part that needs the kernel:
//! [`kernel`] facts read once per start, the observation [`points`] that attach programs,
//! [`host`] knowledge (interfaces, namespaces, Docker), the [`session`] every attaching
//! command starts with, and the [`cmd`]s themselves.

pub mod cmd;
pub mod host;
pub mod kernel;
pub mod points;
pub mod session;
