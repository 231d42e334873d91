//! Scheduled backups: a verified file in a directory, the newest `keep` kept.

use super::*;

/// File names sort by time: `gatewarden-20261202T041500Z.gwbackup`.
const PREFIX: &str = "gatewarden-";
const SUFFIX: &str = ".gwbackup";

impl Store {
    /// Back up into `dir` (created 0700), read the file back and verify it,
    /// then delete all but the newest `keep`. Returns the new file.
    pub fn backup_to_dir(&self, dir: &Path, now: Timestamp, keep: usize) -> std::result::Result<std::path::PathBuf, BackupError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let name = format!("{PREFIX}{}{SUFFIX}", now.format("%Y%m%dT%H%M%SZ"));
        let path = dir.join(&name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut bytes = Vec::new();
        self.backup(now.timestamp(), &mut bytes)?;
        {
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        // Verified from the disk, not from memory: what a restore will read.
        Self::verify_backup(&std::fs::read(&tmp)?)?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        for old in Self::list_backups(dir)?.into_iter().rev().skip(keep.max(1)) {
            std::fs::remove_file(old)?;
        }
        Ok(path)
    }

    /// Scheduled backups in `dir`, oldest first.
    pub fn list_backups(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
        let mut v: Vec<std::path::PathBuf> = match std::fs::read_dir(dir) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX)))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        v.sort();
        Ok(v)
    }
}
