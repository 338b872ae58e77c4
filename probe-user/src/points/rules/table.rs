//! probe's own nftables table, which marks packets for tracing (added over netlink, owned by
//! probe's socket where the kernel allows it), and the `nft` command that sweeps stale ones and
//! lists other tables' rules.

use std::process::{Command, Stdio};

use probe_pipeline::filter::{Filter, Literal};

use crate::host::netlink::{NETLINK_NETFILTER, NetlinkError, Socket};

use super::{
    NftraceError, TABLE_PREFIX,
    batch::{
        Attr, Batch, NFPROTO_INET, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE,
        NFT_MSG_NEWTABLE,
    },
    marking::{self, Source},
};

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_TABLE_FLAGS: u16 = 2;
/// The table belongs to the socket that created it (Linux 5.12+).
const NFT_TABLE_F_OWNER: u32 = 0x2;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Ahead of raw (-300) and conntrack (-200): packets are marked before anything decides.
const PRIORITY: i32 = -350;
/// After conntrack (-200), ahead of mangle (-150) and DNAT (-100): connections are marked by
/// their tuples before NAT rewrites a packet.
const CT_PRIORITY: i32 = -160;

/// probe's own table: sets nftrace on the packets entering (prerouting) or leaving (output)
/// this namespace's stack that the filter admits (every one without a filter), before anything
/// else.
pub struct TraceTable {
    name: String,
    /// Owns the table where the kernel allows it; a RefCell as requests need it mutable.
    socket: std::cell::RefCell<Socket>,
    /// Created with the owner flag: the kernel deletes it when `socket` closes.
    owned: bool,
    /// The filter's clauses, one marking rule each; None marks every packet.
    clauses: Option<Vec<Vec<Literal>>>,
}

