//! Recordings: a session's raw ring-buffer records, written with `--record FILE`, read back to
//! replay the session through decoding and correlation (`trace::replay`): for a bug report, or to
//! measure the pipeline on a real stream (`cargo xtask bench`).
//!
//! Format: the line `maptrace-records 1 load_bias=<hex>\n`, then each record as a little-endian
//! u32 length and its bytes, as the kernel wrote them (native endianness, this machine's layout).

use std::{
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    path::Path,
};

const MAGIC: &str = "maptrace-records 1";
/// A record longer than this is taken as a corrupt file (the largest, a span record, is < 1 KiB).
const MAX_RECORD: usize = 1 << 16;

pub struct Recorder {
    out: BufWriter<File>,
}

impl Recorder {
    pub fn create(path: &Path, load_bias: u64) -> io::Result<Self> {
        let mut out = BufWriter::new(crate::output::create_private(path)?);
        writeln!(out, "{MAGIC} load_bias={load_bias:#x}")?;
        Ok(Self { out })
    }

    pub fn write(&mut self, record: &[u8]) -> io::Result<()> {
        self.out.write_all(&(record.len() as u32).to_le_bytes())?;
        self.out.write_all(record)
    }

    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A recording read back.
pub struct Recording {
    /// The target's load bias when it was recorded (0 for a non-PIE Go binary).
    pub load_bias: u64,
    pub records: Vec<Vec<u8>>,
}

pub fn read(path: &Path) -> io::Result<Recording> {
    parse(BufReader::new(File::open(path)?))
}

fn parse(mut input: impl BufRead) -> io::Result<Recording> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("not a maptrace recording: {what}"));
    let mut header = String::new();
    input.read_line(&mut header)?;
    let load_bias = header
        .trim_end()
        .strip_prefix(MAGIC)
        .and_then(|rest| rest.trim().strip_prefix("load_bias=0x"))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .ok_or_else(|| bad("bad header"))?;
    let mut records = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match input.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_RECORD {
            return Err(bad("record too long"));
        }
        let mut record = vec![0u8; len];
        input.read_exact(&mut record).map_err(|_| bad("truncated record"))?;
        records.push(record);
    }
    Ok(Recording { load_bias, records })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let path = std::env::temp_dir().join(format!("maptrace-recording-{}", std::process::id()));
        let mut r = Recorder::create(&path, 0x5000).unwrap();
        r.write(&[1, 2, 3]).unwrap();
        r.write(&[]).unwrap();
        r.write(&[9; 700]).unwrap();
        r.finish().unwrap();
        let back = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.load_bias, 0x5000);
        assert_eq!(back.records, vec![vec![1, 2, 3], vec![], vec![9; 700]]);
    }

    #[test]
    fn damage_is_an_error() {
        assert!(parse(&b"something else\n"[..]).is_err());
        let mut truncated = b"maptrace-records 1 load_bias=0x0\n".to_vec();
        truncated.extend_from_slice(&8u32.to_le_bytes());
        truncated.extend_from_slice(&[1, 2]);
        assert!(parse(&truncated[..]).is_err());
        let mut huge = b"maptrace-records 1 load_bias=0x0\n".to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge[..]).is_err());
    }
}
