//! The Go pclntab (`runtime/symtab.go`, `internal/abi/symtab.go`): every Go function's name, bounds and pc→file:line
//! tables. It is what makes stripped binaries usable, since Go needs it at run time and never strips it. Layout
//! (Go 1.18+): a header `{magic, pad, minLC, ptrSize, nfunc, nfiles, textStart, funcnameOffset, cuOffset,
//! filetabOffset, pctabOffset, pclnOffset}`, then the tables at those offsets; the functab (at pclnOffset) holds
//! `nfunc + 1` pairs `{entryoff, funcoff}` whose last entryoff is the end of text.

use super::bytes::{cstr_at, u32_at, u64_at, uvarint};
use super::elf::Image;
use super::layout::ModuledataOffsets;
pub(super) mod moduledata;

use super::{Arch, Function, GoVersion, TargetError};
use moduledata::Module;

/// Go 1.18–1.19.
const MAGIC_GO118: u32 = 0xffff_fff0;
/// Go 1.20 and later (unchanged through 1.27).
const MAGIC_GO120: u32 = 0xffff_fff1;
const HEADER_LEN: usize = 72;

/// The most functions a pclntab may list. The largest programs maptrace has met list a few hundred thousand
/// (a generated 65 MB binary: about 260 000); each costs maptrace a name and three words.
const MAX_FUNCTIONS: usize = 4_000_000;
/// The most name bytes all functions' names may add up to. Names are copied per function, so a table whose
/// entries all share one long name would otherwise cost its length times the function count.
const MAX_NAME_BYTES: usize = 128 << 20;
/// Zero-length steps a pc-value table may take on top of one per pc quantum: the linker writes none, but a
/// forged table made of them would make each lookup as long as the table.
const MAX_EMPTY_STEPS: u32 = 64;

/// `_func` field offsets; unchanged from 1.18 to 1.27 (1.20 appended `startLine` after `cuOffset`).
const FUNC_ENTRYOFF: usize = 0;
const FUNC_NAMEOFF: usize = 4;
const FUNC_PCFILE: usize = 20;
const FUNC_PCLN: usize = 24;
const FUNC_CUOFFSET: usize = 32;
const FUNC_ARGS: usize = 8;
const FUNC_NPCDATA: usize = 28;
/// `_func`'s size, which `pcdata [npcdata]uint32` and `funcdata [nfuncdata]uint32` follow, its last byte being
/// `nfuncdata`: 40 bytes until 1.20 added `startLine` (the format of `MAGIC_GO120`), 44 since.
const FUNC_SIZE_GO118: usize = 40;
const FUNC_SIZE_GO120: usize = 44;
/// `PCDATA_StackMapIndex` (`internal/abi/symtab.go@go1.27.3:109`, `runtime/symtab.go@go1.19:302`).
const PCDATA_STACK_MAP_INDEX: usize = 1;
/// Funcdata of the GC's stack maps (`FUNCDATA_ArgsPointerMaps`, `…LocalsPointerMaps`, `…StackObjects`: 0, 1, 2).
pub(crate) const FUNCDATA_STACK: usize = 3;

#[derive(Debug)]
pub(crate) struct Header {
    quantum: u8,
    /// Bytes of `_func` before its pcdata offsets.
    func_size: usize,
    nfunc: usize,
    /// Absolute address of text, or 0: Go 1.26 stopped writing it.
    pub text_start: u64,
    // Table offsets from the start of the header.
    pub funcname: usize,
    pub cu: usize,
    pub filetab: usize,
    pub pctab: usize,
    pub pcln: usize,
}

impl Header {
    fn parse(data: &[u8], arch: Arch, version: &GoVersion) -> Result<Header, TargetError> {
        let corrupt = |what: &str| TargetError::corrupt(format!("pclntab header: {what}"));
        let head = data.get(..HEADER_LEN).ok_or_else(|| corrupt("cut short"))?;
        let magic = u32_at(head, 0).unwrap_or_default();
        if magic != MAGIC_GO118 && magic != MAGIC_GO120 {
            return Err(TargetError::UnsupportedVersion {
                version: version.raw.clone(),
                reason: format!("unknown pclntab format (magic {magic:#x})"),
            });
        }
        let want_quantum = match arch {
            Arch::Amd64 => 1,
            Arch::Arm64 => 4,
        };
        if head[4..6] != [0, 0] || head[6] != want_quantum || head[7] != 8 {
            return Err(corrupt("bad pad, instruction size or pointer size"));
        }
        let field = |i: usize| u64_at(head, 8 + 8 * i).unwrap_or_default();
        let offset = |i: usize| {
            usize::try_from(field(i))
                .ok()
                .filter(|&o| (HEADER_LEN..data.len()).contains(&o))
                .ok_or_else(|| corrupt("table offset out of range"))
        };
        Ok(Header {
            quantum: head[6],
            func_size: if magic == MAGIC_GO118 {
                FUNC_SIZE_GO118
            } else {
                FUNC_SIZE_GO120
            },
            nfunc: usize::try_from(field(0)).map_err(|_| corrupt("nfunc"))?,
            text_start: field(2),
            funcname: offset(3)?,
            cu: offset(4)?,
            filetab: offset(5)?,
            pctab: offset(6)?,
            pcln: offset(7)?,
        })
    }
}

