//! Struct member offsets from DWARF (4 up to Go 1.24, 5 from 1.25; sections SHF_COMPRESSED). DWARF is the
//! authority for runtime struct layouts when present: the version tables in [`super::layout`] are only its stand-in
//! for stripped binaries.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use gimli::{DebugInfoOffset, EndianSlice, LittleEndian};
use object::{Object, ObjectSection};

use super::elf::File;
use super::locals::{FrameLocals, FunctionLocals, LocalVar};
use super::typegraph::{Field, GoTypeDef, Shape, TypeGraph, TypeId};

/// A struct member: its byte offset, and the byte size of its type where DWARF gives one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Member {
    pub offset: u64,
    pub size: Option<u64>,
}

/// struct name → member name → member.
pub(crate) type StructMembers = HashMap<String, HashMap<String, Member>>;

type Dwarf<'a> = gimli::Dwarf<EndianSlice<'a, LittleEndian>>;

/// A decompressed section larger than this is taken as corrupt rather than allocated (a zlib stream can claim,
/// or inflate to, a thousand times its size). The largest Go programs' `.debug_info` is under 100 MiB.
const MAX_SECTION: u64 = 256 << 20;

/// Entries kept of one variable's location list, and the longest expression: Go's compiler writes one entry
/// per range where the variable lives in a register or slot (tens, for the longest functions) and expressions
/// of a few pieces; a list or expression past these is not read further.
const MAX_LOCATIONS: usize = 4096;
const MAX_EXPRESSION: usize = 256;

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

/// What [`program`] reads besides: the location lists of the functions' variables.
const NEEDED_FOR_LOCALS: &[gimli::SectionId] = &[
    gimli::SectionId::DebugInfo,
    gimli::SectionId::DebugAbbrev,
    gimli::SectionId::DebugLoc,
    gimli::SectionId::DebugLocLists,
    gimli::SectionId::DebugAddr,
];

fn load<'a>(file: &File<'a>, id: gimli::SectionId) -> Result<Cow<'a, [u8]>, String> {
    load_from(file, id, NEEDED)
}

fn load_from<'a>(file: &File<'a>, id: gimli::SectionId, needed: &[gimli::SectionId]) -> Result<Cow<'a, [u8]>, String> {
    let section = needed.contains(&id).then(|| file.section_by_name(id.name())).flatten();
    let Some(section) = section else {
        return Ok(Cow::Borrowed(&[]));
    };
    let error = |e: object::Error| format!("{}: {e}", id.name());
    let compressed = section.compressed_data().map_err(error)?;
    if compressed.uncompressed_size > MAX_SECTION {
        return Err(format!("{}: claims {} bytes", id.name(), compressed.uncompressed_size));
    }
    // zlib (what Go's linker writes) inflates into the claimed size and no further; `object`'s zstd reader
    // inflates as far as the stream goes, so a zstd bomb would not stop at the cap.
    if compressed.format == object::CompressionFormat::Zstandard {
        return Err(format!("{}: zstd-compressed DWARF is not read", id.name()));
    }
    compressed.decompress().map_err(error)
}

fn find_structs(dwarf: &Dwarf<'_>, wanted: &[&str]) -> gimli::Result<StructMembers> {
    // Member offsets, with the .debug_info offset of each member's type, whose size is looked up afterwards.
    let mut found: HashMap<String, HashMap<String, (u64, Option<DebugInfoOffset>)>> = HashMap::new();
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
                    Some(gimli::AttributeValue::String(s)) => Some(String::from_utf8_lossy(s.slice()).into_owned()),
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
                    let ty = type_ref(&header, entry.attr_value(gimli::DW_AT_type)?);
                    if let (Some(m), Some(off)) = (name()?, off) {
                        found.entry(s.clone()).or_default().insert(m, (off, ty));
                    }
                }
                _ => {}
            }
        }
        if wanted.iter().all(|w| found.contains_key(*w)) {
            break;
        }
    }
    let mut sizes = TypeSizes::new(dwarf);
    let mut members = StructMembers::new();
    for (s, ms) in found {
        let mut out = HashMap::with_capacity(ms.len());
        for (m, (offset, ty)) in ms {
            let size = ty.and_then(|t| sizes.size(t));
            out.insert(m, Member { offset, size });
        }
        members.insert(s, out);
    }
    Ok(members)
}