impl TraceTable {
    pub fn install(filter: Option<&Filter>) -> Result<Self, NftraceError> {
        for line in sweep_stale() {
            log::info!("{line}");
        }
        let clauses = marking::clauses(filter).unwrap_or_else(|why| {
            log::info!("--rules traces every packet in the kernel: {why}");
            None
        });
        let mut socket = Socket::request(NETLINK_NETFILTER)
            .map_err(|e| NftraceError::AddTable(e.to_string()))?;
        let name = format!("{TABLE_PREFIX}{}", std::process::id());
        let owned = match add(&mut socket, &name, true, clauses.as_deref()) {
            Ok(()) => true,
            // Kernels before 5.12 refuse the owner flag (as an unknown flag: EINVAL; later ones
            // say EOPNOTSUPP for flags they lack); then probe deletes its table itself. A batch
            // is all or nothing, so the retry starts from scratch.
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::EOPNOTSUPP)) => {
                log::info!(
                    "this kernel has no owned nftables tables (Linux 5.12+): probe deletes inet \
                     {name} on exit, and the next probe removes it if this one is killed"
                );
                add(&mut socket, &name, false, clauses.as_deref()).map_err(add_error)?;
                false
            }
            Err(e) => return Err(add_error(e)),
        };
        Ok(Self {
            name,
            socket: std::cell::RefCell::new(socket),
            owned,
            clauses,
        })
    }

    /// Adds the table again, after something (`nft flush ruleset`, a firewall reload) removed
    /// it.
    pub fn reinstall(&self) -> Result<(), NftraceError> {
        add(
            &mut self.socket.borrow_mut(),
            &self.name,
            self.owned,
            self.clauses.as_deref(),
        )
        .map_err(add_error)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Adds the table `name` with its chains and marking rules, in one batch.
fn add(
    socket: &mut Socket,
    name: &str,
    owned: bool,
    clauses: Option<&[Vec<Literal>]>,
) -> Result<(), NetlinkError> {
    let mut batch = Batch::new();
    let mut table = vec![Attr::string(NFTA_TABLE_NAME, name)];
    if owned {
        table.push(Attr::be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER));
    }
    batch.add(NFT_MSG_NEWTABLE, NFPROTO_INET, &table);
    let mut chains = vec![
        (
            "prerouting",
            NF_INET_PRE_ROUTING,
            PRIORITY,
            vec![Source::Headers],
        ),
        ("output", NF_INET_LOCAL_OUT, PRIORITY, vec![Source::Headers]),
    ];
    if clauses.is_some() {
        // Replies and NATed packets of admitted connections, by the connection's two tuples.
        let both = vec![Source::Conntrack(0), Source::Conntrack(1)];
        chains.push((
            "prerouting_ct",
            NF_INET_PRE_ROUTING,
            CT_PRIORITY,
            both.clone(),
        ));
        chains.push(("output_ct", NF_INET_LOCAL_OUT, CT_PRIORITY, both));
    }
    for (chain, hook, priority, sources) in chains {
        batch.add(
            NFT_MSG_NEWCHAIN,
            NFPROTO_INET,
            &[
                Attr::string(NFTA_CHAIN_TABLE, name),
                Attr::string(NFTA_CHAIN_NAME, chain),
                Attr::Nested(
                    NFTA_CHAIN_HOOK,
                    vec![
                        Attr::be32(NFTA_HOOK_HOOKNUM, hook),
                        Attr::be32(NFTA_HOOK_PRIORITY, priority as u32),
                    ],
                ),
                Attr::string(NFTA_CHAIN_TYPE, "filter"),
            ],
        );
        let mut rules: Vec<Vec<Attr>> = Vec::new();
        for source in sources {
            // A clause that reads no tuple is the same rule for both directions: once is enough.
            for rule in marking::rules(clauses, source) {
                if !rules.contains(&rule) {
                    rules.push(rule);
                }
            }
        }
        for expressions in rules {
            batch.add(
                NFT_MSG_NEWRULE,
                NFPROTO_INET,
                &[
                    Attr::string(NFTA_RULE_TABLE, name),
                    Attr::string(NFTA_RULE_CHAIN, chain),
                    Attr::Nested(NFTA_RULE_EXPRESSIONS, expressions),
                ],
            );
        }
    }
    let (bytes, seqs) = batch.finish();
    socket.send_acked(&bytes, &seqs)
}

fn add_error(e: NetlinkError) -> NftraceError {
    NftraceError::AddTable(e.to_string())
}

impl Drop for TraceTable {
    fn drop(&mut self) {
        if self.owned {
            // The kernel removes it with the socket, which closes right after this.
            return;
        }
        let mut batch = Batch::new();
        batch.add(
            NFT_MSG_DELTABLE,
            NFPROTO_INET,
            &[Attr::string(NFTA_TABLE_NAME, &self.name)],
        );
        let (bytes, seqs) = batch.finish();
        if let Err(e) = self.socket.get_mut().send_acked(&bytes, &seqs) {
            log::warn!("could not delete nftables table inet {}: {e}", self.name);
        }
    }
}

/// Deletes trace tables whose probe process is gone (killed before it could clean up);
/// returns what it removed, one line each.
pub fn sweep_stale() -> Vec<String> {
    let Ok(out) = nft(&["list", "tables", "inet"]) else {
        return Vec::new();
    };
    let mut said = Vec::new();
    for line in out.lines() {
        let Some(name) = line.trim().strip_prefix("table inet ") else {
            continue;
        };
        let Some(pid) = name.strip_prefix(TABLE_PREFIX) else {
            continue;
        };
        if pid.parse::<u32>().is_ok()
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && nft(&["delete", "table", "inet", name]).is_ok()
        {
            said.push(format!(
                "removed nftables table inet {name} left by probe {pid}, which is gone"
            ));
        }
    }
    said
}

pub(super) fn nft(args: &[&str]) -> Result<String, String> {
    let out = Command::new("nft")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NftraceError::NoNft(e).to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
