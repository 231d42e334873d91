//! Cameras. One reader thread per camera keeps only the latest frame: OpenCV's
//! FFMPEG backend queues every frame, so a slower consumer would fall minutes
//! behind. Open and read timeouts, stall detection, and reconnect with backoff
//! (no OpenCV backend reconnects by itself; see ../shared/NOTES-opencv.md).

use opencv::core::Mat;
use opencv::prelude::*;
use opencv::videoio::{self, VideoCapture};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Frame {
    pub mat: Mat,
    pub seq: u64,
    pub at: Instant,
}

/// The latest frame of one camera, and its health.
#[derive(Default)]
pub struct Camera {
    pub name: String,
    slot: Mutex<Option<Frame>>,
    pub frames: AtomicU64,
    pub reconnects: AtomicU64,
    pub stalls: AtomicU64,
    pub connected: AtomicBool,
    /// Milliseconds since `epoch` of the last frame (0: never).
    last_frame_ms: AtomicU64,
    epoch: Option<Instant>,
    /// A file source played to its end (not an error).
    pub finished: AtomicBool,
}

impl Camera {
    pub fn new(name: &str) -> Arc<Camera> {
        Arc::new(Camera { name: name.into(), epoch: Some(Instant::now()), ..Default::default() })
    }

    pub(crate) fn put(&self, mat: Mat) {
        let seq = self.frames.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        self.last_frame_ms.store(now.duration_since(self.epoch.expect("epoch")).as_millis() as u64 + 1, Ordering::Relaxed);
        // Replace, never queue: an older unread frame is simply dropped.
        *self.slot.lock().expect("camera slot") = Some(Frame { mat, seq, at: now });
    }

    /// Take the newest frame if it is newer than `after`.
    pub fn latest_after(&self, after: u64) -> Option<Frame> {
        let mut g = self.slot.lock().expect("camera slot");
        if g.as_ref().is_some_and(|f| f.seq > after) {
            g.take()
        } else {
            None
        }
    }

    /// The capture time of the newest frame, if it is newer than `after`
    /// (left in place: the worker decides whether it is due).
    pub fn pending_after(&self, after: u64) -> Option<Instant> {
        self.slot.lock().expect("camera slot").as_ref().filter(|f| f.seq > after).map(|f| f.at)
    }

    /// How long since the last frame (None: never had one).
    pub fn silent_for(&self) -> Option<Duration> {
        let ms = self.last_frame_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| self.epoch.expect("epoch").elapsed().saturating_sub(Duration::from_millis(ms - 1)))
    }
}

fn is_file(source: &str) -> bool {
    !source.contains("://") && !source.starts_with("/dev/video") && std::path::Path::new(source).exists()
}

fn open(source: &str, open_timeout: Duration, read_timeout: Duration) -> opencv::Result<VideoCapture> {
    if let Some(idx) = source.strip_prefix("/dev/video").and_then(|n| n.parse::<i32>().ok()) {
        return VideoCapture::new(idx, videoio::CAP_V4L2);
    }
    let params = opencv::core::Vector::<i32>::from_slice(&[
        videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
        open_timeout.as_millis() as i32,
        videoio::CAP_PROP_READ_TIMEOUT_MSEC,
        read_timeout.as_millis() as i32,
    ]);
    VideoCapture::from_file_with_params(source, videoio::CAP_FFMPEG, &params)
}

/// Read `source` until `stop`, keeping only the latest frame in `cam`.
/// A file plays once at its own frame rate (like a camera) and then ends.
pub fn run(cam: Arc<Camera>, source: String, open_timeout: Duration, read_timeout: Duration, stop: Arc<AtomicBool>) {
    let file = is_file(&source);
    let mut backoff = Duration::from_millis(500);
    let mut first = true;
    while !stop.load(Ordering::Relaxed) {
        if !first {
            cam.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(camera = %cam.name, retry_in_ms = backoff.as_millis() as u64, "camera lost; reconnecting");
            sleep_unless(&stop, backoff);
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
        first = false;
        let mut cap = match open(&source, open_timeout, read_timeout) {
            Ok(c) if c.is_opened().unwrap_or(false) => c,
            Ok(_) => {
                tracing::warn!(camera = %cam.name, "cannot open the camera source");
                continue;
            }
            Err(e) => {
                tracing::warn!(camera = %cam.name, error = %e, "cannot open the camera source");
                continue;
            }
        };
        tracing::info!(camera = %cam.name, "camera connected");
        cam.connected.store(true, Ordering::Relaxed);
        let fps = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
        let pace = (file && fps > 0.0).then(|| Duration::from_secs_f64(1.0 / fps));
        let mut got_any = false;
        let mut next = Instant::now();
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let t = Instant::now();
            let mut m = Mat::default();
            let ok = matches!(cap.read(&mut m), Ok(true)) && !m.empty();
            if !ok {
                if file && got_any {
                    tracing::info!(camera = %cam.name, "video file ended");
                    cam.finished.store(true, Ordering::Relaxed);
                    cam.connected.store(false, Ordering::Relaxed);
                    return;
                }
                break;
            }
            // After a stall OpenCV can hand back one stale frame: drop it and reconnect.
            if t.elapsed() >= read_timeout && !file {
                cam.stalls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(camera = %cam.name, "camera stalled");
                break;
            }
            got_any = true;
            backoff = Duration::from_millis(500);
            cam.put(m);
            if let Some(p) = pace {
                next += p;
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
        }
        cam.connected.store(false, Ordering::Relaxed);
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
}