/// A `DW_AT_type` value as an offset into .debug_info (Go refers to types across units with DW_FORM_ref_addr).
fn type_ref(
    header: &gimli::UnitHeader<EndianSlice<'_, LittleEndian>>,
    value: Option<gimli::AttributeValue<EndianSlice<'_, LittleEndian>>>,
) -> Option<DebugInfoOffset> {
    match value? {
        gimli::AttributeValue::UnitRef(o) => o.to_debug_info_offset(header),
        gimli::AttributeValue::DebugInfoRef(o) => Some(o),
        _ => None,
    }
}

type Header<'a> = gimli::UnitHeader<EndianSlice<'a, LittleEndian>>;

/// `DW_AT_byte_size` of type DIEs, found by .debug_info offset (through typedefs), cached per type.
struct TypeSizes<'d, 'a> {
    dwarf: &'d Dwarf<'a>,
    headers: Vec<Header<'a>>,
    abbrevs: HashMap<gimli::DebugAbbrevOffset, std::sync::Arc<gimli::Abbreviations>>,
    cache: HashMap<DebugInfoOffset, Option<u64>>,
}

/// Typedef hops followed before giving up (a corrupt file may contain a cycle).
const MAX_TYPEDEFS: usize = 8;

impl<'d, 'a> TypeSizes<'d, 'a> {
    /// Unit headers up to the first unreadable one: a type past it just has no size.
    fn new(dwarf: &'d Dwarf<'a>) -> Self {
        let mut headers = Vec::new();
        let mut units = dwarf.units();
        while let Ok(Some(h)) = units.next() {
            headers.push(h);
        }
        TypeSizes {
            dwarf,
            headers,
            abbrevs: HashMap::new(),
            cache: HashMap::new(),
        }
    }

    fn size(&mut self, ty: DebugInfoOffset) -> Option<u64> {
        if let Some(&s) = self.cache.get(&ty) {
            return s;
        }
        let mut at = ty;
        let mut size = None;
        for _ in 0..MAX_TYPEDEFS {
            match self.lookup(at) {
                Some((Some(s), _)) => {
                    size = Some(s);
                    break;
                }
                Some((None, Some(next))) => at = next,
                _ => break,
            }
        }
        self.cache.insert(ty, size);
        size
    }

    /// The byte size of the type DIE at `off`, or else (for a typedef) the type it names.
    fn lookup(&mut self, off: DebugInfoOffset) -> Option<(Option<u64>, Option<DebugInfoOffset>)> {
        let header = *self.headers.iter().find(|h| off.to_unit_offset(*h).is_some())?;
        let unit_off = off.to_unit_offset(&header)?;
        let abbrev_off = header.debug_abbrev_offset();
        let abbrevs = match self.abbrevs.get(&abbrev_off) {
            Some(a) => a.clone(),
            None => {
                let a = self.dwarf.abbreviations(&header).ok()?;
                self.abbrevs.insert(abbrev_off, a.clone());
                a
            }
        };
        let entry = header.entry(&abbrevs, unit_off).ok()?;
        let size = entry
            .attr(gimli::DW_AT_byte_size)
            .ok()
            .flatten()
            .and_then(|a| a.udata_value());
        Some(match entry.tag() {
            // Go gives pointers no byte size: they are address-sized.
            gimli::DW_TAG_pointer_type if size.is_none() => (Some(u64::from(header.address_size())), None),
            gimli::DW_TAG_typedef => (
                size,
                type_ref(&header, entry.attr_value(gimli::DW_AT_type).ok().flatten()),
            ),
            _ => (size, None),
        })
    }
}

