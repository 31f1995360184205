//! Return instructions, and calls through a register, of a function. maptrace puts a uprobe on each RET instead
//! of a uretprobe, because a uretprobe rewrites the return address on the goroutine stack, which Go moves and validates (a fatal
//! "unexpected return pc"). At a RET the results are still in registers and g is still in R14/R28.

use iced_x86::{Decoder, DecoderOptions, Instruction, Mnemonic, OpKind};

use super::{Arch, TargetError};

/// arm64 `RET` (`ret x30`), the only return Go emits.
const ARM64_RET: u32 = 0xd65f_03c0;
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
