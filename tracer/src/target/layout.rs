//! Runtime struct layouts: the one place where Go-version differences in struct offsets live. DWARF is used when
//! the binary has it; otherwise [`TABLE`], measured from the DWARF of each toolchain's unstripped build. A version
//! with neither gets an error naming it, never a guessed offset.

use super::dwarf::StructMembers;
use super::{Arch, GoVersion, TargetError};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutSource {
    Dwarf,
    VersionTable,
}

/// Per-version facts about the runtime that the probes need: struct offsets, and the one
/// calling-convention change among the probed functions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuntimeLayout {
    /// `runtime.g.goid`: moved 152 → 160 (1.23) → 152 (1.25).
    pub goid_offset: u64,
    /// Where the goid offset came from.
    pub source: LayoutSource,
    /// The integer argument register of `growslice`'s element type: `growslice(et, old, cap)`
    /// until Go 1.19, `growslice(oldPtr, newLen, oldCap, num, et)` since 1.20 (runtime/slice.go).
    pub growslice_type_arg: u8,
}

/// Offsets of the `runtime.moduledata` fields we read. The pclntab slices before them (at 0..128) have not moved
/// since Go 1.18, which is how [`super::moduledata`] recognises the struct in the first place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ModuledataOffsets {
    pub text: u64,
    pub types: u64,
    pub etypes: u64,
}

pub(crate) struct Resolved {
    pub runtime: RuntimeLayout,
    pub moduledata: ModuledataOffsets,
}

/// The DWARF structs that [`resolve`] reads.
pub(crate) const DWARF_STRUCTS: &[&str] = &["runtime.g", "runtime.moduledata"];

struct Row {
    minor: u32,
    arches: &'static [Arch],
    goid: u64,
    moduledata: ModuledataOffsets,
}

const BOTH: &[Arch] = &[Arch::Amd64, Arch::Arm64];

const fn md(text: u64, types: u64, etypes: u64) -> ModuledataOffsets {
    ModuledataOffsets {
        text,
        types,
        etypes,
    }
}

/// Go 1.x layouts, measured from DWARF of go1.19.8 and go1.21.13 … go1.27.3 builds for amd64 and arm64 (identical).
/// 1.20 is absent: no toolchain was available to measure it. moduledata gained `covctrs/ecovctrs` after 1.19
/// (types 280 → 296) and `typedesclen` before `etypes` in 1.27.
#[rustfmt::skip]
const TABLE: &[Row] = &[
    Row { minor: 19, arches: BOTH, goid: 152, moduledata: md(176, 280, 288) },
    Row { minor: 21, arches: BOTH, goid: 152, moduledata: md(176, 296, 304) },
    Row { minor: 22, arches: BOTH, goid: 152, moduledata: md(176, 296, 304) },
    Row { minor: 23, arches: BOTH, goid: 160, moduledata: md(176, 296, 304) },
    Row { minor: 24, arches: BOTH, goid: 160, moduledata: md(176, 296, 304) },
    Row { minor: 25, arches: BOTH, goid: 152, moduledata: md(176, 296, 304) },
    Row { minor: 26, arches: BOTH, goid: 152, moduledata: md(176, 296, 304) },
    Row { minor: 27, arches: BOTH, goid: 152, moduledata: md(176, 296, 312) },
];

fn table_row(version: &GoVersion, arch: Arch) -> Option<&'static Row> {
    if version.major != 1 {
        return None;
    }
    TABLE
        .iter()
        .find(|r| r.minor == version.minor && r.arches.contains(&arch))
}

fn no_table(version: &GoVersion, arch: Arch) -> TargetError {
    TargetError::UnsupportedVersion {
        version: version.raw.clone(),
        reason: format!(
            "the binary has no usable DWARF and maptrace has no built-in {arch} layout for it \
             (built in: go1.19, go1.21–go1.27); rebuild it without -ldflags=-w"
        ),
    }
}

pub(crate) fn resolve(
    version: &GoVersion,
    arch: Arch,
    dwarf: Option<&StructMembers>,
) -> Result<Resolved, TargetError> {
    let member = |s: &str, m: &str| dwarf.and_then(|d| d.get(s)?.get(m).copied());
    let row = table_row(version, arch);
    let (goid_offset, source) = match (member("runtime.g", "goid"), row) {
        (Some(goid), _) => (goid, LayoutSource::Dwarf),
        (None, Some(r)) => (r.goid, LayoutSource::VersionTable),
        (None, None) => return Err(no_table(version, arch)),
    };
    let growslice_type_arg = if (version.major, version.minor) <= (1, 19) { 0 } else { 4 };
    let runtime = RuntimeLayout { goid_offset, source, growslice_type_arg };
    let from_dwarf = || {
        let m = |f| member("runtime.moduledata", f);
        Some(md(m("text")?, m("types")?, m("etypes")?))
    };
    let moduledata = match (from_dwarf(), row) {
        (Some(m), _) => m,
        (None, Some(r)) => r.moduledata,
        (None, None) => return Err(no_table(version, arch)),
    };
    Ok(Resolved {
        runtime,
        moduledata,
    })
}

/// The table's answer alone, to check it against DWARF.
#[cfg(test)]
pub(crate) fn table(version: &GoVersion, arch: Arch) -> Option<(u64, ModuledataOffsets)> {
    table_row(version, arch).map(|r| (r.goid, r.moduledata))
}
