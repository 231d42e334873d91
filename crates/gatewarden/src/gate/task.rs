//! The running gates. The `gatewarden-vision` process takes the latest frame
//! of each camera, recognises faces and reads QR codes; `VisionSupervisor`
//! keeps it running and relays its results. The gate task owns the `Policy`
//! and carries its actions out: actuators, the entry log, MQTT events,
//! presence for elders, alerts, snapshots.

use super::actuator::Actuator;
use crate::monitor::{Command, MonitorHandle};
use crate::telemetry::Metrics;
use base64::Engine as _;
use config::Config;
use domain::alert::{AlertKind, Subject};
use domain::clock::Clock;
use domain::gate::log::{Credential, Entry};
use domain::gate::policy::{Action, FaceSeen, GateAlert, Input, Policy};
use domain::presence::Observation;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::Store;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use vision_protocol::{EnrolResult, FromVision, ToVision};

/// PINs, card numbers and QR tokens are matched and stored as keyed hashes.
pub fn secret_hash(key: &[u8], kind: Credential, value: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(kind.as_str().as_bytes());
    m.update(b":");
    m.update(value.trim().as_bytes());
    hex::encode(m.finalize().into_bytes())
}

pub use vision_protocol::QR_PREFIX;

pub enum GateMsg {
    Frame {
        gate: String,
        faces: Vec<FaceSeen>,
        qr: Vec<String>,
        snapshot: Option<Vec<u8>>,
        /// Text, confidence, the province character's confidence.
        plates: Vec<(String, f32, f32)>,
        /// When the nearest face's track began (its first frame's capture).
        face_since: Option<Instant>,
    },
    Credential {
        gate: String,
        kind: Credential,
        value: String,
        reply: Option<oneshot::Sender<Option<Entry>>>,
    },
    Reload(String),
    ReloadVehicle(String),
}

/// Requests to the vision process.
pub enum VisionCmd {
    /// A base64 photo to turn into a template.
    Enrol {
        image: String,
        reply: oneshot::Sender<EnrolResult>,
    },
    GalleryAdd {
        person: String,
        embedding: Vec<f32>,
    },
    GalleryRemove {
        person: String,
    },
}

/// What the daemon knows of each camera (reported by the vision process).
#[derive(Debug, Clone, Default)]
pub struct CameraStat {
    pub frames: u64,
    pub connected: bool,
    pub reconnects: u64,
    pub finished: bool,
    pub silent_ms: Option<u64>,
    /// Frames the networks ran on, and frames motion gating skipped.
    pub analysed: u64,
    pub still: u64,
    /// Face tracks opened and embeddings computed.
    pub tracks: u64,
    pub embeddings: u64,
    /// Plate OCR runs.
    pub plate_reads: u64,
    /// When the vision process last reported it: a frozen process reports
    /// nothing, and its cameras go silent with it.
    pub updated: Option<Instant>,
}

pub type CameraStats = Arc<Mutex<HashMap<String, CameraStat>>>;

/// Starts `gatewarden-vision`, feeds it the gallery, relays its frames to the
/// gate task and its answers to enrolment requests, and restarts it with
/// backoff if it dies: a crash in native code costs seconds of gate vision,
/// never the alerting daemon.
pub struct VisionSupervisor {
    pub binary: PathBuf,
    pub config: PathBuf,
    pub store: store::Store,
    pub gates: mpsc::Sender<GateMsg>,
    pub stats: CameraStats,
    pub metrics: Arc<Metrics>,
    /// No heartbeat answered for this long: kill and restart the process.
    pub heartbeat_timeout: Duration,
    /// Environment variables that carry secrets (`mqtt.password_env`), kept from the child.
    pub secret_env: Vec<String>,
}

