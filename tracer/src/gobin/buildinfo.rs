//! `.go.buildinfo`: the Go version and build settings, which survive `-ldflags=-s -w` (unlike
//! `runtime.buildVersion`, which needs the symbol table to be found). Format: `debug/buildinfo/buildinfo.go`.

use std::fmt;

use super::bytes::uvarint;
use super::elf::Image;
use super::TargetError;

const MAGIC: &[u8; 14] = b"\xff Go buildinf:";
const HEADER_LEN: usize = 32;
/// Set from Go 1.18 on: the strings follow the header instead of being pointed to.
const FLAG_VERSION_INLINE: u8 = 0x2;

/// A Go release as named by the toolchain. Ordering is by (major, minor, patch) first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// As written in the binary, e.g. `go1.26.6-X:nogreenteagc` or `go1.25.5 X:greenteagc`.
    pub raw: String,
}

impl GoVersion {
    /// Parses `go1.N[.P]` with any suffix (`rc2`, `-X:…`, ` X:…`); a `devel ` prefix is ignored. A release
    /// candidate counts as patch 0.
    pub fn parse(raw: &str) -> Option<GoVersion> {
        let s = raw.strip_prefix("devel ").unwrap_or(raw).strip_prefix("go")?;
        let mut nums = [0u32; 3];
        let mut count = 0;
        let mut rest = s;
        while count < 3 {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                break;
            }
            nums[count] = rest[..digits].parse().ok()?;
            count += 1;
            rest = &rest[digits..];
            match rest.strip_prefix('.') {
                Some(r) => rest = r,
                None => break,
            }
        }
        (count >= 2).then(|| GoVersion {
            major: nums[0],
            minor: nums[1],
            patch: nums[2],
            raw: raw.to_string(),
        })
    }
}

impl fmt::Display for GoVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

#[derive(Debug)]
pub(crate) struct BuildInfo {
    pub version: GoVersion,
    pub experiments: Vec<String>,
}

impl BuildInfo {
    /// Reads the `.go.buildinfo` section or, when section headers are missing, the 16-byte-aligned blob with the
    /// magic in a writable segment (where the linker always puts it).
    pub fn find(image: &Image, bytes: &[u8]) -> Result<BuildInfo, TargetError> {
        if let Some(s) = image.section(".go.buildinfo") {
            let data = s
                .offset
                .and_then(|off| bytes.get(usize::try_from(off).ok()?..usize::try_from(off.checked_add(s.size)?).ok()?))
                .ok_or_else(|| TargetError::corrupt(".go.buildinfo has no contents"))?;
            return BuildInfo::parse(data);
        }
        for seg in image.segments.iter().filter(|s| s.writable()) {
            let Some(data) = image.rest_of_segment(bytes, seg.vaddr) else {
                continue;
            };
            let skip = (16 - (seg.vaddr % 16) as usize) % 16;
            let found = data
                .get(skip..)
                .and_then(|d| d.chunks(16).position(|c| c.starts_with(MAGIC)));
            if let Some(i) = found {
                return BuildInfo::parse(&data[skip + 16 * i..]);
            }
        }
        Err(TargetError::NotGo("no .go.buildinfo".into()))
    }

    pub fn parse(data: &[u8]) -> Result<BuildInfo, TargetError> {
        if !data.starts_with(MAGIC) {
            return Err(TargetError::corrupt(".go.buildinfo has no buildinfo magic"));
        }
        let header = data
            .get(..HEADER_LEN)
            .ok_or_else(|| TargetError::corrupt(".go.buildinfo header is cut short"))?;
        if header[15] & FLAG_VERSION_INLINE == 0 {
            return Err(TargetError::UnsupportedVersion {
                version: "older than go1.18".into(),
                reason: "build info in the pre-1.18 pointer format; maptrace supports go1.19 and later".into(),
            });
        }
        let mut pos = HEADER_LEN;
        let version = read_string(data, &mut pos).ok_or_else(|| TargetError::corrupt("buildinfo version string"))?;
        // Module info may legitimately be absent (e.g. Bazel builds); the version is what we cannot do without.
        let modinfo = read_string(data, &mut pos).unwrap_or_default();
        let version = String::from_utf8_lossy(version).into_owned();
        let experiments = experiments(&String::from_utf8_lossy(modinfo), &version);
        let version = GoVersion::parse(&version).ok_or_else(|| TargetError::UnsupportedVersion {
            // Quoted into messages and logs: a real one is short ("go1.24.11 X:nodwarf5").
            version: version.chars().take(64).collect(),
            reason: "not a go1.N version string".into(),
        })?;
        Ok(BuildInfo { version, experiments })
    }
}

fn read_string<'a>(data: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(uvarint(data, pos)?).ok()?;
    let s = data.get(*pos..pos.checked_add(len)?)?;
    *pos += len;
    Some(s)
}

/// Non-default experiments: the `build GOEXPERIMENT=a,b` modinfo line, else the `X:a,b` suffix of the version.
fn experiments(modinfo: &str, version: &str) -> Vec<String> {
    let list = modinfo
        .lines()
        .find_map(|l| l.strip_prefix("build\tGOEXPERIMENT="))
        .or_else(|| {
            version
                .split_once("X:")
                .map(|(_, x)| x.split_whitespace().next().unwrap_or(""))
        })
        .unwrap_or("");
    list.split(',').filter(|e| !e.is_empty()).map(str::to_string).collect()
}