/// See [`Pclntab::stack_maps`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StackMapRefs {
    pub index: i32,
    pub args: u32,
    pub funcdata: [Option<u32>; FUNCDATA_STACK],
}

pub(crate) struct Pclntab {
    /// File offset of the header; the table is `bytes[start..start + len]`.
    start: usize,
    len: usize,
    hdr: Header,
    /// Each function's `_func` offset in the pcln table, in the order of [`super::GoBinary::functions`].
    funcoffs: Vec<u32>,
}

pub(crate) struct Loaded {
    pub table: Pclntab,
    pub functions: Vec<Function>,
    pub module: Option<Module>,
}

impl Pclntab {
    /// Finds the pclntab (the `.gopclntab` section, or by its magic where there is none: PIE binaries before 1.27
    /// keep it inside `.data.rel.ro`), the moduledata that points at it, and lists the functions.
    pub fn load(
        image: &Image,
        bytes: &[u8],
        version: &GoVersion,
        offsets: &ModuledataOffsets,
    ) -> Result<Loaded, TargetError> {
        let candidates: Vec<(u64, usize, usize)> = match image.section(".gopclntab") {
            Some(s) => {
                let off = s
                    .offset
                    .ok_or_else(|| TargetError::corrupt(".gopclntab has no contents"))?;
                vec![(s.addr, off as usize, s.size as usize)]
            }
            None => scan(image, bytes),
        };
        let mut error = TargetError::NotGo("no Go pclntab".into());
        for (vaddr, start, len) in candidates {
            match Pclntab::load_at(image, bytes, vaddr, start, len, version, offsets) {
                Ok(loaded) => return Ok(loaded),
                Err(e) => error = e,
            }
        }
        Err(error)
    }

    fn load_at(
        image: &Image,
        bytes: &[u8],
        vaddr: u64,
        start: usize,
        len: usize,
        version: &GoVersion,
        offsets: &ModuledataOffsets,
    ) -> Result<Loaded, TargetError> {
        let corrupt = |what: String| TargetError::corrupt(format!("pclntab at {vaddr:#x}: {what}"));
        let data = start
            .checked_add(len)
            .and_then(|end| bytes.get(start..end))
            .ok_or_else(|| corrupt("outside the file".into()))?;
        let hdr = Header::parse(data, image.arch, version)?;
        // Bound nfunc by the functab's room before trusting it for an allocation.
        let functab_end = hdr
            .nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .and_then(|n| n.checked_add(hdr.pcln));
        if functab_end.is_none_or(|end| end > data.len()) {
            return Err(corrupt(format!("{} functions do not fit", hdr.nfunc)));
        }
        if hdr.nfunc > MAX_FUNCTIONS {
            return Err(TargetError::too_large(format!(
                "pclntab lists {} functions (limit {MAX_FUNCTIONS})",
                hdr.nfunc
            )));
        }
        let functab = |i: usize, field: usize| u32_at(data, hdr.pcln + 8 * i + field).unwrap_or_default();
        let module = moduledata::find(image, bytes, vaddr, &hdr, functab(0, 0), offsets);
        let text = match (module, hdr.text_start) {
            (Some(m), _) => m.text,
            (None, t) if t != 0 => t,
            (None, _) => {
                return Err(corrupt(
                    "no runtime.moduledata refers to it, so text cannot be placed".into(),
                ))
            }
        };
        let mut functions = Vec::with_capacity(hdr.nfunc);
        let mut funcoffs = Vec::with_capacity(hdr.nfunc);
        let mut name_bytes = 0usize;
        for i in 0..hdr.nfunc {
            let (entryoff, funcoff, endoff) = (functab(i, 0), functab(i, 4), functab(i + 1, 0));
            let f = hdr.pcln.checked_add(funcoff as usize);
            let field = |o: usize| f.and_then(|f| u32_at(data, f.checked_add(o)?));
            if endoff < entryoff || field(FUNC_ENTRYOFF) != Some(entryoff) {
                return Err(corrupt(format!("function {i} does not match the functab")));
            }
            let name = field(FUNC_NAMEOFF)
                .and_then(|n| cstr_at(data, hdr.funcname.checked_add(n as usize)?))
                .ok_or_else(|| corrupt(format!("name of function {i}")))?;
            name_bytes += name.len();
            if name_bytes > MAX_NAME_BYTES {
                return Err(TargetError::too_large(format!(
                    "function names add up to over {MAX_NAME_BYTES} bytes by function {i}"
                )));
            }
            let (Some(entry), Some(end)) = (
                text.checked_add(u64::from(entryoff)),
                text.checked_add(u64::from(endoff)),
            ) else {
                return Err(corrupt("text address overflow".into()));
            };
            functions.push(Function {
                name: String::from_utf8_lossy(name).into_owned(),
                entry,
                end,
            });
            funcoffs.push(funcoff);
        }
        Ok(Loaded {
            table: Pclntab {
                start,
                len,
                hdr,
                funcoffs,
            },
            functions,
            module,
        })
    }

