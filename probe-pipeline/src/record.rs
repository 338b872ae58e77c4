//! Recorded traces: `probe trace --record FILE` writes the kernel's raw events (and the rule
//! verdicts nftables reported) with what is needed to name them offline; `probe replay FILE`
//! rebuilds the timelines without root or eBPF.
//!
//! Format (all integers little-endian):
//! - header: magic `PROBEREC`, format version u16, event ABI version u16, metadata length u32,
//!   metadata (JSON: drop-reason names, routing table names, interfaces, bridges, uplinks);
//! - records: kind u8, length u32, payload. Kind 1: one raw ring-buffer event, exactly as the
//!   kernel wrote it. Kind 2: a rule verdict (JSON). Kind 3: a kernel symbol seen in a drop
//!   location (address u64, then the name).
//!
//! A reader never trusts a length: a short, corrupt or foreign file is an error naming the
//! offset where it went wrong.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{
    decode,
    event::{Event, EventBody, RawHeaders, RuleVerdict},
    names::{DropReasons, KernelSymbols, Names, RouteTables},
    render::Clock,
    topology::Topology,
};

const MAGIC: &[u8; 8] = b"PROBEREC";
pub const FORMAT_VERSION: u16 = 1;
const KIND_RAW: u8 = 1;
const KIND_RULE: u8 = 2;
const KIND_SYMBOL: u8 = 3;
/// No single record is larger than this (raw events are ~100 bytes, rules a few hundred).
const MAX_RECORD: u32 = 1 << 20;

#[derive(Debug, Error)]
pub enum RecordError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a probe recording (bad magic at offset 0)")]
    BadMagic,
    #[error("recording format version {0} is not supported (this probe reads {FORMAT_VERSION})")]
    Version(u16),
    #[error(
        "recording was made with event layout {found}, this probe reads {expected}: replay it \
         with the probe that made it"
    )]
    Abi { found: u16, expected: u16 },
    #[error("file ends in the middle of {what} at offset {offset}")]
    Truncated { what: &'static str, offset: u64 },
    #[error("corrupt {what} at offset {offset}: {detail}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        detail: String,
    },
}

/// What a recording carries besides events.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Metadata {
    pub probe_version: String,
    pub drop_reasons: DropReasons,
    pub route_tables: RouteTables,
    pub topology: Topology,
    /// The trace saw packets by more than nftables rule verdicts (tc or drops).
    #[serde(default = "yes")]
    pub sightings_besides_verdicts: bool,
    /// The recording machine's clocks, so a replay prints when events happened (absent in
    /// recordings made before it was stored: the replaying machine's clock is used).
    #[serde(default)]
    pub clock: Option<Clock>,
    /// The host name and kernel release of the machine that recorded.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub kernel: String,
}

fn yes() -> bool {
    true
}

/// Writes a recording.
pub struct RecordWriter<W: Write> {
    out: W,
    symbols_written: HashMap<u64, ()>,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(mut out: W, meta: &Metadata) -> Result<Self, RecordError> {
        let meta = serde_json::to_vec(meta).map_err(io::Error::other)?;
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        out.write_all(&probe_common::EVENT_ABI_VERSION.to_le_bytes())?;
        out.write_all(&(meta.len() as u32).to_le_bytes())?;
        out.write_all(&meta)?;
        Ok(Self {
            out,
            symbols_written: HashMap::new(),
        })
    }

    fn record(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        self.out.write_all(&[kind])?;
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(payload)
    }

