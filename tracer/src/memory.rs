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
