//! Checked little-endian reads: every table in a Go binary is read through these, so that a corrupt offset gives
//! `None` instead of a panic.

pub(crate) fn u16_at(data: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(data.get(off..off.checked_add(2)?)?.try_into().ok()?))
}

pub(crate) fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(data.get(off..off.checked_add(4)?)?.try_into().ok()?))
}

pub(crate) fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(data.get(off..off.checked_add(8)?)?.try_into().ok()?))
}

/// The NUL-terminated string at `off` (without the NUL).
pub(crate) fn cstr_at(data: &[u8], off: usize) -> Option<&[u8]> {
    let rest = data.get(off..)?;
    let len = rest.iter().position(|&b| b == 0)?;
    Some(&rest[..len])
}

/// A Go/LEB128 unsigned varint at `*pos`, advancing `*pos`. Rejects encodings longer than a u64.
pub(crate) fn uvarint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::uvarint;

    #[test]
    fn uvarint_lengths() {
        let read = |b: &[u8]| {
            let mut pos = 0;
            uvarint(b, &mut pos).map(|v| (v, pos))
        };
        assert_eq!(read(&[5]), Some((5, 1)));
        assert_eq!(read(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(read(&[0x80; 10]), None);
    }
}
