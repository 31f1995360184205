//! Typed scanning: the pointer words of a value of a DWARF type, each with the type it points to and its Go path
//! (`.Account`, `[3].slots[5].elem`), so that a walk from a typed root follows only real pointers and names every
//! step. Computed once per type and cached for the walk.

use std::collections::HashMap;
use std::rc::Rc;

use crate::gobin::{Shape, TypeGraph, TypeId, KIND_SLICE, KIND_STRING};

/// A pointer word in a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PointerSlot {
    pub offset: u64,
    /// The pointee's type; None for `unsafe.Pointer` and func values (a closure), scanned conservatively.
    pub to: Option<TypeId>,
    /// The Go path from the value to the pointer: `.Buf`, `.slots[5].elem`; empty when the value is the pointer.
    pub path: String,
    /// A Swiss map's `dirPtr` points at one group instead of a directory while the map is small (`dirLen` is 0,
    /// `internal/runtime/maps/map.go@go1.27.3:194-214`): the offset of `dirLen` in the value, and the group type.
    pub small_map: Option<(u64, TypeId)>,
    /// A slice's data pointer: its length and capacity (in elements) are the next two words.
    pub slice_data: bool,
}

/// The pointer words of one value of a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueSlots {
    pub size: u64,
    pub slots: Vec<PointerSlot>,
}

/// Pointer words listed per type at most; a type with more (a huge array of pointers) is scanned conservatively.
const MAX_SLOTS: usize = 4096;

/// [`ValueSlots`] per type, computed on first use.
pub struct Slots<'g> {
    graph: &'g TypeGraph,
    cache: HashMap<TypeId, Option<Rc<ValueSlots>>>,
}

impl<'g> Slots<'g> {
    /// The type graph the slots are read from.
    pub fn types(&self) -> &'g TypeGraph {
        self.graph
    }

    pub fn new(graph: &'g TypeGraph) -> Self {
        Slots {
            graph,
            cache: HashMap::new(),
        }
    }

    pub fn graph(&self) -> &'g TypeGraph {
        self.graph
    }

    /// The pointer words of a value of `id`; None when the type has no size or too many pointers to list.
    pub fn of(&mut self, id: TypeId) -> Option<Rc<ValueSlots>> {
        let graph = self.graph;
        self.cache
            .entry(id)
            .or_insert_with(|| {
                let size = graph.get(id)?.size;
                let mut slots = Vec::new();
                let mut flat = Flattening {
                    graph,
                    path: String::new(),
                    open: Vec::new(),
                    out: &mut slots,
                };
                (size > 0 && flat.value(id, 0)).then_some(())?;
                // A pointer word lies within its value: a field DWARF places past the end is corrupt, and dropping
                // it keeps a scan's work per value bounded by the value's words.
                slots.retain(|s| s.offset.checked_add(8).is_some_and(|end| end <= size));
                Some(Rc::new(ValueSlots { size, slots }))
            })
            .clone()
    }
}

/// Types nested in one another (a struct's field's array's element …) followed at most: Go's deepest real types
/// nest a few dozen levels; DWARF that nests deeper is corrupt, and the bound keeps the recursion's stack small.
const MAX_NESTING: usize = 64;

/// One flattening of a type into its pointer words: the Go path of the value being flattened, and the types
/// flattened around it (a value cannot contain itself: DWARF that says so is corrupt).
struct Flattening<'g, 'o> {
    graph: &'g TypeGraph,
    path: String,
    open: Vec<TypeId>,
    out: &'o mut Vec<PointerSlot>,
}

