//! The face pipeline: YuNet detection (2023mar, fixed 640×640 input), alignment
//! on the five landmarks to the ArcFace 112×112 template, SFace embedding, and
//! quality gates (size, blur, pose) so that a poor frame never decides anything.

use super::matcher::{normalize, DIM};
use super::{infer_err, Result};
use opencv::core::{Mat, Scalar, Size, BORDER_CONSTANT, CV_32F};
use opencv::imgproc;
use opencv::prelude::*;
use ort::session::Session;
use ort::value::Tensor;

pub use vision_protocol::models::FACE_DETECTOR as DETECTOR;
pub use vision_protocol::models::FACE_EMBEDDER as EMBEDDER;
const SIZE: i32 = 640;

#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// x, y, w, h in image pixels.
    pub bbox: [f32; 4],
    /// Right eye, left eye, nose tip, right and left mouth corners.
    pub landmarks: [[f32; 2]; 5],
    pub score: f32,
}

pub struct Detector {
    session: Session,
    pub score_threshold: f32,
    pub nms_threshold: f32,
}

/// Top-left letterbox into a SIZE×SIZE canvas; returns the scale used.
fn letterbox(bgr: &Mat, size: i32) -> Result<(Mat, f32)> {
    let scale = size as f32 / bgr.cols().max(bgr.rows()) as f32;
    let (w, h) = (((bgr.cols() as f32) * scale).round() as i32, ((bgr.rows() as f32) * scale).round() as i32);
    let mut resized = Mat::default();
    imgproc::resize(bgr, &mut resized, Size::new(w.max(1), h.max(1)), 0.0, 0.0, imgproc::INTER_LINEAR)?;
    let mut canvas = Mat::default();
    opencv::core::copy_make_border(&resized, &mut canvas, 0, size - h, 0, size - w, BORDER_CONSTANT, Scalar::all(0.0))?;
    Ok((canvas, scale))
}

/// HWC u8 → NCHW f32, optionally swapping B and R.
pub fn to_nchw(img: &Mat, swap_rb: bool, scale: f32, mean: f32, std: f32) -> Result<Vec<f32>> {
    let (w, h) = (img.cols() as usize, img.rows() as usize);
    let px = img.data_bytes()?;
    let plane = w * h;
    let mut out = vec![0f32; 3 * plane];
    for i in 0..plane {
        for c in 0..3 {
            let src = if swap_rb { 2 - c } else { c };
            out[c * plane + i] = (px[i * 3 + src] as f32 * scale - mean) / std;
        }
    }
    Ok(out)
}

/// Intersection over union of two x, y, w, h boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let (x1, y1) = (a[0].max(b[0]), a[1].max(b[1]));
    let (x2, y2) = ((a[0] + a[2]).min(b[0] + b[2]), (a[1] + a[3]).min(b[1] + b[3]));
    let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
    inter / (a[2] * a[3] + b[2] * b[3] - inter).max(1e-6)
}

/// Greedy non-maximum suppression, best score first.
pub fn nms<T>(mut items: Vec<T>, bbox: impl Fn(&T) -> [f32; 4], score: impl Fn(&T) -> f32, thr: f32) -> Vec<T> {
    items.sort_by(|a, b| score(b).total_cmp(&score(a)));
    let mut keep: Vec<T> = Vec::new();
    for it in items {
        if keep.iter().all(|k| iou(&bbox(k), &bbox(&it)) <= thr) {
            keep.push(it);
        }
    }
    keep
}

impl Detector {
    pub fn new(session: Session) -> Self {
        Self { session, score_threshold: 0.6, nms_threshold: 0.3 }
    }

