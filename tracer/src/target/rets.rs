//! Return instructions of a function. maptrace puts a uprobe on each RET instead of a uretprobe, because a
//! uretprobe rewrites the return address on the goroutine stack, which Go moves and validates (a fatal
//! "unexpected return pc"). At a RET the results are still in registers and g is still in R14/R28.

use iced_x86::{Decoder, DecoderOptions, Mnemonic};

use super::{Arch, TargetError};

/// arm64 `RET` (`ret x30`), the only return Go emits.
const ARM64_RET: u32 = 0xd65f_03c0;

/// Addresses of the RETs in `code`, which starts at `entry`. amd64 is decoded instruction by instruction, since a
/// 0xC3 byte also occurs inside immediates and displacements; Go puts no data in text, so a linear sweep stays in
/// step, and the INT3 padding between functions decodes as instructions too.
pub(crate) fn ret_sites(arch: Arch, code: &[u8], entry: u64) -> Result<Vec<u64>, TargetError> {
    match arch {
        Arch::Amd64 => {
            let mut decoder = Decoder::with_ip(64, code, entry, DecoderOptions::NONE);
            Ok(decoder
                .iter()
                .filter(|i| i.mnemonic() == Mnemonic::Ret)
                .map(|i| i.ip())
                .collect())
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
                .filter(|(_, w)| u32::from_le_bytes([w[0], w[1], w[2], w[3]]) == ARM64_RET)
                .map(|(i, _)| entry + 4 * i as u64)
                .collect())
        }
    }
}
