//! A large Go binary for the benchmark's attach-time row: generated, not checked in (tens of
//! megabytes of source would be), and built once into `.cache/bench/bigbin/`.
//!
//! PACKAGES packages of FUNCTIONS functions, each with its own constants, a map and a slice, so
//! neither the compiler nor the linker can fold them: the symbol table, pclntab, DWARF and text
//! grow the way they do in a big service (a Kubernetes component has ~100 000 functions). `main`
//! calls every function once, prints `ready <pid>` (the go-targets protocol) and waits for stdin
//! to close.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::go_targets;
use crate::go_versions::GoVersion;
use crate::layout::Layout;

const PACKAGES: usize = 64;
const FUNCTIONS: usize = 700;
/// Bump when the generated source changes, so a cached binary is rebuilt.
const GENERATION: u32 = 1;

/// Builds the binary if it is missing or stale; returns its path.
pub fn build(layout: &Layout, go: &GoVersion) -> Result<PathBuf> {
    let dir = layout.cache().join("bench").join("bigbin");
    let bin = dir.join("bigbin");
    let stamp = dir.join("stamp");
    let key = format!("{GENERATION} {PACKAGES} {FUNCTIONS} {}", go.name);
    if bin.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == key) {
        return Ok(bin);
    }
    println!("bench: generating and building a large Go binary ({PACKAGES} packages x {FUNCTIONS} functions; a few minutes, once)");
    let _ = fs::remove_dir_all(&dir);
    generate(&dir)?;
    let mut cmd = go_targets::go_command(layout, &go.go_binary(layout), &dir, "amd64", false);
    cmd.args(["build", "-buildvcs=false", "-o"]).arg(&bin).arg(".");
    let out = cmd.output().context("running go build")?;
    if !out.status.success() {
        bail!(
            "building the large binary failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fs::write(&stamp, key)?;
    Ok(bin)
}

fn generate(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join("go.mod"), "module bigbin\n\ngo 1.19\n")?;
    let mut main = String::from("package main\n\nimport (\n\t\"bufio\"\n\t\"fmt\"\n\t\"os\"\n");
    for p in 0..PACKAGES {
        writeln!(main, "\tp{p:03} \"bigbin/p{p:03}\"")?;
        let mut src = format!("package p{p:03}\n\n");
        for f in 0..FUNCTIONS {
            let c = p * FUNCTIONS + f;
            writeln!(
                src,
                "type T{f} struct {{\n\tID   int\n\tTags map[int]int\n\tVals []int\n}}\n\n\
                 func F{f}(n int) *T{f} {{\n\
                 \tt := &T{f}{{ID: n + {c}, Tags: make(map[int]int, n%{m}+1)}}\n\
                 \tfor k := 0; k < n; k++ {{\n\t\tt.Tags[k*{a}%{b}] = k + {c}\n\t\tif k%{m} == {r} {{\n\t\t\tt.Vals = append(t.Vals, k*{a})\n\t\t}}\n\t}}\n\
                 \tfor k, v := range t.Tags {{\n\t\tif v%{b} > {r} {{\n\t\t\tt.Vals = append(t.Vals, k-v)\n\t\t}}\n\t}}\n\
                 \treturn t\n}}\n",
                m = 3 + c % 11,
                a = 7 + c % 13,
                b = 97 + c % 89,
                r = c % 3,
            )?;
        }
        src.push_str("// Run calls every function once.\nfunc Run(n int) (sum int) {\n");
        for f in 0..FUNCTIONS {
            writeln!(src, "\tsum += len(F{f}(n).Vals)")?;
        }
        src.push_str("\treturn sum\n}\n");
        let pkg = dir.join(format!("p{p:03}"));
        fs::create_dir_all(&pkg)?;
        fs::write(pkg.join("p.go"), src)?;
    }
    main.push_str(")\n\nfunc main() {\n\tsum := 0\n");
    for p in 0..PACKAGES {
        writeln!(main, "\tsum += p{p:03}.Run(len(os.Args) + 8)")?;
    }
    main.push_str(
        "\tfmt.Printf(\"ready %d\\n\", os.Getpid())\n\
         \tbufio.NewReader(os.Stdin).ReadString('\\n')\n\
         \tfmt.Printf(\"done sum=%d\\n\", sum)\n}\n",
    );
    fs::write(dir.join("main.go"), main)?;
    Ok(())
}
