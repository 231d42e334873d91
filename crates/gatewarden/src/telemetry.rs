//! Logs (tracing, text or JSON), Prometheus metrics with low-cardinality labels
//! (never a person's id), and masking of phone and ID numbers for logs.

use config::{LogConfig, LogFormat};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => b.json().flatten_event(true).try_init(),
        LogFormat::Text => b.try_init(),
    };
}

pub use domain::mask::{mask_id_number, mask_phone};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    pub kind: String,
    pub state: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    pub result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GateLabels {
    pub gate: String,
    pub credential: String,
    pub result: String,
}
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

pub struct Metrics {
    registry: Registry,
    /// Counters of the per-message hot path, resolved on first use: a family
    /// lookup allocates its label and takes a lock, for every message.
    hot_messages: [std::sync::OnceLock<Counter>; HOT_MESSAGES.len()],
    hot_sightings: [std::sync::OnceLock<Counter>; HOT_SIGHTINGS.len()],
    hot_formats: [std::sync::OnceLock<Counter>; HOT_FORMATS.len()],
    /// MQTT messages by the gateway format they were read as.
    pub formats: Family<KindLabel, Counter>,
    pub messages: Family<KindLabel, Counter>,
    pub rejected: Family<ReasonLabel, Counter>,
    pub sightings: Family<KindLabel, Counter>,
    pub unknown_band_sightings: Counter,
    pub alerts: Family<AlertLabels, Gauge>,
    pub alert_events: Family<AlertLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub outbox_pending: Family<ChannelLabel, Gauge>,
    pub outbox_failed: Family<ChannelLabel, Gauge>,
    pub mqtt_connected: Gauge,
    pub gateways_refused: Gauge,
    pub clock_steps: Family<KindLabel, Counter>,
    pub cluster_rejected: Family<ReasonLabel, Counter>,
    pub backups: Family<KindLabel, Counter>,
    pub elders: Gauge,
    pub store_flushes: Counter<u64, AtomicU64>,
    pub store_write_failures: Counter,
    pub store_writable: Gauge,
    pub alerts_uncommitted: Gauge,
    pub gate_decisions: Family<GateLabels, Counter>,
    pub purged: Family<KindLabel, Counter>,
    pub camera_frames: Family<CameraLabel, Gauge>,
    pub camera_frames_analysed: Family<CameraLabel, Gauge>,
    pub camera_frames_still: Family<CameraLabel, Gauge>,
    pub camera_face_tracks: Family<CameraLabel, Gauge>,
    pub camera_face_embeddings: Family<CameraLabel, Gauge>,
    pub camera_plate_reads: Family<CameraLabel, Gauge>,
    /// From the capture of a face track's first frame to the actuator's command.
    pub gate_face_latency_seconds: Histogram,
    pub camera_connected: Family<CameraLabel, Gauge>,
    pub camera_reconnects: Family<CameraLabel, Gauge>,
    /// How long making a gate decision durable took (the fsync before the barrier moves).
    pub entry_sync_seconds: Histogram,
    pub heartbeats: Heartbeats,
    task_heartbeat_age: Family<TaskLabel, Gauge<f64, AtomicU64>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabel {
    pub task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CameraLabel {
    pub camera: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const HOT_MESSAGES: [&str; 6] = ["sighting", "status", "ignored", "credential", "cluster", "enrolment"];
const HOT_SIGHTINGS: [&str; 3] = ["wristband", "face", "check_in"];
const HOT_FORMATS: [&str; 8] = ["espresense", "openmqttgateway", "ha_room", "gatewarden", "aprilbrother", "ingics", "minew", "cassia"];

/// The counter for `label` in `family`, through a slot of `cache` when the label is a hot one.
fn hot_counter<L: Clone + std::hash::Hash + Eq, const N: usize>(
    family: &Family<L, Counter>,
    cache: &[std::sync::OnceLock<Counter>; N],
    labels: &[&str; N],
    label: &str,
    make: impl Fn(&str) -> L,
) {
    match labels.iter().position(|l| *l == label) {
        Some(i) => cache[i].get_or_init(|| family.get_or_create(&make(label)).clone()).inc(),
        None => family.get_or_create(&make(label)).inc(),
    };
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("gatewarden"),
            hot_messages: Default::default(),
            hot_sightings: Default::default(),
            hot_formats: Default::default(),
            formats: Family::default(),
            heartbeats: Heartbeats::default(),
            task_heartbeat_age: Family::default(),
            messages: Family::default(),
            rejected: Family::default(),
            sightings: Family::default(),
            unknown_band_sightings: Counter::default(),
            alerts: Family::default(),
            alert_events: Family::default(),
            deliveries: Family::default(),
            outbox_pending: Family::default(),
            outbox_failed: Family::default(),
            mqtt_connected: Gauge::default(),
            gateways_refused: Gauge::default(),
            clock_steps: Family::default(),
            cluster_rejected: Family::default(),
            backups: Family::default(),
            elders: Gauge::default(),
            store_flushes: Counter::default(),
            store_write_failures: Counter::default(),
            store_writable: Gauge::default(),
            alerts_uncommitted: Gauge::default(),
            gate_decisions: Family::default(),
            purged: Family::default(),
            camera_frames: Family::default(),
            camera_frames_analysed: Family::default(),
            camera_frames_still: Family::default(),
            camera_face_tracks: Family::default(),
            camera_face_embeddings: Family::default(),
            camera_plate_reads: Family::default(),
            gate_face_latency_seconds: Histogram::new([0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.0].into_iter()),
            camera_connected: Family::default(),
            camera_reconnects: Family::default(),
            entry_sync_seconds: Histogram::new([0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0].into_iter()),
        };
        let r = &mut m.registry;
        r.register("entry_sync_seconds", "Time to make a gate decision durable before the barrier moves", m.entry_sync_seconds.clone());
        r.register("mqtt_messages", "MQTT messages received, by what they were", m.messages.clone());
        r.register("mqtt_rejected", "MQTT messages rejected, by reason", m.rejected.clone());
        r.register("mqtt_formats", "MQTT messages by the gateway format they were read as", m.formats.clone());
        r.register("sightings", "Sightings of enrolled elders, by source", m.sightings.clone());
        r.register("unknown_band_sightings", "Sightings of wristbands nobody is enrolled with", m.unknown_band_sightings.clone());
        r.register("alerts", "Alerts currently open, by kind and state", m.alerts.clone());
        r.register("alert_events", "Alert state changes, by kind and new state", m.alert_events.clone());
        r.register("deliveries", "Notification delivery attempts, by channel and result", m.deliveries.clone());
        r.register("outbox_pending", "Notifications waiting to be delivered, by channel", m.outbox_pending.clone());
        r.register("outbox_failed", "Notifications parked after a permanent failure, by channel", m.outbox_failed.clone());
        r.register("mqtt_connected", "1 while connected to the MQTT broker", m.mqtt_connected.clone());
        r.register("scheduled_backups", "Scheduled backups, by result (ok, failed)", m.backups.clone());
        r.register("cluster_rejected", "Cluster messages refused, by reason (unsigned, bad_signature, stale…)", m.cluster_rejected.clone());
        r.register("clock_steps", "Wall-clock steps seen, by direction", m.clock_steps.clone());
        r.register("gateways_refused", "Messages from gateways beyond presence.gateways_max (ignored)", m.gateways_refused.clone());
        r.register("elders", "Elders enrolled", m.elders.clone());
        r.register(
            "task_heartbeat_age_seconds",
            "Seconds since each long-running task last beat (stale after 10 s: the task is stuck)",
            m.task_heartbeat_age.clone(),
        );
        r.register("store_flushes", "Write-behind flushes of presence to the store", m.store_flushes.clone());
        r.register(
            "store_write_failures",
            "Store writes refused (a full disk, I/O errors); what was refused is held and retried",
            m.store_write_failures.clone(),
        );
        r.register("store_writable", "1 while the store takes writes", m.store_writable.clone());
        r.register("alerts_uncommitted", "Alert changes and notifications held in memory because the store refused them", m.alerts_uncommitted.clone());
        r.register("gate_decisions", "Gate decisions, by gate, credential and result", m.gate_decisions.clone());
        r.register("purged", "Records removed by retention purges, by kind", m.purged.clone());
        r.register("camera_frames", "Frames read from each camera", m.camera_frames.clone());
        r.register("camera_frames_analysed", "Frames the face and plate networks ran on", m.camera_frames_analysed.clone());
        r.register("camera_frames_still", "Frames skipped by motion gating (nothing moved, nothing there)", m.camera_frames_still.clone());
        r.register("camera_face_tracks", "Face tracks opened at each camera (one per person walking up)", m.camera_face_tracks.clone());
        r.register("camera_face_embeddings", "Face embeddings computed at each camera (about one per track)", m.camera_face_embeddings.clone());
        r.register("camera_plate_reads", "Plate OCR runs at each camera (until each plate is confirmed, then one a second)", m.camera_plate_reads.clone());
        r.register("gate_face_latency_seconds", "From the capture of a face track's first frame to the barrier's command", m.gate_face_latency_seconds.clone());
        r.register("camera_connected", "1 while the camera delivers frames", m.camera_connected.clone());
        r.register("camera_reconnects", "Times each camera was reopened after a loss", m.camera_reconnects.clone());
        m
    }

    pub fn gate_decision(&self, gate: &str, credential: &str, result: &str) {
        self.gate_decisions.get_or_create(&GateLabels { gate: gate.into(), credential: credential.into(), result: result.into() }).inc();
    }

    pub fn message(&self, kind: &str) {
        hot_counter(&self.messages, &self.hot_messages, &HOT_MESSAGES, kind, |k| KindLabel { kind: k.into() });
    }
    /// A sighting of an enrolled elder, by source ("wristband", "face", "check_in").
    pub fn sighting(&self, source: &str) {
        hot_counter(&self.sightings, &self.hot_sightings, &HOT_SIGHTINGS, source, |k| KindLabel { kind: k.into() });
    }
    /// A message read as this gateway format (`config::SourceFormat::as_str`).
    pub fn format(&self, format: &str) {
        hot_counter(&self.formats, &self.hot_formats, &HOT_FORMATS, format, |k| KindLabel { kind: k.into() });
    }
    pub fn reject(&self, reason: &str) {
        self.rejected.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }
    pub fn delivery(&self, channel: &str, result: &str) {
        self.deliveries.get_or_create(&DeliveryLabels { channel: channel.into(), result: result.into() }).inc();
    }
    pub fn set_outbox(&self, channel: &str, pending: i64, failed: i64) {
        self.outbox_pending.get_or_create(&ChannelLabel { channel: channel.into() }).set(pending);
        self.outbox_failed.get_or_create(&ChannelLabel { channel: channel.into() }).set(failed);
    }
    pub fn alert_event(&self, kind: &str, state: &str) {
        self.alert_events.get_or_create(&AlertLabels { kind: kind.into(), state: state.into() }).inc();
    }

    pub fn encode(&self) -> String {
        for (task, age) in self.heartbeats.ages() {
            self.task_heartbeat_age.get_or_create(&TaskLabel { task }).set(age);
        }
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).expect("encode metrics");
        s
    }
}