    /// One event as the kernel wrote it.
    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.record(KIND_RAW, bytes)
    }

    /// What a decoded event needs beyond its raw bytes: rule verdicts whole, drop locations'
    /// symbol names once each.
    pub fn extra(&mut self, event: &Event) -> io::Result<()> {
        match &event.body {
            EventBody::Rule(r) => {
                let rec = RuleRecordOut {
                    ts_ns: event.ts_ns,
                    rule: r,
                    headers: &r.headers,
                };
                let json = serde_json::to_vec(&rec).map_err(io::Error::other)?;
                self.record(KIND_RULE, &json)
            }
            EventBody::Drop(d) => match &d.location_sym {
                Some(sym) if !self.symbols_written.contains_key(&d.location) => {
                    // Store the function start, so other offsets in it symbolize too.
                    let (name, off) = sym.rsplit_once("+0x").unwrap_or((sym.as_str(), "0"));
                    let off = u64::from_str_radix(off, 16).unwrap_or(0);
                    let mut payload = d.location.wrapping_sub(off).to_le_bytes().to_vec();
                    payload.extend_from_slice(name.as_bytes());
                    self.symbols_written.insert(d.location, ());
                    self.record(KIND_SYMBOL, &payload)
                }
                _ => Ok(()),
            },
            _ => Ok(()),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A rule verdict in a recording: the verdict as it is, its time, and the headers its packet
/// is read from again on replay (the verdict's own serialization leaves them out).
#[derive(Serialize)]
struct RuleRecordOut<'a> {
    ts_ns: u64,
    #[serde(flatten)]
    rule: &'a RuleVerdict,
    headers: &'a Option<RawHeaders>,
}

/// [`RuleRecordOut`], read back.
#[derive(Deserialize)]
struct RuleRecordIn {
    ts_ns: u64,
    #[serde(flatten)]
    rule: RuleVerdict,
    headers: Option<RawHeaders>,
}

impl RuleRecordIn {
    fn into_event(self) -> Event {
        let mut rule = self.rule;
        rule.packet = self
            .headers
            .as_ref()
            .map(|h| crate::packet::from_network_header(&h.network, h.transport.as_deref()));
        rule.headers = self.headers;
        Event {
            ts_ns: self.ts_ns,
            cpu: 0,
            body: EventBody::Rule(Box::new(rule)),
        }
    }
}

/// Reads a recording: the header at once, then events one by one.
pub struct RecordReader<R: Read> {
    input: R,
    offset: u64,
    pub meta: Metadata,
    names: Names,
    /// The current record's payload, reused from record to record.
    payload: Vec<u8>,
}

impl<R: Read> RecordReader<R> {
    pub fn new(mut input: R) -> Result<Self, RecordError> {
        let mut offset = 0u64;
        let mut magic = [0u8; 8];
        read_exact(&mut input, &mut magic, &mut offset, "the header")?;
        if &magic != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let mut fixed = [0u8; 8];
        read_exact(&mut input, &mut fixed, &mut offset, "the header")?;
        let version = u16::from_le_bytes([fixed[0], fixed[1]]);
        let abi = u16::from_le_bytes([fixed[2], fixed[3]]);
        let meta_len = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        if version != FORMAT_VERSION {
            return Err(RecordError::Version(version));
        }
        if abi != probe_common::EVENT_ABI_VERSION {
            return Err(RecordError::Abi {
                found: abi,
                expected: probe_common::EVENT_ABI_VERSION,
            });
        }
        if meta_len > 64 << 20 {
            return Err(RecordError::Corrupt {
                what: "header",
                offset: 12,
                detail: format!("metadata of {meta_len} bytes"),
            });
        }
        let meta_at = offset;
        let mut meta = vec![0u8; meta_len as usize];
        read_exact(&mut input, &mut meta, &mut offset, "the metadata")?;
        let meta: Metadata = serde_json::from_slice(&meta).map_err(|e| RecordError::Corrupt {
            what: "metadata",
            offset: meta_at,
            detail: e.to_string(),
        })?;
        let names = Names {
            drop_reasons: meta.drop_reasons.clone(),
            symbols: KernelSymbols::default(),
            route_tables: meta.route_tables.clone(),
        };
        Ok(Self {
            input,
            offset,
            meta,
            names,
            payload: Vec::new(),
        })
    }

    /// The next event, named as when it was recorded; None at the end of the file.
    pub fn next_event(&mut self) -> Result<Option<Event>, RecordError> {
        loop {
            let at = self.offset;
            let mut kind = [0u8; 1];
            match self.input.read(&mut kind)? {
                0 => return Ok(None),
                _ => self.offset += 1,
            }
            let mut len = [0u8; 4];
            read_exact(&mut self.input, &mut len, &mut self.offset, "a record")?;
            let len = u32::from_le_bytes(len);
            if len > MAX_RECORD {
                return Err(RecordError::Corrupt {
                    what: "record",
                    offset: at,
                    detail: format!("length {len}"),
                });
            }
            let payload = &mut self.payload;
            payload.resize(len as usize, 0);
            read_exact(&mut self.input, payload, &mut self.offset, "a record")?;
            let payload = &self.payload;
            let corrupt = |detail: String| RecordError::Corrupt {
                what: "record",
                offset: at,
                detail,
            };
            match kind[0] {
                KIND_RAW => {
                    let mut event = decode::decode(payload).map_err(|e| corrupt(e.to_string()))?;
                    self.names.enrich(&mut event);
                    return Ok(Some(event));
                }
                KIND_RULE => {
                    let rec: RuleRecordIn =
                        serde_json::from_slice(payload).map_err(|e| corrupt(e.to_string()))?;
                    return Ok(Some(rec.into_event()));
                }
                KIND_SYMBOL => {
                    if payload.len() < 8 {
                        return Err(corrupt("short symbol".into()));
                    }
                    let addr = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                    let name = String::from_utf8_lossy(&payload[8..]).into_owned();
                    self.names.symbols.insert(addr, name);
                }
                other => return Err(corrupt(format!("unknown kind {other}"))),
            }
        }
    }
}

fn read_exact<R: Read>(
    input: &mut R,
    buf: &mut [u8],
    offset: &mut u64,
    what: &'static str,
) -> Result<(), RecordError> {
    let mut done = 0;
    while done < buf.len() {
        match input.read(&mut buf[done..]) {
            Ok(0) => {
                return Err(RecordError::Truncated {
                    what,
                    offset: *offset + done as u64,
                });
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    *offset += buf.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut tc = probe_common::TcEvent {
            header: probe_common::EventHeader {
                ts_ns: 1000,
                kind: probe_common::kind::TC,
                flags: 0,
                cpu: 0,
            },
            ifindex: 4,
            ..Default::default()
        };
        tc.packet.family = probe_common::family::IPV4;
        tc.packet.l4_proto = 17;
        tc.packet.l3_proto = 0x0800;
        tc.packet.saddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        tc.packet.daddr[..4].copy_from_slice(&[10, 0, 0, 2]);
        tc.packet.sport = 1;
        tc.packet.dport = 53;
        let raw = crate::bytes_of(&tc);
        let mut out = Vec::new();
        let mut w = RecordWriter::new(&mut out, &Metadata::default()).unwrap();
        w.raw(&raw).unwrap();
        w.raw(&raw).unwrap();
        drop(w);
        out
    }

    #[test]
    fn rule_verdicts_come_back_whole() {
        use crate::event::{DecidedBy, Family, Hook, Verdict};
        let headers = RawHeaders {
            network: vec![
                0x45, 0, 0, 28, 0, 7, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
            ],
            transport: Some(vec![0x9c, 0x41, 0x23, 0x28, 0, 8, 0, 0]),
        };
        let rule = RuleVerdict {
            trace_id: 9,
            family: Family::Inet,
            table: "firewalld".into(),
            chain: "filter_FORWARD".into(),
            hook: Some(Hook::Forward),
            decided_by: DecidedBy::Policy,
            rule_handle: None,
            rule: None,
            verdict: Verdict::Drop,
            target: None,
            iif: 3,
            oif: 4,
            mark: 0,
            packet: Some(crate::packet::from_network_header(
                &headers.network,
                headers.transport.as_deref(),
            )),
            headers: Some(headers),
        };
        let event = Event {
            ts_ns: 77,
            cpu: 0,
            body: EventBody::Rule(Box::new(rule)),
        };
        let mut out = Vec::new();
        let mut w = RecordWriter::new(&mut out, &Metadata::default()).unwrap();
        w.extra(&event).unwrap();
        drop(w);
        let mut r = RecordReader::new(&out[..]).unwrap();
        assert_eq!(r.next_event().unwrap(), Some(event));
        assert_eq!(r.next_event().unwrap(), None);
    }

    #[test]
    fn round_trip() {
        let file = sample();
        let mut r = RecordReader::new(&file[..]).unwrap();
        let mut n = 0;
        while let Some(e) = r.next_event().unwrap() {
            assert!(matches!(e.body, EventBody::Tc(_)));
            n += 1;
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn every_truncation_is_an_error_with_an_offset() {
        let file = sample();
        let header_end = file.len() - 2 * (5 + 96);
        for cut in 0..file.len() {
            let result = RecordReader::new(&file[..cut]).and_then(|mut r| {
                while r.next_event()?.is_some() {}
                Ok(())
            });
            // Cutting exactly between records is a shorter, valid file.
            let between = cut == header_end || cut == header_end + 5 + 96;
            assert_eq!(result.is_ok(), between, "cut at {cut}: {result:?}");
            if let Err(e) = result {
                let text = e.to_string();
                assert!(text.contains("offset") || text.contains("magic"), "{text}");
            }
        }
    }

    #[test]
    fn corrupt_files_are_errors_not_panics() {
        let file = sample();
        assert!(matches!(
            RecordReader::new(&b"NOTPROBE........"[..]),
            Err(RecordError::BadMagic)
        ));
        // Flip every byte in turn: any outcome but a panic is fine.
        for i in 0..file.len() {
            let mut bad = file.clone();
            bad[i] ^= 0xA5;
            if let Ok(mut r) = RecordReader::new(&bad[..]) {
                while let Ok(Some(_)) = r.next_event() {}
            }
        }
        let mut huge = file.clone();
        let rec = file.len() - (5 + 96) * 2;
        huge[rec + 1..rec + 5].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut r = RecordReader::new(&huge[..]).unwrap();
        assert!(matches!(r.next_event(), Err(RecordError::Corrupt { .. })));
    }
}
