//! probe's own nftables table, which marks packets for tracing (added over netlink, owned by
//! probe's socket where the kernel allows it), and the `nft` command that sweeps stale ones and
//! lists other tables' rules.

use std::process::{Command, Stdio};

use super::{
    NftraceError, TABLE_PREFIX,
    batch::{
        Attr, Batch, NFPROTO_INET, NFT_MSG_DELTABLE, NFT_MSG_NEWCHAIN, NFT_MSG_NEWRULE,
        NFT_MSG_NEWTABLE, NftSocket,
    },
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
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFTA_META_SREG: u16 = 3;
const NFT_META_NFTRACE: u32 = 12;
const NFT_REG_1: u32 = 1;
const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Ahead of raw (-300) and conntrack (-200): every packet is marked before anything decides.
const PRIORITY: i32 = -350;

/// probe's own table: sets nftrace on every packet entering (prerouting) or leaving (output)
/// this namespace's stack, before anything else.
pub struct TraceTable {
    name: String,
    socket: NftSocket,
    /// Created with the owner flag: the kernel deletes it when `socket` closes.
    owned: bool,
}

impl TraceTable {
    pub fn install() -> Result<Self, NftraceError> {
        for line in sweep_stale() {
            log::info!("{line}");
        }
        let socket = NftSocket::open().map_err(add_error)?;
        let mut table = Self {
            name: format!("{TABLE_PREFIX}{}", std::process::id()),
            socket,
            owned: true,
        };
        let added = table.add();
        // Kernels before 5.12 refuse the owner flag; then probe deletes its table itself.
        if added
            .as_ref()
            .is_err_and(|e| e.raw_os_error() == Some(libc::EOPNOTSUPP))
        {
            log::info!(
                "this kernel has no owned nftables tables (Linux 5.12+): probe deletes inet {} \
                 on exit, and the next probe removes it if this one is killed",
                table.name
            );
            table.owned = false;
            table.add().map_err(add_error)?;
        } else {
            added.map_err(add_error)?;
        }
        Ok(table)
    }

    /// Adds the table again, after something (`nft flush ruleset`, a firewall reload) removed
    /// it.
    pub fn reinstall(&self) -> Result<(), NftraceError> {
        self.add().map_err(add_error)
    }

    fn add(&self) -> std::io::Result<()> {
        let name = &self.name;
        let mut batch = Batch::new();
        let mut table = vec![Attr::string(NFTA_TABLE_NAME, name)];
        if self.owned {
            table.push(Attr::be32(NFTA_TABLE_FLAGS, NFT_TABLE_F_OWNER));
        }
        batch.add(NFT_MSG_NEWTABLE, NFPROTO_INET, &table);
        for (chain, hook) in [
            ("prerouting", NF_INET_PRE_ROUTING),
            ("output", NF_INET_LOCAL_OUT),
        ] {
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
                            Attr::be32(NFTA_HOOK_PRIORITY, PRIORITY as u32),
                        ],
                    ),
                    Attr::string(NFTA_CHAIN_TYPE, "filter"),
                ],
            );
            // meta nftrace set 1: the value 1 into register 1, then nftrace from it.
            let expressions = vec![
                expression(
                    "immediate",
                    vec![
                        Attr::be32(NFTA_IMMEDIATE_DREG, NFT_REG_1),
                        Attr::Nested(
                            NFTA_IMMEDIATE_DATA,
                            vec![Attr::Bytes(NFTA_DATA_VALUE, vec![1])],
                        ),
                    ],
                ),
                expression(
                    "meta",
                    vec![
                        Attr::be32(NFTA_META_KEY, NFT_META_NFTRACE),
                        Attr::be32(NFTA_META_SREG, NFT_REG_1),
                    ],
                ),
            ];
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
        self.socket.request(batch)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn add_error(e: std::io::Error) -> NftraceError {
    NftraceError::AddTable(e.to_string())
}

fn expression(name: &str, data: Vec<Attr>) -> Attr {
    Attr::Nested(
        NFTA_LIST_ELEM,
        vec![
            Attr::string(NFTA_EXPR_NAME, name),
            Attr::Nested(NFTA_EXPR_DATA, data),
        ],
    )
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
        if let Err(e) = self.socket.request(batch) {
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
