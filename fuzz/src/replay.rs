//! The three harnesses' inputs, run: what each fuzz target calls, and what tracer's regression tests replay a
//! failing input with. One file compiled into both (the fuzz crate as `maptrace_fuzz::replay`, tracer's tests
//! through `#[path]`), where `crate::{gobin, heap, memory}` are tracer's modules.
//!
//! - [`gobin_file`]: the input is a whole file for `GoBinary::parse`.
//! - [`gobin_patch`]: the input's first byte picks a go-target binary (DWARF decompressed, so that a mutation
//!   lands in DWARF rather than in a zlib stream), the rest are patches inside its tables (see [`patched`]).
//! - [`heap_walk`]: the input's first byte picks a go-target's heap model, the rest is the target's memory
//!   (see [`FuzzMemory`]).
//!
//! The go-targets come from `MAPTRACE_GO_TARGETS`, else the repository's `.cache/go-targets`; they are listed
//! sorted, so an input means the same as long as the set of go-targets is the same.

use std::io;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::OnceLock;

use object::read::elf::ElfFile64;
use object::{CompressionFormat, Object, ObjectSection};
use std::collections::HashSet;
use std::time::Duration;

use crate::gobin::runtime_types::{self, TypeNames};
use crate::gobin::{GoBinary, HeapModel, TargetError};
use crate::heap::search::{search_chains_in, ChainQuery};
use crate::memory::Memory;

/// The programs the heap walk harness takes heap models from, in every Go version: one with DWARF and its
/// stripped twin (a model costs megabytes, so not every go-target).
const HEAP_PROGRAMS: [&str; 2] = ["demo", "demo-stripped"];
/// And arm64 builds of the newest version.
const HEAP_ARM64_PROGRAMS: [&str; 2] = ["counting-arm64", "counting-arm64-stripped"];

/// Where patches aim (indices into a [`Base`]'s regions): the headers, then sections by name. A section a binary
/// lacks (a stripped one's DWARF) stands for the whole file.
pub const REGIONS: [&str; 20] = [
    "elf header and program headers",
    "section headers",
    ".gopclntab",
    ".go.buildinfo",
    ".noptrdata",
    ".data",
    ".rodata",
    ".typelink",
    ".text",
    ".symtab",
    ".strtab",
    ".debug_info",
    ".debug_abbrev",
    ".debug_str",
    ".debug_loc",
    ".debug_loclists",
    ".debug_ranges",
    ".debug_rnglists",
    ".debug_line",
    ".debug_addr",
];

/// A go-target binary as the patch harness starts from it: a copy with its DWARF decompressed, read afresh for
/// each input (from the page cache: every go-target at once would not fit the fuzzer's memory limit).
pub struct Base {
    pub path: PathBuf,
    /// File ranges of [`REGIONS`], in that order; found on first use (the bases are hundreds of megabytes).
    regions: OnceLock<Vec<Range<usize>>>,
}

/// Every go-target binary as a patch base, written decompressed on first use under `MAPTRACE_FUZZ_BASES` (else a
/// directory in the system's temporary one).
pub fn bases() -> &'static [Base] {
    static BASES: OnceLock<Vec<Base>> = OnceLock::new();
    BASES.get_or_init(|| {
        let bases = load_bases().unwrap_or_else(|e| panic!("preparing the go-targets: {e}"));
        assert!(
            !bases.is_empty(),
            "no go-targets found: build them with `./x build-targets`"
        );
        bases
    })
}

/// The base an input's selector byte picks.
pub fn base(selector: u8) -> &'static Base {
    let all = bases();
    &all[usize::from(selector) % all.len()]
}

fn go_targets_dir() -> PathBuf {
    std::env::var_os("MAPTRACE_GO_TARGETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/go-targets")))
}

