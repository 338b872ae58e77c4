//! Mechanisms the points share: tracepoints, kprobe/kretprobe pairs, fentry/fexit pairs, and
//! reading an offset from BTF.

use aya::{
    Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint, TracePoint},
};
use probe_common::ABSENT;

use crate::kernel::{Kernel, btf::Btf};

/// A struct member's offset, or ABSENT with the reason noted.
pub fn offset(btf: &Btf, ty: &str, path: &str, missing: &mut Vec<String>) -> u16 {
    match btf.member(ty, path) {
        Ok(m) => u16::try_from(m.offset).unwrap_or(ABSENT),
        Err(e) => {
            missing.push(e.to_string());
            ABSENT
        }
    }
}

/// aya's errors carry the verifier log; one line is enough to say why.
pub fn short(e: &ProgramError) -> String {
    let s = e.to_string();
    match s.find("Verifier output") {
        Some(i) => s[..i].trim_end_matches([' ', '.', '\n']).to_owned(),
        None => s,
    }
}

pub fn tracepoint(
    bpf: &mut Ebpf,
    program: &str,
    category: &str,
    name: &str,
) -> Result<(), ProgramError> {
    let p: &mut TracePoint = bpf
        .program_mut(program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load()?;
    p.attach(category, name)?;
    Ok(())
}

/// A raw tracepoint: the tracepoint's arguments rather than its record; attaches without
/// trampolines, so also where fentry does not.
pub fn raw_tracepoint(bpf: &mut Ebpf, program: &str, name: &str) -> Result<(), ProgramError> {
    let p: &mut RawTracePoint = bpf
        .program_mut(program)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    p.load()?;
    p.attach(name)?;
    Ok(())
}

/// Attaches tracepoints `(program, category, name)`; `Attached("tracepoint a:b, ...")` when at
/// least one did. One that fails is said in a warning: its events will be missing.
pub fn tracepoints(
    bpf: &mut Ebpf,
    kernel: &Kernel,
    points: &[(&str, &str, &str)],
) -> super::Outcome {
    if let Err(e) = &kernel.tracefs {
        return super::Outcome::Unavailable(e.to_string());
    }
    let mut attached = Vec::new();
    let mut failed = Vec::new();
    for (program, category, name) in points {
        match tracepoint(bpf, program, category, name) {
            Ok(()) => attached.push(format!("{category}:{name}")),
            Err(e) => {
                log::warn!(
                    "tracepoint {category}:{name} unavailable, its events will be missing: {e}"
                );
                failed.push(format!("{category}:{name}: {}", short(&e)));
            }
        }
    }
    if attached.is_empty() {
        super::Outcome::Unavailable(failed.join("; "))
    } else {
        super::Outcome::Attached(format!("tracepoint {}", attached.join(", tracepoint ")))
    }
}

pub fn fexit_pair(
    bpf: &mut Ebpf,
    btf: &aya::Btf,
    function: &str,
    entry: &str,
    exit: &str,
) -> Result<(), ProgramError> {
    let fentry: &mut FEntry = bpf
        .program_mut(entry)
        .ok_or(ProgramError::UnexpectedProgramType)?
        .try_into()?;
    fentry.load(function, btf)?;
    fentry.attach()?;
    let result = (|| {
        let fexit: &mut FExit = bpf
            .program_mut(exit)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        fexit.load(function, btf)?;
        fexit.attach()?;
        Ok(())
    })();
    if result.is_err()
        && let Some(p) = bpf.program_mut(entry)
        && let Ok(p) = <&mut FEntry>::try_from(p)
    {
        // Half a pair is useless: take the entry side off again.
        let _ = p.unload();
    }
    result
}

fn kprobe_pair(
    bpf: &mut Ebpf,
    function: &str,
    entry: &str,
    exit: &str,
) -> Result<(), ProgramError> {
    for name in [exit, entry] {
        let p: &mut KProbe = bpf
            .program_mut(name)
            .ok_or(ProgramError::UnexpectedProgramType)?
            .try_into()?;
        p.load()?;
        if let Err(e) = p.attach(function, 0) {
            let _ = p.unload();
            if name == entry
                && let Some(exit_prog) = bpf.program_mut(exit)
                && let Ok(exit_prog) = <&mut KProbe>::try_from(exit_prog)
            {
                let _ = exit_prog.unload();
            }
            return Err(e);
        }
    }
    Ok(())
}

/// A kprobe/kretprobe pair on `function`, or why not (no kprobes, no such function, refused).
pub fn try_kprobe(
    bpf: &mut Ebpf,
    kernel: &Kernel,
    function: &str,
    entry: &str,
    exit: &str,
) -> Result<(), String> {
    if !kernel.kprobes {
        return Err("kprobes: this kernel has none".to_owned());
    }
    if !kernel.has_function(function) {
        return Err(format!(
            "the kernel has no function {function} (module not loaded?)"
        ));
    }
    kprobe_pair(bpf, function, entry, exit).map_err(|e| {
        log::debug!("kprobe on {function}: {e}");
        format!("kprobes: {}", short(&e))
    })
}
