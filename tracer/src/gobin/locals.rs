//! Where a function's variables live in its stack frame, PC by PC, as DWARF says: so that a pointer on a
//! goroutine's stack is named by the variable that holds it (`batch`, `s.buf`) rather than by its offset. Go
//! describes a variable's location relative to the frame's CFA (`DW_AT_frame_base` is always
//! `DW_OP_call_frame_cfa`), whole or in pieces (`DW_OP_piece`: a slice's pointer on the stack, its length in a
//! register), and by location lists where that changes within the function.

use std::collections::BTreeMap;

use super::bytes::uvarint;
use super::typegraph::TypeId;

/// The variables of every function DWARF describes, by entry address.
#[derive(Clone, Debug, Default)]
pub struct FrameLocals {
    functions: BTreeMap<u64, FunctionLocals>,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct FunctionLocals {
    pub high_pc: u64,
    pub vars: Vec<LocalVar>,
}

/// A parameter or local variable (not of an inlined call: those have their own, rarely useful, locations).
#[derive(Clone, Debug)]
pub struct LocalVar {
    pub name: String,
    pub ty: TypeId,
    /// Location expressions by PC range `[lo, hi)` (link-time); one range covering everything for a variable
    /// whose location never changes.
    pub(crate) locations: Vec<(u64, u64, Vec<u8>)>,
}

/// Bytes `[start, start + len)` of a variable, kept in the frame at `CFA + cfa_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackPiece {
    pub start: u64,
    pub len: u64,
    pub cfa_offset: i64,
}

const DW_OP_ADDR: u8 = 0x03;
const DW_OP_REG0: u8 = 0x50;
const DW_OP_REG31: u8 = 0x6f;
const DW_OP_REGX: u8 = 0x90;
const DW_OP_FBREG: u8 = 0x91;
const DW_OP_PIECE: u8 = 0x93;
const DW_OP_CALL_FRAME_CFA: u8 = 0x9c;

impl FrameLocals {
    pub(crate) fn new(functions: BTreeMap<u64, FunctionLocals>) -> Self {
        FrameLocals { functions }
    }

    /// The variables of the function running at `pc` (link-time) that are in its frame there, each with the
    /// pieces of it the frame holds.
    pub fn at(&self, pc: u64) -> Vec<(&LocalVar, Vec<StackPiece>)> {
        let Some((_, f)) = self.functions.range(..=pc).next_back().filter(|(_, f)| pc < f.high_pc) else {
            return Vec::new();
        };
        f.vars
            .iter()
            .filter_map(|v| {
                let (_, _, expr) = v.locations.iter().find(|(lo, hi, _)| (*lo..*hi).contains(&pc))?;
                let pieces = stack_pieces(expr);
                (!pieces.is_empty()).then_some((v, pieces))
            })
            .collect()
    }
}

fn sleb(b: &[u8], i: &mut usize) -> Option<i64> {
    let mut v = 0i64;
    let mut shift = 0;
    loop {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= i64::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some(if shift < 64 && byte & 0x40 != 0 {
                v | (-1i64 << shift)
            } else {
                v
            });
        }
        if shift >= 64 {
            return None;
        }
    }
}

/// The stack-resident pieces of a location expression, as Go writes them: `DW_OP_fbreg N` (or
/// `DW_OP_call_frame_cfa`: at the CFA itself) for memory, `DW_OP_regN` for a register, each followed by
/// `DW_OP_piece SIZE` when the variable is split; a piece with no location is optimized out. A whole
/// (unsplit) variable gets one piece of length `u64::MAX`. Anything else: no pieces.
pub(crate) fn stack_pieces(expr: &[u8]) -> Vec<StackPiece> {
    let mut out = Vec::new();
    let (mut i, mut start) = (0, 0u64);
    let mut at: Option<i64> = None;
    let mut split = false;
    while i < expr.len() {
        let op = expr[i];
        i += 1;
        match op {
            DW_OP_FBREG => match sleb(expr, &mut i) {
                Some(off) => at = Some(off),
                None => return Vec::new(),
            },
            DW_OP_CALL_FRAME_CFA => at = Some(0),
            DW_OP_REG0..=DW_OP_REG31 => at = None,
            DW_OP_REGX => {
                if uvarint(expr, &mut i).is_none() {
                    return Vec::new();
                }
                at = None;
            }
            DW_OP_ADDR => return Vec::new(),
            DW_OP_PIECE => {
                let Some(len) = uvarint(expr, &mut i) else {
                    return Vec::new();
                };
                if let Some(cfa_offset) = at.take() {
                    out.push(StackPiece { start, len, cfa_offset });
                }
                // Pieces past the address space: not an expression Go writes.
                let Some(next) = start.checked_add(len) else {
                    return Vec::new();
                };
                start = next;
                split = true;
            }
            _ => return Vec::new(),
        }
    }
    if !split {
        if let Some(cfa_offset) = at {
            out.push(StackPiece {
                start: 0,
                len: u64::MAX,
                cfa_offset,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_of_go_location_expressions() {
        // `DW_OP_fbreg -48`: the whole variable.
        assert_eq!(
            stack_pieces(&[0x91, 0x50]),
            [StackPiece {
                start: 0,
                len: u64::MAX,
                cfa_offset: -48
            }]
        );
        // A slice: pointer at CFA-48, length in RCX, capacity at CFA-56.
        let expr = [0x91, 0x50, 0x93, 0x08, 0x52, 0x93, 0x08, 0x91, 0x48, 0x93, 0x08];
        assert_eq!(
            stack_pieces(&expr),
            [
                StackPiece {
                    start: 0,
                    len: 8,
                    cfa_offset: -48
                },
                StackPiece {
                    start: 16,
                    len: 8,
                    cfa_offset: -56
                }
            ]
        );
        // A parameter spilled to the CFA itself; one in a register only; an address: not on the stack.
        assert_eq!(
            stack_pieces(&[0x9c]),
            [StackPiece {
                start: 0,
                len: u64::MAX,
                cfa_offset: 0
            }]
        );
        assert!(stack_pieces(&[0x50]).is_empty());
        assert!(stack_pieces(&[0x03, 0, 0, 0, 0, 0, 0, 0, 0]).is_empty());
        assert!(stack_pieces(&[0x91]).is_empty(), "truncated");
        // Pieces of 2^63 bytes: the second ends past the address space.
        let huge = [0x93, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01];
        assert!(stack_pieces(&[huge, huge].concat()).is_empty());
    }

    #[test]
    fn variables_by_pc() {
        let var = |name: &str, locations| LocalVar {
            name: name.into(),
            ty: 0,
            locations,
        };
        let f = FunctionLocals {
            high_pc: 0x1100,
            vars: vec![
                var("a", vec![(0, u64::MAX, vec![0x91, 0x50])]),
                var(
                    "b",
                    vec![(0x1000, 0x1010, vec![0x50]), (0x1010, 0x1100, vec![0x91, 0x48])],
                ),
            ],
        };
        let locals = FrameLocals::new([(0x1000, f)].into());
        let names = |pc| locals.at(pc).iter().map(|(v, _)| v.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(0x1008), ["a"], "b is in a register there");
        assert_eq!(names(0x1020), ["a", "b"]);
        assert!(
            names(0x1100).is_empty() && names(0xfff).is_empty(),
            "outside the function"
        );
    }
}
