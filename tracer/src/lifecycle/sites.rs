//! Aggregating allocation events by allocation site: the first non-runtime frame of the stack,
//! the kind of Go value (map, slice, other object) and its type.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;
use tracer_common::ContainerKind;

use crate::{
    events::Made,
    gobin::runtime_types::GoType,
    gobin::symbolize::{is_allocator, is_gc_function, is_map_function, is_runtime_function, is_runtime_type},
    gobin::SourcePosition,
    memory::Memory,
};

/// Lifecycle site ids: the lifecycle engine keys objects by their site's PC, with one bit set
/// for the blocks a slice or map value owns besides its head (a map's buckets or groups, its
/// directory): their bytes count for the value's site, their number does not, so a site counts
/// values, as the allocation table does.
pub mod site_id {
    const PARTS: u64 = 1 << 63;

    /// The id of the extra storage of `site`'s values.
    pub fn parts(site: u64) -> u64 {
        site | PARTS
    }

    /// The site (its PC) an id belongs to, head or parts.
    pub fn site(id: u64) -> u64 {
        id & !PARTS
    }

    /// True for an id that counts values (a head), false for their extra storage.
    pub fn is_head(id: u64) -> bool {
        id & PARTS == 0
    }
}

/// Names for program counters and type pointers, and the target's memory behind them (the live
/// process, or a fake in tests).
pub trait Resolve {
    /// `pc` is exact: callers subtract one from return addresses.
    fn position(&mut self, pc: u64) -> Option<Arc<SourcePosition>>;
    fn go_type(&mut self, type_ptr: u64) -> Option<Arc<GoType>>;
    fn memory(&self) -> &dyn Memory;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    Map,
    Slice,
    String,
    Object,
}

impl ValueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ValueKind::Map => "map",
            ValueKind::Slice => "slice",
            ValueKind::String => "string",
            ValueKind::Object => "object",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct SiteKey {
    /// Return address into the site's function (0 when no user frame was captured).
    site_pc: u64,
    kind: ValueKind,
    /// `*abi.Type` of the allocation, or the element/map type of a constructor.
    type_ptr: u64,
    /// `type_ptr` is a slice's element type (a slice constructor's argument).
    elem_type: bool,
    /// The type of an untyped allocation, known from the runtime function that made it.
    untyped_as: Option<&'static str>,
    /// A sampled mode site: the runtime's sampler does not pass the type.
    sampled: bool,
}

#[derive(Clone, Debug)]
struct SiteStats {
    /// Allocations and bytes: exact in full mode, estimates in sampled mode.
    count: f64,
    bytes: f64,
    /// Records counted (samples, in sampled mode), and their bytes.
    records: u64,
    record_bytes: u64,
    /// Return addresses from the site outwards, as first seen.
    callers: Vec<u64>,
}

/// Running totals over every record, whether or not it became a row.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Totals {
    /// Heap blocks returned by the mallocgc family.
    pub heap_allocations: u64,
    pub heap_bytes: u64,
    /// Ring-buffer records decoded.
    pub records: u64,
    /// Of them, sampled allocations (sampled mode); the heap counts above are then estimates.
    pub samples: u64,
}

/// The allocation-site table. Sites are numbered in order of first sight.
#[derive(Default)]
pub struct SiteTable {
    index: HashMap<SiteKey, u64>,
    sites: Vec<(SiteKey, SiteStats)>,
    pub totals: Totals,
    /// Unrounded heap totals (sampled mode adds fractions).
    heap_estimate: (f64, f64),
}

/// Where [`SiteTable::add`] put a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SiteHit {
    pub site: u64,
    /// Index in the record's stack of the site's frame (None: only runtime frames).
    pub frame_index: Option<usize>,
}

