//! The hostile executables, each made from a real one and then read back with the readers a
//! tracer would use (object, gimli, flate2), so a test knows its input really is what it claims.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
};

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use gimli::{EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

/// A copy of `from` at `to`, executable.
fn executable_copy(from: &Path, to: &Path) {
    fs::copy(from, to).unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A copy of `from` (a small executable) grown to `size` bytes by a hole: the file claims `size`
/// bytes and takes a few blocks of disk.
pub fn sparse(from: &Path, to: &Path, size: u64) {
    executable_copy(from, to);
    OpenOptions::new().write(true).open(to).unwrap().set_len(size).unwrap();
    let meta = fs::metadata(to).unwrap();
    assert_eq!(meta.len(), size);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 64 << 20,
        "{} is sparse",
        to.display()
    );
}

/// The ELF section `name` of the file: its index, file offset and size.
fn section(bytes: &[u8], name: &str) -> (usize, u64, u64) {
    let file = object::File::parse(bytes).expect("an ELF file");
    let s = file
        .section_by_name(name)
        .unwrap_or_else(|| panic!("no {name} section"));
    let (offset, size) = s
        .file_range()
        .unwrap_or_else(|| panic!("{name} has no bytes in the file"));
    (s.index().0, offset, size)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// `ELFCOMPRESS_ZLIB`, the `ch_type` of an `Elf64_Chdr`.
const ELFCOMPRESS_ZLIB: u32 = 1;
/// `SHF_COMPRESSED`.
const SHF_COMPRESSED: u64 = 0x800;

/// What [`zlib_bomb`] made: the size the section header claims, and what its stream inflates to.
pub struct Bomb {
    pub claims: u64,
    pub inflates_to: u64,
    pub stream_bytes: u64,
}

/// A copy of the Go binary `from` whose `.debug_info` (SHF_COMPRESSED) is an `Elf64_Chdr` that claims
/// `claims` bytes followed by a valid zlib stream of `inflates_to` zero bytes (a multiple of 1 MiB). The new
/// section body is appended to the file and the section header pointed at it; nothing the program
/// runs from moves.
pub fn zlib_bomb(from: &Path, to: &Path, claims: u64, inflates_to: u64) -> Bomb {
    const CHUNK: usize = 1 << 20;
    assert_eq!(inflates_to % CHUNK as u64, 0);
    // One MiB of zeros, deflated and ended by a full flush: the block refers to nothing before it and
    // ends on a byte boundary, so repeating it is a valid stream of as many MiB of zeros.
    let mut deflate = Compress::new(Compression::best(), false);
    let mut block = Vec::with_capacity(CHUNK);
    deflate
        .compress_vec(&vec![0u8; CHUNK], &mut block, FlushCompress::Full)
        .unwrap();
    assert_eq!(deflate.total_in(), CHUNK as u64, "deflate took the whole chunk at once");
    let mut body = Vec::new();
    for field in [u64::from(ELFCOMPRESS_ZLIB), claims, 1] {
        // ch_type and ch_reserved (u32 each), then ch_size and ch_addralign.
        body.extend_from_slice(&field.to_le_bytes());
    }
    // zlib header (deflate, 32 KiB window, no preset dictionary; a multiple of 31).
    body.extend_from_slice(&[0x78, 0x01]);
    for _ in 0..inflates_to / CHUNK as u64 {
        body.extend_from_slice(&block);
    }
    // A last, empty block with fixed codes (BFINAL=1, BTYPE=01, end of block), then the Adler-32 of
    // `inflates_to` zeros: a = 1, b = the sum of a after each byte = inflates_to (mod 65521).
    body.extend_from_slice(&[0x03, 0x00]);
    let adler = ((inflates_to % 65521) << 16) | 1;
    body.extend_from_slice(&(adler as u32).to_be_bytes());

    let mut bytes = fs::read(from).unwrap();
    let (index, _, _) = section(&bytes, ".debug_info");
    let body_at = bytes.len().next_multiple_of(8);
    bytes.resize(body_at, 0);
    bytes.extend_from_slice(&body);
    // Elf64_Ehdr: e_shoff at 0x28, e_shentsize at 0x3a; Elf64_Shdr: sh_flags at 8, sh_offset at 24,
    // sh_size at 32.
    let header = u64_at(&bytes, 0x28) as usize + index * usize::from(u16_at(&bytes, 0x3a));
    let flags = u64_at(&bytes, header + 8) | SHF_COMPRESSED;
    bytes[header + 8..header + 16].copy_from_slice(&flags.to_le_bytes());
    bytes[header + 24..header + 32].copy_from_slice(&(body_at as u64).to_le_bytes());
    bytes[header + 32..header + 40].copy_from_slice(&(body.len() as u64).to_le_bytes());
    write_executable(to, &bytes);

    // Read back: object sees the claim; flate2 inflates the whole stream, checksum included.
    let bytes = fs::read(to).unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let compressed = file
        .section_by_name(".debug_info")
        .unwrap()
        .compressed_data()
        .expect("a readable compressed section");
    assert_eq!(compressed.format, object::CompressionFormat::Zlib);
    assert_eq!(compressed.uncompressed_size, claims, "the header's claim");
    let inflated = inflate_zeros(compressed.data);
    assert_eq!(inflated, inflates_to, "the stream inflates to {inflates_to} zero bytes");
    Bomb {
        claims,
        inflates_to,
        stream_bytes: compressed.data.len() as u64,
    }
}

/// How many bytes the zlib stream inflates to (each checked to be zero), its checksum verified.
fn inflate_zeros(stream: &[u8]) -> u64 {
    let mut inflate = Decompress::new(true);
    let mut out = vec![0u8; 4 << 20];
    loop {
        let before = inflate.total_out();
        let input = &stream[inflate.total_in() as usize..];
        let status = inflate
            .decompress(input, &mut out, FlushDecompress::None)
            .expect("a valid zlib stream");
        let produced = (inflate.total_out() - before) as usize;
        assert!(out[..produced].iter().all(|&b| b == 0), "only zeros");
        match status {
            Status::StreamEnd => return inflate.total_out(),
            _ if produced == 0 && input.is_empty() => panic!("the stream ends without its last block"),
            _ => {}
        }
    }
}

fn write_executable(to: &Path, bytes: &[u8]) {
    let mut f = fs::File::create(to).unwrap();
    f.write_all(bytes).unwrap();
    drop(f);
    fs::set_permissions(to, fs::Permissions::from_mode(0o755)).unwrap();
}

/// The Go 1.20+ pclntab header (`runtime/symtab.go` pcHeader): magic, 2 pad bytes, minLC, ptrSize, then
/// nfunc, nfiles, textStart, funcnameOffset, cuOffset, filetabOffset, pctabOffset, pclnOffset (8 bytes each).
struct Pclntab {
    /// File offset of the header.
    start: usize,
    nfunc: usize,
    funcname: usize,
    cu: usize,
    pcln: usize,
}

const PCLNTAB_MAGIC_GO120: u32 = 0xffff_fff1;

impl Pclntab {
    fn read(bytes: &[u8]) -> Pclntab {
        let (_, start, _) = section(bytes, ".gopclntab");
        let start = start as usize;
        assert_eq!(u32_at(bytes, start), PCLNTAB_MAGIC_GO120, "a Go 1.20+ pclntab");
        let field = |i: usize| u64_at(bytes, start + 8 + 8 * i) as usize;
        Pclntab {
            start,
            nfunc: field(0),
            funcname: field(3),
            cu: field(4),
            pcln: field(7),
        }
    }

    /// File offset of each function's `_func` (functab: `nfunc + 1` pairs of u32 {entryoff, funcoff}).
    fn funcs(&self, bytes: &[u8]) -> Vec<usize> {
        (0..self.nfunc)
            .map(|i| self.start + self.pcln + u32_at(bytes, self.start + self.pcln + 8 * i + 4) as usize)
            .collect()
    }
}

/// `_func.nameOff`: after `entryOff` (u32), an offset into the function name table.
const FUNC_NAMEOFF: usize = 4;

/// What [`huge_name`] made: how many functions, all named by one name of `name_bytes`.
pub struct HugeName {
    pub functions: usize,
    pub name_bytes: usize,
}

/// A copy of the Go binary `from` in which every function has the same name, as long as the whole
/// function name table: the table is overwritten with non-NUL bytes up to its last one and every
/// `_func.nameOff` set to 0. The runtime reads names only for tracebacks, so the program runs.
pub fn huge_name(from: &Path, to: &Path) -> HugeName {
    let mut bytes = fs::read(from).unwrap();
    let table = Pclntab::read(&bytes);
    let names = table.start + table.funcname..table.start + table.cu;
    let pattern = b"main.hostile.";
    for (i, b) in bytes[names.clone()].iter_mut().enumerate() {
        *b = pattern[i % pattern.len()];
    }
    bytes[names.end - 1] = 0;
    for f in table.funcs(&bytes) {
        bytes[f + FUNC_NAMEOFF..f + FUNC_NAMEOFF + 4].copy_from_slice(&0u32.to_le_bytes());
    }
    write_executable(to, &bytes);

    let bytes = fs::read(to).unwrap();
    let table = Pclntab::read(&bytes);
    for f in table.funcs(&bytes) {
        assert_eq!(u32_at(&bytes, f + FUNC_NAMEOFF), 0, "every nameOff is 0");
    }
    let at = table.start + table.funcname;
    let name_bytes = bytes[at..].iter().position(|&b| b == 0).unwrap();
    assert_eq!(name_bytes, table.cu - table.funcname - 1, "one name spans the table");
    HugeName {
        functions: table.nfunc,
        name_bytes,
    }
}

type Dwarf<'a> = gimli::Dwarf<EndianSlice<'a, LittleEndian>>;
type Header<'a> = gimli::UnitHeader<EndianSlice<'a, LittleEndian>>;

/// The DWARF of an ELF file's bytes, and its unit headers.
fn dwarf<'a>(file: &object::File<'a>) -> (Dwarf<'a>, Vec<Header<'a>>) {
    let dwarf: Dwarf = gimli::Dwarf::load(|id| {
        let data = file
            .section_by_name(id.name())
            .and_then(|s| s.data().ok())
            .unwrap_or(&[]);
        Ok::<_, gimli::Error>(EndianSlice::new(data, LittleEndian))
    })
    .unwrap();
    let mut units = dwarf.units();
    let headers = std::iter::from_fn(|| units.next().expect("readable unit headers")).collect();
    (dwarf, headers)
}

/// A `DW_AT_type` as a .debug_info offset (Go refers across units with DW_FORM_ref_addr).
fn type_of(
    header: &Header<'_>,
    entry: &gimli::DebuggingInformationEntry<EndianSlice<'_, LittleEndian>>,
) -> Option<gimli::DebugInfoOffset> {
    match entry.attr_value(gimli::DW_AT_type).ok()?? {
        gimli::AttributeValue::DebugInfoRef(o) => Some(o),
        gimli::AttributeValue::UnitRef(o) => o.to_debug_info_offset(header),
        _ => None,
    }
}

fn named(entry: &gimli::DebuggingInformationEntry<EndianSlice<'_, LittleEndian>>, name: &str) -> bool {
    matches!(entry.attr_value(gimli::DW_AT_name),
        Ok(Some(gimli::AttributeValue::String(s))) if s.slice() == name.as_bytes())
}

/// The struct type of the package-level variable `variable` (through typedefs, as Go names a struct):
/// its .debug_info offset and unit.
fn variable_struct<'a>(
    dwarf: &Dwarf<'a>,
    headers: &[Header<'a>],
    variable: &str,
) -> Option<(gimli::DebugInfoOffset, Header<'a>)> {
    let die = |off: gimli::DebugInfoOffset| {
        let header = *headers.iter().find(|h| off.to_unit_offset(*h).is_some())?;
        let abbrevs = dwarf.abbreviations(&header).ok()?;
        let entry = header.entry(&abbrevs, off.to_unit_offset(&header)?).ok()?;
        Some((entry.tag(), type_of(&header, &entry), header))
    };
    let mut ty = headers.iter().find_map(|header| {
        let abbrevs = dwarf.abbreviations(header).ok()?;
        let mut entries = header.entries(&abbrevs);
        while let Ok(Some((_, entry))) = entries.next_dfs() {
            if entry.tag() == gimli::DW_TAG_variable && named(entry, variable) {
                return type_of(header, entry);
            }
        }
        None
    })?;
    for _ in 0..4 {
        match die(ty)? {
            (gimli::DW_TAG_structure_type, _, header) => return Some((ty, header)),
            (gimli::DW_TAG_typedef, Some(next), _) => ty = next,
            _ => return None,
        }
    }
    None
}

/// Where the member `member` of the struct that `variable` is writes its type: the file offset and form of
/// its DW_AT_type, the type it names, and the struct's own offsets (in .debug_info, and in its unit).
struct MemberRef {
    type_at: usize,
    form: gimli::DwForm,
    member_type: gimli::DebugInfoOffset,
    struct_offset: gimli::DebugInfoOffset,
    struct_unit_offset: gimli::UnitOffset,
}

fn member_ref(bytes: &[u8], variable: &str, member: &str) -> Option<MemberRef> {
    let file = object::File::parse(bytes).unwrap();
    let info = file.section_by_name(".debug_info").unwrap();
    assert_eq!(
        info.compressed_file_range().unwrap().format,
        object::CompressionFormat::None,
        ".debug_info is patched in place, uncompressed"
    );
    let info_at = info.file_range().unwrap().0 as usize;
    let (dwarf, headers) = dwarf(&file);
    let (struct_offset, header) = variable_struct(&dwarf, &headers, variable)?;
    let struct_unit_offset = struct_offset.to_unit_offset(&header)?;
    let abbrevs = dwarf.abbreviations(&header).ok()?;
    let mut tree = header.entries_tree(&abbrevs, Some(struct_unit_offset)).ok()?;
    let mut children = tree.root().ok()?.children();
    while let Ok(Some(child)) = children.next() {
        let entry = child.entry();
        if entry.tag() != gimli::DW_TAG_member || !named(entry, member) {
            continue;
        }
        // The member's attributes read raw, to know where its DW_AT_type is written.
        let mut raw = header.entries_raw(&abbrevs, Some(entry.offset())).ok()?;
        let abbrev = raw.read_abbreviation().ok()??;
        for spec in abbrev.attributes() {
            let at = raw.next_offset();
            let attr = raw.read_attribute(*spec).ok()?;
            if attr.name() == gimli::DW_AT_type {
                let unit_at = header.offset().as_debug_info_offset()?.0;
                return Some(MemberRef {
                    type_at: info_at + unit_at + at.0,
                    form: spec.form(),
                    member_type: type_of(&header, entry)?,
                    struct_offset,
                    struct_unit_offset,
                });
            }
        }
    }
    None
}

/// A copy of the Go binary `from` (with DWARF) in which the struct type of the package-level variable
/// `variable` contains itself: its member `member` is given the struct as its type. DWARF is
/// decompressed first (objcopy) so that the one reference can be rewritten in place.
pub fn self_containing_struct(from: &Path, to: &Path, variable: &str, member: &str) {
    let status = Command::new("objcopy")
        .arg("--decompress-debug-sections")
        .arg(from)
        .arg(to)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success(), "objcopy --decompress-debug-sections: {status}");
    let mut bytes = fs::read(to).unwrap();
    let found = member_ref(&bytes, variable, member)
        .unwrap_or_else(|| panic!("{}: no member {member} in the struct of {variable}", from.display()));
    assert_ne!(found.member_type, found.struct_offset);
    let reference = match found.form {
        gimli::DW_FORM_ref_addr => found.struct_offset.0,
        gimli::DW_FORM_ref4 => found.struct_unit_offset.0,
        other => panic!("{variable}'s {member}: DW_AT_type as {other}, not a 4-byte reference"),
    };
    bytes[found.type_at..found.type_at + 4].copy_from_slice(&(reference as u32).to_le_bytes());
    write_executable(to, &bytes);

    let patched = member_ref(&fs::read(to).unwrap(), variable, member).expect("the member, still");
    assert_eq!(
        patched.member_type, patched.struct_offset,
        "the struct of {variable} now has itself as the type of its {member}"
    );
}
