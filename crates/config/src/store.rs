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
}
impl StoreConfig {
    fn default_flush_every() -> Dur {
        Dur::secs(1)
    }
}
