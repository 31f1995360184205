//! maptrace: an eBPF uprobe allocation tracer for Go programs.
//!
//! One module per stage of the data flow: `process` and `target` (the live process and its
//! binary) → `probes` (what to attach where, and attaching) → `events` (ring-buffer records)
//! → `correlate` (events into `sites`, the `lifecycle` engine and creating `frames`, with names
//! from `symbolize` / `gotype`) → `retention` and `report` (text and JSON), with `heap` walking the
//! live target's memory for what holds the retained objects; `session` is one attached target,
//! `trace` the CLI's run of one, and `cli` is the command line.

pub mod agent;
pub mod cli;
pub mod correlate;
pub mod error;
pub mod events;
pub mod finalizers;
pub mod frames;
pub mod gotype;
pub mod heap;
pub mod lifecycle;
pub mod probes;
pub mod process;
pub mod recording;
pub mod report;
pub mod retention;
pub mod sampling;
pub mod session;
pub mod sites;
pub mod symbolize;
pub mod target;
pub mod trace;
