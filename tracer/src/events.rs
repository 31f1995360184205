//! Decoding ring-buffer records into events.

use tracer_common::{ContainerKind, Record, RecordKind, MAX_STACK_DEPTH};

/// One decoded record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: RecordKind,
    /// For allocations: the constructor in flight on the goroutine; for constructors: their kind.
    pub container: ContainerKind,
    pub goid: u64,
    pub ptr: u64,
    pub size: u64,
    pub type_ptr: u64,
    pub alloc_count: u64,
    pub ktime_ns: u64,
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
        if bytes.len() < size_of::<Record>() {
            return Err(DecodeError::Size(bytes.len(), size_of::<Record>()));
        }
        // SAFETY: the length is checked; Record is plain integers, valid for any bit pattern.
        let r: Record = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        Self::from_record(&r)
    }

    pub fn from_record(r: &Record) -> Result<Self, DecodeError> {
        let kind = match r.kind {
            1 => RecordKind::Alloc,
            2 => RecordKind::Container,
            k => return Err(DecodeError::Kind(k)),
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
            ptr: r.ptr,
            size: r.size,
            type_ptr: r.type_ptr,
            alloc_count: r.alloc_count,
            ktime_ns: r.ktime_ns,
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
            ptr: 0xc000010000,
            size: 48,
            type_ptr: 0x4a0000,
            alloc_count: 1,
            ktime_ns: 1,
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
        bad.kind = 9;
        assert_eq!(Event::decode(&bytes(&bad)), Err(DecodeError::Kind(9)));
    }

    #[test]
    fn clamps_a_bogus_stack_length() {
        let mut r = record(RecordKind::Alloc, ContainerKind::None, &[1, 2], 0);
        r.stack_len = 1000;
        let e = Event::decode(&bytes(&r)).unwrap();
        assert_eq!(e.stack, vec![1, 2]);
    }
}
