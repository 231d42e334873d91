//! Administration: the HTTP API the daemon serves on loopback (bearer token),
//! and the CLI that talks to it. sled is single-process, so the CLI never
//! opens the database while a daemon runs; it goes through the API.

pub mod access;
pub mod api;
pub mod cli;
pub mod console;
pub mod roster;
pub mod server;
mod state;

pub use state::Shared;

use serde::{Deserialize, Serialize};

/// `POST /api/v1/elders`. Wristbands and contacts are strings, validated by the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElderInput {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub building: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub room: String,
    #[serde(default)]
    pub grid: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub bands: Vec<String>,
    /// "NAME:PHONE[:RELATION]"
    #[serde(default)]
    pub contacts: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub notes: String,
    /// This elder's own absence threshold, e.g. "24h"; default: their
    /// categories' (`alert.absence_by_category`), else the site's.
    #[serde(default)]
    pub absence_after: Option<String>,
}

/// `PATCH /api/v1/elders/{id}`: only what is given changes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElderPatch {
    pub name: Option<String>,
    pub building: Option<String>,
    pub unit: Option<String>,
    pub room: Option<String>,
    pub grid: Option<String>,
    pub phone: Option<String>,
    #[serde(default)]
    pub add_bands: Vec<String>,
    #[serde(default)]
    pub remove_bands: Vec<String>,
    /// Replaces all contacts when given.
    pub contacts: Option<Vec<String>>,
    pub categories: Option<Vec<String>>,
    pub notes: Option<String>,
    /// "24h"; "" or "default" clears it.
    pub absence_after: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaveInput {
    pub elder: String,
    /// RFC 3339, or YYYY-MM-DD (midnight, China time). Default: now.
    #[serde(default)]
    pub from: Option<String>,
    pub until: String,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub by: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckInInput {
    pub elder: String,
    pub by: String,
    #[serde(default)]
    pub note: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceSightingInput {
    pub elder: String,
    pub gate: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckInput {
    pub by: String,
    /// all_well (已上门，一切正常), hospital (已送医), family_contacted (已联系家属), other (其他).
    #[serde(default)]
    pub outcome: Option<String>,
    #[serde(default)]
    pub note: String,
}

/// `POST /api/v1/alerts/{id}/resolve`: close an alert by hand.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResolveInput {
    pub by: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockInput {
    /// e.g. "49h"
    #[serde(default)]
    pub advance: Option<String>,
    /// RFC 3339
    #[serde(default)]
    pub set: Option<String>,
    /// Step the wall clock alone, as NTP does: "-30h" or "30h".
    #[serde(default)]
    pub step: Option<String>,
}

/// One row of `gatewarden presence`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceRow {
    pub elder: String,
    pub name: String,
    pub address: String,
    pub grid: String,
    pub last_seen: Option<domain::clock::Timestamp>,
    pub source: Option<String>,
    pub place: Option<String>,
    pub battery: Option<u8>,
    pub unseen_hours: Option<f64>,
    pub on_leave: bool,
    /// This elder's own absence threshold (their own, their categories', or the site's).
    pub absence_after_hours: f64,
}
