//! The filter as the kernel programs run it: a postfix program in the load-time config.

use std::net::IpAddr;

use thiserror::Error;

use super::{Dir, Filter, ProtoMatch};

/// A filter too large for the kernel's fixed-size program.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "the filter has {0} terms and operators; the kernel takes at most {max}",
    max = probe_common::MAX_FILTER_INSNS
)]
pub struct TooLong(pub usize);

impl Filter {
    /// The postfix program the kernel programs evaluate at a packet's first sighting (see
    /// `probe_common::filter_op`). It matches exactly what [`Filter::matches`] matches.
    pub fn compile(&self) -> Result<Vec<probe_common::FilterInsn>, TooLong> {
        let mut out = Vec::new();
        self.emit(&mut out);
        if out.len() > probe_common::MAX_FILTER_INSNS {
            return Err(TooLong(out.len()));
        }
        Ok(out)
    }

    fn emit(&self, out: &mut Vec<probe_common::FilterInsn>) {
        use probe_common::{FilterInsn, filter_dir, filter_op};
        let dir = |d: &Dir| match d {
            Dir::Src => filter_dir::SRC,
            Dir::Dst => filter_dir::DST,
            Dir::Either => filter_dir::EITHER,
        };
        let op = |op: u8| FilterInsn {
            op,
            ..Default::default()
        };
        match self {
            Filter::And(a, b) | Filter::Or(a, b) => {
                a.emit(out);
                b.emit(out);
                out.push(op(if matches!(self, Filter::And(..)) {
                    filter_op::AND
                } else {
                    filter_op::OR
                }));
            }
            Filter::Not(a) => {
                a.emit(out);
                out.push(op(filter_op::NOT));
            }
            Filter::Net(d, net, len) => {
                let (bytes, family): ([u8; 16], u8) = match net {
                    IpAddr::V4(a) => {
                        let mut b = [0; 16];
                        b[..4].copy_from_slice(&a.octets());
                        (b, probe_common::family::IPV4)
                    }
                    IpAddr::V6(a) => (a.octets(), probe_common::family::IPV6),
                };
                let mut mask = [0u8; 16];
                for (i, m) in mask.iter_mut().enumerate() {
                    let bits = (*len as usize).saturating_sub(i * 8).min(8);
                    *m = !(0xFFu16 >> bits) as u8;
                }
                let mut addr = bytes;
                for (a, m) in addr.iter_mut().zip(mask) {
                    *a &= m;
                }
                out.push(FilterInsn {
                    addr,
                    mask,
                    op: filter_op::NET,
                    dir: dir(d),
                    arg: family,
                    ..Default::default()
                });
            }
            Filter::Ports(d, lo, hi) => out.push(FilterInsn {
                port_lo: *lo,
                port_hi: *hi,
                op: filter_op::PORTS,
                dir: dir(d),
                ..Default::default()
            }),
            Filter::Proto(ProtoMatch::Transport(t)) => out.push(FilterInsn {
                op: filter_op::L4_PROTO,
                arg: t.number(),
                ..Default::default()
            }),
            Filter::Proto(p) => out.push(FilterInsn {
                op: filter_op::FAMILY,
                arg: if *p == ProtoMatch::Ipv4 {
                    probe_common::family::IPV4
                } else {
                    probe_common::family::IPV6
                },
                ..Default::default()
            }),
        }
    }
}
