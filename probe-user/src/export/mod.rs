//! Sending what the pipeline produced to engines elsewhere: OpenTelemetry traces over
//! OTLP/HTTP (`--otlp`). The conversion of timelines into spans is the pipeline's
//! (`probe_pipeline::otlp`); here are the bounded queue, the batching thread and a small
//! HTTP/1.1 client (plain `http://`, no TLS, so the static musl build stays free of C).

pub mod http;
pub mod otlp;

pub use otlp::{Exporter, OtlpOptions, Report};
