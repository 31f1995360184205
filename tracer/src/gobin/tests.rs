//! Tests against real binaries of every supported toolchain (built by `cargo xtask build-targets`), with the
//! toolchain's own `go tool nm` and `go tool objdump` as the reference.
//!
//! Those are `#[ignore]`d: the unit layer (`./x test --fast`) builds no go-targets and fetches no Go toolchain,
//! and the whole suite (`./x test`) runs them with `--include-ignored` after building both. The tests
//! marked ignored are exactly those that need them; the others here are pure.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use super::*;

/// The test toolchains: go-targets/go-versions.txt, the list xtask builds the go-targets with.
const GO_VERSIONS_TXT: &str = include_str!("../../../go-targets/go-versions.txt");

/// A line of go-versions.txt: the version (its directory under the go-targets) and its `go` binary.
struct Toolchain {
    version: &'static str,
    go: PathBuf,
}

/// go-versions.txt's toolchains, oldest first (xtask checks the file's format; this only reads it).
fn toolchains() -> &'static [Toolchain] {
    static TOOLCHAINS: OnceLock<Vec<Toolchain>> = OnceLock::new();
    TOOLCHAINS.get_or_init(|| {
        GO_VERSIONS_TXT
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let (version, source) = l
                    .split_once(char::is_whitespace)
                    .unwrap_or_else(|| panic!("go-versions.txt: {l:?}: no source"));
                let go = match source.trim() {
                    "pypi" => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/go"))
                        .join(version)
                        .join("go/bin/go"),
                    other => match other.strip_prefix("debian:") {
                        Some(path) => PathBuf::from(path),
                        None => panic!("go-versions.txt: {l:?}: unknown source"),
                    },
                };
                Toolchain { version, go }
            })
            .collect()
    })
}

/// The versions of go-versions.txt, oldest first.
fn versions() -> impl Iterator<Item = &'static str> {
    toolchains().iter().map(|t| t.version)
}

/// The `go` binary of a toolchain of go-versions.txt.
fn go_binary(ver: &str) -> &'static std::path::Path {
    &toolchains()
        .iter()
        .find(|t| t.version == ver)
        .unwrap_or_else(|| panic!("{ver} is not in go-targets/go-versions.txt"))
        .go
}

/// Pure: adding a release to the tests without a layout table row for it (or the reverse) fails here.
#[test]
fn test_toolchains_are_the_supported_releases() {
    let lines: Vec<u32> = versions()
        .map(|v| {
            let mut n = v.split('.').map(|n| n.parse::<u32>().unwrap());
            assert_eq!(n.next(), Some(1), "{v}");
            n.next().unwrap_or_else(|| panic!("{v}: no minor"))
        })
        .collect();
    assert_eq!(
        lines,
        supported_minors().collect::<Vec<_>>(),
        "the release lines (1.N) of go-targets/go-versions.txt, oldest first, must be exactly the layout \
         table's rows (gobin/layout.rs): a supported release needs both a test toolchain and a row"
    );
}

fn targets_dir() -> PathBuf {
    std::env::var_os("MAPTRACE_GO_TARGETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/go-targets")))
}

fn target_path(ver: &str, name: &str) -> PathBuf {
    let path = targets_dir().join(ver).join(name);
    assert!(
        path.is_file(),
        "missing go-target {}: run `cargo xtask build-targets` (or point MAPTRACE_GO_TARGETS at a built tree)",
        path.display()
    );
    path
}

type Key = (&'static str, &'static str);
type Cache<T> = OnceLock<Mutex<HashMap<Key, &'static OnceLock<T>>>>;

/// One value per (version, binary) for the whole test run, computed once even when tests ask in parallel.
fn once<T: Send + Sync>(cache: &'static Cache<T>, key: Key, init: impl FnOnce() -> T) -> &'static T {
    let cell: &'static OnceLock<T> = cache
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(key)
        .or_insert_with(|| Box::leak(Box::new(OnceLock::new())));
    cell.get_or_init(init)
}

fn bin(ver: &'static str, name: &'static str) -> &'static GoBinary {
    static CACHE: Cache<GoBinary> = OnceLock::new();
    once(&CACHE, (ver, name), || {
        let path = target_path(ver, name);
        GoBinary::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    })
}