/// A task whose last heartbeat is older than this is reported stale by /healthz.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// Each supervised task's last heartbeat (see `beating`), for /healthz and
/// `gatewarden_task_heartbeat_age_seconds`.
pub struct Heartbeats {
    epoch: Instant,
    beats: std::sync::Mutex<std::collections::BTreeMap<String, Arc<AtomicU64>>>,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats { epoch: Instant::now(), beats: Default::default() }
    }
}

impl Heartbeats {
    pub fn register(&self, task: &str) -> Beat {
        let at = Arc::new(AtomicU64::new(self.epoch.elapsed().as_millis() as u64));
        self.beats.lock().unwrap_or_else(|e| e.into_inner()).insert(task.to_string(), at.clone());
        Beat { at, epoch: self.epoch }
    }

    /// Seconds since each task's last heartbeat.
    pub fn ages(&self) -> std::collections::BTreeMap<String, f64> {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(t, at)| (t.clone(), now.saturating_sub(at.load(Ordering::Relaxed)) as f64 / 1000.0))
            .collect()
    }
}

pub struct Beat {
    at: Arc<AtomicU64>,
    epoch: Instant,
}

/// Run a task with a heartbeat. Every second the wrapper records one, which
/// it can do only while the task yields: a task stuck in blocking code (a
/// hung native call, a busy loop, a lock never released) stops beating, and
/// /healthz names it.
pub async fn beating(beat: Beat, f: impl std::future::Future<Output = ()>) {
    let mut f = std::pin::pin!(f);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = &mut f => return,
            _ = tick.tick() => beat.at.store(beat.epoch.elapsed().as_millis() as u64, Ordering::Relaxed),
        }
    }
}