/// A package-level variable: a GC root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalVar {
    /// As Go names it: `main.cache`, `net/http.DefaultServeMux`.
    pub name: String,
    /// Link-time virtual address (add the load bias for a PIE).
    pub addr: u64,
    pub size: u64,
    /// The Go type's name (`[]map[string]int`), where DWARF gives one.
    pub type_name: Option<String>,
    /// Its type in the [`TypeGraph`] read with it.
    pub type_id: Option<TypeId>,
}

/// `DW_OP_addr`: Go gives every package-level variable this location, then the 8-byte address.
const DW_OP_ADDR: u8 = 0x03;
/// `DW_AT_go_kind`, Go's vendor attribute: the `reflect.Kind` of a type DIE.
const DW_AT_GO_KIND: gimli::DwAt = gimli::DwAt(0x2900);

/// A type DIE as read, before its references become [`TypeId`]s.
struct RawType {
    tag: gimli::DwTag,
    name: String,
    size: Option<u64>,
    kind: u8,
    target: Option<DebugInfoOffset>,
    /// Struct members (name, offset, type), or an array's element count (DW_AT_count of its subrange).
    members: Vec<(String, u64, Option<DebugInfoOffset>)>,
    count: Option<u64>,
}

/// A function's variable as read: name, type, and locations by PC range.
type RawLocal = (String, Option<DebugInfoOffset>, Vec<(u64, u64, Vec<u8>)>);

/// What DWARF says of the program: its package-level variables, its types, and its functions' variables.
pub(crate) struct Program {
    pub globals: Vec<GlobalVar>,
    pub types: TypeGraph,
    pub locals: FrameLocals,
}

/// The package-level variables DWARF describes (`DW_TAG_variable` children of a compile unit whose location is a
/// static address) of the packages `keep` accepts, every type, resolved into a graph, and where each function
/// keeps its parameters and variables.
pub(crate) fn program(file: &File<'_>, keep: impl Fn(&str) -> bool) -> Result<Program, String> {
    let sections = gimli::DwarfSections::load(|id| load_from(file, id, NEEDED_FOR_LOCALS))?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let mut scan = ProgramScan {
        types: TypeReader::default(),
        globals: GlobalReader {
            keep,
            found: Vec::new(),
        },
        locals: LocalsReader::default(),
    };
    scan.run(&dwarf).map_err(|e| format!("DWARF: {e}"))?;
    let ProgramScan { types, globals, locals } = scan;
    let graph = type_graph(types.raw, &types.ids);
    Ok(Program {
        globals: globals.resolve(&types.ids, &graph),
        locals: locals.resolve(&types.ids),
        types: graph,
    })
}

/// A DIE as the traversal hands it out.
type Entry<'x, 'a> = gimli::DebuggingInformationEntry<'x, 'x, EndianSlice<'a, LittleEndian>>;

/// One pass over every DIE, handing each to the reader of what it describes: a type (and its members), a
/// package-level variable, or a function (and its variables). Go puts all three directly under the compile unit.
struct ProgramScan<K> {
    types: TypeReader,
    globals: GlobalReader<K>,
    locals: LocalsReader,
}

impl<K: Fn(&str) -> bool> ProgramScan<K> {
    fn run(&mut self, dwarf: &Dwarf<'_>) -> gimli::Result<()> {
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            self.unit(dwarf, header)?;
        }
        Ok(())
    }

    fn unit<'a>(&mut self, dwarf: &Dwarf<'a>, header: Header<'a>) -> gimli::Result<()> {
        let abbrevs = dwarf.abbreviations(&header)?;
        let mut entries = header.entries(&abbrevs);
        let mut unit = Unit {
            dwarf,
            header,
            base: 0,
            addr_base: gimli::DebugAddrBase(0),
        };
        let mut depth = 0isize;
        while let Some((delta, entry)) = entries.next_dfs()? {
            depth += delta;
            let name = die_name(entry)?;
            // Depth says whose a DIE is: a function's variables can sit in lexical blocks at any depth below it, a
            // type's members and subrange are its children.
            match depth {
                0 => unit.read_root(entry)?,
                1 => {
                    self.locals.leave();
                    self.types.leave();
                    self.top_level(&unit, entry, name)?;
                }
                _ if self.locals.inside() => self.locals.child(&unit, entry, depth, name)?,
                2 if self.types.inside() => self.types.child(&unit, entry, name)?,
                _ => {}
            }
        }
        Ok(())
    }

    /// A DIE directly under the compile unit.
    fn top_level(&mut self, unit: &Unit<'_, '_>, entry: &Entry<'_, '_>, name: Option<String>) -> gimli::Result<()> {
        match entry.tag() {
            gimli::DW_TAG_subprogram => self.locals.enter(unit, entry),
            gimli::DW_TAG_variable => self.globals.visit(unit, entry, name),
            tag if TYPE_TAGS.contains(&tag) => self.types.enter(unit, entry, name),
            _ => Ok(()),
        }
    }
}

