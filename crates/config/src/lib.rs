//! Strict TOML configuration. Unknown keys are errors, durations are written
//! "48h", and every problem is reported with its key path
//! (`alert.channels[1].secret`) before the daemon refuses to start.

use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};
use std::time::Duration;

mod access;
mod alert;
mod cluster;
mod console;
mod debug;
mod gates;
mod http;
mod log;
mod mqtt;
mod presence;
mod settings;

/// A duration that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?} ({reason}); write it like \"48h\", \"30m\" or \"3s\"")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// A secret (admin token, ack key) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("the secret is {chars} characters; it must be at least {MIN_SECRET_CHARS} (e.g. `openssl rand -hex 32`), or unset it and the box makes one")]
    TooShort { chars: usize },
    #[error("required: every cluster message is signed with the site's key. Make one (`openssl rand -hex 32 > /etc/gatewarden/cluster.key`) and copy the same file to every box")]
    Missing,
}

/// The shortest secret accepted for signing links or guarding the API.
pub const MIN_SECRET_CHARS: usize = 16;
mod store;
mod vision;

pub use access::*;
pub use alert::*;
pub use cluster::*;
pub use console::*;
pub use debug::*;
pub use gates::*;
pub use http::*;
pub use log::*;
pub use mqtt::*;
pub use presence::*;
pub use store::*;
pub use vision::*;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {key}: {message}")]
    Parse { path: PathBuf, key: String, message: String },
    #[error("{path}: {} problem(s):\n{}", .problems.len(), .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

/// One validation problem, tied to the key that causes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// A duration written as text: "48h", "90s", "2d 6h", "250ms".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
    pub fn get(self) -> Duration {
        self.0
    }
    pub fn parse(s: &str) -> Result<Self, DurationError> {
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| DurationError { input: s.to_string(), reason: e.to_string() })
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

pub use domain::alert::message::Language;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Short name of the compound; used in MQTT topics and messages.
    pub site: String,
    /// Human-readable name of the compound shown in alerts.
    #[serde(default)]
    pub site_name: Option<String>,
    #[serde(default)]
    pub language: Language,
    pub store: StoreConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub mqtt: MqttConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
    #[serde(default)]
    pub alert: AlertConfig,
    #[serde(default)]
    pub vision: VisionConfig,
    /// Gate access policy (shared by all gates).
    #[serde(default)]
    pub access: AccessConfig,
    /// One entry per gate: its camera, its actuator and its rules.
    #[serde(default)]
    pub gates: Vec<GateConfig>,
    /// Several boxes in one compound (see ARCHITECTURE.md). Absent: this box
    /// is alone and always alerts.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    #[serde(default)]
    pub console: ConsoleConfig,
    #[serde(default)]
    pub debug: DebugConfig,
}