    /// True if the function-name table holds `name`: the name of a function that is linked out of line, or
    /// only inlined (inline trees name their callees in the same table).
    pub fn lists_name(&self, bytes: &[u8], name: &str) -> bool {
        let Some(data) = self
            .start
            .checked_add(self.len)
            .and_then(|end| bytes.get(self.start..end))
        else {
            return false;
        };
        // The name table runs up to the next table, the CU table.
        let end = if self.hdr.cu > self.hdr.funcname {
            self.hdr.cu
        } else {
            data.len()
        };
        let Some(table) = data.get(self.hdr.funcname..end) else {
            return false;
        };
        let name = name.as_bytes();
        table.split(|&b| b == 0).any(|s| s == name)
    }

    /// File and line of `pc` in function number `idx` (entry `entry`); `("?", 0)` as in Go's own tracebacks when
    /// the tables do not cover it.
    pub fn file_line(&self, bytes: &[u8], idx: usize, entry: u64, pc: u64) -> (String, u32) {
        self.try_file_line(bytes, idx, entry, pc)
            .unwrap_or_else(|| ("?".to_string(), 0))
    }

    fn try_file_line(&self, bytes: &[u8], idx: usize, entry: u64, pc: u64) -> Option<(String, u32)> {
        let data = bytes.get(self.start..self.start.checked_add(self.len)?)?;
        let f = self.hdr.pcln.checked_add(*self.funcoffs.get(idx)? as usize)?;
        let field = |o: usize| u32_at(data, f.checked_add(o)?);
        let line = self.pcvalue(data, field(FUNC_PCLN)?, entry, pc)?;
        let fileno = self.pcvalue(data, field(FUNC_PCFILE)?, entry, pc)?;
        // File numbers are per compilation unit: cutab[cuOffset + fileno] is the offset in filetab.
        let slot = (field(FUNC_CUOFFSET)? as usize).checked_add(usize::try_from(fileno).ok()?)?;
        let fileoff = u32_at(data, self.hdr.cu.checked_add(slot.checked_mul(4)?)?)?;
        if fileoff == u32::MAX {
            return None;
        }
        let file = cstr_at(data, self.hdr.filetab.checked_add(fileoff as usize)?)?;
        Some((String::from_utf8_lossy(file).into_owned(), u32::try_from(line).ok()?))
    }

