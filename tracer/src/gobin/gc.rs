//! Facts about the garbage collector that are read from the code rather than from a table: where the GC cycle
//! counter `runtime.work.cycles` is in a binary without symbols, and whether the Green Tea GC was compiled in.
//!
//! **The cycle counter without symbols.** `-ldflags=-s -w` drops the symbol that names `runtime.work`, but the
//! pclntab still names every function, and the code that reads the counter still holds its address. The reader
//! used is `runtime.gcTrigger.test`, which every Go program links (gcStart calls it) and which is small.
//! (`runtime.GC`, whose first read is `work.cycles.Load()`, is only linked into programs that call it.)
//!
//! ```go
//! case gcTriggerCycle:
//!     // t.n > work.cycles, but accounting for wraparound.
//!     return int32(t.n-work.cycles.Load()) > 0   // 1.19: int32(t.n-work.cycles) > 0
//! ```
//!
//! The method receiver `gcTrigger{kind int; now int64; n uint32}` arrives in registers, `n` being the third
//! integer register (ECX on amd64, R2 on arm64), so the counter is **the 32-bit global that is subtracted from
//! the third argument register**. Measured forms, go1.19–go1.27:
//! * amd64: `SUBL runtime.work+344(SB), CX` (1.19), or `MOVL runtime.work+N(SB), r; SUBL r, CX` (1.21+).
//! * arm64: `ADRP; ADD $lo; LDARW (Ra), Rb` (1.21+) or `ADRP; ADD $lo; MOVWU (Ra), Rb` (1.19), or the same with
//!   the low bits folded into the load (`MOVWU lo(Ra), Rb`), then `SUB Rb, R2, Rd`.
//!
//! The loads and the SUB must be adjacent. The rule then checks its answer: exactly one such address in the
//! function; it is 4-byte aligned and lies in a writable PT_LOAD's memory (runtime.work is in `.bss`); and
//! `runtime.gcStart`, which increments the counter (`work.cycles.Add(1)`; `work.cycles++` in 1.19), refers to the
//! same address. Code that does not fit (for instance a `-gcflags=all=-N -l` build, where the load
//! is a call to `atomic.(*Uint32).Load`) gives an error, never a guess.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::elf::Image;
use super::layout;
use super::{Arch, GoVersion, TargetError};

/// The function whose code locates `work.cycles`.
const READER: &str = "runtime.gcTrigger.test";
/// The function that increments it, which must refer to the same address.
const WRITER: &str = "runtime.gcStart";

/// Entry address and code bytes of a function, as [`super::GoBinary`] resolves them.
pub(crate) struct Code<'a> {
    pub entry: u64,
    pub bytes: &'a [u8],
}

/// Where `runtime.work.cycles` is, found from the code of [`READER`] and checked against [`WRITER`] and the
/// segments. `code` gives a function's code by name.
pub(crate) fn cycles_from_code<'a>(image: &Image, code: impl Fn(&str) -> Option<Code<'a>>) -> Result<u64, String> {
    let reader = code(READER).ok_or_else(|| format!("no function {READER}"))?;
    let mut found = match image.arch {
        Arch::Amd64 => amd64::subtracted_globals(&reader),
        Arch::Arm64 => arm64::subtracted_globals(&reader),
    };
    found.sort_unstable();
    found.dedup();
    let addr = match found[..] {
        [a] => a,
        [] => {
            return Err(format!(
                "{READER} has no 32-bit global subtracted from gcTrigger.n (unoptimized build?)"
            ))
        }
        _ => {
            return Err(format!(
                "{READER} subtracts {} different globals from gcTrigger.n: {found:#x?}",
                found.len()
            ))
        }
    };
    if addr % 4 != 0 || !image.is_writable_memory(addr, 4) {
        return Err(format!(
            "{READER} reads {addr:#x}, which is not an aligned word of a writable segment"
        ));
    }
    let writer = code(WRITER).ok_or_else(|| format!("no function {WRITER}"))?;
    let refs = match image.arch {
        Arch::Amd64 => amd64::referenced_globals(&writer),
        Arch::Arm64 => arm64::referenced_globals(&writer),
    };
    if !refs.contains(&addr) {
        return Err(format!(
            "{READER} reads {addr:#x} as the cycle count, but {WRITER} never refers to it"
        ));
    }
    Ok(addr)
}

/// The error for a binary whose cycle counter cannot be found.
pub(crate) fn cycles_not_found(version: &GoVersion, arch: Arch, why: &str) -> TargetError {
    TargetError::UnsupportedVersion {
        version: version.raw.clone(),
        reason: format!(
            "cannot locate runtime.work.cycles (the GC cycle counter) in this {arch} binary without a \
             symbol table: {why}; rebuild it without -ldflags=-s"
        ),
    }
}

