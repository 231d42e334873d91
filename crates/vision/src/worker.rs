//! The body of `gatewarden-vision`: camera threads, the face pipeline and the
//! gallery, speaking `protocol` on stdin/stdout. Logs go to stderr.

use super::matcher::Gallery;
use super::pipeline::{FacePipeline, Timings};
use super::protocol::{EnrolResult, FaceOut, FromVision, PlateOut, ToVision};
use super::track::{Identity, PlateTracker, Tracker};
use crate::capture::Camera;
use base64::Engine as _;
use config::Config;
use opencv::prelude::*;
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// QR payloads gatewarden issues start with this.
pub use vision_protocol::QR_PREFIX;

pub fn decode_qr(bgr: &opencv::core::Mat) -> Vec<String> {
    let mut grey = opencv::core::Mat::default();
    if opencv::imgproc::cvt_color(bgr, &mut grey, opencv::imgproc::COLOR_BGR2GRAY, 0).is_err() {
        return vec![];
    }
    decode_qr_grey(&grey)
}

/// `decode_qr` on a frame already in grey.
pub fn decode_qr_grey(grey: &opencv::core::Mat) -> Vec<String> {
    if grey.typ() != opencv::core::CV_8UC1 || !grey.is_continuous() {
        return vec![];
    }
    let (w, h) = (grey.cols() as usize, grey.rows() as usize);
    let Ok(px) = grey.data_bytes() else { return vec![] };
    let mut img = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| px[y * w + x]);
    img.detect_grids()
        .into_iter()
        .filter_map(|g| g.decode().ok().map(|(_, s)| s))
        .filter(|s| s.starts_with(QR_PREFIX) && s.len() <= vision_protocol::image::MAX_QR_PAYLOAD)
        .collect()
}

/// Motion gating for one camera: is this frame different from the last one?
/// Compared at 64×36 grey, where a person walking up changes hundreds of
/// pixels and sensor noise or re-encoding changes almost none.
#[derive(Default)]
struct Motion {
    prev: Option<opencv::core::Mat>,
    /// Analyse this many more frames even if nothing moves: something was
    /// just seen (a person standing still at the gate stays analysed).
    hold: u32,
    analysed: u64,
    still: u64,
}

/// A grey pixel that changed by more than this (of 255) counts as moved…
const MOTION_LEVEL: f64 = 12.0;
/// …and more than this fraction of them is motion.
const MOTION_FRACTION: f64 = 0.005;

impl Motion {
    fn moved(&mut self, bgr: &opencv::core::Mat) -> opencv::Result<bool> {
        use opencv::core::{absdiff, count_non_zero, Mat, Size};
        use opencv::imgproc::{cvt_color, resize, threshold, COLOR_BGR2GRAY, INTER_AREA, THRESH_BINARY};
        let (mut small, mut grey) = (Mat::default(), Mat::default());
        resize(bgr, &mut small, Size::new(64, 36), 0.0, 0.0, INTER_AREA)?;
        cvt_color(&small, &mut grey, COLOR_BGR2GRAY, 0)?;
        let moved = match &self.prev {
            None => true,
            Some(prev) => {
                let (mut diff, mut mask) = (Mat::default(), Mat::default());
                absdiff(&grey, prev, &mut diff)?;
                threshold(&diff, &mut mask, MOTION_LEVEL, 255.0, THRESH_BINARY)?;
                count_non_zero(&mask)? as f64 / (64.0 * 36.0) > MOTION_FRACTION
            }
        };
        self.prev = Some(grey);
        Ok(moved)
    }

    /// Whether this frame is worth the networks.
    fn analyse(&mut self, bgr: &opencv::core::Mat, gating: bool) -> bool {
        // A frame that cannot be compared is analysed: gating only ever saves work.
        let moved = !gating || self.moved(bgr).unwrap_or(true);
        if moved || self.hold > 0 {
            self.hold = self.hold.saturating_sub(1);
            self.analysed += 1;
            true
        } else {
            self.still += 1;
            false
        }
    }
}

