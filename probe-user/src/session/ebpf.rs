//! The embedded kernel programs: loading them and reading their shared maps.

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
};
use probe_common::{CONFIG_GLOBAL, Config, KernelLayout, LAYOUT_GLOBAL, counter, mode, names};
use thiserror::Error;

/// The compiled probe-ebpf object, built by build.rs and embedded so `probe` runs on its own.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe"));

#[derive(Debug, Error)]
pub enum LoadError {
    #[error("ring buffer size {0} is not a power of two of at least 4096 bytes")]
    RingBufSize(u32),
    #[error(
        "a ring buffer of {kib} KiB would take more than a sixteenth of this machine's memory; \
         use at most --ringbuf-kib {limit_kib}"
    )]
    RingBufTooLarge { kib: u32, limit_kib: u64 },
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
    // The ring is locked kernel memory for as long as probe runs: at most a sixteenth of it.
    if let Some(total) = memory_bytes()
        && u64::from(bytes) > total / 16
    {
        return Err(LoadError::RingBufTooLarge {
            kib: bytes / 1024,
            limit_kib: 1u64 << (63 - (total / 16 / 1024).max(1).leading_zeros()),
        });
    }
    Ok(())
}

/// The machine's memory (MemTotal), when /proc/meminfo tells.
fn memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// Entries of a map the configuration leaves unused: the smallest size every map type takes.
const UNUSED_MAP_ENTRIES: u32 = 256;

/// The share of the ring buffer that fills between two wakeups of the reader (see the eBPF
/// side's `maps::submit`). Small enough that the ring still has room for what arrives while
/// the reader wakes and drains; large enough that a wakeup serves thousands of events.
const WAKEUP_FRACTION: u32 = 16;

/// The step of unread bytes at which the programs wake the reader, for a ring of
/// `ringbuf_bytes`.
/// `PROBE_WAKEUP_BYTES` overrides it, for the bench's measurements (0: the kernel's own
/// policy, a wakeup whenever the reader had caught up).
pub fn wakeup_bytes(ringbuf_bytes: u32) -> u32 {
    std::env::var("PROBE_WAKEUP_BYTES")
        .ok()
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(ringbuf_bytes / WAKEUP_FRACTION, |b| {
            b.min(ringbuf_bytes / 2)
        })
}

/// Loads the object with this kernel's layout and the run's configuration (maps created,
/// programs not yet loaded). Maps the configuration does not use are made small.
pub fn load(ringbuf_bytes: u32, layout: &KernelLayout, config: &Config) -> Result<Ebpf, LoadError> {
    check_ringbuf_size(ringbuf_bytes)?;
    raise_memlock_limit();
    let config = &Config {
        wakeup_bytes: wakeup_bytes(ringbuf_bytes),
        ..*config
    };
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::EVENTS_MAP, ringbuf_bytes)
        .override_global(LAYOUT_GLOBAL, layout, true)
        .override_global(CONFIG_GLOBAL, config, true);
    if config.filter_len == 0 {
        loader
            .map_max_entries(names::ADMITTED_PACKETS_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(names::ADMITTED_FLOWS_MAP, UNUSED_MAP_ENTRIES);
    }
    if config.mode != mode::WATCH {
        loader
            .map_max_entries(probe_common::WATCH_DROPS_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(probe_common::WATCH_ROUTE_FAILS_MAP, UNUSED_MAP_ENTRIES);
    }
    if !matches!(config.mode, mode::LATENCY | mode::WATCH) {
        loader
            .map_max_entries(names::LAST_SEEN_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(names::LATENCY_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(names::LATENCY_CHAINS_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(names::LATENCY_STAGES_MAP, UNUSED_MAP_ENTRIES);
    } else {
        // No events in latency and watch mode: the ring buffer only has to exist.
        loader.map_max_entries(names::EVENTS_MAP, 4096);
        // probe latency follows packets by skb (LATENCY_CHAINS), not by PacketKey.
        loader
            .map_max_entries(names::LAST_SEEN_MAP, UNUSED_MAP_ENTRIES)
            .map_max_entries(names::LATENCY_MAP, UNUSED_MAP_ENTRIES);
    }
    Ok(loader.load(OBJECT)?)
}

/// The programs' configuration for a mode, an optional filter and the bytes tc copies of each
/// packet (0: none). A filter too long for the kernel is left to userspace alone, with a
/// warning: nothing is lost, it only costs more.
pub fn config(
    run_mode: u8,
    filter: Option<&probe_pipeline::filter::Filter>,
    snaplen: u16,
) -> Config {
    let mut config = Config {
        mode: run_mode,
        snaplen,
        // The tc programs attach in the namespace probe runs in (entered before loading).
        netns_inum: crate::host::netns::own()
            .and_then(|i| u32::try_from(i).ok())
            .unwrap_or(0),
        ..Config::DEFAULT
    };
    match filter.map(|f| f.compile()) {
        None => {}
        Some(Ok(program)) => {
            config.filter_len = program.len() as u32;
            config.filter[..program.len()].copy_from_slice(&program);
        }
        Some(Err(e)) => {
            log::warn!("{e}: it is applied in userspace only, so every packet costs an event")
        }
    }
    config
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
    /// Sightings a kernel-side filter turned away.
    pub filtered: u64,
    /// Latency samples not counted: the histogram map was full.
    pub latency_map_full: u64,
    /// Drops or routing failures not counted: a watch map was full.
    pub watch_map_full: u64,
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
            filtered: sum(counter::FILTERED),
            latency_map_full: sum(counter::LATENCY_MAP_FULL),
            watch_map_full: sum(counter::WATCH_MAP_FULL),
        }
    }
}
