//! The roots of a heap walk that a binary without symbols still gives away: where `runtime.mheap_` and
//! `runtime.allgs` are, read from code the pclntab still names, and which words of the data and bss sections hold
//! pointers, from the moduledata and the GC programs the linker wrote.
//!
//! **`runtime.mheap_`.** `mallocinit` calls `mheap_.init()` (`malloc.go@go1.19.8:407`, `@go1.27.3:493`), whose
//! receiver, the first integer argument, is formed right before the call: `LEAQ runtime.mheap_(SB), AX` on amd64,
//! `ADRP; ADD $lo, R0, R0` on arm64. `(*mheap).init` is called once, from there.
//!
//! **`runtime.allgs`.** `allgadd` does `allgs = append(allgs, gp)` (`proc.go@go1.19.8:539`, `@go1.27.3:706`) and
//! stores the new slice header back word by word: pointer, length and capacity at X, X+8 and X+16. Each store is
//! `MOVQ r, X+k(SB)` on amd64, and `ADRP Rtmp; MOVD Rt, lo+k(Rtmp)` or `ADRP Rtmp; ADD $lo, Rtmp; MOVD Rt, k(Rtmp)`
//! on arm64. The function stores no other global three words in a row (`allglen` and `allgptr` are written through
//! atomics).
//!
//! Each rule must find exactly one address, 8-byte aligned and in writable memory; anything else is an error, not a
//! guess. Measured on go1.19 and go1.21–go1.27, amd64 and arm64.
//!
//! **Data and bss.** The GC scans both through bitmaps, `moduledata.gcdatamask` and `gcbssmask` (one bit per word,
//! set for a pointer), which the runtime builds at start-up (`modulesinit`, `symtab.go@go1.27.3:550-555`) by running
//! the GC programs at `moduledata.gcdata`/`gcbss` (`progToPointerMask`, `mbitmap.go@go1.27.3:1536-1545`). Those
//! programs are read-only data the linker wrote (`cmd/link/internal/ld/data.go@go1.27.3:2024-2040`), so running them
//! here gives the same bitmaps from the file alone.

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};

use super::elf::Image;
use super::gc::Code;
use super::layout::{HeapOffsets, RootSectionFields};
use super::Arch;

/// A section of package-level variables, and which of its words hold pointers: what the GC scans as roots
/// (`markrootBlock` with `gcdatamask`/`gcbssmask`). Read from the moduledata and the linker's GC programs, so a
/// binary without symbols or DWARF has them too (see [`data_regions`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRegion {
    /// `"data"` or `"bss"`.
    pub name: &'static str,
    /// Link-time address (`moduledata.data`/`bss`) and byte length; add the load bias for a PIE.
    pub addr: u64,
    pub len: u64,
    /// Bit i (byte i/8, bit i%8) is set if the word at `addr + 8 * i` is a pointer.
    pub pointers: Vec<u8>,
    /// Link-time address of `moduledata.gcdatamask`/`gcbssmask` (a `bitvector{n int32; bytedata *uint8}`), where
    /// the running program keeps the same bitmap, built at start-up.
    pub runtime_mask: u64,
}

impl DataRegion {
    /// True if the word at `addr` (link-time, 8-byte aligned, in this region) holds a pointer.
    pub fn is_pointer(&self, addr: u64) -> bool {
        let Some(word) = addr
            .checked_sub(self.addr)
            .filter(|&o| o < self.len && o % 8 == 0)
            .map(|o| o / 8)
        else {
            return false;
        };
        self.pointers
            .get((word / 8) as usize)
            .is_some_and(|b| b >> (word % 8) & 1 == 1)
    }
}

/// The function whose call of [`MHEAP_INIT`] passes `&mheap_`.
pub(crate) const MALLOCINIT: &str = "runtime.mallocinit";
pub(crate) const MHEAP_INIT: &str = "runtime.(*mheap).init";
/// The function that stores the `allgs` slice header.
pub(crate) const ALLGADD: &str = "runtime.allgadd";

/// Link-time address of `runtime.mheap_`, whose first `len` bytes must lie in writable memory.
pub(crate) fn mheap_from_code<'a>(
    image: &Image,
    code: impl Fn(&str) -> Option<Code<'a>>,
    len: u64,
) -> Result<u64, String> {
    let init = code(MHEAP_INIT)
        .ok_or_else(|| format!("no function {MHEAP_INIT}"))?
        .entry;
    let caller = code(MALLOCINIT).ok_or_else(|| format!("no function {MALLOCINIT}"))?;
    let found = match image.arch {
        Arch::Amd64 => amd64::receivers(&caller, init),
        Arch::Arm64 => arm64::receivers(&caller, init),
    };
    one(
        image,
        found,
        len,
        &format!("the receiver {MALLOCINIT} passes to {MHEAP_INIT}"),
    )
}