/// The faces of one frame, largest (nearest) first, each with its track's
/// identity and liveness. With tracking on, the embedder runs while a
/// track's identity is unsettled and the liveness pair until the track has
/// its frames; after that a tracked face costs only its detection.
fn faces_in(
    pipeline: &mut FacePipeline,
    gallery: &Gallery,
    feed: &mut Feed,
    frame: &crate::capture::Frame,
    v: &config::VisionConfig,
    settings: &domain::gate::policy::Settings,
    t: &mut Timings,
) -> super::Result<Vec<FaceOut>> {
    let (gate, tracker) = (feed.gate.as_str(), &mut feed.tracker);
    let dets = pipeline.detect(&frame.mat, t)?;
    let boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
    let ids = tracker.update(&boxes, frame.at);
    let mut seen: Vec<(f32, FaceOut)> = Vec::new();
    let mut embedded = 0;
    for (d, id) in dets.into_iter().zip(ids) {
        let area = d.bbox[2] * d.bbox[3];
        let tr = tracker.get_mut(id).expect("the tracker just returned it");
        let (want_embed, want_live) = match v.tracking {
            true => (tr.wants_embedding(v.track_max_embeds, frame.at), tr.wants_liveness(v.track_liveness_frames, v.liveness_threshold)),
            // Untracked: every frame judged alone.
            false => (true, true),
        };
        let f = pipeline.examine(&frame.mat, d, want_embed, want_live, t)?;
        if f.quality != super::face::Quality::Ok {
            tracing::debug!(gate, track = tr.id, age_ms = age_ms(tr, frame), quality = %f.quality, "face not usable");
            continue; // a poor view decides nothing, and costs no embedding
        }
        if let Some(e) = f.embedding.as_deref() {
            embedded += 1;
            let (person, score, margin) = match gallery.best_with_margin(e) {
                Some((m, margin)) if m.score >= v.match_threshold => (Some(m.person), m.score, margin),
                Some((m, _)) => (None, m.score, 0.0),
                None => (None, 0.0, 0.0),
            };
            let strong = person.is_some() && settings.is_strong(score, margin);
            tracing::debug!(gate, track = tr.id, age_ms = age_ms(tr, frame), ?person, score, margin, strong, "face embedded");
            tr.identified(Identity { person, score, margin, strong }, frame.at);
        }
        if let Some(l) = f.liveness {
            tr.add_liveness(l, v.track_liveness_frames);
            tracing::debug!(gate, track = tr.id, age_ms = age_ms(tr, frame), score = l, median = tr.liveness(), "liveness");
        }
        let Some(id) = tr.identity.clone() else { continue };
        seen.push((
            area,
            FaceOut {
                person: id.person,
                score: id.score,
                liveness: tr.liveness().unwrap_or(0.0),
                liveness_frames: tr.live.len() as u32,
                margin: id.margin,
                track: tr.id,
                track_age_ms: tr.born.elapsed().as_millis() as u64,
            },
        ));
    }
    tracker.embedded += embedded;
    seen.sort_by(|a, b| b.0.total_cmp(&a.0));
    Ok(seen.into_iter().map(|(_, f)| f).collect())
}

/// One camera as the worker sees it.
struct Feed {
    gate: String,
    cam: Arc<Camera>,
    /// The gate's own analysis interval (`max_fps`).
    interval: Duration,
    faces: bool,
    plates: bool,
    /// The last frame taken, and its capture time.
    last_seq: u64,
    last_at: Option<Instant>,
    /// Since when a due frame has been waiting for the loop.
    due_since: Option<Instant>,
    motion: Motion,
    tracker: Tracker,
    plate_tracker: PlateTracker,
    /// QR payloads sent, and when: a code held up to the camera is one
    /// credential per `access.cooldown`, not one per frame.
    qr_sent: HashMap<String, Instant>,
}

/// While a face is in view and undecided, its camera's frames go before
/// the others' by this much of their waiting: the decision waits on them.
/// Bounded, so a busy gate cannot starve the rest.
const TRACK_PRIORITY: Duration = Duration::from_millis(150);