/// A DIE's `DW_AT_name` (Go writes names inline, as DW_FORM_string).
fn die_name(entry: &Entry<'_, '_>) -> gimli::Result<Option<String>> {
    Ok(match entry.attr_value(gimli::DW_AT_name)? {
        Some(gimli::AttributeValue::String(s)) => Some(String::from_utf8_lossy(s.slice()).into_owned()),
        _ => None,
    })
}

/// The compile unit being read: what its addresses and location lists are relative to.
struct Unit<'d, 'a> {
    dwarf: &'d Dwarf<'a>,
    header: Header<'a>,
    /// The unit's base address and .debug_addr base, from its root DIE.
    base: u64,
    addr_base: gimli::DebugAddrBase,
}

impl Unit<'_, '_> {
    fn read_root(&mut self, entry: &Entry<'_, '_>) -> gimli::Result<()> {
        if let Some(gimli::AttributeValue::DebugAddrBase(b)) = entry.attr_value(gimli::DW_AT_addr_base)? {
            self.addr_base = b;
        }
        self.base = self.address(entry.attr_value(gimli::DW_AT_low_pc)?).unwrap_or(0);
        Ok(())
    }

    /// An address, inline (DWARF 4) or an index into .debug_addr (DWARF 5, Go 1.25+).
    fn address(&self, value: Option<gimli::AttributeValue<EndianSlice<'_, LittleEndian>>>) -> Option<u64> {
        match value {
            Some(gimli::AttributeValue::Addr(a)) => Some(a),
            Some(gimli::AttributeValue::DebugAddrIndex(i)) => self
                .dwarf
                .debug_addr
                .get_address(self.header.address_size(), self.addr_base, i)
                .ok(),
            _ => None,
        }
    }

    /// A variable's locations by PC range: one range covering everything for a single expression.
    fn locations(&self, entry: &Entry<'_, '_>) -> gimli::Result<Vec<(u64, u64, Vec<u8>)>> {
        let off = match entry.attr_value(gimli::DW_AT_location)? {
            Some(gimli::AttributeValue::Exprloc(e)) => return Ok(vec![(0, u64::MAX, e.0.slice().to_vec())]),
            Some(gimli::AttributeValue::LocationListsRef(off)) => off,
            _ => return Ok(Vec::new()),
        };
        let (encoding, debug_addr) = (self.header.encoding(), &self.dwarf.debug_addr);
        let mut list = self
            .dwarf
            .locations
            .locations(off, encoding, self.base, debug_addr, self.addr_base)?;
        let mut v = Vec::new();
        while let Some(l) = list.next()? {
            if v.len() == MAX_LOCATIONS || l.data.0.len() > MAX_EXPRESSION {
                // Past what the compiler writes: the variable is unreadable where the list is cut.
                break;
            }
            v.push((l.range.begin, l.range.end, l.data.0.slice().to_vec()));
        }
        Ok(v)
    }
}

/// The type DIEs [`type_graph`] makes types of.
const TYPE_TAGS: &[gimli::DwTag] = &[
    gimli::DW_TAG_base_type,
    gimli::DW_TAG_unspecified_type,
    gimli::DW_TAG_pointer_type,
    gimli::DW_TAG_subroutine_type,
    gimli::DW_TAG_structure_type,
    gimli::DW_TAG_array_type,
    gimli::DW_TAG_typedef,
];

