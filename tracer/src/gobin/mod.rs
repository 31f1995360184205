//! Target inspection: everything maptrace needs to know about a Go executable, read from the ELF file alone.
//!
//! Works on stripped (`-ldflags=-s -w`), cgo/externally linked and PIE binaries, because it relies only on what
//! Go never strips: `.go.buildinfo` (version, GOEXPERIMENT) and the pclntab (functions, file:line). DWARF, when
//! present, is used for struct layouts; otherwise a per-version table measured from DWARF takes its place
//! (`layout.rs`). All parsing is bounds-checked: a corrupt or truncated file gives a [`TargetError`].

mod arm64;
mod buildinfo;
mod bytes;
mod dwarf;
mod elf;
mod gc;
mod heap_model;
mod layout;
mod locals;
mod mapped;
mod memo;
mod memprofilerate;
mod pclntab;
mod rets;
mod runtime_globals;
pub mod runtime_types;
mod stackmaps;
pub mod symbolize;
#[cfg(test)]
mod tests;
mod typegraph;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use buildinfo::GoVersion;
pub use dwarf::GlobalVar;
pub use heap_model::{GoroutineLayout, HeapLayout, HeapModel};
pub use layout::{
    is_supported, supported_minors, supported_text, CleanupFunction, CleanupLayout, LayoutSource, PointerBits,
    RuntimeLayout, SamplingLayout, SpanLayout, INLINE_MARKS_LEN, INLINE_MARKS_OFFSET,
};
pub use locals::{FrameLocals, LocalVar, StackPiece};
pub use mapped::{FileIdentity, MAX_FILE_BYTES};
pub use runtime_globals::DataRegion;
pub use stackmaps::{FramePointers, StackObject, WordBits};
pub use typegraph::{
    Field, GoTypeDef, Shape, TypeGraph, TypeId, KINDS_SIGNED, KINDS_UNSIGNED, KIND_SLICE, KIND_STRING,
};

/// CPU architecture of the target. Registers, RET encodings and (in principle) struct layouts depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// A Go function as listed in the pclntab. Addresses are link-time virtual addresses; `end` is exclusive and is the
/// next function's entry, so it may include alignment padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Function {
    pub name: String,
    pub entry: u64,
    pub end: u64,
}

/// The source position of a PC: the function containing it and the file:line the pclntab records for it. For a PC
/// inside inlined code, `file`/`line` are those of the inlined callee while `function` is the physical function
/// (the same convention as `go tool addr2line`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourcePosition {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub entry: u64,
}

#[derive(thiserror::Error, Debug)]
pub enum TargetError {
    #[error("cannot read {}: {}", .0.display(), .1)]
    Io(PathBuf, std::io::Error),
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("not a Go program: {0}")]
    NotGo(String),
    #[error("unsupported architecture: {0} (maptrace supports linux amd64 and arm64)")]
    UnsupportedArch(String),
    #[error("unsupported Go version {version}: {reason}")]
    UnsupportedVersion { version: String, reason: String },
    #[error("truncated binary: {what}")]
    Truncated { what: String },
    #[error("corrupt binary: {what}")]
    Corrupt { what: String },
    /// A size in the file over what maptrace accepts from any real Go program (see the caps where they are
    /// checked): refused rather than allocated or walked.
    #[error("binary over a limit: {what}")]
    TooLarge { what: String },
}

impl TargetError {
    fn corrupt(what: impl Into<String>) -> Self {
        TargetError::Corrupt { what: what.into() }
    }

    fn too_large(what: impl Into<String>) -> Self {
        TargetError::TooLarge { what: what.into() }
    }
}

/// A parsed Go executable. Holds the file's bytes (mapped); function bodies and pclntab tables are read from them
/// on demand.
pub struct GoBinary {
    bytes: mapped::FileBytes,
    /// The file it was opened from; None when parsed from bytes in memory.
    identity: Option<FileIdentity>,
    image: elf::Image,
    build: buildinfo::BuildInfo,
    pclntab: pclntab::Pclntab,
    functions: Vec<Function>,
    by_name: HashMap<String, usize>,
    layout: RuntimeLayout,
    /// `runtime.firstmoduledata`, if found (from Go 1.26 parsing fails without it: it alone gives the text start).
    module: Option<pclntab::moduledata::Module>,
}

impl fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoBinary")
            .field("arch", &self.image.arch)
            .field("version", &self.build.version.raw)
            .field("functions", &self.functions.len())
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

