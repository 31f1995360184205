//! The GC's stack maps: which words of a frame hold live pointers where the function is stopped (a call's
//! return address), as `getStackMap` reads them (`runtime/stkframe.go@go1.27.3`): a bitmap of the locals below
//! `varp`, one of the arguments from `argp`, and the frame's stack objects (address-taken variables, with their
//! types' pointer masks). Read from the binary (pclntab and `go:func.*`), so stripped binaries have them too.

use super::bytes::{u32_at, u64_at};
use super::pclntab::StackMapRefs;

/// `FUNCDATA_ArgsPointerMaps`, `FUNCDATA_LocalsPointerMaps`, `FUNCDATA_StackObjects`.
const ARGS: usize = 0;
const LOCALS: usize = 1;
const OBJECTS: usize = 2;
/// A `stackObjectRecord`: `{off, size, ptrBytes int32; gcdataoff uint32}` (`stack.go@go1.19`, `@go1.27.3`).
const OBJECT_RECORD: usize = 16;
/// Stack objects per frame read at most.
const MAX_OBJECTS: u64 = 1024;
/// The largest pointer mask of a stack object read, in words: Go's compiler moves variables over 128 KiB (16 Ki
/// words) to the heap, so a larger mask is not a real one, and copying it for every frame and object made one
/// forged binary's frames take seconds.
const MAX_OBJECT_WORDS: u32 = 1 << 16;

/// A bitmap over words: bit i (byte i/8, bit i%8) for word i.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WordBits {
    pub words: u32,
    pub bits: Vec<u8>,
}

/// An address-taken variable the frame keeps: `offset` from `varp` when negative, else from `argp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackObject {
    pub offset: i64,
    pub size: u64,
    /// Its pointer words, from its type's mask; None when the type has a GC program (before 1.24) or the mask
    /// cannot be read.
    pub pointers: Option<WordBits>,
}

/// How the GC scans one frame: the live pointer words of its locals (the `locals.words` words below `varp`) and
/// arguments (from `argp`), and its stack objects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FramePointers {
    pub locals: WordBits,
    pub args: WordBits,
    pub objects: Vec<StackObject>,
}

/// The frame's maps at `refs`, read through `at` (the bytes from a link-time address to the end of its segment);
/// `gofunc` and `rodata` are the module's. None when the function has no locals map (assembly, or no frame).
pub(crate) fn frame_pointers<'b>(
    refs: &StackMapRefs,
    gofunc: u64,
    rodata: u64,
    at: impl Fn(u64) -> Option<&'b [u8]>,
) -> Option<FramePointers> {
    let map = |i: usize| -> Option<&'b [u8]> { at(gofunc.checked_add(u64::from(refs.funcdata[i]?))?) };
    let locals = bitmap(map(LOCALS)?, refs.index)?;
    let args = match map(ARGS) {
        Some(m) if refs.args >= 8 => bitmap(m, refs.index).unwrap_or_default(),
        _ => WordBits::default(),
    };
    let objects = map(OBJECTS).map_or_else(Vec::new, |p| objects(p, rodata, &at));
    Some(FramePointers { locals, args, objects })
}

/// Bitmap `index` of a `stackmap{n, nbit int32; bytedata}` (`stackmapdata`).
fn bitmap(map: &[u8], index: i32) -> Option<WordBits> {
    let (n, nbit) = (u32_at(map, 0)? as i32, u32_at(map, 4)?);
    if index >= n || nbit > 1 << 24 {
        return None;
    }
    let len = nbit.div_ceil(8) as usize;
    let from = 8 + len.checked_mul(usize::try_from(index).ok()?)?;
    Some(WordBits {
        words: nbit,
        bits: map.get(from..from + len)?.to_vec(),
    })
}

