//! Go type names, read from the target's `*abi.Type` descriptors.
//!
//! `abi.Type` (formerly `runtime._type`) has been laid out the same from Go 1.19 to 1.27: Size_
//! at 0, PtrBytes at 8, TFlag at 20, Kind_ at 23, Str (a nameOff into the module's type data) at
//! 40. A name is one flag byte, a uvarint length and the bytes.

use std::{io, sync::Arc};

use super::memo::{Memo, MEMO_ENTRIES};

use super::bytes::uvarint;
use crate::memory::Memory;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoType {
    pub name: String,
    pub size: u64,
}

const TYPE_SIZE_OFF: usize = 0;
const TYPE_PTRBYTES_OFF: u64 = 8;
const TYPE_TFLAG_OFF: usize = 20;
const TYPE_GCDATA_OFF: usize = 32;
const TYPE_STR_OFF: usize = 40;
const TYPE_HEADER_LEN: usize = 48;
/// `abi.TFlagExtraStar`: the stored name has a leading '*' that the type itself does not.
const TFLAG_EXTRA_STAR: u8 = 1 << 1;
/// `abi.TFlagGCMaskOnDemand` (1.24+): `GCData` holds where the runtime stores the mask once it built it.
const TFLAG_GC_MASK_ON_DEMAND: u8 = 1 << 4;
const MAX_NAME_LEN: u64 = 4096;

/// Memoizing resolver of `*abi.Type` pointers.
pub struct TypeNames {
    /// Runtime address of `moduledata.types`, the base of every nameOff.
    types_base: Option<u64>,
    cache: Memo<u64, Option<Arc<GoType>>>,
}

impl TypeNames {
    pub fn new(types_base: Option<u64>) -> Self {
        Self {
            types_base,
            cache: Memo::new(MEMO_ENTRIES),
        }
    }

    pub fn resolve(&mut self, mem: &dyn Memory, type_ptr: u64) -> Option<Arc<GoType>> {
        if type_ptr == 0 {
            return None;
        }
        let base = self.types_base;
        self.cache
            .get_or(type_ptr, || read_type(mem, base?, type_ptr).ok().map(Arc::new))
    }
}

fn read_type(mem: &dyn Memory, types_base: u64, type_ptr: u64) -> io::Result<GoType> {
    let mut hdr = [0u8; TYPE_HEADER_LEN];
    mem.read(type_ptr, &mut hdr)?;
    let size = u64::from_le_bytes(hdr[TYPE_SIZE_OFF..TYPE_SIZE_OFF + 8].try_into().unwrap());
    let tflag = hdr[TYPE_TFLAG_OFF];
    let name_off = i32::from_le_bytes(hdr[TYPE_STR_OFF..TYPE_STR_OFF + 4].try_into().unwrap());
    let name_addr = types_base.wrapping_add_signed(name_off as i64);

    // flag byte + uvarint length (at most 10 bytes)
    let mut prefix = [0u8; 11];
    mem.read(name_addr, &mut prefix)?;
    let mut start = 1;
    let len = uvarint(&prefix, &mut start).ok_or_else(|| bad("bad name length"))?;
    if len == 0 || len > MAX_NAME_LEN {
        return Err(bad("implausible name length"));
    }
    let mut name = vec![0u8; len as usize];
    mem.read(name_addr + start as u64, &mut name)?;
    let mut name = String::from_utf8(name).map_err(|_| bad("name is not UTF-8"))?;
    if tflag & TFLAG_EXTRA_STAR != 0 && name.starts_with('*') {
        name.remove(0);
    }
    Ok(GoType { name, size })
}

/// Where a type's pointer words are, as the GC reads them (`getGCMask`): the bitmap at `mask` covers the first
/// `ptr_bytes` of each `size`-byte value, a bit a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcMask {
    pub size: u64,
    pub ptr_bytes: u64,
    pub mask: u64,
}

/// The GC mask of the type at `type_ptr`. `mask_on_demand`: the runtime builds large types' masks on first use
/// (1.24+; before, the same flag bit meant another thing); None while it has not, or if unreadable.
pub fn gc_mask(mem: &dyn Memory, type_ptr: u64, mask_on_demand: bool) -> Option<GcMask> {
    let mut t = [0u8; TYPE_GCDATA_OFF + 8];
    mem.read(type_ptr, &mut t).ok()?;
    let word = |at: usize| u64::from_le_bytes(t[at..at + 8].try_into().unwrap_or_default());
    let mut mask = word(TYPE_GCDATA_OFF);
    if mask_on_demand && t[TYPE_TFLAG_OFF] & TFLAG_GC_MASK_ON_DEMAND != 0 {
        mask = mem.word(mask).filter(|&m| m != 0)?;
    }
    Some(GcMask {
        size: word(TYPE_SIZE_OFF),
        ptr_bytes: word(TYPE_PTRBYTES_OFF as usize),
        mask,
    })
}

