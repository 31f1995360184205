//! Where everything lives. One place, so that xtask, the tests (through the `MAPTRACE_*` variables) and
//! the README agree on paths.

use std::path::{Path, PathBuf};

/// The repository's paths, all absolute.
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// The repository root is xtask's parent: known at compile time, so xtask works from any directory.
    pub fn new() -> Layout {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives inside the repository")
            .to_path_buf();
        Layout { root }
    }

    /// Everything downloaded or built outside cargo's `target/` goes here (git-ignored).
    pub fn cache(&self) -> PathBuf {
        self.root.join(".cache")
    }

    /// `cargo install --root` for bpf-linker.
    pub fn tools_root(&self) -> PathBuf {
        self.cache().join("tools")
    }

    pub fn tools_bin(&self) -> PathBuf {
        self.tools_root().join("bin")
    }

    /// PyPI Go toolchains, one `--target` directory per version: `.cache/go/<ver>/go/bin/go`.
    pub fn go_toolchains(&self) -> PathBuf {
        self.cache().join("go")
    }

    /// Python tools from PyPI the tests run, one `--target` directory each (`PYTHONPATH`).
    pub fn python_tool(&self, name: &str, version: &str) -> PathBuf {
        self.cache().join("python").join(format!("{name}-{version}"))
    }

    /// Sources of the Go test programs (one Go module).
    pub fn go_targets_src(&self) -> PathBuf {
        self.root.join("go-targets")
    }

    /// Built Go test programs: `.cache/go-targets/<ver>/<binary>`. Only binaries live here, because the
    /// tests list these directories.
    pub fn go_targets_out(&self) -> PathBuf {
        self.cache().join("go-targets")
    }

    /// GOCACHE and GOPATH for every Go build, kept inside the repository so nothing leaks into $HOME.
    pub fn go_work(&self) -> PathBuf {
        self.cache().join("go-work")
    }

    /// Build stamps of the Go binaries (see go_targets.rs), kept apart from the binaries themselves.
    pub fn go_stamps(&self) -> PathBuf {
        self.cache().join("stamps").join("go-targets")
    }

    /// cargo's target directory, honouring CARGO_TARGET_DIR like cargo does.
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => self.root.join(dir),
            _ => self.root.join("target"),
        }
    }

    /// The eBPF object `build-ebpf` produces and the tracer embeds (via MAPTRACE_EBPF_OBJECT).
    pub fn ebpf_object(&self) -> PathBuf {
        self.target_dir().join("bpfel-unknown-none/release/tracer-ebpf")
    }

    /// The userspace tracer binary.
    pub fn maptrace_bin(&self) -> PathBuf {
        self.target_dir().join("release/maptrace")
    }
}