fn go_tool(ver: &str, args: &[&str]) -> String {
    let go = go_binary(ver);
    let out = Command::new(go)
        .arg("tool")
        .args(args)
        .env_remove("GOROOT")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPATH", "/tmp/gopath")
        .env("GOCACHE", format!("/tmp/gocache-{ver}"))
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", go.display()));
    assert!(
        out.status.success(),
        "go tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `go tool nm` symbols of a binary: name → address.
fn nm(ver: &'static str, name: &'static str) -> &'static HashMap<String, u64> {
    static CACHE: Cache<HashMap<String, u64>> = OnceLock::new();
    once(&CACHE, (ver, name), || {
        let path = target_path(ver, name);
        let out = go_tool(ver, &["nm", path.to_str().unwrap()]);
        let mut syms = HashMap::new();
        for line in out.lines() {
            // "  addr T name", where the name may contain spaces (generic shapes).
            let mut parts = line.trim_start().splitn(3, ' ');
            let (Some(addr), Some(_kind), Some(sym)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(addr) = u64::from_str_radix(addr, 16) {
                syms.insert(sym.to_string(), addr);
            }
        }
        syms
    })
}

const CORE: [&str; 5] = [
    "runtime.mallocgc",
    "runtime.makeslice",
    "runtime.growslice",
    "runtime.makemap",
    "main.main",
];

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn version_and_symbols_presence() {
    for ver in versions() {
        for name in ["counting", "counting-stripped", "counting-arm64"] {
            let b = bin(ver, name);
            let v = b.version();
            let mut want = ver.split('.').map(|n| n.parse::<u32>().unwrap());
            assert_eq!(
                (v.major, v.minor),
                (want.next().unwrap(), want.next().unwrap()),
                "{ver}/{name}"
            );
            if let Some(patch) = want.next() {
                assert_eq!(v.patch, patch, "{ver}/{name}");
            }
            assert!(v.raw.starts_with(&format!("go{ver}")), "{ver}/{name}: {v}");
            assert_eq!(b.experiments().is_empty(), !v.raw.contains("X:"), "{ver}/{name}: {v}");
            let stripped = name.ends_with("stripped");
            assert_eq!(b.has_symtab(), !stripped, "{ver}/{name}");
            assert_eq!(b.has_dwarf(), !stripped, "{ver}/{name}");
            let arch = if name.contains("arm64") {
                Arch::Arm64
            } else {
                Arch::Amd64
            };
            assert_eq!(b.arch(), arch, "{ver}/{name}");
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn functions_match_go_tool_nm() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let (b, syms) = (bin(ver, name), nm(ver, name));
            for f in CORE {
                let func = b.function(f).unwrap_or_else(|| panic!("{ver}/{name}: no {f}"));
                assert_eq!(Some(&func.entry), syms.get(f), "{ver}/{name}: {f}");
            }
            // Every name nm also knows resolves to nm's address (the ABIInternal one where an ABI wrapper exists).
            let mut n = 0;
            for f in b.functions() {
                assert!(f.entry < f.end, "{ver}/{name}: {f:?}");
                if let Some(&addr) = syms.get(&f.name) {
                    assert_eq!(
                        b.function(&f.name).map(|g| g.entry),
                        Some(addr),
                        "{ver}/{name}: {}",
                        f.name
                    );
                    n += 1;
                }
            }
            assert!(
                n * 10 >= b.functions().count() * 9,
                "{ver}/{name}: only {n} functions in nm"
            );
        }
        // Stripping keeps the code layout: same functions at the same places.
        let (full, stripped) = (bin(ver, "counting"), bin(ver, "counting-stripped"));
        for f in CORE {
            assert_eq!(full.function(f), stripped.function(f), "{ver}: {f} after stripping");
        }
        assert_eq!(full.functions().count(), stripped.functions().count(), "{ver}");
    }
}

struct Insn {
    function: String,
    addr: u64,
    /// Base name of the file, as objdump prints it.
    file: String,
    line: u32,
    /// The mnemonic, as objdump spells it (`RET`, `JBE`, `BLS`, …).
    op: String,
}

/// Functions whose every instruction is checked against `go tool objdump`.
const DISASSEMBLED: &str = r"^(main\..*|runtime\.(mallocgc|growslice|makeslice|makemap))$";

/// `go tool objdump -s DISASSEMBLED`: function, address, file:line and whether it is a RET, for each instruction.
fn objdump(ver: &'static str, name: &'static str) -> &'static Vec<Insn> {
    static CACHE: Cache<Vec<Insn>> = OnceLock::new();
    once(&CACHE, (ver, name), || {
        let path = target_path(ver, name);
        let out = go_tool(ver, &["objdump", "-s", DISASSEMBLED, path.to_str().unwrap()]);
        let mut function = String::new();
        let mut insns = Vec::new();
        for l in out.lines() {
            if let Some(text) = l.strip_prefix("TEXT ") {
                function = text.split_once("(SB)").unwrap().0.to_string();
                continue;
            }
            let cols: Vec<&str> = l.split('\t').map(str::trim).filter(|c| !c.is_empty()).collect();
            if cols.is_empty() {
                continue;
            }
            let (file, line) = cols[0].rsplit_once(':').unwrap();
            insns.push(Insn {
                function: function.clone(),
                addr: u64::from_str_radix(cols[1].strip_prefix("0x").unwrap(), 16).unwrap(),
                file: file.to_string(),
                line: line.parse().unwrap(),
                op: cols
                    .get(3)
                    .and_then(|c| c.split_whitespace().next())
                    .unwrap_or_default()
                    .to_string(),
            });
        }
        insns
    })
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn ret_sites_are_the_rets_objdump_sees() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let b = bin(ver, name);
            let insns = objdump(ver, name);
            let functions: BTreeSet<&str> = insns.iter().map(|i| i.function.as_str()).collect();
            assert!(functions.len() >= 5, "{ver}/{name}: {functions:?}");
            for func in functions {
                let f = b.function(func).unwrap();
                let ours = b.ret_sites(f).unwrap();
                let want: Vec<u64> = insns
                    .iter()
                    .filter(|i| i.op == "RET" && i.function == func)
                    .map(|i| i.addr)
                    .collect();
                assert_eq!(ours, want, "{ver}/{name}: {func}");
                for &pc in &ours {
                    let off = b.file_offset(pc).unwrap() as usize;
                    let real = match b.arch() {
                        Arch::Amd64 => b.bytes[off] == 0xc3,
                        Arch::Arm64 => b.bytes[off..off + 4] == [0xc0, 0x03, 0x5f, 0xd6],
                    };
                    assert!(real, "{ver}/{name}: {func} RET at {pc:#x}");
                }
            }
            assert!(!b.ret_sites(b.function("runtime.mallocgc").unwrap()).unwrap().is_empty());
        }
        // Stripping does not move code.
        let f = |n| bin(ver, n).function("runtime.mallocgc").unwrap();
        assert_eq!(
            bin(ver, "counting").ret_sites(f("counting")).unwrap(),
            bin(ver, "counting-stripped").ret_sites(f("counting-stripped")).unwrap(),
            "{ver}"
        );
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn entry_probes_go_past_the_stack_check_objdump_sees() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let b = bin(ver, name);
            let insns = objdump(ver, name);
            let functions: BTreeSet<&str> = insns.iter().map(|i| i.function.as_str()).collect();
            let mut checked = 0;
            for func in functions {
                let f = b.function(func).unwrap();
                let body: Vec<&Insn> = insns.iter().filter(|i| i.function == func).collect();
                // The conditional branch to morestack among the first instructions, if any.
                let check = body.iter().take(6).position(|i| i.op == "JBE" || i.op == "BLS");
                let want = check.map_or(f.entry, |n| body[n + 1].addr);
                checked += usize::from(check.is_some());
                assert_eq!(b.past_stack_check(f), want, "{ver}/{name}: {func}");
            }
            assert!(
                checked >= 4,
                "{ver}/{name}: mallocgc and the constructors check their stack bound"
            );
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn symbolize_matches_objdump_lines() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let b = bin(ver, name);
            for insn in objdump(ver, name) {
                let frame = b.symbolize(insn.addr).unwrap();
                let f = b.function(&insn.function).unwrap();
                assert_eq!(
                    (frame.function.as_str(), frame.entry),
                    (f.name.as_str(), f.entry),
                    "{ver}/{name}"
                );
                let same_file = frame.file == insn.file || frame.file.ends_with(&format!("/{}", insn.file));
                assert!(same_file, "{ver}/{name}: {frame:?}");
                assert_eq!(frame.line, insn.line, "{ver}/{name}: {:#x}", insn.addr);
            }
            let main = b.function("main.main").unwrap();
            let frame = b.symbolize(main.entry).unwrap();
            assert!(
                frame.file.ends_with(".go") && (1..10_000).contains(&frame.line),
                "{frame:?}"
            );
            assert_eq!(b.symbolize(main.end - 1).unwrap().function, "main.main");
            let last = b.functions().last().unwrap();
            assert!(b.symbolize(last.end).is_none() && b.symbolize(0).is_none());
        }
        // Stripped binaries symbolize from the pclntab alone.
        let (full, stripped) = (bin(ver, "counting"), bin(ver, "counting-stripped"));
        let main = full.function("main.main").unwrap();
        for pc in main.entry..main.end {
            assert_eq!(full.symbolize(pc), stripped.symbolize(pc), "{ver}: {pc:#x}");
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn layout_table_matches_dwarf() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let b = bin(ver, name);
            assert_eq!(b.layout().source, LayoutSource::Dwarf, "{ver}/{name}");
            let bytes = std::fs::read(target_path(ver, name)).unwrap();
            let file = elf::open(&bytes).unwrap();
            let members = dwarf::struct_members(&file, layout::DWARF_STRUCTS).unwrap();
            let md = &members["runtime.moduledata"];
            let from_dwarf = (
                members["runtime.g"]["goid"].offset,
                layout::ModuledataOffsets {
                    text: md["text"].offset,
                    types: md["types"].offset,
                    etypes: md["etypes"].offset,
                    gofunc: md["gofunc"].offset,
                },
            );
            assert_eq!(layout::table(b.version(), b.arch()), Some(from_dwarf), "{ver}/{name}");
            assert_eq!(b.layout().goid_offset, from_dwarf.0, "{ver}/{name}");
        }
        // The stripped twin gets the same offset from the table.
        let (full, stripped) = (bin(ver, "counting").layout(), bin(ver, "counting-stripped").layout());
        assert_eq!(stripped.source, LayoutSource::VersionTable, "{ver}");
        assert_eq!(stripped.goid_offset, full.goid_offset, "{ver}");
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn types_base_is_runtime_types() {
    for ver in versions() {
        for name in ["counting", "counting-stripped", "counting-arm64"] {
            let b = bin(ver, name);
            let base = b.types_base().unwrap_or_else(|| panic!("{ver}/{name}: no types base"));
            assert!(
                b.file_offset(base).is_some() && base >= b.load_vaddr(),
                "{ver}/{name}: {base:#x}"
            );
            if !name.contains("stripped") {
                assert_eq!(Some(&base), nm(ver, name).get("runtime.types"), "{ver}/{name}");
            }
        }
    }
}

