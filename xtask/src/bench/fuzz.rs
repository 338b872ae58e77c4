//! A mutation fuzz of a real recording: the start of the bench's own recording, damaged in
//! many ways
//! (bytes flipped, cut short, chunks repeated, lengths rewritten), read back and run through
//! the replay path (decode, correlate, render). Any outcome but a panic is right: a clear error
//! or timelines.

use anyhow::Context as _;
use std::{
    io,
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use probe_pipeline::{
    record::RecordReader,
    render::{Clock, Format},
    sink::{Sink, SinkOptions},
};

/// What the fuzz did.
pub struct Fuzzed {
    pub mutations: u64,
    /// Mutated files that read as a clear error (the rest replayed).
    pub errors: u64,
    pub panics: u64,
    pub seconds: f64,
    pub file_bytes: usize,
}

/// A xorshift generator: deterministic, so a panic can be found again from the mutation count.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(original: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut b = original.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(b.len());
        match rng.below(4) {
            0 => b[at] ^= 1 << rng.below(8),
            1 => b.truncate(at),
            2 => {
                let len = rng.below(64).min(b.len() - at);
                let chunk = b[at..at + len].to_vec();
                let to = rng.below(b.len());
                b.splice(to..to, chunk);
            }
            _ => {
                // A record's length field (or anything else) set to a value out of nowhere.
                let v = (rng.next() as u32).to_le_bytes();
                let end = (at + 4).min(b.len());
                b[at..end].copy_from_slice(&v[..end - at]);
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

/// Replays `bytes` as `probe replay` does; Err when the file is refused part-way.
fn replay(bytes: &[u8]) -> Result<(), String> {
    let mut reader = RecordReader::new(bytes).map_err(|e| e.to_string())?;
    let opts = SinkOptions {
        format: Format::Text,
        events: false,
        color: false,
        filter: None,
        limit: None,
        netns: None,
        verdicts_join_sightings: reader.meta.sightings_besides_verdicts,
        clock: Clock::default(),
    };
    let mut sink = Sink::new(io::sink(), opts, reader.meta.topology.clone(), None);
    while let Some(event) = reader.next_event().map_err(|e| e.to_string())? {
        sink.push(event, None).map_err(|e| e.to_string())?;
    }
    sink.finish().map(drop).map_err(|e| e.to_string())
}

/// Records of the recording kept as the fuzz's seed: enough for every kind of content, small
/// enough that thousands of damaged copies are replayed a second.
const SEED_RECORDS: usize = 300;

/// The recording's header and its first records (format in probe-pipeline's `record`).
fn seed(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let u32_at = |at: usize| -> anyhow::Result<usize> {
        let b = bytes
            .get(at..at + 4)
            .context("the recording is truncated")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let mut end = 16 + u32_at(12)?;
    for _ in 0..SEED_RECORDS {
        if end + 5 > bytes.len() {
            break;
        }
        end += 5 + u32_at(end + 1)?;
    }
    Ok(bytes[..end.min(bytes.len())].to_vec())
}

pub fn run(file: &std::path::Path, seconds: f64) -> anyhow::Result<Fuzzed> {
    let original = seed(&std::fs::read(file)?)?;
    anyhow::ensure!(!original.is_empty(), "the bench recording is empty");
    // Panics are counted, not printed one by one.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = Instant::now();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut done = Fuzzed {
        mutations: 0,
        errors: 0,
        panics: 0,
        seconds: 0.0,
        file_bytes: original.len(),
    };
    while started.elapsed() < Duration::from_secs_f64(seconds) {
        let damaged = mutate(&original, &mut rng);
        match catch_unwind(AssertUnwindSafe(|| replay(&damaged))) {
            Ok(Ok(())) => {}
            Ok(Err(_)) => done.errors += 1,
            Err(_) => {
                if done.panics == 0 {
                    eprintln!("fuzz: mutation {} panicked", done.mutations);
                }
                done.panics += 1;
            }
        }
        done.mutations += 1;
    }
    std::panic::set_hook(hook);
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}
