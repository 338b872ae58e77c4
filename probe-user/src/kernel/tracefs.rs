//! tracefs: where it is, mounting it when nobody has, and reading tracepoint record layouts
//! (field offsets and symbolic value names) from the running kernel's `format` files.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error("tracepoints were not asked for")]
    NotWanted,
    #[error("tracefs is not mounted and could not be mounted at {path}: {source}")]
    Mount {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("tracepoint {0} does not exist on this kernel")]
    NoTracepoint(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tracepoint {tracepoint} has no field {field}")]
    NoField { tracepoint: String, field: String },
}

const CANDIDATES: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// A tracefs mount. One probe mounted stays mounted at its standard place when probe exits,
/// as systemd would have mounted it: unmounting it would pull it from under any other tool
/// (another probe, perf, bpftrace) that found it there meanwhile and is still reading it.
#[derive(Debug)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds tracefs, mounting it at /sys/kernel/tracing if it is not mounted anywhere.
    pub fn open() -> Result<Self, TracefsError> {
        for c in CANDIDATES {
            if Path::new(c).join("events").is_dir() {
                return Ok(Self {
                    root: PathBuf::from(c),
                });
            }
        }
        let target = CANDIDATES[0];
        let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constants");
        let (src, dst, fs) = (c("nodev"), c(target), c("tracefs"));
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc =
            unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(TracefsError::Mount {
                path: target,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            root: PathBuf::from(target),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, TracefsError> {
        let dir = self.root.join("events").join(category).join(name);
        if !dir.is_dir() {
            return Err(TracefsError::NoTracepoint(format!("{category}:{name}")));
        }
        let path = dir.join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(Format::parse(&format!("{category}:{name}"), &text))
    }
}

/// A tracepoint's record layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Format {
    pub tracepoint: String,
    /// Field name → (offset, size) in the record.
    pub fields: HashMap<String, (u16, u16)>,
    /// Value → name pairs of the first `__print_symbolic` in the print format.
    pub symbolic: Vec<(i64, String)>,
}

impl Format {
    pub fn parse(tracepoint: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            // field:TYPE NAME[N];	offset:O;	size:S;	signed:X;
            let mut decl = None;
            let (mut offset, mut size) = (None, None);
            for part in rest.split(';').map(str::trim) {
                if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.parse::<u16>().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.parse::<u16>().ok();
                } else if decl.is_none() && !part.is_empty() {
                    decl = Some(part);
                }
            }
            let name = decl
                .and_then(|d| d.split_whitespace().last())
                .map(|n| n.split('[').next().unwrap_or(n));
            if let (Some(name), Some(offset), Some(size)) = (name, offset, size) {
                fields.insert(name.to_owned(), (offset, size));
            }
        }
        Self {
            tracepoint: tracepoint.to_owned(),
            fields,
            symbolic: parse_symbolic(text),
        }
    }

    pub fn field(&self, name: &str) -> Result<(u16, u16), TracefsError> {
        self.fields
            .get(name)
            .copied()
            .ok_or_else(|| TracefsError::NoField {
                tracepoint: self.tracepoint.clone(),
                field: name.to_owned(),
            })
    }

    /// Offset of a field, or `probe_common::ABSENT` when this kernel's record lacks it.
    pub fn offset_or_absent(&self, name: &str) -> u16 {
        self.fields
            .get(name)
            .map(|&(o, _)| o)
            .unwrap_or(probe_common::ABSENT)
    }
}

/// `__print_symbolic(REC->x, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, ...)` → pairs.
fn parse_symbolic(text: &str) -> Vec<(i64, String)> {
    let Some(start) = text.find("__print_symbolic(") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut rest = &text[start..];
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        let item = &rest[..close];
        rest = &rest[close + 1..];
        let mut parts = item.splitn(2, ',');
        let value = parts
            .next()
            .map(str::trim)
            .and_then(|v| v.parse::<i64>().ok());
        let name = parts.next().map(|n| n.trim().trim_matches('"').to_owned());
        if let (Some(v), Some(n)) = (value, name) {
            out.push((v, n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KFREE_SKB: &str = r#"name: kfree_skb
ID: 2310
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;

	field:void * skbaddr;	offset:8;	size:8;	signed:0;
	field:void * location;	offset:16;	size:8;	signed:0;
	field:unsigned short protocol;	offset:32;	size:2;	signed:0;
	field:enum skb_drop_reason reason;	offset:36;	size:4;	signed:0;
	field:__u8 gw6[16];	offset:40;	size:16;	signed:0;

print fmt: "skbaddr=%p reason: %s", REC->skbaddr, __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 12, "NETFILTER_DROP" })
"#;

    #[test]
    fn parses_fields_and_symbols() {
        let f = Format::parse("skb:kfree_skb", KFREE_SKB);
        assert_eq!(f.field("skbaddr").unwrap(), (8, 8));
        assert_eq!(f.field("reason").unwrap(), (36, 4));
        assert_eq!(f.field("gw6").unwrap(), (40, 16));
        assert_eq!(f.offset_or_absent("rx_sk"), probe_common::ABSENT);
        assert_eq!(
            f.symbolic,
            vec![(2, "NOT_SPECIFIED".into()), (12, "NETFILTER_DROP".into())]
        );
    }

    #[test]
    fn garbage_gives_empty_layout() {
        let f = Format::parse("x:y", "field:;;;\nprint fmt: __print_symbolic({ nope }");
        assert!(f.fields.is_empty());
        assert!(f.symbolic.is_empty());
    }

    #[test]
    fn reads_the_running_kernels_fib_tracepoint() {
        let tracefs = Tracefs::open().expect("tracefs available (root)");
        let f = tracefs.format("fib", "fib_table_lookup").unwrap();
        for field in ["tb_id", "err", "oif", "iif", "src", "dst", "name"] {
            assert!(f.fields.contains_key(field), "{field} missing: {f:?}");
        }
    }
}
