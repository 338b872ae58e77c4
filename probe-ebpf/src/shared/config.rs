//! Run-time choices (mode, filter), written by userspace at load time. Like the layout, a
//! constant to the verifier: a trace without a filter carries no filter code in its paths.

use probe_common::Config;

#[unsafe(no_mangle)]
static CONFIG: Config = Config::DEFAULT;

/// Reads one configuration entry. Volatile, so the compiler cannot fold in the default.
#[inline(always)]
pub fn get<F: Copy + 'static>(field: impl FnOnce(&'static Config) -> &'static F) -> F {
    // SAFETY: CONFIG is a plain static; the reference is valid for the program's life.
    unsafe { core::ptr::read_volatile(field(&CONFIG)) }
}