/// systemd's notify protocol (sd_notify), without libsystemd: one datagram to
/// $NOTIFY_SOCKET. "READY=1" once serving, "WATCHDOG=1" from the monitor loop
/// (a hung loop stops the pings and systemd restarts us), "STOPPING=1".
pub fn sd_notify(state: &str) {
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = sd_notify_to(std::path::Path::new(&path), state) {
            tracing::warn!(error = %e, "sd_notify failed");
        }
    }
}

pub fn sd_notify_to(path: &std::path::Path, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = std::os::unix::net::UnixDatagram::unbound()?;
    let bytes = path.as_os_str().as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), path)?;
    }
    Ok(())
}

/// Half of $WATCHDOG_USEC, the interval systemd asks us to ping within.
pub fn watchdog_interval() -> Option<std::time::Duration> {
    let us: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (us > 0).then(|| std::time::Duration::from_micros(us / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_prometheus_text_format() {
        let m = Metrics::new();
        m.reject("malformed");
        m.delivery("grid-wecom", "delivered");
        let text = m.encode();
        assert!(text.contains("gatewarden_mqtt_rejected_total{reason=\"malformed\"} 1"), "{text}");
        assert!(text.contains("gatewarden_deliveries_total{channel=\"grid-wecom\",result=\"delivered\"} 1"), "{text}");
    }
}