/// Whether the type holds no pointers (`PtrBytes` is 0); None if unreadable.
pub fn pointer_free(mem: &dyn Memory, type_ptr: u64) -> Option<bool> {
    Some(mem.word(type_ptr.checked_add(TYPE_PTRBYTES_OFF)?)? == 0)
}

/// The type's `Size_`; None if unreadable.
pub fn size(mem: &dyn Memory, type_ptr: u64) -> Option<u64> {
    mem.word(type_ptr.checked_add(TYPE_SIZE_OFF as u64)?)
}

/// `Elem` of a pointer type (`abi.PtrType{Type; Elem *Type}`: right after the type header);
/// None for 0 or if unreadable.
pub fn pointer_elem(mem: &dyn Memory, ptr_type: u64) -> Option<u64> {
    if ptr_type == 0 {
        return None;
    }
    mem.word(ptr_type.checked_add(TYPE_HEADER_LEN as u64)?)
        .filter(|&e| e != 0)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic address space: (start, bytes) regions.
    struct Image(Vec<(u64, Vec<u8>)>);

    impl Memory for Image {
        fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
            for (start, bytes) in &self.0 {
                if addr >= *start && addr + buf.len() as u64 <= start + bytes.len() as u64 {
                    let off = (addr - start) as usize;
                    buf.copy_from_slice(&bytes[off..off + buf.len()]);
                    return Ok(());
                }
            }
            Err(io::Error::from(io::ErrorKind::UnexpectedEof))
        }
    }

    fn type_desc(size: u64, tflag: u8, name_off: i32) -> Vec<u8> {
        let mut t = vec![0u8; TYPE_HEADER_LEN];
        t[0..8].copy_from_slice(&size.to_le_bytes());
        t[TYPE_TFLAG_OFF] = tflag;
        t[TYPE_STR_OFF..TYPE_STR_OFF + 4].copy_from_slice(&name_off.to_le_bytes());
        t
    }

    fn name(s: &str) -> Vec<u8> {
        let mut n = vec![0u8, s.len() as u8];
        n.extend_from_slice(s.as_bytes());
        n
    }

    #[test]
    fn reads_names_and_strips_the_extra_star() {
        let base = 0x400000;
        let mut names = name("*main.Node");
        let second = names.len() as i32;
        names.extend(name("map[string]int"));
        let img = Image(vec![
            (base, names),
            (0x500000, type_desc(48, TFLAG_EXTRA_STAR, 0)),
            (0x500100, type_desc(8, 0, second)),
        ]);
        let mut t = TypeNames::new(Some(base));
        assert_eq!(
            *t.resolve(&img, 0x500000).unwrap(),
            GoType {
                name: "main.Node".into(),
                size: 48
            }
        );
        assert_eq!(t.resolve(&img, 0x500100).unwrap().name, "map[string]int");
    }

    #[test]
    fn unreadable_or_nil_types_have_no_name() {
        let img = Image(vec![(0x500000, type_desc(8, 0, 1 << 20))]);
        let mut t = TypeNames::new(Some(0x400000));
        assert_eq!(t.resolve(&img, 0), None);
        assert_eq!(t.resolve(&img, 0x500000), None);
        assert_eq!(t.resolve(&img, 0x900000), None);
        assert_eq!(TypeNames::new(None).resolve(&img, 0x500000), None);
    }

    #[test]
    fn pointer_free_types() {
        let with_ptr_bytes = |n: u64| {
            let mut t = type_desc(16, 0, 0);
            t[TYPE_PTRBYTES_OFF as usize..][..8].copy_from_slice(&n.to_le_bytes());
            t
        };
        let img = Image(vec![(0x600000, with_ptr_bytes(0)), (0x600100, with_ptr_bytes(8))]);
        assert_eq!(pointer_free(&img, 0x600000), Some(true));
        assert_eq!(pointer_free(&img, 0x600100), Some(false));
        assert_eq!(pointer_free(&img, 0x900000), None, "unreadable");
    }
}