/// Type DIEs as read, and the DIE offset of each, which references resolve against.
#[derive(Default)]
struct TypeReader {
    raw: Vec<RawType>,
    ids: HashMap<DebugInfoOffset, TypeId>,
    /// Whether the last top-level DIE was a type, whose children (members, subrange) are being read.
    open: bool,
}

impl TypeReader {
    fn enter(&mut self, unit: &Unit<'_, '_>, entry: &Entry<'_, '_>, name: Option<String>) -> gimli::Result<()> {
        let Some(off) = entry.offset().to_debug_info_offset(&unit.header) else {
            return Ok(());
        };
        self.ids.insert(off, self.raw.len());
        self.raw.push(RawType {
            tag: entry.tag(),
            name: name.unwrap_or_default(),
            size: entry.attr(gimli::DW_AT_byte_size)?.and_then(|a| a.udata_value()),
            kind: entry
                .attr(DW_AT_GO_KIND)?
                .and_then(|a| a.udata_value())
                .map_or(0, |k| k as u8),
            target: type_ref(&unit.header, entry.attr_value(gimli::DW_AT_type)?),
            members: Vec::new(),
            count: None,
        });
        self.open = true;
        Ok(())
    }

    fn inside(&self) -> bool {
        self.open
    }

    /// A DIE one level below the type: a struct member, or an array's subrange.
    fn child(&mut self, unit: &Unit<'_, '_>, entry: &Entry<'_, '_>, name: Option<String>) -> gimli::Result<()> {
        let t = self.raw.last_mut().expect("open follows a push");
        match entry.tag() {
            gimli::DW_TAG_member => {
                let off = entry
                    .attr(gimli::DW_AT_data_member_location)?
                    .and_then(|a| a.udata_value());
                if let (Some(n), Some(off)) = (name, off) {
                    t.members
                        .push((n, off, type_ref(&unit.header, entry.attr_value(gimli::DW_AT_type)?)));
                }
            }
            gimli::DW_TAG_subrange_type => {
                t.count = entry.attr(gimli::DW_AT_count)?.and_then(|a| a.udata_value());
            }
            _ => {}
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.open = false;
    }
}

/// Package-level variables at static addresses, with their type's DIE offset.
struct GlobalReader<K> {
    keep: K,
    found: Vec<(String, u64, Option<DebugInfoOffset>)>,
}

impl<K: Fn(&str) -> bool> GlobalReader<K> {
    fn visit(&mut self, unit: &Unit<'_, '_>, entry: &Entry<'_, '_>, name: Option<String>) -> gimli::Result<()> {
        let Some(name) = name.filter(|n| (self.keep)(n)) else {
            return Ok(());
        };
        let Some(gimli::AttributeValue::Exprloc(expr)) = entry.attr_value(gimli::DW_AT_location)? else {
            return Ok(());
        };
        let addr = match expr.0.slice() {
            [DW_OP_ADDR, a @ ..] if a.len() == 8 => u64::from_le_bytes(a.try_into().unwrap_or_default()),
            _ => return Ok(()),
        };
        let ty = type_ref(&unit.header, entry.attr_value(gimli::DW_AT_type)?);
        self.found.push((name, addr, ty));
        Ok(())
    }

