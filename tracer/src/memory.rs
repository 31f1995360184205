//! Reading the target's memory: the one interface every stage that looks inside the live process
//! (type names, the heap walk, finalizer evidence) goes through, so that tests can hand them a
//! synthetic address space instead.

use std::io;

/// The target's memory: the process itself, its executable's static data, or a synthetic image in tests.
pub trait Memory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()>;

    /// The little-endian word at `addr`, None if it cannot be read.
    fn word(&self, addr: u64) -> Option<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// A synthetic address space for tests: bytes at addresses, unwritten ones reading as zero (as a target's
/// zeroed memory does), and ranges that fail to read as unmapped memory does.
#[cfg(test)]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::ops::Range;

    use super::Memory;

    #[derive(Default)]
    pub(crate) struct FakeMemory {
        bytes: RefCell<HashMap<u64, u8>>,
        unmapped: RefCell<Vec<Range<u64>>>,
    }

    impl Memory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let end = addr
                .checked_add(buf.len() as u64)
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            if self.unmapped.borrow().iter().any(|r| r.start < end && addr < r.end) {
                return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
            }
            let m = self.bytes.borrow();
            for (i, b) in buf.iter_mut().enumerate() {
                *b = m.get(&(addr + i as u64)).copied().unwrap_or(0);
            }
            Ok(())
        }
    }

    impl FakeMemory {
        pub(crate) fn put(&self, addr: u64, bytes: &[u8]) {
            let mut m = self.bytes.borrow_mut();
            for (i, &b) in bytes.iter().enumerate() {
                m.insert(addr + i as u64, b);
            }
        }

        pub(crate) fn word(&self, addr: u64, v: u64) {
            self.put(addr, &v.to_le_bytes());
        }

        /// Reads touching `range` fail from now on.
        pub(crate) fn unmap(&self, range: Range<u64>) {
            self.unmapped.borrow_mut().push(range);
        }
    }
}
