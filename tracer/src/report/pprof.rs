//! The retained rows as a gzip'd pprof profile (`--format pprof`), for `go tool pprof` and Pyroscope. A sample
//! is one retained row, valued in objects and bytes; its "stack" is what holds it, root outermost
//! (`main.sessions` → `2.2 KiB` → … → `32 B main.Session`) when the heap walk found a chain, else its allocation
//! stack. So `go tool pprof -top` ranks holders and `-web` draws the chains as a graph.
//!
//! The messages are those of `github.com/google/pprof/proto/profile.proto`, declared here with the fields
//! maptrace fills (protobuf skips the rest).

use std::collections::HashMap;
use std::io::{self, Write};

use prost::Message;

use super::Report;

#[derive(Clone, PartialEq, prost::Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

/// Interns strings, functions and locations (one location per function: frames are names here, not PCs).
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    locations: HashMap<(String, String, i64), u64>,
}

impl Builder {
    fn string(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.strings.get(s) {
            return i;
        }
        let i = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), i);
        i
    }

    /// A location for a frame called `name`, in `file` at `line`.
    fn location(&mut self, name: &str, file: &str, line: i64) -> u64 {
        let key = (name.to_string(), file.to_string(), line);
        if let Some(&id) = self.locations.get(&key) {
            return id;
        }
        let id = self.profile.location.len() as u64 + 1;
        let (name, filename) = (self.string(name), self.string(file));
        self.profile.function.push(Function { id, name, filename });
        self.profile.location.push(Location {
            id,
            line: vec![Line { function_id: id, line }],
        });
        self.locations.insert(key, id);
        id
    }
}

impl Report {
    /// The gzip'd profile (see the module documentation).
    pub fn write_pprof(&self, w: &mut dyn Write) -> io::Result<()> {
        let mut b = Builder::default();
        b.string("");
        let sample_type = [("retained_objects", "count"), ("retained_space", "bytes")].map(|(t, u)| ValueType {
            r#type: b.string(t),
            unit: b.string(u),
        });
        b.profile.sample_type = sample_type.to_vec();
        b.profile.default_sample_type = sample_type[1].r#type;
        b.profile.duration_nanos = (self.duration_seconds * 1e9) as i64;
        let comment = format!(
            "maptrace {}: PID {} {} ({})",
            self.maptrace_version, self.target.pid, self.target.binary, self.target.go_version
        );
        b.profile.comment = vec![b.string(&comment)];
        let (site_key, kind_key) = (b.string("site"), b.string("kind"));
        for r in &self.retained {
            let site = r.stack.first().map_or("(runtime)", |f| f.function.as_str()).to_string();
            for tower in super::holder_towers(r) {
                // Leaf first: the retained object, the hops back up, then the root.
                let stack = tower
                    .frames
                    .iter()
                    .rev()
                    .map(|f| b.location(&f.name, f.file, i64::from(f.line)))
                    .collect();
                let label = vec![
                    Label {
                        key: site_key,
                        str: b.string(&site),
                    },
                    Label {
                        key: kind_key,
                        str: b.string(r.kind.as_str()),
                    },
                ];
                b.profile.sample.push(Sample {
                    location_id: stack,
                    value: vec![tower.count as i64, tower.bytes as i64],
                    label,
                });
            }
        }
        let mut gz = flate2::write::GzEncoder::new(w, flate2::Compression::default());
        gz.write_all(&b.profile.encode_to_vec())?;
        gz.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn samples_are_retained_rows_with_their_chains_root_outermost() {
        let mut gz = Vec::new();
        crate::report::tests::held_report().write_pprof(&mut gz).unwrap();
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut raw).unwrap();
        let p = Profile::decode(&raw[..]).unwrap();
        let s = |i: i64| p.string_table[i as usize].as_str();
        assert_eq!(
            p.sample_type
                .iter()
                .map(|t| (s(t.r#type), s(t.unit)))
                .collect::<Vec<_>>(),
            [("retained_objects", "count"), ("retained_space", "bytes")]
        );
        assert_eq!(s(p.default_sample_type), "retained_space");
        // A sample per chain shape, with its share of the row (2 objects and 1 of the 3 the walk found).
        assert_eq!(
            p.sample.iter().map(|s| s.value.clone()).collect::<Vec<_>>(),
            [[1, 2666], [1, 1334]]
        );
        let frame = |id: u64| s(p.function[p.location[id as usize - 1].line[0].function_id as usize - 1].name);
        let stack: Vec<&str> = p.sample[0].location_id.iter().map(|&id| frame(id)).collect();
        assert_eq!(
            stack,
            [
                "2.0 KiB map[string]*main.Session (at […].elem)",
                "48 B ? (at +0x0)",
                "main.cache (map[string]*main.Session)"
            ]
        );
        let labels: Vec<(&str, &str)> = p.sample[0].label.iter().map(|l| (s(l.key), s(l.str))).collect();
        assert_eq!(labels, [("site", "main.put"), ("kind", "map")]);
    }
}
