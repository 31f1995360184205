//! Chain shapes and their diagnoses (go-targets/retainers/TRUTH.md): a 16-byte sub-slice keeping a 1 MiB array,
//! a struct chain three levels deep, a map that kept its storage after its keys were deleted, and the control, a
//! lookup table built once: retained, held by its global, stable and undiagnosed. Every chain starts at a typed
//! global, so each must come out precise and named by Go field paths; stripped, the same chains by offsets, still
//! precise (the GC's bitmaps say which words are pointers).

use e2e::{target_path, trace_until_done, Target};
use serde_json::Value;

fn check(go: &str, stripped: bool) {
    let bin = target_path(go, if stripped { "retainers-stripped" } else { "retainers" });
    let (done, report) = trace_until_done(Target::start(&bin, &[]));
    assert!(done.contains("headers=5 tenants=5 index=10 table=512"), "{done}");
    let rows = report["retained"].as_array().unwrap();
    let at =
        |function: &str| -> Vec<&Value> { rows.iter().filter(|r| r["stack"][0]["function"] == function).collect() };
    for r in rows.iter().filter(|r| {
        r["stack"][0]["function"]
            .as_str()
            .is_some_and(|f| f.starts_with("main."))
    }) {
        let f = r["stack"][0]["function"].as_str().unwrap();
        assert!(
            ["main.loadHeader", "main.newTenant", "main.fillIndex", "main.buildTable"].contains(&f),
            "no other main.* site retains: {r:#}"
        );
        let held = &r["held_by"];
        assert_eq!(
            held["precise"], true,
            "typed from a global all the way, or by the runtime's bitmaps: {r:#}"
        );
        assert_eq!(held["root"]["kind"], "global", "{r:#}");
    }
    if stripped {
        // No DWARF: roots are words of bss, hops offsets, objects typed as maptrace saw them allocated; the
        // avatar is still three fields down (Tenant.Account at 0x10, Account.Profile at 0x8, Profile.Avatar at 0x8).
        let avatar = at("main.newTenant")
            .into_iter()
            .find(|r| r["type"] == "[]uint8")
            .unwrap_or_else(|| panic!("{rows:#?}"));
        let held = &avatar["held_by"];
        assert!(held["root"]["name"].as_str().unwrap().starts_with("bss 0x"), "{held:#}");
        let hops = held["hops"].as_array().unwrap();
        let tail: Vec<(u64, &str)> = hops[hops.len() - 3..]
            .iter()
            .map(|h| (h["offset"].as_u64().unwrap(), h["type"].as_str().unwrap()))
            .collect();
        assert_eq!(
            tail,
            [(0x10, "main.Account"), (0x8, "main.Profile"), (0x8, "[]uint8")],
            "{held:#}"
        );
        return;
    }

    // The sub-slice: 1 MiB arrays, one per round, held through main.headers' elements, diagnosed.
    let header = at("main.loadHeader")
        .into_iter()
        .find(|r| r["type"] == "[]uint8")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(header["trend"], "growing", "{header:#}");
    let held = &header["held_by"];
    assert_eq!(held["root"]["name"], "main.headers", "{held:#}");
    let last = held["hops"].as_array().unwrap().last().unwrap();
    assert_eq!(
        (
            last["size"].as_u64(),
            &last["slice"]["len_bytes"],
            &last["slice"]["cap_bytes"]
        ),
        (Some(1 << 20), &Value::from(16), &Value::from(1 << 20)),
        "{held:#}"
    );
    assert_eq!(held["diagnosis"]["kind"], "sub_slice", "{held:#}");

    // Three levels of struct fields down to the avatar buffer.
    let avatar = at("main.newTenant")
        .into_iter()
        .find(|r| r["type"] == "[]uint8")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(avatar["trend"], "growing", "{avatar:#}");
    let held = &avatar["held_by"];
    assert_eq!(held["root"]["name"], "main.tenants", "{held:#}");
    let hops = held["hops"].as_array().unwrap();
    let tail: Vec<(&str, &str)> = hops[hops.len() - 4..]
        .iter()
        .map(|h| (h["via"].as_str().unwrap(), h["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tail,
        [
            ("[…]", "main.Tenant"),
            (".Account", "main.Account"),
            (".Profile", "main.Profile"),
            (".Avatar", "[]uint8")
        ],
        "{held:#}"
    );
    assert!(
        held.get("diagnosis").is_none(),
        "8 KiB wholly in use: nothing to diagnose: {held:#}"
    );

    // The map with 10 of 10000 keys left: stable, and its storage diagnosed.
    let index = at("main.fillIndex");
    assert!(index.iter().all(|r| r["trend"] == "stable"), "built once: {index:#?}");
    assert!(
        index.iter().all(|r| r["held_by"]["root"]["name"] == "main.index"),
        "{index:#?}"
    );
    let kept = index
        .iter()
        .find(|r| r["held_by"]["diagnosis"]["kind"] == "map_kept_storage")
        .unwrap_or_else(|| panic!("{index:#?}"));
    assert!(
        kept["retained_bytes"].as_u64().unwrap() >= 256 << 10,
        "storage sized for 10000 entries: {kept:#}"
    );

    // The control: retained by design, stable, nothing to diagnose.
    let table = at("main.buildTable");
    assert!(!table.is_empty(), "{rows:#?}");
    for r in table {
        assert_eq!(r["trend"], "stable", "{r:#}");
        assert_eq!(r["held_by"]["root"]["name"], "main.table", "{r:#}");
        assert!(r["held_by"].get("diagnosis").is_none(), "{r:#}");
        // The keys' bytes: reached through an entry's key, which the step names ("k0" … "k511").
        if r["type"] == "string" {
            let hops = r["held_by"]["hops"].as_array().unwrap();
            let entry = &hops.last().unwrap()["map_entry"];
            let key = entry["key"].as_str().unwrap_or_else(|| panic!("{r:#}"));
            let n: u32 = key
                .strip_prefix("\"k")
                .and_then(|k| k.strip_suffix('"'))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("{key}"));
            assert!(
                n < 512 && entry["part"] == "key" && entry["keys"].as_u64() >= Some(1),
                "{r:#}"
            );
        }
    }
}

e2e::go_matrix!(super::check);
