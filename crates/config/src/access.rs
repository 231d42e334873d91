//! The `[access]` section: the gate access policy shared by all gates.

use crate::Dur;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// The compound's units ("3-401"), one per line: roster imports refuse a
    /// resident or elder in a unit not listed. Absent: units are not checked.
    #[serde(default)]
    pub units_file: Option<PathBuf>,
    /// A face decision needs the same result in `agree_frames` of the last `window_frames`.
    #[serde(default = "AccessConfig::default_agree")]
    pub agree_frames: usize,
    #[serde(default = "AccessConfig::default_window")]
    pub window_frames: usize,
    /// A strong, unambiguous match (cosine ≥ `strong_match`, ahead of the next
    /// enrolled person by ≥ `strong_margin`) decides on this many frames.
    #[serde(default = "AccessConfig::default_strong_agree")]
    pub strong_agree_frames: usize,
    #[serde(default = "AccessConfig::default_strong_match")]
    pub strong_match: f32,
    #[serde(default = "AccessConfig::default_strong_margin")]
    pub strong_margin: f32,
    /// Liveness is the median over a face's track: it opens a gate once it
    /// covers this many frames…
    #[serde(default = "AccessConfig::default_liveness_frames")]
    pub liveness_frames: u32,
    /// …and counts as a spoof attempt only once it covers this many.
    #[serde(default = "AccessConfig::default_spoof_frames")]
    pub spoof_frames: u32,
    /// One person at one gate opens it at most once per cooldown.
    #[serde(default = "AccessConfig::default_cooldown")]
    pub cooldown: Dur,
    /// Wrong PINs at one keypad before it stops taking PINs for `pin_lockout`.
    #[serde(default = "AccessConfig::default_pin_max_failures")]
    pub pin_max_failures: u32,
    #[serde(default = "AccessConfig::default_pin_lockout")]
    pub pin_lockout: Dur,
    /// Wrong PINs across every keypad within `pin_site_window` before PIN
    /// entry stops at every gate for `pin_lockout`, with an alert (a guesser
    /// spreading tries over the keypads stays under each one's limit).
    #[serde(default = "AccessConfig::default_pin_site_max_failures")]
    pub pin_site_max_failures: u32,
    #[serde(default = "AccessConfig::default_pin_site_window")]
    pub pin_site_window: Dur,
    #[serde(default)]
    pub anti_passback: bool,
    /// Snapshots of unknown faces are deleted after this.
    #[serde(default = "AccessConfig::default_unknown_retention")]
    pub unknown_retention: Dur,
    /// Where unknown-face snapshots go (default: beside the store).
    #[serde(default)]
    pub snapshot_dir: Option<PathBuf>,
    /// The key that seals face templates at rest; created (mode 0600) on first
    /// start. Default: template.key beside the store. Keep it out of backups of
    /// the database, or keep it with them only encrypted.
    #[serde(default)]
    pub template_key_file: Option<PathBuf>,
    /// One key per enrolled person, sealing their record, templates, vehicles
    /// and entry-log reasons; `forget` deletes the key (crypto-shredding).
    /// Created (mode 0600) on first start. Default: person.keys beside the
    /// store. Keep it with the template key, out of database backups: a
    /// backup restored elsewhere needs it, and a forgotten person's key is
    /// gone from it for good.
    #[serde(default)]
    pub person_keys_file: Option<PathBuf>,
    /// Entry-log records older than this are purged (the hash chain continues from an anchor).
    #[serde(default = "AccessConfig::default_entry_log_retention")]
    pub entry_log_retention: Dur,
    /// Leave records are purged this long after they end.
    #[serde(default = "AccessConfig::default_leave_retention")]
    pub leave_retention: Dur,
    /// Visitor records are purged this long after their pass ends.
    #[serde(default = "AccessConfig::default_visitor_retention")]
    pub visitor_retention: Dur,
    /// A plate is confirmed after this many identical reads…
    #[serde(default = "AccessConfig::default_plate_votes")]
    pub plate_votes: usize,
    /// …or after one read at least this confident.
    #[serde(default = "AccessConfig::default_plate_sure")]
    pub plate_sure_confidence: f32,
    /// A read whose province character is less sure than this is never
    /// confirmed on its own and counts half a vote: the province is the
    /// OCR's most common slip.
    #[serde(default = "AccessConfig::default_plate_province")]
    pub plate_province_confidence: f32,
    /// A car unseen this long has left: coming back lifts the barrier again.
    #[serde(default = "AccessConfig::default_plate_gone_after")]
    pub plate_gone_after: Dur,
    /// Tolerate an OCR slip in the province character (default: never).
    #[serde(default)]
    pub tolerate_province: bool,
    /// A camera with no frame for this long raises "camera offline".
    #[serde(default = "AccessConfig::default_camera_offline_after")]
    pub camera_offline_after: Dur,
}
impl AccessConfig {
    fn default_agree() -> usize {
        3
    }
    fn default_window() -> usize {
        5
    }
    fn default_plate_province() -> f32 {
        0.8
    }
    fn default_strong_agree() -> usize {
        2
    }
    fn default_strong_match() -> f32 {
        0.5
    }
    fn default_strong_margin() -> f32 {
        0.1
    }
    fn default_liveness_frames() -> u32 {
        2
    }
    fn default_spoof_frames() -> u32 {
        5
    }
    fn default_cooldown() -> Dur {
        Dur::secs(10)
    }
    fn default_pin_max_failures() -> u32 {
        5
    }
    fn default_pin_lockout() -> Dur {
        Dur::secs(300)
    }
    fn default_pin_site_max_failures() -> u32 {
        15
    }
    fn default_pin_site_window() -> Dur {
        Dur::secs(600)
    }
    fn default_unknown_retention() -> Dur {
        Dur::secs(7 * 24 * 3600)
    }
    fn default_visitor_retention() -> Dur {
        Dur::secs(30 * 24 * 3600)
    }
    fn default_entry_log_retention() -> Dur {
        Dur::secs(180 * 24 * 3600)
    }
    fn default_leave_retention() -> Dur {
        Dur::secs(90 * 24 * 3600)
    }
    fn default_plate_votes() -> usize {
        3
    }
    fn default_plate_sure() -> f32 {
        0.97
    }
    fn default_plate_gone_after() -> Dur {
        Dur::secs(30)
    }
    fn default_camera_offline_after() -> Dur {
        Dur::secs(120)
    }
}
impl Default for AccessConfig {
    fn default() -> Self {
        toml::from_str("").expect("access defaults")
    }
}
