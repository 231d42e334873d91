//! The `[store]` section: where the database lives and how often it is written.

use crate::Dur;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// How often buffered last-seen updates are written to the store. A kill -9
    /// loses at most this much presence history (never an alert or a notification).
    #[serde(default = "StoreConfig::default_flush_every")]
    pub flush_every: Dur,
    /// Take a verified backup this often ("0s": never). There is then always
    /// one to restore when the store is found damaged.
    #[serde(default = "StoreConfig::default_backup_every")]
    pub backup_every: Dur,
    /// Keep this many scheduled backups (the oldest are deleted).
    #[serde(default = "StoreConfig::default_backup_keep")]
    pub backup_keep: usize,
    /// Where scheduled backups go; default: `backups` beside the store.
    #[serde(default)]
    pub backup_dir: Option<PathBuf>,
    /// How often the integrity manifest (counts and checksums of the critical
    /// trees) is recorded while running; it is also recorded at every clean stop.
    #[serde(default = "StoreConfig::default_integrity_every")]
    pub integrity_every: Dur,
}
impl StoreConfig {
    fn default_backup_every() -> Dur {
        Dur::secs(24 * 3600)
    }
    fn default_backup_keep() -> usize {
        7
    }
    fn default_integrity_every() -> Dur {
        Dur::secs(600)
    }
    /// Where scheduled backups are written.
    pub fn backup_dir(&self) -> PathBuf {
        self.backup_dir.clone().unwrap_or_else(|| self.path.with_file_name("backups"))
    }
    fn default_flush_every() -> Dur {
        Dur::secs(1)
    }
}