    /// The variables whose type was read; a variable's size is its type's.
    fn resolve(self, ids: &HashMap<DebugInfoOffset, TypeId>, graph: &TypeGraph) -> Vec<GlobalVar> {
        let global = |(name, addr, ty): (String, u64, Option<DebugInfoOffset>)| {
            let id = ids.get(&ty?).copied()?;
            let t = graph.get(id)?;
            Some(GlobalVar {
                name,
                addr,
                size: t.size,
                type_name: Some(t.name.clone()),
                type_id: Some(id),
            })
        };
        self.found.into_iter().filter_map(global).collect()
    }
}

/// Each function's range and variables, by entry address.
#[derive(Default)]
struct LocalsReader {
    functions: BTreeMap<u64, (u64, Vec<RawLocal>)>,
    /// The entry of the function whose DIE's subtree is being read.
    current: Option<u64>,
    /// The depth of an inlined call inside it, whose subtree is skipped.
    inlined: Option<isize>,
}

impl LocalsReader {
    fn enter(&mut self, unit: &Unit<'_, '_>, entry: &Entry<'_, '_>) -> gimli::Result<()> {
        let Some(low) = unit.address(entry.attr_value(gimli::DW_AT_low_pc)?) else {
            return Ok(());
        };
        let high = match entry.attr_value(gimli::DW_AT_high_pc)? {
            Some(v @ (gimli::AttributeValue::Addr(_) | gimli::AttributeValue::DebugAddrIndex(_))) => {
                unit.address(Some(v)).unwrap_or(low)
            }
            // DWARF 4 and 5 also allow the length from low_pc.
            Some(v) => low + v.udata_value().unwrap_or(0),
            None => return Ok(()),
        };
        self.functions.insert(low, (high, Vec::new()));
        self.current = Some(low);
        Ok(())
    }

    fn inside(&self) -> bool {
        self.current.is_some()
    }

