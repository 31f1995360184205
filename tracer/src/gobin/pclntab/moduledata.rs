//! Finding `runtime.firstmoduledata` without symbols. It is the only place that records where Go text starts once
//! `pcHeader.textStart` stopped being written (Go 1.26), and the only source of `types`, the base of type-name
//! offsets. It lives in a writable segment (`.noptrdata`; `.go.module` from 1.26) and starts with a pointer to the
//! pclntab header followed by slices into the pclntab, which identify it.

use super::Header;
use crate::gobin::elf::Image;
use crate::gobin::layout::ModuledataOffsets;

/// Offsets of moduledata fields that have not moved since Go 1.18 (measured up to 1.27): the data pointers of the
/// pclntab slices, and `minpc`.
const FUNCNAMETAB: u64 = 8;
const CUTAB: u64 = 32;
const FILETAB: u64 = 56;
const PCTAB: u64 = 80;
const PCLNTABLE: u64 = 104;
const MINPC: u64 = 160;

#[derive(Clone, Copy, Debug)]
pub(crate) struct Module {
    /// Link-time address of the moduledata itself.
    pub addr: u64,
    pub text: u64,
    pub types: u64,
    /// `rodata` (what stack objects' type masks are relative to) and `gofunc` (`go:func.*`, what functions'
    /// funcdata are), the word before it (`symtab.go@go1.19`, `@go1.27.3`).
    pub rodata: u64,
    pub gofunc: u64,
}

/// The moduledata whose `pcHeader` is `pclntab`, checked field by field so that a stray equal word is not taken
/// for it. `first_entryoff` is the first functab entry, which `minpc` must equal relative to `text`.
pub(crate) fn find(
    image: &Image,
    bytes: &[u8],
    pclntab: u64,
    hdr: &Header,
    first_entryoff: u32,
    offsets: &ModuledataOffsets,
) -> Option<Module> {
    for seg in image.segments.iter().filter(|s| s.writable()) {
        let Some(data) = image.rest_of_segment(bytes, seg.vaddr) else {
            continue;
        };
        let skip = ((8 - seg.vaddr % 8) % 8) as usize;
        let Some(aligned) = data.get(skip..) else {
            continue;
        };
        let target = pclntab.to_le_bytes();
        for (i, word) in aligned.chunks_exact(8).enumerate() {
            if word != target {
                continue;
            }
            let addr = seg.vaddr + skip as u64 + 8 * i as u64;
            if let Some(m) = check(image, bytes, addr, pclntab, hdr, first_entryoff, offsets) {
                return Some(m);
            }
        }
    }
    None
}

fn check(
    image: &Image,
    bytes: &[u8],
    addr: u64,
    pclntab: u64,
    hdr: &Header,
    first_entryoff: u32,
    offsets: &ModuledataOffsets,
) -> Option<Module> {
    let field = |off: u64| image.read_u64(bytes, addr.checked_add(off)?);
    let slices = [
        (FUNCNAMETAB, hdr.funcname),
        (CUTAB, hdr.cu),
        (FILETAB, hdr.filetab),
        (PCTAB, hdr.pctab),
        (PCLNTABLE, hdr.pcln),
    ];
    for (off, rel) in slices {
        if field(off)? != pclntab.checked_add(rel as u64)? {
            return None;
        }
    }
    let text = field(offsets.text)?;
    let types = field(offsets.types)?;
    let etypes = field(offsets.etypes)?;
    let plausible = image.is_text(text)
        && field(MINPC)? == text.checked_add(u64::from(first_entryoff))?
        && (hdr.text_start == 0 || hdr.text_start == text)
        && types <= etypes
        && image.file_offset(types).is_some();
    let (rodata, gofunc) = (field(offsets.gofunc - 8)?, field(offsets.gofunc)?);
    plausible.then_some(Module {
        addr,
        text,
        types,
        rodata,
        gofunc,
    })
}
