//! The `[vision]` section: models, ONNX Runtime threads and thresholds.

use serde::Deserialize;
use std::path::PathBuf;

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
    /// ONNX Runtime intra-op threads per model. 0 (the default) chooses:
    /// the vision loop runs one model at a time, so with no more cameras than
    /// cores each model gets up to 2 threads (a single frame decides sooner),
    /// and with more cameras than cores each model gets 1: the frames are
    /// small, and measured at 8 cameras one thread per model used less CPU at
    /// a lower p95 than two (BENCHMARKS.md, "Cameras per box").
    #[serde(default = "VisionConfig::default_intra_threads")]
    pub intra_threads: usize,
    /// Cosine similarity for a face match (see README: TAR/FAR).
    #[serde(default = "VisionConfig::default_match_threshold")]
    pub match_threshold: f32,
    #[serde(default = "VisionConfig::default_liveness_threshold")]
    pub liveness_threshold: f32,
    #[serde(default = "VisionConfig::default_min_face_px")]
    pub min_face_px: f32,
    /// The vision process answers heartbeats between frames; one that has not
    /// answered for this long (hung in native code, or stopped) is killed and
    /// restarted, and its cameras count as offline meanwhile.
    #[serde(default = "VisionConfig::default_heartbeat_timeout")]
    pub heartbeat_timeout: crate::Dur,
    /// Motion gating: a frame no different from the last one (at 64×36 grey)
    /// runs no network, unless something was found in the last
    /// `motion_hold_frames` analysed frames. An empty, still scene costs a
    /// resize and a difference, not a detector. Off: every frame is analysed.
    #[serde(default = "VisionConfig::default_motion_gating")]
    pub motion_gating: bool,
    #[serde(default = "VisionConfig::default_motion_hold_frames")]
    pub motion_hold_frames: u32,
    /// Follow each face across frames (IoU tracker): embed it once (again only
    /// while its match is borderline, up to `track_max_embeds`), and judge its
    /// liveness as the median over up to `track_liveness_frames` frames. Off:
    /// every frame runs every network, each face judged alone.
    #[serde(default = "VisionConfig::default_tracking")]
    pub tracking: bool,
    #[serde(default = "VisionConfig::default_track_max_embeds")]
    pub track_max_embeds: u32,
    #[serde(default = "VisionConfig::default_track_liveness_frames")]
    pub track_liveness_frames: u32,
    /// While a face is tracked at a camera, analyse up to this many frames a
    /// second (the camera's own rate caps it); an empty scene goes back to
    /// the gate's `max_fps`.
    #[serde(default = "VisionConfig::default_track_fps")]
    pub track_fps: f32,
}
impl VisionConfig {
    fn default_models_dir() -> PathBuf {
        PathBuf::from("models")
    }
    fn default_intra_threads() -> usize {
        0
    }

    /// The intra-op threads each model gets for `cameras` cameras on `cores` cores.
    pub fn intra_threads_for(&self, cameras: usize, cores: usize) -> usize {
        match self.intra_threads {
            0 if cameras > cores => 1,
            0 => cores.clamp(1, 2),
            n => n,
        }
    }
    fn default_match_threshold() -> f32 {
        domain::gate::policy::DEFAULT_MATCH_THRESHOLD
    }
    fn default_liveness_threshold() -> f32 {
        0.5
    }
    fn default_min_face_px() -> f32 {
        60.0
    }
    fn default_motion_gating() -> bool {
        true
    }
    fn default_motion_hold_frames() -> u32 {
        10
    }
    fn default_tracking() -> bool {
        true
    }
    fn default_track_max_embeds() -> u32 {
        5
    }
    fn default_track_liveness_frames() -> u32 {
        5
    }
    fn default_track_fps() -> f32 {
        10.0
    }
    fn default_heartbeat_timeout() -> crate::Dur {
        crate::Dur::secs(20)
    }
}
impl Default for VisionConfig {
    fn default() -> Self {
        toml::from_str("").expect("vision defaults")
    }
}

#[cfg(test)]
mod tests {
    use super::VisionConfig;

    #[test]
    fn intra_threads_are_chosen_by_cameras_and_cores_unless_set() {
        let v = VisionConfig::default();
        assert_eq!(v.intra_threads_for(1, 2), 2);
        assert_eq!(v.intra_threads_for(2, 2), 2);
        assert_eq!(v.intra_threads_for(8, 2), 1, "more cameras than cores: one thread per model");
        assert_eq!(v.intra_threads_for(1, 1), 1);
        assert_eq!(v.intra_threads_for(1, 16), 2);
        let v = VisionConfig { intra_threads: 3, ..VisionConfig::default() };
        assert_eq!(v.intra_threads_for(8, 2), 3, "an explicit setting wins");
    }
}
