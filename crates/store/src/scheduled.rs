//! Scheduled backups: a verified file in a directory, the newest `keep` kept.

use super::*;

/// File names sort by time: `gatewarden-20261202T041500Z.gwbackup`.
const PREFIX: &str = "gatewarden-";
const SUFFIX: &str = ".gwbackup";

impl Store {
    /// Back up into `dir` (created 0700), read the file back and verify it,
    /// then delete all but the newest `keep`. Returns the new file.
    pub fn backup_to_dir(&self, dir: &Path, now: Timestamp, keep: usize) -> std::result::Result<std::path::PathBuf, BackupError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let path = dir.join(format!("{PREFIX}{}{SUFFIX}", now.format("%Y%m%dT%H%M%SZ")));
        let mut bytes = Vec::new();
        self.backup(now.timestamp(), &mut bytes)?;
        write_private(&path, &bytes)?;
        // Read back and verified: what a restore will read. A bad one is not kept.
        if let Err(e) = std::fs::read(&path).map_err(BackupError::from).and_then(|b| Self::verify_backup(&b)) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
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