/// Name → function index. The pclntab lists a name twice when the linker made an ABI wrapper: an assembly body
/// (ABI0) gets an ABIInternal wrapper, a Go body (ABIInternal) an ABI0 wrapper, the wrapper's file being
/// `<autogenerated>`. Like the ELF symbol table, which calls the ABI0 one `name.abi0`, the plain name goes to the
/// ABIInternal function: the one Go code calls, with arguments in registers.
fn index_by_name(functions: &[Function], file_of: impl Fn(usize) -> String) -> HashMap<String, usize> {
    let abi_internal_rank = |i: usize| {
        let file = file_of(i);
        if file.ends_with(".s") {
            0
        } else if file == "<autogenerated>" {
            1
        } else {
            2
        }
    };
    let mut by_name: HashMap<String, usize> = HashMap::with_capacity(functions.len());
    for (i, f) in functions.iter().enumerate() {
        match by_name.entry(f.name.clone()) {
            Entry::Vacant(v) => {
                v.insert(i);
            }
            Entry::Occupied(mut o) => {
                if abi_internal_rank(i) > abi_internal_rank(*o.get()) {
                    o.insert(i);
                }
            }
        }
    }
    by_name
}

impl GoBinary {
    pub fn open(path: &Path) -> Result<GoBinary, TargetError> {
        let file = std::fs::File::open(path).map_err(|e| TargetError::Io(path.to_path_buf(), e))?;
        GoBinary::from_file(path, &file)
    }

    /// Parses the executable `file`, opened from `path`: mapped, not read (see [`mapped`]).
    pub fn from_file(path: &Path, file: &std::fs::File) -> Result<GoBinary, TargetError> {
        let identity = FileIdentity::of(file).map_err(|e| TargetError::Io(path.to_path_buf(), e))?;
        let bytes = mapped::FileBytes::map(path, file, identity.size)?;
        let mut binary = GoBinary::parse_bytes(bytes)?;
        binary.identity = Some(identity);
        Ok(binary)
    }

