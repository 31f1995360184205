//! Where in a function maptrace puts its uprobes. Return instructions, and calls through a register: a uprobe on
//! each RET instead of a uretprobe, because a uretprobe rewrites the return address on the goroutine stack, which Go
//! moves and validates (a fatal "unexpected return pc"). At a RET the results are still in registers and g is still
//! in R14/R28.
//!
//! And the first instruction past the stack-bound check: a function entry runs again each time the check sends the
//! goroutine to `morestack` (a stack to grow, or a preemption request the runtime declines while the M holds locks,
//! as inside `mallocgc`: it restarts the function). While the GC tries to suspend a goroutine it keeps asking, so an
//! entry probe can fire thousands of times for one call; past the check it fires once per call. The arguments, g
//! and the return address (at the stack pointer, or in the link register) are still untouched there.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};

use super::{Arch, TargetError};

/// arm64 `RET` (`ret x30`), the only return Go emits.
const ARM64_RET: u32 = 0xd65f_03c0;
/// arm64 `MOVD 16(R28), R16`: the stack-bound check loads g.stackguard0.
const ARM64_LOAD_STACKGUARD: u32 = 0xf940_0b90;
/// arm64 `B.LS`: the opcode with the offset field masked out.
const ARM64_BLS: (u32, u32) = (0xff00_001f, 0x5400_0009);
/// `g.stackguard0`: after `g.stack` (lo, hi) in every Go release.
const AMD64_STACKGUARD_DISP: u64 = 16;
/// Instructions a stack-bound check spans at most (large frames compute the bound first).
const STACK_CHECK_MAX_INSNS: usize = 6;
/// arm64 `BLR Xn`: the opcode with the register field (bits 5–9) masked out.
const ARM64_BLR: (u32, u32) = (0xffff_fc1f, 0xd63f_0000);

/// Addresses of the RETs in `code`, which starts at `entry`. amd64 is decoded instruction by instruction, since a
/// 0xC3 byte also occurs inside immediates and displacements; Go puts no data in text, so a linear sweep stays in
/// step, and the INT3 padding between functions decodes as instructions too.
pub(crate) fn ret_sites(arch: Arch, code: &[u8], entry: u64) -> Result<Vec<u64>, TargetError> {
    sites(arch, code, entry, |i| i.mnemonic() == Mnemonic::Ret, |w| w == ARM64_RET)
}

/// Addresses of the calls through a register in `code` (`CALL AX`, `BLR R1`): calls of func values.
pub(crate) fn indirect_call_sites(arch: Arch, code: &[u8], entry: u64) -> Result<Vec<u64>, TargetError> {
    sites(
        arch,
        code,
        entry,
        |i| i.mnemonic() == Mnemonic::Call && i.op0_kind() == OpKind::Register,
        |w| w & ARM64_BLR.0 == ARM64_BLR.1,
    )
}

/// The first instruction after `code`'s stack-bound check (`CMP …, 16(R14); JBE morestack`, or `MOVD 16(R28), R16;
/// …; BLS morestack`), or `entry` for a function without one (NOSPLIT).
pub(crate) fn past_stack_check(arch: Arch, code: &[u8], entry: u64) -> u64 {
    match arch {
        Arch::Amd64 => {
            let insns: Vec<Instruction> = Decoder::with_ip(64, code, entry, DecoderOptions::NONE)
                .iter()
                .take(STACK_CHECK_MAX_INSNS)
                .collect();
            let reads_stackguard = |i: &Instruction| {
                i.mnemonic() == Mnemonic::Cmp
                    && (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory)
                    && i.memory_base() == Register::R14
                    && i.memory_displacement64() == AMD64_STACKGUARD_DISP
            };
            insns
                .windows(2)
                .find(|w| reads_stackguard(&w[0]) && w[1].mnemonic() == Mnemonic::Jbe)
                .map_or(entry, |w| w[1].next_ip())
        }
        Arch::Arm64 => {
            let words: Vec<u32> = code
                .chunks_exact(4)
                .take(STACK_CHECK_MAX_INSNS)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
            if words.first() != Some(&ARM64_LOAD_STACKGUARD) {
                return entry;
            }
            words
                .iter()
                .position(|&w| w & ARM64_BLS.0 == ARM64_BLS.1)
                .map_or(entry, |i| entry + 4 * (i as u64 + 1))
        }
    }
}

fn sites(
    arch: Arch,
    code: &[u8],
    entry: u64,
    amd64: impl Fn(&Instruction) -> bool,
    arm64: impl Fn(u32) -> bool,
) -> Result<Vec<u64>, TargetError> {
    match arch {
        Arch::Amd64 => {
            let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
            Ok(decoder.iter().filter(|i| amd64(i)).map(|i| i.ip()).collect())
        }
        Arch::Arm64 => {
            if !entry.is_multiple_of(4) {
                return Err(TargetError::corrupt(format!(
                    "arm64 function at {entry:#x} is not 4-byte aligned"
                )));
            }
            Ok(code
                .chunks_exact(4)
                .enumerate()
                .filter(|(_, w)| arm64(u32::from_le_bytes([w[0], w[1], w[2], w[3]])))
                .map(|(i, _)| entry + 4 * i as u64)
                .collect())
        }
    }
}
