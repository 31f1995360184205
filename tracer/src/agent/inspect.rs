//! What the agent remembers between scans: each executable is inspected once however many processes run it, an
//! executable that cannot be traced is not read again while its contents stay the same, and a process whose
//! attach failed for another reason is retried ever less often. Every one of these is bounded: by the sessions
//! running, by a fixed count, or by the processes present.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    path::Path,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use super::discover::ProcessKey;
use crate::gobin::{FileIdentity, GoBinary, TargetError};

/// Inspected executables in use by a session, shared by every process that runs them. An entry holds a weak
/// reference, so the cache never keeps a mapping (or its file) alive; each entry has its own lock, so processes of
/// one new executable, found in the same scan, wait for one inspection instead of making one each, while other
/// executables are inspected meanwhile.
#[derive(Clone, Default)]
pub struct Binaries(Arc<Mutex<HashMap<FileIdentity, Arc<InspectedOnce>>>>);

/// One executable's inspection: the binary while a session holds it, and the lock its inspection runs under.
type InspectedOnce = Mutex<Weak<GoBinary>>;

impl Binaries {
    /// The inspected binary of `exe` (the file behind `/proc/PID/exe`, whose contents were `expected` when the
    /// process was found), inspecting it now unless a session has it already. Runs on a blocking thread: an
    /// inspection reads the file's tables.
    pub fn get_or_inspect(&self, exe: &Path, expected: FileIdentity) -> Result<Arc<GoBinary>, TargetError> {
        let entry = {
            let mut entries = lock(&self.0);
            entries.retain(|_, e| Arc::strong_count(e) > 1 || lock(e).strong_count() > 0);
            entries.entry(expected).or_default().clone()
        };
        let mut slot = lock(&entry);
        if let Some(binary) = slot.upgrade() {
            return Ok(binary);
        }
        let file = File::open(exe).map_err(|e| TargetError::Io(exe.to_path_buf(), e))?;
        let binary = Arc::new(GoBinary::from_file(exe, &file)?);
        // Shared only if it is the file the scan saw: an exec may have come between the scan and the open.
        if binary.identity() == Some(expected) {
            *slot = Arc::downgrade(&binary);
        }
        Ok(binary)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Executables known not to be traceable (not Go, an unsupported release, refused), each with the reason.
/// Bounded: a tenant can make any number of distinct files, so the oldest verdicts are forgotten first (which
/// costs one more inspection of that file if it runs again).
pub struct Verdicts {
    reasons: HashMap<FileIdentity, &'static str>,
    order: VecDeque<FileIdentity>,
    capacity: usize,
}

/// Verdicts kept: far more distinct executables than a node runs at once.
pub const VERDICTS_KEPT: usize = 8192;

impl Verdicts {
    pub fn new(capacity: usize) -> Self {
        Verdicts {
            reasons: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    pub fn get(&self, exe: &FileIdentity) -> Option<&'static str> {
        self.reasons.get(exe).copied()
    }

    pub fn insert(&mut self, exe: FileIdentity, reason: &'static str) {
        if self.reasons.insert(exe, reason).is_none() {
            self.order.push_back(exe);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.reasons.remove(&old);
            }
        }
    }
}

/// When each process whose attach failed may be tried again: after the scan interval, then twice as long each
/// time, up to [`Retries::MAX_DELAY`]. A process dropped for good (its tracing panicked) is never retried.
/// Entries of processes that have gone are forgotten at each scan.
#[derive(Default)]
pub struct Retries {
    next: HashMap<ProcessKey, Retry>,
}

#[derive(Clone, Copy, Debug)]
struct Retry {
    /// None: never again.
    at: Option<Instant>,
    delay: Duration,
}

impl Retries {
    pub const MAX_DELAY: Duration = Duration::from_secs(300);

    /// Schedules the next attempt at `key` after a failure at `now`.
    pub fn failed(&mut self, key: ProcessKey, first_delay: Duration, now: Instant) {
        let delay = match self.next.get(&key) {
            Some(r) => (r.delay * 2).min(Self::MAX_DELAY),
            None => first_delay.min(Self::MAX_DELAY),
        };
        self.next.insert(
            key,
            Retry {
                at: Some(now + delay),
                delay,
            },
        );
    }

    /// Never tries `key` again (while it runs).
    pub fn dropped(&mut self, key: ProcessKey) {
        self.next.insert(
            key,
            Retry {
                at: None,
                delay: Self::MAX_DELAY,
            },
        );
    }

    /// Whether `key` may be tried at `now`.
    pub fn due(&self, key: &ProcessKey, now: Instant) -> bool {
        self.next.get(key).is_none_or(|r| r.at.is_some_and(|at| now >= at))
    }

    /// Forgets processes that are no longer present.
    pub fn keep_only(&mut self, present: impl Fn(&ProcessKey) -> bool) {
        self.next.retain(|k, _| present(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(ino: u64) -> FileIdentity {
        FileIdentity {
            dev: 1,
            ino,
            size: 10,
            mtime_ns: 0,
        }
    }

    fn key(pid: u32) -> ProcessKey {
        ProcessKey {
            pid,
            start_ticks: 1,
            exe_dev: 1,
            exe_ino: 1,
        }
    }

    #[test]
    fn verdicts_forget_the_oldest_past_their_capacity() {
        let mut v = Verdicts::new(2);
        v.insert(identity(1), "not_go");
        v.insert(identity(2), "too_large");
        v.insert(identity(2), "too_large");
        assert_eq!(
            (v.get(&identity(1)), v.get(&identity(2))),
            (Some("not_go"), Some("too_large"))
        );
        v.insert(identity(3), "malformed");
        assert_eq!(v.get(&identity(1)), None);
        assert_eq!(v.get(&identity(3)), Some("malformed"));
        // The same file with other contents is another file.
        assert_eq!(
            v.get(&FileIdentity {
                size: 11,
                ..identity(3)
            }),
            None
        );
    }

    #[test]
    fn retries_double_up_to_the_cap_and_are_forgotten_with_the_process() {
        let (mut r, t0, scan) = (Retries::default(), Instant::now(), Duration::from_secs(10));
        assert!(r.due(&key(1), t0));
        r.failed(key(1), scan, t0);
        assert!(!r.due(&key(1), t0 + Duration::from_secs(9)));
        assert!(r.due(&key(1), t0 + scan));
        let mut delays = Vec::new();
        for _ in 0..8 {
            r.failed(key(1), scan, t0);
            delays.push(r.next[&key(1)].delay.as_secs());
        }
        assert_eq!(delays, [20, 40, 80, 160, 300, 300, 300, 300]);
        r.dropped(key(2));
        assert!(!r.due(&key(2), t0 + Duration::from_secs(1 << 30)));
        r.keep_only(|k| k.pid == 2);
        assert_eq!(r.next.len(), 1);
        assert!(r.due(&key(1), t0));
    }

    #[test]
    fn a_binary_that_is_not_go_is_not_cached() {
        let exe = Path::new("/proc/self/exe");
        let id = FileIdentity::of(&File::open(exe).unwrap()).unwrap();
        let binaries = Binaries::default();
        assert!(matches!(binaries.get_or_inspect(exe, id), Err(TargetError::NotGo(_))));
        let entries = lock(&binaries.0);
        assert!(entries.values().all(|e| lock(e).strong_count() == 0), "nothing kept");
    }

    #[test]
    #[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
    fn one_inspection_serves_every_process_of_a_binary_while_it_is_in_use() {
        let targets = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/go-targets"));
        let exe = std::fs::read_dir(targets)
            .expect("built go-targets")
            .filter_map(|d| Some(d.ok()?.path().join("counting")))
            .find(|p| p.is_file())
            .expect("a built counting go-target");
        let id = FileIdentity::of(&File::open(&exe).unwrap()).unwrap();
        let binaries = Binaries::default();
        let first = binaries.get_or_inspect(&exe, id).unwrap();
        let second = binaries.get_or_inspect(&exe, id).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "inspected once");
        drop((first, second));
        let third = binaries.get_or_inspect(&exe, id).unwrap();
        assert_eq!(Arc::strong_count(&third), 1, "inspected again once no session held it");
        assert_eq!(lock(&binaries.0).len(), 1);
    }
}
