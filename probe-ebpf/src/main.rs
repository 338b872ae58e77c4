//! probe's kernel programs. One module per attach point; shared maps and packet parsing beside them.
#![no_std]
#![no_main]

mod chain;
mod config;
mod drop;
mod fib;
mod fib_rules;
mod filter;
mod latency;
mod layout;
mod maps;
mod nf;
mod packet;
mod skb;
mod tc;

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
