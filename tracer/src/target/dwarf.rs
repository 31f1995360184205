//! Struct member offsets from DWARF (4 up to Go 1.24, 5 from 1.25; sections SHF_COMPRESSED). DWARF is the
//! authority for runtime struct layouts when present: the version tables in [`super::layout`] are only its stand-in
//! for stripped binaries.

use std::borrow::Cow;
use std::collections::HashMap;

use gimli::{EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

use super::elf::File;

/// struct name → member name → byte offset.
pub(crate) type StructMembers = HashMap<String, HashMap<String, u64>>;

type Dwarf<'a> = gimli::Dwarf<EndianSlice<'a, LittleEndian>>;

/// A decompressed section larger than this is taken as corrupt rather than allocated.
const MAX_SECTION: u64 = 1 << 30;

/// The sections that struct DIEs live in (Go writes names inline, as DW_FORM_string). The big ones (line tables,
/// location and range lists) stay compressed: types never refer to them.
const NEEDED: &[gimli::SectionId] = &[gimli::SectionId::DebugInfo, gimli::SectionId::DebugAbbrev];

/// Member offsets of the named structs; a struct that is not described is missing from the map. Unreadable DWARF
/// is an error that callers treat like absent DWARF: the version tables are measured, so falling back is safe.
pub(crate) fn struct_members(file: &File<'_>, wanted: &[&str]) -> Result<StructMembers, String> {
    let sections = gimli::DwarfSections::load(|id| load(file, id))?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    find_structs(&dwarf, wanted).map_err(|e| format!("DWARF: {e}"))
}

fn load<'a>(file: &File<'a>, id: gimli::SectionId) -> Result<Cow<'a, [u8]>, String> {
    let section = NEEDED
        .contains(&id)
        .then(|| file.section_by_name(id.name()))
        .flatten();
    let Some(section) = section else {
        return Ok(Cow::Borrowed(&[]));
    };
    let error = |e: object::Error| format!("{}: {e}", id.name());
    let compressed = section.compressed_data().map_err(error)?;
    if compressed.uncompressed_size > MAX_SECTION {
        return Err(format!(
            "{}: claims {} bytes",
            id.name(),
            compressed.uncompressed_size
        ));
    }
    compressed.decompress().map_err(error)
}

fn find_structs(dwarf: &Dwarf<'_>, wanted: &[&str]) -> gimli::Result<StructMembers> {
    let mut found = StructMembers::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        // Not `dwarf.unit()`: that also parses the line program, which is neither needed nor loaded.
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut entries = header.entries(&abbrevs);
        let mut depth = 0isize;
        // The struct being read and the depth of its DIE: its members are the DIEs one level below.
        let mut current: Option<(String, isize)> = None;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            if current.as_ref().is_some_and(|(_, d)| depth <= *d) {
                current = None;
            }
            let name = || -> gimli::Result<Option<String>> {
                Ok(match entry.attr_value(gimli::DW_AT_name)? {
                    Some(gimli::AttributeValue::String(s)) => {
                        Some(String::from_utf8_lossy(s.slice()).into_owned())
                    }
                    _ => None,
                })
            };
            match entry.tag() {
                gimli::DW_TAG_structure_type if current.is_none() => {
                    if let Some(n) = name()? {
                        if wanted.contains(&n.as_str()) && !found.contains_key(&n) {
                            current = Some((n, depth));
                        }
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((s, d)) = &current else { continue };
                    if depth != d + 1 {
                        continue;
                    }
                    // Go writes member offsets as constants (DW_FORM_udata), never as location expressions.
                    let off = entry
                        .attr(gimli::DW_AT_data_member_location)?
                        .and_then(|a| a.udata_value());
                    if let (Some(m), Some(off)) = (name()?, off) {
                        found.entry(s.clone()).or_default().insert(m, off);
                    }
                }
                _ => {}
            }
        }
        if wanted.iter().all(|w| found.contains_key(*w)) {
            break;
        }
    }
    Ok(found)
}
