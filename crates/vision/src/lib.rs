//! Vision: the ONNX runtime and model loading (`runtime`), face detection,
//! alignment and embedding (`face`), liveness (`liveness`), 1:N matching
//! (`matcher`) and image loading (`image`). CPU-heavy: callers run it on
//! their own threads, never on the async runtime.

pub mod capture;
pub mod face;
pub mod image;
pub mod liveness;
pub mod matcher;
pub mod pipeline;
pub mod plate;
pub use vision_protocol as protocol;
pub mod runtime;
pub mod track;
pub mod worker;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VisionError {
    #[error(transparent)]
    Model(#[from] vision_protocol::models::ModelError),
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

pub use domain::gate::policy::DEFAULT_MATCH_THRESHOLD;

pub(crate) fn infer_err(model: &'static str) -> impl Fn(ort::Error) -> VisionError {
    move |e| VisionError::Inference { model, reason: e.to_string() }
}

/// Logs go to stderr, which the daemon's supervisor forwards into its own log.
pub fn init_logging(cfg: &config::LogConfig) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.level));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        config::LogFormat::Json => b.json().flatten_event(true).try_init(),
        config::LogFormat::Text => b.try_init(),
    };
}
