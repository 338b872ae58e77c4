//! probe's kernel programs. `points` holds one module per attach point (tc, drop, fib,
//! fib_rules, nf, chain), each with its program entries; `shared` holds what they share: maps,
//! configuration and kernel-layout globals, packet and skb parsing, the filter, latency mode.
#![no_std]
#![no_main]

mod points;
mod shared;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction (the verifier rejects programs that could get here), but the
    // target needs a handler.
    loop {}
}

/// The eBPF license section: GPL, so the programs may call GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
