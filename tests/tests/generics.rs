//! Names that need escaping, from a real Go program (go-targets/generics/TRUTH.md): one generic function
//! instantiated with four anonymous structs whose tags hold double quotes, backslashes, the text `\x1b` and
//! `\n`, or run to 963 bytes. The compiler names each instantiation after its type argument's shape, so the
//! pclntab's function names and the runtime's type names hold all of that. maptrace, in full mode, must
//! carry every name exactly as the binary spells it for each Go version: in the JSON report as a string
//! equal to it, in the text report as it is (none of these names holds a control character, so nothing in
//! them is escaped), and no raw ESC byte may reach the terminal.

use e2e::{
    generics::{instantiations, names, N},
    sites_at, target_path, trace_until_done_as, trace_until_done_with, Target,
};
use serde_json::Value;

/// The GC cycles the target runs after allocating (its default): every object is retained.
const GCS: u64 = 2;
const ESC: char = '\u{1b}';

fn bin(go: &str, stripped: bool) -> std::path::PathBuf {
    target_path(go, if stripped { "generics-stripped" } else { "generics" })
}

fn start(go: &str, stripped: bool) -> Target {
    Target::start(&bin(go, stripped), &[&format!("-n={N}")])
}

fn check(go: &str, stripped: bool) {
    let expected_done = format!(
        "done tagged={N} pattern={} escape={} wide={} gcs={GCS}",
        2 * N,
        3 * N,
        4 * N
    );

    // JSON: every name exactly as the binary spells it.
    let (done, report) = trace_until_done_with(start(go, stripped), &["--mode", "full"]);
    assert_eq!(done, expected_done);
    assert_eq!(report["lost_records"], 0, "records lost");
    let keep_rows: Vec<&Value> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["stack"][0]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with("main.keep["))
        })
        .collect();
    assert_eq!(keep_rows.len(), 4, "one site row per instantiation: {keep_rows:#?}");
    for i in instantiations() {
        let (function, type_name) = names(go, &i.arg);
        // Go 1.19 gives all four the same name: the type tells them apart.
        let row = sites_at(&report, &function)
            .into_iter()
            .find(|r| r["type"] == type_name.as_str())
            .unwrap_or_else(|| panic!("no site row at {function} of type {type_name}: {keep_rows:#?}"));
        assert_eq!(row["kind"], "object", "{row:#}");
        assert_eq!(row["count"], i.count, "{row:#}");
        assert_eq!(row["bytes"], i.count * i.size, "{row:#}");
        assert_eq!(row["stack"][1]["function"], "main.main", "{row:#}");
        assert!(
            row["stack"][0]["file"].as_str().unwrap().ends_with("generics/main.go"),
            "{row:#}"
        );
        let retained: Vec<&Value> = report["retained"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["stack"][0]["function"] == function.as_str() && r["type"] == type_name.as_str())
            .collect();
        assert_eq!(retained.len(), 1, "{function} {type_name}: {retained:#?}");
        assert_eq!(retained[0]["retained_count"], i.count, "{:#}", retained[0]);
    }
    // Besides: the one int main.main makes after the last keep, and nothing else in main.
    let others: Vec<&Value> = report["sites"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["stack"][0]["function"]
                .as_str()
                .is_some_and(|f| f.starts_with("main.") && !f.starts_with("main.keep["))
        })
        .collect();
    assert!(
        matches!(&others[..], [end] if end["stack"][0]["function"] == "main.main" && end["type"] == "int" && end["count"] == 1),
        "no other main.* site but main.main's int: {others:#?}"
    );

    // Text: the same names as they are, and no raw ESC anywhere (the report, or maptrace's stderr).
    let (done, outcome) = trace_until_done_as(start(go, stripped), &["--mode", "full", "--no-live"]);
    assert_eq!(done, expected_done);
    let text = &outcome.stdout;
    assert!(!text.contains(ESC), "a raw ESC in the text report:\n{text}");
    assert!(
        outcome.stderr.iter().all(|l| !l.contains(ESC)),
        "a raw ESC on stderr: {:#?}",
        outcome.stderr
    );
    let sites_table = text
        .split_once("Allocation sites")
        .and_then(|(_, rest)| rest.split_once("\nRetained"))
        .unwrap_or_else(|| panic!("no allocation sites table:\n{text}"))
        .0;
    for i in instantiations() {
        let (function, type_name) = names(go, &i.arg);
        // KIND COUNT BYTES TYPE SITE file:line; the type and the site are written as they are.
        let row = sites_table.lines().find(|l| {
            l.starts_with("object")
                && l.split_whitespace().nth(1) == Some(&i.count.to_string())
                && l.contains(&format!(" {type_name} "))
                && l.contains(&format!(" {function} "))
        });
        assert!(
            row.is_some(),
            "no text row of {} objects of {type_name} at {function}:\n{sites_table}",
            i.count
        );
    }
}

e2e::go_matrix!(super::check);
