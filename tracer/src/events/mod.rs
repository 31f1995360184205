//! Decoding ring-buffer records into events.

pub mod recording;

use tracer_common::{ContainerKind, CycleRecord, Record, RecordKind, SpanRecord, MAX_MARK_BYTES, MAX_STACK_DEPTH};

/// One decoded ring-buffer record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TraceEvent {
    Alloc(Event),
    /// A finalizer or cleanup event (`kind` says which): `ptr` the object, `size` the `*funcval`.
    Object(Event),
    /// GC cycle `cycle` reached mark termination (the target's own number).
    CycleEnd {
        cycle: u64,
        ktime_ns: u64,
    },
    SpanSwept(SpanSwept),
    /// A sampled object died: a sweep released its profile special.
    SampleFreed {
        ptr: u64,
        ktime_ns: u64,
    },
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

impl TraceEvent {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        match RecordKind::of(bytes) {
            Some(RecordKind::Alloc | RecordKind::Container | RecordKind::Sampled) => {
                Event::decode(bytes).map(TraceEvent::Alloc)
            }
            Some(RecordKind::SampleFreed) => Event::decode(bytes).map(|e| TraceEvent::SampleFreed {
                ptr: e.ptr,
                ktime_ns: e.ktime_ns,
            }),
            Some(
                RecordKind::FinalizerSet
                | RecordKind::FinalizerRemoved
                | RecordKind::FinalizerQueued
                | RecordKind::FinalizerStarted
                | RecordKind::CleanupSet
                | RecordKind::CleanupQueued
                | RecordKind::CleanupStarted,
            ) => Event::decode(bytes).map(TraceEvent::Object),
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
            None => Err(DecodeError::Kind(
                bytes.get(..4).map_or(0, |b| u32::from_ne_bytes(b.try_into().unwrap())),
            )),
        }
    }
}

/// A `repr(C)` record of plain integers from the front of `bytes`.
fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Size(bytes.len(), size_of::<T>()));
    }
    // SAFETY: the length is checked; callers only use plain-integer records, valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// An allocation or a slice/map construction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: RecordKind,
    /// For allocations: the constructor in flight on the goroutine; for constructors: their kind.
    pub container: ContainerKind,
    pub goid: u64,
    pub g: u64,
    pub ptr: u64,
    pub size: u64,
    pub type_ptr: u64,
    pub alloc_count: u64,
    pub ktime_ns: u64,
    /// The target's GC cycle counter when this happened (0 if unknown).
    pub gc_cycle: u64,
    /// Program counters, innermost first: the probed instruction, then each caller's return
    /// address (the immediate caller included, which frame-pointer unwinding alone misses).
    pub stack: Vec<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("unknown record kind {0}")]
    Kind(u32),
}

impl Event {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        Self::from_record(&read::<Record>(bytes)?)
    }

    pub fn from_record(r: &Record) -> Result<Self, DecodeError> {
        // Records of other layouts never decode as an Event.
        let kind = match RecordKind::of(&r.kind.to_ne_bytes()) {
            Some(RecordKind::CycleEnd | RecordKind::SpanSwept) | None => return Err(DecodeError::Kind(r.kind)),
            Some(k) => k,
        };
        let captured = &r.stack[..(r.stack_len as usize).min(MAX_STACK_DEPTH)];
        let mut stack = Vec::with_capacity(captured.len() + 1);
        if let Some((&ip, callers)) = captured.split_first() {
            stack.push(ip);
            if r.caller_pc != 0 && callers.first() != Some(&r.caller_pc) {
                stack.push(r.caller_pc);
            }
            stack.extend(callers.iter().copied().filter(|&pc| pc != 0));
        }
        Ok(Self {
            kind,
            container: ContainerKind::from_u32(r.container),
            goid: r.goid,
            g: r.g,
            ptr: r.ptr,
            size: r.size,
            type_ptr: r.type_ptr,
            alloc_count: r.alloc_count,
            ktime_ns: r.ktime_ns,
            gc_cycle: r.gc_cycle,
            stack,
        })
    }
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

    fn bytes(r: &Record) -> Vec<u8> {
        // SAFETY: viewing a repr(C) value as bytes.
        unsafe { std::slice::from_raw_parts((r as *const Record).cast::<u8>(), size_of::<Record>()) }.to_vec()
    }

    #[test]
    fn splices_the_immediate_caller() {
        let r = record(RecordKind::Alloc, ContainerKind::None, &[0x100, 0x300, 0x400], 0x200);
        let e = Event::decode(&bytes(&r)).unwrap();
        assert_eq!(e.stack, vec![0x100, 0x200, 0x300, 0x400]);
        assert_eq!(e.kind, RecordKind::Alloc);
        assert_eq!(e.goid, 7);
    }

    #[test]
    fn does_not_duplicate_a_caller_the_unwinder_found() {
        let r = record(RecordKind::Container, ContainerKind::Map, &[0x100, 0x200, 0x400], 0x200);
        let e = Event::decode(&bytes(&r)).unwrap();
        assert_eq!(e.stack, vec![0x100, 0x200, 0x400]);
        assert_eq!(e.container, ContainerKind::Map);
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let r = record(RecordKind::Alloc, ContainerKind::None, &[1], 0);
        let b = bytes(&r);
        assert_eq!(Event::decode(&b[..10]), Err(DecodeError::Size(10, size_of::<Record>())));
        let mut bad = r;
        bad.kind = 99;
        assert_eq!(Event::decode(&bytes(&bad)), Err(DecodeError::Kind(99)));
    }

    #[test]
    fn cycle_and_span_records() {
        let c = CycleRecord {
            kind: RecordKind::CycleEnd as u32,
            _pad: 0,
            cycle: 42,
            ktime_ns: 9,
        };
        // SAFETY: viewing a repr(C) value as bytes.
        let b =
            unsafe { std::slice::from_raw_parts((&c as *const CycleRecord).cast::<u8>(), size_of::<CycleRecord>()) };
        assert_eq!(
            TraceEvent::decode(b),
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
        // SAFETY: as above.
        let b = unsafe { std::slice::from_raw_parts((&s as *const SpanRecord).cast::<u8>(), size_of::<SpanRecord>()) };
        let TraceEvent::SpanSwept(span) = TraceEvent::decode(b).unwrap() else {
            panic!("not a span")
        };
        assert_eq!(
            (span.base, span.elemsize, span.nelems, span.marks),
            (0x1000, 512, 16, vec![0b101, 0x80])
        );
        s.marks_len = 9999;
        let b = unsafe { std::slice::from_raw_parts((&s as *const SpanRecord).cast::<u8>(), size_of::<SpanRecord>()) };
        let TraceEvent::SpanSwept(span) = TraceEvent::decode(b).unwrap() else {
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
        let e = Event::decode(&bytes(&r)).unwrap();
        assert_eq!(e.stack, vec![1, 2]);
    }
}
