//! go-targets/generics (its TRUTH.md), as the tests that trace it expect it: the type arguments of its one generic
//! function, and the names each Go release gives the instantiations and the objects they allocate.

/// `-n`: keep[tagged] runs N times, keep[pattern] 2N, keep[escape] 3N, keep[wide] 4N.
pub const N: u64 = 10;

/// One instantiation of `main.keep`: its type argument as the compiler spells it, how many objects it
/// keeps, and the size class of each.
pub struct Instantiation {
    pub arg: String,
    pub count: u64,
    pub size: u64,
}

/// The four type arguments of go-targets/generics/main.go, in the order the target runs them.
pub fn instantiations() -> [Instantiation; 4] {
    let wide_fields: Vec<String> = [
        "Alpha", "Bravo", "Charlie", "Delta", "Echo", "Foxtrot", "Golf", "Hotel", "India", "Juliett", "Kilo", "Lima",
    ]
    .iter()
    .map(|f| {
        let lower = f.to_lowercase();
        format!(r#"{f} string "json:\"{lower}_field_with_a_long_name,omitempty\" yaml:\"{lower}\"""#)
    })
    .collect();
    [
        Instantiation {
            arg: r#"struct { ID int "json:\"id\""; Name string "json:\"name,omitempty\"" }"#.into(),
            count: N,
            size: 24,
        },
        Instantiation {
            arg: r#"struct { Expr string "re:\"^\\d+\\.\\d+$\"" }"#.into(),
            count: 2 * N,
            size: 16,
        },
        Instantiation {
            arg: r#"struct { Label string "term:\"\x1b[2J\"\nnext" }"#.into(),
            count: 3 * N,
            size: 16,
        },
        Instantiation {
            arg: format!("struct {{ {} }}", wide_fields.join("; ")),
            count: 4 * N,
            size: 192,
        },
    ]
}

/// The Go release line of a toolchain version: `1.21.13` → 21.
fn minor(go: &str) -> u32 {
    go.split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .expect("a 1.N version")
}

/// The hex name the compiler gives the shape of `wide`, whose link string is past its 500-byte limit
/// (`-d=maxshapelen`), by release line: the hash function changed in 1.22 → 1.24 → 1.25.
fn wide_shape_hash(minor: u32) -> &'static str {
    match minor {
        22 | 23 => "49cc3da434d8e4639c76f1e3f0fb79ba0010a126b85b7d80558ae5ba5d9feef0",
        24 => "b733c25bcb271b9c63890e1c0f048645ffef5ed947a4827faa751a45a260110f",
        _ => "4933c25bcb271b9c63890e1c0f048645ffef5ed947a4827faa751a45a260110f",
    }
}

/// `keep`'s instantiation for `arg` as the pclntab of a `go` build names it, and the type of the object it
/// allocates as the runtime's type descriptor names it.
pub fn names(go: &str, arg: &str) -> (String, String) {
    match minor(go) {
        // The 1.19 linker writes every instantiation's name with its type arguments elided; 1.19's new(T)
        // allocates the shape type, whose name ends in the shape's index.
        19 => ("main.keep[...]".into(), format!("go.shape.{arg}_0")),
        21 => (format!("main.keep[go.shape.{arg}]"), arg.into()),
        m if arg.len() > 500 => (format!("main.keep[go.shape.{}]", wide_shape_hash(m)), arg.into()),
        _ => (format!("main.keep[go.shape.{arg}]"), arg.into()),
    }
}
