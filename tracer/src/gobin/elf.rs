//! The ELF container: architecture, loadable segments and named sections, copied out of `object`'s borrowed view
//! so that [`super::GoBinary`] can own its bytes. Addresses are resolved through PT_LOAD segments, which exist in
//! every executable, rather than section headers, which a hostile or `sstrip`ped file may lack.

use object::elf::FileHeader64;
use object::elf::{ELFCLASS64, ELFDATA2LSB, EM_AARCH64, EM_X86_64, PF_W, PF_X, PT_LOAD, SHT_NOBITS, SHT_SYMTAB};
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, SectionHeader};
use object::{Endianness, Object, ObjectSection, ObjectSymbol};

use super::bytes::{u16_at, u64_at};
use super::{Arch, TargetError};

pub(crate) type File<'a> = ElfFile64<'a, Endianness>;

/// Go's linker writes four to six loadable segments and a few dozen sections (cgo binaries a few more).
const MAX_SEGMENTS: usize = 64;
const MAX_SECTIONS: usize = 1024;

#[derive(Debug)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    /// Size in memory: `filesz` plus the zero-filled tail (.bss).
    pub memsz: u64,
    pub flags: u32,
}

impl Segment {
    pub fn writable(&self) -> bool {
        self.flags & PF_W != 0
    }
}

#[derive(Debug)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    pub size: u64,
    /// File offset of the contents; `None` for NOBITS (.bss) sections.
    pub offset: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Image {
    pub arch: Arch,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
    pub has_symtab: bool,
    pub has_dwarf: bool,
}

/// Parses the ELF headers, first checking the cases `object` would report with a less helpful message.
pub(crate) fn open(bytes: &[u8]) -> Result<File<'_>, TargetError> {
    let ident = bytes
        .get(..16)
        .ok_or_else(|| TargetError::NotElf(format!("only {} bytes", bytes.len())))?;
    if &ident[..4] != b"\x7fELF" {
        return Err(TargetError::NotElf("no ELF magic".into()));
    }
    if ident[4] != ELFCLASS64 {
        return Err(TargetError::UnsupportedArch("32-bit ELF".into()));
    }
    if ident[5] != ELFDATA2LSB {
        return Err(TargetError::UnsupportedArch("big-endian ELF".into()));
    }
    // A cut file loses headers or contents; say "truncated" for that rather than passing on `object`'s message.
    let truncated = |what: String| TargetError::Truncated { what };
    let (Some(phoff), Some(shoff), Some(phnum), Some(shentsize), Some(shnum)) = (
        u64_at(bytes, 0x20),
        u64_at(bytes, 0x28),
        u16_at(bytes, 0x38),
        u16_at(bytes, 0x3a),
        u16_at(bytes, 0x3c),
    ) else {
        return Err(truncated("ELF header".into()));
    };
    let len = bytes.len() as u128;
    if u128::from(phoff) + u128::from(phnum) * 56 > len {
        return Err(truncated("program headers".into()));
    }
    if u128::from(shoff) + u128::from(shnum) * u128::from(shentsize) > len {
        return Err(truncated("section headers".into()));
    }
    let corrupt = |e: object::Error| TargetError::corrupt(format!("ELF headers: {e}"));
    let header = FileHeader64::<Endianness>::parse(bytes).map_err(corrupt)?;
    let endian = header.endian().map_err(corrupt)?;
    for ph in header.program_headers(endian, bytes).map_err(corrupt)? {
        if u128::from(ph.p_offset(endian)) + u128::from(ph.p_filesz(endian)) > len {
            return Err(truncated(format!("segment at {:#x}", ph.p_vaddr(endian))));
        }
    }
    for (i, sh) in header
        .section_headers(endian, bytes)
        .map_err(corrupt)?
        .iter()
        .enumerate()
    {
        if sh.sh_type(endian) != SHT_NOBITS && u128::from(sh.sh_offset(endian)) + u128::from(sh.sh_size(endian)) > len {
            return Err(truncated(format!("contents of section {i}")));
        }
    }
    File::parse(bytes).map_err(corrupt)
}