    /// What the GC needs to scan a frame of function number `idx` (entry `entry`) stopped at `pc` (a return
    /// address, or the entry): the index of its stack maps there (`PCDATA_StackMapIndex`, 0 where the table says
    /// -1, as `getStackMap` reads it), its argument bytes, and where its args and locals pointer maps and stack
    /// objects are (offsets from `moduledata.gofunc`; None: it has none).
    pub fn stack_maps(&self, bytes: &[u8], idx: usize, entry: u64, pc: u64) -> Option<StackMapRefs> {
        let data = bytes.get(self.start..self.start.checked_add(self.len)?)?;
        let f = self.hdr.pcln.checked_add(*self.funcoffs.get(idx)? as usize)?;
        let field = |o: usize| u32_at(data, f.checked_add(o)?);
        let npcdata = field(FUNC_NPCDATA)? as usize;
        let nfuncdata = usize::from(*data.get(f.checked_add(self.hdr.func_size - 1)?)?);
        let pcdata = |i: usize| (i < npcdata).then(|| field(self.hdr.func_size + 4 * i)).flatten();
        let index = match pcdata(PCDATA_STACK_MAP_INDEX) {
            Some(off) if pc != entry => self.pcvalue(data, off, entry, pc - 1).unwrap_or(-1),
            _ => -1,
        };
        let mut funcdata = [None; FUNCDATA_STACK];
        for (i, slot) in funcdata.iter_mut().enumerate().take(nfuncdata) {
            *slot = field(self.hdr.func_size + 4 * npcdata + 4 * i).filter(|&off| off != u32::MAX);
        }
        Some(StackMapRefs {
            index: index.max(0),
            args: field(FUNC_ARGS)?,
            funcdata,
        })
    }

    /// The value of the pc-value table at `off` (in pctab) for `target` (`runtime.pcvalue`). The table is a
    /// sequence of (zigzag value delta, pc delta / minLC) varint pairs starting from value −1 at `entry`; a value
    /// holds from its pc up to the next pair's pc. A zero byte after the first pair ends the table.
    fn pcvalue(&self, data: &[u8], off: u32, entry: u64, target: u64) -> Option<i32> {
        if off == 0 {
            return None;
        }
        let mut p = self.hdr.pctab.checked_add(off as usize)?;
        let (mut pc, mut val, mut first) = (entry, -1i32, true);
        let mut empty_steps = 0;
        loop {
            if *data.get(p)? == 0 && !first {
                return None;
            }
            // Go decodes these varints into uint32s.
            let uv = uvarint(data, &mut p)? as u32;
            let delta = if uv & 1 != 0 { !(uv >> 1) } else { uv >> 1 };
            val = val.wrapping_add(delta as i32);
            let pcdelta = uvarint(data, &mut p)? as u32;
            if pcdelta == 0 {
                empty_steps += 1;
                if empty_steps > MAX_EMPTY_STEPS {
                    return None;
                }
            }
            pc = pc.checked_add(u64::from(pcdelta) * u64::from(self.hdr.quantum))?;
            if target < pc {
                return Some(val);
            }
            first = false;
        }
    }
}

/// Lookalikes tried before giving up: a real binary has one pclntab and seldom a stray magic before it, while
/// each candidate costs a pass over the writable segments (its moduledata search).
const MAX_CANDIDATES: usize = 16;

