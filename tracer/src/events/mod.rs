//! Decoding ring-buffer records into typed events: one variant per record kind, each field named
//! for what it holds for that kind (the wire [`Record`] reuses `ptr`, `size` and `type_ptr`).

pub mod recording;

use tracer_common::{ContainerKind, CycleRecord, Record, RecordKind, SpanRecord, MAX_MARK_BYTES, MAX_STACK_DEPTH};

/// One decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    /// Full mode: one heap block returned by the `mallocgc` family.
    Alloc(Allocation),
    /// Full mode: a slice or map constructor returned.
    Constructor(Constructor),
    /// Sampled mode: the runtime's allocation sampler picked an allocation.
    Sampled(Sample),
    /// A finalizer or cleanup was registered, removed, queued or started.
    Finalization(Finalization),
    /// GC cycle `cycle` reached mark termination (the target's own number).
    CycleEnd {
        cycle: u64,
        ktime_ns: u64,
    },
    SpanSwept(SpanSwept),
    /// A sampled object died: a sweep released its profile special.
    SampleFreed {
        object: u64,
        ktime_ns: u64,
    },
}

/// Who made a record, when, and from where: what every record but the GC's own carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub goid: u64,
    /// The goroutine's `g` pointer (to read its state later, e.g. the finalizer goroutine's).
    pub g: u64,
    pub ktime_ns: u64,
    /// The target's GC cycle counter when this happened (0 if unknown).
    pub gc_cycle: u64,
    /// Program counters, innermost first: the probed instruction, then each caller's return
    /// address (the immediate caller included, which frame-pointer unwinding alone misses).
    pub stack: Vec<u64>,
}

/// One heap block from the `mallocgc` family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    pub origin: Origin,
    pub address: u64,
    /// Bytes requested.
    pub size: u64,
    /// The allocated `*abi.Type`, 0 for untyped memory.
    pub type_ptr: u64,
    /// The slice/map constructor in flight on the goroutine (the block is its storage), if any.
    pub constructor: ContainerKind,
}

/// A slice or map constructor (`makeslice`, `growslice`, `makemap`, …) that returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constructor {
    pub origin: Origin,
    /// What it makes.
    pub kind: ContainerKind,
    /// Its result: a slice's array or a map's header.
    pub result: u64,
    /// Heap blocks it allocated, and their bytes in all.
    pub blocks: u64,
    pub bytes: u64,
    /// The element type (slices) or map type, 0 when the runtime passes none.
    pub type_ptr: u64,
}

/// An allocation the runtime's sampler picked (`mProf_Malloc`); the kernel sends no type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    pub origin: Origin,
    pub address: u64,
    pub size: u64,
    /// Sampled allocations it stands for (more than one when the kernel thinned the samples).
    pub samples: u64,
}

/// A finalizer or cleanup event, and the goroutine it happened on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finalization {
    pub origin: Origin,
    pub step: Step,
}

/// What happened to a finalizer or cleanup. `funcval` is the function's `*funcval`; a cleanup's
/// `handle` is the word that names its registration when it is queued and run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// `SetFinalizer`; `ptr_type` is the `*T` type it was called with.
    FinalizerSet { object: u64, funcval: u64, ptr_type: u64 },
    /// `SetFinalizer(x, nil)`.
    FinalizerRemoved { object: u64 },
    /// A sweep found the object unreachable and queued its finalizer (object 0: Go 1.24 queueing
    /// a cleanup through the same function).
    FinalizerQueued { object: u64, funcval: u64 },
    /// The finalizer goroutine calls the finalizer.
    FinalizerStarted { object: u64, funcval: u64 },
    /// `AddCleanup`; `funcval` is 0 when the runtime keeps it inside the handle only.
    CleanupSet { object: u64, handle: u64, funcval: u64 },
    /// A sweep freed the object's cleanup special and queued the cleanup.
    CleanupQueued { object: u64, handle: u64 },
    /// A cleanup is called; only its handle is at hand.
    CleanupStarted { handle: u64 },
}

