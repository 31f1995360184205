//! How quantities and names are written for people, shared by every writer of prose (reports, logs, chain
//! steps).

use std::io::{self, Write};

/// Human-readable sizes: 512 B, 4.0 KiB, 1.5 MiB.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Text bound for a terminal, with what the target named made harmless: function, type, file and binary names
/// are the target's own bytes, and an escape sequence among them would be run by the terminal (retitle it,
/// rewrite what it shows). Control characters other than newline and tab, and the C1 controls (U+0080–U+009F,
/// which some terminals also obey), come out as `\x1b` or `\u{9b}`.
pub struct Printable<W>(pub W);

impl<W: Write> Write for Printable<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut start = 0;
        let mut i = 0;
        while i < buf.len() {
            let escape = match buf[i] {
                b'\n' | b'\t' => None,
                b @ (0..0x20 | 0x7f) => Some((format!("\\x{b:02x}"), 1)),
                0xc2 if buf.get(i + 1).is_some_and(|b| (0x80..0xa0).contains(b)) => {
                    Some((format!("\\u{{{:x}}}", buf[i + 1]), 2))
                }
                _ => None,
            };
            match escape {
                Some((text, len)) => {
                    self.0.write_all(&buf[start..i])?;
                    self.0.write_all(text.as_bytes())?;
                    i += len;
                    start = i;
                }
                None => i += 1,
            }
        }
        self.0.write_all(&buf[start..])?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// `text` as [`Printable`] writes it.
pub fn printable(text: &str) -> String {
    let mut out = Printable(Vec::with_capacity(text.len()));
    let _ = out.write_all(text.as_bytes());
    String::from_utf8_lossy(&out.0).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, printable};

    #[test]
    fn names_reach_the_terminal_without_their_controls() {
        assert_eq!(printable("main.f\x1b]0;pwned\x07 ok"), "main.f\\x1b]0;pwned\\x07 ok");
        assert_eq!(printable("csi \u{9b}2J, é and ü stay"), "csi \\u{9b}2J, é and ü stay");
        assert_eq!(printable("lines\n\tstay"), "lines\n\tstay");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(4096), "4.0 KiB");
        assert_eq!(human_bytes(3 << 20), "3.0 MiB");
    }
}