/// Every go-target binary, `(<go version>/<program>, path)`, by version then name.
pub fn go_targets() -> io::Result<Vec<(String, PathBuf)>> {
    let dir = go_targets_dir();
    let mut versions: Vec<String> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|v| v.split('.').map(|n| n.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
    let mut all = Vec::new();
    for v in versions {
        let mut programs: Vec<String> = std::fs::read_dir(dir.join(&v))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        programs.sort();
        all.extend(programs.into_iter().map(|p| (format!("{v}/{p}"), dir.join(&v).join(p))));
    }
    Ok(all)
}

/// The go-targets the heap walk harness uses: [`HEAP_PROGRAMS`] of every version, [`HEAP_ARM64_PROGRAMS`] of
/// the newest.
pub fn heap_targets() -> io::Result<Vec<(String, PathBuf)>> {
    let all = go_targets()?;
    let newest = all
        .last()
        .and_then(|(name, _)| name.split('/').next())
        .unwrap_or_default()
        .to_owned();
    Ok(all
        .into_iter()
        .filter(|(name, _)| {
            let (version, program) = name.split_once('/').unwrap_or_default();
            HEAP_PROGRAMS.contains(&program) || (version == newest && HEAP_ARM64_PROGRAMS.contains(&program))
        })
        .collect())
}

fn load_bases() -> io::Result<Vec<Base>> {
    let out = std::env::var_os("MAPTRACE_FUZZ_BASES")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("maptrace-fuzz-bases"));
    let modified = |p: &std::path::Path| p.metadata().and_then(|m| m.modified()).ok();
    let mut bases = Vec::new();
    for (name, source) in go_targets()? {
        let path = out.join(&name);
        if modified(&path).is_none() || modified(&path) < modified(&source) {
            let bytes = decompress_sections(std::fs::read(&source)?)
                .map_err(|e| io::Error::other(format!("{}: {e}", source.display())))?;
            std::fs::create_dir_all(path.parent().unwrap_or(&out))?;
            // Another fuzzing process may be writing the same file: each writes its own, then renames.
            let partial = path.with_extension(format!("partial-{}", std::process::id()));
            std::fs::write(&partial, &bytes)?;
            std::fs::rename(&partial, &path)?;
        }
        bases.push(Base {
            path,
            regions: OnceLock::new(),
        });
    }
    Ok(bases)
}

const SHF_COMPRESSED: u64 = 0x800;

fn u16_at(b: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([b[at], b[at + 1]]))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The ELF file with each compressed section's data appended uncompressed and its section header pointed there.
fn decompress_sections(mut bytes: Vec<u8>) -> Result<Vec<u8>, object::Error> {
    let mut moved = Vec::new();
    let mut appended = Vec::new();
    {
        let file = ElfFile64::<object::LittleEndian>::parse(&*bytes)?;
        for section in file.sections() {
            if section.compressed_file_range()?.format == CompressionFormat::None {
                continue;
            }
            let data = section.uncompressed_data()?;
            let at = bytes.len() + appended.len();
            moved.push((section.index().0, at, data.len()));
            appended.extend_from_slice(&data);
        }
    }
    bytes.extend_from_slice(&appended);
    let (shoff, shentsize) = (u64_at(&bytes, 0x28) as usize, u16_at(&bytes, 0x3a));
    for (index, at, len) in moved {
        let sh = shoff + index * shentsize;
        let flags = u64_at(&bytes, sh + 8) & !SHF_COMPRESSED;
        bytes[sh + 8..sh + 16].copy_from_slice(&flags.to_le_bytes());
        bytes[sh + 24..sh + 32].copy_from_slice(&(at as u64).to_le_bytes());
        bytes[sh + 32..sh + 40].copy_from_slice(&(len as u64).to_le_bytes());
    }
    Ok(bytes)
}

fn regions(bytes: &[u8]) -> Result<Vec<Range<usize>>, object::Error> {
    let file = ElfFile64::<object::LittleEndian>::parse(bytes)?;
    let whole = 0..bytes.len();
    let (phoff, phentsize, phnum) = (u64_at(bytes, 0x20) as usize, u16_at(bytes, 0x36), u16_at(bytes, 0x38));
    let (shoff, shentsize, shnum) = (u64_at(bytes, 0x28) as usize, u16_at(bytes, 0x3a), u16_at(bytes, 0x3c));
    let mut regions = vec![0..phoff + phentsize * phnum, shoff..shoff + shentsize * shnum];
    for name in &REGIONS[2..] {
        let range = file
            .section_by_name(name)
            .and_then(|s| s.file_range())
            .map(|(at, len)| at as usize..(at + len) as usize)
            .filter(|r| !r.is_empty() && r.end <= bytes.len());
        regions.push(range.unwrap_or_else(|| whole.clone()));
    }
    Ok(regions)
}