/// The camera whose frame to analyse next, if any is due. A camera is due
/// when its newest frame was captured an interval after the last one taken
/// (paced by capture time, so a frame is taken as soon as it arrives, not up
/// to a frame late; 10 % slack for the camera's jitter). Among the due
/// ones, the one that has been due the longest goes first, an undecided
/// track's counting `TRACK_PRIORITY` longer. Waiting is counted from when
/// the camera became due, not from its newest frame's capture: a camera
/// keeps only its newest frame, so a starved camera's frame always looks
/// fresh, and would never win against a busy one.
fn next_due(feeds: &mut [Feed], v: &config::VisionConfig, track_interval: Duration, now: Instant) -> Option<usize> {
    feeds
        .iter_mut()
        .enumerate()
        .filter_map(|(i, f)| {
            let tracking = f.tracker.undecided(v.track_liveness_frames, v.liveness_threshold) || f.plate_tracker.undecided();
            let interval = if tracking { f.interval.min(track_interval) } else { f.interval };
            let due = f.cam.pending_after(f.last_seq).is_some_and(|at| f.last_at.is_none_or(|l| at.saturating_duration_since(l) >= interval.mul_f32(0.9)));
            if !due {
                f.due_since = None;
                return None;
            }
            let since = *f.due_since.get_or_insert(now);
            Some((i, if tracking { since.checked_sub(TRACK_PRIORITY).unwrap_or(since) } else { since }))
        })
        .min_by_key(|(_, u)| *u)
        .map(|(i, _)| i)
}

/// Time from the track's first capture to this frame's (for the debug log).
fn age_ms(tr: &super::track::Track, frame: &crate::capture::Frame) -> u64 {
    frame.at.saturating_duration_since(tr.born).as_millis() as u64
}

/// The plates of one frame that are worth reading: every plate is detected,
/// and read until its track's reads confirm it (then once a second).
/// Returns the reads, and whether any plate is in view.
fn plates_in(reader: &mut super::plate::PlateReader, tracker: &mut PlateTracker, frame: &crate::capture::Frame) -> super::Result<(Vec<PlateOut>, bool)> {
    let dets = reader.detect(&frame.mat)?;
    let seen = !dets.is_empty();
    let boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
    let ids = tracker.update(&boxes);
    let mut out = Vec::new();
    for (d, id) in dets.into_iter().zip(ids) {
        if !tracker.wants_read(id, frame.at) {
            continue;
        }
        let x = reader.read_detection(&frame.mat, d)?;
        let plate = domain::gate::plate::validate(&x.text).is_ok();
        tracker.read(id, plate.then_some((x.text.as_str(), x.confidence, x.province_confidence)), frame.at);
        if plate {
            out.push(PlateOut {
                text: x.text,
                confidence: x.confidence,
                province_confidence: x.province_confidence,
                colour: x.colour,
                double_layer: x.double_layer,
            });
        }
    }
    Ok((out, seen))
}

/// `vision.intra_threads`, resolved for this box's cameras and cores.
fn intra_threads(cfg: &Config) -> usize {
    let cameras = cfg.gates.iter().filter(|g| g.camera.is_some()).count();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cfg.vision.intra_threads_for(cameras, cores)
}

fn send(out: &mut impl Write, m: &FromVision) -> bool {
    let line = serde_json::to_string(m).expect("protocol serializes");
    writeln!(out, "{line}").and_then(|_| out.flush()).is_ok()
}