    pub fn detect(&mut self, bgr: &Mat) -> Result<Vec<Detection>> {
        let (canvas, scale) = letterbox(bgr, SIZE)?;
        let input = to_nchw(&canvas, false, 1.0, 0.0, 1.0)?;
        let tensor = Tensor::from_array(([1usize, 3, SIZE as usize, SIZE as usize], input)).map_err(infer_err("YuNet"))?;
        let out = self.session.run(ort::inputs!["input" => tensor]).map_err(infer_err("YuNet"))?;
        let mut found = Vec::new();
        for stride in [8usize, 16, 32] {
            let get = |name: String| -> Result<Vec<f32>> {
                let v = out.get(&name).ok_or_else(|| super::VisionError::Inference { model: "YuNet", reason: format!("no output {name}") })?;
                Ok(v.try_extract_tensor::<f32>().map_err(infer_err("YuNet"))?.1.to_vec())
            };
            let (cls, obj, bbox, kps) =
                (get(format!("cls_{stride}"))?, get(format!("obj_{stride}"))?, get(format!("bbox_{stride}"))?, get(format!("kps_{stride}"))?);
            let cols = SIZE as usize / stride;
            for i in 0..cls.len() {
                let score = (cls[i].clamp(0.0, 1.0) * obj[i].clamp(0.0, 1.0)).sqrt();
                if score < self.score_threshold {
                    continue;
                }
                let (r, c) = ((i / cols) as f32, (i % cols) as f32);
                let s = stride as f32;
                let cx = (c + bbox[i * 4]) * s;
                let cy = (r + bbox[i * 4 + 1]) * s;
                let w = bbox[i * 4 + 2].exp() * s;
                let h = bbox[i * 4 + 3].exp() * s;
                let mut lm = [[0f32; 2]; 5];
                for (n, p) in lm.iter_mut().enumerate() {
                    *p = [(kps[i * 10 + 2 * n] + c) * s / scale, (kps[i * 10 + 2 * n + 1] + r) * s / scale];
                }
                found.push(Detection { bbox: [(cx - w / 2.0) / scale, (cy - h / 2.0) / scale, w / scale, h / scale], landmarks: lm, score });
            }
        }
        Ok(nms(found, |d| d.bbox, |d| d.score, self.nms_threshold))
    }
}

/// The ArcFace 112×112 landmark template SFace was trained on.
const TEMPLATE: [[f32; 2]; 5] = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]];

/// Least-squares similarity transform (rotation, uniform scale, translation)
/// mapping `src` onto `dst`, as a 2×3 affine matrix. In complex numbers:
/// y = a·x + b with a = Σ conj(x̃)ỹ / Σ|x̃|² over centred points.
pub fn similarity(src: &[[f32; 2]; 5], dst: &[[f32; 2]; 5]) -> [[f64; 3]; 2] {
    let mean = |p: &[[f32; 2]; 5]| {
        let (sx, sy) = p.iter().fold((0f64, 0f64), |(a, b), q| (a + q[0] as f64, b + q[1] as f64));
        (sx / 5.0, sy / 5.0)
    };
    let (mx, my) = mean(src);
    let (nx, ny) = mean(dst);
    let (mut re, mut im, mut norm) = (0f64, 0f64, 0f64);
    for (s, d) in src.iter().zip(dst) {
        let (xr, xi) = (s[0] as f64 - mx, s[1] as f64 - my);
        let (yr, yi) = (d[0] as f64 - nx, d[1] as f64 - ny);
        // conj(x)·y
        re += xr * yr + xi * yi;
        im += xr * yi - xi * yr;
        norm += xr * xr + xi * xi;
    }
    let (ar, ai) = (re / norm.max(1e-12), im / norm.max(1e-12));
    let bx = nx - (ar * mx - ai * my);
    let by = ny - (ai * mx + ar * my);
    [[ar, -ai, bx], [ai, ar, by]]
}

/// Warp the face to the 112×112 template.
pub fn align(bgr: &Mat, d: &Detection) -> Result<Mat> {
    let m = similarity(&d.landmarks, &TEMPLATE);
    let m = Mat::from_slice_2d(&m)?;
    let mut out = Mat::default();
    imgproc::warp_affine(bgr, &mut out, &m, Size::new(112, 112), imgproc::INTER_LINEAR, BORDER_CONSTANT, Scalar::all(0.0))?;
    Ok(out)
}

pub struct Embedder {
    session: Session,
}

impl Embedder {
    pub fn new(session: Session) -> Self {
        Self { session }
    }

    /// A unit-length 128-d embedding of an aligned 112×112 BGR face.
    pub fn embed(&mut self, aligned: &Mat) -> Result<Vec<f32>> {
        let input = to_nchw(aligned, true, 1.0, 0.0, 1.0)?;
        let tensor = Tensor::from_array(([1usize, 3, 112, 112], input)).map_err(infer_err("SFace"))?;
        let out = self.session.run(ort::inputs!["data" => tensor]).map_err(infer_err("SFace"))?;
        let (_, v) = out[0].try_extract_tensor::<f32>().map_err(infer_err("SFace"))?;
        let mut e = v[..DIM].to_vec();
        normalize(&mut e);
        Ok(e)
    }
}