    /// Parses an executable held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<GoBinary, TargetError> {
        GoBinary::parse_bytes(mapped::FileBytes::Owned(bytes))
    }

    fn parse_bytes(bytes: mapped::FileBytes) -> Result<GoBinary, TargetError> {
        let file = elf::open(&bytes)?;
        let image = elf::Image::new(&file)?;
        // The version decides which tables apply, so it comes first; a non-Go ELF fails here.
        let build = buildinfo::BuildInfo::find(&image, &bytes)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(TargetError::too_large(format!(
                "the file is {} bytes (limit {MAX_FILE_BYTES})",
                bytes.len()
            )));
        }
        let structs = if image.has_dwarf {
            dwarf::struct_members(&file, layout::DWARF_STRUCTS).ok()
        } else {
            None
        };
        let resolved = layout::resolve(&build.version, image.arch, structs.as_ref())?;
        let loaded = pclntab::Pclntab::load(&image, &bytes, &build.version, &resolved.moduledata)?;
        let functions = loaded.functions;
        let file_of = |i: usize| {
            let entry = functions[i].entry;
            loaded.table.file_line(&bytes, i, entry, entry).0
        };
        let by_name = index_by_name(&functions, file_of);
        let code = |name: &str| {
            let f = &functions[*by_name.get(name)?];
            let bytes = image.read(&bytes, f.entry, f.end.checked_sub(f.entry)?)?;
            Some(gc::Code { entry: f.entry, bytes })
        };
        let work = image
            .has_symtab
            .then(|| elf::symbol_address(&file, "runtime.work"))
            .flatten();
        let gc_cycles_addr = match work {
            Some(work) => work
                .checked_add(resolved.structs.work_cycles.0)
                .filter(|&a| image.is_writable_memory(a, u64::from(resolved.structs.work_cycles.1)))
                .ok_or_else(|| {
                    TargetError::corrupt(format!("runtime.work at {work:#x} is not in a writable segment"))
                })?,
            None => gc::cycles_from_code(&image, code)
                .map_err(|why| gc::cycles_not_found(&build.version, image.arch, &why))?,
        };
        let green_tea_code = gc::green_tea_code(
            &build.version,
            by_name.get(gc::MOVE_INLINE_MARKS).map(|&i| file_of(i)).as_deref(),
            loaded.table.lists_name(&bytes, gc::MOVE_INLINE_MARKS),
        );
        let green_tea = gc::green_tea(&build.version, &build.experiments, green_tea_code)?;
        // Unknown only costs sampled mode its scale (reports then say so), never the attach.
        let rate_addr = match image.has_symtab {
            true => elf::symbol_address(&file, "runtime.MemProfileRate"),
            false => memprofilerate::rate_from_code(&image, code(memprofilerate::READER)).ok(),
        };
        let layout = layout::runtime_layout(&build.version, &resolved.structs, gc_cycles_addr, green_tea, rate_addr);
        Ok(GoBinary {
            bytes,
            identity: None,
            image,
            build,
            pclntab: loaded.table,
            functions,
            by_name,
            layout,
            module: loaded.module,
        })
    }

    /// The file this binary was read from, if it was read from one.
    pub fn identity(&self) -> Option<FileIdentity> {
        self.identity
    }

    /// Pages of the file that were truncated away while mapped and read as zeros since: what maptrace read from
    /// them may be wrong (the binary changed under it), so a report says so.
    pub fn zeroed_pages(&self) -> u64 {
        self.bytes.zeroed_pages()
    }

    pub fn arch(&self) -> Arch {
        self.image.arch
    }

    pub fn version(&self) -> &GoVersion {
        &self.build.version
    }

    pub fn experiments(&self) -> &[String] {
        &self.build.experiments
    }

    pub fn has_symtab(&self) -> bool {
        self.image.has_symtab
    }

    pub fn has_dwarf(&self) -> bool {
        self.image.has_dwarf
    }

    pub fn function(&self, name: &str) -> Option<&Function> {
        self.by_name.get(name).map(|&i| &self.functions[i])
    }

    /// All functions in address order.
    pub fn functions(&self) -> impl Iterator<Item = &Function> {
        self.functions.iter()
    }

    /// The function whose `[entry, end)` contains `pc`.
    pub fn function_at(&self, pc: u64) -> Option<&Function> {
        self.function_index(pc).map(|i| &self.functions[i])
    }

    fn function_index(&self, pc: u64) -> Option<usize> {
        let i = self.functions.partition_point(|f| f.entry <= pc).checked_sub(1)?;
        (pc < self.functions[i].end).then_some(i)
    }

    /// File offset of a virtual address, through the PT_LOAD that maps it (what uprobe attach wants).
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        self.image.file_offset(vaddr)
    }

    /// Addresses of every return instruction in `f`, where a uprobe replaces a uretprobe (uretprobes crash Go).
    pub fn ret_sites(&self, f: &Function) -> Result<Vec<u64>, TargetError> {
        rets::ret_sites(self.image.arch, self.code(f)?, f.entry)
    }

    /// Where `f`'s body starts, past its stack-bound check (see [`rets`]); its entry if it has none, or if its code
    /// cannot be read.
    pub fn past_stack_check(&self, f: &Function) -> u64 {
        self.code(f)
            .map_or(f.entry, |code| rets::past_stack_check(self.image.arch, code, f.entry))
    }

    /// Addresses of `f`'s calls through a register (a func value's call).
    pub fn indirect_call_sites(&self, f: &Function) -> Result<Vec<u64>, TargetError> {
        rets::indirect_call_sites(self.image.arch, self.code(f)?, f.entry)
    }

    /// A function's entry and code, by name.
    fn code_by_name(&self, name: &str) -> Option<gc::Code<'_>> {
        let f = self.function(name)?;
        Some(gc::Code {
            entry: f.entry,
            bytes: self.code(f).ok()?,
        })
    }

    fn code(&self, f: &Function) -> Result<&[u8], TargetError> {
        let len = f
            .end
            .checked_sub(f.entry)
            .ok_or_else(|| TargetError::corrupt(format!("function {} ends before it starts", f.name)))?;
        self.image
            .read(&self.bytes, f.entry, len)
            .ok_or_else(|| TargetError::corrupt(format!("code of {} at {:#x} is not in the file", f.name, f.entry)))
    }

    pub fn layout(&self) -> &RuntimeLayout {
        &self.layout
    }

    /// Function, file and line of an exact PC (pass return address − 1 for callers), from the pclntab only.
    pub fn symbolize(&self, pc: u64) -> Option<SourcePosition> {
        let i = self.function_index(pc)?;
        let f = &self.functions[i];
        let (file, line) = self.pclntab.file_line(&self.bytes, i, f.entry, pc);
        Some(SourcePosition {
            function: f.name.clone(),
            file,
            line,
            entry: f.entry,
        })
    }

    /// How the GC scans a frame of the function stopped at `pc` (link-time: a call's return address, or where a
    /// goroutine resumes): its stack maps there. None outside Go functions and where the binary has no maps.
    pub fn frame_pointers(&self, pc: u64) -> Option<FramePointers> {
        // A goroutine not started yet resumes at its function's entry; any other frame just past a call.
        let i = self
            .function_index(pc)
            .filter(|&i| self.functions[i].entry == pc)
            .or_else(|| self.function_index(pc.checked_sub(1)?))?;
        let refs = self.pclntab.stack_maps(&self.bytes, i, self.functions[i].entry, pc)?;
        let module = self.module?;
        stackmaps::frame_pointers(&refs, module.gofunc, module.rodata, |a| {
            self.image.rest_of_segment(&self.bytes, a)
        })
    }

    /// `moduledata.types`: the base that `abi.Type.Str` (a nameOff) and typeOffs are relative to.
    pub fn types_base(&self) -> Option<u64> {
        self.module.map(|m| m.types)
    }

    /// Bytes at a link-time address, from the file: read-only data such as type descriptors, which
    /// stay readable after the process has exited.
    pub fn read_static(&self, vaddr: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let src = self
            .image
            .read(&self.bytes, vaddr, buf.len() as u64)
            .ok_or_else(|| TargetError::corrupt(format!("{:#x}+{} is not in the file", vaddr, buf.len())))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    /// Lowest PT_LOAD virtual address; with the mapping's start it gives the PIE load bias.
    pub fn load_vaddr(&self) -> u64 {
        self.image.load_vaddr()
    }
}