/// Link-time address of the `runtime.allgs` slice header.
pub(crate) fn allgs_from_code<'a>(image: &Image, code: impl Fn(&str) -> Option<Code<'a>>) -> Result<u64, String> {
    let f = code(ALLGADD).ok_or_else(|| format!("no function {ALLGADD}"))?;
    let mut stores = match image.arch {
        Arch::Amd64 => amd64::stored_words(&f),
        Arch::Arm64 => arm64::stored_words(&f),
    };
    stores.sort_unstable();
    stores.dedup();
    let headers = stores
        .iter()
        .copied()
        .filter(|&x| {
            [8, 16]
                .iter()
                .all(|k| x.checked_add(*k).is_some_and(|a| stores.binary_search(&a).is_ok()))
        })
        .collect();
    one(image, headers, 24, &format!("the slice header {ALLGADD} stores"))
}

fn one(image: &Image, mut found: Vec<u64>, len: u64, what: &str) -> Result<u64, String> {
    found.sort_unstable();
    found.dedup();
    match found[..] {
        [addr] if addr % 8 == 0 && image.is_writable_memory(addr, len) => Ok(addr),
        [addr] => Err(format!(
            "{what} is at {addr:#x}, not an aligned {len} bytes of a writable segment"
        )),
        [] => Err(format!("{what}: not found (an unoptimized build?)")),
        _ => Err(format!("{what}: {} candidates, {found:#x?}", found.len())),
    }
}

/// A data or bss section larger than this is taken as corrupt rather than given a bitmap (of 64 MiB).
const MAX_REGION: u64 = 1 << 32;

/// The data and bss sections of the module whose `runtime.moduledata` is at `moduledata`, with their pointer
/// bitmaps.
pub(crate) fn data_regions(
    image: &Image,
    bytes: &[u8],
    moduledata: u64,
    offsets: &HeapOffsets,
) -> Result<Vec<DataRegion>, String> {
    [("data", offsets.data), ("bss", offsets.bss)]
        .into_iter()
        .map(|(name, fields)| {
            region(image, bytes, moduledata, name, fields).map_err(|e| format!("moduledata {name}: {e}"))
        })
        .collect()
}

fn region(
    image: &Image,
    bytes: &[u8],
    moduledata: u64,
    name: &'static str,
    f: RootSectionFields,
) -> Result<DataRegion, String> {
    let field = |off: u64| {
        moduledata
            .checked_add(off)
            .and_then(|a| image.read_u64(bytes, a))
            .ok_or_else(|| format!("field at +{off} is not in the file"))
    };
    let (addr, end, prog) = (field(f.start)?, field(f.end)?, field(f.gcprog)?);
    let len = end
        .checked_sub(addr)
        .ok_or_else(|| format!("ends at {end:#x}, before its start {addr:#x}"))?;
    if addr % 8 != 0 || len > MAX_REGION || !image.is_writable_memory(addr, len) {
        return Err(format!(
            "{addr:#x}+{len:#x} is not an aligned range of a writable segment, of at most 4 GiB"
        ));
    }
    let prog = image
        .rest_of_segment(bytes, prog)
        .ok_or_else(|| format!("GC program at {prog:#x} is not in the file"))?;
    Ok(DataRegion {
        name,
        addr,
        len,
        pointers: run_gc_prog(prog, len / 8)?,
        runtime_mask: moduledata
            .checked_add(f.mask)
            .ok_or("moduledata at the end of the address space")?,
    })
}

