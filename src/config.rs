//! Strict TOML configuration. Unknown keys are errors, durations are written
//! "48h", and every problem is reported with its key path
//! (`alert.channels[1].secret`) before the daemon refuses to start.

use serde::{Deserialize, Deserializer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub fn parse(s: &str) -> Result<Self, String> {
        humantime::parse_duration(s.trim())
            .map(Dur)
            .map_err(|e| format!("invalid duration {s:?} ({e}); write it like \"48h\", \"30m\" or \"3s\""))
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Zh,
    En,
}

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

/// The web console at `/console/` (same listener as the API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default = "ConsoleConfig::default_session_ttl")]
    pub session_ttl: Dur,
    /// Failed logins (per user name, and per client address) within
    /// `login_window` before further attempts are refused for the window.
    #[serde(default = "ConsoleConfig::default_login_max_failures")]
    pub login_max_failures: usize,
    #[serde(default = "ConsoleConfig::default_login_window")]
    pub login_window: Dur,
    /// How long the audit log of admin writes is kept.
    #[serde(default = "ConsoleConfig::default_audit_retention")]
    pub audit_retention: Dur,
}

impl ConsoleConfig {
    fn default_session_ttl() -> Dur {
        Dur::secs(12 * 3600)
    }
    fn default_login_max_failures() -> usize {
        5
    }
    fn default_login_window() -> Dur {
        Dur::secs(15 * 60)
    }
    fn default_audit_retention() -> Dur {
        Dur::secs(3 * 365 * 86400)
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        toml::from_str("").expect("console defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This box's name, unique within the site (letters, digits, '-', '_').
    pub box_id: String,
    /// "lease" (default): the alerting box is chosen by a lease held through a
    /// retained MQTT message, and another box takes over when it lapses;
    /// "primary" / "standby": fixed by config.
    #[serde(default)]
    pub role: crate::cluster::Role,
    /// How long a lease lasts without renewal: the failover time after the
    /// alerting box dies. Renewed at a third left.
    #[serde(default = "ClusterConfig::default_lease_ttl")]
    pub lease_ttl: Dur,
    /// How long a claim must stand unchallenged before the box starts alerting.
    #[serde(default = "ClusterConfig::default_claim_settle")]
    pub claim_settle: Dur,
    /// Enrolment sync: "source" (the admin box: enrol here, published to the
    /// others) or "replica" (follows the source; local enrolment is refused).
    /// Absent: each box keeps its own enrolment.
    #[serde(default)]
    pub enrolment: Option<crate::cluster::sync::EnrolmentRole>,
    /// The site's shared secret (≥ 32 characters, same file on every box, mode
    /// 0640 root:gatewarden): signs enrolment changes, seals templates in
    /// transit, and keys credential hashes so a PIN works at every box.
    #[serde(default)]
    pub sync_key_file: Option<PathBuf>,
}

impl ClusterConfig {
    fn default_lease_ttl() -> Dur {
        Dur::secs(60)
    }
    fn default_claim_settle() -> Dur {
        Dur::secs(3)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionConfig {
    /// Load the face models. Default: on when a gate has a camera. The wristband
    /// features need no model and stay small without them.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Where the ONNX models and the ONNX Runtime library are (fetched by
    /// deploy/fetch-models.sh and verified against models/MANIFEST.tsv).
    #[serde(default = "VisionConfig::default_models_dir")]
    pub models_dir: PathBuf,
    /// Defaults to ORT_DYLIB_PATH, else <models_dir>/onnxruntime/libonnxruntime.so.1.31.1.
    #[serde(default)]
    pub ort_library: Option<PathBuf>,
    /// ONNX Runtime intra-op threads per model.
    #[serde(default = "VisionConfig::default_intra_threads")]
    pub intra_threads: usize,
    /// Cosine similarity for a face match (see README: TAR/FAR).
    #[serde(default = "VisionConfig::default_match_threshold")]
    pub match_threshold: f32,
    #[serde(default = "VisionConfig::default_liveness_threshold")]
    pub liveness_threshold: f32,
    #[serde(default = "VisionConfig::default_min_face_px")]
    pub min_face_px: f32,
}
impl VisionConfig {
    fn default_models_dir() -> PathBuf {
        PathBuf::from("models")
    }
    fn default_intra_threads() -> usize {
        2
    }
    fn default_match_threshold() -> f32 {
        crate::vision::DEFAULT_MATCH_THRESHOLD
    }
    fn default_liveness_threshold() -> f32 {
        0.5
    }
    fn default_min_face_px() -> f32 {
        60.0
    }
}
impl Default for VisionConfig {
    fn default() -> Self {
        toml::from_str("").expect("vision defaults")
    }
}

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
    /// One person at one gate opens it at most once per cooldown.
    #[serde(default = "AccessConfig::default_cooldown")]
    pub cooldown: Dur,
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
    fn default_cooldown() -> Dur {
        Dur::secs(10)
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateDirection {
    In,
    Out,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    pub name: String,
    /// rtsp://…, http://…/cam.mjpg, a video file, or /dev/videoN. None: credentials only.
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default = "GateConfig::default_direction")]
    pub direction: GateDirection,
    /// Recognise faces on this camera (pedestrian gates).
    #[serde(default = "GateConfig::default_true")]
    pub read_faces: bool,
    /// Read licence plates on this camera (vehicle barriers).
    #[serde(default)]
    pub read_plates: bool,
    /// Analyse at most this many frames per second (the latest frame is always used).
    #[serde(default = "GateConfig::default_fps")]
    pub max_fps: f32,
    #[serde(default = "GateConfig::default_open_timeout")]
    pub open_timeout: Dur,
    #[serde(default = "GateConfig::default_read_timeout")]
    pub read_timeout: Dur,
    /// Visitors may pass only in these hours (China time), e.g. "07:00-22:00".
    #[serde(default)]
    pub visitor_hours: Option<String>,
    #[serde(default)]
    pub resident_hours: Option<String>,
    pub actuator: ActuatorConfig,
}
impl GateConfig {
    fn default_direction() -> GateDirection {
        GateDirection::In
    }
    fn default_true() -> bool {
        true
    }
    fn default_fps() -> f32 {
        5.0
    }
    fn default_open_timeout() -> Dur {
        Dur::secs(5)
    }
    fn default_read_timeout() -> Dur {
        Dur::secs(3)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum ActuatorConfig {
    /// Dry run: log the decision, move nothing.
    Log,
    /// Publish to a relay (Shelly: topic "shellies/<id>/relay/0/command", "on"/"off";
    /// Tasmota: "cmnd/<id>/POWER", "ON"/"OFF").
    Mqtt {
        topic: String,
        #[serde(default = "ActuatorConfig::default_on")]
        on: String,
        #[serde(default = "ActuatorConfig::default_off")]
        off: String,
        #[serde(default = "ActuatorConfig::default_pulse")]
        pulse: Dur,
    },
    /// An HTTP request (e.g. a barrier controller's open URL).
    Http {
        url: String,
        #[serde(default = "ActuatorConfig::default_method")]
        method: String,
        #[serde(default)]
        body: Option<String>,
    },
    /// A Linux GPIO line through the character device (/dev/gpiochipN).
    Gpio {
        chip: PathBuf,
        line: u32,
        #[serde(default)]
        active_low: bool,
        #[serde(default = "ActuatorConfig::default_pulse")]
        pulse: Dur,
    },
}
impl ActuatorConfig {
    fn default_on() -> String {
        "on".into()
    }
    fn default_off() -> String {
        "off".into()
    }
    fn default_pulse() -> Dur {
        Dur::millis(800)
    }
    fn default_method() -> String {
        "POST".into()
    }
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where /healthz, /metrics, the admin API and acknowledgement links are served.
    #[serde(default = "HttpConfig::default_listen")]
    pub listen: SocketAddr,
    /// Base URL that staff phones use to reach acknowledgement links.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Bearer token for the admin API. Prefer `admin_token_file` or the
    /// GATEWARDEN_ADMIN_TOKEN environment variable in production.
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// HMAC key that signs acknowledgement links.
    #[serde(default)]
    pub ack_secret: Option<String>,
    #[serde(default)]
    pub ack_secret_file: Option<PathBuf>,
    /// How long an acknowledgement link stays valid.
    #[serde(default = "HttpConfig::default_ack_link_ttl")]
    pub ack_link_ttl: Dur,
}
impl HttpConfig {
    fn default_listen() -> SocketAddr {
        "127.0.0.1:8470".parse().unwrap()
    }
    fn default_ack_link_ttl() -> Dur {
        Dur::secs(7 * 24 * 3600)
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            public_url: None,
            admin_token: None,
            admin_token_file: None,
            ack_secret: None,
            ack_secret_file: None,
            ack_link_ttl: Self::default_ack_link_ttl(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "gatewarden=debug,info". RUST_LOG overrides it.
    #[serde(default = "LogConfig::default_level")]
    pub level: String,
}
impl LogConfig {
    fn default_level() -> String {
        "info".into()
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: Self::default_level() }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// "embedded" starts a broker inside the daemon (demo); otherwise
    /// "mqtt://host:port".
    #[serde(default = "MqttConfig::default_broker")]
    pub broker: String,
    /// Listen address of the embedded broker.
    #[serde(default = "MqttConfig::default_embedded_listen")]
    pub embedded_listen: SocketAddr,
    /// Defaults to "gatewarden-<site>". Must be stable across restarts, because
    /// the broker keeps the persistent session under this id.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "MqttConfig::default_keep_alive")]
    pub keep_alive: Dur,
    /// Topic filters for wristband sightings and gateway status. The defaults
    /// cover ESPresense, OpenMQTTGateway, Theengs and gatewarden's own format.
    #[serde(default = "MqttConfig::default_topics")]
    pub topics: Vec<String>,
    #[serde(default = "MqttConfig::default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    #[serde(default = "MqttConfig::default_reconnect_min")]
    pub reconnect_min: Dur,
    #[serde(default = "MqttConfig::default_reconnect_max")]
    pub reconnect_max: Dur,
}
impl MqttConfig {
    fn default_broker() -> String {
        "embedded".into()
    }
    fn default_embedded_listen() -> SocketAddr {
        "127.0.0.1:1883".parse().unwrap()
    }
    fn default_keep_alive() -> Dur {
        Dur::secs(30)
    }
    pub fn default_topics() -> Vec<String> {
        vec![
            "espresense/devices/#".into(),
            "espresense/rooms/+/status".into(),
            "home/+/BTtoMQTT/#".into(),
            "gatewarden/+/sighting".into(),
        ]
    }
    fn default_max_payload_bytes() -> usize {
        16 * 1024
    }
    fn default_reconnect_min() -> Dur {
        Dur::millis(500)
    }
    fn default_reconnect_max() -> Dur {
        Dur::secs(60)
    }
    /// (host, port) of an external broker, or None for the embedded one.
    pub fn external_addr(&self) -> Result<Option<(String, u16)>, String> {
        if self.broker == "embedded" {
            return Ok(None);
        }
        let rest = self
            .broker
            .strip_prefix("mqtt://")
            .or_else(|| self.broker.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{:?} must be \"embedded\" or \"mqtt://host:port\"", self.broker))?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("bad port in {:?}", self.broker))?),
            None => (rest, 1883),
        };
        if host.is_empty() {
            return Err(format!("no host in {:?}", self.broker));
        }
        Ok(Some((host.to_string(), port)))
    }
}
impl Default for MqttConfig {
    fn default() -> Self {
        toml::from_str("").expect("mqtt defaults")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// After start-up, absence is not judged until this has passed, so that
    /// sightings the broker queued for us during a restart arrive first.
    #[serde(default = "PresenceConfig::default_startup_grace")]
    pub startup_grace: Dur,
    /// How often absence, reminders and escalation are evaluated.
    #[serde(default = "PresenceConfig::default_tick_interval")]
    pub tick_interval: Dur,
    #[serde(default = "PresenceConfig::default_battery_low_percent")]
    pub battery_low_percent: u8,
    /// A BLE gateway that sends nothing for this long is reported offline.
    #[serde(default = "PresenceConfig::default_gateway_silent_after")]
    pub gateway_silent_after: Dur,
    /// An elder whose face is seen at a gate while the wristband has been
    /// silent this long is probably not wearing it.
    #[serde(default = "PresenceConfig::default_band_silent_after")]
    pub band_silent_after: Dur,
    /// How many unknown wristbands are remembered for enrolment (oldest dropped).
    #[serde(default = "PresenceConfig::default_unknown_bands_max")]
    pub unknown_bands_max: usize,
    /// Sightings dated further than this into the future are clamped to now.
    #[serde(default = "PresenceConfig::default_max_clock_skew")]
    pub max_clock_skew: Dur,
    /// Whereabouts are sensitive (PIPL Art. 28): besides last-seen, keep a
    /// sighting history (an entry when the place changes, at most once a
    /// minute, and hourly otherwise) only this long. Off ("0s") by default:
    /// data minimisation, and it costs the daemon about 25 MB more at peak
    /// (BENCHMARKS.md)…
    #[serde(default = "PresenceConfig::default_history_window")]
    pub history_window: Dur,
    /// …and at most this many entries per elder.
    #[serde(default = "PresenceConfig::default_history_max")]
    pub history_max: usize,
}
impl PresenceConfig {
    fn default_history_window() -> Dur {
        Dur::secs(0)
    }
    fn default_history_max() -> usize {
        500
    }
    fn default_startup_grace() -> Dur {
        Dur::secs(60)
    }
    fn default_tick_interval() -> Dur {
        Dur::secs(10)
    }
    fn default_battery_low_percent() -> u8 {
        20
    }
    fn default_gateway_silent_after() -> Dur {
        Dur::secs(10 * 60)
    }
    fn default_band_silent_after() -> Dur {
        Dur::secs(24 * 3600)
    }
    fn default_unknown_bands_max() -> usize {
        1000
    }
    fn default_max_clock_skew() -> Dur {
        Dur::secs(300)
    }
}
impl Default for PresenceConfig {
    fn default() -> Self {
        toml::from_str("").expect("presence defaults")
    }
}

/// Timing of one kind of alert.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertPolicy {
    /// Only for absence: how long unseen before an alert opens.
    #[serde(default)]
    pub after: Option<Dur>,
    /// Remind the current level this often until someone acknowledges.
    pub repeat_every: Dur,
    /// Notify the next level of the ladder if nobody acknowledges within this.
    pub escalate_after: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    #[serde(default = "AlertConfig::default_absence")]
    pub absence: AlertPolicy,
    #[serde(default = "AlertConfig::default_sos")]
    pub sos: AlertPolicy,
    #[serde(default = "AlertConfig::default_battery")]
    pub battery: AlertPolicy,
    #[serde(default = "AlertConfig::default_band_not_worn")]
    pub band_not_worn: AlertPolicy,
    #[serde(default = "AlertConfig::default_gateway_offline")]
    pub gateway_offline: AlertPolicy,
    #[serde(default)]
    pub outbox: OutboxConfig,
    #[serde(default)]
    pub channels: Vec<ChannelConfig>,
    /// The default escalation ladder, for grids that have none in the store
    /// (set one per grid with `gatewarden escalation set`).
    #[serde(default)]
    pub ladder: Vec<LevelConfig>,
}
impl AlertConfig {
    fn policy(after: Option<u64>, repeat: u64, escalate: u64) -> AlertPolicy {
        AlertPolicy {
            after: after.map(Dur::secs),
            repeat_every: Dur::secs(repeat),
            escalate_after: Dur::secs(escalate),
        }
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
}
impl OutboxConfig {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Generic JSON webhook (Alertmanager-like), signed with X-Gatewarden-Signature.
    Webhook,
    Wecom,
    Dingtalk,
    Feishu,
    Ntfy,
}

impl ChannelKind {
    /// The receiving service's documented rate limit.
    pub fn default_rate_per_minute(self) -> u32 {
        match self {
            ChannelKind::Wecom | ChannelKind::Dingtalk => 20,
            ChannelKind::Feishu => 100,
            ChannelKind::Ntfy | ChannelKind::Webhook => 60,
        }
    }
}

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
}

impl ChannelConfig {
    pub fn rate_per_minute(&self) -> u32 {
        self.rate_per_minute.unwrap_or_else(|| self.kind.default_rate_per_minute())
    }
    pub fn resolved_secret(&self) -> Option<String> {
        if let Some(var) = &self.secret_env {
            return std::env::var(var).ok();
        }
        self.secret.clone()
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// Lets `POST /api/v1/debug/clock` move the daemon's clock forward.
    /// For tests and demos only; never enable on a real gate.
    #[serde(default)]
    pub manual_clock: bool,
}

impl Config {
    /// Read, parse and validate. Every validation problem is reported at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = Self::parse(&text).map_err(|(key, message)| ConfigError::Parse {
            path: path.to_owned(),
            key,
            message,
        })?;
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
            bad("mqtt.broker".into(), e);
        }
        if let Some(c) = &self.cluster {
            if c.box_id.is_empty() || !c.box_id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_') {
                bad("cluster.box_id".into(), "must be a non-empty name of letters, digits, '-' or '_'".into());
            }
            if c.enrolment.is_some() && c.sync_key_file.is_none() {
                bad("cluster.sync_key_file".into(), "is required with cluster.enrolment (the same key file on every box)".into());
            }
            if c.claim_settle.get() * 3 > c.lease_ttl.get() {
                bad("cluster.claim_settle".into(), "must be under a third of cluster.lease_ttl".into());
            }
        }
        if self.mqtt.topics.is_empty() {
            bad("mqtt.topics".into(), "at least one topic filter is needed".into());
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
            match reqwest::Url::parse(&ch.url) {
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
                ChannelKind::Dingtalk | ChannelKind::Feishu if !has_secret => bad(
                    key("secret"),
                    "signed robots need their signing secret (or secret_env)".into(),
                ),
                ChannelKind::Ntfy if ch.topic.is_none() => bad(key("topic"), "ntfy needs a topic".into()),
                _ => {}
            }
            if ch.rate_per_minute == Some(0) {
                bad(key("rate_per_minute"), "must be greater than 0".into());
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
                    if let Err(e) = h.parse::<crate::gate::policy::Hours>() {
                        bad(key(f), e);
                    }
                }
            }
            if !(g.max_fps > 0.0) {
                bad(key("max_fps"), "must be greater than 0".into());
            }
            if let ActuatorConfig::Http { url, .. } = &g.actuator {
                if reqwest::Url::parse(url).is_err() {
                    bad(key("actuator.url"), format!("invalid URL {url:?}"));
                }
            }
        }
        if self.access.agree_frames == 0 || self.access.agree_frames > self.access.window_frames {
            bad("access.agree_frames".into(), "must be 1..=access.window_frames".into());
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
            if reqwest::Url::parse(u).is_err() {
                bad("http.public_url".into(), format!("invalid URL {u:?}"));
            }
        }
        p
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

    fn secret_from(inline: &Option<String>, file: &Option<PathBuf>, env: &str) -> Result<Option<String>, String> {
        if let Ok(v) = std::env::var(env) {
            if !v.is_empty() {
                return Ok(Some(v));
            }
        }
        if let Some(f) = file {
            let s = std::fs::read_to_string(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
            return Ok(Some(s.trim().to_string()));
        }
        Ok(inline.clone())
    }

    /// The admin API token: GATEWARDEN_ADMIN_TOKEN, then the file, then inline.
    pub fn admin_token(&self) -> Result<Option<String>, String> {
        Self::secret_from(&self.http.admin_token, &self.http.admin_token_file, "GATEWARDEN_ADMIN_TOKEN")
    }

    pub fn ack_secret(&self) -> Result<Option<String>, String> {
        Self::secret_from(&self.http.ack_secret, &self.http.ack_secret_file, "GATEWARDEN_ACK_SECRET")
    }

    pub fn public_url(&self) -> String {
        self.http
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.http.listen))
            .trim_end_matches('/')
            .to_string()
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
        for k in [
            "alert.channels[0].url",
            "alert.channels[0].secret",
            "alert.channels[1].name",
            "alert.channels[1].topic",
            "alert.ladder[0].channels[0]",
        ] {
            assert!(keys.iter().any(|x| x == k), "missing {k} in {keys:?}");
        }
    }

    #[test]
    fn shipped_example_and_demo_configs_parse_and_validate() {
        for f in ["config/gatewarden.example.toml", "config/demo.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f);
            let text = std::fs::read_to_string(&path).unwrap();
            let c = Config::parse(&text).unwrap_or_else(|e| panic!("{f}: {e:?}"));
            assert!(c.validate().is_empty(), "{f}: {:?}", c.validate());
        }
    }

    #[test]
    fn broker_url_is_parsed() {
        let mut c = Config::parse(MIN).unwrap();
        c.mqtt.broker = "mqtt://10.0.0.2:1884".into();
        assert_eq!(c.mqtt.external_addr().unwrap(), Some(("10.0.0.2".into(), 1884)));
        c.mqtt.broker = "amqp://x".into();
        assert!(c.mqtt.external_addr().is_err());
    }
}
