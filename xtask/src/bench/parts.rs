//! The parts of the bench (`cargo xtask bench --only tcp,loss`), so one can be measured again
//! without the rest.

use anyhow::bail;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// TCP throughput across the bridge with each observer, and per-program kernel costs.
    Tcp,
    /// 64-byte UDP packets per second across the bridge with each observer.
    Udp64,
    /// The highest packet rate traced without loss, per mode.
    Loss,
    /// Launch-to-ready time with 100 veths, and the attach rate for new ones.
    Startup,
    /// Replay speed and peak memory.
    Replay,
    /// Mutation fuzz of a recording through the replay path.
    Fuzz,
}

const NAMES: &[(&str, Part)] = &[
    ("tcp", Part::Tcp),
    // The per-program costs are read during the throughput sets' last rounds.
    ("progs", Part::Tcp),
    ("udp64", Part::Udp64),
    ("loss", Part::Loss),
    ("startup", Part::Startup),
    ("replay", Part::Replay),
    ("fuzz", Part::Fuzz),
];

/// Every part, in the order the bench runs them.
pub const ALL: &[Part] = &[
    Part::Tcp,
    Part::Udp64,
    Part::Loss,
    Part::Startup,
    Part::Replay,
    Part::Fuzz,
];

/// Parses `--only`'s comma-separated list; None: every part.
pub fn parse(list: Option<&str>) -> anyhow::Result<Vec<Part>> {
    let Some(list) = list else {
        return Ok(ALL.to_vec());
    };
    let mut parts = Vec::new();
    for word in list.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let Some((_, part)) = NAMES.iter().find(|(n, _)| *n == word) else {
            let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
            bail!("unknown bench part {word:?}; known: {}", known.join(", "));
        };
        if !parts.contains(part) {
            parts.push(*part);
        }
    }
    if parts.is_empty() {
        bail!("--only names no part");
    }
    Ok(parts)
}

/// The `--only` argument that selects `parts` again (None: all of them).
pub fn arg(parts: &[Part]) -> Option<String> {
    if ALL.iter().all(|p| parts.contains(p)) {
        return None;
    }
    let names: Vec<&str> = parts
        .iter()
        .filter_map(|p| NAMES.iter().find(|(_, q)| q == p).map(|(n, _)| *n))
        .collect();
    Some(names.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip() {
        assert_eq!(parse(None).unwrap(), ALL);
        let p = parse(Some("loss, progs,udp64,tcp")).unwrap();
        assert_eq!(p, [Part::Loss, Part::Tcp, Part::Udp64]);
        assert_eq!(arg(&p).as_deref(), Some("loss,tcp,udp64"));
        assert_eq!(arg(ALL), None);
        assert!(parse(Some("tcp,nope")).is_err());
        assert!(parse(Some(",")).is_err());
    }
}
