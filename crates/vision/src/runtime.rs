//! ONNX Runtime, loaded from the shared library fetched from PyPI's
//! onnxruntime wheel, and models verified against the SHA-256 pins of
//! models/MANIFEST.tsv before they are loaded.

use super::{Result, VisionError};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use std::path::Path;
use std::sync::OnceLock;

pub use vision_protocol::models::{library_path, pinned_sha256, ORT_LIBRARY};

static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> = OnceLock::new();

/// Load the runtime once per process. Later calls return the first outcome.
pub fn init(library: &Path) -> Result<&'static ort::environment::Environment> {
    let r = ENV.get_or_init(|| {
        if !library.exists() {
            return Err(format!("{} does not exist", library.display()));
        }
        let b = ort::init_from(library).map_err(|e| e.to_string())?;
        let env = b.with_name("gatewarden").build().map_err(|e| e.to_string())?;
        if let Err(e) = share_one_arena(&env) {
            tracing::warn!(error = %e, "ONNX Runtime: no shared CPU arena; each model keeps its own");
        }
        Ok(env)
    });
    r.as_ref().map_err(|reason| VisionError::Runtime { path: library.to_owned(), reason: reason.clone() })
}

/// One CPU arena for every session of the process. The vision loop runs
/// one model at a time, so the activations of the seven models can share
/// one arena sized to the largest, instead of each keeping its own peak.
fn share_one_arena(env: &ort::environment::Environment) -> std::result::Result<(), String> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    use ort::AsPointer;
    let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Arena, MemoryType::Default).map_err(|e| e.to_string())?;
    let api = ort::api();
    // SAFETY: both pointers come from live ort objects; a null arena config
    // means ONNX Runtime's defaults; the returned status is read and released here.
    unsafe {
        let status = (api.CreateAndRegisterAllocator)(env.ptr().cast_mut(), info.ptr(), std::ptr::null());
        if status.0.is_null() {
            return Ok(());
        }
        let msg = std::ffi::CStr::from_ptr((api.GetErrorMessage)(status.0)).to_string_lossy().into_owned();
        (api.ReleaseStatus)(status.0);
        Err(msg)
    }
}

/// Hash-check a model file against its pin.
pub fn verify(path: &Path) -> Result<()> {
    vision_protocol::models::verify(path).map_err(VisionError::from)
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
    let b = b.with_intra_op_spinning(false).map_err(|e| err(e.into()))?;
    // Memory patterns pre-plan each input shape's buffers and keep them:
    // 25 MB of peak RSS at 8 cameras for no measurable speed (BENCHMARKS.md).
    let b = b.with_memory_pattern(false).map_err(|e| err(e.into()))?;
    // The process's shared arena (`share_one_arena`), when it was registered.
    let mut b = b.with_env_allocators().map_err(|e| err(e.into()))?;
    b.commit_from_file(&path).map_err(err)
}
