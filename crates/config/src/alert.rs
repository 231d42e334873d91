//! The `[alert]` section: absence and the other alert policies, ladders, channels and the outbox.

use crate::Dur;
use serde::Deserialize;
use std::time::Duration;

/// Timing of one kind of alert.
#[derive(Debug, Clone)]
pub struct AlertPolicy {
    /// Only for absence: how long unseen before an alert opens.
    pub after: Option<Dur>,
    /// Remind the current level this often until someone acknowledges.
    pub repeat_every: Dur,
    /// Notify the next level of the ladder if nobody acknowledges within this.
    pub escalate_after: Dur,
}

/// A policy section as written: every key may be left out, and takes the
/// default of its kind (`[alert.absence]` with only `after = "7d"` keeps
/// absence's reminder and escalation times).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyKeys {
    #[serde(default)]
    after: Option<Dur>,
    #[serde(default)]
    repeat_every: Option<Dur>,
    #[serde(default)]
    escalate_after: Option<Dur>,
}

impl PolicyKeys {
    fn over(self, d: AlertPolicy) -> AlertPolicy {
        AlertPolicy {
            after: self.after.or(d.after),
            repeat_every: self.repeat_every.unwrap_or(d.repeat_every),
            escalate_after: self.escalate_after.unwrap_or(d.escalate_after),
        }
    }
}

macro_rules! partial_policy {
    ($name:ident, $default:ident) => {
        fn $name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<AlertPolicy, D::Error> {
            Ok(PolicyKeys::deserialize(d)?.over(AlertConfig::$default()))
        }
    };
}
partial_policy!(absence_keys, default_absence);
partial_policy!(sos_keys, default_sos);
partial_policy!(battery_keys, default_battery);
partial_policy!(band_not_worn_keys, default_band_not_worn);
partial_policy!(gateway_offline_keys, default_gateway_offline);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    #[serde(default = "AlertConfig::default_absence", deserialize_with = "absence_keys")]
    pub absence: AlertPolicy,
    #[serde(default = "AlertConfig::default_sos", deserialize_with = "sos_keys")]
    pub sos: AlertPolicy,
    #[serde(default = "AlertConfig::default_battery", deserialize_with = "battery_keys")]
    pub battery: AlertPolicy,
    #[serde(default = "AlertConfig::default_band_not_worn", deserialize_with = "band_not_worn_keys")]
    pub band_not_worn: AlertPolicy,
    #[serde(default = "AlertConfig::default_gateway_offline", deserialize_with = "gateway_offline_keys")]
    pub gateway_offline: AlertPolicy,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// The default escalation ladder, for grids that have none in the store
    /// (set one per grid with `gatewarden escalation set`).
    #[serde(default)]
    pub ladder: Vec<LevelConfig>,
    /// Absence thresholds by elder category, e.g. `dementia = "24h"`,
    /// `visits_family = "72h"`. An elder's own threshold comes first; with
    /// several categories the shortest applies.
    #[serde(default)]
    pub absence_by_category: std::collections::BTreeMap<String, Dur>,
    /// Reminders wait out these hours (site time, UTC+8), e.g. "22:00-07:00".
    /// Never an SOS, never a first alert, never an escalation.
    #[serde(default)]
    pub quiet_hours: Option<String>,
    /// Each grid's morning watch list (网格发现) goes to its first ladder
    /// level at this time of day (site time), e.g. "07:30". None: off.
    #[serde(default)]
    pub watch_list_at: Option<String>,
}
impl AlertConfig {
    fn policy(after: Option<u64>, repeat: u64, escalate: u64) -> AlertPolicy {
        AlertPolicy { after: after.map(Dur::secs), repeat_every: Dur::secs(repeat), escalate_after: Dur::secs(escalate) }
    }
    fn default_absence() -> AlertPolicy {
        Self::policy(Some(48 * 3600), 6 * 3600, 12 * 3600)
    }
    fn default_sos() -> AlertPolicy {
        Self::policy(None, 5 * 60, 10 * 60)
    }
    fn default_battery() -> AlertPolicy {
        Self::policy(None, 24 * 3600, 72 * 3600)
    }
    fn default_band_not_worn() -> AlertPolicy {
        Self::policy(None, 24 * 3600, 72 * 3600)
    }
    fn default_gateway_offline() -> AlertPolicy {
        Self::policy(None, 6 * 3600, 12 * 3600)
    }
    pub fn absence_after(&self) -> Duration {
        self.absence.after.map(Dur::get).unwrap_or(Duration::from_secs(48 * 3600))
    }

    /// `watch_list_at` as a time of day (checked by `validate`).
    pub fn watch_list_time(&self) -> Option<chrono::NaiveTime> {
        self.watch_list_at.as_deref().and_then(|t| chrono::NaiveTime::parse_from_str(t.trim(), "%H:%M").ok())
    }