impl Config {
    /// Read, parse and validate. Every validation problem is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = Self::parse(&text).map_err(|(key, message)| ConfigError::Parse { path: path.to_owned(), key, message })?;
        let problems = cfg.validate();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid { path: path.to_owned(), problems });
        }
        Ok(cfg)
    }

    /// Parse TOML, returning the failing key path and message on error.
    pub fn parse(text: &str) -> Result<Config, (String, String)> {
        let de = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_string() } else { key };
            // toml's message carries the line and column; keep its first paragraph.
            let msg = e.into_inner().to_string();
            (key, msg.trim().replace('\n', " ").replace("  ", " "))
        })
    }

    /// Cross-field checks that serde cannot express.
    pub fn validate(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        let mut bad = |key: String, message: String| p.push(Problem { key, message });
        if self.site.trim().is_empty() || self.site.contains(['/', '+', '#', ' ']) {
            bad("site".into(), "must be a non-empty name without spaces, '/', '+' or '#'".into());
        }
        if let Err(e) = self.mqtt.external_addr() {
            bad("mqtt.broker".into(), e.to_string());
        }
        if let Some(c) = &self.cluster {
            if c.box_id.is_empty() || !c.box_id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                bad("cluster.box_id".into(), "must be a non-empty name of letters, digits, '-' or '_'".into());
            }
            if c.enrolment.is_some() && c.sync_key_file.is_none() {
                bad("cluster.sync_key_file".into(), "is required with cluster.enrolment (the same key file on every box)".into());
            }
            if c.enrolment == Some(domain::cluster::EnrolmentRole::Replica) {
                match &c.sync_public_key {
                    None => bad("cluster.sync_public_key".into(), "is required on a replica: the source's public key, from its sync-signing.key.pub".into()),
                    Some(k) if k.trim().len() != 64 || !k.trim().chars().all(|ch| ch.is_ascii_hexdigit()) => {
                        bad("cluster.sync_public_key".into(), "must be 64 hex characters (an ed25519 public key)".into())
                    }
                    Some(_) => {}
                }
            }
            if c.claim_settle.get() * 3 > c.lease_ttl.get() {
                bad("cluster.claim_settle".into(), "must be under a third of cluster.lease_ttl".into());
            }
        }
        if self.mqtt.client_cert_file.is_some() != self.mqtt.client_key_file.is_some() {
            bad("mqtt.client_cert_file".into(), "give client_cert_file and client_key_file together".into());
        }
        for (k, f) in
            [("mqtt.ca_file", &self.mqtt.ca_file), ("mqtt.client_cert_file", &self.mqtt.client_cert_file), ("mqtt.client_key_file", &self.mqtt.client_key_file)]
        {
            if let Some(f) = f {
                if !self.mqtt.tls() {
                    bad(k.into(), "only means something with an mqtts:// broker".into());
                } else if let Err(e) = std::fs::metadata(f) {
                    bad(k.into(), format!("{}: {e}", f.display()));
                }
            }
        }
        if self.mqtt.topics.is_empty() && self.mqtt.sources.is_empty() {
            bad("mqtt.topics".into(), "at least one topic filter is needed (mqtt.topics or [[mqtt.sources]])".into());
        }
        for (i, t) in self.mqtt.topics.iter().enumerate() {
            if let Some(p) = mqtt::filter_problem(t) {
                bad(format!("mqtt.topics[{i}]"), format!("{t:?}: {p}"));
            }
        }
        for (i, s) in self.mqtt.sources.iter().enumerate() {
            if let Some(p) = mqtt::filter_problem(&s.topic) {
                bad(format!("mqtt.sources[{i}].topic"), format!("{:?}: {p}", s.topic));
            }
            if s.gateway.as_deref().is_some_and(|g| g.trim().is_empty() || g.len() > 64) {
                bad(format!("mqtt.sources[{i}].gateway"), "must be 1..64 characters".into());
            }
        }
        if self.mqtt.max_payload_bytes == 0 {
            bad("mqtt.max_payload_bytes".into(), "must be greater than 0".into());
        }
        if self.mqtt.reconnect_min > self.mqtt.reconnect_max {
            bad("mqtt.reconnect_min".into(), "must not exceed mqtt.reconnect_max".into());
        }
        if let Some(env) = &self.mqtt.password_env {
            if std::env::var(env).is_err() {
                bad("mqtt.password_env".into(), format!("environment variable {env} is not set"));
            }
        }
        if self.presence.tick_interval.get().is_zero() {
            bad("presence.tick_interval".into(), "must be greater than 0".into());
        }
        if self.presence.battery_low_percent > 100 {
            bad("presence.battery_low_percent".into(), "must be 0..=100".into());
        }
        if self.alert.absence.after.is_none() {
            bad("alert.absence.after".into(), "must be set (e.g. \"48h\")".into());
        }
        for (name, pol) in [
            ("absence", &self.alert.absence),
            ("sos", &self.alert.sos),
            ("battery", &self.alert.battery),
            ("band_not_worn", &self.alert.band_not_worn),
            ("gateway_offline", &self.alert.gateway_offline),
        ] {
            if pol.repeat_every.get().is_zero() {
                bad(format!("alert.{name}.repeat_every"), "must be greater than 0".into());
            }
            if pol.escalate_after.get().is_zero() {
                bad(format!("alert.{name}.escalate_after"), "must be greater than 0".into());
            }
            if name != "absence" && pol.after.is_some() {
                bad(format!("alert.{name}.after"), "only alert.absence has `after`".into());
            }
        }
        if self.alert.outbox.retry_initial > self.alert.outbox.retry_max {
            bad("alert.outbox.retry_initial".into(), "must not exceed alert.outbox.retry_max".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, ch) in self.alert.channels.iter().enumerate() {
            let key = |f: &str| format!("alert.channels[{i}].{f}");
            if ch.name.trim().is_empty() {
                bad(key("name"), "must not be empty".into());
            } else if !names.insert(ch.name.clone()) {
                bad(key("name"), format!("duplicate channel name {:?}", ch.name));
            }
            match url::Url::parse(&ch.url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(_) => bad(key("url"), "must be an http:// or https:// URL".into()),
                Err(e) => bad(key("url"), format!("invalid URL: {e}")),
            }
            if let Some(env) = &ch.secret_env {
                if std::env::var(env).is_err() {
                    bad(key("secret_env"), format!("environment variable {env} is not set"));
                }
            }
            let has_secret = ch.secret.is_some() || ch.secret_env.is_some();
            match ch.kind {
                ChannelKind::Dingtalk | ChannelKind::Feishu if !has_secret => {
                    bad(key("secret"), "signed robots need their signing secret (or secret_env)".into())
                }
                ChannelKind::Ntfy if ch.topic.is_none() => bad(key("topic"), "ntfy needs a topic".into()),
                k if k.is_cloud() => {
                    if !has_secret {
                        bad(key("secret"), "SMS and voice need the AccessKeySecret / SecretKey (secret or secret_env)".into());
                    }
                    let need = |v: &Option<String>| v.as_deref().is_none_or(|s| s.trim().is_empty());
                    if need(&ch.access_key_id) {
                        bad(key("access_key_id"), "SMS and voice need the AccessKeyId / SecretId".into());
                    }
                    if need(&ch.template) {
                        bad(key("template"), "the approved template (TemplateCode / TemplateId / TtsCode) is needed".into());
                    }
                    if k != ChannelKind::AliyunVoice && need(&ch.sign_name) {
                        bad(key("sign_name"), "SMS needs its approved signature (签名)".into());
                    }
                    if k == ChannelKind::TencentSms && need(&ch.app_id) {
                        bad(key("app_id"), "Tencent SMS needs the SmsSdkAppId".into());
                    }
                    for (j, f) in ch.template_params.iter().enumerate() {
                        if !TEMPLATE_FIELDS.contains(&f.as_str()) {
                            bad(format!("alert.channels[{i}].template_params[{j}]"), format!("{f:?} is not one of {}", TEMPLATE_FIELDS.join(", ")));
                        }
                    }
                    for (j, p) in ch.phones.iter().enumerate() {
                        if !domain::presence::is_phone(p) {
                            bad(format!("alert.channels[{i}].phones[{j}]"), format!("{p:?} is not a phone number"));
                        }
                    }
                }
                _ => {}
            }
            for (j, k) in ch.kinds.iter().enumerate() {
                if !domain::alert::AlertKind::ALL.iter().any(|a| a.as_str() == k) {
                    bad(format!("alert.channels[{i}].kinds[{j}]"), format!("{k:?} is not an alert kind"));
                }
            }
            if ch.rate_per_minute == Some(0) {
                bad(key("rate_per_minute"), "must be greater than 0".into());
            }
        }
        if let Some(q) = &self.alert.quiet_hours {
            if let Err(e) = q.parse::<domain::alert::engine::QuietHours>() {
                bad("alert.quiet_hours".into(), format!("{e} (e.g. \"22:00-07:00\", site time)"));
            }
        }
        for (id, name) in &self.presence.gateway_names {
            if name.trim().is_empty() || name.chars().count() > 64 {
                bad(format!("presence.gateway_names.{id}"), "a display name has 1..64 characters".into());
            }
        }
        if self.alert.watch_list_at.is_some() && self.alert.watch_list_time().is_none() {
            bad("alert.watch_list_at".into(), format!("{:?} is not a time of day HH:MM (site time)", self.alert.watch_list_at.as_deref().unwrap_or_default()));
        }
        for (cat, d) in &self.alert.absence_by_category {
            if d.get() < std::time::Duration::from_secs(600) || d.get() > std::time::Duration::from_secs(60 * 86400) {
                bad(format!("alert.absence_by_category.{cat}"), format!("{d} must be between 10m and 60d"));
            }
        }
        for (i, lvl) in self.alert.ladder.iter().enumerate() {
            if lvl.channels.is_empty() {
                bad(format!("alert.ladder[{i}].channels"), "a level needs at least one channel".into());
            }
            for (j, c) in lvl.channels.iter().enumerate() {
                if !names.contains(c) {
                    bad(format!("alert.ladder[{i}].channels[{j}]"), format!("no channel named {c:?} in alert.channels"));
                }
            }
        }
        let mut gate_names = std::collections::HashSet::new();
        for (i, g) in self.gates.iter().enumerate() {
            let key = |f: &str| format!("gates[{i}].{f}");
            if g.name.is_empty() || g.name.contains(['/', '+', '#', ' ']) {
                bad(key("name"), "must be a non-empty name without spaces, '/', '+' or '#'".into());
            } else if !gate_names.insert(g.name.clone()) {
                bad(key("name"), format!("duplicate gate name {:?}", g.name));
            }
            for (f, h) in [("visitor_hours", &g.visitor_hours), ("resident_hours", &g.resident_hours)] {
                if let Some(h) = h {
                    if let Err(e) = h.parse::<domain::gate::policy::Hours>() {
                        bad(key(f), e.to_string());
                    }
                }
            }
            if g.max_fps.is_nan() || g.max_fps <= 0.0 {
                bad(key("max_fps"), "must be greater than 0".into());
            }
            if let Some(f) = &g.device_token_file {
                match Self::secret_from(&None, &Some(f.clone()), "") {
                    Err(e) => bad(key("device_token_file"), e.to_string()),
                    Ok(t) if t.is_some() && t.as_deref() == self.admin_token().ok().flatten().as_deref() => {
                        bad(key("device_token_file"), "is the admin token: a device gets a token of its own".into())
                    }
                    Ok(_) => {}
                }
            }
            if let ActuatorConfig::Http { url, .. } = &g.actuator {
                if url::Url::parse(url).is_err() {
                    bad(key("actuator.url"), format!("invalid URL {url:?}"));
                }
            }
        }
        if self.access.agree_frames == 0 || self.access.agree_frames > self.access.window_frames {
            bad("access.agree_frames".into(), "must be 1..=access.window_frames".into());
        }
        if self.access.strong_agree_frames == 0 || self.access.strong_agree_frames > self.access.agree_frames {
            bad("access.strong_agree_frames".into(), "must be 1..=access.agree_frames".into());
        }
        if !(self.vision.match_threshold..=1.0).contains(&self.access.strong_match) {
            bad("access.strong_match".into(), "must be between vision.match_threshold and 1".into());
        }
        if !(0.0..=1.0).contains(&self.access.strong_margin) {
            bad("access.strong_margin".into(), "must be in 0..1".into());
        }
        if !(self.vision.track_fps > 0.0 && self.vision.track_fps <= 60.0) {
            bad("vision.track_fps".into(), "must be in (0, 60]".into());
        }
        if self.vision.track_max_embeds == 0 || self.vision.track_liveness_frames == 0 {
            bad("vision.track_max_embeds".into(), "track_max_embeds and track_liveness_frames must be at least 1".into());
        }
        if self.access.spoof_frames.max(self.access.liveness_frames) > self.vision.track_liveness_frames {
            // The tracker keeps this many liveness scores: a longer requirement could never be met.
            bad("access.spoof_frames".into(), "access.liveness_frames and access.spoof_frames must not exceed vision.track_liveness_frames".into());
        }
        if self.access.liveness_frames == 0 || self.access.spoof_frames == 0 {
            bad("access.liveness_frames".into(), "liveness_frames and spoof_frames must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.vision.match_threshold) {
            bad("vision.match_threshold".into(), "must be a cosine similarity in 0..1".into());
        }
        if self.http.admin_token.is_some() && self.http.admin_token_file.is_some() {
            bad("http.admin_token".into(), "set admin_token or admin_token_file, not both".into());
        }
        if self.http.ack_secret.is_some() && self.http.ack_secret_file.is_some() {
            bad("http.ack_secret".into(), "set ack_secret or ack_secret_file, not both".into());
        }
        if let Some(u) = &self.http.public_url {
            if url::Url::parse(u).is_err() {
                bad("http.public_url".into(), format!("invalid URL {u:?}"));
            }
        }
        // A secret that is empty or short signs links anyone can compute offline.
        let key = |file: &Option<PathBuf>, name: &str| if file.is_some() { format!("http.{name}_file") } else { format!("http.{name}") };
        if let Err(e) = self.ack_secret() {
            bad(key(&self.http.ack_secret_file, "ack_secret"), e.to_string());
        }
        if let Err(e) = self.admin_token() {
            bad(key(&self.http.admin_token_file, "admin_token"), e.to_string());
        }
        if let Err(e) = self.cluster_key() {
            bad("cluster.key_file".into(), e.to_string());
        }
        // Zero periods would panic a task's interval (or spin it).
        for (k, d) in [
            ("store.flush_every", self.store.flush_every),
            ("store.integrity_every", self.store.integrity_every),
            ("http.header_read_timeout", self.http.header_read_timeout),
            ("presence.clock_step_threshold", self.presence.clock_step_threshold),
            ("vision.heartbeat_timeout", self.vision.heartbeat_timeout),
            ("presence.tick_interval", self.presence.tick_interval),
        ] {
            if d.get().is_zero() {
                bad(k.into(), "must be longer than 0s".into());
            }
        }
        if self.http.max_connections == 0 {
            bad("http.max_connections".into(), "must be at least 1".into());
        }
        if self.store.backup_keep == 0 {
            bad("store.backup_keep".into(), "must be at least 1 (turn scheduled backups off with store.backup_every = \"0s\")".into());
        }
        if self.access.pin_max_failures == 0 {
            bad("access.pin_max_failures".into(), "must be at least 1".into());
        }
        if self.access.pin_site_max_failures == 0 {
            bad("access.pin_site_max_failures".into(), "must be at least 1".into());
        }
        if self.console.login_max_failures == 0 {
            bad("console.login_max_failures".into(), "must be at least 1".into());
        }
        p
    }

    /// What staff read for a gateway or gate id: the gateway inventory's
    /// name, a gate's `display_name`, else the id itself.
    pub fn place_name(&self, id: &str) -> String {
        if let Some(n) = self.presence.gateway_display(id) {
            return n.to_string();
        }
        match self.gates.iter().find(|g| g.name == id) {
            Some(g) => g.display_name.clone().unwrap_or_else(|| g.name.clone()),
            None => id.to_string(),
        }
    }

    pub fn client_id(&self) -> String {
        // Boxes of one site must not share a client id: the broker would keep
        // disconnecting one for the other.
        self.mqtt.client_id.clone().unwrap_or_else(|| match &self.cluster {
            Some(c) => format!("gatewarden-{}-{}", self.site, c.box_id),
            None => format!("gatewarden-{}", self.site),
        })
    }

    pub fn mqtt_password(&self) -> Option<String> {
        match &self.mqtt.password_env {
            Some(v) => std::env::var(v).ok(),
            None => self.mqtt.password.clone(),
        }
    }

    fn secret_from(inline: &Option<String>, file: &Option<PathBuf>, env: &str) -> Result<Option<String>, SecretError> {
        // The environment first; then the file, then the inline value. All are length-checked.
        let value = match (std::env::var(env).ok().filter(|v| !v.is_empty()), file) {
            (Some(v), _) => v,
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| SecretError::Unreadable { path: f.clone(), reason: e.to_string() })?.trim().to_string(),
            (None, None) => match inline {
                Some(v) => v.clone(),
                None => return Ok(None),
            },
        };
        if value.chars().count() < MIN_SECRET_CHARS {
            return Err(SecretError::TooShort { chars: value.chars().count() });
        }
        Ok(Some(value))
    }

    /// Each gate's device token (`gates[].device_token_file`), by gate.
    pub fn device_tokens(&self) -> Vec<(String, String)> {
        self.gates.iter().filter_map(|g| Some((g.name.clone(), Self::secret_from(&None, &g.device_token_file.clone(), "").ok()??))).collect()
    }

    /// The admin API token: GATEWARDEN_ADMIN_TOKEN, then the file, then inline.
    pub fn admin_token(&self) -> Result<Option<String>, SecretError> {
        Self::secret_from(&self.http.admin_token, &self.http.admin_token_file, "GATEWARDEN_ADMIN_TOKEN")
    }

    /// The site's cluster-message key (`cluster.key_file`); None without `[cluster]`.
    pub fn cluster_key(&self) -> Result<Option<Vec<u8>>, SecretError> {
        let Some(c) = &self.cluster else { return Ok(None) };
        let Some(f) = &c.key_file else { return Err(SecretError::Missing) };
        Ok(Self::secret_from(&None, &Some(f.clone()), "GATEWARDEN_CLUSTER_KEY")?.map(String::into_bytes))
    }

    pub fn ack_secret(&self) -> Result<Option<String>, SecretError> {
        Self::secret_from(&self.http.ack_secret, &self.http.ack_secret_file, "GATEWARDEN_ACK_SECRET")
    }

    pub fn public_url(&self) -> String {
        self.http.public_url.clone().unwrap_or_else(|| format!("http://{}", self.http.listen)).trim_end_matches('/').to_string()
    }
}

