//! Which interfaces to watch: the user's names and globs (`--iface veth*,docker0`), or, by
//! default, every interface a container host's packets cross: bridges, veths, tunnels and VPN
//! interfaces, and the uplink (the default route's device).

use crate::host::rtnl::{IfaceError, Link, validate_name};

/// Link kinds on a container host's datapath.
const DATAPATH_KINDS: &[&str] = &[
    "bridge",
    "veth",
    "tun",
    "wireguard",
    "vxlan",
    "geneve",
    "macvlan",
    "ipvlan",
    "ipip",
    "gre",
    "gretap",
    "sit",
    "ip6tnl",
    "vti",
    "xfrm",
    "bond",
    "vlan",
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Glob(String),
}

/// The user's choice of interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Empty: discover.
    patterns: Vec<Pattern>,
    /// Index of the uplink(s), for discovery.
    uplinks: Vec<u32>,
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Selector {
    /// From `--iface` values; an empty list means "discover".
    pub fn parse(specs: &[String]) -> Result<Self, IfaceError> {
        let mut patterns = Vec::with_capacity(specs.len());
        for s in specs {
            if is_glob(s) {
                // A glob must still be a plausible name once its wildcards are filled.
                validate_name(&s.replace(['*', '?', '[', ']'], "x"))
                    .map_err(|_| IfaceError::InvalidName(s.clone()))?;
                patterns.push(Pattern::Glob(s.clone()));
            } else {
                validate_name(s)?;
                patterns.push(Pattern::Exact(s.clone()));
            }
        }
        Ok(Self {
            patterns,
            uplinks: Vec::new(),
        })
    }

    pub fn discovers(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Remembers the uplinks (default-route devices of this namespace).
    pub fn set_uplinks(&mut self, uplinks: Vec<u32>) {
        self.uplinks = uplinks;
    }

    /// Names the user gave exactly that are not among `links` (an error at start).
    pub fn missing_exact(&self, links: &[Link]) -> Vec<String> {
        self.patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Exact(n) if !links.iter().any(|l| &l.name == n) => Some(n.clone()),
                _ => None,
            })
            .collect()
    }

    /// Globs that match none of `links` (worth a note: probe waits for them).
    pub fn unmatched_globs(&self, links: &[Link]) -> Vec<String> {
        self.patterns
            .iter()
            .filter_map(|p| match p {
                Pattern::Glob(g) if !links.iter().any(|l| glob_match(g, &l.name)) => {
                    Some(g.clone())
                }
                _ => None,
            })
            .collect()
    }

    pub fn wants(&self, link: &Link) -> bool {
        if link.is_loopback() && self.discovers() {
            return false;
        }
        if self.discovers() {
            return self.uplinks.contains(&link.index)
                || link
                    .kind
                    .as_deref()
                    .is_some_and(|k| DATAPATH_KINDS.contains(&k));
        }
        self.patterns.iter().any(|p| match p {
            Pattern::Exact(n) => &link.name == n,
            Pattern::Glob(g) => glob_match(g, &link.name),
        })
    }
}

/// Shell-style matching of `*`, `?` and `[...]` classes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let class = &p[1..end];
                let (negate, class) = match class.first() {
                    Some('!') | Some('^') => (true, &class[1..]),
                    _ => (false, class),
                };
                let Some(&c) = n.first() else { return false };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[end + 1..], &n[1..])
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use netlink_packet_route::link::LinkLayerType;

    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
        Link {
            index,
            name: name.into(),
            hw_type: if name == "lo" {
                LinkLayerType::Loopback
            } else {
                LinkLayerType::Ether
            },
            kind: kind.map(str::to_owned),
            master: None,
            peer: None,
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("veth*", "veth1a2b"));
        assert!(glob_match("veth*", "veth"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("br-????", "br-abcd"));
        assert!(glob_match("eth[0-2]", "eth1"));
        assert!(!glob_match("eth[!0-2]", "eth1"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn discovery_takes_datapath_kinds_and_uplink() {
        let mut sel = Selector::parse(&[]).unwrap();
        let links = [
            link(1, "lo", None),
            link(2, "eth0", None),
            link(3, "docker0", Some("bridge")),
            link(4, "veth9", Some("veth")),
            link(5, "dummy0", Some("dummy")),
        ];
        sel.uplinks = vec![2];
        let chosen: Vec<&str> = links
            .iter()
            .filter(|l| sel.wants(l))
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(chosen, ["eth0", "docker0", "veth9"]);
    }

    #[test]
    fn explicit_names_and_globs() {
        let sel = Selector::parse(&["docker0".into(), "veth*".into()]).unwrap();
        let links = vec![link(3, "docker0", Some("bridge")), link(7, "eth0", None)];
        assert!(sel.wants(&links[0]));
        assert!(!sel.wants(&links[1]));
        assert!(sel.wants(&link(9, "vethabc", Some("veth"))));
        assert!(sel.missing_exact(&links).is_empty());
        assert_eq!(sel.unmatched_globs(&links), ["veth*"]);
        let sel = Selector::parse(&["nope0".into()]).unwrap();
        assert_eq!(sel.missing_exact(&links), ["nope0"]);
        assert!(Selector::parse(&["bad name".into()]).is_err());
        assert!(Selector::parse(&["waytoolongforaname*".into()]).is_err());
    }
}
