//! The attach points: one module per kernel function or tracepoint family, each holding the
//! programs userspace attaches there. An entry is a thin `#[classifier]`/`#[tracepoint]`/
//! `#[kprobe]`/... function around the module's work; what the modules share is in
//! [`crate::shared`].

pub mod bridge;
pub mod chain;
pub mod drop;
pub mod fib;
pub mod fib_rules;
pub mod netif;
pub mod nf;
pub mod qdisc;
pub mod route_input;
pub mod tc;
