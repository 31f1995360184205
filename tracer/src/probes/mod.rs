//! Which runtime functions to probe in a given Go binary ([`plan`]), and attaching the eBPF programs there
//! ([`attach`]).
//!
//! Every probed function gets an entry uprobe (placed past the stack-bound check, see
//! `gobin::rets`) plus one uprobe per RET instruction (Go moves goroutine stacks, so uretprobes
//! would corrupt them).

pub mod attach;
pub mod plan;
pub mod sampling;

pub use attach::Tracer;
pub use plan::{ProbePlan, ProbePoint, Role};
