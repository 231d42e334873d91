//! The running gates. A vision thread (CPU-heavy, off the async runtime) takes
//! the latest frame of each camera, recognises faces and reads QR codes; the
//! gate task owns the `Policy` and carries its actions out: actuators, the
//! entry log, MQTT events, presence for elders, alerts, snapshots.

use super::actuator::Actuator;
use super::log::{Credential, Entry};
use super::policy::{Action, FaceSeen, GateAlert, Input, Policy};
use crate::alert::{AlertKind, Subject};
use crate::capture::Camera;
use crate::daemon::{Command, Shared};
use crate::presence::Observation;
use crate::vision::matcher::Gallery;
use crate::vision::pipeline::{FacePipeline, Timings};
use hmac::{Hmac, Mac};
use opencv::prelude::*;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// PINs, card numbers and QR tokens are matched and stored as keyed hashes.
pub fn secret_hash(key: &[u8], kind: Credential, value: &str) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(kind.as_str().as_bytes());
    m.update(b":");
    m.update(value.trim().as_bytes());
    hex::encode(m.finalize().into_bytes())
}

/// QR payloads gatewarden issues: "GW1:<token>".
pub const QR_PREFIX: &str = "GW1:";

pub enum GateMsg {
    Frame { gate: String, faces: Vec<FaceSeen>, qr: Vec<String>, snapshot: Option<Vec<u8>> },
    Credential { gate: String, kind: Credential, value: String, reply: Option<oneshot::Sender<Option<Entry>>> },
    Reload(String),
}

pub type EnrolReply = oneshot::Sender<Result<Result<Vec<f32>, String>, String>>;

/// Work for the vision thread besides cameras: enrolment photos.
pub enum VisionRequest {
    Enrol { image: Vec<u8>, reply: EnrolReply },
}

pub struct VisionWorker {
    pub pipeline: FacePipeline,
    pub gallery: Arc<RwLock<Gallery>>,
    pub cameras: Vec<(String, Arc<Camera>, Duration)>,
    pub out: mpsc::Sender<GateMsg>,
    pub requests: std::sync::mpsc::Receiver<VisionRequest>,
    pub stop: Arc<AtomicBool>,
    pub match_threshold: f32,
}

fn decode_qr(bgr: &opencv::core::Mat) -> Vec<String> {
    let mut grey = opencv::core::Mat::default();
    if opencv::imgproc::cvt_color(bgr, &mut grey, opencv::imgproc::COLOR_BGR2GRAY, 0).is_err() {
        return vec![];
    }
    let (w, h) = (grey.cols() as usize, grey.rows() as usize);
    let Ok(px) = grey.data_bytes() else { return vec![] };
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| px[y * w + x]);
    img.detect_grids().into_iter().filter_map(|g| g.decode().ok().map(|(_, s)| s)).filter(|s| s.starts_with(QR_PREFIX)).collect()
}

impl VisionWorker {
    pub fn run(mut self) {
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        let mut last_run: HashMap<String, Instant> = HashMap::new();
        while !self.stop.load(Ordering::Relaxed) {
            let mut busy = false;
            while let Ok(VisionRequest::Enrol { image, reply }) = self.requests.try_recv() {
                busy = true;
                let r = crate::vision::image::decode(&image, "photo")
                    .map_err(|e| e.to_string())
                    .and_then(|m| self.pipeline.enrol(&m).map_err(|e| e.to_string()))
                    .map(|r| r.map_err(|rej| rej.to_string()));
                let _ = reply.send(r);
            }
            for (gate, cam, interval) in &self.cameras {
                if last_run.get(gate).is_some_and(|t| t.elapsed() < *interval) {
                    continue;
                }
                let after = last_seq.get(gate).copied().unwrap_or(0);
                let Some(frame) = cam.latest_after(after) else { continue };
                busy = true;
                last_seq.insert(gate.clone(), frame.seq);
                last_run.insert(gate.clone(), Instant::now());
                let mut t = Timings::default();
                let faces = match self.pipeline.analyse(&frame.mat, true, &mut t) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(gate = %gate, error = %e, "face analysis failed");
                        continue;
                    }
                };
                let mut seen: Vec<(f32, FaceSeen)> = Vec::new();
                {
                    let g = self.gallery.read().expect("gallery");
                    for f in faces.iter().filter(|f| f.embedding.is_some()) {
                        let m = g.best(f.embedding.as_deref().expect("checked"));
                        let (person, score) = match m {
                            Some(m) if m.score >= self.match_threshold => (Some(m.person), m.score),
                            Some(m) => (None, m.score),
                            None => (None, 0.0),
                        };
                        let area = f.detection.bbox[2] * f.detection.bbox[3];
                        seen.push((area, FaceSeen { person, score, liveness: f.liveness.unwrap_or(0.0) }));
                    }
                }
                seen.sort_by(|a, b| b.0.total_cmp(&a.0));
                let faces: Vec<FaceSeen> = seen.into_iter().map(|(_, f)| f).collect();
                let snapshot = if faces.first().is_some_and(|f| f.person.is_none()) {
                    let mut buf = opencv::core::Vector::<u8>::new();
                    opencv::imgcodecs::imencode(".jpg", &frame.mat, &mut buf, &opencv::core::Vector::new()).ok().map(|_| buf.to_vec())
                } else {
                    None
                };
                let qr = decode_qr(&frame.mat);
                // Frames are replaceable: if the gate task is behind, drop this one.
                let _ = self.out.try_send(GateMsg::Frame { gate: gate.clone(), faces, qr, snapshot });
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }
}