/// The bitmap a GC program describes, for `words` words (`runGCProg`, `mbitmap.go@go1.27.3:1547-1560`): bit i (byte
/// i/8, bit i%8) is word i. Instructions: `0` stops; `0nnnnnnn` emits n bits from the next ⌈n/8⌉ bytes;
/// `1nnnnnnn c` repeats the last n bits c times, n and c varints when n is 0. Like the runtime, which sizes its
/// buffer from the section length, a program writing past `words` (rounded up to a byte) is refused.
fn run_gc_prog(prog: &[u8], words: u64) -> Result<Vec<u8>, String> {
    let nbytes = usize::try_from(words.div_ceil(8)).map_err(|_| "section too large")?;
    let mut out = Bitmap {
        bytes: vec![0; nbytes],
        len: 0,
    };
    let mut prog = Program { bytes: prog, at: 0 };
    loop {
        let inst = prog.byte()?;
        let n = u64::from(inst & 0x7f);
        if inst & 0x80 == 0 {
            if n == 0 {
                return Ok(out.bytes);
            }
            for first in (0..n).step_by(8) {
                let byte = prog.byte()?;
                for i in 0..(n - first).min(8) {
                    out.push(byte >> i & 1)?;
                }
            }
        } else {
            let n = if n == 0 { prog.uvarint()? } else { n };
            let count = prog.uvarint()?;
            if n > out.len {
                return Err(format!("GC program repeats {n} bits after only {}", out.len));
            }
            // Each bit is the one n before it: the last n bits, count times.
            for _ in 0..n.checked_mul(count).ok_or("GC program repeat count overflows")? {
                out.push(out.get(out.len - n))?;
            }
        }
    }
}

struct Bitmap {
    bytes: Vec<u8>,
    len: u64,
}

impl Bitmap {
    fn get(&self, i: u64) -> u8 {
        self.bytes[(i / 8) as usize] >> (i % 8) & 1
    }

    fn push(&mut self, bit: u8) -> Result<(), String> {
        let byte = self
            .bytes
            .get_mut((self.len / 8) as usize)
            .ok_or("GC program overflows its section")?;
        *byte |= bit << (self.len % 8);
        self.len += 1;
        Ok(())
    }
}

struct Program<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Program<'_> {
    fn byte(&mut self) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or("GC program runs off the end of its segment")?;
        self.at += 1;
        Ok(b)
    }

    fn uvarint(&mut self) -> Result<u64, String> {
        super::bytes::uvarint(self.bytes, &mut self.at)
            .ok_or_else(|| "GC program: a varint runs off its segment or is too long".into())
    }
}

mod amd64 {
    use super::*;

    /// `&X` passed in AX to the function at `callee`: `LEA RAX, [rip+X]` directly followed by `CALL callee`.
    pub(super) fn receivers(code: &Code<'_>, callee: u64) -> Vec<u64> {
        let mut decoder = Decoder::with_ip(64, code.bytes, code.entry, DecoderOptions::NONE);
        let mut found = Vec::new();
        let mut lea_rax = None;
        for insn in decoder.iter() {
            if insn.mnemonic() == Mnemonic::Call
                && insn.op0_kind() == OpKind::NearBranch64
                && insn.near_branch_target() == callee
            {
                found.extend(lea_rax);
            }
            lea_rax = (insn.mnemonic() == Mnemonic::Lea
                && insn.op0_register() == Register::RAX
                && insn.is_ip_rel_memory_operand())
            .then(|| insn.ip_rel_memory_address());
        }
        found
    }

    /// Addresses that `MOV [rip+X], r64` stores to.
    pub(super) fn stored_words(code: &Code<'_>) -> Vec<u64> {
        let mut decoder = Decoder::with_ip(64, code.bytes, code.entry, DecoderOptions::NONE);
        decoder
            .iter()
            .filter(|i| {
                i.mnemonic() == Mnemonic::Mov
                    && i.op0_kind() == OpKind::Memory
                    && i.is_ip_rel_memory_operand()
                    && i.op1_kind() == OpKind::Register
                    && (Register::RAX..=Register::R15).contains(&i.op1_register())
            })
            .map(|i| i.ip_rel_memory_address())
            .collect()
    }
}

/// The few AArch64 encodings Go uses to address a global: `ADRP`, `ADD` (immediate), `STR` (64-bit, unsigned
/// offset), and `BL`.
mod arm64 {
    use super::super::arm64::{add_imm, adrp, words};
    use super::Code;

    /// `STR Xt, [Xn, #off]`: (Xn, off).
    fn str_x(w: u32) -> Option<(u32, u64)> {
        (w & 0xffc0_0000 == 0xf900_0000).then(|| ((w >> 5) & 31, u64::from((w >> 10) & 0xfff) << 3))
    }

    /// `BL label`: the target.
    fn bl(pc: u64, w: u32) -> Option<u64> {
        (w & 0xfc00_0000 == 0x9400_0000).then(|| pc.wrapping_add(((u64::from(w) << 38) as i64 >> 36) as u64))
    }