impl Step {
    /// The step a record of `kind` describes, if `kind` is a finalizer or cleanup event.
    fn of(kind: RecordKind, r: &Record) -> Option<Self> {
        let object = r.ptr;
        Some(match kind {
            RecordKind::FinalizerSet => Step::FinalizerSet {
                object,
                funcval: r.size,
                ptr_type: r.type_ptr,
            },
            RecordKind::FinalizerRemoved => Step::FinalizerRemoved { object },
            RecordKind::FinalizerQueued => Step::FinalizerQueued {
                object,
                funcval: r.size,
            },
            RecordKind::FinalizerStarted => Step::FinalizerStarted {
                object,
                funcval: r.size,
            },
            RecordKind::CleanupSet => Step::CleanupSet {
                object,
                handle: r.size,
                funcval: r.type_ptr,
            },
            RecordKind::CleanupQueued => Step::CleanupQueued { object, handle: r.size },
            RecordKind::CleanupStarted => Step::CleanupStarted { handle: r.ptr },
            _ => return None,
        })
    }

    /// The object the step is about, when the record names one.
    pub fn object(&self) -> Option<u64> {
        match *self {
            Step::FinalizerSet { object, .. }
            | Step::FinalizerRemoved { object }
            | Step::FinalizerQueued { object, .. }
            | Step::FinalizerStarted { object, .. }
            | Step::CleanupSet { object, .. }
            | Step::CleanupQueued { object, .. } => Some(object),
            Step::CleanupStarted { .. } => None,
        }
    }
}

/// A span about to be swept, with the mark bits its objects got from the last cycle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanSwept {
    pub base: u64,
    pub npages: u64,
    pub elemsize: u64,
    pub nelems: u64,
    pub ktime_ns: u64,
    /// Bit i set: object i survived; empty if the kernel could not read them.
    pub marks: Vec<u8>,
}

/// A record that counts at an allocation site: a block, a constructor's value or a sample.
#[derive(Clone, Copy, Debug)]
pub enum Made<'a> {
    Allocation(&'a Allocation),
    Constructor(&'a Constructor),
    Sample(&'a Sample),
}

impl<'a> Made<'a> {
    pub fn origin(&self) -> &'a Origin {
        match self {
            Made::Allocation(a) => &a.origin,
            Made::Constructor(c) => &c.origin,
            Made::Sample(s) => &s.origin,
        }
    }

    /// The block's address, or the constructor's result.
    pub fn address(&self) -> u64 {
        match self {
            Made::Allocation(a) => a.address,
            Made::Constructor(c) => c.result,
            Made::Sample(s) => s.address,
        }
    }

    /// Bytes requested, or allocated in all by a constructor.
    pub fn bytes(&self) -> u64 {
        match self {
            Made::Allocation(a) => a.size,
            Made::Constructor(c) => c.bytes,
            Made::Sample(s) => s.size,
        }
    }

    /// The allocated type, or a constructor's element or map type; 0 if unknown.
    pub fn type_ptr(&self) -> u64 {
        match self {
            Made::Allocation(a) => a.type_ptr,
            Made::Constructor(c) => c.type_ptr,
            Made::Sample(_) => 0,
        }
    }

    /// The slice or map this belongs to: a block's enclosing constructor, a constructor's own kind.
    pub fn container(&self) -> ContainerKind {
        match self {
            Made::Allocation(a) => a.constructor,
            Made::Constructor(c) => c.kind,
            Made::Sample(_) => ContainerKind::None,
        }
    }
}

impl TraceEvent {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match RecordKind::of(bytes) {
            Some(RecordKind::CycleEnd) => {
                let r: CycleRecord = read(bytes)?;
                Ok(TraceEvent::CycleEnd {
                    cycle: r.cycle,
                    ktime_ns: r.ktime_ns,
                })
            }
            Some(RecordKind::SpanSwept) => {
                let r: SpanRecord = read(bytes)?;
                let len = (r.marks_len as usize).min(MAX_MARK_BYTES);
                Ok(TraceEvent::SpanSwept(SpanSwept {
                    base: r.base,
                    npages: r.npages,
                    elemsize: r.elemsize,
                    nelems: r.nelems,
                    ktime_ns: r.ktime_ns,
                    marks: r.marks[..len].to_vec(),
                }))
            }
            Some(_) => Self::from_record(&read::<Record>(bytes)?),
            None => Err(DecodeError::Kind(
                bytes.get(..4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap())),
            )),
        }
    }

    /// The event of a [`Record`] (every kind but the GC's own, which have layouts of their own).
    pub fn from_record(r: &Record) -> Result<Self, DecodeError> {
        let Some(kind) = RecordKind::of(&r.kind.to_ne_bytes()) else {
            return Err(DecodeError::Kind(r.kind));
        };
        let origin = Origin::of(r);
        Ok(match kind {
            RecordKind::Alloc => TraceEvent::Alloc(Allocation {
                origin,
                address: r.ptr,
                size: r.size,
                type_ptr: r.type_ptr,
                constructor: ContainerKind::from_u32(r.container),
            }),
            RecordKind::Container => TraceEvent::Constructor(Constructor {
                origin,
                kind: ContainerKind::from_u32(r.container),
                result: r.ptr,
                blocks: r.alloc_count,
                bytes: r.size,
                type_ptr: r.type_ptr,
            }),
            RecordKind::Sampled => TraceEvent::Sampled(Sample {
                origin,
                address: r.ptr,
                size: r.size,
                samples: r.alloc_count,
            }),
            RecordKind::SampleFreed => TraceEvent::SampleFreed {
                object: r.ptr,
                ktime_ns: r.ktime_ns,
            },
            // The remaining kinds are finalizer and cleanup events, or not a `Record` at all.
            _ => match Step::of(kind, r) {
                Some(step) => TraceEvent::Finalization(Finalization { origin, step }),
                None => return Err(DecodeError::Kind(r.kind)),
            },
        })
    }

    /// The record as something counted at an allocation site, if it is one.
    pub fn made(&self) -> Option<Made<'_>> {
        match self {
            TraceEvent::Alloc(a) => Some(Made::Allocation(a)),
            TraceEvent::Constructor(c) => Some(Made::Constructor(c)),
            TraceEvent::Sampled(s) => Some(Made::Sample(s)),
            _ => None,
        }
    }
}

