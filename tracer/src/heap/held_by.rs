//! Chains grouped into what a report says holds a row: the shapes of the chains to its objects (the
//! most common first), each step named, and a diagnosis where a known pattern applies.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::typed::EntryPart;
use super::{Chain, Root, SliceView};

/// One hop of a [`HeldBy`], for reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HopRow {
    /// Byte offset, in the previous object (or the root variable), of the pointer followed; `offset_varies`:
    /// other objects of the site take the same path at other offsets (elements of one array or map).
    pub offset: u64,
    pub offset_varies: bool,
    /// The pointer's Go path in the previous value (`.Buf`; `[…]` for an index that varies between the objects);
    /// null where that value was scanned conservatively.
    pub via: Option<String>,
    /// Size of the object reached (its size-class slot).
    pub size: u64,
    /// Its Go type: as maptrace saw it allocated, or else as the walk typed it (None: neither knows).
    #[serde(rename = "type")]
    pub type_name: Option<String>,
    /// Reached through a slice (of the chain shown): the bytes its length and capacity cover.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice: Option<SliceView>,
    /// A map header (of the chain shown): its number of entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_len: Option<u64>,
    /// The map entry the pointer is in, and its key (of the chain shown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map_entry: Option<MapEntry>,
}

/// The map entry a hop's pointer is in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapEntry {
    /// The key as Go prints it: an integer, or a quoted string (its first 64 bytes).
    pub key: String,
    /// The pointer is in the entry's key or its value.
    pub part: EntryPart,
    /// Distinct keys among the group's chains at this hop (one per object, for a map of them).
    pub keys: u64,
}

/// What holds some of a retained site's objects: one chain shape (the same root variable, or the same function's
/// frame on any goroutine; then objects of the same sizes) among the objects searched. The root shown is one of
/// them (one goroutine of several running the same function).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub root: Root,
    pub hops: Vec<HopRow>,
    /// Objects of the site with this chain, of those searched, and their bytes (size-class slots); `unreached`:
    /// searched, no chain found (held by a goroutine stack or the runtime, not walked yet, or freed during the
    /// walk).
    pub objects: u64,
    pub bytes: u64,
    pub searched: u64,
    pub unreached: u64,
    /// Every chain of the group followed only words known to be pointers (DWARF types, the runtime's bitmaps and
    /// stack maps); else some step was a word that merely looks like one (a stack frame without maps, or an
    /// object whose bitmap could not be read).
    pub precise: bool,
    /// Distinct goroutines among the group's roots (0 for a variable).
    pub goroutines: u64,
    /// A known pattern behind the chain, when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
}

/// A named reason a chain retains memory, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnosis {
    /// `sub_slice`, `map_kept_storage` or `goroutine_leak`.
    pub kind: &'static str,
    pub text: String,
}

/// Objects smaller than this are not worth a diagnosis.
const DIAGNOSE_FROM_BYTES: u64 = 16 << 10;

impl HeldBy {
    /// Names the pattern behind the chain, given the bytes its row retains and whether they are a map's own
    /// storage: a slice that covers a small part of the large array it keeps; a map whose storage is far larger
    /// than its entries need (maps never shrink after deletes); goroutines parked for good in the same function,
    /// each holding its share.
    pub fn diagnose(&mut self, retained_bytes: u64, map_storage: bool) {
        let kb = crate::units::human_bytes;
        let sub_slice = self.hops.last().and_then(|h| Some((h.size, h.slice?)));
        let map_len = self.hops.iter().find_map(|h| h.map_len).filter(|_| map_storage);
        let parked = self
            .root
            .goroutine
            .as_ref()
            .map(|(_, state)| state.as_str())
            .filter(|s| !["running", "runnable"].contains(s));
        let diagnosis = match (sub_slice, map_len, parked) {
            (Some((size, v)), _, _) if size >= DIAGNOSE_FROM_BYTES && v.len_bytes * 16 <= size => Diagnosis {
                kind: "sub_slice",
                text: format!(
                    "a slice of {} (capacity {}) keeps the whole {} array alive: copy what is kept (bytes.Clone, slices.Clone) instead of re-slicing",
                    kb(v.len_bytes),
                    kb(v.cap_bytes),
                    kb(size)
                ),
            },
            (_, Some(n), _) if retained_bytes >= DIAGNOSE_FROM_BYTES && retained_bytes / n.max(1) >= 1024 => Diagnosis {
                kind: "map_kept_storage",
                text: format!(
                    "the map has {n} entries but keeps {} of storage: a Go map never shrinks after deletes; copy the live entries into a new map to release it",
                    kb(retained_bytes)
                ),
            },
            (_, _, Some(state)) if self.goroutines >= 2 => Diagnosis {
                kind: "goroutine_leak",
                text: format!(
                    "{} goroutines of {} are parked ({state}), each holding its share: a goroutine leak if nothing will wake them",
                    self.goroutines, self.root.name
                ),
            },
            _ => return,
        };
        self.diagnosis = Some(diagnosis);
    }
}