/// What the code says about Green Tea. The decision itself is [`layout::green_tea_by_version`]; this is its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GreenTeaCode {
    /// Green Tea's `moveInlineMarks` is linked: out of line from `mgcmark_greenteagc.go`, or inlined (its name is
    /// only in the pclntab's name table).
    Compiled,
    /// No Green Tea code: `moveInlineMarks` is absent (sweep's call to it is compiled out), or it is the
    /// throwing stub of `mgcmark_nogreenteagc.go`, which builds without inlining (`-gcflags=all=-l`) keep.
    Absent,
    /// Nothing to go by: a release newer than those checked, or a source file of an unexpected name.
    Unknown,
}

/// The function sweep calls to merge Green Tea's inline marks; in 1.25+ both GC variants define it.
pub(crate) const MOVE_INLINE_MARKS: &str = "runtime.(*mspan).moveInlineMarks";

/// Classifies the binary by [`MOVE_INLINE_MARKS`]: `file` is the source file of its out-of-line copy, if there
/// is one, and `name_listed` tells whether the pclntab's function-name table holds its name (true also when it
/// was only inlined).
pub(crate) fn green_tea_code(version: &GoVersion, file: Option<&str>, name_listed: bool) -> GreenTeaCode {
    match file {
        Some(f) if f.ends_with("/mgcmark_greenteagc.go") || f == "mgcmark_greenteagc.go" => GreenTeaCode::Compiled,
        Some(f) if f.ends_with("mgcmark_nogreenteagc.go") => GreenTeaCode::Absent,
        Some(_) => GreenTeaCode::Unknown,
        None if name_listed => GreenTeaCode::Compiled,
        None if version.major == 1 && version.minor <= layout::LAST_CHECKED_MINOR => GreenTeaCode::Absent,
        None => GreenTeaCode::Unknown,
    }
}

/// Green Tea on or off: the version and experiments decide, the code must agree.
pub(crate) fn green_tea(version: &GoVersion, experiments: &[String], code: GreenTeaCode) -> Result<bool, TargetError> {
    let decided = layout::green_tea_by_version(version, experiments);
    let contradiction = match code {
        GreenTeaCode::Compiled => !decided,
        GreenTeaCode::Absent => decided,
        GreenTeaCode::Unknown => false,
    };
    if contradiction {
        let (said, found) = if decided {
            ("on", "has no Green Tea")
        } else {
            ("off", "has Green Tea's")
        };
        return Err(TargetError::UnsupportedVersion {
            version: version.raw.clone(),
            reason: format!(
                "the version and GOEXPERIMENT ({}) say the Green Tea GC is {said}, but the code {found} \
                 {MOVE_INLINE_MARKS}; maptrace cannot tell where mark bits live",
                if experiments.is_empty() {
                    "none".to_string()
                } else {
                    experiments.join(",")
                }
            ),
        });
    }
    Ok(decided)
}

mod amd64 {
    use super::*;

    fn is_gpr32(r: Register) -> bool {
        r >= Register::EAX && r <= Register::R15D
    }

    /// Addresses of 32-bit RIP-relative globals subtracted from ECX: `SUB ECX, [rip+X]`, or `MOV r32, [rip+X]`
    /// directly followed by `SUB ECX, r32`.
    pub(super) fn subtracted_globals(code: &Code<'_>) -> Vec<u64> {
        let mut decoder = Decoder::with_ip(64, code.bytes, code.entry, DecoderOptions::NONE);
        let mut found = Vec::new();
        // The register the previous instruction loaded from a global, and the global's address.
        let mut loaded: Option<(Register, u64)> = None;
        for insn in decoder.iter() {
            if insn.mnemonic() == Mnemonic::Sub
                && insn.op0_kind() == OpKind::Register
                && insn.op0_register() == Register::ECX
            {
                match insn.op1_kind() {
                    OpKind::Memory if insn.is_ip_rel_memory_operand() => found.push(insn.ip_rel_memory_address()),
                    OpKind::Register => {
                        if let Some((r, a)) = loaded {
                            if insn.op1_register() == r {
                                found.push(a);
                            }
                        }
                    }
                    _ => {}
                }
            }
            loaded = (insn.mnemonic() == Mnemonic::Mov
                && insn.op0_kind() == OpKind::Register
                && is_gpr32(insn.op0_register())
                && insn.op1_kind() == OpKind::Memory
                && insn.is_ip_rel_memory_operand())
            .then(|| (insn.op0_register(), insn.ip_rel_memory_address()));
        }
        found
    }

    /// Every RIP-relative address the code reads, writes or takes (LEA).
    pub(super) fn referenced_globals(code: &Code<'_>) -> Vec<u64> {
        let mut decoder = Decoder::with_ip(64, code.bytes, code.entry, DecoderOptions::NONE);
        decoder
            .iter()
            .filter(|i| i.is_ip_rel_memory_operand())
            .map(|i| i.ip_rel_memory_address())
            .collect()
    }
}

