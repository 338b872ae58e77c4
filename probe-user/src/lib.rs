//! probe: an eBPF datapath observer for container hosts.
//!
//! Data flows one way: kernel sighting → ring buffer → [`decode`] → [`event`] → [`render`].
//! Loading and attaching live in [`ebpf`] and [`tc`]; [`trace`] ties them together.

pub mod btf;
pub mod decode;
pub mod discover;
pub mod docker;
pub mod doctor;
pub mod ebpf;
pub mod event;
pub mod filter;
pub mod iface;
pub mod kfunc;
pub mod latency;
pub mod layout;
pub mod names;
pub mod netns;
pub mod nftrace;
pub mod packet;
pub mod poll;
pub mod privileges;
pub mod record;
pub mod render;
pub mod replay;
pub mod rtnl;
pub mod signals;
pub mod tc;
pub mod timeline;
pub mod trace;
pub mod tracefs;
pub mod tracepoints;
pub mod watch;
