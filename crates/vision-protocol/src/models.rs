//! The models the vision process loads, pinned by SHA-256 (models/MANIFEST.tsv,
//! compiled in), and where the ONNX Runtime library is. Shared with the daemon
//! so it can refuse a missing or corrupt model at start-up without linking
//! OpenCV or ONNX Runtime itself.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The manifest compiled into the binary: what a model file must hash to.
const MANIFEST: &str = include_str!("../../../models/MANIFEST.tsv");

/// The runtime library, relative to the models directory.
pub const ORT_LIBRARY: &str = "onnxruntime/libonnxruntime.so.1.31.1";

/// YuNet face detector.
pub const FACE_DETECTOR: &str = "face_detection_yunet_2023mar.onnx";
/// SFace embedder.
pub const FACE_EMBEDDER: &str = "face_recognition_sface_2021dec.onnx";
/// MiniFASNetV2 liveness (2.7× crop).
pub const LIVENESS_V2: &str = "2.7_80x80_MiniFASNetV2.onnx";
/// MiniFASNetV1SE liveness (4.0× crop).
pub const LIVENESS_V1SE: &str = "4_0_0_80x80_MiniFASNetV1SE.onnx";
/// HyperLPR plate detector.
pub const PLATE_DETECTOR: &str = "y5fu_320x_sim.onnx";
/// PP-OCRv4 recogniser.
pub const PLATE_RECOGNIZER: &str = "ch_PP-OCRv4_rec_infer.onnx";
/// HyperLPR plate-colour classifier.
pub const PLATE_CLASSIFIER: &str = "litemodel_cls_96x_r1.onnx";

/// Every face model, in loading order.
pub const FACE_MODELS: [&str; 4] = [FACE_DETECTOR, FACE_EMBEDDER, LIVENESS_V2, LIVENESS_V1SE];
/// Every plate model.
pub const PLATE_MODELS: [&str; 3] = [PLATE_DETECTOR, PLATE_RECOGNIZER, PLATE_CLASSIFIER];

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {path} is missing. Fix: run `bash deploy/fetch-models.sh` (or `bash deploy/gw.sh test`), or set vision.models_dir")]
    Missing { path: PathBuf },
    #[error("model {path} is corrupt: SHA-256 {got}, expected {expected}. Fix: delete it and run `bash deploy/fetch-models.sh`")]
    Corrupt { path: PathBuf, expected: String, got: String },
    #[error("model {file} is not in models/MANIFEST.tsv, so it cannot be verified")]
    Unknown { file: String },
}

/// The pinned SHA-256 of a model file.
pub fn pinned_sha256(file: &str) -> Option<&'static str> {
    MANIFEST
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&file))
        .and_then(|f| f.get(1).copied())
}

/// Where the runtime library is: the configured path, else ORT_DYLIB_PATH,
/// else `<models_dir>/onnxruntime/…`.
pub fn library_path(models_dir: &Path, configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_owned();
    }
    match std::env::var_os("ORT_DYLIB_PATH") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => models_dir.join(ORT_LIBRARY),
    }
}

/// Hash-check a model file against its pin.
pub fn verify(path: &Path) -> Result<(), ModelError> {
    let file = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
    let expected = pinned_sha256(&file).ok_or_else(|| ModelError::Unknown { file: file.clone() })?;
    let bytes = std::fs::read(path).map_err(|_| ModelError::Missing { path: path.to_owned() })?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != expected {
        return Err(ModelError::Corrupt { path: path.to_owned(), expected: expected.to_string(), got });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_model_the_vision_process_loads_is_pinned() {
        for f in FACE_MODELS.iter().chain(PLATE_MODELS.iter()) {
            let pin = pinned_sha256(f).unwrap_or_else(|| panic!("{f} has no pin"));
            assert_eq!(pin.len(), 64, "{f}");
        }
    }

    #[test]
    fn a_file_that_is_not_its_pin_is_refused_as_corrupt() {
        let dir = std::env::temp_dir().join(format!("gw-models-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(FACE_DETECTOR);
        std::fs::write(&p, b"not a model").unwrap();
        assert!(matches!(verify(&p), Err(ModelError::Corrupt { .. })));
        assert!(matches!(verify(&dir.join("other.onnx")), Err(ModelError::Unknown { .. })));
        std::fs::remove_file(&p).unwrap();
        assert!(matches!(verify(&p), Err(ModelError::Missing { .. })));
    }
}
