//! Running child processes: the Debian cargo with a PATH rustup cannot hijack, and uniform error
//! messages that show the command that failed.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Debian's cargo (rustc-web 1.96): the toolchain that ships a prebuilt `core` for bpfel-unknown-none.
pub const CARGO: &str = "/usr/bin/cargo";

/// The caller's PATH without rustup's `~/.cargo/bin`: aya-build switches to `rustup run nightly …
/// -Z build-std` as soon as it finds `rustup`, and rustup's `cargo`/`rustc` shims must not shadow
/// `/usr/bin`. `./x` already does this; doing it again here covers `cargo xtask` run by hand.
pub fn clean_path() -> OsString {
    let rustup_bins: Vec<PathBuf> = [
        std::env::var_os("CARGO_HOME").map(|h| PathBuf::from(h).join("bin")),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin")),
    ]
    .into_iter()
    .flatten()
    .collect();
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept = std::env::split_paths(&path).filter(|p| !rustup_bins.iter().any(|r| r == p));
    std::env::join_paths(kept).expect("PATH entries came from PATH")
}

/// `clean_path()` with `dir` in front (bpf-linker's directory for the eBPF build).
pub fn path_with(dir: &Path) -> OsString {
    let path = clean_path();
    let dirs = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&path));
    std::env::join_paths(dirs).expect("PATH entries came from PATH")
}

/// Debian's `cargo fmt` and `cargo clippy` (rustfmt-web, rust-web-clippy) and the rustfmt `cargo-fmt` runs.
pub const CARGO_FMT: &str = "/usr/bin/cargo-fmt";
pub const RUSTFMT: &str = "/usr/bin/rustfmt";
pub const CARGO_CLIPPY: &str = "/usr/bin/cargo-clippy";

/// A `/usr/bin/cargo` command run from the repository root with a clean PATH. RUSTUP_TOOLCHAIN is
/// dropped in case xtask itself was started by rustup's cargo.
pub fn cargo(root: &Path) -> Command {
    toolchain_command(root, CARGO)
}

/// A cargo subcommand of Debian's toolchain ([`CARGO_FMT`], [`CARGO_CLIPPY`]) run directly, like [`cargo`].
/// Not `cargo fmt`/`cargo clippy`: cargo looks for subcommands in `$CARGO_HOME/bin` first when PATH lacks
/// it, so with rustup installed they would be rustup's proxies (another toolchain's rustfmt and clippy)
/// whatever PATH says. `CARGO` points the subcommand back at Debian's cargo.
pub fn cargo_subcommand(root: &Path, program: &str) -> Command {
    let mut cmd = toolchain_command(root, program);
    cmd.env("CARGO", CARGO).env("RUSTFMT", RUSTFMT);
    cmd
}

fn toolchain_command(root: &Path, program: &str) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir(root)
        .env("PATH", clean_path())
        .env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// The command line as a user could paste it (environment overrides not included).
pub fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio, echoing it first; an error if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = describe(cmd);
    println!("$ {line}");
    let status = cmd.status().with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// True when running as root: the eBPF parts (demo, end-to-end tests) need it.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
