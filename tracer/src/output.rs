//! Files maptrace writes (`-o`, `--record`): it runs as root and they hold what it read of a target's heap, so
//! a file is created new, readable by its owner alone (0600), and put in place by a rename. Nothing at the path
//! is followed or written through: a symbolic link a user left there (in /tmp, say) is replaced, not used to
//! reach the file it names.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates `path` for writing as described above. The error says which step failed and why.
pub fn create_private(path: &Path) -> io::Result<File> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name"))?;
    if path.is_dir() {
        return Err(io::Error::new(io::ErrorKind::IsADirectory, "a directory is there"));
    }
    let mut temporary = name.to_os_string();
    temporary.push(format!(".maptrace-{}", std::process::id()));
    let temporary: PathBuf = path.with_file_name(temporary);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&temporary)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", temporary.display())))?;
    std::fs::rename(&temporary, path).map_err(|e| {
        let _ = std::fs::remove_file(&temporary);
        io::Error::new(e.kind(), format!("moving it into place: {e}"))
    })?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("maptrace-output-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn a_symlink_at_the_path_is_replaced_not_followed() {
        let dir = scratch("symlink");
        let victim = dir.join("victim");
        std::fs::write(&victim, "keep me").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let out = dir.join("report.json");
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        create_private(&out).unwrap().write_all(b"report").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "report");
        let meta = std::fs::symlink_metadata(&out).unwrap();
        assert!(meta.is_file(), "a file of its own");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2, "no temporary left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_file_is_replaced_with_owner_only_permissions() {
        let dir = scratch("existing");
        let out = dir.join("profile.pb.gz");
        std::fs::write(&out, "old").unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).unwrap();
        create_private(&out).unwrap();
        let meta = std::fs::metadata(&out).unwrap();
        assert_eq!((meta.len(), meta.mode() & 0o777), (0, 0o600));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refusals_say_why() {
        let dir = scratch("refusals");
        let err = create_private(&dir).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::IsADirectory);
        let err = create_private(&dir.join("missing/report")).unwrap_err().to_string();
        assert!(err.starts_with("creating "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
