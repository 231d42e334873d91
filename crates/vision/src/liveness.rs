//! Passive liveness with the MiniFASNet pair (Silent-Face-Anti-Spoofing): two
//! crops around the face (×2.7 and ×4.0), 80×80 BGR, softmax averaged;
//! class 1 is a real face. A face that fails it never opens a gate.

use super::{infer_err, Result};
use opencv::core::{Mat, Rect, Size};
use opencv::imgproc;
use opencv::prelude::*;
use ort::session::Session;
use ort::value::Tensor;

pub use vision_protocol::models::LIVENESS_V1SE as V1SE;
pub use vision_protocol::models::LIVENESS_V2 as V2;

pub struct Liveness {
    v2: Session,
    v1se: Session,
    pub threshold: f32,
}

/// The crop of Silent-Face's `CropImage._get_new_box`: the box scaled around
/// its centre, shrunk to fit, then shifted (not cut) to stay inside the image.
pub fn crop_box(img_w: i32, img_h: i32, bbox: [f32; 4], scale: f32) -> Rect {
    let (x, y, bw, bh) = (bbox[0], bbox[1], bbox[2].max(1.0), bbox[3].max(1.0));
    let (sw, sh) = (img_w as f32, img_h as f32);
    let scale = scale.min((sh - 1.0) / bh).min((sw - 1.0) / bw);
    let (nw, nh) = (bw * scale, bh * scale);
    let (cx, cy) = (x + bw / 2.0, y + bh / 2.0);
    let (mut l, mut t, mut r, mut b) = (cx - nw / 2.0, cy - nh / 2.0, cx + nw / 2.0, cy + nh / 2.0);
    if l < 0.0 {
        r -= l;
        l = 0.0;
    }
    if t < 0.0 {
        b -= t;
        t = 0.0;
    }
    if r > sw - 1.0 {
        l -= r - sw + 1.0;
        r = sw - 1.0;
    }
    if b > sh - 1.0 {
        t -= b - sh + 1.0;
        b = sh - 1.0;
    }
    let (l, t) = (l.max(0.0) as i32, t.max(0.0) as i32);
    Rect::new(l, t, ((r as i32) - l + 1).min(img_w - l).max(1), ((b as i32) - t + 1).min(img_h - t).max(1))
}

fn softmax(v: &[f32]) -> Vec<f32> {
    let m = v.iter().copied().fold(f32::MIN, f32::max);
    let e: Vec<f32> = v.iter().map(|x| (x - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.into_iter().map(|x| x / s).collect()
}

impl Liveness {
    pub fn new(v2: Session, v1se: Session) -> Self {
        Self { v2, v1se, threshold: 0.5 }
    }

    fn one(session: &mut Session, bgr: &Mat, bbox: [f32; 4], scale: f32) -> Result<Vec<f32>> {
        let r = crop_box(bgr.cols(), bgr.rows(), bbox, scale);
        let roi = Mat::roi(bgr, r)?;
        let mut crop = Mat::default();
        imgproc::resize(&roi, &mut crop, Size::new(80, 80), 0.0, 0.0, imgproc::INTER_LINEAR)?;
        let input = super::face::to_nchw(&crop, false, 1.0, 0.0, 1.0)?;
        let t = Tensor::from_array(([1usize, 3, 80, 80], input)).map_err(infer_err("MiniFASNet"))?;
        let out = session.run(ort::inputs!["input" => t]).map_err(infer_err("MiniFASNet"))?;
        let (_, v) = out[0].try_extract_tensor::<f32>().map_err(infer_err("MiniFASNet"))?;
        Ok(softmax(&v[..3]))
    }

    /// Probability that the face is real (0..1).
    pub fn score(&mut self, bgr: &Mat, bbox: [f32; 4]) -> Result<f32> {
        let a = Self::one(&mut self.v2, bgr, bbox, 2.7)?;
        let b = Self::one(&mut self.v1se, bgr, bbox, 4.0)?;
        Ok((a[1] + b[1]) / 2.0)
    }

    pub fn is_real(&mut self, bgr: &Mat, bbox: [f32; 4]) -> Result<(bool, f32)> {
        let s = self.score(bgr, bbox)?;
        Ok((s >= self.threshold, s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_is_shifted_to_stay_inside_the_image() {
        let r = crop_box(640, 480, [0.0, 0.0, 100.0, 100.0], 2.7);
        assert_eq!((r.x, r.y), (0, 0));
        assert!(r.width <= 640 && r.height <= 480 && r.width >= 260);
        let r = crop_box(640, 480, [500.0, 400.0, 100.0, 60.0], 4.0);
        assert!(r.x + r.width <= 640 && r.y + r.height <= 480, "{r:?}");
    }
}
