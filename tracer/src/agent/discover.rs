//! Finding the node's processes: identity (so that a reused PID or an exec is a new target), the
//! binary, and the container and Kubernetes pod they run in, from `/proc` alone.

use std::{fs, os::unix::fs::MetadataExt};

use crate::gobin::FileIdentity;

/// A process as the agent tells targets apart: a PID is reused by a new process (other start
/// time), and an exec keeps the PID and start time but changes the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessKey {
    pub pid: u32,
    /// `/proc/PID/stat` field 22, in clock ticks since boot.
    pub start_ticks: u64,
    /// The executable's device and inode (through `/proc/PID/exe`, so in any mount namespace).
    pub exe_dev: u64,
    pub exe_ino: u64,
}

/// What the agent knows of a process before attaching.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub key: ProcessKey,
    /// The executable's contents as of this scan: an inspection of it holds until they change.
    pub exe: FileIdentity,
    /// The executable's file name.
    pub binary: String,
    pub container: Option<String>,
    pub pod: Option<String>,
}

/// Every user process now running except this one; kernel threads (no executable) and processes
/// that vanish while read are left out.
pub fn processes() -> Vec<Candidate> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(candidate)
        .collect()
}

/// One process, if it is still there and has an executable.
pub fn candidate(pid: u32) -> Option<Candidate> {
    let start_ticks = start_ticks(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
    let exe = fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let link = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let binary = link
        .file_name()?
        .to_string_lossy()
        .trim_end_matches(" (deleted)")
        .to_string();
    let (container, pod) = fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| container_and_pod(&c))
        .unwrap_or_default();
    Some(Candidate {
        key: ProcessKey {
            pid,
            start_ticks,
            exe_dev: exe.dev(),
            exe_ino: exe.ino(),
        },
        exe: FileIdentity::from_metadata(&exe),
        binary,
        container,
        pod,
    })
}

/// Field 22 of `/proc/PID/stat`, counted after the parenthesised command name (which may hold
/// spaces and parentheses itself).
fn start_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow the name: field 22 is the 20th of them.
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// The container ID (64 hex digits, as Docker, containerd and CRI-O name their cgroups) and the
/// Kubernetes pod UID (`pod<uid>` in the kubepods hierarchy, with `_` for `-` under the systemd
/// cgroup driver) in `/proc/PID/cgroup`.
pub fn container_and_pod(cgroup: &str) -> (Option<String>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2).unwrap_or("");
        for part in path.split('/') {
            let part = part
                .strip_suffix(".scope")
                .or_else(|| part.strip_suffix(".slice"))
                .unwrap_or(part);
            if let Some(uid) = part
                .rsplit_once("-pod")
                .map(|(_, u)| u)
                .or_else(|| part.strip_prefix("pod"))
            {
                if uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_') {
                    pod = Some(uid.replace('_', "-"));
                }
            }
            let id = part.rsplit(['-', ':']).next().unwrap_or(part);
            if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
                container = Some(id.to_string());
            }
        }
    }
    (container, pod)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4e2c1d9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e";

    #[test]
    fn start_time_after_an_awkward_name() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 8 0 123456 1000000 200";
        assert_eq!(start_ticks(stat), Some(123456));
        assert_eq!(start_ticks("garbage"), None);
    }

    #[test]
    fn containers_and_pods_by_runtime_and_driver() {
        let systemd = format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(
            container_and_pod(&systemd),
            (Some(ID.into()), Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d".into()))
        );
        let cgroupfs = format!("12:memory:/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}\n");
        assert_eq!(
            container_and_pod(&cgroupfs),
            (Some(ID.into()), Some("1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d".into()))
        );
        let docker = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_and_pod(&docker), (Some(ID.into()), None));
        let crio = format!("0::/machine.slice/crio-{ID}.scope\n");
        assert_eq!(container_and_pod(&crio).0, Some(ID.into()));
        assert_eq!(
            container_and_pod("0::/user.slice/user-1000.slice/session-3.scope\n"),
            (None, None)
        );
        assert_eq!(container_and_pod(""), (None, None));
    }

    #[test]
    fn this_process_is_found_with_its_binary() {
        let me = candidate(std::process::id()).expect("this process");
        assert!(!me.binary.is_empty());
        assert!(me.key.start_ticks > 0);
        assert!(
            !processes().iter().any(|c| c.key.pid == std::process::id()),
            "the agent leaves itself out"
        );
    }
}
