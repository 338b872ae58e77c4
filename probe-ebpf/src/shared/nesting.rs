//! Entry/exit pairs that nest. A kretprobe (or fexit) pairs with its entry by a key the exit
//! can rebuild: the task and CPU, or the skb. Netfilter calls nest under that same key: with
//! br_netfilter, the bridge's hook runs the IPv4 hooks from inside its own `nf_hook_slow` (and
//! its chains' `nft_do_chain`), on the same task, CPU and skb. Keying entries by the call's
//! depth as well keeps the outer entry from being overwritten by the inner one, so both calls
//! report their own verdict.

use aya_ebpf::{macros::map, maps::LruHashMap};

/// An entry's key: the pairing key and how deep the call is under it.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Level {
    id: u64,
    depth: u64,
}

/// Calls deeper than this share the deepest slot (netfilter nests two deep in practice).
const MAX_DEPTH: u64 = 7;

/// Open calls per pairing key. LRU: a call whose exit never came cannot pin an entry.
#[map(name = "NESTING")]
static NESTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(8192, 0);

/// A call begins: the key of its entry, one level below the calls open under `id`.
#[inline(always)]
pub fn enter(id: u64) -> Level {
    let depth = match NESTING.get_ptr_mut(&id) {
        Some(open) => {
            // SAFETY: map value pointer; only this task on this CPU uses this key.
            let open = unsafe { &mut *open };
            let d = *open;
            *open = (d + 1).min(MAX_DEPTH + 1);
            d.min(MAX_DEPTH)
        }
        None => {
            let _ = NESTING.insert(&id, &1, 0);
            0
        }
    };
    Level { id, depth }
}

/// The innermost call under `id` returns: the key of its entry.
#[inline(always)]
pub fn leave(id: u64) -> Option<Level> {
    let open = NESTING.get_ptr_mut(&id)?;
    // SAFETY: as in `enter`.
    let open = unsafe { &mut *open };
    if *open == 0 {
        return None;
    }
    *open -= 1;
    let depth = (*open).min(MAX_DEPTH);
    if *open == 0 {
        let _ = NESTING.remove(&id);
    }
    Some(Level { id, depth })
}