    /// An elder's absence threshold: their own, else the shortest of their
    /// categories', else None (the site's `absence.after`).
    pub fn absence_after_for(&self, own_secs: Option<u64>, categories: &[String]) -> Option<Duration> {
        own_secs.map(Duration::from_secs).or_else(|| categories.iter().filter_map(|c| self.absence_by_category.get(c.trim())).map(|d| d.get()).min())
    }
}
impl Default for AlertConfig {
    fn default() -> Self {
        toml::from_str("").expect("alert defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LevelConfig {
    /// e.g. "网格员" (grid worker), "社区办" (community office), "街道办" (street office).
    pub name: String,
    pub channels: Vec<String>,
    /// Staff ids (from `gatewarden staff add`) to mention and name as responsible.
    #[serde(default)]
    pub staff: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    #[serde(default = "OutboxConfig::default_retry_initial")]
    pub retry_initial: Dur,
    #[serde(default = "OutboxConfig::default_retry_max")]
    pub retry_max: Dur,
    #[serde(default = "OutboxConfig::default_request_timeout")]
    pub request_timeout: Dur,
    /// Delivered notifications are kept this long for audit, then purged.
    #[serde(default = "OutboxConfig::default_retention")]
    pub retention: Dur,
    /// Gateway and camera notifications wait this long for others to join
    /// them in one digest (one Wi-Fi outage silences every gateway at once).
    #[serde(default = "OutboxConfig::default_digest_window")]
    pub digest_window: Dur,
    /// At most this many devices in one digest.
    #[serde(default = "OutboxConfig::default_digest_max")]
    pub digest_max: usize,
}
impl OutboxConfig {
    fn default_digest_window() -> Dur {
        Dur::secs(10)
    }
    fn default_digest_max() -> usize {
        100
    }
    fn default_retry_initial() -> Dur {
        Dur::secs(2)
    }
    fn default_retry_max() -> Dur {
        Dur::secs(600)
    }
    fn default_request_timeout() -> Dur {
        Dur::secs(10)
    }
    fn default_retention() -> Dur {
        Dur::secs(30 * 24 * 3600)
    }
}
impl Default for OutboxConfig {
    fn default() -> Self {
        toml::from_str("").expect("outbox defaults")
    }
}

pub use domain::alert::channel::ChannelKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub name: String,
    pub kind: ChannelKind,
    /// The full webhook URL (for ntfy: the server, e.g. "https://ntfy.sh").
    pub url: String,
    /// Signing secret (DingTalk "SEC…", Feishu, generic webhook HMAC key).
    #[serde(default)]
    pub secret: Option<String>,
    /// Read the secret from this environment variable instead.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// ntfy topic.
    #[serde(default)]
    pub topic: Option<String>,
    /// ntfy access token.
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub rate_per_minute: Option<u32>,
    /// WeCom and DingTalk: "text" (default; @-mentions work) or "markdown"
    /// (bold title, a tappable acknowledge link).
    #[serde(default)]
    pub format: domain::alert::channel::TextFormat,
    /// Only these alert kinds ("sos", "absence", …) go through this channel;
    /// empty: all. A voice channel defaults to ["sos"].
    #[serde(default)]
    pub kinds: Vec<String>,
    /// SMS and voice: Alibaba AccessKeyId / Tencent SecretId (the secret is
    /// `secret` or `secret_env`).
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// SMS: the approved signature (签名).
    #[serde(default)]
    pub sign_name: Option<String>,
    /// SMS: Alibaba TemplateCode / Tencent TemplateId; voice: TtsCode.
    #[serde(default)]
    pub template: Option<String>,
    /// Which fields fill the template, in order: name, kind, notice, time,
    /// address, place, site, ref, link.
    #[serde(default)]
    pub template_params: Vec<String>,
    /// Tencent SmsSdkAppId.
    #[serde(default)]
    pub app_id: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    /// Voice: the number the callee sees (CalledShowNumber).
    #[serde(default)]
    pub show_number: Option<String>,
    /// SMS and voice: "staff" (the level's staff; default) or "contacts"
    /// (the elder's emergency contacts: their family).
    #[serde(default)]
    pub to: domain::alert::channel::Audience,
    /// SMS and voice: numbers always sent to as well (a duty officer).
    #[serde(default)]
    pub phones: Vec<String>,
}

/// The fields an SMS or voice template may use.
pub const TEMPLATE_FIELDS: [&str; 9] = ["name", "kind", "notice", "time", "address", "place", "site", "ref", "link"];

impl ChannelConfig {
    pub fn rate_per_minute(&self) -> u32 {
        self.rate_per_minute.unwrap_or_else(|| self.kind.default_rate_per_minute())
    }
    /// What the domain needs to build a request for this channel.
    pub fn endpoint(&self) -> domain::alert::channel::Endpoint {
        domain::alert::channel::Endpoint {
            name: self.name.clone(),
            kind: self.kind,
            format: self.format,
            url: self.url.clone(),
            topic: self.topic.clone(),
            token: self.token.clone(),
            cloud: domain::alert::cloud::CloudAccount {
                key_id: self.access_key_id.clone().unwrap_or_default(),
                sign_name: self.sign_name.clone().unwrap_or_default(),
                template: self.template.clone().unwrap_or_default(),
                template_params: self.template_params.clone(),
                app_id: self.app_id.clone().unwrap_or_default(),
                region: self.region.clone().unwrap_or_default(),
                show_number: self.show_number.clone().unwrap_or_default(),
            },
            audience: self.to,
            phones: self.phones.clone(),
        }
    }

    /// Whether alerts of `kind` go through this channel.
    pub fn carries(&self, kind: domain::alert::AlertKind) -> bool {
        if self.kinds.is_empty() {
            return self.kind != ChannelKind::AliyunVoice || kind == domain::alert::AlertKind::Sos;
        }
        self.kinds.iter().any(|k| k == kind.as_str())
    }
    pub fn resolved_secret(&self) -> Option<String> {
        if let Some(var) = &self.secret_env {
            return std::env::var(var).ok();
        }
        self.secret.clone()
    }
}
