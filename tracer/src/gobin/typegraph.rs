//! The program's Go types as DWARF describes them, resolved into a graph a heap walk can follow: which words of a
//! value are pointers, and to what. Go's linker writes every type once, named as Go spells it (`*main.Session`,
//! `[]uint8`), and synthesizes the map internals it does not otherwise describe (`hash<K,V>`/`bucket<K,V>` up to
//! 1.23, `map<K,V>`/`table<K,V>`/`groupReference<K,V>` since the Swiss tables of 1.24), so a typed walk can name
//! every step from a package-level variable down to a map's value.

use std::collections::HashMap;

/// Index of a type in a [`TypeGraph`].
pub type TypeId = usize;

/// `reflect.Kind` values Go writes as `DW_AT_go_kind`, where a walk needs them.
pub const KIND_SLICE: u8 = 23;
pub const KIND_STRING: u8 = 24;
/// `int` … `int64`, and `uint` … `uintptr`.
pub const KINDS_SIGNED: std::ops::RangeInclusive<u8> = 2..=6;
pub const KINDS_UNSIGNED: std::ops::RangeInclusive<u8> = 7..=12;

/// What a value of the type holds, as far as pointers go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Numbers, booleans, and anything DWARF did not describe: no pointers.
    Plain,
    /// A pointer; `to` is None for `unsafe.Pointer` (and a pointee DWARF does not describe).
    Pointer {
        to: Option<TypeId>,
    },
    /// A func value: a pointer to a closure (its code pointer and captured variables have no DWARF type).
    Func,
    Struct {
        fields: Vec<Field>,
    },
    Array {
        elem: TypeId,
        count: u64,
    },
    /// A named type: its underlying type.
    Typedef(TypeId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u64,
    pub ty: TypeId,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTypeDef {
    pub name: String,
    /// Bytes of one value (a typedef's is its underlying type's).
    pub size: u64,
    /// `DW_AT_go_kind`, 0 where absent.
    pub kind: u8,
    pub shape: Shape,
}

/// Typedef hops followed before giving up (a corrupt file may contain a cycle).
const MAX_TYPEDEFS: usize = 8;

#[derive(Clone, Debug, Default)]
pub struct TypeGraph {
    types: Vec<GoTypeDef>,
    by_name: HashMap<String, TypeId>,
}

impl TypeGraph {
    /// Takes the types with their references already turned into ids; fills in typedef sizes and the name index
    /// (a name written twice, as Go does for a named struct and its typedef, maps to the first).
    pub fn new(mut types: Vec<GoTypeDef>) -> Self {
        for id in 0..types.len() {
            if let Shape::Typedef(_) = types[id].shape {
                let mut at = id;
                for _ in 0..MAX_TYPEDEFS {
                    match types[at].shape {
                        Shape::Typedef(next) if next < types.len() => at = next,
                        _ => break,
                    }
                }
                types[id].size = types[at].size;
            }
        }
        let mut by_name = HashMap::with_capacity(types.len());
        for (id, t) in types.iter().enumerate() {
            by_name.entry(t.name.clone()).or_insert(id);
        }
        TypeGraph { types, by_name }
    }

    pub fn get(&self, id: TypeId) -> Option<&GoTypeDef> {
        self.types.get(id)
    }

    pub fn by_name(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name).copied()
    }

    /// The type under any typedefs.
    pub fn resolve(&self, id: TypeId) -> TypeId {
        let mut at = id;
        for _ in 0..MAX_TYPEDEFS {
            match self.types.get(at).map(|t| &t.shape) {
                Some(Shape::Typedef(next)) => at = *next,
                _ => break,
            }
        }
        at
    }

    /// The resolved shape of `id` (Plain for an unknown id).
    pub fn shape(&self, id: TypeId) -> &Shape {
        self.types.get(self.resolve(id)).map_or(&Shape::Plain, |t| &t.shape)
    }

    pub fn field(&self, id: TypeId, name: &str) -> Option<&Field> {
        match self.shape(id) {
            Shape::Struct { fields } => fields.iter().find(|f| f.name == name),
            _ => None,
        }
    }

    /// What a pointer type points to.
    pub fn pointee(&self, id: TypeId) -> Option<TypeId> {
        match self.shape(id) {
            Shape::Pointer { to } => *to,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typedef_cycles_end() {
        let typedef = |name: &str, to| GoTypeDef {
            name: name.into(),
            size: 0,
            kind: 0,
            shape: Shape::Typedef(to),
        };
        // A names B, B names A; C names itself; D names a type that is not there.
        let g = TypeGraph::new(vec![typedef("A", 1), typedef("B", 0), typedef("C", 2), typedef("D", 9)]);
        for id in 0..4 {
            assert!(matches!(g.shape(id), Shape::Typedef(_) | Shape::Plain), "{id}");
            assert_eq!(g.get(id).unwrap().size, 0);
        }
        assert_eq!(g.resolve(3), 9);
        assert_eq!(g.pointee(0), None);
    }
}