impl VisionSupervisor {
    pub async fn run(self, mut cmds: mpsc::Receiver<VisionCmd>, cancel: CancellationToken) {
        let mut backoff = Duration::from_secs(1);
        let mut next_id = 1u64;
        loop {
            let mut cmd = tokio::process::Command::new(&self.binary);
            // No secret reaches the child through its environment either.
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy().into_owned();
                if k.starts_with("GATEWARDEN_") || self.secret_env.contains(&k) {
                    cmd.env_remove(&k);
                }
            }
            let child = cmd
                .arg("--config")
                .arg(&self.config)
                // OpenCV's own cap, behind the header check in `vision_protocol::image`.
                .env("OPENCV_IO_MAX_IMAGE_PIXELS", vision_protocol::image::MAX_IMAGE_PIXELS.to_string())
                // One capture thread per camera plus ONNX Runtime's pools: glibc
                // would give each thread its own malloc arena (up to 8 per core),
                // each keeping freed frames. Two arenas keep RSS flat with many cameras.
                .env("MALLOC_ARENA_MAX", std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "2".into()))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(binary = %self.binary.display(), error = %e, "cannot start the vision process");
                    tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let mut stdin = child.stdin.take().expect("piped");
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            let mut pending: HashMap<u64, oneshot::Sender<EnrolResult>> = HashMap::new();
            let mut ok = true;
            for (person, embedding) in self.store.templates().unwrap_or_default() {
                ok &= write(&mut stdin, &ToVision::GalleryAdd { person, embedding }).await;
            }
            ok &= write(&mut stdin, &ToVision::Start).await;
            // Heartbeats: after Ready, a ping every quarter of the timeout; before
            // it, loading the models may take a while, but not for ever.
            let started = Instant::now();
            let mut answered: Option<Instant> = None;
            let mut ping = tokio::time::interval((self.heartbeat_timeout / 4).max(Duration::from_millis(250)));
            let mut ping_id = 0u64;
            while ok {
                tokio::select! {
                    _ = cancel.cancelled() => {
                        let _ = child.kill().await;
                        return;
                    }
                    _ = ping.tick() => {
                        let silent = answered.map_or(started.elapsed().saturating_sub(Duration::from_secs(60)), |t| t.elapsed());
                        if silent > self.heartbeat_timeout {
                            tracing::error!(silent_s = silent.as_secs(), "the vision process stopped answering heartbeats: killing it; its cameras count as offline until it is back");
                            self.metrics.reject("vision_unresponsive");
                            let _ = child.kill().await;
                            break;
                        }
                        if answered.is_some() {
                            ping_id += 1;
                            ok = write(&mut stdin, &ToVision::Ping { id: ping_id }).await;
                        }
                    }
                    line = lines.next_line() => match line {
                        Ok(Some(l)) => match serde_json::from_str::<FromVision>(&l) {
                            Ok(FromVision::Pong { .. }) => answered = Some(Instant::now()),
                            Ok(m) => {
                                if matches!(m, FromVision::Ready { .. }) {
                                    answered = Some(Instant::now());
                                }
                                self.on_message(m, &mut pending, &mut backoff)
                            }
                            Err(e) => tracing::error!(error = %e, "bad line from the vision process"),
                        },
                        _ => break,
                    },
                    cmd = cmds.recv() => match cmd {
                        None => return,
                        Some(VisionCmd::Enrol { image, reply }) => {
                            let id = next_id;
                            next_id += 1;
                            pending.insert(id, reply);
                            ok = write(&mut stdin, &ToVision::Enrol { id, image }).await;
                        }
                        Some(VisionCmd::GalleryAdd { person, embedding }) => ok = write(&mut stdin, &ToVision::GalleryAdd { person, embedding }).await,
                        Some(VisionCmd::GalleryRemove { person }) => ok = write(&mut stdin, &ToVision::GalleryRemove { person }).await,
                    },
                }
            }
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_default();
            for (_, reply) in pending.drain() {
                let _ = reply.send(EnrolResult::Error("the vision process stopped; try again".into()));
            }
            tracing::error!(%status, retry_in_s = backoff.as_secs(), "the vision process exited; restarting it");
            tokio::select! { _ = cancel.cancelled() => return, _ = tokio::time::sleep(backoff) => {} }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    fn on_message(&self, m: FromVision, pending: &mut HashMap<u64, oneshot::Sender<EnrolResult>>, backoff: &mut Duration) {
        match m {
            FromVision::Ready { templates } => {
                *backoff = Duration::from_secs(1);
                tracing::info!(templates, "vision process ready");
            }
            FromVision::Frame { gate, faces, qr, snapshot, plates } => {
                let plates = plates.into_iter().map(|p| (p.text, p.confidence, p.province_confidence)).collect();
                let face_since = faces.first().and_then(|f| Instant::now().checked_sub(Duration::from_millis(f.track_age_ms)));
                let faces = faces
                    .into_iter()
                    .map(|f| FaceSeen {
                        person: f.person,
                        score: f.score,
                        liveness: f.liveness,
                        liveness_frames: f.liveness_frames,
                        margin: f.margin,
                        track: Some(f.track),
                    })
                    .collect();
                let snapshot = snapshot.and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok());
                // Frames are replaceable: if the gate task is behind, drop this one.
                let _ = self.gates.try_send(GateMsg::Frame { gate, faces, qr, snapshot, plates, face_since });
            }
            FromVision::Camera { gate, frames, connected, reconnects, finished, silent_ms, analysed, still, tracks, embeddings, plate_reads } => {
                let s = CameraStat {
                    frames,
                    connected,
                    reconnects,
                    finished,
                    silent_ms,
                    analysed,
                    still,
                    tracks,
                    embeddings,
                    plate_reads,
                    updated: Some(Instant::now()),
                };
                self.stats.lock().expect("camera stats").insert(gate, s);
            }
            FromVision::Pong { .. } => {}
            FromVision::Enrolled { id, result } => {
                if let Some(r) = pending.remove(&id) {
                    let _ = r.send(result);
                }
            }
        }
    }
}