/// A minimal AArch64 decoder: the few encodings Go uses to address globals (`ADRP` + `ADD`/`LDR`/`STR`).
mod arm64 {
    use super::super::arm64::{add_imm, adrp, rd, rn, words};
    use super::Code;

    /// A load or store with an unsigned scaled immediate offset (`LDR`/`STR`/`LDRB`… `[Xn, #off]`, integer
    /// registers): (Rt, Xn, byte offset, access size in bytes, is a load).
    fn ldst_uimm(w: u32) -> Option<(u32, u32, u64, u32, bool)> {
        // size:2 111 V=0 01 opc:2 imm12 Rn Rt
        if w & 0x3f00_0000 != 0x3900_0000 {
            return None;
        }
        let size = w >> 30;
        let opc = (w >> 22) & 3;
        let off = u64::from((w >> 10) & 0xfff) << size;
        Some((rd(w), rn(w), off, 1 << size, opc != 0))
    }

    /// `LDARW Wt, [Xn]`: (Wt, Xn).
    fn ldar_w(w: u32) -> Option<(u32, u32)> {
        (w & 0xffff_fc00 == 0x88df_fc00).then(|| (rd(w), rn(w)))
    }

    /// `SUB Rd, Rn, Rm` (shifted register, shift 0; 32 or 64 bit): (Rd, Rn, Rm).
    fn sub_reg(w: u32) -> Option<(u32, u32, u32)> {
        if w & 0x7f20_fc00 != 0x4b00_0000 {
            return None;
        }
        Some((rd(w), rn(w), (w >> 16) & 31))
    }

    /// The address an instruction forms from the page in `page` (held in register `reg`), if it is the low half
    /// of a global reference: `ADD` gives it as a value, a load/store accesses it.
    enum Low {
        /// `ADD Xd, Xreg, #lo`: Xd now holds the address.
        Address(u32, u64),
        /// A load/store `[Xreg, #lo]`: (Rt, address, size, is a load).
        Access(u32, u64, u32, bool),
    }

    fn low(page: u64, reg: u32, w: u32) -> Option<Low> {
        if let Some((d, n, imm)) = add_imm(w) {
            return (n == reg).then(|| Low::Address(d, page.wrapping_add(imm)));
        }
        if let Some((t, n, off, size, load)) = ldst_uimm(w) {
            return (n == reg).then(|| Low::Access(t, page.wrapping_add(off), size, load));
        }
        None
    }

    /// Addresses of 32-bit globals subtracted from R2: `ADRP Xa; ADD Xa, Xa, #lo; LDARW|LDR Wb, [Xa]` or
    /// `ADRP Xa; LDR Wb, [Xa, #lo]`, directly followed by `SUB Xd, X2, Xb`.
    pub(super) fn subtracted_globals(code: &Code<'_>) -> Vec<u64> {
        let w: Vec<(u64, u32)> = words(code).collect();
        let mut found = Vec::new();
        for i in 0..w.len() {
            let Some((a, page)) = adrp(w[i].0, w[i].1) else {
                continue;
            };
            // (the loaded register, the global, the index of the SUB that must follow)
            let load = match w.get(i + 1).and_then(|&(_, x)| low(page, a, x)) {
                Some(Low::Access(b, addr, 4, true)) => Some((b, addr, i + 2)),
                Some(Low::Address(d, addr)) => w.get(i + 2).and_then(|&(_, x)| {
                    let b = ldar_w(x).filter(|&(_, n)| n == d).map(|(b, _)| b).or_else(|| {
                        ldst_uimm(x)
                            .filter(|&(_, n, off, size, load)| n == d && off == 0 && size == 4 && load)
                            .map(|(b, ..)| b)
                    })?;
                    Some((b, addr, i + 3))
                }),
                _ => None,
            };
            let Some((b, addr, next)) = load else {
                continue;
            };
            if let Some((_, 2, m)) = w.get(next).and_then(|&(_, x)| sub_reg(x)) {
                if m == b {
                    found.push(addr);
                }
            }
        }
        found
    }