impl Flattening<'_, '_> {
    /// Appends the pointer words of a value of `id` at byte `at`, named from `path`; false past [`MAX_SLOTS`], past
    /// [`MAX_NESTING`], for a type that contains itself, or for an offset past the address space: the type is then
    /// unreadable, and values of it are scanned as untyped.
    fn value(&mut self, id: TypeId, at: u64) -> bool {
        let graph = self.graph;
        let resolved = graph.resolve(id);
        if self.open.len() >= MAX_NESTING || self.open.contains(&resolved) {
            return false;
        }
        match graph.shape(resolved) {
            Shape::Plain | Shape::Typedef(_) => {}
            Shape::Pointer { to } => self.push(at, *to),
            Shape::Func => self.push(at, None),
            Shape::Struct { fields } => {
                let Some(t) = graph.get(resolved) else { return true };
                // A slice's or string's data pointer, an interface's words: named by the field that holds them.
                let anonymous = t.kind == KIND_SLICE
                    || t.kind == KIND_STRING
                    || t.name == "runtime.iface"
                    || t.name == "runtime.eface";
                let small_map = small_map_group(graph, resolved);
                self.open.push(resolved);
                for f in fields {
                    let len = self.path.len();
                    if !anonymous {
                        self.path.push('.');
                        self.path.push_str(&f.name);
                    }
                    let before = self.out.len();
                    let ok = at.checked_add(f.offset).is_some_and(|at| self.value(f.ty, at));
                    // A field that is one pointer word: a map header's directory, a slice's data.
                    if ok && self.out.len() == before + 1 {
                        if f.name == "dirPtr" && small_map.is_some() {
                            self.out[before].small_map = small_map;
                        }
                        self.out[before].slice_data |= t.kind == KIND_SLICE && f.name == "array";
                    }
                    self.path.truncate(len);
                    if !ok {
                        return false;
                    }
                }
                self.open.pop();
            }
            Shape::Array { elem, count } => {
                let size = graph.get(*elem).map_or(0, |e| e.size);
                self.open.push(resolved);
                for i in 0..*count {
                    let len = self.path.len();
                    self.path.push_str(&format!("[{i}]"));
                    let before = self.out.len();
                    let ok = i
                        .checked_mul(size)
                        .and_then(|o| at.checked_add(o))
                        .is_some_and(|at| self.value(*elem, at));
                    self.path.truncate(len);
                    if !ok {
                        return false;
                    }
                    if self.out.len() == before {
                        break; // no pointers in the element: none in the others
                    }
                }
                self.open.pop();
            }
        }
        self.out.len() <= MAX_SLOTS
    }

    fn push(&mut self, offset: u64, to: Option<TypeId>) {
        self.out.push(PointerSlot {
            offset,
            to,
            path: self.path.clone(),
            small_map: None,
            slice_data: false,
        });
    }
}

/// The map entry a pointer slot of a map's group or bucket is in, given the slot's path in the value: its key's
/// offset in the value and type, and whether the slot is in the key or the value. A Swiss group's slot s is
/// `.slots[s].key…`/`.slots[s].elem…`, a classic bucket's `.keys[s]…`/`.values[s]…`. None for a slot of anything
/// else.
pub fn map_key(graph: &TypeGraph, value: TypeId, path: &str) -> Option<(u64, TypeId, EntryPart)> {
    let entry = |field: &str| -> Option<(usize, usize)> {
        let i = path.find(field)?;
        Some((i, i + path[i..].find(']')? + 1))
    };
    let (key_path, part) = if let Some((_, end)) = entry(".slots[") {
        let part = if path[end..].starts_with(".key") {
            EntryPart::Key
        } else {
            EntryPart::Value
        };
        (format!("{}.key", &path[..end]), part)
    } else if let Some((_, end)) = entry(".keys[") {
        (path[..end].to_string(), EntryPart::Key)
    } else {
        let (i, end) = entry(".values[")?;
        (
            format!("{}.keys{}", &path[..i], &path[i + ".values".len()..end]),
            EntryPart::Value,
        )
    };
    let (offset, ty) = resolve_path(graph, value, &key_path)?;
    Some((offset, ty, part))
}

/// Which part of a map entry a pointer is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryPart {
    Key,
    Value,
}

/// The offset and type of the Go path `path` (`.slots[3].key`) in a value of `ty`.
fn resolve_path(graph: &TypeGraph, mut ty: TypeId, mut path: &str) -> Option<(u64, TypeId)> {
    let mut at = 0u64;
    while !path.is_empty() {
        let resolved = graph.resolve(ty);
        if let Some(rest) = path.strip_prefix('.') {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let f = graph.field(resolved, &rest[..end])?;
            (at, ty, path) = (at.checked_add(f.offset)?, f.ty, &rest[end..]);
        } else {
            let rest = path.strip_prefix('[')?;
            let end = rest.find(']')?;
            let i: u64 = rest[..end].parse().ok()?;
            let Shape::Array { elem, count } = graph.shape(resolved) else {
                return None;
            };
            let size = graph.get(graph.resolve(*elem))?.size;
            (at, ty, path) = (
                at.checked_add(i.checked_mul(size).filter(|_| i < *count)?)?,
                *elem,
                &rest[end + 1..],
            );
        }
    }
    Some((at, ty))
}

