//! What happens to what the target allocates: decoded events become allocation sites
//! ([`sites`]), object lifetimes per GC cycle ([`lifetimes`]), creating frames that returned
//! ([`creating_frames`]), retained rows ([`retention`]) and finalizer and cleanup state
//! ([`finalizers`], with the evidence behind their diagnoses in `evidence`). [`correlate`] feeds one event at a time to all of them.
//!
//! Pure logic apart from reads of the target's memory through [`crate::memory::Memory`]: recorded
//! or synthetic events drive it in tests.

pub mod correlate;
pub mod creating_frames;
mod evidence;
pub mod finalizers;
pub mod lifetimes;
pub mod retention;
pub mod sites;

pub use correlate::GcInfo;
pub use lifetimes::{Alloc, Buckets, Distributions, Lifecycle, LifecycleConfig, SiteLifecycle, SweptSpan, Totals};
