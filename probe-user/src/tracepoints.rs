//! The tracepoint observation points: drops (`skb:kfree_skb`) and routing decisions
//! (`fib:fib_table_lookup`, `fib6:fib6_table_lookup`). They work on every kernel with tracefs,
//! including those without kprobes or fentry.

use aya::{
    Ebpf,
    programs::{ProgramError, TracePoint},
};
use probe_common::{KernelLayout, names as prog};

use crate::{
    btf::Btf,
    layout::{self, Missing},
    names::{DropReasons, KernelSymbols, Names, RouteTables},
    tracefs::Tracefs,
};

/// Which tracepoint observation points to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Selection {
    pub drops: bool,
    pub routes: bool,
}

struct Point {
    program: &'static str,
    category: &'static str,
    name: &'static str,
}

const DROPS: Point = Point {
    program: prog::TP_KFREE_SKB,
    category: "skb",
    name: "kfree_skb",
};
const FIB4: Point = Point {
    program: prog::TP_FIB_LOOKUP,
    category: "fib",
    name: "fib_table_lookup",
};
const FIB6: Point = Point {
    program: prog::TP_FIB6_LOOKUP,
    category: "fib6",
    name: "fib6_table_lookup",
};

/// Reads this kernel's layout and naming tables. Never fails: what is missing is reported in
/// `Missing`, and the programs that need it read zeros for it.
pub fn prepare(tracefs: Option<&Tracefs>, btf: Option<&Btf>) -> (KernelLayout, Names, Missing) {
    let mut layout = KernelLayout::ABSENT;
    let mut missing = Missing::default();
    match btf {
        Some(btf) => {
            layout::from_btf(btf, &mut layout, &mut missing);
            layout::from_netfilter_btf(btf, &mut layout, &mut missing);
        }
        None => missing.0.push("kernel BTF (struct offsets)".into()),
    }
    let mut kfree = None;
    if let Some(t) = tracefs {
        match t.format(DROPS.category, DROPS.name) {
            Ok(f) => {
                layout::from_kfree_skb(&f, &mut layout);
                kfree = Some(f);
            }
            Err(e) => missing.0.push(e.to_string()),
        }
        match t.format(FIB4.category, FIB4.name) {
            Ok(f) => layout.fib4 = layout::fib(&f),
            Err(e) => missing.0.push(e.to_string()),
        }
        match t.format(FIB6.category, FIB6.name) {
            Ok(f) => layout.fib6 = layout::fib(&f),
            Err(e) => missing.0.push(e.to_string()),
        }
    }
    let names = Names {
        drop_reasons: DropReasons::load(kfree.as_ref(), btf),
        symbols: KernelSymbols::load(),
        route_tables: RouteTables::load(),
    };
    (layout, names, missing)
}

/// Loads and attaches the selected tracepoint programs. A point this kernel lacks is skipped
/// with a warning; returns the tracepoints attached.
pub fn attach(ebpf: &mut Ebpf, selection: Selection) -> Vec<String> {
    let mut points = Vec::new();
    if selection.drops {
        points.push(DROPS);
    }
    if selection.routes {
        points.push(FIB4);
        points.push(FIB6);
    }
    let mut attached = Vec::new();
    for p in points {
        match attach_one(ebpf, &p) {
            Ok(()) => attached.push(format!("{}:{}", p.category, p.name)),
            Err(e) => log::warn!(
                "tracepoint {}:{} unavailable, its events will be missing: {e}",
                p.category,
                p.name
            ),
        }
    }
    attached
}

fn attach_one(ebpf: &mut Ebpf, p: &Point) -> Result<(), ProgramError> {
    let program: &mut TracePoint = ebpf
        .program_mut(p.program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    program.load()?;
    program.attach(p.category, p.name)?;
    Ok(())
}
