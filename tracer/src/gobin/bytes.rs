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

/// The longest name maptrace takes from a binary's tables (function and file names). Go's longest are generic
/// instantiations spelling out their type arguments, a few hundred bytes; a name past this is not a real one, and
/// looking for its end would make every lookup as long as the file.
pub(crate) const MAX_NAME: usize = 64 * 1024;

/// The NUL-terminated string at `off` (without the NUL), if it ends within [`MAX_NAME`] bytes.
pub(crate) fn cstr_at(data: &[u8], off: usize) -> Option<&[u8]> {
    let rest = data.get(off..)?;
    let len = rest.iter().take(MAX_NAME + 1).position(|&b| b == 0)?;
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
    use super::{cstr_at, uvarint, MAX_NAME};

    #[test]
    fn names_end_within_the_cap() {
        let mut long = vec![b'a'; MAX_NAME];
        long.push(0);
        assert_eq!(cstr_at(&long, 0).map(<[u8]>::len), Some(MAX_NAME));
        long.insert(0, b'a');
        assert_eq!(cstr_at(&long, 0), None, "one byte over the cap");
        assert_eq!(cstr_at(b"go\0", 0), Some(&b"go"[..]));
    }

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
