//! The live target process: existence, its executable, its memory, and whether it is still there.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::PathBuf,
};

use crate::error::Failure;
use crate::memory::Memory;

impl Memory for Process {
    /// Reads target memory; fails for unmapped addresses rather than returning garbage.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_exact_at(buf, addr)
    }
}

/// A process maptrace attaches to, opened by PID.
pub struct Process {
    pub pid: u32,
    /// What `/proc/PID/exe` points to, for messages (it may live in another mount namespace).
    pub exe_display: String,
    /// A path that opens the process's own binary even across mount namespaces; uprobes are
    /// attached through it so the kernel resolves the same inode the process runs.
    pub exe_path: PathBuf,
    mem: File,
    /// Becomes readable when the process exits (pidfd), so exit is noticed without polling.
    pidfd: OwnedFd,
}

impl Process {
    pub fn open(pid: u32) -> Result<Self, Failure> {
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        if !exists(pid) {
            return Err(Failure::NoSuchProcess { pid });
        }
        // SAFETY: plain syscall; the result is checked before wrapping.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
        if fd < 0 {
            return Err(match io::Error::last_os_error().raw_os_error() {
                Some(libc::ESRCH) => Failure::NoSuchProcess { pid },
                _ => Failure::Other(anyhow::anyhow!("pidfd_open({pid}): {}", io::Error::last_os_error())),
            });
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let exe_path = proc_dir.join("exe");
        let link = std::fs::read_link(&exe_path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Failure::NoSuchProcess { pid },
            io::ErrorKind::PermissionDenied => Failure::Privileges {
                missing: vec!["CAP_SYS_PTRACE"],
            },
            // Kernel threads have no executable.
            _ => Failure::NotGo {
                pid,
                exe: "?".into(),
                why: format!("no executable: {e}"),
            },
        })?;
        let exe_display = link.to_string_lossy().into_owned();
        if exe_display.ends_with(" (deleted)") {
            return Err(Failure::BinaryGone { pid, exe: exe_display });
        }
        let mem = File::open(proc_dir.join("mem")).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Failure::Privileges {
                missing: vec!["CAP_SYS_PTRACE"],
            },
            io::ErrorKind::NotFound => Failure::NoSuchProcess { pid },
            _ => Failure::Other(anyhow::anyhow!("open /proc/{pid}/mem: {e}")),
        })?;
        Ok(Self {
            pid,
            exe_display,
            exe_path,
            mem,
            pidfd,
        })
    }

    /// Writes target memory (sampled mode's `--sample-rate`, behind its explicit flag only).
    pub fn write(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        let mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))?;
        mem.write_all_at(buf, addr)
    }

    pub fn read_u64(&self, addr: u64) -> io::Result<u64> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Where the executable's first mapping starts, minus its link-time address: 0 for the usual
    /// non-PIE Go binary, the ASLR slide for PIE builds.
    pub fn load_bias(&self, link_vaddr: u64) -> io::Result<u64> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid))?;
        let exe = self.exe_display.as_str();
        for line in maps.lines() {
            let mut cols = line.split_whitespace();
            let (Some(range), Some(_perms), Some(offset)) = (cols.next(), cols.next(), cols.next()) else {
                continue;
            };
            let path = cols.nth(2).unwrap_or("");
            if path != exe || u64::from_str_radix(offset, 16).ok() != Some(0) {
                continue;
            }
            let start = range
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .unwrap_or(0);
            return Ok(start.saturating_sub(link_vaddr & !0xfff));
        }
        Ok(0)
    }

    /// A descriptor that polls readable once the process has exited.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    pub fn is_alive(&self) -> bool {
        // SAFETY: signal 0 only checks existence.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                0,
                std::ptr::null::<u8>(),
                0,
            ) == 0
        }
    }
}

pub fn exists(pid: u32) -> bool {
    pid != 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The Linux capabilities maptrace needs that this process does not have (empty when root).
pub fn missing_capabilities() -> Vec<&'static str> {
    const NEEDED: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (19, "CAP_SYS_PTRACE")];
    const CAP_SYS_ADMIN: u32 = 21;
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    NEEDED
        .iter()
        // CAP_SYS_ADMIN stands in for BPF and PERFMON on kernels that predate them.
        .filter(|(bit, _)| !(has(*bit) || (*bit != 19 && has(CAP_SYS_ADMIN))))
        .map(|(_, name)| *name)
        .collect()
}