/// For a Swiss map header (`map<K,V>`: `dirPtr **table<K,V>`, `dirLen`): the offset of `dirLen` and the group
/// type (`table<K,V>.groups.data`'s pointee) that `dirPtr` points to while the map is small.
fn small_map_group(graph: &TypeGraph, map: TypeId) -> Option<(u64, TypeId)> {
    let dir_len = graph.field(map, "dirLen")?.offset;
    let table = graph.pointee(graph.pointee(graph.field(map, "dirPtr")?.ty)?)?;
    let groups = graph.field(table, "groups")?.ty;
    Some((dir_len, graph.pointee(graph.field(groups, "data")?.ty)?))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::gobin::{Field, GoTypeDef};

    fn def(name: &str, size: u64, kind: u8, shape: Shape) -> GoTypeDef {
        GoTypeDef {
            name: name.into(),
            size,
            kind,
            shape,
        }
    }

    fn field(name: &str, offset: u64, ty: TypeId) -> Field {
        Field {
            name: name.into(),
            offset,
            ty,
        }
    }

    /// `main.Tenant{Name string; Account *Account}`, `Account{ID int; Profile *Profile}`,
    /// `Profile{Score int; Avatar []byte}`, a `map<int,*main.Tenant>` with its table and group, and `[4]*Tenant`.
    pub(crate) fn graph() -> TypeGraph {
        TypeGraph::new(vec![
            /* 0 */ def("int", 8, 2, Shape::Plain),
            /* 1 */ def("uint8", 1, 8, Shape::Plain),
            /* 2 */ def("*uint8", 8, 22, Shape::Pointer { to: Some(1) }),
            /* 3 */
            def(
                "string",
                16,
                KIND_STRING,
                Shape::Struct {
                    fields: vec![field("str", 0, 2), field("len", 8, 0)],
                },
            ),
            /* 4 */
            def(
                "[]uint8",
                24,
                KIND_SLICE,
                Shape::Struct {
                    fields: vec![field("array", 0, 2), field("len", 8, 0), field("cap", 16, 0)],
                },
            ),
            /* 5 */
            def(
                "main.Profile",
                32,
                25,
                Shape::Struct {
                    fields: vec![field("Score", 0, 0), field("Avatar", 8, 4)],
                },
            ),
            /* 6 */ def("*main.Profile", 8, 22, Shape::Pointer { to: Some(5) }),
            /* 7 */
            def(
                "main.Account",
                16,
                25,
                Shape::Struct {
                    fields: vec![field("ID", 0, 0), field("Profile", 8, 6)],
                },
            ),
            /* 8 */ def("*main.Account", 8, 22, Shape::Pointer { to: Some(7) }),
            /* 9 */
            def(
                "main.Tenant",
                24,
                25,
                Shape::Struct {
                    fields: vec![field("Name", 0, 3), field("Account", 16, 8)],
                },
            ),
            /* 10 */ def("*main.Tenant", 8, 22, Shape::Pointer { to: Some(17) }),
            /* 11 */ def("[4]*main.Tenant", 32, 17, Shape::Array { elem: 10, count: 4 }),
            /* 12 */
            def(
                "noalg.map.group[int]*main.Tenant",
                136,
                25,
                Shape::Struct {
                    fields: vec![field("ctrl", 0, 0), field("slots", 8, 18)],
                },
            ),
            /* 13 */ def("*group", 8, 0, Shape::Pointer { to: Some(12) }),
            /* 14 */
            def(
                "groupReference<int,*main.Tenant>",
                16,
                25,
                Shape::Struct {
                    fields: vec![field("data", 0, 13), field("lengthMask", 8, 0)],
                },
            ),
            /* 15 */
            def(
                "table<int,*main.Tenant>",
                32,
                25,
                Shape::Struct {
                    fields: vec![field("used", 0, 0), field("groups", 16, 14)],
                },
            ),
            /* 16 */
            def(
                "map<int,*main.Tenant>",
                48,
                25,
                Shape::Struct {
                    fields: vec![field("used", 0, 0), field("dirPtr", 16, 20), field("dirLen", 24, 0)],
                },
            ),
            /* 17 */ def("main.Tenant", 0, 0, Shape::Typedef(9)),
            /* 18 */
            def(
                "[8]struct { key int; elem *main.Tenant }",
                128,
                17,
                Shape::Array { elem: 21, count: 8 },
            ),
            /* 19 */ def("*table<int,*main.Tenant>", 8, 0, Shape::Pointer { to: Some(15) }),
            /* 20 */ def("**table<int,*main.Tenant>", 8, 0, Shape::Pointer { to: Some(19) }),
            /* 21 */
            def(
                "struct { key int; elem *main.Tenant }",
                16,
                25,
                Shape::Struct {
                    fields: vec![field("key", 0, 0), field("elem", 8, 10)],
                },
            ),
            /* 22 */ def("[8]int", 64, 17, Shape::Array { elem: 0, count: 8 }),
            /* 23 */ def("[8]*main.Tenant", 64, 17, Shape::Array { elem: 10, count: 8 }),
            /* 24 */
            def(
                "noalg.map.bucket[int]*main.Tenant",
                144,
                25,
                Shape::Struct {
                    fields: vec![
                        field("tophash", 0, 0),
                        field("keys", 8, 22),
                        field("values", 72, 23),
                        field("overflow", 136, 2),
                    ],
                },
            ),
        ])
    }

    #[test]
    fn pointer_words_are_named_by_go_paths() {
        let g = graph();
        let mut slots = Slots::new(&g);
        let tenant = slots.of(17).unwrap();
        assert_eq!(tenant.size, 24, "a typedef has its underlying size");
        let names: Vec<(u64, &str, Option<TypeId>)> =
            tenant.slots.iter().map(|s| (s.offset, s.path.as_str(), s.to)).collect();
        assert_eq!(
            names,
            [(0, ".Name", Some(1)), (16, ".Account", Some(7))],
            "a string's data pointer is named by its field"
        );
        let profile = slots.of(5).unwrap();
        assert_eq!(
            (
                profile.slots[0].offset,
                profile.slots[0].path.as_str(),
                profile.slots[0].slice_data
            ),
            (8, ".Avatar", true)
        );
        assert!(!tenant.slots[0].slice_data, "a string's length is not a slice's");
        let array = slots.of(11).unwrap();
        assert_eq!(
            array.slots.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
            ["[0]", "[1]", "[2]", "[3]"]
        );
        assert!(slots.of(0).unwrap().slots.is_empty(), "an int has no pointers");
    }

    #[test]
    fn a_map_entry_slot_finds_its_key() {
        let g = graph();
        assert_eq!(
            map_key(&g, 12, ".slots[5].elem"),
            Some((8 + 5 * 16, 0, EntryPart::Value)),
            "the Swiss slot's key field"
        );
        assert_eq!(map_key(&g, 12, ".slots[5].key"), Some((8 + 5 * 16, 0, EntryPart::Key)));
        assert_eq!(map_key(&g, 9, ".Account"), None);
        assert_eq!(map_key(&g, 12, ".slots[9].elem"), None, "past the array");
        assert_eq!(
            map_key(&g, 24, ".values[3]"),
            Some((8 + 3 * 8, 0, EntryPart::Value)),
            "a classic bucket's keys array"
        );
        assert_eq!(map_key(&g, 24, ".keys[3]"), Some((8 + 3 * 8, 0, EntryPart::Key)));
    }

    #[test]
    fn a_swiss_map_header_knows_its_small_form() {
        let g = graph();
        let mut slots = Slots::new(&g);
        let header = slots.of(16).unwrap();
        assert_eq!(header.slots.len(), 1);
        let dir = &header.slots[0];
        assert_eq!(
            (dir.offset, dir.path.as_str(), dir.to, dir.small_map),
            (16, ".dirPtr", Some(19), Some((24, 12)))
        );
        let group = slots.of(12).unwrap();
        assert_eq!(group.slots.len(), 8);
        assert_eq!(
            (group.slots[5].offset, group.slots[5].path.as_str()),
            (8 + 5 * 16 + 8, ".slots[5].elem")
        );
    }

    #[test]
    fn a_type_that_contains_itself_is_unreadable_not_a_stack_overflow() {
        let node = |name: &str, fields| def(name, 16, 25, Shape::Struct { fields });
        let g = TypeGraph::new(vec![
            /* 0 */ def("int", 8, 2, Shape::Plain),
            /* 1 */ def("*int", 8, 22, Shape::Pointer { to: Some(0) }),
            // A struct with itself as a member, after a pointer (so the recursion pushes a slot each level).
            /* 2 */
            node("main.Self", vec![field("p", 0, 1), field("again", 8, 2)]),
            // The same through a chain: A holds B, B holds [1]A.
            /* 3 */
            node("main.A", vec![field("p", 0, 1), field("b", 8, 4)]),
            /* 4 */ node("main.B", vec![field("as", 0, 5)]),
            /* 5 */ def("[1]main.A", 16, 17, Shape::Array { elem: 3, count: 1 }),
            // Through a typedef of itself, and an array of itself.
            /* 6 */
            node("main.T", vec![field("t", 0, 7)]),
            /* 7 */ def("main.T", 0, 0, Shape::Typedef(6)),
            /* 8 */ def("[2]self", 16, 17, Shape::Array { elem: 8, count: 2 }),
            // A struct that only points to itself is fine: a pointer is not followed.
            /* 9 */
            node("main.List", vec![field("next", 0, 10), field("v", 8, 0)]),
            /* 10 */ def("*main.List", 8, 22, Shape::Pointer { to: Some(9) }),
        ]);
        let mut slots = Slots::new(&g);
        for id in [2, 3, 4, 5, 6, 7, 8] {
            assert_eq!(slots.of(id), None, "{}", g.get(id).unwrap().name);
        }
        let list = slots.of(9).unwrap();
        assert_eq!((list.slots.len(), list.slots[0].to), (1, Some(9)));
    }

    #[test]
    fn nesting_deeper_than_go_writes_is_unreadable() {
        // Struct i holds struct i+1, down to a pointer: 100 levels.
        let mut types = vec![def("*int", 8, 22, Shape::Pointer { to: None })];
        types.extend((1..=100).map(|i| {
            let inner = if i == 100 { 0 } else { i + 1 };
            def(
                &format!("main.L{i}"),
                8,
                25,
                Shape::Struct {
                    fields: vec![field("x", 0, inner)],
                },
            )
        }));
        let g = TypeGraph::new(types);
        let mut slots = Slots::new(&g);
        assert_eq!(slots.of(1), None, "100 levels");
        assert_eq!(slots.of(100 - MAX_NESTING + 2).map(|v| v.slots.len()), Some(1));
    }

    #[test]
    fn offsets_past_the_value_or_the_address_space_are_dropped() {
        let g = TypeGraph::new(vec![
            /* 0 */ def("*int", 8, 22, Shape::Pointer { to: None }),
            // Fields DWARF places at the struct's end and at the end of the address space.
            /* 1 */
            def(
                "main.Lies",
                16,
                25,
                Shape::Struct {
                    fields: vec![field("ok", 8, 0), field("past", 16, 0), field("far", u64::MAX - 3, 0)],
                },
            ),
            // The same inside another struct: the far field's offset there wraps the address space.
            /* 2 */
            def(
                "main.Outer",
                32,
                25,
                Shape::Struct {
                    fields: vec![field("l", 16, 1)],
                },
            ),
        ]);
        let mut slots = Slots::new(&g);
        let lies = slots.of(1).unwrap();
        assert_eq!(
            lies.slots.iter().map(|s| s.path.as_str()).collect::<Vec<_>>(),
            [".ok"],
            "only the word within the value"
        );
        assert_eq!(slots.of(2), None, "an offset past the address space");
        assert_eq!(resolve_path(&g, 2, ".l.far"), None);
        assert_eq!(resolve_path(&g, 2, ".l.ok"), Some((24, 0)));
    }
}