/// One line to the vision process. A process that does not take it within
/// 10 s (its pipe full: hung or stopped) counts as gone.
async fn write(stdin: &mut tokio::process::ChildStdin, m: &ToVision) -> bool {
    let mut line = serde_json::to_vec(m).expect("protocol serializes");
    line.push(b'\n');
    matches!(tokio::time::timeout(Duration::from_secs(10), stdin.write_all(&line)).await, Ok(Ok(())))
}

/// An unknown-face snapshot older than this is not filed with a decision
/// (the vision process sends one per unknown track every 2 s).
const SNAPSHOT_FRESH: Duration = Duration::from_secs(5);

pub struct GateTask {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// Alerts and face sightings go to the monitor.
    pub monitor: MonitorHandle,
    pub policy: Policy,
    pub actuators: HashMap<String, Actuator>,
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// Gates with a camera, and what the vision process says of them.
    pub cameras: Vec<String>,
    pub camera_stats: CameraStats,
    pub snapshot_dir: std::path::PathBuf,
    /// Seals unknown-face snapshots (`snapshot.key`, beside the store).
    pub snapshot_key: Vec<u8>,
    pub credential_key: Vec<u8>,
}

impl GateTask {
    pub async fn run(mut self, mut rx: mpsc::Receiver<GateMsg>, cancel: CancellationToken) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut offline: HashMap<String, bool> = HashMap::new();
        let mut failing: HashMap<String, bool> = HashMap::new();
        // The latest unknown-face snapshot per gate: the vision process sends
        // one per unknown track every few seconds, not with every frame.
        let mut snapshots: HashMap<String, (Instant, Vec<u8>)> = HashMap::new();
        let started = Instant::now();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = check.tick() => {
                    self.check_cameras(&mut offline, started).await;
                }
                m = rx.recv() => match m {
                    None => break,
                    Some(GateMsg::Reload(id)) => match self.store.get_person(&id) {
                        Ok(Some(r)) => self.policy.upsert(r.person),
                        Ok(None) => self.policy.remove(&id),
                        Err(e) => tracing::error!(error = %e, "cannot reload a person"),
                    },
                    Some(GateMsg::ReloadVehicle(plate)) => match self.store.get_vehicle(&plate) {
                        Ok(Some(v)) => self.policy.upsert_vehicle(v),
                        Ok(None) => self.policy.remove_vehicle(&plate),
                        Err(e) => tracing::error!(error = %e, "cannot reload a vehicle"),
                    },
                    Some(GateMsg::Frame { gate, faces, qr, snapshot, plates, face_since }) => {
                        let now = self.clock.now();
                        let mut acts = if faces.is_empty() { vec![] } else { self.policy.handle(Input::Frame { gate: gate.clone(), faces }, now) };
                        for (text, confidence, province_confidence) in plates {
                            acts.extend(self.policy.handle(Input::Plate { gate: gate.clone(), text, confidence, province_confidence }, now));
                        }
                        for code in qr {
                            let h = secret_hash(&self.credential_key, Credential::Qr, &code);
                            acts.extend(self.policy.handle(Input::Credential { gate: gate.clone(), kind: Credential::Qr, secret_hash: h }, now));
                        }
                        // Only a face decision is timed from its track's start.
                        let opened_by_face = acts.iter().any(|a| matches!(a, Action::Log(e) if e.opened && e.credential == Credential::Face));
                        if let Some(s) = snapshot {
                            snapshots.insert(gate.clone(), (Instant::now(), s));
                        }
                        let snapshot = match acts.iter().any(|a| matches!(a, Action::Snapshot { .. })) {
                            true => snapshots.remove(&gate).filter(|(at, _)| at.elapsed() < SNAPSHOT_FRESH).map(|(_, s)| s),
                            false => None,
                        };
                        self.apply(acts, snapshot.as_deref(), &mut failing, face_since.filter(|_| opened_by_face)).await;
                    }
                    // Credentials arrive over MQTT with the gate named in the topic:
                    // only configured gates take them (a made-up gate would have
                    // its own PIN lockout, and a log line saying "opened").
                    Some(GateMsg::Credential { gate, reply, .. }) if !self.cfg.gates.iter().any(|g| g.name == gate) => {
                        self.metrics.reject("credential_unknown_gate");
                        let shown: String = gate.chars().take(64).collect();
                        tracing::warn!(gate = %shown, "a credential for a gate that is not configured was refused");
                        if let Some(r) = reply { let _ = r.send(None); }
                    }
                    Some(GateMsg::Credential { gate, kind, value, reply }) => {
                        let now = self.clock.now();
                        let acts = if kind == Credential::Plate {
                            // A plate typed by staff or sent by an external LPR camera: as sure as it gets.
                            self.policy.handle(Input::Plate { gate, text: value.trim().to_string(), confidence: 1.0, province_confidence: 1.0 }, now)
                        } else {
                            let h = secret_hash(&self.credential_key, kind, &value);
                            self.policy.handle(Input::Credential { gate, kind, secret_hash: h }, now)
                        };
                        let entry = acts.iter().find_map(|a| if let Action::Log(e) = a { Some(e.clone()) } else { None });
                        self.apply(acts, None, &mut failing, None).await;
                        if let Some(r) = reply { let _ = r.send(entry); }
                    }
                },
            }
        }
    }

    async fn alert(&self, kind: AlertKind, gate: &str, detail: String, firing: bool) {
        let _ = self.monitor.send(Command::Alert { kind, subject: Subject::Gate(gate.to_string()), detail, firing }).await;
    }

    /// Carry out a decision. The entry-log records come first and are made
    /// durable (fsync) before the barrier moves or anyone is answered:
    /// whatever the gate did is in the log, even after a kill -9.
    async fn apply(&mut self, mut acts: Vec<Action>, snapshot: Option<&[u8]>, failing: &mut HashMap<String, bool>, face_since: Option<Instant>) {
        // A stable sort: the log first, everything else in the policy's order.
        acts.sort_by_key(|a| !matches!(a, Action::Log(_)));
        let mut logged = false;
        for a in acts {
            if logged && !matches!(a, Action::Log(_)) {
                logged = false;
                self.make_durable().await;
            }
            match a {
                Action::Open { gate, person } => {
                    let r = match self.actuators.get(&gate) {
                        Some(act) => act.open(&gate).await,
                        None => Err(crate::gate::actuator::ActuatorError::NotConfigured),
                    };
                    match r {
                        Ok(()) => {
                            match face_since {
                                Some(t) => {
                                    let s = t.elapsed().as_secs_f64();
                                    self.metrics.gate_face_latency_seconds.observe(s);
                                    tracing::info!(gate = %gate, person = %person, latency_ms = (s * 1000.0).round() as u64, "gate opened");
                                }
                                None => tracing::info!(gate = %gate, person = %person, "gate opened"),
                            }
                            if failing.insert(gate.clone(), false) == Some(true) {
                                self.alert(AlertKind::ActuatorFailure, &gate, "actuator works again".into(), false).await;
                            }
                        }
                        Err(e) => {
                            tracing::error!(gate = %gate, error = %e, "ACTUATOR FAILED: the gate did not open");
                            failing.insert(gate.clone(), true);
                            self.alert(AlertKind::ActuatorFailure, &gate, e.to_string(), true).await;
                        }
                    }
                }
                Action::Log(e) => {
                    let result = if e.opened { "opened" } else { "denied" };
                    self.metrics.gate_decision(&e.gate, e.credential.as_str(), result);
                    match self.store.append_entry(&e) {
                        Ok(c) => {
                            logged = true;
                            if let Some(m) = &self.mqtt {
                                let topic = format!("gatewarden/{}/gate/{}/event", self.cfg.site, e.gate);
                                let body = serde_json::json!({ "seq": c.seq, "hash": c.hash, "entry": e }).to_string();
                                if let Err(err) = m.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, body) {
                                    tracing::warn!(error = %err, "cannot publish the gate event");
                                }
                            }
                        }
                        Err(err) => tracing::error!(error = %err, "CANNOT WRITE THE ENTRY LOG"),
                    }
                }
                Action::ElderSeen { elder, gate } => {
                    let (tx, _rx) = oneshot::channel();
                    let at = self.clock.now();
                    let _ = self.monitor.send(Command::Observe(Observation::Face { elder, gate, at }, tx)).await;
                }
                Action::Snapshot { gate } => {
                    if let Some(jpeg) = snapshot {
                        // A face is personal data: sealed at rest, opened with `gatewarden snapshot open`.
                        let name = format!("{gate}-{}.jpg.sealed", self.clock.now().format("%Y%m%dT%H%M%S%.3f"));
                        let _ = std::fs::create_dir_all(&self.snapshot_dir);
                        let sealed = store::seal_blob(&self.snapshot_key, &name, jpeg);
                        if let Err(e) = store::write_private(&self.snapshot_dir.join(&name), &sealed) {
                            tracing::warn!(error = %e, "cannot keep the unknown-face snapshot");
                        }
                    }
                }
                Action::Alert(a) => {
                    let (kind, gate, detail) = match a {
                        GateAlert::SpoofAttempts { gate, count } => (AlertKind::SpoofAttempts, gate, format!("{count} liveness failures")),
                        GateAlert::DenyListed { gate, person } => (AlertKind::DenyListed, gate, format!("deny-listed person {person}")),
                        GateAlert::PinLockout { gate } => (AlertKind::PinLockout, gate, "too many wrong PINs".into()),
                        // One alert for the site, under a subject no gate can be named.
                        GateAlert::PinGuessing { failures, gates } => (
                            AlertKind::PinLockout,
                            "(all gates)".to_string(),
                            format!("{failures} wrong PINs across {gates} keypads: someone is guessing; PIN entry is locked at every gate"),
                        ),
                    };
                    self.alert(kind, &gate, detail, true).await;
                }
            }
        }
        if logged {
            self.make_durable().await;
        }
    }

    /// fsync the store off the async threads (sled coalesces concurrent
    /// flushes). A failure is loud: the decision stands, the log may not.
    async fn make_durable(&self) {
        let store = self.store.clone();
        let started = Instant::now();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => self.metrics.entry_sync_seconds.observe(started.elapsed().as_secs_f64()),
            Ok(Err(e)) => tracing::error!(error = %e, "CANNOT MAKE THE ENTRY LOG DURABLE"),
            Err(e) => tracing::error!(error = %e, "entry-log flush task failed"),
        }
    }

    async fn check_cameras(&self, offline: &mut HashMap<String, bool>, started: Instant) {
        let after = self.cfg.access.camera_offline_after.get();
        let stats = self.camera_stats.lock().expect("camera stats").clone();
        for gate in &self.cameras {
            let cam = stats.get(gate).cloned().unwrap_or_default();
            let l = crate::telemetry::CameraLabel { camera: gate.clone() };
            let m = &self.metrics;
            m.camera_frames.get_or_create(&l).set(cam.frames as i64);
            m.camera_frames_analysed.get_or_create(&l).set(cam.analysed as i64);
            m.camera_frames_still.get_or_create(&l).set(cam.still as i64);
            m.camera_face_tracks.get_or_create(&l).set(cam.tracks as i64);
            m.camera_face_embeddings.get_or_create(&l).set(cam.embeddings as i64);
            m.camera_plate_reads.get_or_create(&l).set(cam.plate_reads as i64);
            m.camera_connected.get_or_create(&l).set(cam.connected as i64);
            m.camera_reconnects.get_or_create(&l).set(cam.reconnects as i64);
            if cam.finished {
                continue; // a video file that ended is not an outage
            }
            // What the process last said, aged by how long ago it said it: a
            // frozen vision process must not leave its cameras "connected".
            // (No report yet: `silent_ms` is None and the silence counts from start.)
            let stale = cam.updated.map_or(Duration::ZERO, |u| u.elapsed());
            let silent = cam.silent_ms.map(Duration::from_millis).unwrap_or(started.elapsed()) + stale.saturating_sub(Duration::from_secs(2));
            if stale > Duration::from_secs(5) {
                m.camera_connected.get_or_create(&l).set(0);
            }
            let was = offline.get(gate).copied().unwrap_or(false);
            if silent >= after && !was {
                offline.insert(gate.clone(), true);
                tracing::error!(gate = %gate, silent_s = silent.as_secs(), "camera offline");
                self.alert(AlertKind::CameraOffline, gate, format!("no frame for {}s", silent.as_secs()), true).await;
            } else if silent < after && was {
                offline.insert(gate.clone(), false);
                self.alert(AlertKind::CameraOffline, gate, "frames again".into(), false).await;
            }
        }
    }
}