/// Run until stdin closes (the daemon went away) or a write fails.
/// `gatewarden-vision --check`: load every model through ONNX Runtime (hashes
/// verified) and, given a photo, run it through OpenCV and the face pipeline.
/// The install script and operators use it to prove a box can see.
pub fn check(cfg: &Config, photo: Option<&std::path::Path>) -> anyhow::Result<String> {
    let v = &cfg.vision;
    let threads = intra_threads(cfg);
    let mut pipeline = FacePipeline::load(&v.models_dir, v.ort_library.as_deref(), threads)?;
    super::plate::PlateReader::load(&v.models_dir, v.ort_library.as_deref(), threads)?;
    let mut report = format!("vision OK: face and plate models loaded from {}", v.models_dir.display());
    if let Some(p) = photo {
        let img = super::image::load(p)?;
        let faces = pipeline.analyse(&img, true, &mut Default::default())?;
        let usable = faces.iter().filter(|f| f.embedding.is_some()).count();
        report.push_str(&format!("; {}: {} face(s), {usable} usable", p.display(), faces.len()));
    }
    Ok(report)
}

pub fn run(cfg: &Config) -> anyhow::Result<()> {
    let v = &cfg.vision;
    let threads = intra_threads(cfg);
    tracing::info!(threads, cameras = cfg.gates.iter().filter(|g| g.camera.is_some()).count(), "ONNX Runtime intra-op threads per model");
    let mut pipeline = FacePipeline::load(&v.models_dir, v.ort_library.as_deref(), threads)?;
    pipeline.gates.min_face_px = v.min_face_px;
    pipeline.liveness.threshold = v.liveness_threshold;
    let mut gallery = Gallery::default();
    let mut plates = match cfg.gates.iter().any(|g| g.read_plates && g.camera.is_some()) {
        true => Some(super::plate::PlateReader::load(&v.models_dir, v.ort_library.as_deref(), threads)?),
        false => None,
    };
    let settings = cfg.gate_settings();
    let (tx, rx) = mpsc::channel::<ToVision>();
    let stdin_open = Arc::new(AtomicBool::new(true));
    let open = stdin_open.clone();
    std::thread::Builder::new().name("vision-stdin".into()).spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<ToVision>(&line) {
                Ok(m) => {
                    if tx.send(m).is_err() {
                        break;
                    }
                }
                Err(e) => tracing::error!(error = %e, "bad message from the daemon"),
            }
        }
        open.store(false, Ordering::Relaxed);
    })?;
    let mut out = std::io::stdout().lock();
    // The initial gallery arrives before Start.
    loop {
        match rx.recv() {
            Ok(ToVision::Start) => break,
            Ok(ToVision::GalleryAdd { person, embedding }) => gallery.add(&person, &embedding),
            Ok(ToVision::Ping { .. }) => {}
            Ok(other) => tracing::warn!(?other, "message before start ignored"),
            Err(_) => return Ok(()),
        }
    }
    if !send(&mut out, &FromVision::Ready { templates: gallery.len() }) {
        return Ok(());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut feeds: Vec<Feed> = Vec::new();
    for g in &cfg.gates {
        if let Some(src) = &g.camera {
            let cam = Camera::new(&g.name);
            let (c, s, st) = (cam.clone(), src.clone(), stop.clone());
            let (ot, rt) = (g.open_timeout.get(), g.read_timeout.get());
            std::thread::Builder::new().name(format!("camera-{}", g.name)).spawn(move || crate::capture::run(c, s, ot, rt, st))?;
            feeds.push(Feed {
                gate: g.name.clone(),
                cam,
                interval: Duration::from_secs_f32(1.0 / g.max_fps),
                faces: g.read_faces,
                plates: g.read_plates,
                last_seq: 0,
                last_at: None,
                due_since: None,
                motion: Motion::default(),
                tracker: Tracker::default(),
                plate_tracker: PlateTracker::new(&settings),
                qr_sent: HashMap::new(),
            });
        }
    }
    // QR codes are read on a thread of their own, off the face path (about
    // 10 ms a 720p frame), from the grey frame. Full-queue policy (2 frames):
    // the frame's QR read is dropped (counted); the code is still in front of
    // the camera on the next frame.
    let (qr_tx, qr_in) = mpsc::sync_channel::<(usize, opencv::core::Mat)>(2);
    let (qr_found, qr_rx) = mpsc::sync_channel::<(usize, Vec<String>)>(16);
    std::thread::Builder::new().name("vision-qr".into()).spawn(move || {
        for (feed, grey) in qr_in {
            // A frame that makes the decoder panic costs that frame's read, not
            // the QR reading of every camera from then on.
            let codes = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_qr_grey(&grey))) {
                Ok(codes) => codes,
                Err(_) => {
                    tracing::error!("the QR decoder failed on a frame; skipped");
                    continue;
                }
            };
            // Blocks while the worker is behind: codes found are never dropped.
            if !codes.is_empty() && qr_found.send((feed, codes)).is_err() {
                break;
            }
        }
    })?;
    let mut qr_dropped = 0u64;
    let mut last_stats = Instant::now() - Duration::from_secs(1);
    let track_interval = Duration::from_secs_f32(1.0 / v.track_fps);
    let qr_repeat = settings.cooldown.to_std().unwrap_or(Duration::from_secs(10));
    let result = loop {
        if !stdin_open.load(Ordering::Relaxed) {
            break Ok(());
        }
        let mut busy = false;
        while let Ok(m) = rx.try_recv() {
            busy = true;
            match m {
                // Who is enrolled changed: people already in view are identified again.
                ToVision::GalleryAdd { person, embedding } => {
                    gallery.add(&person, &embedding);
                    feeds.iter_mut().for_each(|f| f.tracker.forget_identities());
                }
                ToVision::GalleryRemove { person } => {
                    gallery.remove_person(&person);
                    feeds.iter_mut().for_each(|f| f.tracker.forget_identities());
                }
                ToVision::Enrol { id, image } => {
                    let result = match base64::engine::general_purpose::STANDARD.decode(image.trim()) {
                        Err(e) => EnrolResult::Error(format!("not base64: {e}")),
                        Ok(bytes) => match super::image::decode(&bytes, "photo").and_then(|m| pipeline.enrol(&m)) {
                            Ok(Ok(e)) => EnrolResult::Ok(e),
                            Ok(Err(r)) => EnrolResult::Rejected(r.to_string()),
                            Err(e) => EnrolResult::Error(e.to_string()),
                        },
                    };
                    if !send(&mut out, &FromVision::Enrolled { id, result }) {
                        break;
                    }
                }
                ToVision::Start => {}
                ToVision::Ping { id } => {
                    if !send(&mut out, &FromVision::Pong { id }) {
                        break;
                    }
                }
            }
        }
        while let Ok((i, codes)) = qr_rx.try_recv() {
            busy = true;
            let f = &mut feeds[i];
            f.motion.hold = v.motion_hold_frames;
            let now = Instant::now();
            f.qr_sent.retain(|_, at| now.saturating_duration_since(*at) < qr_repeat);
            let qr: Vec<String> = codes.into_iter().filter(|c| !f.qr_sent.contains_key(c)).collect();
            if qr.is_empty() {
                continue;
            }
            f.qr_sent.extend(qr.iter().map(|c| (c.clone(), now)));
            if !send(&mut out, &FromVision::Frame { gate: f.gate.clone(), faces: vec![], qr, snapshot: None, plates: vec![] }) {
                break;
            }
        }
        if last_stats.elapsed() >= Duration::from_millis(500) {
            last_stats = Instant::now();
            if qr_dropped > 0 {
                tracing::debug!(qr_dropped, "frames not read for QR codes (the QR reader was behind)");
            }
            for f in &feeds {
                let m = FromVision::Camera {
                    gate: f.gate.clone(),
                    frames: f.cam.frames.load(Ordering::Relaxed),
                    connected: f.cam.connected.load(Ordering::Relaxed),
                    reconnects: f.cam.reconnects.load(Ordering::Relaxed),
                    finished: f.cam.finished.load(Ordering::Relaxed),
                    silent_ms: f.cam.silent_for().map(|d| d.as_millis() as u64),
                    analysed: f.motion.analysed,
                    still: f.motion.still,
                    tracks: f.tracker.opened,
                    embeddings: f.tracker.embedded,
                    plate_reads: f.plate_tracker.reads,
                };
                if !send(&mut out, &m) {
                    break;
                }
            }
        }
        let Some(i) = next_due(&mut feeds, v, track_interval, Instant::now()) else {
            if !busy {
                std::thread::sleep(Duration::from_millis(2));
            }
            continue;
        };
        let f = &mut feeds[i];
        f.due_since = None;
        let Some(frame) = f.cam.latest_after(f.last_seq) else { continue };
        f.last_seq = frame.seq;
        f.last_at = Some(frame.at);
        if !f.motion.analyse(&frame.mat, v.motion_gating) {
            continue; // nothing moved, nothing was there: no network runs
        }
        let started = Instant::now();
        let mut t = Timings::default();
        let faces = if f.faces {
            match faces_in(&mut pipeline, &gallery, f, &frame, v, &settings, &mut t) {
                Ok(faces) => faces,
                Err(e) => {
                    tracing::error!(gate = %f.gate, error = %e, "face analysis failed");
                    continue;
                }
            }
        } else {
            vec![]
        };
        let faces_done = Instant::now();
        let (plate_reads, plates_seen) = match (&mut plates, f.plates) {
            (Some(r), true) => plates_in(r, &mut f.plate_tracker, &frame).unwrap_or_else(|e| {
                tracing::error!(gate = %f.gate, error = %e, "plate reading failed");
                (vec![], false)
            }),
            _ => (vec![], false),
        };
        let plates_done = Instant::now();
        let unknown_track = faces.first().filter(|x| x.person.is_none()).map(|x| x.track);
        let snapshot = match unknown_track.and_then(|id| f.tracker.get_mut(id)).map(|tr| tr.snapshot_due(frame.at)) {
            Some(true) => {
                let mut buf = opencv::core::Vector::<u8>::new();
                opencv::imgcodecs::imencode(".jpg", &frame.mat, &mut buf, &opencv::core::Vector::new())
                    .ok()
                    .map(|_| base64::engine::general_purpose::STANDARD.encode(buf.as_slice()))
            }
            _ => None,
        };
        let ms = |d: Duration| d.as_secs_f32() * 1000.0;
        tracing::debug!(
            gate = %f.gate,
            waited_ms = ms(started.saturating_duration_since(frame.at)),
            detect_ms = ms(t.detect),
            embed_ms = ms(t.embed),
            liveness_ms = ms(t.liveness),
            faces_ms = ms(faces_done - started),
            plates_ms = ms(plates_done - faces_done),
            snapshot_ms = ms(plates_done.elapsed()),
            "frame analysed"
        );
        let mut grey = opencv::core::Mat::default();
        if opencv::imgproc::cvt_color(&frame.mat, &mut grey, opencv::imgproc::COLOR_BGR2GRAY, 0).is_ok() {
            match qr_tx.try_send((i, grey)) {
                Ok(()) => {}
                Err(mpsc::TrySendError::Full(_)) => qr_dropped += 1,
                // Never while the loop runs; if it did, exit and be restarted
                // by the supervisor rather than go on without QR codes.
                Err(mpsc::TrySendError::Disconnected(_)) => break Err(anyhow::anyhow!("the QR reader thread stopped")),
            }
        }
        // Someone or some car is there: keep looking though nothing moves
        // (a car waiting at the barrier is followed, and read once a second).
        if !faces.is_empty() || plates_seen {
            f.motion.hold = v.motion_hold_frames;
        }
        if faces.is_empty() && plate_reads.is_empty() {
            continue;
        }
        if !send(&mut out, &FromVision::Frame { gate: f.gate.clone(), faces, qr: vec![], snapshot, plates: plate_reads }) {
            break Ok(());
        }
    };
    stop.store(true, Ordering::Relaxed);
    result
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

    fn feed(gate: &str) -> Feed {
        Feed {
            gate: gate.into(),
            cam: Camera::new(gate),
            interval: Duration::from_millis(200),
            faces: true,
            plates: false,
            last_seq: 0,
            last_at: None,
            due_since: None,
            motion: Motion::default(),
            tracker: Tracker::default(),
            plate_tracker: PlateTracker::new(&Default::default()),
            qr_sent: HashMap::new(),
        }
    }

    #[test]
    fn the_camera_due_longest_goes_next_an_undecided_face_first_and_a_camera_the_others_keep_busy_is_not_starved() {
        let v = config::VisionConfig::default();
        let track = Duration::from_secs_f32(1.0 / v.track_fps);
        let frame = || Mat::new_rows_cols_with_default(36, 64, CV_8UC3, Scalar::all(100.0)).unwrap();
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut feeds = vec![feed("north"), feed("south")];
        let take = |f: &mut Feed| {
            let x = f.cam.latest_after(f.last_seq).unwrap();
            (f.last_seq, f.last_at, f.due_since) = (x.seq, Some(x.at), None);
        };
        assert_eq!(next_due(&mut feeds, &v, track, t0), None, "no frame yet");
        feeds[0].cam.put(frame());
        assert_eq!(next_due(&mut feeds, &v, track, t0), Some(0));
        feeds[1].cam.put(frame());
        assert_eq!(next_due(&mut feeds, &v, track, t0 + ms(5)), Some(0), "north has been due longer");
        // South has a face in view, not yet identified: it goes first.
        feeds[1].tracker.update(&[[100.0, 100.0, 80.0, 80.0]], t0);
        assert_eq!(next_due(&mut feeds, &v, track, t0 + ms(10)), Some(1));
        take(&mut feeds[1]);
        // South stays busy (a new frame every time it is served), north keeps
        // only its newest frame: north is still served once it has waited
        // TRACK_PRIORITY longer than south's latest wait.
        let mut served = vec![];
        for k in 1..=12u64 {
            std::thread::sleep(ms(2));
            feeds.iter().for_each(|f| f.cam.put(frame()));
            feeds[1].last_at = Some(Instant::now() - ms(200)); // south is always due again
            let now = t0 + ms(10 + 40 * k);
            let i = next_due(&mut feeds, &v, track, now).unwrap();
            served.push(i);
            take(&mut feeds[i]);
            if i == 0 {
                break;
            }
        }
        assert_eq!(served.last(), Some(&0), "north was starved: {served:?}");
        assert!(served.len() <= 6, "north waited {} turns", served.len());
        // Due by capture time: a frame 100 ms after the last one taken is not
        // due at the gate's 5 fps, and is at the tracking rate (10 fps).
        feeds[0].cam.put(frame());
        feeds[0].last_at = Some(Instant::now() - ms(100));
        feeds[1].last_at = Some(Instant::now());
        assert_eq!(next_due(&mut feeds, &v, track, Instant::now()), None, "north is idle, south was just served");
        feeds[0].tracker.update(&[[10.0, 10.0, 80.0, 80.0]], Instant::now());
        assert_eq!(next_due(&mut feeds, &v, track, Instant::now()), Some(0), "north now follows a face at the tracking rate");
    }

    #[test]
    fn a_still_scene_is_analysed_once_and_motion_wakes_the_networks() {
        let still = Mat::new_rows_cols_with_default(720, 1280, CV_8UC3, Scalar::all(120.0)).unwrap();
        let mut m = Motion::default();
        assert!(m.analyse(&still, true), "the first frame has nothing to compare with");
        for _ in 0..20 {
            assert!(!m.analyse(&still, true));
        }
        assert_eq!((m.analysed, m.still), (1, 20));
        // Someone walks in: a bright block over a tenth of the frame.
        let mut moved = still.clone();
        Mat::roi_mut(&mut moved, opencv::core::Rect::new(500, 200, 300, 300)).unwrap().set_to(&Scalar::all(230.0), &opencv::core::no_array()).unwrap();
        assert!(m.analyse(&moved, true));
        // Found something: held for a few frames though nothing moves.
        m.hold = 3;
        assert!((0..3).all(|_| m.analyse(&moved, true)));
        assert!(!m.analyse(&moved, true));
        // Gating off: every frame is analysed.
        assert!((0..5).all(|_| m.analyse(&still, false)));
    }
}
