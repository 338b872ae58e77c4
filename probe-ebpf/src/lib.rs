//! Host-side stand-in for the eBPF crate: the real programs are the `probe` binary target, built
//! for `bpfel-unknown-none`. This empty library lets probe-user name the crate as a
//! build-dependency, so cargo rebuilds the embedded object when the programs change.
#![no_std]
