//! ONNX Runtime, loaded from the shared library fetched from PyPI's
//! onnxruntime wheel, and models verified against the SHA-256 pins of
//! models/MANIFEST.tsv before they are loaded.

use super::{Result, VisionError};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The manifest compiled into the binary: what a model file must hash to.
const MANIFEST: &str = include_str!("../../models/MANIFEST.tsv");

pub const ORT_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// The pinned SHA-256 of a model file.
pub fn pinned_sha256(file: &str) -> Option<&'static str> {
    MANIFEST
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&file))
        .and_then(|f| f.get(1).copied())
}

/// Where the runtime library is: ORT_DYLIB_PATH, else `<models_dir>/onnxruntime/…`.
pub fn library_path(models_dir: &Path, configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => models_dir.join(ORT_LIBRARY),
    }
}

/// Load the runtime once per process. Later calls return the first outcome.
pub fn init(library: &Path) -> Result<&'static ort::environment::Environment> {
    let r = ENV.get_or_init(|| {
        if !library.exists() {
            return Err(format!("{} does not exist", library.display()));
        }
        let b = ort::init_from(library).map_err(|e| e.to_string())?;
        b.with_name("gatewarden").build().map_err(|e| e.to_string())
    });
    r.as_ref().map_err(|reason| VisionError::Runtime { path: library.to_owned(), reason: reason.clone() })
}

/// Hash-check a model file against its pin.
pub fn verify(path: &Path) -> Result<()> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
    let expected = pinned_sha256(&file).ok_or_else(|| VisionError::ModelUnknown { file: file.clone() })?;
    let bytes = std::fs::read(path).map_err(|_| VisionError::ModelMissing { path: path.to_owned() })?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != expected {
        return Err(VisionError::ModelCorrupt { path: path.to_owned(), expected: expected.to_string(), got });
    }
    Ok(())
}

/// Verify and load one model with an explicit intra-op thread count.
pub fn session(env: &ort::environment::Environment, models_dir: &Path, file: &str, intra_threads: usize) -> Result<Session> {
    let path = models_dir.join(file);
    verify(&path)?;
    let err = |e: ort::Error| VisionError::Runtime { path: path.clone(), reason: e.to_string() };
    let b = Session::builder(env).map_err(err)?;
    let b = b.with_optimization_level(GraphOptimizationLevel::All).map_err(|e| err(e.into()))?;
    let b = b.with_intra_threads(intra_threads.max(1)).map_err(|e| err(e.into()))?;
    // Four models run one after another on a two-core box. Spinning pool
    // threads of the model that just finished would steal the cores from the
    // next one (SFace measured 3× slower with spinning on).
    let mut b = b.with_intra_op_spinning(false).map_err(|e| err(e.into()))?;
    b.commit_from_file(&path).map_err(err)
}
