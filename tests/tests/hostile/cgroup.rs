//! A cgroup v1 memory cgroup of our own, as a container runtime sets one up: a limit, processes that
//! join it before they exec, and the kernel's own account of their peak and of OOM kills.

use std::{
    fs::{self, File, OpenOptions},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// Where these machines mount the cgroup v1 memory controller.
pub const ROOT: &str = "/sys/fs/cgroup/memory";

pub struct MemoryCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, opened before any fork: a child joins by writing its PID to it.
    procs: File,
}

impl MemoryCgroup {
    /// `ROOT/<name>` with `memory.limit_in_bytes` = `limit`.
    pub fn create(name: &str, limit: u64) -> Self {
        let dir = Path::new(ROOT).join(name);
        // A cgroup left by a killed earlier run of ours (same name: same PID) is empty: reuse it.
        if !dir.exists() {
            fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        }
        let cgroup = MemoryCgroup {
            procs: OpenOptions::new()
                .write(true)
                .open(dir.join("cgroup.procs"))
                .unwrap_or_else(|e| panic!("{}/cgroup.procs: {e}", dir.display())),
            dir,
        };
        cgroup.write("memory.limit_in_bytes", limit);
        assert_eq!(cgroup.read("memory.limit_in_bytes"), limit, "the kernel took the limit");
        cgroup
    }

    /// Makes the command's process join this cgroup between fork and exec, so that all it ever
    /// allocates is charged here.
    pub fn join_on_exec(&self, cmd: &mut Command) {
        let fd = self.procs.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: getpid and write, on a stack
        // buffer; the descriptor stays open in the parent for as long as `self` lives.
        unsafe {
            cmd.pre_exec(move || {
                let mut digits = [0u8; 20];
                let mut at = digits.len();
                let mut pid = libc::getpid() as u32;
                loop {
                    at -= 1;
                    digits[at] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    if pid == 0 {
                        break;
                    }
                }
                let len = digits.len() - at;
                match libc::write(fd, digits[at..].as_ptr().cast(), len) {
                    n if n == len as isize => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            });
        }
    }

    /// The most memory (anonymous and page cache) charged to the cgroup since creation or the last
    /// [`MemoryCgroup::reset_peak`].
    pub fn peak(&self) -> u64 {
        self.read("memory.max_usage_in_bytes")
    }

    pub fn reset_peak(&self) {
        self.write("memory.max_usage_in_bytes", 0);
    }

    /// How often the charge hit the limit (the kernel then reclaims, or OOM-kills if it cannot).
    pub fn failcnt(&self) -> u64 {
        self.read("memory.failcnt")
    }

    /// Processes of the cgroup the OOM killer ended.
    pub fn oom_kills(&self) -> u64 {
        let text = fs::read_to_string(self.dir.join("memory.oom_control")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .expect("memory.oom_control has an oom_kill counter")
    }

    fn read(&self, file: &str) -> u64 {
        let path = self.dir.join(file);
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
    }

    fn write(&self, file: &str, value: u64) {
        let path = self.dir.join(file);
        fs::write(&path, value.to_string()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for MemoryCgroup {
    /// Removes the cgroup once its processes are gone (their owners kill them first: they are
    /// dropped before the cgroup they were started in).
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
