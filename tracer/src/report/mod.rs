//! The report: one model of what a trace found ([`Report`]), built once by the session, and its
//! writers: text (`text`), JSON (here: the model serialized as `docs/report.schema.json` describes it),
//! pprof, dot and flame graph. The helpers shared by the writers that draw chains sit here too.

mod dot;
mod flamegraph;
mod pprof;
#[cfg(test)]
pub(crate) mod tests;
mod text;

pub use crate::heap::search::ChainSearch;
pub use crate::lifecycle::GcInfo;
pub use text::write_table;

use crate::units::human_bytes;
use std::io::{self, Write};

use serde::Serialize;

use crate::{
    lifecycle::finalizers::FinalizerSection,
    lifecycle::retention::RetainedRow,
    lifecycle::sites::{SiteRow, Totals},
};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub maptrace_version: &'static str,
    pub target: TargetInfo,
    /// "full": every allocation is trapped, counts are exact; "sampled": the runtime's samples,
    /// counts are estimates (see `sampling`).
    pub mode: crate::probes::sampling::Mode,
    /// Sampled mode: the rate, the trap budget and how counts were scaled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampling: Option<crate::probes::sampling::SamplingInfo>,
    pub duration_seconds: f64,
    pub ended_by: EndReason,
    pub probes: ProbeInfo,
    pub totals: Totals,
    /// Records the kernel could not queue (ring buffer full): counts above are short by these.
    pub lost_records: u64,
    pub sites: Vec<SiteRow>,
    pub gc: GcInfo,
    /// Sites whose objects outlive their creating frame by ≥ K GC cycles.
    pub retained: Vec<RetainedRow>,
    /// How the retained rows' `held_by` chains were searched (None: not searched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chains: Option<ChainSearch>,
    pub finalizers: FinalizerSection,
    /// Lifetimes of the objects seen dying, and allocation sizes, as histogram buckets.
    pub distributions: crate::lifecycle::Distributions,
}

/// Why tracing stopped, or that it has not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EndReason {
    /// `--duration` ran out.
    #[serde(rename = "duration")]
    Duration,
    /// SIGINT or SIGTERM.
    #[serde(rename = "interrupted")]
    Interrupted,
    /// The target exited: every creating frame of the remaining objects is gone.
    #[serde(rename = "target exited")]
    TargetExited,
    /// The agent's report of a target it still traces.
    #[serde(rename = "running")]
    Running,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Duration => "duration",
            EndReason::Interrupted => "interrupted",
            EndReason::TargetExited => "target exited",
            EndReason::Running => "running",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetInfo {
    pub pid: u32,
    pub binary: String,
    pub go_version: String,
    pub experiments: Vec<String>,
    /// No symbol table: names come from pclntab, struct offsets from the version table.
    pub stripped: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeInfo {
    pub functions: Vec<String>,
    pub uprobes: usize,
    pub attach_seconds: f64,
}

impl Report {
    pub fn write_json(&self, w: &mut dyn Write) -> io::Result<()> {
        serde_json::to_writer_pretty(&mut *w, self)?;
        writeln!(w)
    }
}

/// A frame of a retained row's "stack" as the profile outputs draw it.
struct HolderFrame<'r> {
    name: String,
    file: &'r str,
    line: u32,
}

/// A retained row's objects held one way, as the profile outputs draw it: the frames, outermost first, and the
/// share of the row's count and bytes that goes to it.
struct HolderTower<'r> {
    frames: Vec<HolderFrame<'r>>,
    count: u64,
    bytes: u64,
}

/// What holds a retained row: a tower per chain shape the walk found, outermost first (the chain's root, then
/// each hop's object: `32 B main.Session (at .Buf)`), with the share of the row its objects are of those the
/// walk found a chain for; else its allocation stack, outermost caller first, with the whole row.
fn holder_towers(r: &RetainedRow) -> Vec<HolderTower<'_>> {
    let shapes = chain_shares(r);
    if shapes.is_empty() {
        let frames = r
            .stack
            .iter()
            .rev()
            .map(|f| HolderFrame {
                name: f.function.clone(),
                file: &f.file,
                line: f.line,
            })
            .collect();
        return vec![HolderTower {
            frames,
            count: r.retained_count,
            bytes: r.retained_bytes,
        }];
    }
    shapes
        .into_iter()
        .map(|(h, count, bytes)| HolderTower {
            frames: std::iter::once(HolderFrame {
                name: h.root.describe(),
                file: "",
                line: 0,
            })
            .chain(h.hops.iter().map(|hop| {
                let (object, at) = (hop_object(hop), hop_offset(hop));
                let name = if at.is_empty() {
                    object
                } else {
                    format!("{object} (at {at})")
                };
                HolderFrame {
                    name,
                    file: "",
                    line: 0,
                }
            }))
            .collect(),
            count,
            bytes,
        })
        .collect()
}

/// A retained row's chain shapes, each with its share of the row's count and bytes: the share its objects are of
/// those the walk found a chain for (rounded so that the shares add up to the row).
fn chain_shares(r: &RetainedRow) -> Vec<(&crate::heap::HeldBy, u64, u64)> {
    let shapes: Vec<&crate::heap::HeldBy> = r.held_by.iter().chain(&r.also_held_by).collect();
    let found = u128::from(shapes.iter().map(|h| h.objects).sum::<u64>().max(1));
    let upto = |total: u64, objects: u64| (u128::from(total) * u128::from(objects) / found) as u64;
    let mut before = 0;
    shapes
        .into_iter()
        .map(|h| {
            let after = before + h.objects;
            let share = |total| upto(total, after) - upto(total, before);
            let row = (h, share(r.retained_count), share(r.retained_bytes));
            before = after;
            row
        })
        .collect()
}

/// A hop's object as the graph outputs name it: `2.0 KiB map[string]*main.Session`, `48 B ?`.
fn hop_object(hop: &crate::heap::HopRow) -> String {
    format!("{} {}", human_bytes(hop.size), hop.type_name.as_deref().unwrap_or("?"))
}

/// Where a hop's pointer sits in the previous value: its Go path (`.Buf`, `[…].elem`; empty when the value is
/// the pointer), or else its offset: `+0x28`, or `an element` when that differs between the objects grouped (so
/// that the graph outputs draw one node for them whichever object's offset a group shows).
fn hop_offset(hop: &crate::heap::HopRow) -> String {
    match &hop.via {
        Some(path) => path.clone(),
        None if hop.offset_varies => "an element".into(),
        None => format!("+{:#x}", hop.offset),
    }
}