impl Config {
    /// Where the face-template key lives: outside the database, beside it.
    pub fn template_key_path(&self) -> PathBuf {
        self.access.template_key_file.clone().unwrap_or_else(|| self.admin_token_path().with_file_name("template.key"))
    }

    /// The key that seals unknown-face snapshots: beside the template key.
    pub fn snapshot_key_path(&self) -> PathBuf {
        self.admin_token_path().with_file_name("snapshot.key")
    }

    /// The enrolment source's ed25519 signing key (`cluster.sync_signing_key_file`).
    pub fn sync_signing_key_path(&self) -> PathBuf {
        self.cluster.as_ref().and_then(|c| c.sync_signing_key_file.clone()).unwrap_or_else(|| self.admin_token_path().with_file_name("sync-signing.key"))
    }

    /// Where the per-person keys live (`access.person_keys_file`): beside the template key.
    pub fn person_keys_path(&self) -> PathBuf {
        self.access.person_keys_file.clone().unwrap_or_else(|| self.admin_token_path().with_file_name("person.keys"))
    }

    /// Where `gatewarden run` writes the admin token for the CLI.
    pub fn admin_token_path(&self) -> PathBuf {
        let p = &self.store.path;
        p.parent().unwrap_or(Path::new(".")).join("admin.token")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "site = \"t\"\n[store]\npath = \"/tmp/x\"\n";

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::parse(MIN).unwrap();
        assert_eq!(c.alert.absence_after(), Duration::from_secs(48 * 3600));
        assert_eq!(c.alert.absence.repeat_every, Dur::secs(6 * 3600));
        assert_eq!(c.mqtt.max_payload_bytes, 16384);
        assert_eq!(c.mqtt.broker, "embedded");
        assert!(c.validate().is_empty());
    }

