//! An executable's bytes, mapped read-only instead of read into memory.
//!
//! Reading a whole file first cost the agent the file's size in memory for every target, before it even knew the
//! file was Go (a sparse 4 GiB executable took it to 3.9 GiB). A read-only mapping costs only the pages that are
//! touched, and those pages are the page cache's, shared with the target, which maps the same file.
//!
//! A mapping has one hazard a copy has not: if the file shrinks while mapped, touching a page past its new end
//! raises SIGBUS, which would end the whole agent. A running executable cannot be truncated (ETXTBSY), but once
//! its last process has exited a tenant may truncate it while a report is still being built. So a SIGBUS
//! handler, installed once, replaces such a page with a page of zeros and counts it: the readers, built for
//! hostile bytes anyway, then see zeros (an unreadable name, a table that does not parse), never a crash. Faults
//! outside these mappings go on to the handler that was there before.

use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Once;

use super::TargetError;

/// Go executables larger than this are refused (`too_large`) once their build info says they are Go: before,
/// only headers are read, so a large file that is not Go costs nothing and is simply not Go. Real Go programs are
/// far smaller: the largest one the tests attach to is a generated 65 MB binary, and Kubernetes' biggest with
/// DWARF are a few hundred MB. The readers make passes over whole segments (the pclntab's magic scan), so the cap
/// bounds their time too.
pub const MAX_FILE_BYTES: u64 = 1 << 30;

/// Mappings registered with the SIGBUS handler at once: one per distinct executable in use. A node agent maps
/// each executable once however many processes run it, so this is the number of distinct Go binaries
/// traced at the same time.
const SLOTS: usize = 4096;

/// A registered mapping: `[start, start + len)`, or `len == 0` for a free slot, and the pages replaced in it.
struct Slot {
    start: AtomicUsize,
    len: AtomicUsize,
    zeroed_pages: AtomicU64,
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below, each element its own
const FREE: Slot = Slot {
    start: AtomicUsize::new(0),
    len: AtomicUsize::new(0),
    zeroed_pages: AtomicU64::new(0),
};

static REGISTERED: [Slot; SLOTS] = [FREE; SLOTS];

/// The SIGBUS disposition found when ours was installed, for faults that are not ours.
static mut PREVIOUS: Option<libc::sigaction> = None;
static INSTALL: Once = Once::new();

/// The bytes of an executable file: mapped when opened from a file, owned when handed over in memory (tests,
/// fuzzing).
pub(crate) enum FileBytes {
    Mapped { map: memmap2::Mmap, slot: usize },
    Owned(Vec<u8>),
}

/// What identifies an executable's contents: the same device, inode, size and modification time mean the same
/// bytes, so one inspection serves every process that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileIdentity {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
}

impl FileIdentity {
    pub fn of(file: &File) -> std::io::Result<FileIdentity> {
        Ok(FileIdentity::from_metadata(&file.metadata()?))
    }

    pub fn from_metadata(m: &std::fs::Metadata) -> FileIdentity {
        FileIdentity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }
}

impl FileBytes {
    /// Maps `file` (opened from `path`, `size` bytes long) read-only: address space only, pages are read as
    /// touched.
    pub fn map(path: &Path, file: &File, size: u64) -> Result<FileBytes, TargetError> {
        let size = usize::try_from(size).map_err(|_| TargetError::TooLarge {
            what: format!("the file is {size} bytes"),
        })?;
        if size == 0 {
            return Ok(FileBytes::Owned(Vec::new()));
        }
        install_handler();
        // SAFETY: the mapping is read-only and private; the file changing under it is the hazard the SIGBUS
        // handler covers (a shrunk file reads as zeros past its end, which every reader tolerates).
        let map = unsafe { memmap2::MmapOptions::new().len(size).map(file) }
            .map_err(|e| TargetError::Io(path.to_path_buf(), e))?;
        let slot = register(map.as_ptr() as usize, map.len()).ok_or_else(|| TargetError::TooLarge {
            what: format!("more than {SLOTS} executables are mapped at once"),
        })?;
        Ok(FileBytes::Mapped { map, slot })
    }

