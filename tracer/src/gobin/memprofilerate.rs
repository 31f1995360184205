//! Where `runtime.MemProfileRate` is in a binary without symbols, so that sampled mode can read
//! the rate its samples were taken at (and, behind a flag, set it).
//!
//! `runtime.profilealloc`, which every Go program links (the allocator calls it for each sampled
//! allocation), resets the P's sample countdown with `nextSample()`, inlined, whose first test is
//! `MemProfileRate == 1`. So on amd64 the rate is **the 8-byte global loaded into a register that
//! the function later compares with the immediate 1**. Measured forms, go1.19–go1.27:
//! `MOVQ runtime.MemProfileRate(SB), AX; CMPQ AX, $1` (1.19–1.23) and, since 1.24, a first load
//! into `c.memProfRate` then a second one tested for 0 and compared with 1. The only other global
//! the function reads is `runtime.mcache0`, tested for nil. Exactly one address must come out,
//! 8-byte aligned and in a writable segment; anything else is an error, not a guess. arm64 binaries
//! without symbols are not handled (no arm64 machine here to check the rule on).

use std::collections::HashMap;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::elf::Image;
use super::gc::Code;
use super::Arch;

/// The function whose code locates `MemProfileRate`.
pub(crate) const READER: &str = "runtime.profilealloc";

pub(crate) fn rate_from_code(image: &Image, reader: Option<Code<'_>>) -> Result<u64, String> {
    if image.arch != Arch::Amd64 {
        return Err(format!("not done for {} binaries without symbols", image.arch));
    }
    let code = reader.ok_or_else(|| format!("no function {READER}"))?;
    let mut found = compared_with_one(&code);
    found.sort_unstable();
    found.dedup();
    match found[..] {
        [addr] if addr % 8 == 0 && image.is_writable_memory(addr, 8) => Ok(addr),
        [addr] => Err(format!(
            "{READER} compares {addr:#x}, which is not an aligned word of a writable segment"
        )),
        [] => Err(format!("{READER} compares no global with 1")),
        _ => Err(format!("{READER} compares {} globals with 1: {found:#x?}", found.len())),
    }
}

fn is_gpr64(r: Register) -> bool {
    (Register::RAX..=Register::R15).contains(&r)
}

/// Globals `G` such that `MOV r64, [rip+G]` is followed, before any other global is loaded into
/// `r`, by `CMP r64, 1` (in code order, whatever the branches in between).
fn compared_with_one(code: &Code<'_>) -> Vec<u64> {
    let mut decoder = Decoder::with_ip(64, code.bytes, code.entry, DecoderOptions::NONE);
    let mut loaded: HashMap<Register, u64> = HashMap::new();
    let mut found = Vec::new();
    for insn in decoder.iter() {
        let r0 = (insn.op_count() > 0 && insn.op0_kind() == OpKind::Register).then(|| insn.op0_register());
        match (insn.mnemonic(), r0) {
            (Mnemonic::Mov, Some(r))
                if is_gpr64(r) && insn.op1_kind() == OpKind::Memory && insn.is_ip_rel_memory_operand() =>
            {
                loaded.insert(r, insn.ip_rel_memory_address());
            }
            (Mnemonic::Cmp, Some(r))
                if matches!(insn.op1_kind(), OpKind::Immediate8to64 | OpKind::Immediate32to64)
                    && insn.immediate(1) == 1 =>
            {
                found.extend(loaded.get(&r));
            }
            _ => {}
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(bytes: &[u8]) -> Code<'_> {
        Code { entry: 0x1000, bytes }
    }

    #[test]
    fn the_global_compared_with_one() {
        // mov rdx,[rip+0x100]; test rdx,rdx; mov rax,[rip+0x200]; cmp rax,1; ret
        let bytes = [
            0x48, 0x8b, 0x15, 0x00, 0x01, 0x00, 0x00, // 0x1000..0x1007 → 0x1107
            0x48, 0x85, 0xd2, //
            0x48, 0x8b, 0x05, 0x00, 0x02, 0x00, 0x00, // 0x100a..0x1011 → 0x1211
            0x48, 0x83, 0xf8, 0x01, //
            0xc3,
        ];
        assert_eq!(compared_with_one(&code(&bytes)), vec![0x1211]);
        // The same with `cmp rdx,1`: the other global.
        let mut other = bytes;
        other[19] = 0xfa;
        assert_eq!(compared_with_one(&code(&other)), vec![0x1107]);
        // No comparison with 1: nothing.
        let mut none = bytes;
        none[20] = 0x02;
        assert!(compared_with_one(&code(&none)).is_empty());
    }
}