/// The base binary an input picks (its first byte), with the rest of the input applied as patches, each
/// `[region, offset (u32 LE), length, bytes...]`: `length % 16 + 1` bytes written at `offset` modulo the region's
/// size; a region byte with its top bit set truncates the file there instead.
pub fn patched(input: &[u8]) -> Vec<u8> {
    let (&selector, mut rest) = input.split_first().unwrap_or((&0, &[]));
    let base = base(selector);
    let mut bytes = std::fs::read(&base.path).unwrap_or_else(|e| panic!("{}: {e}", base.path.display()));
    let regions = base
        .regions
        .get_or_init(|| regions(&bytes).unwrap_or_else(|e| panic!("{}: {e}", base.path.display())));
    while let [region, o0, o1, o2, o3, len, tail @ ..] = rest {
        let range = &regions[usize::from(region & 0x7f) % REGIONS.len()];
        let at = range.start + u32::from_le_bytes([*o0, *o1, *o2, *o3]) as usize % range.len().max(1);
        let n = (usize::from(*len) % 16 + 1).min(tail.len());
        if region & 0x80 != 0 {
            bytes.truncate(at);
            rest = tail;
            continue;
        }
        let end = (at + n).min(bytes.len());
        if at < end {
            bytes[at..end].copy_from_slice(&tail[..end - at]);
        }
        rest = &tail[n..];
    }
    bytes
}

/// Functions the per-function calls (symbolize, stack maps, disassembly) visit at most, spread over the binary:
/// all of a few thousand would make each input take most of a second.
const FUNCTIONS_VISITED: usize = 200;

/// Calls what maptrace asks of a parsed binary, at attach and at report time. A panic anywhere is the finding.
pub fn exercise(binary: &GoBinary) {
    let _ = (binary.arch(), binary.version(), binary.experiments(), binary.layout());
    let _ = (binary.has_symtab(), binary.has_dwarf(), binary.load_vaddr());
    let functions: Vec<_> = binary.functions().collect();
    let step = (functions.len() / FUNCTIONS_VISITED).max(1);
    for f in functions.iter().step_by(step) {
        let _ = binary.function(&f.name);
        let _ = binary.file_offset(f.entry);
        let middle = f.entry.wrapping_add(f.end.wrapping_sub(f.entry) / 2);
        for pc in [f.entry, f.entry.wrapping_add(1), middle, f.end.wrapping_sub(1), f.end] {
            let _ = binary.function_at(pc);
            let _ = binary.symbolize(pc);
            let _ = binary.frame_pointers(pc);
        }
        let _ = binary.ret_sites(f);
        let _ = binary.indirect_call_sites(f);
        let _ = binary.past_stack_check(f);
    }
    // The runtime's type descriptors, read from the file as the heap walk reads them once the process is gone.
    let file = FileMemory(binary);
    let mut names = TypeNames::new(binary.types_base());
    if let Some(types) = binary.types_base() {
        for at in (0..64 * 1024).step_by(8 * 97) {
            let t = types.wrapping_add(at);
            let _ = names.resolve(&file, t);
            let _ = runtime_types::gc_mask(&file, t, true);
            let _ = runtime_types::pointer_elem(&file, t);
        }
    }
    if let Ok(model) = binary.heap_model() {
        for g in &model.globals {
            if let Some(t) = g.type_name.as_deref().and_then(|n| model.types.by_name(n)) {
                let _ = model.types.shape(model.types.resolve(t));
                let _ = model.types.pointee(t);
            }
        }
        for f in functions.iter().step_by(step) {
            let _ = model.locals.at(f.entry);
        }
    }
}

/// A binary's file as target memory: its read-only data stays readable after the process has gone.
pub struct FileMemory<'b>(pub &'b GoBinary);

impl Memory for FileMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_static(addr, buf).map_err(io::Error::other)
    }
}

/// Where the fuzz bytes of [`FuzzMemory`] start: the first arena the Go runtime maps on linux amd64 and arm64.
pub const HEAP_BASE: u64 = 0xc0_0000_0000;

/// A live target's memory made of fuzz bytes. Code and read-only data read from the binary, as in the process;
/// everything else (data and bss, heap, stacks) reads the fuzz bytes at its address modulo their length rounded
/// up to a power of two (zero past the end), so that every pointer a fuzzed word holds leads to more fuzzed words,
/// and [`HEAP_BASE`] onwards reads them in order. The null page and non-canonical addresses do not read.
pub struct FuzzMemory<'a> {
    pub binary: &'a GoBinary,
    /// Link-time ranges the process writes (data, bss): fuzz bytes, not the file's.
    pub writable: Vec<Range<u64>>,
    pub image: &'a [u8],
}

