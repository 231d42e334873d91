//! Vision: the ONNX runtime and model loading (`runtime`), face detection,
//! alignment and embedding (`face`), liveness (`liveness`), 1:N matching
//! (`matcher`) and image loading (`image`). CPU-heavy: callers run it on
//! their own threads, never on the async runtime.

pub mod face;
pub mod image;
pub mod liveness;
pub mod matcher;
pub mod pipeline;
pub mod plate;
pub mod protocol;
pub mod runtime;
pub mod worker;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error("model {path} is missing. Fix: run `bash deploy/fetch-models.sh` (or `bash deploy/gw.sh test`), or set vision.models_dir")]
    ModelMissing { path: PathBuf },
    #[error("model {path} is corrupt: SHA-256 {got}, expected {expected}. Fix: delete it and run `bash deploy/fetch-models.sh`")]
    ModelCorrupt { path: PathBuf, expected: String, got: String },
    #[error("model {file} is not in models/MANIFEST.tsv, so it cannot be verified")]
    ModelUnknown { file: String },
    #[error("cannot load the ONNX Runtime library {path}: {reason}. Fix: run `bash deploy/fetch-models.sh`, or point ORT_DYLIB_PATH / vision.ort_library at libonnxruntime.so.1.31.1")]
    Runtime { path: PathBuf, reason: String },
    #[error("inference with {model} failed: {reason}")]
    Inference { model: &'static str, reason: String },
    #[error("image {what}: {reason}")]
    Image { what: String, reason: String },
    #[error("OpenCV: {0}")]
    OpenCv(#[from] opencv::Error),
}

pub type Result<T> = std::result::Result<T, VisionError>;

/// Cosine similarity at or above which a face matches an enrolment.
/// How it was chosen, with its TAR and FAR, is in README.md.
pub const DEFAULT_MATCH_THRESHOLD: f32 = 0.363;

pub(crate) fn infer_err(model: &'static str) -> impl Fn(ort::Error) -> VisionError {
    move |e| VisionError::Inference { model, reason: e.to_string() }
}
