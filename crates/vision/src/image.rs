//! Loading images with a clear error for a missing, unreadable or corrupt file.

use super::{Result, VisionError};
use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use std::path::Path;

pub fn load(path: &Path) -> Result<Mat> {
    let bytes = std::fs::read(path).map_err(|e| VisionError::Image { what: path.display().to_string(), reason: e.to_string() })?;
    decode(&bytes, &path.display().to_string())
}

/// Decode JPEG/PNG bytes to a BGR image.
pub fn decode(bytes: &[u8], what: &str) -> Result<Mat> {
    // Dimensions from the header first: the decoder allocates what it claims.
    vision_protocol::image::check(bytes).map_err(|e| VisionError::Image { what: what.into(), reason: e.to_string() })?;
    let buf = Vector::<u8>::from_slice(bytes);
    let m = opencv::imgcodecs::imdecode(&buf, opencv::imgcodecs::IMREAD_COLOR)?;
    if m.empty() || m.cols() < 16 || m.rows() < 16 {
        return Err(VisionError::Image { what: what.into(), reason: "cannot be decoded: corrupt or not a JPEG/PNG image".into() });
    }
    Ok(m)
}
