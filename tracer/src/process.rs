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
use crate::gobin::FileIdentity;
use crate::memory::Memory;

impl Memory for Process {
    /// Reads target memory; fails for unmapped addresses rather than returning garbage.
    fn read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        self.mem.read_exact_at(buf, addr)
    }
}

/// A process maptrace attaches to, opened by PID, and from then on known by its descriptors alone: a PID can
/// be reused and a process can exec another binary, and neither may lead maptrace to read, probe or write a
/// program other than the one it inspected.
pub struct Process {
    pub pid: u32,
    /// What `/proc/PID/exe` points to, for messages (it may live in another mount namespace).
    pub exe_display: String,
    /// A path to the executable opened at [`Process::open`] (`/proc/self/fd/N`): the binary is inspected and the
    /// uprobes are attached through it, so the kernel resolves the inode maptrace inspected, whatever the
    /// process runs by then, in any mount namespace.
    pub exe_path: PathBuf,
    /// The executable's contents as opened.
    pub exe_identity: FileIdentity,
    /// Holds the inode `exe_path` names.
    _exe: File,
    /// `/proc/PID/mem`, read and write, opened once: the kernel binds it to the address space the process had
    /// then, so after an exec (or the PID's reuse) it reads and writes nothing rather than another program.
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
        let opened = |what: &str, e: io::Error| match e.kind() {
            io::ErrorKind::PermissionDenied => Failure::Privileges {
                missing: vec!["CAP_SYS_PTRACE"],
            },
            io::ErrorKind::NotFound => Failure::NoSuchProcess { pid },
            _ => Failure::Other(anyhow::anyhow!("open /proc/{pid}/{what}: {e}")),
        };
        let exe = File::open(&exe_path).map_err(|e| opened("exe", e))?;
        let exe_identity = FileIdentity::of(&exe).map_err(|e| opened("exe", e))?;
        let mem = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(proc_dir.join("mem"))
            .map_err(|e| opened("mem", e))?;
        // Both opened, then checked: the same process (its pidfd, taken first, still names a live one) running
        // the same executable (an exec between the two opens would pair one program's file with another's
        // memory).
        let process = Self {
            pid,
            exe_display,
            exe_path: PathBuf::from(format!("/proc/self/fd/{}", exe.as_raw_fd())),
            exe_identity,
            _exe: exe,
            mem,
            pidfd,
        };
        if process.has_exited() {
            return Err(Failure::NoSuchProcess { pid });
        }
        if !process.runs_what_was_opened() {
            return Err(Failure::Other(anyhow::anyhow!(
                "PID {pid} exec'd another program while maptrace opened it: try again"
            )));
        }
        Ok(process)
    }

    /// Whether the process still runs the executable opened at [`Process::open`] (false after an exec, or once
    /// it has gone).
    pub fn runs_what_was_opened(&self) -> bool {
        std::fs::metadata(format!("/proc/{}/exe", self.pid))
            .is_ok_and(|m| FileIdentity::from_metadata(&m) == self.exe_identity)
    }

    /// Writes target memory (sampled mode's `--sample-rate`, behind its explicit flag only), through the
    /// descriptor opened at attach: after an exec it fails instead of writing into the new program.
    pub fn write(&self, addr: u64, buf: &[u8]) -> io::Result<()> {
        if self.has_exited() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "the process has exited"));
        }
        if !self.runs_what_was_opened() {
            return Err(io::Error::other(
                "the process no longer runs the program maptrace attached to",
            ));
        }
        self.mem.write_all_at(buf, addr)
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

    /// Whether the process has exited (a zombie too): its pidfd polls readable.
    pub fn has_exited(&self) -> bool {
        let mut fd = libc::pollfd {
            fd: self.pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut fd, 1, 0) == 1 }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// A child that execs another program when told to: `sh` reading a line, then `exec sleep`. Returned once the
    /// shell runs (it said so): before, the child may still be a copy of this test, about to exec the shell.
    fn execing_child() -> std::process::Child {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "echo ready; read line; exec /bin/sleep 5"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready).unwrap();
        assert_eq!(&ready, b"ready\n");
        child
    }

    #[test]
    fn after_an_exec_the_process_is_neither_read_nor_written() {
        let mut child = execing_child();
        let process = match Process::open(child.id()) {
            Ok(p) => p,
            Err(Failure::Privileges { .. }) => {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!("skipped: reading another process's memory needs ptrace rights (root, or a parent under Yama's scope 1)");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        // An address the shell has mapped: its own executable's first page.
        let addr = process.load_bias(0).unwrap();
        let addr = if addr == 0 { 0x400000 } else { addr };
        let mut word = [0u8; 8];
        process.read(addr, &mut word).unwrap();
        assert!(process.runs_what_was_opened());
        child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        // Until the exec has replaced the shell.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process.runs_what_was_opened() {
            assert!(std::time::Instant::now() < deadline, "the shell did not exec");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!process.has_exited(), "the same process, another program");
        assert!(
            process.read(addr, &mut word).is_err(),
            "read through the old address space"
        );
        assert!(process.write(addr, &word).is_err(), "written into the new program");
        let _ = child.kill();
        let _ = child.wait();
    }
}