impl Image {
    /// Copies what later stages need; [`open`] has checked that every header's contents lie in the file.
    pub fn new(file: &File<'_>) -> Result<Image, TargetError> {
        let endian = file.endian();
        let arch = match file.elf_header().e_machine(endian) {
            EM_X86_64 => Arch::Amd64,
            EM_AARCH64 => Arch::Arm64,
            m => return Err(TargetError::UnsupportedArch(format!("ELF machine {m}"))),
        };
        let mut segments = Vec::new();
        for ph in file.elf_program_headers() {
            if ph.p_type(endian) != PT_LOAD {
                continue;
            }
            segments.push(Segment {
                vaddr: ph.p_vaddr(endian),
                offset: ph.p_offset(endian),
                filesz: ph.p_filesz(endian),
                memsz: ph.p_memsz(endian),
                flags: ph.p_flags(endian),
            });
        }
        if segments.is_empty() {
            return Err(TargetError::NotElf("no loadable segment (not an executable)".into()));
        }
        // Every address is resolved by a search of the segments, and sections are looked up by name.
        if segments.len() > MAX_SEGMENTS || file.elf_section_table().len() > MAX_SECTIONS {
            return Err(TargetError::TooLarge {
                what: format!(
                    "{} loadable segments and {} sections (limits {MAX_SEGMENTS} and {MAX_SECTIONS})",
                    segments.len(),
                    file.elf_section_table().len()
                ),
            });
        }
        let mut sections = Vec::new();
        let (mut has_symtab, mut has_dwarf) = (false, false);
        for s in file.sections() {
            let hdr = s.elf_section_header();
            let name = s
                .name()
                .map_err(|e| TargetError::corrupt(format!("section name: {e}")))?;
            let size = hdr.sh_size(endian);
            let offset = (hdr.sh_type(endian) != SHT_NOBITS).then(|| hdr.sh_offset(endian));
            // A symbol table holding only the null symbol is as good as none.
            has_symtab |= hdr.sh_type(endian) == SHT_SYMTAB && size > hdr.sh_entsize(endian);
            has_dwarf |= name == ".debug_info";
            sections.push(Section {
                name: name.to_string(),
                addr: hdr.sh_addr(endian),
                size,
                offset,
            });
        }
        Ok(Image {
            arch,
            segments,
            sections,
            has_symtab,
            has_dwarf,
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    pub fn load_vaddr(&self) -> u64 {
        self.segments.iter().map(|s| s.vaddr).min().unwrap_or(0)
    }

    /// The segment whose file-backed part contains `vaddr`.
    fn segment(&self, vaddr: u64) -> Option<&Segment> {
        self.segments
            .iter()
            .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
    }

    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let s = self.segment(vaddr)?;
        Some(s.offset + (vaddr - s.vaddr))
    }

    /// True if `vaddr` lies in an executable segment (where Go text must be).
    pub fn is_text(&self, vaddr: u64) -> bool {
        self.segment(vaddr).is_some_and(|s| s.flags & PF_X != 0)
    }

    /// True if `[vaddr, vaddr + len)` lies in the memory image of one writable segment (data or bss).
    pub fn is_writable_memory(&self, vaddr: u64, len: u64) -> bool {
        self.segments.iter().any(|s| {
            s.writable() && vaddr >= s.vaddr && (vaddr - s.vaddr).checked_add(len).is_some_and(|end| end <= s.memsz)
        })
    }

    /// `len` file bytes at `vaddr`, if they lie within one segment's file-backed part.
    pub fn read<'a>(&self, bytes: &'a [u8], vaddr: u64, len: u64) -> Option<&'a [u8]> {
        let s = self.segment(vaddr)?;
        let start = vaddr - s.vaddr;
        // The tail of a segment past its file size (.bss) has no bytes in the file.
        if len > s.filesz.checked_sub(start)? {
            return None;
        }
        let off = usize::try_from(s.offset + start).ok()?;
        bytes.get(off..off.checked_add(usize::try_from(len).ok()?)?)
    }

    /// The file bytes from `vaddr` to the end of its segment's file-backed part.
    pub fn rest_of_segment<'a>(&self, bytes: &'a [u8], vaddr: u64) -> Option<&'a [u8]> {
        let s = self.segment(vaddr)?;
        self.read(bytes, vaddr, s.filesz - (vaddr - s.vaddr))
    }

    pub fn read_u64(&self, bytes: &[u8], vaddr: u64) -> Option<u64> {
        u64_at(self.read(bytes, vaddr, 8)?, 0)
    }
}

/// Address of a symbol in `.symtab`, if the file has one that names it (a defined data or text symbol).
pub(crate) fn symbol_address(file: &File<'_>, name: &str) -> Option<u64> {
    file.symbol_by_name(name)
        .filter(|s| s.is_definition())
        .map(|s| s.address())
}