impl Memory for FuzzMemory<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        let end = addr.checked_add(buf.len() as u64).filter(|&e| e <= 1 << 47);
        if addr < 4096 || end.is_none() || self.image.is_empty() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let in_file = self.binary.file_offset(addr).is_some() && !self.writable.iter().any(|r| r.contains(&addr));
        if in_file && self.binary.read_static(addr, buf).is_ok() {
            return Ok(());
        }
        let mask = self.image.len().next_power_of_two() as u64 - 1;
        let mut done = 0;
        while done < buf.len() {
            let at = ((addr + done as u64) & mask) as usize;
            let n = (buf.len() - done).min(mask as usize + 1 - at);
            let avail = self.image.get(at..).unwrap_or_default();
            let avail = &avail[..avail.len().min(n)];
            buf[done..done + avail.len()].copy_from_slice(avail);
            buf[done + avail.len()..done + n].fill(0);
            done += n;
        }
        Ok(())
    }
}

/// The `gobin_file` harness: any file as a Go executable.
pub fn gobin_file(input: &[u8]) -> Result<(), TargetError> {
    exercise(&GoBinary::parse(input.to_vec())?);
    Ok(())
}

/// The `gobin_patch` harness: a go-target binary with patches.
pub fn gobin_patch(input: &[u8]) -> Result<(), TargetError> {
    exercise(&GoBinary::parse(patched(input))?);
    Ok(())
}

/// The heap walk's go-targets parsed, with their heap models (None where maptrace cannot find the heap in it).
pub fn models() -> &'static [(GoBinary, Option<HeapModel>)] {
    static MODELS: OnceLock<Vec<(GoBinary, Option<HeapModel>)>> = OnceLock::new();
    MODELS.get_or_init(|| {
        let paths = heap_targets().unwrap_or_else(|e| panic!("listing the go-targets: {e}"));
        assert!(
            !paths.is_empty(),
            "no go-targets found: build them with `./x build-targets`"
        );
        paths
            .iter()
            .map(|(name, path)| {
                let binary = GoBinary::open(path).unwrap_or_else(|e| panic!("{name}: {e}"));
                let model = binary.heap_model().ok();
                (binary, model)
            })
            .collect()
    })
}

fn u32_at(image: &[u8], at: usize) -> u64 {
    image
        .get(at..at + 4)
        .map_or(0, |b| u64::from(u32::from_le_bytes(b.try_into().unwrap())))
}

/// The `heap_walk` harness: a search for what holds four objects in a target memory of fuzz bytes.
///
/// The memory's first 27 bytes also steer the search: four target objects and two finalizer closures (u32
/// offsets from [`HEAP_BASE`]), which global's type the untyped objects are said to be allocated as (u16), and
/// the depth limit (u8).
pub fn heap_walk(data: &[u8]) {
    let models = models();
    let Some((&selector, image)) = data.split_first() else {
        return;
    };
    let (binary, model) = &models[usize::from(selector) % models.len()];
    let Some(model) = model else {
        return;
    };
    let memory = FuzzMemory {
        binary,
        writable: model
            .data_regions
            .iter()
            .map(|r| r.addr..r.addr.saturating_add(r.len))
            .collect(),
        image,
    };
    let heap_address = |at| HEAP_BASE + u32_at(image, at);
    let targets: HashSet<u64> = (0..4).map(|i| heap_address(4 * i)).collect();
    let closure_targets = targets.clone();
    let hint_type = image.get(24..26).and_then(|b| {
        let typed: Vec<_> = model.globals.iter().filter_map(|g| g.type_name.clone()).collect();
        let k = usize::from(u16::from_le_bytes(b.try_into().unwrap()));
        typed.get(k % typed.len().max(1)).cloned()
    });
    let query = ChainQuery {
        binary,
        memory: &memory,
        pid: 0,
        load_bias: 0,
        // Zero: never stops (ptrace) anything.
        max_pause: Duration::ZERO,
        max_depth: u32::from(image.get(26).copied().unwrap_or(16)),
        targets,
        closure_targets,
        closures: vec![("finalizer", heap_address(16)), ("cleanup", heap_address(20))],
        now_ns: 1 << 40,
    };
    let found = search_chains_in(&query, model, &mut |base, _size| Some((base, hint_type.clone()?)));
    let objects: Vec<u64> = query.targets.iter().copied().collect();
    for chains in [&found.from_roots, &found.from_closures] {
        for chain in chains.values() {
            let _ = chain.root.describe();
        }
        let _ = crate::heap::held_by(&objects, chains, |_, size| Some(format!("[{size}]byte")));
    }
}
