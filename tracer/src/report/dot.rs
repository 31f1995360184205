//! The retained rows' chains as a Graphviz graph (`--format dot`; `dot -Tsvg` draws it): roots on the left, each
//! hop an object labelled with its size and type, each edge with the offset of the pointer followed, and the
//! retained rows as the leaves, with their counts and bytes. Chains that start alike share their nodes, so one
//! global holding several sites draws as a tree.

use std::collections::HashMap;
use std::io::{self, Write};

use super::{chain_shares, hop_object, hop_offset, Report};
use crate::units::human_bytes;

/// A double-quoted DOT string of these lines.
fn quoted(lines: &[&str]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|l| l.replace('\\', "\\\\").replace('"', "\\\""))
        .collect();
    format!("\"{}\"", escaped.join("\\n"))
}

impl Report {
    pub fn write_dot(&self, w: &mut dyn Write) -> io::Result<()> {
        writeln!(w, "digraph maptrace {{")?;
        writeln!(w, "  rankdir=LR;")?;
        writeln!(
            w,
            "  label={};",
            quoted(&[&format!(
                "what holds the retained memory of PID {} ({})",
                self.target.pid, self.target.binary
            )])
        )?;
        writeln!(w, "  node [shape=box, fontname=\"monospace\"];")?;
        // A node per distinct path prefix: the root's description, then each hop's offset, size and type.
        let mut nodes: HashMap<String, usize> = HashMap::new();
        let mut node = |w: &mut dyn Write, key: String, label: &[&str], attrs: &str| -> io::Result<usize> {
            if let Some(&id) = nodes.get(&key) {
                return Ok(id);
            }
            let id = nodes.len();
            nodes.insert(key, id);
            writeln!(w, "  n{id} [label={}{attrs}];", quoted(label))?;
            Ok(id)
        };
        let mut edges: HashMap<(usize, usize), String> = HashMap::new();
        for r in &self.retained {
            for (h, count, bytes) in chain_shares(r) {
                let root = h.root.describe();
                let mut key = root.clone();
                let mut from = node(w, key.clone(), &[&root], ", style=bold")?;
                for (i, hop) in h.hops.iter().enumerate() {
                    let (at, what) = (hop_offset(hop), hop_object(hop));
                    key += &format!(" → {at} → {what}");
                    let last = i + 1 == h.hops.len();
                    let to = if last {
                        let site = r.stack.first().map_or("(runtime)", |f| f.function.as_str());
                        let row = format!("{count} retained, {} ({site})", human_bytes(bytes));
                        node(
                            w,
                            format!("{key} ← {}", r.kind.as_str()),
                            &[&what, &row],
                            ", shape=ellipse",
                        )?
                    } else {
                        node(w, key.clone(), &[&what], "")?
                    };
                    edges.entry((from, to)).or_insert(at);
                    from = to;
                }
            }
        }
        let mut edges: Vec<_> = edges.into_iter().collect();
        edges.sort();
        for ((from, to), label) in edges {
            writeln!(w, "  n{from} -> n{to} [label={}];", quoted(&[&label]))?;
        }
        writeln!(w, "}}")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_is_a_path_from_its_root_to_the_retained_row() {
        let mut out = Vec::new();
        crate::report::tests::held_report().write_dot(&mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("digraph maptrace {"), "{s}");
        assert!(
            s.contains("n0 [label=\"main.cache (map[string]*main.Session)\", style=bold];"),
            "{s}"
        );
        assert!(s.contains("n1 [label=\"48 B ?\"];"), "{s}");
        // Each chain shape ends at the row, with its share of it.
        assert!(
            s.contains(
                "n2 [label=\"2.0 KiB map[string]*main.Session\\n1 retained, 2.6 KiB (main.put)\", shape=ellipse];"
            ),
            "{s}"
        );
        assert!(
            s.contains("n0 -> n1 [label=\"+0x0\"];") && s.contains("n1 -> n2 [label=\"[…].elem\"];"),
            "{s}"
        );
        assert!(
            s.contains("n4 [label=\"48 B ?\\n1 retained, 1.3 KiB (main.put)\", shape=ellipse];")
                && s.contains("n3 -> n4"),
            "{s}"
        );
        assert!(s.trim_end().ends_with('}'), "{s}");
    }
}