/// Pclntab candidates by magic, at 8-byte alignment in any loaded segment: (vaddr, file offset, bytes to the end
/// of the segment). `load_at` then tells a real table from a lookalike by its header and moduledata.
fn scan(image: &Image, bytes: &[u8]) -> Vec<(u64, usize, usize)> {
    let mut found = Vec::new();
    for seg in &image.segments {
        let Some(data) = image.rest_of_segment(bytes, seg.vaddr) else {
            continue;
        };
        let skip = ((8 - seg.vaddr % 8) % 8) as usize;
        let Some(aligned) = data.get(skip..) else {
            continue;
        };
        for (i, word) in aligned.chunks_exact(8).enumerate() {
            let magic = u32_at(word, 0).unwrap_or_default();
            if (magic == MAGIC_GO118 || magic == MAGIC_GO120) && word[4..6] == [0, 0] && word[7] == 8 {
                let at = skip + 8 * i;
                found.push((seg.vaddr + at as u64, seg.offset as usize + at, data.len() - at));
                if found.len() == MAX_CANDIDATES {
                    return found;
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gobin::bytes::MAX_NAME;
    use crate::gobin::layout::ModuledataOffsets;

    const TEXT: u64 = 0x40_1000;

    /// A Go 1.20+ pclntab of `nfunc` 16-byte functions whose `_func`s all name `name` and share one pc-line and
    /// pc-file table, `pctab`.
    fn synthetic(nfunc: usize, name: &[u8], pctab: &[u8]) -> Vec<u8> {
        let funcname = HEADER_LEN;
        let cu = funcname + name.len() + 1;
        let filetab = cu + 4;
        let pctab_at = filetab + 5;
        let pcln = (pctab_at + 1 + pctab.len()).next_multiple_of(8);
        let funcs = pcln + 8 * (nfunc + 1);
        let mut t = vec![0u8; funcs + FUNC_SIZE_GO120 * nfunc];
        t[..4].copy_from_slice(&MAGIC_GO120.to_le_bytes());
        t[6..8].copy_from_slice(&[1, 8]);
        for (i, v) in [nfunc, 0, TEXT as usize, funcname, cu, filetab, pctab_at, pcln]
            .into_iter()
            .enumerate()
        {
            t[8 + 8 * i..16 + 8 * i].copy_from_slice(&(v as u64).to_le_bytes());
        }
        t[funcname..funcname + name.len()].copy_from_slice(name);
        t[filetab..filetab + 4].copy_from_slice(b"f.go");
        t[pctab_at + 1..pctab_at + 1 + pctab.len()].copy_from_slice(pctab);
        for i in 0..=nfunc {
            let (entry, func) = (16 * i as u32, (8 * (nfunc + 1) + FUNC_SIZE_GO120 * i) as u32);
            t[pcln + 8 * i..pcln + 8 * i + 8].copy_from_slice(&[entry.to_le_bytes(), func.to_le_bytes()].concat());
            if i < nfunc {
                let f = pcln + func as usize;
                t[f..f + 4].copy_from_slice(&entry.to_le_bytes());
                t[f + FUNC_PCFILE..f + FUNC_PCFILE + 4].copy_from_slice(&1u32.to_le_bytes());
                t[f + FUNC_PCLN..f + FUNC_PCLN + 4].copy_from_slice(&1u32.to_le_bytes());
            }
        }
        t
    }

    fn load(table: &[u8]) -> Result<Loaded, TargetError> {
        let image = Image {
            arch: Arch::Amd64,
            segments: Vec::new(),
            sections: Vec::new(),
            has_symtab: false,
            has_dwarf: false,
        };
        let version = GoVersion::parse("go1.24.11").unwrap();
        let offsets = ModuledataOffsets {
            text: 0,
            types: 0,
            etypes: 0,
            gofunc: 8,
        };
        Pclntab::load_at(&image, table, 0, 0, table.len(), &version, &offsets)
    }

    /// (value delta +1, pc delta 16) then the end: line 0 over each function's 16 bytes.
    const ONE_LINE: &[u8] = &[2, 16, 0];

    #[test]
    fn a_synthetic_table_reads_back() {
        let table = synthetic(3, b"main.f", ONE_LINE);
        let loaded = load(&table).unwrap();
        let names: Vec<_> = loaded.functions.iter().map(|f| (f.name.as_str(), f.entry)).collect();
        assert_eq!(names, [("main.f", TEXT), ("main.f", TEXT + 16), ("main.f", TEXT + 32)]);
        assert_eq!(
            loaded.table.file_line(&table, 1, TEXT + 16, TEXT + 20),
            ("f.go".to_string(), 0)
        );
    }

    #[test]
    fn one_long_name_shared_by_every_function_is_refused() {
        let name = vec![b'n'; MAX_NAME];
        // Under the total, the long name is read for each function; one function more and it is over.
        let under = MAX_NAME_BYTES / MAX_NAME;
        assert_eq!(load(&synthetic(under, &name, ONE_LINE)).unwrap().functions.len(), under);
        assert!(matches!(
            load(&synthetic(under + 1, &name, ONE_LINE)),
            Err(TargetError::TooLarge { .. })
        ));
        // A name past the cap has no end as far as maptrace looks.
        let longer = vec![b'n'; MAX_NAME + 1];
        assert!(matches!(
            load(&synthetic(1, &longer, ONE_LINE)),
            Err(TargetError::Corrupt { .. })
        ));
    }

    #[test]
    fn zero_length_steps_end_a_lookup() {
        // Value +1 at pc delta 0, many times, then a real step: past the allowance the line is unknown.
        let steps = |n: usize| [[2u8, 0].repeat(n), ONE_LINE.to_vec()].concat();
        let within = synthetic(1, b"main.f", &steps(MAX_EMPTY_STEPS as usize));
        let past = synthetic(1, b"main.f", &steps(MAX_EMPTY_STEPS as usize + 1));
        // The table is at pctab offset 1 (0 means none).
        let line = |t: &[u8]| load(t).unwrap().table.pcvalue(t, 1, TEXT, TEXT + 4);
        assert_eq!(line(&within), Some(MAX_EMPTY_STEPS as i32));
        assert_eq!(line(&past), None, "unknown");
    }
}