/// One row of the final table, with names resolved.
#[derive(Clone, Debug, Serialize)]
pub struct SiteRow {
    pub kind: ValueKind,
    #[serde(rename = "type")]
    pub type_name: String,
    pub count: u64,
    pub bytes: u64,
    /// The site function, then its callers (outermost last).
    pub stack: Vec<FrameRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FrameRow {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub pc: String,
}

/// How many caller frames a row keeps.
const ROW_DEPTH: usize = 8;

/// Where on its stack a record's site is, and what kind of value it makes.
struct Placement {
    /// Index in the stack of the first user frame; None when the runtime made it for itself.
    frame: Option<usize>,
    kind: ValueKind,
    /// For untyped memory: the Go type its runtime maker implies.
    untyped_as: Option<&'static str>,
}

/// Walks the stack outwards from the probed runtime function (`stack[0]`; the rest are return
/// addresses) to the first user frame, learning from the runtime frames on the way what is made.
fn place(ev: Made<'_>, names: &mut dyn Resolve) -> Placement {
    let sampled = matches!(ev, Made::Sample(_));
    let mut p = Placement {
        frame: None,
        kind: match ev.container() {
            ContainerKind::Map => ValueKind::Map,
            ContainerKind::Slice => ValueKind::Slice,
            ContainerKind::None => ValueKind::Object,
        },
        untyped_as: None,
    };
    let mut below_other_runtime = false;
    for (i, &pc) in ev.origin().stack.iter().enumerate().skip(1) {
        let Some(f) = names.position(pc.wrapping_sub(1)) else {
            continue;
        };
        if !is_runtime_function(&f.function) {
            p.frame = Some(i);
            break;
        }
        if is_allocator(&f.function) {
            // An allocation the runtime made while serving another (a GC cycle starting
            // inside mallocgc allocates its workers): the runtime's own, not the caller's.
            // (mallocgc directly above a size-specialized allocator is the same allocation.)
            if below_other_runtime {
                break;
            }
        } else {
            below_other_runtime = true;
        }
        // The collector's own bookkeeping (workers started by runtime.GC or an allocation).
        if is_gc_function(&f.function) {
            break;
        }
        // Storage the map implementation makes (groups, tables, its directory slice) is the map's.
        if is_map_function(&f.function) {
            p.kind = ValueKind::Map;
        }
        if ev.type_ptr() == 0 && p.untyped_as.is_none() {
            if let Some((k, name)) = untyped_payload(&f.function) {
                (p.kind, p.untyped_as) = (k, Some(name));
            }
        }
        // A sample has no constructor record: the constructor's frame says what it is.
        if sampled && p.kind == ValueKind::Object && is_slice_constructor(&f.function) {
            p.kind = ValueKind::Slice;
        }
    }
    p
}

impl SiteTable {
    /// Counts a record at its site; `None` for storage of a slice or map under construction,
    /// which is reported with its constructor's record.
    pub fn add(&mut self, ev: Made<'_>, names: &mut dyn Resolve) -> Option<SiteHit> {
        self.add_weighted(ev, 1.0, names)
    }

    /// [`Self::add`] for a record that stands for `weight` allocations (a sample).
    pub fn add_weighted(&mut self, ev: Made<'_>, weight: f64, names: &mut dyn Resolve) -> Option<SiteHit> {
        self.totals.records += 1;
        let sampled = matches!(ev, Made::Sample(_));
        let (size, type_ptr, stack) = (ev.bytes(), ev.type_ptr(), &ev.origin().stack);
        // Heap blocks count towards the heap; a constructor's value is made of blocks counted so.
        if !matches!(ev, Made::Constructor(_)) {
            self.count_heap(weight, size, sampled);
            if ev.container() != ContainerKind::None {
                return None;
            }
        }
        let Placement {
            mut frame,
            kind,
            untyped_as,
        } = place(ev, names);
        // Objects of the runtime's own types (sudogs, goroutine descriptors) are its bookkeeping,
        // whatever user call led to them.
        if names.go_type(type_ptr).is_some_and(|t| is_runtime_type(&t.name)) {
            frame = None;
        }
        let (site_pc, callers) = match frame {
            Some(i) => (stack[i], &stack[i..]),
            None => (0, &stack[..0]),
        };
        let key = SiteKey {
            site_pc,
            kind,
            type_ptr,
            elem_type: matches!(ev, Made::Constructor(c) if c.kind == ContainerKind::Slice),
            untyped_as,
            sampled,
        };
        let id = self.site(key, callers, names);
        let stats = &mut self.sites[id as usize].1;
        stats.count += weight;
        stats.bytes += weight * size as f64;
        stats.records += 1;
        stats.record_bytes += size;
        Some(SiteHit {
            site: id,
            frame_index: frame,
        })
    }

