//! The embedded kernel programs: loading them and reading their shared maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use probe_common::{KernelLayout, LAYOUT_GLOBAL, counter, names};
use thiserror::Error;

/// The compiled probe-ebpf object, built by build.rs and embedded so `probe` runs on its own.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingBufSize(u32),
    #[error("cannot load the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("the eBPF object has no map {0}")]
    MissingMap(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
}

/// Checks a ring buffer size before anything touches the kernel.
pub fn check_ringbuf_size(bytes: u32) -> Result<(), LoadError> {
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(LoadError::RingBufSize(bytes));
    }
    Ok(())
}

/// Loads the object with this kernel's layout (maps created, programs not yet loaded).
pub fn load(ringbuf_bytes: u32, layout: &KernelLayout) -> Result<Ebpf, LoadError> {
    check_ringbuf_size(ringbuf_bytes)?;
    raise_memlock_limit();
    Ok(EbpfLoader::new()
        .map_max_entries(names::EVENTS_MAP, ringbuf_bytes)
        .override_global(LAYOUT_GLOBAL, layout, true)
        .load(OBJECT)?)
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so maps can be created.
/// Later kernels ignore the limit, so failure here is not an error.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Takes the event ring buffer out of the object.
pub fn take_events(ebpf: &mut Ebpf) -> Result<RingBuf<MapData>, LoadError> {
    let map = ebpf
        .take_map(names::EVENTS_MAP)
        .ok_or(LoadError::MissingMap(names::EVENTS_MAP))?;
    RingBuf::try_from(map).map_err(|source| LoadError::Map {
        name: names::EVENTS_MAP,
        source,
    })
}

/// The programs' per-CPU counters, summed over CPUs.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterValues {
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Packets seen by tc classifiers.
    pub tc_seen: u64,
}

impl Counters {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, LoadError> {
        let map = ebpf
            .take_map(names::COUNTERS_MAP)
            .ok_or(LoadError::MissingMap(names::COUNTERS_MAP))?;
        let map = PerCpuArray::try_from(map).map_err(|source| LoadError::Map {
            name: names::COUNTERS_MAP,
            source,
        })?;
        Ok(Self { map })
    }

    /// Ring-buffer reservation failures per CPU.
    pub fn lost_per_cpu(&self) -> Vec<u64> {
        self.map
            .get(&counter::RINGBUF_FULL, 0)
            .map(|per_cpu| per_cpu.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn read(&self) -> CounterValues {
        let sum = |index: u32| -> u64 {
            self.map
                .get(&index, 0)
                .map(|per_cpu| per_cpu.iter().sum())
                .unwrap_or(0)
        };
        CounterValues {
            ringbuf_full: sum(counter::RINGBUF_FULL),
            tc_seen: sum(counter::TC_SEEN),
        }
    }
}
