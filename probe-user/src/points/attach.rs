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

/// aya's errors carry the whole verifier log (thousands of lines for a large program); the
/// syscall's error and the verifier's own verdict are enough to say why.
pub fn short(e: &ProgramError) -> String {
    shorten(&e.to_string())
}

fn shorten(s: &str) -> String {
    let Some(i) = s.find("Verifier output") else {
        return s.to_owned();
    };
    let head = s[..i].trim_end_matches([' ', '.', '\n']);
    match verdict(&s[i..]) {
        Some(v) => format!("{head}; the verifier said: {v}"),
        None => head.to_owned(),
    }
}

/// The verifier's verdict: its last line before the statistics it ends with (instructions
/// processed, verification time, stack depth).
fn verdict(log: &str) -> Option<&str> {
    const STATISTICS: [&str; 3] = ["processed ", "verification time", "stack depth"];
    log.lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty() && !STATISTICS.iter().any(|s| l.starts_with(s)))
        .filter(|l| !l.starts_with("Verifier output"))
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
                    "tracepoint {category}:{name} unavailable, its events will be missing: {}",
                    short(&e)
                );
                log::debug!("tracepoint {category}:{name}: {e}");
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

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn a_verifier_log_is_cut_to_the_syscalls_error_and_the_verdict() {
        let error = "the BPF_PROG_LOAD syscall returned Argument list too long (os error 7). \
                     Verifier output: reg type unsupported for arg#0 function kfree_skb#21\n\
                     0: R1=ctx(off=0,imm=0) R10=fp0\n\
                     1081: (71) r2 = *(u8 *)(r2 +57)\n\
                     BPF program is too large. Processed 1000001 insn\n\
                     verification time 29055308 usec\n\
                     stack depth 216+0+176\n\
                     processed 1000001 insns (limit 1000000) max_states_per_insn 17\n";
        assert_eq!(
            shorten(error),
            "the BPF_PROG_LOAD syscall returned Argument list too long (os error 7); the \
             verifier said: BPF program is too large. Processed 1000001 insn"
        );
    }

    #[test]
    fn errors_without_a_verifier_log_are_kept_whole() {
        assert_eq!(shorten("program not found"), "program not found");
        assert_eq!(
            shorten("load failed. Verifier output: "),
            "load failed",
            "an empty log adds nothing"
        );
    }
}