/// Chain shapes listed per site at most: the most common ones.
pub const MAX_SHAPES: usize = 4;

/// Groups the chains of one site's objects by shape (the same root variable, or the same function's frame on any
/// goroutine; then objects of the same sizes), most common first, at most [`MAX_SHAPES`]; `type_of` names hop
/// objects. Empty when no object has a chain.
pub fn held_by(
    objects: &[u64],
    chains: &HashMap<u64, Chain>,
    mut type_of: impl FnMut(u64, u64) -> Option<String>,
) -> Vec<HeldBy> {
    type Shape<'c> = (&'static str, &'c str, Option<&'c str>, Vec<u64>);
    let mut shapes: HashMap<Shape, Vec<&Chain>> = HashMap::new();
    for chain in objects.iter().filter_map(|o| chains.get(o)) {
        let r = &chain.root;
        let shape = (
            r.kind,
            r.name.as_str(),
            r.type_name.as_deref(),
            chain.hops.iter().map(|h| h.size).collect(),
        );
        shapes.entry(shape).or_default().push(chain);
    }
    let found: usize = shapes.values().map(Vec::len).sum();
    let mut groups: Vec<Vec<&Chain>> = shapes.into_values().collect();
    // Most objects first; among equals, the shorter chain, then the root name, so the order is stable.
    groups.sort_by(|a, b| {
        b.len()
            .cmp(&a.len())
            .then(a[0].hops.len().cmp(&b[0].hops.len()))
            .then(a[0].root.name.cmp(&b[0].root.name))
    });
    groups.truncate(MAX_SHAPES);
    groups
        .iter()
        .map(|group| shape_row(group, objects.len(), found, &mut type_of))
        .collect()
}

/// One shape's row: its first chain, with what varies among the group generalized.
fn shape_row(
    group: &[&Chain],
    searched: usize,
    found: usize,
    type_of: &mut impl FnMut(u64, u64) -> Option<String>,
) -> HeldBy {
    let first = group[0];
    let hops = first
        .hops
        .iter()
        .enumerate()
        .map(|(i, h)| HopRow {
            offset: h.offset,
            offset_varies: group.iter().any(|c| c.hops[i].offset != h.offset),
            via: h.via.as_ref().map(|v| {
                if group.iter().all(|c| c.hops[i].via.as_ref() == Some(v)) {
                    v.clone()
                } else {
                    any_index(v)
                }
            }),
            size: h.size,
            type_name: type_of(h.base, h.size).or_else(|| h.type_name.clone()),
            slice: h.slice,
            map_len: h.map_len,
            map_entry: h.key.clone().map(|(key, part)| MapEntry {
                key,
                part,
                keys: group
                    .iter()
                    .filter_map(|c| c.hops[i].key.as_ref())
                    .collect::<HashSet<_>>()
                    .len() as u64,
            }),
        })
        .collect();
    HeldBy {
        root: first.root.clone(),
        hops,
        objects: group.len() as u64,
        bytes: group.iter().filter_map(|c| c.hops.last()).map(|h| h.size).sum(),
        searched: searched as u64,
        unreached: (searched - found) as u64,
        precise: group.iter().all(|c| c.precise),
        goroutines: group
            .iter()
            .filter_map(|c| c.root.goroutine.as_ref().map(|g| g.0))
            .collect::<HashSet<_>>()
            .len() as u64,
        diagnosis: None,
    }
}