/// `^runtime\.mallocgc(Tiny|SmallNoScan|SmallScanNoHeader)(SC|Size)\d+$`, without a regex crate.
fn is_size_specialized_malloc(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("runtime.mallocgc") else {
        return false;
    };
    let Some(rest) = ["Tiny", "SmallNoScan", "SmallScanNoHeader"]
        .iter()
        .find_map(|p| rest.strip_prefix(p))
    else {
        return false;
    };
    let Some(digits) = ["SC", "Size"].iter().find_map(|p| rest.strip_prefix(p)) else {
        return false;
    };
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn go127_size_specialized_mallocs() {
    for name in ["counting", "counting-stripped", "counting-arm64"] {
        let b = bin("1.27.3", name);
        let sc: BTreeSet<&str> = b
            .functions()
            .map(|f| f.name.as_str())
            .filter(|n| is_size_specialized_malloc(n))
            .collect();
        assert_eq!(sc.len(), 14, "{name}: {sc:?}");
        assert!(sc.contains("runtime.mallocgcTinySC2") && sc.contains("runtime.mallocgcSmallScanNoHeaderSC1"));
        for f in &sc {
            assert!(!b.ret_sites(b.function(f).unwrap()).unwrap().is_empty(), "{name}: {f}");
        }
    }
    for ver in ["1.24.11", "1.26.6"] {
        assert!(
            !bin(ver, "counting")
                .functions()
                .any(|f| is_size_specialized_malloc(&f.name)),
            "{ver}"
        );
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn cgo_binary() {
    let b = bin("1.24.11", "counting-cgo");
    let syms = nm("1.24.11", "counting-cgo");
    for f in CORE {
        assert_eq!(b.function(f).map(|f| f.entry), syms.get(f).copied(), "{f}");
    }
    // External linking puts C start-up code first: Go text does not start at the .text section.
    let text = b.image.section(".text").unwrap().addr;
    assert_ne!(b.functions().next().unwrap().entry, text);
    assert!(!b.ret_sites(b.function("runtime.mallocgc").unwrap()).unwrap().is_empty());
    assert_eq!(
        b.symbolize(b.function("main.main").unwrap().entry).unwrap().function,
        "main.main"
    );
    assert_eq!(b.types_base(), syms.get("runtime.types").copied());
    assert_eq!(b.layout().goid_offset, 160);
}

#[test]
fn go_version_strings() {
    let v = |s| GoVersion::parse(s).map(|v| (v.major, v.minor, v.patch));
    assert_eq!(v("go1.26.6-X:nogreenteagc"), Some((1, 26, 6)));
    assert_eq!(v("go1.25.5 X:greenteagc"), Some((1, 25, 5)));
    assert_eq!(v("go1.21rc2"), Some((1, 21, 0)));
    assert_eq!(v("go1.22"), Some((1, 22, 0)));
    assert_eq!(v("devel go1.27-abcdef Mon"), Some((1, 27, 0)));
    assert_eq!(v("go1"), None);
    assert_eq!(v("1.21.0"), None);
    assert_eq!(v(""), None);
    assert!(GoVersion::parse("go1.9.1").unwrap() < GoVersion::parse("go1.19").unwrap());
    assert_eq!(GoVersion::parse("go1.26.6-X:a").unwrap().to_string(), "go1.26.6-X:a");
}

fn buildinfo_blob(flags: u8, version: &str, modinfo: &str) -> Vec<u8> {
    let mut blob = b"\xff Go buildinf:".to_vec();
    blob.extend([8, flags]);
    blob.resize(32, 0);
    for s in [version, modinfo] {
        blob.push(s.len() as u8);
        blob.extend(s.as_bytes());
    }
    blob
}

#[test]
fn buildinfo_experiments() {
    let parse = |v, m| buildinfo::BuildInfo::parse(&buildinfo_blob(2, v, m));
    let bi = parse(
        "go1.26.6-X:nogreenteagc",
        "path\tx\nbuild\tGOEXPERIMENT=nogreenteagc,sizespecializedmalloc\n",
    )
    .unwrap();
    assert_eq!(bi.experiments, ["nogreenteagc", "sizespecializedmalloc"]);
    // Without module info (e.g. Bazel builds) the version's X: suffix still tells.
    assert_eq!(parse("go1.25.5 X:greenteagc", "").unwrap().experiments, ["greenteagc"]);
    assert!(parse("go1.24.11", "build\tCGO_ENABLED=1\n")
        .unwrap()
        .experiments
        .is_empty());
    assert!(matches!(
        parse("gccgo", ""),
        Err(TargetError::UnsupportedVersion { .. })
    ));
    assert!(matches!(
        buildinfo::BuildInfo::parse(&buildinfo_blob(0, "", "")),
        Err(TargetError::UnsupportedVersion { .. })
    ));
    let cut = buildinfo_blob(2, "go1.24.11", "");
    for len in 0..cut.len() - 1 {
        assert!(buildinfo::BuildInfo::parse(&cut[..len]).is_err(), "{len}");
    }
}

/// File range of a section's contents in a parsed binary.
fn section_range(b: &GoBinary, name: &str) -> std::ops::Range<usize> {
    let s = b.image.section(name).unwrap();
    let off = s.offset.unwrap() as usize;
    off..off + s.size as usize
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn truncated_binaries_are_errors() {
    for (ver, name) in [
        ("1.27.3", "counting"),
        ("1.27.3", "counting-stripped"),
        ("1.19", "counting-arm64"),
    ] {
        let b = bin(ver, name);
        // Past the last section or segment contents there is only padding, which a cut may remove harmlessly.
        let sections = b.image.sections.iter().filter_map(|s| Some(s.offset? + s.size));
        let segments = b.image.segments.iter().map(|s| s.offset + s.filesz);
        let n = sections.chain(segments).max().unwrap() as usize;
        for len in [
            0,
            3,
            16,
            40,
            63,
            64,
            1000,
            4096,
            n / 4,
            n / 2,
            3 * n / 4,
            n - 4096,
            n - 100,
            n - 1,
        ] {
            match GoBinary::parse(b.bytes[..len].to_vec()) {
                Err(TargetError::NotElf(_) | TargetError::Truncated { .. }) => {}
                other => panic!("{ver}/{name} cut at {len}: {other:?}"),
            }
        }
        assert!(
            GoBinary::parse(b.bytes[..n].to_vec()).is_ok(),
            "{ver}/{name} without padding"
        );
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn corrupt_binaries_are_errors() {
    for (ver, name) in [("1.27.3", "counting-stripped"), ("1.19", "counting-stripped")] {
        let b = bin(ver, name);
        let pcln = section_range(b, ".gopclntab").start;
        let buildinfo = section_range(b, ".go.buildinfo").start;
        let patched = |patches: &[(usize, &[u8])]| {
            let mut bytes = b.bytes.to_vec();
            for (at, with) in patches {
                bytes[*at..*at + with.len()].copy_from_slice(with);
            }
            GoBinary::parse(bytes)
        };
        let corrupt = |r: Result<GoBinary, TargetError>| matches!(r, Err(TargetError::Corrupt { .. }));
        assert!(
            matches!(patched(&[(pcln, &[0; 4])]), Err(TargetError::UnsupportedVersion { .. })),
            "{ver}: magic"
        );
        assert!(corrupt(patched(&[(pcln + 6, &[3])])), "{ver}: minLC");
        assert!(corrupt(patched(&[(pcln + 8, &[0xff; 8])])), "{ver}: nfunc");
        assert!(corrupt(patched(&[(pcln + 64, &[0xff; 8])])), "{ver}: pclnOffset");
        let functab = pcln + bytes::u64_at(&b.bytes, pcln + 64).unwrap() as usize;
        assert!(corrupt(patched(&[(functab + 8, &[0xff; 4])])), "{ver}: functab order");
        assert!(corrupt(patched(&[(functab + 4, &[0xff; 4])])), "{ver}: funcoff");
        assert!(corrupt(patched(&[(buildinfo, b"x")])), "{ver}: buildinfo magic");
        assert!(matches!(
            patched(&[(buildinfo + 15, &[0])]),
            Err(TargetError::UnsupportedVersion { .. })
        ));
        assert!(
            corrupt(patched(&[(buildinfo + 32, &[0xff, 0xff, 0x7f])])),
            "{ver}: version length"
        );
        let Err(TargetError::UnsupportedVersion { version, .. }) = patched(&[(buildinfo + 33, b"go1.99")]) else {
            panic!("{ver}: a stripped go1.99 must be refused");
        };
        assert!(version.starts_with("go1.99"));
        // The moduledata is the only record of where text starts from 1.26 on; before, the header has it.
        let header_word = b.image.section(".gopclntab").unwrap().addr.to_le_bytes();
        let writable = b.image.segments.iter().filter(|s| s.writable());
        let at = writable
            .flat_map(|s| (s.offset as usize..(s.offset + s.filesz) as usize).step_by(8))
            .find(|&o| b.bytes[o..o + 8] == header_word)
            .unwrap();
        let without = patched(&[(at, &[0; 8])]);
        if b.version().minor >= 26 {
            assert!(corrupt(without), "{ver}: no moduledata");
        } else {
            let without = without.unwrap();
            assert_eq!(without.types_base(), None);
            assert_eq!(without.function("main.main"), b.function("main.main"));
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn sections_are_not_needed() {
    // Renamed sections stand for binaries whose section headers are gone: the scans must find the same things.
    for ver in ["1.19", "1.24.11", "1.27.3"] {
        let b = bin(ver, "counting-stripped");
        let mut bytes = b.bytes.to_vec();
        let names = section_range(b, ".shstrtab");
        for name in [&b".gopclntab"[..], b".go.buildinfo"] {
            let at = bytes[names.clone()]
                .windows(name.len())
                .position(|w| w == name)
                .unwrap();
            bytes[names.start + at + 1] = b'X';
        }
        let renamed = GoBinary::parse(bytes).unwrap();
        assert!(renamed.image.section(".gopclntab").is_none());
        assert_eq!(renamed.version(), b.version());
        assert_eq!(
            renamed.functions().collect::<Vec<_>>(),
            b.functions().collect::<Vec<_>>()
        );
        assert_eq!(renamed.types_base(), b.types_base());
        let main = b.function("main.main").unwrap().entry;
        assert_eq!(renamed.symbolize(main), b.symbolize(main));
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn unreadable_dwarf_falls_back_to_the_table() {
    let b = bin("1.24.11", "counting");
    let mut bytes = b.bytes.to_vec();
    let info = section_range(b, ".debug_info");
    bytes[info].fill(0);
    let fallback = GoBinary::parse(bytes).unwrap();
    assert_eq!(fallback.layout().source, LayoutSource::VersionTable);
    assert_eq!(fallback.layout().goid_offset, b.layout().goid_offset);
    // Everything else too: the span layout and the cycle counter (the symbol plus the table's offset).
    assert_eq!(
        *fallback.layout(),
        RuntimeLayout {
            source: LayoutSource::VersionTable,
            ..b.layout().clone()
        }
    );
    assert_eq!(fallback.types_base(), b.types_base());
}

/// Random byte damage: parsing and every query must return, never panic.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn random_damage_never_panics() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (ver, name) in [
        ("1.27.3", "counting-stripped"),
        ("1.21.13", "counting-arm64"),
        ("1.25.5", "counting-arm64-stripped"),
    ] {
        let b = bin(ver, name);
        // The code that locates the GC cycle counter in stripped binaries.
        let code = |f: &str| {
            let f = b.function(f).unwrap();
            let off = b.file_offset(f.entry).unwrap() as usize;
            off..off + (f.end - f.entry) as usize
        };
        let regions = [
            section_range(b, ".gopclntab"),
            section_range(b, ".go.buildinfo"),
            0..b.bytes.len(),
            code("runtime.gcTrigger.test"),
            code("runtime.gcStart"),
        ];
        for round in 0..120 {
            let mut bytes = b.bytes.to_vec();
            let region = &regions[round % regions.len()];
            // Damage near the start of the pclntab hits the header and functab, the rest the tables.
            let span = if round % 2 == 0 {
                region.len().min(4096)
            } else {
                region.len()
            };
            for _ in 0..1 + next() % 16 {
                let at = region.start + (next() as usize % span);
                bytes[at] = next() as u8;
            }
            let Ok(damaged) = GoBinary::parse(bytes) else {
                continue;
            };
            // Whatever damaged code yields has passed the rule's own checks.
            let cycles = damaged.layout().gc_cycles_addr;
            assert!(damaged.image.is_writable_memory(cycles, 4), "{ver}/{name}: {cycles:#x}");
            for f in damaged.functions().step_by(7) {
                let _ = damaged.ret_sites(f);
                let _ = damaged.symbolize(f.entry);
                let _ = damaged.symbolize(f.entry + (f.end - f.entry) / 2);
            }
        }
    }
}

/// `runtime.workType.cycles` and the `runtime.mspan` fields of `SpanLayout`, from DWARF: (offset, size).
fn dwarf_gc_members(ver: &'static str, name: &'static str) -> (HashMap<String, dwarf::Member>, dwarf::Member) {
    let bytes = std::fs::read(target_path(ver, name)).unwrap();
    let file = elf::open(&bytes).unwrap();
    let mut m = dwarf::struct_members(&file, &["runtime.mspan", "runtime.workType"]).unwrap();
    let cycles = m["runtime.workType"]["cycles"];
    (m.remove("runtime.mspan").unwrap(), cycles)
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn span_layout_and_cycles_offset_match_dwarf() {
    for ver in versions() {
        for name in ["counting", "counting-arm64"] {
            let b = bin(ver, name);
            let (span, cycles) = dwarf_gc_members(ver, name);
            let nelems = span["nelems"];
            let from_dwarf = SpanLayout {
                start_addr: span["startAddr"].offset,
                npages: span["npages"].offset,
                nelems: nelems.offset,
                nelems_size: nelems.size.unwrap() as u8,
                elemsize: span["elemsize"].offset,
                gcmark_bits: span["gcmarkBits"].offset,
            };
            // Pointer and uintptr members are 8 bytes; nelems shrank to uint16 in 1.22.
            for f in ["startAddr", "npages", "elemsize", "gcmarkBits", "allocBits"] {
                assert_eq!(span[f].size, Some(8), "{ver}/{name}: mspan.{f}");
            }
            let want_nelems = if b.version().minor >= 22 { 2 } else { 8 };
            assert_eq!(from_dwarf.nelems_size, want_nelems, "{ver}/{name}");
            assert_eq!(cycles.size, Some(4), "{ver}/{name}: workType.cycles");
            assert_eq!(
                layout::table_span_cycles(b.version(), b.arch()),
                Some((from_dwarf, cycles.offset)),
                "{ver}/{name}"
            );
            assert_eq!(b.layout().span, from_dwarf, "{ver}/{name}");
            assert_eq!(b.layout().gc_cycles_size, 4, "{ver}/{name}");
            println!(
                "{ver:8} {:5} mspan startAddr {} npages {} nelems {} (u{}) elemsize {} gcmarkBits {} | workType.cycles {}",
                b.arch(),
                from_dwarf.start_addr,
                from_dwarf.npages,
                from_dwarf.nelems,
                8 * from_dwarf.nelems_size,
                from_dwarf.elemsize,
                from_dwarf.gcmark_bits,
                cycles.offset
            );
            // The stripped twin gets the same from the table.
            let stripped = bin(
                ver,
                if name == "counting" {
                    "counting-stripped"
                } else {
                    "counting-arm64-stripped"
                },
            );
            assert_eq!(stripped.layout().source, LayoutSource::VersionTable, "{ver}/{name}");
            assert_eq!(stripped.layout().span, from_dwarf, "{ver}/{name}");
            assert_eq!(stripped.layout().gc_cycles_size, 4, "{ver}/{name}");
        }
    }
}

/// Binaries with symbols and their `-s -w` twins.
const TWINS: [(&str, &str); 5] = [
    ("counting", "counting-stripped"),
    ("counting-arm64", "counting-arm64-stripped"),
    ("demo", "demo-stripped"),
    ("quiet", "quiet-stripped"),
    ("counting-cgo", "counting-cgo-stripped"),
];

/// The code rule of `gc.rs` applied to a binary whatever its symbols.
fn cycles_from_code(b: &GoBinary) -> Result<u64, String> {
    gc::cycles_from_code(&b.image, |name| {
        let f = b.function(name)?;
        Some(gc::Code {
            entry: f.entry,
            bytes: b.image.read(&b.bytes, f.entry, f.end - f.entry)?,
        })
    })
}

/// The section of `b` that contains `addr`: (name, start).
fn section_of(b: &GoBinary, addr: u64) -> (&str, u64) {
    let s = b
        .image
        .sections
        .iter()
        .find(|s| s.addr != 0 && (s.addr..s.addr + s.size).contains(&addr))
        .unwrap();
    (&s.name, s.addr)
}

/// Where the GC cycle counter is without symbols. The `-s -w` twin is not a byte-for-byte relink of the data:
/// its `.go.buildinfo` also records `build -ldflags="-s -w"` (0x20 bytes more), which moves every later data
/// section (by 0x20, or 0x1020 when the segment then starts a page later). Code does not move. So the stripped
/// answer must sit at the same offset in the same section as the symbol-derived answer of the unstripped twin.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn gc_cycles_address_without_symbols() {
    for ver in versions() {
        for (full, stripped) in TWINS {
            if !targets_dir().join(ver).join(full).is_file() {
                assert!(full.contains("cgo"), "{ver}: no {full}");
                continue;
            }
            let (b, s) = (bin(ver, full), bin(ver, stripped));
            let work = nm(ver, full)["runtime.work"];
            let (_, cycles) = dwarf_gc_members(ver, full);
            let want = work + cycles.offset;
            assert!(b.has_symtab() && !s.has_symtab(), "{ver}/{full}");
            assert_eq!(b.layout().gc_cycles_addr, want, "{ver}/{full}: from the symbol");
            // The code rule agrees on the unstripped binary too (it is only used without symbols).
            assert_eq!(cycles_from_code(b), Ok(want), "{ver}/{full}: code rule");
            let (section, start) = section_of(b, want);
            let twin_start = s.image.section(section).unwrap().addr;
            let got = s.layout().gc_cycles_addr;
            assert_eq!(
                got.checked_sub(twin_start),
                Some(want - start),
                "{ver}/{stripped}: {got:#x} is not {section}+{:#x}",
                want - start
            );
            assert_eq!(s.layout().gc_cycles_size, 4);
            if full == "counting" || full == "counting-arm64" {
                println!(
                    "{ver:8} {:5} runtime.work {work:#x} + cycles {} = {want:#x} ({section}+{:#x}); stripped twin {got:#x}",
                    b.arch(),
                    cycles.offset,
                    want - start
                );
            }
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn gc_cycles_rule_checks_itself() {
    for (ver, name) in [
        ("1.27.3", "counting-stripped"),
        ("1.19", "counting-stripped"),
        ("1.23.9", "counting-arm64-stripped"),
    ] {
        let b = bin(ver, name);
        let patched = |func: &str, fill: u8| {
            let f = b.function(func).unwrap();
            let off = b.file_offset(f.entry).unwrap() as usize;
            let mut bytes = b.bytes.to_vec();
            bytes[off..off + (f.end - f.entry) as usize].fill(fill);
            GoBinary::parse(bytes)
        };
        // Without the reader the counter cannot be found; without the writer the answer is not confirmed.
        for func in ["runtime.gcTrigger.test", "runtime.gcStart"] {
            match patched(func, 0) {
                Err(TargetError::UnsupportedVersion { reason, .. }) => {
                    assert!(reason.contains("runtime.work.cycles"), "{ver}/{name}: {reason}");
                    assert!(reason.contains(&b.arch().to_string()), "{ver}/{name}: {reason}");
                }
                other => panic!("{ver}/{name} without {func}: {other:?}"),
            }
        }
    }
    // A reference outside writable memory is refused: point the load somewhere in text.
    let b = bin("1.27.3", "counting-stripped");
    let f = b.function("runtime.gcTrigger.test").unwrap();
    let code = b.image.read(&b.bytes, f.entry, f.end - f.entry).unwrap();
    // MOVL rel32(IP), DX; SUBL DX, CX
    let at = code
        .windows(8)
        .position(|w| w[..2] == [0x8b, 0x15] && w[6..] == [0x29, 0xd1])
        .unwrap();
    let mut bytes = b.bytes.to_vec();
    let off = b.file_offset(f.entry).unwrap() as usize + at;
    bytes[off + 2..off + 6].copy_from_slice(&(-64i32).to_le_bytes());
    match GoBinary::parse(bytes) {
        Err(TargetError::UnsupportedVersion { reason, .. }) => {
            assert!(reason.contains("writable"), "{reason}")
        }
        other => panic!("a text address taken for the counter: {other:?}"),
    }
}

/// The Green Tea GC is the default from 1.26: exactly 1.26 and 1.27 among the test binaries, none of which sets
/// GOEXPERIMENT.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn green_tea_inline_mark_bits() {
    for ver in versions() {
        for name in [
            "counting",
            "counting-stripped",
            "counting-arm64",
            "counting-arm64-stripped",
            "demo",
            "quiet",
        ] {
            let b = bin(ver, name);
            let l = b.layout();
            let want = b.version().minor >= 26;
            assert_eq!(l.inline_mark_bits, want, "{ver}/{name}");
            assert_eq!(
                l.inline_mark_sizes,
                if want { (16, 512) } else { (0, 0) },
                "{ver}/{name}"
            );
            assert_eq!(l.span_uses_inline_marks(16), want);
            assert_eq!(l.span_uses_inline_marks(512), want);
            assert!(!l.span_uses_inline_marks(8) && !l.span_uses_inline_marks(576) && !l.span_uses_inline_marks(0));
            // What the decision was checked against.
            let f = b.function(gc::MOVE_INLINE_MARKS);
            assert_eq!(f.is_some(), want, "{ver}/{name}");
            if let Some(f) = f {
                let file = b.symbolize(f.entry).unwrap().file;
                assert!(file.ends_with("/runtime/mgcmark_greenteagc.go"), "{file}");
            }
            if name == "counting" {
                println!(
                    "{ver:8} {}: experiments {:?} → inline_mark_bits {} {:?}",
                    b.version(),
                    b.experiments(),
                    l.inline_mark_bits,
                    l.inline_mark_sizes
                );
            }
        }
    }
    assert_eq!((INLINE_MARKS_OFFSET, INLINE_MARKS_LEN), (8192 - 64, 63));
}

/// `runtime/runtime2.go` of a toolchain.
/// A file of the runtime's source in a toolchain the tests built with.
fn runtime_source(ver: &str, file: &str) -> String {
    // GOROOT is the directory above the go binary's bin/.
    let goroot = go_binary(ver).parent().and_then(|bin| bin.parent()).unwrap();
    let path = goroot.join("src/runtime").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `waitReason` constants of a toolchain's source in `iota` order (so name i has value i), and
/// `waitReasonStrings` mapped through them: (names, strings by value).
fn source_wait_reasons(ver: &str) -> (Vec<String>, Vec<String>) {
    let src = runtime_source(ver, "runtime2.go");
    let mut lines = src.lines();
    lines
        .by_ref()
        .find(|l| l.trim_start().starts_with("waitReasonZero") && l.contains("= iota"))
        .unwrap_or_else(|| panic!("{ver}: no waitReason enum"));
    let mut names = vec!["waitReasonZero".to_string()];
    for l in lines.by_ref() {
        let code = l.split("//").next().unwrap().trim();
        if code == ")" {
            break;
        }
        if !code.is_empty() {
            names.push(code.split_whitespace().next().unwrap().to_string());
        }
    }
    lines
        .by_ref()
        .find(|l| l.starts_with("var waitReasonStrings"))
        .unwrap_or_else(|| panic!("{ver}: no waitReasonStrings"));
    let mut strings: HashMap<String, String> = HashMap::new();
    for l in lines.take_while(|l| !l.starts_with('}')) {
        if let Some((name, s)) = l.trim().split_once(':') {
            let s = s.trim().trim_end_matches(',');
            strings.insert(name.to_string(), s.trim_matches('"').to_string());
        }
    }
    assert_eq!(strings.len(), names.len(), "{ver}: {strings:?}");
    let by_value = names.iter().map(|n| strings[n].clone()).collect();
    (names, by_value)
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn g_status_offsets_and_wait_reasons() {
    for ver in versions() {
        let (names, strings) = source_wait_reasons(ver);
        for (name, stripped) in [
            ("counting", "counting-stripped"),
            ("counting-arm64", "counting-arm64-stripped"),
        ] {
            let (b, s) = (bin(ver, name), bin(ver, stripped));
            let bytes = std::fs::read(target_path(ver, name)).unwrap();
            let file = elf::open(&bytes).unwrap();
            let members = dwarf::struct_members(&file, &["runtime.g"]).unwrap();
            let g = &members["runtime.g"];
            let (status, since, reason) = (g["atomicstatus"], g["waitsince"], g["waitreason"]);
            assert_eq!(
                (status.size, since.size, reason.size),
                (Some(4), Some(8), Some(1)),
                "{ver}/{name}"
            );
            let from_dwarf = (status.offset, since.offset, reason.offset);
            assert_eq!(
                layout::table_g_status(b.version(), b.arch()),
                Some(from_dwarf),
                "{ver}/{name}"
            );
            for (l, source) in [
                (b.layout(), LayoutSource::Dwarf),
                (s.layout(), LayoutSource::VersionTable),
            ] {
                assert_eq!(l.source, source, "{ver}/{name}");
                assert_eq!(
                    (l.g_atomicstatus, l.g_waitsince, l.g_waitreason),
                    from_dwarf,
                    "{ver}/{name}"
                );
            }

            // The table is the source's waitReasonStrings, and the DWARF constants agree with the source's order.
            assert_eq!(b.layout().wait_reasons, strings, "{ver}/{name}");
            assert_eq!(s.layout().wait_reasons, strings, "{ver}/{stripped}");
            assert_eq!(b.layout().wait_reason(strings.len() as u8), None);
            let consts = dwarf::constants(&file, "runtime.waitReason").unwrap();
            // Every enum value has its constant in DWARF (checked on all of these builds).
            assert_eq!(consts.len(), names.len(), "{ver}/{name}: {consts:?}");
            for (c, &v) in &consts {
                let short = c.strip_prefix("runtime.").unwrap();
                assert_eq!(
                    names.get(v as usize).map(String::as_str),
                    Some(short),
                    "{ver}/{name}: {c} = {v}"
                );
            }
            let expect = [
                ("FinalizerWait", "finalizer wait"),
                ("ChanReceive", "chan receive"),
                ("Sleep", "sleep"),
                ("SelectNoCases", "select (no cases)"),
            ];
            for (c, want) in expect {
                let v = consts[&format!("runtime.waitReason{c}")];
                let v = u8::try_from(v).unwrap();
                assert_eq!(b.layout().wait_reason(v), Some(want), "{ver}/{name}: {c}");
                assert_eq!(s.layout().wait_reason(v), Some(want), "{ver}/{stripped}: {c}");
            }
            let fin = consts["runtime.waitReasonFinalizerWait"];
            println!(
                "{ver:8} {:5} g.atomicstatus {} g.waitreason {} | waitReasonFinalizerWait {fin} ({} reasons, {} in DWARF)",
                b.arch(),
                from_dwarf.0,
                from_dwarf.1,
                names.len(),
                consts.len()
            );
        }
    }
    // A release without a table names no reason rather than guessing.
    let b = bin("1.24.11", "counting");
    let mut v = b.version().clone();
    v.minor = 20;
    let structs = layout::resolve(&v, b.arch(), None);
    assert!(structs.is_err(), "no table for 1.20");
    let l = layout::runtime_layout(
        &v,
        &layout::resolve(b.version(), b.arch(), None).unwrap().structs,
        0,
        false,
        None,
    );
    assert_eq!(l.wait_reason(16), None);
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn cleanup_layout_matches_dwarf_and_code() {
    for ver in versions() {
        let b = bin(ver, "finalizers");
        let Some(c) = b.layout().cleanups else {
            assert!(b.version().minor < 24, "{ver}: no cleanup layout");
            assert!(b.function("runtime.addCleanup").is_none(), "{ver}");
            continue;
        };
        assert!(b.version().minor >= 24, "{ver}");
        let bytes = std::fs::read(target_path(ver, "finalizers")).unwrap();
        let file = elf::open(&bytes).unwrap();
        let m = dwarf::struct_members(
            &file,
            &["runtime.special", "runtime.specialCleanup", "runtime.cleanupFn"],
        )
        .unwrap();
        assert_eq!(
            m["runtime.special"]["kind"].offset,
            b.layout().special_kind_offset,
            "{ver}"
        );
        assert_eq!(m["runtime.special"]["kind"].size, Some(1), "{ver}");
        let special = &m["runtime.specialCleanup"];
        let handle = match c.function {
            CleanupFunction::CapturedByHandle { .. } => special["fn"].offset,
            CleanupFunction::Register(_) => special["cleanup"].offset + m["runtime.cleanupFn"]["arg"].offset,
        };
        assert_eq!(handle, c.special_handle_offset, "{ver}");
        // The runner's one call through a register is the cleanup's, as objdump shows it.
        let runner = b.function(c.runner).unwrap_or_else(|| panic!("{ver}: {}", c.runner));
        let ours = b.indirect_call_sites(runner).unwrap();
        let path = target_path(ver, "finalizers");
        let out = go_tool(
            ver,
            &[
                "objdump",
                "-s",
                &format!("^{}$", c.runner.replace('.', "\\.")),
                path.to_str().unwrap(),
            ],
        );
        let theirs: Vec<u64> = out
            .lines()
            .filter(|l| {
                l.contains("\tCALL ")
                    && ["AX", "BX", "CX", "DX", "SI", "DI"]
                        .iter()
                        .any(|r| l.trim_end().ends_with(&format!("CALL {r}")))
            })
            .map(|l| {
                let addr = l.split('\t').map(str::trim).find(|c| c.starts_with("0x")).unwrap();
                u64::from_str_radix(&addr[2..], 16).unwrap()
            })
            .collect();
        assert_eq!(ours.len(), 1, "{ver}: {}", c.runner);
        assert_eq!(ours, theirs, "{ver}: {}", c.runner);
        println!(
            "{ver:8} special.kind@{} handle@{} kind={} runner {} call {:#x}",
            b.layout().special_kind_offset,
            c.special_handle_offset,
            c.special_kind,
            c.runner,
            ours[0]
        );
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn sampling_layout_matches_dwarf_symbols_and_code() {
    for ver in versions() {
        let b = bin(ver, "allocbench");
        let s = bin(ver, "allocbench-stripped");
        let l = b.layout();
        let bytes = std::fs::read(target_path(ver, "allocbench")).unwrap();
        let file = elf::open(&bytes).unwrap();
        let m = dwarf::struct_members(&file, &["runtime.special"]).unwrap();
        assert_eq!(m["runtime.special"]["kind"].offset, l.special_kind_offset, "{ver}");
        assert_eq!(s.layout().special_kind_offset, l.special_kind_offset, "{ver}");
        // _KindSpecialProfile as the toolchain's source sets it (every release spells the value out).
        let mheap = runtime_source(ver, "mheap.go");
        let kind: u8 = mheap
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix("_KindSpecialProfile")?
                    .trim()
                    .strip_prefix('=')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{ver}: no _KindSpecialProfile in mheap.go"));
        assert_eq!(kind, l.sampling.profile_special_kind, "{ver}");
        // mProf_Malloc's parameters: (p, size) or (mp, p, size).
        let params = dwarf::parameters(&file, "runtime.mProf_Malloc").unwrap();
        let p = params.iter().position(|n| n == "p").unwrap();
        let size = params.iter().position(|n| n == "size").unwrap();
        assert_eq!(
            (l.sampling.malloc_ptr_arg as usize, l.sampling.malloc_size_arg as usize),
            (p, size),
            "{ver}: {params:?}"
        );
        // The rate's address: the symbol, and the code of profilealloc without it.
        let sym = nm(ver, "allocbench")["runtime.MemProfileRate"];
        assert_eq!(l.sampling.rate_addr, Some(sym), "{ver}");
        let f = b.function(memprofilerate::READER).unwrap();
        let code = gc::Code {
            entry: f.entry,
            bytes: b.image.read(&b.bytes, f.entry, f.end - f.entry).unwrap(),
        };
        assert_eq!(
            memprofilerate::rate_from_code(&b.image, Some(code)),
            Ok(sym),
            "{ver}: the code of runtime.profilealloc"
        );
        // Stripped, the same rule finds it (another build: another address, in the same section).
        let stripped = s
            .layout()
            .sampling
            .rate_addr
            .unwrap_or_else(|| panic!("{ver}: stripped"));
        assert_eq!(section_of(s, stripped).0, section_of(b, sym).0, "{ver}");
        println!(
            "{ver:8} special.kind@{} profile kind {} mProf_Malloc(p=r{p}, size=r{size}) MemProfileRate@{sym:#x}",
            l.special_kind_offset, l.sampling.profile_special_kind
        );
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_model_reads_the_arena_index_and_names_the_globals() {
    for ver in versions() {
        let b = bin(ver, "holders");
        let m = b.heap_model().unwrap_or_else(|e| panic!("{ver}: {e}"));
        // heapArena.spans follows the heap bitmap until 1.22 moved the bitmap out (go-runtime-internals.md §2.4 for
        // 1.21; 1.19's bitmap had two bits per word, twice 1.21's one).
        let spans = match ver {
            "1.19" => 2_097_152,
            "1.21.13" => 1_064_960,
            _ => 0,
        };
        assert_eq!(m.layout.arena_spans, spans, "{ver}");
        assert_eq!(m.layout.arena_base_offset, 0xffff_8000_0000_0000, "{ver}");
        let freeindex = if ver == "1.19" || ver == "1.21.13" {
            (48, 8)
        } else {
            (48, 2)
        };
        assert_eq!(m.layout.span_freeindex, freeindex, "{ver}");
        let sessions = m
            .globals
            .iter()
            .find(|g| g.name == "main.sessions")
            .unwrap_or_else(|| panic!("{ver}: {:?}", m.globals));
        assert_eq!(
            (sessions.size, sessions.type_name.as_deref()),
            (8, Some("map[int]*main.Session")),
            "{ver}"
        );
        let lookup = m.globals.iter().find(|g| g.name == "main.lookup").unwrap();
        assert_eq!(
            (lookup.size, lookup.type_name.as_deref()),
            (24, Some("[]string")),
            "{ver}"
        );
        assert!(
            m.globals.iter().all(|g| !g.name.starts_with("runtime.")),
            "{ver}: the runtime's own variables are not roots"
        );
        // The types a typed walk follows: the map variable is a pointer to the linker's synthesized header (Swiss
        // map<K,V> since 1.24, hash<K,V> before), whose values are *main.Session.
        let t = &m.types;
        let header = t
            .pointee(sessions.type_id.unwrap())
            .map(|h| t.get(h).unwrap().name.clone());
        let want = if ["1.19", "1.21.13", "1.22.10", "1.23.9"].contains(&ver) {
            "hash<int,*main.Session>"
        } else {
            "map<int,*main.Session>"
        };
        assert_eq!(header.as_deref(), Some(want), "{ver}");
        let session = t.by_name("main.Session").unwrap();
        let buf = t
            .field(session, "Buf")
            .unwrap_or_else(|| panic!("{ver}: {:?}", t.shape(session)));
        assert_eq!(
            (
                buf.offset,
                t.get(buf.ty).unwrap().name.as_str(),
                t.get(session).unwrap().size
            ),
            (8, "[]uint8", 32),
            "{ver}"
        );
        // The leaked goroutine's closure keeps `batch` in its frame, where it blocks (its slice pointer at a fixed
        // offset from the CFA; Go 1.25+ also lists the parts as variables of their own).
        let f = b.function("main.startWorker.func1").unwrap();
        let at_block: Vec<(String, i64)> = (f.entry..f.end)
            .flat_map(|pc| m.locals.at(pc))
            .filter(|(v, _)| v.name == "batch")
            .map(|(v, p)| (v.name.clone(), p[0].cfa_offset))
            .collect();
        assert!(
            !at_block.is_empty() && at_block.iter().all(|(_, off)| *off < 0),
            "{ver}: {at_block:?}"
        );
        // The roots: main.sessions (a map, one pointer word) and main.lookup (a slice: pointer, len, cap).
        let data = |addr| m.data_regions.iter().any(|r| r.is_pointer(addr));
        assert!(data(sessions.addr) && data(lookup.addr), "{ver}");
        assert!(!data(lookup.addr + 8) && !data(lookup.addr + 16), "{ver}");
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_offsets_table_matches_dwarf() {
    for ver in versions() {
        for name in ["holders", "counting-arm64"] {
            let b = bin(ver, name);
            let bytes = std::fs::read(target_path(ver, name)).unwrap();
            let file = elf::open(&bytes).unwrap();
            let members =
                dwarf::struct_members(&file, &[layout::HEAP_DWARF_STRUCTS, &["runtime.bitvector"]].concat()).unwrap();
            let from_dwarf =
                layout::dwarf_heap_offsets(&members, b.version()).unwrap_or_else(|| panic!("{ver}/{name}: DWARF"));
            assert_eq!(
                layout::table_heap_offsets(b.version(), b.arch()),
                Some(from_dwarf),
                "{ver}/{name}"
            );
            // What DataRegion::runtime_mask points at: bitvector{n int32; bytedata *uint8}.
            let bv = &members["runtime.bitvector"];
            assert_eq!(
                (bv["n"].offset, bv["n"].size, bv["bytedata"].offset),
                (0, Some(4), 8),
                "{ver}/{name}"
            );
            for f in ["data", "edata", "bss", "ebss", "gcdata", "gcbss"] {
                assert_eq!(
                    members["runtime.moduledata"][f].size,
                    Some(8),
                    "{ver}/{name}: moduledata.{f}"
                );
            }
            println!("{ver:8} {:5} {from_dwarf:?}", b.arch());
        }
    }
}

/// The section-relative place in `to` of `addr` in `from`: the `-s -w` twin's data sections start later (see
/// [`gc_cycles_address_without_symbols`]), with the same contents.
fn rebase(from: &GoBinary, to: &GoBinary, addr: u64) -> u64 {
    let (section, start) = section_of(from, addr);
    to.image.section(section).unwrap().addr + (addr - start)
}

/// Binaries with symbols and their `-s -w` twins, for the heap model (`counting-cgo`, externally linked, for one
/// version).
const HEAP_TWINS: [(&str, &str); 4] = [
    ("holders", "holders-stripped"),
    ("counting", "counting-stripped"),
    ("counting-arm64", "counting-arm64-stripped"),
    ("counting-cgo", "counting-cgo-stripped"),
];

fn heap_twins(ver: &str) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
    HEAP_TWINS
        .into_iter()
        .filter(move |(full, _)| !full.contains("cgo") || targets_dir().join(ver).join(full).is_file())
}

/// `runtime.mheap_`, `runtime.allgs` and `runtime.firstmoduledata` found without symbols: on the unstripped build
/// at the symbols' addresses, on its stripped twin at the same place in the same section.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn runtime_roots_found_from_code() {
    for ver in versions() {
        for (full, stripped) in heap_twins(ver) {
            let (b, s) = (bin(ver, full), bin(ver, stripped));
            let syms = nm(ver, full);
            // Stripping moves the data sections, not their layout.
            for section in [".noptrdata", ".data", ".bss", ".noptrbss"] {
                let size = |b: &GoBinary| b.image.section(section).unwrap().size;
                assert_eq!(size(b), size(s), "{ver}/{stripped}: {section}");
            }
            let found = |b: &'static GoBinary| {
                let code = |name: &str| b.code_by_name(name);
                (
                    runtime_globals::mheap_from_code(&b.image, code, 8).unwrap_or_else(|e| panic!("{ver}/{full}: {e}")),
                    runtime_globals::allgs_from_code(&b.image, code).unwrap_or_else(|e| panic!("{ver}/{full}: {e}")),
                    b.module.unwrap().addr,
                )
            };
            let want = (
                syms["runtime.mheap_"],
                syms["runtime.allgs"],
                syms["runtime.firstmoduledata"],
            );
            assert_eq!(found(b), want, "{ver}/{full}");
            let (mheap, allgs, md) = found(s);
            assert_eq!(
                (mheap, allgs, md),
                (rebase(b, s, want.0), rebase(b, s, want.1), rebase(b, s, want.2)),
                "{ver}/{stripped}"
            );
            if full != "counting" {
                println!(
                    "{ver:8} {:5} mheap_ {:#x} ({}) allgs {:#x} ({}) firstmoduledata {:#x}; stripped {mheap:#x} {allgs:#x} {md:#x}",
                    b.arch(),
                    want.0,
                    section_of(b, want.0).0,
                    want.1,
                    section_of(b, want.1).0,
                    want.2
                );
            }
        }
    }
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_model_without_symbols() {
    for ver in versions() {
        for (full, stripped) in heap_twins(ver) {
            let (b, s) = (bin(ver, full), bin(ver, stripped));
            let m = b.heap_model().unwrap_or_else(|e| panic!("{ver}/{full}: {e}"));
            let ms = s.heap_model().unwrap_or_else(|e| panic!("{ver}/{stripped}: {e}"));
            let syms = nm(ver, full);
            assert_eq!(
                m.layout.arenas,
                syms["runtime.mheap_"] + layout::table_heap_offsets(b.version(), b.arch()).unwrap().mheap_arenas
            );
            assert_eq!(
                ms.layout,
                HeapLayout {
                    arenas: rebase(b, s, m.layout.arenas),
                    ..m.layout.clone()
                },
                "{ver}/{stripped}"
            );
            assert_eq!(
                ms.goroutines,
                GoroutineLayout {
                    allgs: rebase(b, s, m.goroutines.allgs),
                    ..m.goroutines
                },
                "{ver}/{stripped}"
            );
            assert!(
                ms.globals.is_empty() && ms.types.get(0).is_none(),
                "{ver}/{stripped}: no DWARF, no names"
            );
            // data and bss as the symbols bound them; the twin's at the same place, with the same bitmaps.
            let names: Vec<&str> = m.data_regions.iter().map(|r| r.name).collect();
            assert_eq!(names, ["data", "bss"], "{ver}/{full}");
            for (r, rs) in m.data_regions.iter().zip(&ms.data_regions) {
                let (start, end) = (
                    syms[&format!("runtime.{}", r.name)],
                    syms[&format!("runtime.e{}", r.name)],
                );
                assert_eq!((r.addr, r.len), (start, end - start), "{ver}/{full}: {}", r.name);
                assert_eq!(r.pointers.len() as u64, r.len.div_ceil(64), "{ver}/{full}: {}", r.name);
                assert!(
                    r.pointers.iter().any(|&b| b != 0),
                    "{ver}/{full}: {} has pointers",
                    r.name
                );
                let want = DataRegion {
                    addr: rebase(b, s, r.addr),
                    runtime_mask: rebase(b, s, r.runtime_mask),
                    ..r.clone()
                };
                assert_eq!(*rs, want, "{ver}/{stripped}: {}", r.name);
            }
            // allgs is a bss root: its array pointer word, not its length and capacity.
            let bss = |m: &HeapModel| m.data_regions.iter().find(|r| r.name == "bss").unwrap().clone();
            let allgs = syms["runtime.allgs"];
            assert!(
                bss(&m).is_pointer(allgs) && !bss(&m).is_pointer(allgs + 8),
                "{ver}/{full}"
            );
            assert!(
                bss(&ms).is_pointer(ms.goroutines.allgs) && !bss(&ms).is_pointer(ms.goroutines.allgs + 16),
                "{ver}/{stripped}"
            );
            let count = |r: &DataRegion| r.pointers.iter().map(|b| b.count_ones()).sum::<u32>();
            if full == "holders" {
                println!(
                    "{ver:8} data {:#x}+{:#x} ({} pointers) bss {:#x}+{:#x} ({} pointers)",
                    m.data_regions[0].addr,
                    m.data_regions[0].len,
                    count(&m.data_regions[0]),
                    m.data_regions[1].addr,
                    m.data_regions[1].len,
                    count(&m.data_regions[1])
                );
            }
        }
    }
}

/// The running program's own bitmaps (built by `progToPointerMask` at start-up) are the ones read from the file,
/// and the code-found addresses hold what they should: `allgs` a slice of live gs with sane stacks, `mheap_.arenas`
/// the arena index. The targets are not PIE: link-time addresses are the run-time ones.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn data_regions_and_roots_match_the_running_program() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::FileExt;
    use std::process::Stdio;
    for ver in versions() {
        let s = bin(ver, "holders-stripped");
        let m = s.heap_model().unwrap();
        let mut child = Command::new(target_path(ver, "holders-stripped"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready "), "{ver}: {line:?}");
        let mem = std::fs::File::open(format!("/proc/{}/mem", child.id())).unwrap();
        let read = |addr: u64, len: usize| {
            let mut buf = vec![0; len];
            mem.read_exact_at(&mut buf, addr)
                .unwrap_or_else(|e| panic!("{ver}: {addr:#x}+{len}: {e}"));
            buf
        };
        let word = |addr: u64| u64::from_le_bytes(read(addr, 8).try_into().unwrap());
        for r in &m.data_regions {
            let n = u32::from_le_bytes(read(r.runtime_mask, 4).try_into().unwrap());
            assert_eq!(u64::from(n), r.len / 8, "{ver}: {} bits", r.name);
            let bytes = read(word(r.runtime_mask + 8), r.pointers.len());
            assert_eq!(bytes, r.pointers, "{ver}: {} bitmap", r.name);
        }
        let g = m.goroutines;
        let (array, len, cap) = (word(g.allgs), word(g.allgs + 8), word(g.allgs + 16));
        assert!(
            array != 0 && (1..=cap).contains(&len),
            "{ver}: allgs {array:#x} {len} {cap}"
        );
        let main = word(array);
        let (lo, hi) = (word(main + g.stack_lo), word(main + g.stack_lo + 8));
        assert!(
            lo < hi && (hi - lo).is_power_of_two(),
            "{ver}: allgs[0] stack {lo:#x}..{hi:#x}"
        );
        assert_ne!(word(m.layout.arenas), 0, "{ver}: mheap_.arenas[0]");
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

/// Code that does not fit a rule gives an error naming the function, never another address.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn root_rules_check_themselves() {
    for (ver, name) in [
        ("1.27.3", "holders-stripped"),
        ("1.19", "holders-stripped"),
        ("1.23.9", "counting-arm64-stripped"),
    ] {
        let b = bin(ver, name);
        let patched = |func: &str, edit: &dyn Fn(&mut [u8])| {
            let f = b.function(func).unwrap();
            let off = b.file_offset(f.entry).unwrap() as usize;
            let mut bytes = b.bytes.to_vec();
            edit(&mut bytes[off..off + (f.end - f.entry) as usize]);
            GoBinary::parse(bytes).unwrap().heap_model().err()
        };
        for func in [runtime_globals::MALLOCINIT, runtime_globals::ALLGADD] {
            let err = patched(func, &|code| code.fill(0)).unwrap_or_else(|| panic!("{ver}/{name}: no {func}"));
            assert!(err.contains(func), "{ver}/{name}: {err}");
        }
    }
    // `LEAQ runtime.mheap_(SB), AX` pointed into text is refused.
    let b = bin("1.27.3", "holders-stripped");
    let f = b.function(runtime_globals::MALLOCINIT).unwrap();
    let init = b.function(runtime_globals::MHEAP_INIT).unwrap().entry;
    let code = b.image.read(&b.bytes, f.entry, f.end - f.entry).unwrap();
    let at = (0..code.len() - 12)
        .find(|&i| {
            code[i..i + 3] == [0x48, 0x8d, 0x05] && code[i + 7] == 0xe8 && {
                let next = f.entry + i as u64 + 12;
                next.wrapping_add(i32::from_le_bytes(code[i + 8..i + 12].try_into().unwrap()) as u64) == init
            }
        })
        .unwrap();
    let mut bytes = b.bytes.to_vec();
    let off = b.file_offset(f.entry).unwrap() as usize + at;
    bytes[off + 3..off + 7].copy_from_slice(&(-64i32).to_le_bytes());
    let err = GoBinary::parse(bytes).unwrap().heap_model().err().unwrap();
    assert!(err.contains("writable"), "{err}");
}

/// Random byte damage to what the stripped heap model reads: it returns, never panics, and what it returns passed
/// the rules' own checks.
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn heap_model_survives_damage() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (ver, name) in [("1.27.3", "holders-stripped"), ("1.21.13", "counting-arm64-stripped")] {
        let b = bin(ver, name);
        let code = |f: &str| {
            let f = b.function(f).unwrap();
            let off = b.file_offset(f.entry).unwrap() as usize;
            off..off + (f.end - f.entry) as usize
        };
        let md = b.module.unwrap().addr;
        let offsets = layout::table_heap_offsets(b.version(), b.arch()).unwrap();
        let file_at = |addr: u64, len: usize| {
            let off = b.file_offset(addr).unwrap() as usize;
            off..off + len
        };
        let prog = |gcprog: u64| file_at(b.image.read_u64(&b.bytes, md + gcprog).unwrap(), 64);
        let regions = [
            code(runtime_globals::MALLOCINIT),
            code(runtime_globals::ALLGADD),
            file_at(md, 600),
            prog(offsets.data.gcprog),
            prog(offsets.bss.gcprog),
        ];
        for round in 0..100 {
            let mut bytes = b.bytes.to_vec();
            let region = &regions[round % regions.len()];
            for _ in 0..1 + next() % 8 {
                let at = region.start + (next() as usize % region.len());
                bytes[at] = next() as u8;
            }
            let Ok(damaged) = GoBinary::parse(bytes) else { continue };
            let Ok(m) = damaged.heap_model() else { continue };
            let writable = |a, len| damaged.image.is_writable_memory(a, len);
            assert!(
                writable(m.goroutines.allgs, 24) && writable(m.layout.arenas, 8),
                "{ver}/{name}"
            );
            for r in &m.data_regions {
                assert!(
                    writable(r.addr, r.len) && r.pointers.len() as u64 == r.len.div_ceil(64),
                    "{ver}/{name}: {}",
                    r.name
                );
            }
        }
    }
}

/// The GC's stack maps of `main.startWorker.func1` where its goroutine parks (just after its call of
/// `runtime.chanrecv1`): the closure's captured `batch` is a live pointer of its frame, in every release, stripped
/// or not; and the module's `gofunc` is the linker's `go:func.*` (`go.func.*` in 1.19).
#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn stack_maps_say_which_frame_words_are_live_pointers() {
    for ver in versions() {
        let syms = nm(ver, "holders");
        let gofunc = syms.get("go:func.*").or_else(|| syms.get("go.func.*")).copied();
        for name in ["holders", "holders-stripped"] {
            let b = bin(ver, name);
            // (A stripped build lays its data out a little differently.)
            if name == "holders" {
                assert_eq!(b.module.map(|m| m.gofunc), gofunc, "{ver}/{name}");
            }
            let f = b
                .function("main.startWorker.func1")
                .unwrap_or_else(|| panic!("{ver}/{name}"));
            let code = b.code(f).unwrap();
            // The return address of the function's first call: where a parked goroutine resumes.
            let mut decoder = iced_x86::Decoder::with_ip(64, code, f.entry, iced_x86::DecoderOptions::NONE);
            let call = decoder
                .iter()
                .find(|i| i.mnemonic() == iced_x86::Mnemonic::Call)
                .unwrap_or_else(|| panic!("{ver}/{name}: no call"));
            let pc = call.next_ip();
            let maps = b
                .frame_pointers(pc)
                .unwrap_or_else(|| panic!("{ver}/{name}: no stack maps at {pc:#x}"));
            let live = |w: &WordBits| {
                (0..w.words)
                    .filter(|&i| w.bits[(i / 8) as usize] >> (i % 8) & 1 == 1)
                    .count()
            };
            assert!(live(&maps.locals) + live(&maps.args) >= 1, "{ver}/{name}: {maps:?}");
            assert_eq!(b.frame_pointers(0x10), None, "{ver}/{name}: not Go code");
        }
    }
}

/// A sparse copy of `from`, `len` bytes long, in a scratch directory.
fn sparse_copy(from: &Path, len: u64, name: &str) -> PathBuf {
    let to = std::env::temp_dir().join(format!("maptrace-sparse-{}-{name}", std::process::id()));
    std::fs::copy(from, &to).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&to)
        .unwrap()
        .set_len(len)
        .unwrap();
    to
}

#[test]
fn a_huge_file_that_is_not_go_is_not_go() {
    let sleep = sparse_copy(Path::new("/bin/sleep"), 4 << 30, "sleep");
    assert!(matches!(GoBinary::open(&sleep), Err(TargetError::NotGo(_))));
    std::fs::remove_file(sleep).unwrap();
}

#[test]
#[ignore = "needs the go-targets built by ./x test (the e2e layer)"]
fn a_go_binary_over_the_size_cap_is_too_large() {
    let go = sparse_copy(&target_path("1.24.11", "quiet"), MAX_FILE_BYTES + 1, "quiet");
    assert!(matches!(GoBinary::open(&go), Err(TargetError::TooLarge { .. })));
    std::fs::remove_file(go).unwrap();
}