/// Why a face is not good enough to decide on (or to enrol).
#[derive(Debug, Clone, PartialEq)]
pub enum Quality {
    Ok,
    TooSmall { px: f32, min: f32 },
    Blurred { sharpness: f64, min: f64 },
    Turned { yaw: f32, max: f32 },
    Tilted { roll_deg: f32, max: f32 },
}

impl std::fmt::Display for Quality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Quality::Ok => write!(f, "ok"),
            Quality::TooSmall { px, min } => write!(f, "face too small ({px:.0} px, need {min:.0})"),
            Quality::Blurred { sharpness, min } => write!(f, "face blurred (sharpness {sharpness:.0}, need {min:.0})"),
            Quality::Turned { yaw, max } => write!(f, "face turned away (yaw {yaw:.2}, max {max:.2})"),
            Quality::Tilted { roll_deg, max } => write!(f, "head tilted ({roll_deg:.0}°, max {max:.0}°)"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct QualityGates {
    pub min_face_px: f32,
    /// Variance of the Laplacian of the aligned grey face.
    pub min_sharpness: f64,
    /// |nose − eye midpoint| / eye distance.
    pub max_yaw: f32,
    pub max_roll_deg: f32,
}

impl Default for QualityGates {
    fn default() -> Self {
        Self { min_face_px: 60.0, min_sharpness: 40.0, max_yaw: 0.35, max_roll_deg: 25.0 }
    }
}

/// Judge one detection from its size, its landmark geometry and the sharpness
/// of its aligned crop.
pub fn quality(d: &Detection, aligned: &Mat, g: &QualityGates) -> Result<Quality> {
    let px = d.bbox[2].min(d.bbox[3]);
    if px < g.min_face_px {
        return Ok(Quality::TooSmall { px, min: g.min_face_px });
    }
    let [re, le, nose, _, _] = d.landmarks;
    let (dx, dy) = (le[0] - re[0], le[1] - re[1]);
    let eye_dist = (dx * dx + dy * dy).sqrt().max(1.0);
    let roll = dy.atan2(dx).to_degrees().abs();
    if roll > g.max_roll_deg {
        return Ok(Quality::Tilted { roll_deg: roll, max: g.max_roll_deg });
    }
    let mid = ((re[0] + le[0]) / 2.0, (re[1] + le[1]) / 2.0);
    // Distance of the nose from the eyes' perpendicular bisector, relative to eye distance.
    let yaw = ((nose[0] - mid.0) * dx + (nose[1] - mid.1) * dy).abs() / (eye_dist * eye_dist);
    if yaw > g.max_yaw {
        return Ok(Quality::Turned { yaw, max: g.max_yaw });
    }
    let mut grey = Mat::default();
    imgproc::cvt_color(aligned, &mut grey, imgproc::COLOR_BGR2GRAY, 0)?;
    let mut lap = Mat::default();
    imgproc::laplacian(&grey, &mut lap, CV_32F, 1, 1.0, 0.0, BORDER_CONSTANT)?;
    let (mut mean, mut std) = (Mat::default(), Mat::default());
    opencv::core::mean_std_dev(&lap, &mut mean, &mut std, &opencv::core::no_array())?;
    let sd = *std.at_2d::<f64>(0, 0)?;
    let sharpness = sd * sd;
    if sharpness < g.min_sharpness {
        return Ok(Quality::Blurred { sharpness, min: g.min_sharpness });
    }
    Ok(Quality::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_recovers_a_known_rotation_scale_and_shift() {
        let (a, b) = (0.8f64 * 30f64.to_radians().cos(), 0.8f64 * 30f64.to_radians().sin());
        let dst: [[f32; 2]; 5] = TEMPLATE.map(|p| [(a * p[0] as f64 - b * p[1] as f64 + 5.0) as f32, (b * p[0] as f64 + a * p[1] as f64 - 3.0) as f32]);
        let m = similarity(&TEMPLATE, &dst);
        assert!((m[0][0] - a).abs() < 1e-4 && (m[1][0] - b).abs() < 1e-4, "{m:?}");
        assert!((m[0][2] - 5.0).abs() < 1e-3 && (m[1][2] + 3.0).abs() < 1e-3, "{m:?}");
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let v = vec![([0.0, 0.0, 10.0, 10.0], 0.9), ([1.0, 1.0, 10.0, 10.0], 0.95), ([50.0, 50.0, 10.0, 10.0], 0.7)];
        let k = nms(v, |x| x.0, |x| x.1, 0.3);
        assert_eq!(k.iter().map(|x| x.1).collect::<Vec<_>>(), vec![0.95, 0.7]);
    }
}