/// A Go path with every index generalized: `[3].slots[5].elem` → `[…].slots[…].elem`.
fn any_index(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push_str("[…");
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::Hop;

    fn chain(root: &str, hops: &[(u64, u64, u64)]) -> Chain {
        Chain {
            root: Root {
                kind: "global",
                name: root.into(),
                type_name: None,
                goroutine: None,
                blocked_ms: None,
            },
            hops: hops
                .iter()
                .map(|&(offset, size, base)| Hop {
                    offset,
                    size,
                    base,
                    via: Some(format!("[{}]", offset / 8)),
                    type_name: None,
                    slice: None,
                    map_len: None,
                    known: true,
                    key: None,
                })
                .collect(),
            precise: true,
        }
    }

    #[test]
    fn the_most_common_shape_wins_and_unreached_objects_are_counted() {
        let mut chains = HashMap::new();
        // Three maps held through element slots of one backing array; one through another global.
        for (i, obj) in [0x100u64, 0x200, 0x300].into_iter().enumerate() {
            chains.insert(obj, chain("main.cache", &[(0, 4096, 0x9000), (8 * i as u64, 48, obj)]));
        }
        chains.insert(0x400, chain("main.other", &[(0, 48, 0x400)]));
        let shapes = held_by(&[0x100, 0x200, 0x300, 0x400, 0x500], &chains, |b, _| {
            (b == 0x9000).then(|| "[]map[string]int".into())
        });
        let held = &shapes[0];
        assert_eq!(
            (
                held.root.name.as_str(),
                held.objects,
                held.bytes,
                held.searched,
                held.unreached
            ),
            ("main.cache", 3, 3 * 48, 5, 1)
        );
        // The other shape comes next, with its own count.
        assert_eq!(
            (
                shapes.len(),
                shapes[1].root.name.as_str(),
                shapes[1].objects,
                shapes[1].hops.len()
            ),
            (2, "main.other", 1, 1)
        );
        assert_eq!(held.hops[0].type_name.as_deref(), Some("[]map[string]int"));
        assert_eq!((held.hops[0].offset_varies, held.hops[1].offset_varies), (false, true));
        assert_eq!(
            (held.hops[0].via.as_deref(), held.hops[1].via.as_deref()),
            (Some("[0]"), Some("[…]")),
            "an index that varies is generalized"
        );
        assert!(held.precise);
        assert_eq!(any_index("[3].slots[15].elem"), "[…].slots[…].elem");
        assert_eq!(held.hops.iter().map(|h| h.size).collect::<Vec<_>>(), [4096, 48]);
        assert_eq!(held_by(&[0x1], &chains, |_, _| None), [], "no chain, no answer");
    }

    fn held(hops: Vec<HopRow>, goroutine: Option<(u64, String)>, goroutines: u64) -> HeldBy {
        let kind = if goroutine.is_some() { "goroutine" } else { "global" };
        HeldBy {
            root: Root {
                kind,
                name: "main.x".into(),
                type_name: None,
                goroutine,
                blocked_ms: None,
            },
            hops,
            objects: 1,
            bytes: 0,
            searched: 1,
            unreached: 0,
            precise: true,
            goroutines,
            diagnosis: None,
        }
    }

    fn hop(size: u64, slice: Option<(u64, u64)>, map_len: Option<u64>) -> HopRow {
        let slice = slice.map(|(len_bytes, cap_bytes)| SliceView { len_bytes, cap_bytes });
        HopRow {
            offset: 0,
            offset_varies: false,
            via: Some(String::new()),
            size,
            type_name: None,
            slice,
            map_len,
            map_entry: None,
        }
    }

    fn diagnosis(mut h: HeldBy, bytes: u64, map_storage: bool) -> Option<&'static str> {
        h.diagnose(bytes, map_storage);
        h.diagnosis.map(|d| d.kind)
    }

    #[test]
    fn diagnoses_name_the_pattern_only_where_it_applies() {
        let sub = |len| held(vec![hop(1 << 20, Some((len, 1 << 20)), None)], None, 0);
        assert_eq!(diagnosis(sub(16), 5 << 20, false), Some("sub_slice"));
        assert_eq!(diagnosis(sub(1 << 19), 5 << 20, false), None, "half the array in use");
        let small = held(vec![hop(4096, Some((16, 4096)), None)], None, 0);
        assert_eq!(diagnosis(small, 4096, false), None, "too small to matter");

        let map = || held(vec![hop(48, None, Some(10)), hop(18 << 10, None, None)], None, 0);
        assert_eq!(diagnosis(map(), 272 << 10, true), Some("map_kept_storage"));
        assert_eq!(
            diagnosis(map(), 272 << 10, false),
            None,
            "the values a map holds are not its storage"
        );
        assert_eq!(diagnosis(map(), 8 << 10, true), None);

        let parked = |state: &str, n| held(vec![hop(1024, None, None)], Some((7, state.into())), n);
        assert_eq!(
            diagnosis(parked("chan receive", 5), 5 << 10, false),
            Some("goroutine_leak")
        );
        assert_eq!(
            diagnosis(parked("chan receive", 1), 1 << 10, false),
            None,
            "one goroutine is not a pattern"
        );
        assert_eq!(diagnosis(parked("running", 5), 5 << 10, false), None);
    }
}
