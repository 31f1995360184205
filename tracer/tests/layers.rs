//! The stages of `tracer/src` import only the stages below them (docs/architecture.md): this reads the
//! sources and fails on an import that goes up or sideways, so that no import cycle creeps back in.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every top-level module of the library, lowest first. A module may use those before it, never those after.
const LAYERS: &[&str] = &[
    "units",
    "memory",
    "output",
    "gobin",
    "error",
    "process",
    "probes",
    "events",
    "heap",
    "lifecycle",
    "report",
    "session",
    "agent",
    "cli",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The stage a source file belongs to: its first path component under `src/`.
fn stage(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comments and without its unit tests (tests may build fixtures from any stage).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
    let text = text.split("#[cfg(test)]\npub(crate) mod tests {").next().unwrap();
    text.lines()
        .map(|l| l.split("//").next().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules a piece of code names through `crate::`, in paths and in `use crate::{...}` groups.
fn stages_used(code: &str) -> BTreeSet<String> {
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut used = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: at brace depth 0, after `{` or `,`.
            let mut depth = 0;
            let mut at_item = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => at_item = true,
                    c if c.is_whitespace() => {}
                    _ if at_item && depth == 0 => {
                        used.insert(ident(&group[j..]));
                        at_item = false;
                    }
                    _ => {}
                }
            }
        } else {
            used.insert(ident(rest));
        }
    }
    used
}

#[test]
fn stages_import_only_the_stages_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let rank = |s: &str| LAYERS.iter().position(|l| *l == s);
    let mut wrong = Vec::new();
    for file in &files {
        let own = stage(&src, file);
        if own == "lib" || own == "main" || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let Some(own_rank) = rank(&own) else {
            wrong.push(format!("{}: stage {own} is not in LAYERS", file.display()));
            continue;
        };
        for used in stages_used(&code(&std::fs::read_to_string(file).unwrap())) {
            match rank(&used) {
                Some(r) if r < own_rank || used == own => {}
                Some(_) => wrong.push(format!("{}: {own} uses {used}, a stage above it", file.display())),
                None => wrong.push(format!(
                    "{}: {own} uses crate::{used}, not a stage in LAYERS",
                    file.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
}

#[test]
fn the_reader_sees_groups_and_paths() {
    let used = stages_used(
        "use crate::{gobin::{Frame, GoBinary}, heap::{self, search::X}, units};\nlet x = crate::memory::Memory;",
    );
    assert_eq!(
        used.into_iter().collect::<Vec<_>>(),
        ["gobin", "heap", "memory", "units"]
    );
}
