//! Alerts: absence and the other elder/gateway alerts, their escalation, the
//! outbox's records and the requests that reach staff phones (all pure; the
//! daemon's `alert` module does the sending).
//!
//! - `engine`: the pure state machine (open, remind, escalate, acknowledge, resolve).
//! - `message`: what a staff member reads (Chinese by default).
//! - `channel`: request building, signing and success judging per service.
//! - `outbox`: notification records, backoff and rate limits.
//! - `token`: HMAC-signed acknowledgement links.

pub mod channel;
pub mod cloud;
pub mod engine;
pub mod message;
pub mod notify;
pub mod outbox;
pub mod token;
pub mod watch;

use crate::clock::Timestamp;
use serde::{Deserialize, Serialize};

pub type AlertId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    Absence,
    Sos,
    BatteryLow,
    BandNotWorn,
    GatewayOffline,
    CameraOffline,
    /// Repeated liveness failures at a gate (a photo or screen held up).
    SpoofAttempts,
    DenyListed,
    ActuatorFailure,
    PinLockout,
}

impl AlertKind {
    pub const ALL: [AlertKind; 10] = [
        AlertKind::Absence,
        AlertKind::Sos,
        AlertKind::BatteryLow,
        AlertKind::BandNotWorn,
        AlertKind::GatewayOffline,
        AlertKind::CameraOffline,
        AlertKind::SpoofAttempts,
        AlertKind::DenyListed,
        AlertKind::ActuatorFailure,
        AlertKind::PinLockout,
    ];
    /// Alerts about an event rather than a state: they end when someone acknowledges them.
    pub fn ends_on_ack(self) -> bool {
        matches!(self, AlertKind::Sos | AlertKind::SpoofAttempts | AlertKind::DenyListed | AlertKind::PinLockout)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Absence => "absence",
            AlertKind::Sos => "sos",
            AlertKind::BatteryLow => "battery_low",
            AlertKind::BandNotWorn => "band_not_worn",
            AlertKind::GatewayOffline => "gateway_offline",
            AlertKind::CameraOffline => "camera_offline",
            AlertKind::SpoofAttempts => "spoof_attempts",
            AlertKind::DenyListed => "deny_listed",
            AlertKind::ActuatorFailure => "actuator_failure",
            AlertKind::PinLockout => "pin_lockout",
        }
    }
    /// Delivery order within a channel's rate limit (lower goes first): an SOS
    /// never waits behind routine alerts, and infrastructure waits for people.
    pub fn priority(self) -> u8 {
        match self {
            AlertKind::Sos => 0,
            AlertKind::Absence | AlertKind::DenyListed | AlertKind::SpoofAttempts | AlertKind::ActuatorFailure => 1,
            AlertKind::BandNotWorn | AlertKind::BatteryLow | AlertKind::PinLockout => 2,
            AlertKind::GatewayOffline | AlertKind::CameraOffline => 3,
        }
    }
    /// Infrastructure alerts come in storms (one Wi-Fi outage silences every
    /// gateway): the outbox sends them as one digest.
    pub fn is_infrastructure(self) -> bool {
        matches!(self, AlertKind::GatewayOffline | AlertKind::CameraOffline)
    }
    /// Lower sorts first; SOS is the most urgent.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::Sos => "critical",
            AlertKind::Absence | AlertKind::DenyListed | AlertKind::SpoofAttempts | AlertKind::ActuatorFailure => "high",
            AlertKind::BandNotWorn | AlertKind::GatewayOffline | AlertKind::CameraOffline | AlertKind::PinLockout => "warning",
            AlertKind::BatteryLow => "info",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "type", content = "id", rename_all = "snake_case")]
pub enum Subject {
    Elder(String),
    Gateway(String),
    Gate(String),
}

impl Subject {
    pub fn id(&self) -> &str {
        match self {
            Subject::Elder(s) | Subject::Gateway(s) | Subject::Gate(s) => s,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertState {
    Firing,
    Acknowledged,
    Resolved,
}

impl AlertState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertState::Firing => "firing",
            AlertState::Acknowledged => "acknowledged",
            AlertState::Resolved => "resolved",
        }
    }
}

/// One alert episode. Absence: opened once when the threshold passes, closed
/// when the elder is seen again (never re-opened by reminders).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub id: AlertId,
    pub kind: AlertKind,
    pub subject: Subject,
    pub state: AlertState,
    pub opened_at: Timestamp,
    /// Index into the escalation ladder currently responsible.
    pub level: usize,
    pub level_since: Timestamp,
    pub last_notified_at: Timestamp,
    /// Every level that has been told, so all of them hear "returned".
    pub notified_levels: Vec<usize>,
    /// For absence: the last sighting (or leave end / enrolment) the count started from.
    #[serde(default)]
    pub reference_at: Option<Timestamp>,
    /// Free text: where the SOS was pressed, the battery level, why a gateway is offline.
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub acked_by: Option<String>,
    #[serde(default)]
    pub acked_at: Option<Timestamp>,
    #[serde(default)]
    pub resolved_at: Option<Timestamp>,
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub reminders: u32,
    /// What staff found, chosen when they acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Staff's note with the acknowledgement (free text: stays on the box).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

/// What staff found, chosen when acknowledging (已上门，一切正常 …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    AllWell,
    Hospital,
    FamilyContacted,
    Other,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::AllWell, Outcome::Hospital, Outcome::FamilyContacted, Outcome::Other];
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::AllWell => "all_well",
            Outcome::Hospital => "hospital",
            Outcome::FamilyContacted => "family_contacted",
            Outcome::Other => "other",
        }
    }
    pub fn zh(self) -> &'static str {
        match self {
            Outcome::AllWell => "已上门，一切正常",
            Outcome::Hospital => "已送医",
            Outcome::FamilyContacted => "已联系家属",
            Outcome::Other => "其他",
        }
    }
    pub fn en(self) -> &'static str {
        match self {
            Outcome::AllWell => "visited, all well",
            Outcome::Hospital => "taken to hospital",
            Outcome::FamilyContacted => "family contacted",
            Outcome::Other => "other",
        }
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    /// The code (`all_well`) or either label, so a form or a CLI may send any.
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == t || o.zh() == t || o.en().eq_ignore_ascii_case(t))
            .ok_or_else(|| format!("outcome {t:?} is not one of all_well (已上门，一切正常), hospital (已送医), family_contacted (已联系家属), other (其他)"))
    }
}

/// Why a notification is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Firing,
    Reminder,
    Escalated,
    Acknowledged,
    Resolved,
    Test,
    /// The morning watch list of a grid (网格发现): not about one alert.
    WatchList,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Firing => "firing",
            NoticeKind::Reminder => "reminder",
            NoticeKind::Escalated => "escalated",
            NoticeKind::Acknowledged => "acknowledged",
            NoticeKind::Resolved => "resolved",
            NoticeKind::Test => "test",
            NoticeKind::WatchList => "watch_list",
        }
    }
}

/// A staff member who can be named as responsible and @-mentioned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staff {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub phone: Option<String>,
    /// e.g. "网格员".
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub grid: String,
}

/// One rung of an escalation ladder (grid worker → community office → street office).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    pub name: String,
    pub channels: Vec<String>,
    #[serde(default)]
    pub staff: Vec<String>,
}