    /// A heap block (or a sample standing for `weight` of them) of `size` bytes.
    fn count_heap(&mut self, weight: f64, size: u64, sampled: bool) {
        self.totals.samples += u64::from(sampled);
        self.heap_estimate.0 += weight;
        self.heap_estimate.1 += weight * size as f64;
        self.totals.heap_allocations = self.heap_estimate.0.round() as u64;
        self.totals.heap_bytes = self.heap_estimate.1.round() as u64;
    }

    /// The id of the site with `key`, made with `callers` as its stack if it is new.
    fn site(&mut self, key: SiteKey, callers: &[u64], names: &mut dyn Resolve) -> u64 {
        if let Some(&id) = self.index.get(&key) {
            return id;
        }
        let id = self.sites.len() as u64;
        let stats = SiteStats {
            count: 0.0,
            bytes: 0.0,
            records: 0,
            record_bytes: 0,
            callers: user_callers(callers, names),
        };
        self.sites.push((key, stats));
        self.index.insert(key, id);
        id
    }

    pub fn len(&self) -> usize {
        self.sites.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sites.is_empty()
    }

    /// Rows sorted by bytes, then count, largest first; at most `limit`.
    pub fn rows(&self, names: &mut dyn Resolve, limit: usize) -> Vec<SiteRow> {
        let mut order: Vec<&(SiteKey, SiteStats)> = self.sites.iter().collect();
        order.sort_by(|a, b| {
            b.1.bytes
                .total_cmp(&a.1.bytes)
                .then(b.1.count.total_cmp(&a.1.count))
                .then(a.0.site_pc.cmp(&b.0.site_pc))
        });
        order.into_iter().take(limit).map(|(k, s)| row(k, s, names)).collect()
    }

    /// The `*abi.Type` of a site's objects, when the site is of plain objects with a known type.
    pub fn object_type(&self, site: u64) -> Option<u64> {
        let (k, _) = self.sites.get(site as usize)?;
        (k.kind == ValueKind::Object && k.type_ptr != 0).then_some(k.type_ptr)
    }

    /// Allocations per record and bytes per recorded byte of a site (1 and 1 in full mode): what
    /// scales the lifecycle engine's per-site counts of samples into estimates. (Large blocks
    /// are sampled more often than small ones, so the two differ.)
    pub fn scale(&self, site: u64) -> (f64, f64) {
        let ratio = |est: f64, seen: u64| if seen == 0 { 1.0 } else { est / seen as f64 };
        self.sites.get(site as usize).map_or((1.0, 1.0), |(_, s)| {
            (ratio(s.count, s.records), ratio(s.bytes, s.record_bytes))
        })
    }

    /// Whether a site's records are samples.
    pub fn sampled(&self, site: u64) -> bool {
        self.sites.get(site as usize).is_some_and(|(k, _)| k.sampled)
    }