pub struct GateTask {
    pub sh: Arc<Shared>,
    pub policy: Policy,
    pub actuators: HashMap<String, Actuator>,
    pub mqtt: Option<rumqttc::AsyncClient>,
    pub cameras: Vec<(String, Arc<Camera>)>,
    pub snapshot_dir: std::path::PathBuf,
    pub credential_key: Vec<u8>,
}

impl GateTask {
    pub async fn run(mut self, mut rx: mpsc::Receiver<GateMsg>, cancel: CancellationToken) {
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut offline: HashMap<String, bool> = HashMap::new();
        let mut failing: HashMap<String, bool> = HashMap::new();
        let started = Instant::now();
        let mut last_purge = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = check.tick() => {
                    self.check_cameras(&mut offline, started).await;
                    if last_purge.elapsed() >= Duration::from_secs(3600) {
                        last_purge = Instant::now();
                        self.purge().await;
                    }
                }
                m = rx.recv() => match m {
                    None => break,
                    Some(GateMsg::Reload(id)) => match self.sh.store.get_person(&id) {
                        Ok(Some(r)) => self.policy.upsert(r.person),
                        Ok(None) => self.policy.remove(&id),
                        Err(e) => tracing::error!(error = %e, "cannot reload a person"),
                    },
                    Some(GateMsg::Frame { gate, faces, qr, snapshot }) => {
                        let now = self.sh.clock.now();
                        let mut acts = self.policy.handle(Input::Frame { gate: gate.clone(), faces }, now);
                        for code in qr {
                            let h = secret_hash(&self.credential_key, Credential::Qr, &code);
                            acts.extend(self.policy.handle(Input::Credential { gate: gate.clone(), kind: Credential::Qr, secret_hash: h }, now));
                        }
                        self.apply(acts, snapshot.as_deref(), &mut failing).await;
                    }
                    Some(GateMsg::Credential { gate, kind, value, reply }) => {
                        let now = self.sh.clock.now();
                        let h = secret_hash(&self.credential_key, kind, &value);
                        let acts = self.policy.handle(Input::Credential { gate, kind, secret_hash: h }, now);
                        let entry = acts.iter().find_map(|a| if let Action::Log(e) = a { Some(e.clone()) } else { None });
                        self.apply(acts, None, &mut failing).await;
                        if let Some(r) = reply { let _ = r.send(entry); }
                    }
                },
            }
        }
    }

    async fn alert(&self, kind: AlertKind, gate: &str, detail: String, firing: bool) {
        let _ = self.sh.command(Command::Alert { kind, subject: Subject::Gate(gate.to_string()), detail, firing }).await;
    }

    async fn apply(&mut self, acts: Vec<Action>, snapshot: Option<&[u8]>, failing: &mut HashMap<String, bool>) {
        for a in acts {
            match a {
                Action::Open { gate, person } => {
                    let r = match self.actuators.get(&gate) {
                        Some(act) => act.open(&gate).await,
                        None => Err("no actuator configured".into()),
                    };
                    match r {
                        Ok(()) => {
                            tracing::info!(gate = %gate, person = %person, "gate opened");
                            if failing.insert(gate.clone(), false) == Some(true) {
                                self.alert(AlertKind::ActuatorFailure, &gate, "actuator works again".into(), false).await;
                            }
                        }
                        Err(e) => {
                            tracing::error!(gate = %gate, error = %e, "ACTUATOR FAILED: the gate did not open");
                            failing.insert(gate.clone(), true);
                            self.alert(AlertKind::ActuatorFailure, &gate, e, true).await;
                        }
                    }
                }
                Action::Log(e) => {
                    let result = if e.opened { "opened" } else { "denied" };
                    self.sh.metrics.gate_decision(&e.gate, e.credential.as_str(), result);
                    match self.sh.store.append_entry(&e) {
                        Ok(c) => {
                            if let Some(m) = &self.mqtt {
                                let topic = format!("gatewarden/{}/gate/{}/event", self.sh.cfg.site, e.gate);
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
                    let at = self.sh.clock.now();
                    let _ = self.sh.command(Command::Observe(Observation::Face { elder, gate, at }, tx)).await;
                }
                Action::Snapshot { gate } => {
                    if let Some(jpeg) = snapshot {
                        let name = format!("{gate}-{}.jpg", self.sh.clock.now().format("%Y%m%dT%H%M%S%.3f"));
                        let _ = std::fs::create_dir_all(&self.snapshot_dir);
                        if let Err(e) = std::fs::write(self.snapshot_dir.join(name), jpeg) {
                            tracing::warn!(error = %e, "cannot keep the unknown-face snapshot");
                        }
                    }
                }
                Action::Alert(a) => {
                    let (kind, gate, detail) = match a {
                        GateAlert::SpoofAttempts { gate, count } => (AlertKind::SpoofAttempts, gate, format!("{count} liveness failures")),
                        GateAlert::DenyListed { gate, person } => (AlertKind::DenyListed, gate, format!("deny-listed person {person}")),
                        GateAlert::PinLockout { gate } => (AlertKind::PinLockout, gate, "too many wrong PINs".into()),
                    };
                    self.alert(kind, &gate, detail, true).await;
                }
            }
        }
    }

    async fn check_cameras(&self, offline: &mut HashMap<String, bool>, started: Instant) {
        let after = self.sh.cfg.access.camera_offline_after.get();
        for (gate, cam) in &self.cameras {
            let l = crate::telemetry::CameraLabel { camera: gate.clone() };
            let m = &self.sh.metrics;
            m.camera_frames.get_or_create(&l).set(cam.frames.load(Ordering::Relaxed) as i64);
            m.camera_connected.get_or_create(&l).set(cam.connected.load(Ordering::Relaxed) as i64);
            m.camera_reconnects.get_or_create(&l).set(cam.reconnects.load(Ordering::Relaxed) as i64);
            if cam.finished.load(Ordering::Relaxed) {
                continue; // a video file that ended is not an outage
            }
            let silent = cam.silent_for().unwrap_or(started.elapsed());
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

    /// Unknown-face snapshots and expired visitors go after their retention.
    async fn purge(&mut self) {
        let keep = self.sh.cfg.access.unknown_retention.get();
        if let Ok(rd) = std::fs::read_dir(&self.snapshot_dir) {
            for e in rd.flatten() {
                let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > keep);
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let now = self.sh.clock.now();
        let retention = crate::clock::chrono_dur(self.sh.cfg.access.visitor_retention.get());
        for r in self.sh.store.list_people().unwrap_or_default() {
            let p = &r.person;
            if p.kind == super::policy::PersonKind::Visitor && p.valid_until.is_some_and(|u| u + retention < now) {
                if let Err(e) = self.sh.store.remove_person(&p.id) {
                    tracing::error!(error = %e, "cannot purge a visitor");
                    continue;
                }
                self.policy.remove(&p.id);
                tracing::info!(visitor = %p.id, "expired visitor purged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::{Mat, Scalar, CV_8UC3};

    #[test]
    fn a_visitor_qr_code_in_a_camera_frame_is_read() {
        let payload = format!("{QR_PREFIX}0123456789abcdef01234567");
        let code = qrcode::QrCode::new(payload.as_bytes()).unwrap();
        let (w, colors) = (code.width(), code.to_colors());
        let scale = 8;
        let size = ((w + 8) * scale) as i32;
        let mut img = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(200.0)).unwrap();
        let mut roi = Mat::roi_mut(&mut img, opencv::core::Rect::new(400, 100, size, size)).unwrap();
        roi.set_to(&Scalar::all(255.0), &opencv::core::no_array()).unwrap();
        for (i, c) in colors.iter().enumerate() {
            if *c == qrcode::Color::Dark {
                let (x, y) = ((i % w + 4) * scale, (i / w + 4) * scale);
                let r = opencv::core::Rect::new(x as i32, y as i32, scale as i32, scale as i32);
                Mat::roi_mut(&mut roi, r).unwrap().set_to(&Scalar::all(0.0), &opencv::core::no_array()).unwrap();
            }
        }
        assert_eq!(decode_qr(&img), vec![payload]);
        let blank = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(128.0)).unwrap();
        assert!(decode_qr(&blank).is_empty());
    }
}