    /// A DIE anywhere below the function: its parameters and variables, not those of calls inlined into it.
    fn child(
        &mut self,
        unit: &Unit<'_, '_>,
        entry: &Entry<'_, '_>,
        depth: isize,
        name: Option<String>,
    ) -> gimli::Result<()> {
        let Some(entry_pc) = self.current else {
            return Ok(());
        };
        match self.inlined {
            Some(d) if depth > d => return Ok(()),
            _ => self.inlined = None,
        }
        match entry.tag() {
            gimli::DW_TAG_inlined_subroutine => self.inlined = Some(depth),
            gimli::DW_TAG_variable | gimli::DW_TAG_formal_parameter => {
                let locations = unit.locations(entry)?;
                if let (Some(n), false) = (name, locations.is_empty()) {
                    let ty = type_ref(&unit.header, entry.attr_value(gimli::DW_AT_type)?);
                    self.functions.entry(entry_pc).or_default().1.push((n, ty, locations));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.current = None;
        self.inlined = None;
    }

    /// The variables whose type was read.
    fn resolve(self, ids: &HashMap<DebugInfoOffset, TypeId>) -> FrameLocals {
        let var = |(name, ty, locations): RawLocal| {
            Some(LocalVar {
                name,
                ty: *ids.get(&ty?)?,
                locations,
            })
        };
        let functions = self.functions.into_iter().map(|(entry, (high_pc, vars))| {
            let vars = vars.into_iter().filter_map(var).collect();
            (entry, FunctionLocals { high_pc, vars })
        });
        FrameLocals::new(functions.collect())
    }
}

/// Turns the DIEs' references into ids. A reference to a DIE that is not a type makes the referrer Plain (or an
/// untyped pointer): the walk then treats its words conservatively.
fn type_graph(raw: Vec<RawType>, ids: &HashMap<DebugInfoOffset, TypeId>) -> TypeGraph {
    let id = |off: Option<DebugInfoOffset>| off.and_then(|o| ids.get(&o).copied());
    let elem_size = |elem: TypeId| raw.get(elem).and_then(|t| t.size).filter(|&s| s > 0);
    let types = raw
        .iter()
        .map(|t| {
            let shape = match t.tag {
                gimli::DW_TAG_pointer_type => Shape::Pointer { to: id(t.target) },
                gimli::DW_TAG_subroutine_type => Shape::Func,
                gimli::DW_TAG_typedef => id(t.target).map_or(Shape::Plain, Shape::Typedef),
                gimli::DW_TAG_structure_type => Shape::Struct {
                    fields: t
                        .members
                        .iter()
                        .filter_map(|(name, offset, ty)| {
                            Some(Field {
                                name: name.clone(),
                                offset: *offset,
                                ty: id(*ty)?,
                            })
                        })
                        .collect(),
                },
                gimli::DW_TAG_array_type => match id(t.target) {
                    Some(elem) => {
                        let count = t.count.or_else(|| Some(t.size? / elem_size(elem)?)).unwrap_or(0);
                        Shape::Array { elem, count }
                    }
                    None => Shape::Plain,
                },
                _ => Shape::Plain,
            };
            // Go gives pointers and funcs no byte size: they are address-sized.
            let size = match shape {
                Shape::Pointer { .. } | Shape::Func => t.size.unwrap_or(8),
                _ => t.size.unwrap_or(0),
            };
            GoTypeDef {
                name: t.name.clone(),
                size,
                kind: t.kind,
                shape,
            }
        })
        .collect();
    TypeGraph::new(types)
}

/// Values of the `DW_TAG_constant` DIEs whose name starts with `prefix` (Go writes package constants as
/// `runtime.waitReasonSleep` and so on, `DW_AT_const_value` as sdata). The tests check tables against them.
#[cfg(test)]
pub(crate) fn constants(file: &File<'_>, prefix: &str) -> Result<HashMap<String, i64>, String> {
    let sections = gimli::DwarfSections::load(|id| load(file, id))?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let find = || -> gimli::Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let abbrevs = dwarf.abbreviations(&header)?;
            let mut entries = header.entries(&abbrevs);
            while let Some((_, entry)) = entries.next_dfs()? {
                if entry.tag() != gimli::DW_TAG_constant {
                    continue;
                }
                let Some(gimli::AttributeValue::String(name)) = entry.attr_value(gimli::DW_AT_name)? else {
                    continue;
                };
                let name = String::from_utf8_lossy(name.slice());
                if !name.starts_with(prefix) {
                    continue;
                }
                let value = entry.attr(gimli::DW_AT_const_value)?.and_then(|a| {
                    a.sdata_value()
                        .or_else(|| a.udata_value().and_then(|u| i64::try_from(u).ok()))
                });
                if let Some(v) = value {
                    out.insert(name.into_owned(), v);
                }
            }
        }
        Ok(out)
    };
    find().map_err(|e| format!("DWARF: {e}"))
}

/// The names of a function's parameters in order, results excluded (Go marks those with
/// `DW_AT_variable_parameter`). The tests check argument registers against them.
#[cfg(test)]
pub(crate) fn parameters(file: &File<'_>, function: &str) -> Result<Vec<String>, String> {
    let sections = gimli::DwarfSections::load(|id| load(file, id))?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let name_of =
        |entry: &gimli::DebuggingInformationEntry<EndianSlice<LittleEndian>>| -> gimli::Result<Option<String>> {
            Ok(match entry.attr_value(gimli::DW_AT_name)? {
                Some(gimli::AttributeValue::String(n)) => Some(String::from_utf8_lossy(n.slice()).into_owned()),
                _ => None,
            })
        };
    let find = || -> gimli::Result<Option<Vec<String>>> {
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            let abbrevs = dwarf.abbreviations(&header)?;
            let mut entries = header.entries(&abbrevs);
            // Depth relative to the function's DIE while inside it.
            let mut inside: Option<isize> = None;
            let mut params = Vec::new();
            while let Some((delta, entry)) = entries.next_dfs()? {
                if let Some(depth) = inside.as_mut() {
                    *depth += delta;
                    if *depth <= 0 {
                        return Ok(Some(params));
                    }
                    let result = matches!(
                        entry.attr_value(gimli::DW_AT_variable_parameter)?,
                        Some(gimli::AttributeValue::Flag(true))
                    );
                    if *depth == 1 && entry.tag() == gimli::DW_TAG_formal_parameter && !result {
                        params.extend(name_of(entry)?);
                    }
                } else if entry.tag() == gimli::DW_TAG_subprogram && name_of(entry)?.as_deref() == Some(function) {
                    inside = Some(0);
                }
            }
            if inside.is_some() {
                return Ok(Some(params));
            }
        }
        Ok(None)
    };
    find()
        .map_err(|e| format!("DWARF: {e}"))?
        .ok_or_else(|| format!("no DWARF subprogram {function}"))
}
