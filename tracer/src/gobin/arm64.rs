//! The few AArch64 encodings Go uses to address globals (`ADRP` then `ADD` or a load/store), shared by the
//! code readers that find runtime variables in binaries without symbols ([`super::gc`], [`super::runtime_globals`]).

use super::gc::Code;

/// The instruction words of a function, with their addresses.
pub(crate) fn words<'a>(code: &Code<'a>) -> impl Iterator<Item = (u64, u32)> + 'a {
    let entry = code.entry;
    code.bytes.chunks_exact(4).enumerate().map(move |(i, w)| {
        (
            entry.wrapping_add(4 * i as u64),
            u32::from_le_bytes([w[0], w[1], w[2], w[3]]),
        )
    })
}

/// The destination register field.
pub(crate) fn rd(w: u32) -> u32 {
    w & 31
}

/// The first source register field.
pub(crate) fn rn(w: u32) -> u32 {
    (w >> 5) & 31
}

/// `ADRP Xd, label`: (Xd, the 4 KiB page address).
pub(crate) fn adrp(pc: u64, w: u32) -> Option<(u32, u64)> {
    if w & 0x9f00_0000 != 0x9000_0000 {
        return None;
    }
    let immlo = u64::from((w >> 29) & 3);
    let immhi = u64::from((w >> 5) & 0x7_ffff);
    // A 21-bit signed page count.
    let pages = (((immhi << 2) | immlo) << 43) as i64 >> 43;
    Some((rd(w), (pc & !0xfff).wrapping_add((pages << 12) as u64)))
}

/// `ADD Xd, Xn, #imm{, LSL #12}` (64-bit): (Xd, Xn, imm).
pub(crate) fn add_imm(w: u32) -> Option<(u32, u32, u64)> {
    if w & 0xff80_0000 != 0x9100_0000 {
        return None;
    }
    let imm = u64::from((w >> 10) & 0xfff);
    let imm = if w & (1 << 22) != 0 { imm << 12 } else { imm };
    Some((rd(w), rn(w), imm))
}
