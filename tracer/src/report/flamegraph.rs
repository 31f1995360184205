//! The retained rows as an SVG flame graph (`--format flamegraph`), drawn by inferno: one tower per retained row,
//! as wide as its retained bytes, rising from what holds it (the chain's root at the bottom, its hops above,
//! the retained object on top) or, without a chain, from its allocation stack. The same frames as the pprof
//! profile, for people who would rather look than read.

use std::io::{self, Write};

use inferno::flamegraph::{self, Options};

use super::{holder_towers, Report};

impl Report {
    pub fn write_flamegraph(&self, w: &mut dyn Write) -> io::Result<()> {
        // Folded stacks: frames joined by ';' (which Go type names may contain: `struct { a int; b int }`), a
        // space, the value.
        let lines: Vec<String> = self
            .retained
            .iter()
            .flat_map(holder_towers)
            .filter(|t| t.bytes > 0)
            .map(|t| {
                let frames: Vec<String> = t.frames.into_iter().map(|f| f.name.replace(';', ",")).collect();
                format!("{} {}", frames.join(";"), t.bytes)
            })
            .collect();
        let mut options = Options::default();
        options.title = format!(
            "maptrace: retained bytes by holder, PID {} {}",
            self.target.pid, self.target.binary
        );
        options.count_name = "bytes".into();
        options.name_type = "".into();
        if lines.is_empty() {
            // inferno refuses an empty profile; an empty graph says the same without failing.
            return writeln!(
                w,
                r#"<svg xmlns="http://www.w3.org/2000/svg" width="400" height="30"><text x="10" y="20">maptrace: nothing retained</text></svg>"#
            );
        }
        flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), w).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tower_per_retained_row_from_its_holder() {
        let mut out = Vec::new();
        crate::report::tests::held_report().write_flamegraph(&mut out).unwrap();
        let svg = String::from_utf8(out).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg}");
        for want in [
            "main.cache (map[string]*main.Session)",
            "48 B ? (at +0x0)",
            "2.0 KiB map[string]*main.Session (at […].elem)",
        ] {
            assert!(svg.contains(want), "{want:?} in\n{svg}");
        }
    }
}
