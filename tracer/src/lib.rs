//! maptrace: an eBPF uprobe allocation tracer for Go programs.
//!
//! One module per stage of the data flow, in the order data moves (`docs/architecture.md` draws the map):
//!
//! - [`process`]: the live target (`/proc/PID`), read through [`memory::Memory`];
//! - [`gobin`]: everything read from the Go executable: functions, versions, the per-version runtime layout;
//! - [`probes`]: what to attach where, and attaching it (plus the sampling rate governor);
//! - [`events`]: ring-buffer records decoded into typed events;
//! - [`lifecycle`]: events into allocation sites, object lifetimes, retention and finalizer state;
//! - [`heap`]: the live heap read from the target's memory: roots, the walk, reference chains;
//! - [`report`]: the report model and its writers (text, JSON, pprof, dot, flame graph);
//! - [`session`]: one attached target driven through those stages, and the CLI's run of it;
//! - [`agent`]: every Go process of a node, exported as Prometheus metrics.
//!
//! Lower stages never import higher ones; [`error`], [`memory`], [`output`] and [`units`] sit below them all.

pub mod agent;
pub mod cli;
pub mod error;
pub mod events;
pub mod gobin;
pub mod heap;
pub mod lifecycle;
pub mod memory;
pub mod output;
pub mod probes;
pub mod process;
pub mod report;
pub mod session;
pub mod units;

/// Regression tests of what the fuzz harnesses (fuzz/) found, replayed as the harnesses run them.
#[cfg(test)]
#[path = "fuzz/tests.rs"]
mod fuzz_tests;
