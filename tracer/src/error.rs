//! The failures a user can act on, each with its own exit code and a one-line message that says
//! what to do.

use std::fmt;

/// A failure that ends maptrace. `Display` is the whole one-line message.
#[derive(Debug)]
pub enum Failure {
    NoSuchProcess {
        pid: u32,
    },
    NotGo {
        pid: u32,
        exe: String,
        why: String,
    },
    UnsupportedGo {
        version: String,
        why: String,
    },
    Privileges {
        missing: Vec<&'static str>,
    },
    KernelSupport {
        what: String,
    },
    BinaryGone {
        pid: u32,
        exe: String,
    },
    /// The executable breaks one of maptrace's limits (`too_large`) or its tables do not parse (`malformed`):
    /// refused rather than guessed at.
    RefusedBinary {
        pid: u32,
        exe: String,
        why: String,
        too_large: bool,
    },
    Other(anyhow::Error),
}

impl Failure {
    /// Distinct per failure, documented in `--help`.
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Other(_) => 1,
            Failure::NoSuchProcess { .. } => 3,
            Failure::NotGo { .. } => 4,
            Failure::UnsupportedGo { .. } => 5,
            Failure::Privileges { .. } => 6,
            Failure::KernelSupport { .. } => 7,
            Failure::BinaryGone { .. } => 8,
            Failure::RefusedBinary { .. } => 9,
        }
    }

    /// The failure as the agent counts it (`maptrace_agent_attach_failures_total{reason}`) and logs it.
    pub fn reason(&self) -> &'static str {
        match self {
            Failure::NoSuchProcess { .. } => "exited",
            Failure::NotGo { .. } => "not_go",
            Failure::UnsupportedGo { .. } => "unsupported_go",
            Failure::Privileges { .. } => "privileges",
            Failure::KernelSupport { .. } => "kernel",
            Failure::BinaryGone { .. } => "binary_gone",
            Failure::RefusedBinary { too_large: true, .. } => "too_large",
            Failure::RefusedBinary { too_large: false, .. } => "malformed",
            Failure::Other(_) => "other",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoSuchProcess { pid } => {
                write!(f, "no process with PID {pid}: check the PID with `pgrep -a NAME` (the process may have exited)")
            }
            Failure::NotGo { pid, exe, why } => write!(
                f,
                "PID {pid} ({exe}) is not a Go program ({why}): maptrace traces Go binaries only"
            ),
            Failure::UnsupportedGo { version, why } => write!(
                f,
                "unsupported Go runtime {version}: {why}; maptrace supports {}",
                crate::gobin::supported_text()
            ),
            Failure::Privileges { missing } => write!(
                f,
                "missing privileges: {} needed (run with sudo, or grant them with `setcap cap_bpf,cap_perfmon,cap_sys_ptrace+ep maptrace`)",
                missing.join(", ")
            ),
            Failure::KernelSupport { what } => write!(
                f,
                "this kernel cannot run maptrace's probes: {what} (needs Linux ≥ 5.15 with CONFIG_UPROBE_EVENTS, BPF ring buffer and BTF)"
            ),
            Failure::BinaryGone { pid, exe } => write!(
                f,
                "the binary of PID {pid} ({exe}) was deleted or replaced since it started: restart the program, then trace it"
            ),
            Failure::RefusedBinary { pid, exe, why, .. } => write!(
                f,
                "the binary of PID {pid} ({exe}) was refused: {why} (maptrace reads every binary as untrusted input, within limits real Go programs stay far below: if this one is a real, unmodified Go program, report it with `go version -m` of the binary and its size)"
            ),
            Failure::Other(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for Failure {}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}