    /// Pages of this file that vanished while mapped (the file was truncated) and now read as zeros.
    pub fn zeroed_pages(&self) -> u64 {
        match self {
            FileBytes::Mapped { slot, .. } => REGISTERED[*slot].zeroed_pages.load(Ordering::Relaxed),
            FileBytes::Owned(_) => 0,
        }
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped { map, .. } => map,
            FileBytes::Owned(v) => v,
        }
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileBytes::Mapped { slot, .. } = self {
            // Unregistered before the unmapping (the field is dropped after this): a fault in between would be in
            // a range the handler no longer claims, which it cannot be, as nothing reads a mapping being dropped.
            REGISTERED[*slot].len.store(0, Ordering::Release);
        }
    }
}

/// Claims a free slot for `[start, start + len)`.
fn register(start: usize, len: usize) -> Option<usize> {
    REGISTERED.iter().position(|s| {
        s.len.load(Ordering::Acquire) == 0 && {
            // A slot is claimed by swapping its length in; start and the counter are set before the length, so the
            // handler never sees a half-written range.
            s.start.store(start, Ordering::Relaxed);
            s.zeroed_pages.store(0, Ordering::Relaxed);
            s.len
                .compare_exchange(0, len, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        }
    })
}

fn install_handler() {
    INSTALL.call_once(|| {
        // SAFETY: sigaction with a zeroed struct and a handler of the SA_SIGINFO signature; PREVIOUS is written
        // once, here, before the handler that reads it can run.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut previous: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(libc::SIGBUS, &action, &mut previous) == 0 {
                PREVIOUS = Some(previous);
            }
        }
    });
}

/// Runs on the faulting thread: only atomics and mmap (a plain system call) are used.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let addr = unsafe { (*info).si_addr() } as usize;
    let page = page_size();
    for slot in &REGISTERED {
        let len = slot.len.load(Ordering::Acquire);
        let start = slot.start.load(Ordering::Relaxed);
        if len != 0 && addr >= start && addr - start < len {
            let at = addr & !(page - 1);
            // SAFETY: the page lies inside one of our read-only file mappings; a private zero page replaces it.
            let replaced = unsafe {
                libc::mmap(
                    at as *mut libc::c_void,
                    page,
                    libc::PROT_READ,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if replaced != libc::MAP_FAILED {
                slot.zeroed_pages.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
    // Not ours: what would have happened without us.
    // SAFETY: PREVIOUS was set before this handler was installed and is never written again.
    let previous = unsafe { *std::ptr::addr_of!(PREVIOUS) };
    match previous {
        Some(p) if p.sa_sigaction != libc::SIG_DFL && p.sa_sigaction != libc::SIG_IGN => {
            // SAFETY: calling the earlier handler with the arguments the kernel gave us, by its own signature.
            unsafe {
                if p.sa_flags & libc::SA_SIGINFO != 0 {
                    let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                        std::mem::transmute(p.sa_sigaction);
                    f(sig, info, context);
                } else {
                    let f: extern "C" fn(libc::c_int) = std::mem::transmute(p.sa_sigaction);
                    f(sig);
                }
            }
        }
        // The default action: returning re-runs the access, which faults again and now terminates.
        _ => unsafe {
            libc::signal(libc::SIGBUS, libc::SIG_DFL);
        },
    }
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let p = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
            PAGE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_file_truncated_while_mapped_reads_as_zeros() {
        let path = std::env::temp_dir().join(format!("maptrace-mapped-{}", std::process::id()));
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![0xAB; 64 * 1024]).unwrap();
        let file = File::open(&path).unwrap();
        let bytes = FileBytes::map(&path, &file, 64 * 1024).unwrap();
        assert_eq!(bytes[100], 0xAB);
        f.set_len(0).unwrap();
        // Both a page touched before the truncation and one never touched are gone from the file now.
        assert_eq!((bytes[100], bytes[40_000]), (0, 0));
        assert_eq!(bytes.zeroed_pages(), 2);
        drop(bytes);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn slots_are_freed_when_a_mapping_is_dropped() {
        let path = Path::new("/proc/self/exe");
        let file = File::open(path).unwrap();
        let size = file.metadata().unwrap().len();
        // More mappings, one after another, than there are slots: each must give its slot back.
        for _ in 0..SLOTS + 8 {
            assert!(matches!(
                FileBytes::map(path, &file, size),
                Ok(FileBytes::Mapped { .. })
            ));
        }
    }
}