impl Origin {
    fn of(r: &Record) -> Self {
        let captured = &r.stack[..(r.stack_len as usize).min(MAX_STACK_DEPTH)];
        let mut stack = Vec::with_capacity(captured.len() + 1);
        if let Some((&ip, callers)) = captured.split_first() {
            stack.push(ip);
            if r.caller_pc != 0 && callers.first() != Some(&r.caller_pc) {
                stack.push(r.caller_pc);
            }
            stack.extend(callers.iter().copied().filter(|&pc| pc != 0));
        }
        Self {
            goid: r.goid,
            g: r.g,
            ktime_ns: r.ktime_ns,
            gc_cycle: r.gc_cycle,
            stack,
        }
    }
}

/// Types whose every bit pattern is a valid value, so they can be read from ring-buffer bytes.
///
/// # Safety
/// Only for `repr(C)` structs of plain integers (and arrays of them), with no padding the
/// reader could mistake for data and no references, enums or `bool`s.
pub unsafe trait WireRecord: Copy {}

// SAFETY: the three ring-buffer layouts of tracer-common: `repr(C)` integers and integer arrays.
unsafe impl WireRecord for Record {}
unsafe impl WireRecord for CycleRecord {}
unsafe impl WireRecord for SpanRecord {}

/// A wire record from the front of `bytes`.
fn read<T: WireRecord>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Size(bytes.len(), size_of::<T>()));
    }
    // SAFETY: the length is checked and `WireRecord` promises any bits are a valid `T`.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(kind: RecordKind, container: ContainerKind, stack: &[u64], caller: u64) -> Record {
        let mut r = Record {
            kind: kind as u32,
            container: container as u32,
            goid: 7,
            g: 0xc000001000,
            ptr: 0xc000010000,
            size: 48,
            type_ptr: 0x4a0000,
            alloc_count: 1,
            ktime_ns: 1,
            gc_cycle: 3,
            caller_pc: caller,
            stack_len: stack.len() as u32,
            _pad: 0,
            stack: [0; MAX_STACK_DEPTH],
        };
        r.stack[..stack.len()].copy_from_slice(stack);
        r
    }

    fn bytes<T: WireRecord>(r: &T) -> Vec<u8> {
        // SAFETY: viewing a plain-integer repr(C) value as its bytes.
        unsafe { std::slice::from_raw_parts((r as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    fn decode(r: &Record) -> TraceEvent {
        TraceEvent::decode(&bytes(r)).unwrap()
    }

    /// The decoded step of a finalizer or cleanup record with `ptr`, `size`, `type_ptr` set.
    fn step(kind: RecordKind, ptr: u64, size: u64, type_ptr: u64) -> Step {
        let mut r = record(kind, ContainerKind::None, &[0x100], 0);
        (r.ptr, r.size, r.type_ptr) = (ptr, size, type_ptr);
        let TraceEvent::Finalization(f) = decode(&r) else {
            panic!("{kind:?} is not a finalization")
        };
        assert_eq!((f.origin.goid, f.origin.g, f.origin.gc_cycle), (7, 0xc000001000, 3));
        f.step
    }

    #[test]
    fn splices_the_immediate_caller() {
        let r = record(RecordKind::Alloc, ContainerKind::None, &[0x100, 0x300, 0x400], 0x200);
        let TraceEvent::Alloc(a) = decode(&r) else {
            panic!("not an allocation")
        };
        assert_eq!(a.origin.stack, vec![0x100, 0x200, 0x300, 0x400]);
        assert_eq!(a.origin.goid, 7);
    }

    #[test]
    fn does_not_duplicate_a_caller_the_unwinder_found() {
        let r = record(RecordKind::Container, ContainerKind::Map, &[0x100, 0x200, 0x400], 0x200);
        let TraceEvent::Constructor(c) = decode(&r) else {
            panic!("not a constructor")
        };
        assert_eq!(c.origin.stack, vec![0x100, 0x200, 0x400]);
        assert_eq!(c.kind, ContainerKind::Map);
    }

    #[test]
    fn allocations_constructors_and_samples_name_their_fields() {
        let mut r = record(RecordKind::Alloc, ContainerKind::Slice, &[0x100], 0);
        (r.ptr, r.size, r.type_ptr, r.alloc_count, r.ktime_ns) = (0xc0, 64, 0x4b, 9, 5);
        let a = decode(&r);
        let want = Allocation {
            origin: Origin {
                goid: 7,
                g: 0xc000001000,
                ktime_ns: 5,
                gc_cycle: 3,
                stack: vec![0x100],
            },
            address: 0xc0,
            size: 64,
            type_ptr: 0x4b,
            constructor: ContainerKind::Slice,
        };
        assert_eq!(a, TraceEvent::Alloc(want.clone()));
        let m = a.made().unwrap();
        assert_eq!(
            (m.address(), m.bytes(), m.type_ptr(), m.container()),
            (0xc0, 64, 0x4b, ContainerKind::Slice)
        );

        r.kind = RecordKind::Container as u32;
        let TraceEvent::Constructor(c) = decode(&r) else {
            panic!("not a constructor")
        };
        assert_eq!(
            (c.kind, c.result, c.blocks, c.bytes, c.type_ptr),
            (ContainerKind::Slice, 0xc0, 9, 64, 0x4b)
        );
        assert_eq!(c.origin, want.origin);

        r.kind = RecordKind::Sampled as u32;
        let TraceEvent::Sampled(s) = decode(&r) else {
            panic!("not a sample")
        };
        assert_eq!((s.address, s.size, s.samples), (0xc0, 64, 9));
        let m = Made::Sample(&s);
        assert_eq!(
            (m.type_ptr(), m.container()),
            (0, ContainerKind::None),
            "samples carry no type"
        );

        r.kind = RecordKind::SampleFreed as u32;
        assert_eq!(
            decode(&r),
            TraceEvent::SampleFreed {
                object: 0xc0,
                ktime_ns: 5
            }
        );
        assert!(decode(&r).made().is_none());
    }

    #[test]
    fn finalizer_records_name_object_function_and_type() {
        assert_eq!(
            step(RecordKind::FinalizerSet, 0xa0, 0xf0, 0x70),
            Step::FinalizerSet {
                object: 0xa0,
                funcval: 0xf0,
                ptr_type: 0x70
            }
        );
        assert_eq!(
            step(RecordKind::FinalizerRemoved, 0xa0, 0xf0, 0x70),
            Step::FinalizerRemoved { object: 0xa0 }
        );
        assert_eq!(
            step(RecordKind::FinalizerQueued, 0xa0, 0xf0, 0x70),
            Step::FinalizerQueued {
                object: 0xa0,
                funcval: 0xf0
            }
        );
        assert_eq!(
            step(RecordKind::FinalizerStarted, 0xa0, 0xf0, 0x70),
            Step::FinalizerStarted {
                object: 0xa0,
                funcval: 0xf0
            }
        );
    }

    #[test]
    fn cleanup_records_name_object_handle_and_function() {
        let set = step(RecordKind::CleanupSet, 0xa0, 0xc1, 0xf0);
        assert_eq!(
            set,
            Step::CleanupSet {
                object: 0xa0,
                handle: 0xc1,
                funcval: 0xf0
            }
        );
        assert_eq!(set.object(), Some(0xa0));
        assert_eq!(
            step(RecordKind::CleanupQueued, 0xa0, 0xc1, 0xf0),
            Step::CleanupQueued {
                object: 0xa0,
                handle: 0xc1
            }
        );
        let started = step(RecordKind::CleanupStarted, 0xc1, 0, 0);
        assert_eq!(started, Step::CleanupStarted { handle: 0xc1 });
        assert_eq!(
            started.object(),
            None,
            "a started cleanup's record names only its handle"
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let r = record(RecordKind::Alloc, ContainerKind::None, &[1], 0);
        let b = bytes(&r);
        assert_eq!(
            TraceEvent::decode(&b[..10]),
            Err(DecodeError::Size(10, size_of::<Record>()))
        );
        let mut bad = r;
        bad.kind = 99;
        assert_eq!(TraceEvent::decode(&bytes(&bad)), Err(DecodeError::Kind(99)));
        bad.kind = RecordKind::CycleEnd as u32;
        assert_eq!(
            TraceEvent::from_record(&bad),
            Err(DecodeError::Kind(3)),
            "not a Record layout"
        );
    }

    #[test]
    fn cycle_and_span_records() {
        let c = CycleRecord {
            kind: RecordKind::CycleEnd as u32,
            _pad: 0,
            cycle: 42,
            ktime_ns: 9,
        };
        assert_eq!(
            TraceEvent::decode(&bytes(&c)),
            Ok(TraceEvent::CycleEnd { cycle: 42, ktime_ns: 9 })
        );

        let mut s = SpanRecord {
            kind: RecordKind::SpanSwept as u32,
            marks_len: 2,
            base: 0x1000,
            npages: 1,
            elemsize: 512,
            nelems: 16,
            ktime_ns: 1,
            marks: [0; MAX_MARK_BYTES],
        };
        s.marks[0] = 0b101;
        s.marks[1] = 0x80;
        let TraceEvent::SpanSwept(span) = TraceEvent::decode(&bytes(&s)).unwrap() else {
            panic!("not a span")
        };
        assert_eq!(
            (span.base, span.elemsize, span.nelems, span.marks),
            (0x1000, 512, 16, vec![0b101, 0x80])
        );
        s.marks_len = 9999;
        let b = bytes(&s);
        let TraceEvent::SpanSwept(span) = TraceEvent::decode(&b).unwrap() else {
            panic!("not a span")
        };
        assert_eq!(span.marks.len(), MAX_MARK_BYTES, "a bogus length is clamped");
        assert!(TraceEvent::decode(&b[..8]).is_err());
        assert_eq!(TraceEvent::decode(&[99, 0, 0, 0, 0]), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn clamps_a_bogus_stack_length() {
        let mut r = record(RecordKind::Alloc, ContainerKind::None, &[1, 2], 0);
        r.stack_len = 1000;
        let TraceEvent::Alloc(a) = decode(&r) else {
            panic!("not an allocation")
        };
        assert_eq!(a.origin.stack, vec![1, 2]);
    }
}