/// The records after the count (a uintptr) of `FUNCDATA_StackObjects`, with their types' masks (at `rodata +
/// gcdataoff`).
fn objects<'b>(p: &[u8], rodata: u64, at: &impl Fn(u64) -> Option<&'b [u8]>) -> Vec<StackObject> {
    let n = u64_at(p, 0).unwrap_or(0).min(MAX_OBJECTS) as usize;
    (0..n)
        .map_while(|i| {
            let r = p.get(8 + OBJECT_RECORD * i..8 + OBJECT_RECORD * (i + 1))?;
            let word = |o: usize| u32_at(r, o).unwrap_or(0);
            let (offset, size, ptr_bytes) = (word(0) as i32, word(4) as i32, word(8) as i32);
            let pointers = (ptr_bytes >= 0).then_some(()).and_then(|()| {
                let words = u32::try_from(ptr_bytes / 8).ok().filter(|&w| w <= MAX_OBJECT_WORDS)?;
                let mask = at(rodata.checked_add(u64::from(word(12)))?)?;
                Some(WordBits {
                    words,
                    bits: mask.get(..words.div_ceil(8) as usize)?.to_vec(),
                })
            });
            Some(StackObject {
                offset: i64::from(offset),
                size: u64::try_from(size).ok()?,
                pointers,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `stackmap{n: 2, nbit: 10}` with bitmaps 0b11_0000_0101 and 0b00_0000_0010.
    fn stackmap() -> Vec<u8> {
        [2u32.to_le_bytes(), 10u32.to_le_bytes()]
            .concat()
            .into_iter()
            .chain([0b0000_0101, 0b11, 0b10, 0])
            .collect()
    }

    #[test]
    fn a_frame_reads_its_maps_at_its_index() {
        // gofunc at 0x1000: locals map at +0x10, args map at +0x40, objects at +0x80; rodata at 0x2000.
        let mut mem = vec![0u8; 0x3000];
        let put = |mem: &mut Vec<u8>, at: usize, b: &[u8]| mem[at..at + b.len()].copy_from_slice(b);
        put(&mut mem, 0x1010, &stackmap());
        put(&mut mem, 0x1040, &stackmap());
        // One stack object: 24 bytes at varp-32 whose second word is a pointer (mask at rodata+0x8).
        let record: Vec<u8> = [(-32i32) as u32, 24, 16, 8]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        put(&mut mem, 0x1080, &1u64.to_le_bytes());
        put(&mut mem, 0x1088, &record);
        put(&mut mem, 0x2008, &[0b10]);
        let at = |a: u64| mem.get(a as usize..);
        let refs = StackMapRefs {
            index: 1,
            args: 16,
            funcdata: [Some(0x40), Some(0x10), Some(0x80)],
        };
        let f = frame_pointers(&refs, 0x1000, 0x2000, at).unwrap();
        assert_eq!(
            f.locals,
            WordBits {
                words: 10,
                bits: vec![0b10, 0]
            }
        );
        assert_eq!(
            f.args,
            WordBits {
                words: 10,
                bits: vec![0b10, 0]
            }
        );
        assert_eq!(
            f.objects,
            [StackObject {
                offset: -32,
                size: 24,
                pointers: Some(WordBits {
                    words: 2,
                    bits: vec![0b10]
                })
            }]
        );
        // No locals map (assembly): nothing to say; no args: no args map read.
        assert_eq!(
            frame_pointers(
                &StackMapRefs {
                    funcdata: [Some(0x40), None, None],
                    ..refs
                },
                0x1000,
                0x2000,
                at
            ),
            None
        );
        let f = frame_pointers(
            &StackMapRefs {
                index: 0,
                args: 0,
                ..refs
            },
            0x1000,
            0x2000,
            at,
        )
        .unwrap();
        assert_eq!((f.locals.bits, f.args.words), (vec![0b101, 0b11], 0));
        assert_eq!(bitmap(&stackmap(), 2), None, "past the maps");
    }

    #[test]
    fn a_stack_object_mask_past_any_real_one_is_not_read() {
        // 1024 objects (the most read), each claiming a 256 MiB mask: a found fuzz input copied them all.
        let mut mem = vec![0u8; 0x1_0000 + 0x8000];
        mem[..8].copy_from_slice(&1024u64.to_le_bytes());
        let record: Vec<u8> = [(-32i32) as u32, 24, i32::MAX as u32, 0x1_0000]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        for i in 0..1024 {
            mem[8 + OBJECT_RECORD * i..8 + OBJECT_RECORD * (i + 1)].copy_from_slice(&record);
        }
        let at = |a: u64| mem.get(a as usize..);
        let read = objects(&mem, 0, &at);
        assert_eq!(read.len(), 1024);
        assert!(read.iter().all(|o| o.pointers.is_none()), "no mask read");
    }
}