    /// The row of one site, by the id [`Self::add`] returned.
    pub fn row(&self, site: u64, names: &mut dyn Resolve) -> Option<SiteRow> {
        let (k, s) = self.sites.get(site as usize)?;
        Some(row(k, s, names))
    }
}

fn row(k: &SiteKey, s: &SiteStats, names: &mut dyn Resolve) -> SiteRow {
    SiteRow {
        kind: k.kind,
        type_name: type_name(k, names),
        count: s.count.round() as u64,
        bytes: s.bytes.round() as u64,
        stack: s.callers.iter().map(|&pc| frame_row(pc, names)).collect(),
    }
}

/// A return address as a report frame (the call's own line).
pub fn frame_row(pc: u64, names: &mut dyn Resolve) -> FrameRow {
    let f = names.position(pc.wrapping_sub(1));
    FrameRow {
        function: f.as_ref().map_or_else(|| "?".to_string(), |f| f.function.clone()),
        file: f.as_ref().map_or_else(String::new, |f| f.file.clone()),
        line: f.as_ref().map_or(0, |f| f.line),
        pc: format!("{pc:#x}"),
    }
}

/// The site and its callers up to the runtime frames that started the goroutine
/// (runtime.main, runtime.goexit): those say nothing about the program.
fn user_callers(callers: &[u64], names: &mut dyn Resolve) -> Vec<u64> {
    let mut out = Vec::with_capacity(callers.len().min(ROW_DEPTH));
    for (i, &pc) in callers.iter().enumerate().take(ROW_DEPTH) {
        let runtime = names
            .position(pc.wrapping_sub(1))
            .is_some_and(|f| is_runtime_function(&f.function));
        if i > 0 && runtime {
            break;
        }
        out.push(pc);
    }
    out
}

/// The runtime functions that make a slice's backing array.
fn is_slice_constructor(function: &str) -> bool {
    matches!(
        function,
        "runtime.makeslice" | "runtime.makeslice64" | "runtime.makeslicecopy"
    ) || function.starts_with("runtime.growslice")
}

/// What the runtime's untyped (pointer-free) allocations hold, by the function that makes them.
fn untyped_payload(function: &str) -> Option<(ValueKind, &'static str)> {
    match function {
        "runtime.rawstring" | "runtime.rawstringtmp" | "runtime.slicebytetostring" | "runtime.intstring" => {
            Some((ValueKind::String, "string"))
        }
        f if f.starts_with("runtime.concatstring") => Some((ValueKind::String, "string")),
        "runtime.rawbyteslice" | "runtime.stringtoslicebyte" => Some((ValueKind::Slice, "[]uint8")),
        "runtime.rawruneslice" | "runtime.stringtoslicerune" => Some((ValueKind::Slice, "[]int32")),
        _ => None,
    }
}

fn type_name(k: &SiteKey, names: &mut dyn Resolve) -> String {
    if let Some(name) = k.untyped_as {
        return name.to_string();
    }
    if k.sampled {
        return match k.kind {
            ValueKind::Map => "map (type not sampled)",
            ValueKind::Slice => "[]? (type not sampled)",
            _ => "? (type not sampled)",
        }
        .into();
    }
    let t = names.go_type(k.type_ptr);
    match t {
        // Slice constructors carry the element type.
        Some(t) if k.elem_type => format!("[]{}", t.name),
        None if k.elem_type => "[]?".into(),
        Some(t) => t.name.clone(),
        // makemap_small is not passed the map's type.
        None if k.type_ptr == 0 && k.kind == ValueKind::Map => "map (untyped)".into(),
        // Since Go 1.25 escaping pointer-free locals may share one untyped allocation.
        None if k.type_ptr == 0 => "(untyped noscan)".into(),
        None => format!("? (type at {:#x})", k.type_ptr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{tests::record, TraceEvent};
    use tracer_common::RecordKind;

    /// PCs 0x1000.. are runtime functions, 0x2000.. user functions; types by pointer.
    struct Fake;

    impl Resolve for Fake {
        fn position(&mut self, pc: u64) -> Option<Arc<SourcePosition>> {
            let function = match pc {
                0x1000..=0x10ff => "runtime.mallocgc",
                0x1100..=0x11ff => "runtime.makeslice",
                0x1200..=0x12ff => "runtime.mapassign_faststr",
                0x1300..=0x13ff => "runtime.concatstring2",
                0x1400..=0x14ff => "runtime.rawbyteslice",
                0x1500..=0x15ff => "runtime.gcStart",
                0x1600..=0x16ff => "runtime.mallocgcSmallScanNoHeaderSC5",
                0x1700..=0x17ff => "runtime.GC",
                0x1800..=0x18ff => "runtime.gcBgMarkStartWorkers",
                0x1900..=0x19ff => "runtime.acquireSudog",
                0x2000..=0x20ff => "main.makeThings",
                0x2100..=0x21ff => "main.main",
                _ => return None,
            };
            Some(Arc::new(SourcePosition {
                function: function.into(),
                file: "/src/main.go".into(),
                line: (pc & 0xff) as u32,
                entry: pc & !0xff,
            }))
        }

        fn go_type(&mut self, type_ptr: u64) -> Option<Arc<GoType>> {
            let name = match type_ptr {
                0x4a0000 => "main.Node",
                0x4b0000 => "uint8",
                0x4c0000 => "map[string]int",
                0x4d0000 => "noalg.map.bucket[string]int",
                0x4e0000 => "runtime.sudog",
                _ => return None,
            };
            Some(Arc::new(GoType {
                name: name.into(),
                size: 48,
            }))
        }

        fn memory(&self) -> &dyn Memory {
            self
        }
    }

    /// No memory: the site table never reads any.
    impl Memory for Fake {
        fn read(&self, _addr: u64, _buf: &mut [u8]) -> std::io::Result<()> {
            Err(std::io::ErrorKind::NotFound.into())
        }
    }

    fn event(kind: RecordKind, container: ContainerKind, stack: &[u64], type_ptr: u64, size: u64) -> TraceEvent {
        let mut r = record(kind, container, stack, 0);
        r.type_ptr = type_ptr;
        r.size = size;
        TraceEvent::from_record(&r).unwrap()
    }

    impl SiteTable {
        fn add_event(&mut self, ev: &TraceEvent, names: &mut dyn Resolve) -> Option<SiteHit> {
            self.add(ev.made().expect("an allocation record"), names)
        }
    }

    #[test]
    fn objects_slices_and_maps_get_their_own_rows() {
        let mut t = SiteTable::default();
        let obj = event(
            RecordKind::Alloc,
            ContainerKind::None,
            &[0x1000, 0x2010, 0x2110],
            0x4a0000,
            48,
        );
        let inner = event(
            RecordKind::Alloc,
            ContainerKind::Slice,
            &[0x1000, 0x1110, 0x2020, 0x2110],
            0x4b0000,
            4096,
        );
        let slice = event(
            RecordKind::Container,
            ContainerKind::Slice,
            &[0x1100, 0x2020, 0x2110],
            0x4b0000,
            4096,
        );
        let map = event(
            RecordKind::Container,
            ContainerKind::Map,
            &[0x1100, 0x2030, 0x2110],
            0x4c0000,
            400,
        );
        let growth = event(
            RecordKind::Alloc,
            ContainerKind::None,
            &[0x1000, 0x1210, 0x2040, 0x2110],
            0x4d0000,
            800,
        );
        let directory = event(
            RecordKind::Container,
            ContainerKind::Slice,
            &[0x1100, 0x1210, 0x2040, 0x2110],
            0x4a0000,
            8,
        );
        for e in [&obj, &obj, &inner, &slice, &map, &growth, &directory] {
            t.add_event(e, &mut Fake);
        }
        let rows = t.rows(&mut Fake, 10);
        let find = |k: ValueKind, ty: &str| rows.iter().find(|r| r.kind == k && r.type_name == ty).cloned();
        let o = find(ValueKind::Object, "main.Node").expect("object row");
        assert_eq!((o.count, o.bytes), (2, 96));
        assert_eq!(o.stack[0].function, "main.makeThings");
        assert_eq!(o.stack[0].line, 0x0f);
        assert_eq!(o.stack[1].function, "main.main");
        let s = find(ValueKind::Slice, "[]uint8").expect("slice row");
        assert_eq!(
            (s.count, s.bytes),
            (1, 4096),
            "the inner allocation is not counted twice"
        );
        let m = find(ValueKind::Map, "map[string]int").expect("map row");
        assert_eq!((m.count, m.bytes), (1, 400));
        let g = find(ValueKind::Map, "noalg.map.bucket[string]int").expect("map growth row");
        assert_eq!(g.count, 1);
        find(ValueKind::Map, "[]main.Node").expect("a slice the map implementation makes is map storage");
        assert_eq!(rows.len(), 5);
        assert_eq!(t.totals.heap_allocations, 4);
        assert_eq!(t.totals.heap_bytes, 48 + 48 + 4096 + 800);
        assert_eq!(t.totals.records, 7);
        assert_eq!(rows[0].type_name, "[]uint8", "sorted by bytes");
    }

    #[test]
    fn untyped_and_unknown_types_are_named_honestly() {
        let mut t = SiteTable::default();
        t.add_event(
            &event(RecordKind::Container, ContainerKind::Map, &[0x1100, 0x2030], 0, 48),
            &mut Fake,
        );
        t.add_event(
            &event(RecordKind::Alloc, ContainerKind::None, &[0x1000, 0x2030], 0, 24),
            &mut Fake,
        );
        t.add_event(
            &event(RecordKind::Alloc, ContainerKind::None, &[0x1000, 0x2030], 0x999, 24),
            &mut Fake,
        );
        let names: Vec<String> = t.rows(&mut Fake, 10).into_iter().map(|r| r.type_name).collect();
        assert!(names.contains(&"map (untyped)".to_string()));
        assert!(names.contains(&"(untyped noscan)".to_string()));
        assert!(names.contains(&"? (type at 0x999)".to_string()));
    }

    #[test]
    fn untyped_strings_and_byte_slices_are_named_by_their_maker() {
        let mut t = SiteTable::default();
        t.add_event(
            &event(RecordKind::Alloc, ContainerKind::None, &[0x1000, 0x1310, 0x2030], 0, 24),
            &mut Fake,
        );
        t.add_event(
            &event(RecordKind::Alloc, ContainerKind::None, &[0x1000, 0x1410, 0x2030], 0, 32),
            &mut Fake,
        );
        let rows = t.rows(&mut Fake, 10);
        let kinds: Vec<(ValueKind, String)> = rows.into_iter().map(|r| (r.kind, r.type_name)).collect();
        assert!(kinds.contains(&(ValueKind::String, "string".into())), "{kinds:?}");
        assert!(kinds.contains(&(ValueKind::Slice, "[]uint8".into())), "{kinds:?}");
    }

    #[test]
    fn allocations_the_runtime_makes_inside_another_are_its_own() {
        let mut t = SiteTable::default();
        // A GC starting inside main's allocation allocates too.
        t.add_event(
            &event(
                RecordKind::Alloc,
                ContainerKind::None,
                &[0x1000, 0x1510, 0x1010, 0x2010],
                0x4a0000,
                48,
            ),
            &mut Fake,
        );
        // Go 1.27: mallocgc hands the size to a specialized allocator: main's own allocation.
        t.add_event(
            &event(
                RecordKind::Alloc,
                ContainerKind::None,
                &[0x1600, 0x1010, 0x2010],
                0x4a0000,
                48,
            ),
            &mut Fake,
        );
        let rows = t.rows(&mut Fake, 10);
        assert_eq!(rows.len(), 2, "{rows:#?}");
        let sites: Vec<&str> = rows
            .iter()
            .map(|r| r.stack.first().map_or("(runtime)", |f| f.function.as_str()))
            .collect();
        assert!(
            sites.contains(&"(runtime)") && sites.contains(&"main.makeThings"),
            "{sites:?}"
        );
    }

    #[test]
    fn the_collectors_and_the_runtimes_own_objects_are_not_the_callers() {
        let mut t = SiteTable::default();
        // runtime.GC starting its mark workers from main.
        let worker = event(
            RecordKind::Alloc,
            ContainerKind::None,
            &[0x1000, 0x1810, 0x1710, 0x2010],
            0x4a0000,
            16,
        );
        // A sudog for a channel wait in main.
        let sudog = event(
            RecordKind::Alloc,
            ContainerKind::None,
            &[0x1000, 0x1910, 0x2010],
            0x4e0000,
            88,
        );
        assert_eq!(t.add_event(&worker, &mut Fake).unwrap().frame_index, None);
        assert_eq!(t.add_event(&sudog, &mut Fake).unwrap().frame_index, None);
        assert!(t.rows(&mut Fake, 10).iter().all(|r| r.stack.is_empty()));
    }

    #[test]
    fn a_stack_with_only_runtime_frames_has_an_empty_site() {
        let mut t = SiteTable::default();
        t.add_event(
            &event(RecordKind::Alloc, ContainerKind::None, &[0x1000, 0x1010], 0x4a0000, 48),
            &mut Fake,
        );
        let rows = t.rows(&mut Fake, 10);
        assert_eq!(rows.len(), 1);
        assert!(rows[0].stack.is_empty());
    }
}
