//! Wall-clock time per phase, printed at the end of a run, so that slow phases show up in CI logs.

use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Timings {
    phases: Vec<(&'static str, Duration, bool)>,
}

impl Timings {
    /// Runs `f` as the phase `name`, recording its duration and whether it succeeded.
    pub fn phase<T>(&mut self, name: &'static str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
        let start = Instant::now();
        let result = f();
        self.phases.push((name, start.elapsed(), result.is_ok()));
        result
    }

    pub fn print(&self) {
        println!("\ntimings:");
        for (name, took, ok) in &self.phases {
            println!(
                "  {name:<14} {:>7.1}s{}",
                took.as_secs_f64(),
                if *ok { "" } else { "  (failed)" }
            );
        }
        let total: Duration = self.phases.iter().map(|p| p.1).sum();
        println!("  {:<14} {:>7.1}s", "total", total.as_secs_f64());
    }
}