    #[test]
    fn unknown_key_error_names_the_key_path() {
        let (key, msg) = Config::parse(&format!("{MIN}[alert.absence]\nafter = \"48h\"\nrepeat_every=\"6h\"\nescalate_after=\"1h\"\nbogus = 1\n")).unwrap_err();
        assert_eq!(key, "alert.absence.bogus");
        assert!(msg.contains("bogus"), "{msg}");
    }

    #[test]
    fn bad_duration_error_names_the_key_path() {
        let (key, msg) = Config::parse(&format!("{MIN}[presence]\ntick_interval = \"soon\"\n")).unwrap_err();
        assert_eq!(key, "presence.tick_interval");
        assert!(msg.contains("invalid duration"), "{msg}");
    }

    #[test]
    fn validate_reports_every_problem_with_its_key() {
        let text = format!(
            "{MIN}[[alert.channels]]\nname=\"a\"\nkind=\"dingtalk\"\nurl=\"ftp://x\"\n\
             [[alert.channels]]\nname=\"a\"\nkind=\"ntfy\"\nurl=\"http://n\"\n\
             [[alert.ladder]]\nname=\"grid\"\nchannels=[\"nope\"]\n"
        );
        let c = Config::parse(&text).unwrap();
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        for k in ["alert.channels[0].url", "alert.channels[0].secret", "alert.channels[1].name", "alert.channels[1].topic", "alert.ladder[0].channels[0]"] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn shipped_example_and_demo_configs_parse_and_validate() {
        for f in ["config/gatewarden.example.toml", "config/demo.toml"] {
            let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join(f);
            let text = std::fs::read_to_string(&path).unwrap();
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{f}: {e:?}"));
            assert!(c.validate().is_empty(), "{f}: {:?}", c.validate());
        }
    }

    #[test]
    fn a_partial_policy_section_takes_the_defaults_of_its_kind() {
        let c = Config::parse(&format!("{MIN}[alert.absence]\nafter = \"7d\"\n[alert.sos]\nrepeat_every = \"1m\"\n")).unwrap();
        assert_eq!(c.alert.absence.after.map(Dur::get), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(c.alert.absence.repeat_every.get(), Duration::from_secs(6 * 3600));
        assert_eq!(c.alert.absence.escalate_after.get(), Duration::from_secs(12 * 3600));
        assert_eq!(c.alert.sos.repeat_every.get(), Duration::from_secs(60));
        assert_eq!(c.alert.sos.escalate_after.get(), Duration::from_secs(600));
        let (key, _) = Config::parse(&format!("{MIN}[alert.absence]\nrepeat = \"1h\"\n")).unwrap_err();
        assert_eq!(key, "alert.absence.repeat", "an unknown key is still refused by name");
        assert!(c.mqtt.topics.iter().any(|t| t == "home/+/LWT"), "gateway LWT is subscribed by default");
    }

    #[test]
    fn dangerous_values_are_refused_with_their_key_path() {
        let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("ack.key");
        std::fs::write(&empty, "\n").unwrap();
        let text = format!(
            "site = \"t\"\n[store]\npath = \"/tmp/x\"\nflush_every = \"0s\"\n[http]\nack_secret_file = \"{}\"\nadmin_token = \"short\"\n[console]\nlogin_max_failures = 0\n",
            empty.display()
        );
        let c = Config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
        let problems = c.validate();
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        for k in ["http.ack_secret_file", "http.admin_token", "store.flush_every", "console.login_max_failures"] {
            assert!(keys.contains(&k), "missing {k} in {problems:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn broker_url_is_parsed() {
        let mut c = Config::parse(MIN).unwrap();
        c.mqtt.broker = "mqtt://10.0.0.2:1884".into();
        assert_eq!(c.mqtt.external_addr().unwrap(), Some(("10.0.0.2".into(), 1884)));
        c.mqtt.broker = "amqp://x".into();
        assert!(c.mqtt.external_addr().is_err());
        c.mqtt.broker = "mqtts://10.0.0.2".into();
        assert_eq!(c.mqtt.external_addr().unwrap(), Some(("10.0.0.2".into(), 8883)), "mqtts defaults to 8883");
        assert!(c.mqtt.tls());
        // TLS files with a plain broker, or half a client identity, are named.
        c.mqtt.broker = "mqtt://10.0.0.2".into();
        c.mqtt.ca_file = Some("/etc/hostname".into());
        c.mqtt.client_cert_file = Some("/etc/hostname".into());
        let keys: Vec<String> = c.validate().into_iter().map(|p| p.key).collect();
        assert!(keys.contains(&"mqtt.ca_file".to_string()) && keys.contains(&"mqtt.client_cert_file".to_string()), "{keys:?}");
    }
}