    /// Every global the code addresses with `ADRP` and a following `ADD` or load/store.
    pub(super) fn referenced_globals(code: &Code<'_>) -> Vec<u64> {
        let w: Vec<(u64, u32)> = words(code).collect();
        let mut refs = Vec::new();
        for pair in w.windows(2) {
            let Some((a, page)) = adrp(pair[0].0, pair[0].1) else {
                continue;
            };
            match low(page, a, pair[1].1) {
                Some(Low::Address(_, addr)) | Some(Low::Access(_, addr, _, _)) => refs.push(addr),
                None => {}
            }
        }
        refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(raw: &str) -> GoVersion {
        GoVersion::parse(raw).unwrap()
    }

    fn exps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn green_tea_decision() {
        let on = |v: &str, e: &[&str]| layout::green_tea_by_version(&version(v), &exps(e));
        // Not in Go before 1.25, opt-in in 1.25, default from 1.26.
        assert!(!on("go1.19.8", &[]));
        assert!(!on("go1.24.11", &["greenteagc"]));
        assert!(!on("go1.25.5", &[]));
        assert!(on("go1.25.5 X:greenteagc", &["greenteagc"]));
        assert!(on("go1.26.6", &[]));
        assert!(!on("go1.26.6-X:nogreenteagc", &["nogreenteagc"]));
        assert!(on("go1.27.3", &[]));
        assert!(on("go1.27.3", &["nosizespecializedmalloc", "jsonv2"]));
        assert!(!on("go1.27.3", &["nogreenteagc"]));
        assert!(!on("go1.27.3", &["none"]));
        assert!(on("go1.26.6", &["none", "greenteagc"]));
        assert!(!on("go1.25.5", &["greenteagc", "nogreenteagc"]));
        assert!(on("go1.28.0", &[]));
        assert!(!on("go2.0.0", &[]));
    }

    #[test]
    fn green_tea_code_must_agree() {
        let v125 = version("go1.25.5");
        let v126 = version("go1.26.6");
        let green = "/go/src/runtime/mgcmark_greenteagc.go";
        let stub = "/go/src/runtime/mgcmark_nogreenteagc.go";
        use GreenTeaCode::*;
        assert_eq!(green_tea_code(&v126, Some(green), true), Compiled);
        assert_eq!(
            green_tea_code(&v126, Some("runtime/mgcmark_greenteagc.go"), true),
            Compiled
        );
        assert_eq!(green_tea_code(&v126, Some(stub), true), Absent);
        assert_eq!(green_tea_code(&v126, None, true), Compiled);
        assert_eq!(green_tea_code(&v126, None, false), Absent);
        assert_eq!(green_tea_code(&version("go1.28.1"), None, false), Unknown);
        assert_eq!(green_tea_code(&v126, Some("?"), true), Unknown);

        let decide = |v: &GoVersion, e: &[&str], c| green_tea(v, &exps(e), c);
        assert!(decide(&v126, &[], Compiled).unwrap());
        assert!(!decide(&v126, &["nogreenteagc"], Absent).unwrap());
        assert!(decide(&v125, &["greenteagc"], Compiled).unwrap());
        assert!(!decide(&v125, &[], Absent).unwrap());
        assert!(decide(&version("go1.28.1"), &[], Unknown).unwrap());
        // The code contradicting the version is refused, whichever way.
        for (v, e, c) in [
            (&v126, &[][..], Absent),
            (&v125, &[][..], Compiled),
            (&v126, &["nogreenteagc"][..], Compiled),
        ] {
            let err = decide(v, e, c).unwrap_err();
            assert!(
                matches!(&err, TargetError::UnsupportedVersion { reason, .. } if reason.contains("Green Tea")),
                "{err}"
            );
        }
    }

    fn code(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn arm64_patterns() {
        // From go1.21.13 counting-arm64, runtime.gcTrigger.test at 0x25bc0:
        // ADRP 1265664(PC), R1; ADD $496, R1, R1; LDARW (R1), R1; SUB R1, R2, R1
        let entry = 0x25bc0;
        let bytes = code(&[0xb00009a1, 0x9107c021, 0x88dffc21, 0xcb010041]);
        let c = Code { entry, bytes: &bytes };
        let want = (entry & !0xfff) + 1265664 + 496;
        assert_eq!(arm64::subtracted_globals(&c), [want]);
        assert_eq!(arm64::referenced_globals(&c), [want]);
        // The load folded into LDR [Xa, #lo] (go1.21.13 `MOVWU 1956(R27), R3` shape), then SUB from R2.
        let bytes = code(&[0x90000b5b, 0xb947a763, 0xcb030041]);
        let c = Code { entry, bytes: &bytes };
        let want = (entry & !0xfff) + 1474560 + 1956;
        assert_eq!(arm64::subtracted_globals(&c), [want]);
        // Subtracting from another register than R2 is not the pattern.
        let bytes = code(&[0xb00009a1, 0x9107c021, 0x88dffc21, 0xcb010061]);
        let c = Code { entry, bytes: &bytes };
        assert!(arm64::subtracted_globals(&c).is_empty());
        // Truncated or empty code.
        for n in 0..4 {
            let bytes = code(&[0xb00009a1, 0x9107c021, 0x88dffc21, 0xcb010041][..n]);
            let c = Code { entry, bytes: &bytes };
            assert!(arm64::subtracted_globals(&c).is_empty());
        }
    }
}