    /// `&X` passed in R0 to the function at `callee`: `ADRP X0; ADD X0, X0, #lo; BL callee`.
    pub(super) fn receivers(code: &Code<'_>, callee: u64) -> Vec<u64> {
        words(code)
            .collect::<Vec<_>>()
            .windows(3)
            .filter_map(|w| {
                let (0, page) = adrp(w[0].0, w[0].1)? else { return None };
                let (0, 0, lo) = add_imm(w[1].1)? else { return None };
                (bl(w[2].0, w[2].1)? == callee).then(|| page.wrapping_add(lo))
            })
            .collect()
    }

    /// Addresses that `STR Xt` stores to with the base formed just before by `ADRP` (and an `ADD`).
    pub(super) fn stored_words(code: &Code<'_>) -> Vec<u64> {
        let w: Vec<(u64, u32)> = words(code).collect();
        let mut found = Vec::new();
        for (i, &(pc, word)) in w.iter().enumerate() {
            let Some((a, page)) = adrp(pc, word) else { continue };
            let next = |k: usize| w.get(i + k).map(|&(_, x)| x);
            let Some(x) = next(1) else { continue };
            if let Some((n, off)) = str_x(x) {
                if n == a {
                    found.push(page.wrapping_add(off));
                }
            } else if let Some((d, _, lo)) = add_imm(x).filter(|&(_, n, _)| n == a) {
                if let Some((_, off)) = next(2).and_then(str_x).filter(|&(m, _)| m == d) {
                    found.push(page.wrapping_add(lo).wrapping_add(off));
                }
            }
        }
        found
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn decodes_go_forms() {
            // go1.27.3 counting-arm64, runtime.mallocinit: ADRP 1572864(PC), R0; ADD $2624, R0, R0; CALL at 0x27940.
            let bytes: Vec<u8> = [0x90000c00u32, 0x91290000, 0x94006ed8]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            let code = Code {
                entry: 0x27938,
                bytes: &bytes,
            };
            assert_eq!(receivers(&code, 0x27940 + 4 * 0x6ed8), [0x1a7a40]);
            assert!(receivers(&code, 0x27940).is_empty());
            // go1.19 counting-arm64, runtime.allgadd: ADRP; ADD $0x610, R27, R27; MOVD R2, (R27) stores allgs+16.
            let pc = 0x455e0;
            let adrp = 0xf000089bu32;
            let page = adrp_page(pc, adrp);
            let bytes: Vec<u8> = [adrp, 0x9118437b, 0xf9000362]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            assert_eq!(
                stored_words(&Code {
                    entry: pc,
                    bytes: &bytes
                }),
                [page + 0x610]
            );
            // go1.27.3: ADRP; MOVD R2, 0x1b0(R27).
            let bytes: Vec<u8> = [0xb0000a3bu32, 0xf900db62]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect();
            assert_eq!(
                stored_words(&Code {
                    entry: pc,
                    bytes: &bytes
                }),
                [adrp_page(pc, 0xb0000a3b) + 0x1b0]
            );
        }

        fn adrp_page(pc: u64, w: u32) -> u64 {
            adrp(pc, w).unwrap().1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(bitmap: &[u8], n: usize) -> String {
        (0..n)
            .map(|i| if bitmap[i / 8] >> (i % 8) & 1 == 1 { '1' } else { '0' })
            .collect()
    }

    #[test]
    fn gc_programs() {
        // 3 literal bits 101, then the last 3 repeated twice, then 2 literal bits 01.
        let prog = [0x03, 0b101, 0x83, 0x02, 0x02, 0b10, 0x00];
        let out = run_gc_prog(&prog, 11).unwrap();
        assert_eq!(bits(&out, 16), "1011011010100000");
        // A repeat of 9 bits (varint n) once.
        let prog = [0x09, 0xff, 0x01, 0x80, 0x09, 0x01, 0x00];
        assert_eq!(bits(&run_gc_prog(&prog, 18).unwrap(), 18), "111111111".repeat(2));
        // Longer than the section (rounded up to a byte), repeating unwritten bits, no stop, a long varint.
        assert!(run_gc_prog(&[0x10, 0xff, 0xff, 0x00], 8).is_err());
        assert!(run_gc_prog(&[0x10, 0xff, 0xff, 0x00], 9).is_ok());
        assert!(run_gc_prog(&[0x01, 0x01, 0x82, 0x01, 0x00], 64).is_err());
        assert!(run_gc_prog(
            &[0x01, 0x01, 0x81, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00],
            64
        )
        .is_err());
        assert!(run_gc_prog(&[0x01, 0x01], 64).is_err());
        assert!(run_gc_prog(&[0x01, 0x01, 0x81, 0x80], 64).is_err());
        assert_eq!(run_gc_prog(&[0x00], 0).unwrap(), Vec::<u8>::new());
    }
}
