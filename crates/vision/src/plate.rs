//! Chinese licence plates: HyperLPR's y5fu_320x detector (box, 4 corners,
//! single or double layer), a perspective warp from the corners, PP-OCRv4
//! recognition with CTC decoding restricted to the plate alphabet (both rows
//! of a double-layer plate), and HyperLPR's colour classifier.

use super::face::{nms, to_nchw};
use super::{infer_err, runtime, Result, VisionError};
use domain::gate::plate::{PROVINCES, SUFFIXES};
use opencv::core::{Mat, Point2f, Scalar, Size, Vector, BORDER_CONSTANT};
use opencv::imgproc;
use opencv::prelude::*;
use ort::session::Session;
use ort::value::Tensor;
use std::path::Path;

pub use vision_protocol::models::PLATE_CLASSIFIER as CLASSIFIER;
pub use vision_protocol::models::PLATE_DETECTOR as DETECTOR;
pub use vision_protocol::models::PLATE_RECOGNIZER as RECOGNIZER;
const DET: i32 = 320;

pub use domain::gate::plate::Colour;

#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub score: f32,
    pub double_layer: bool,
    pub bbox: [f32; 4],
    /// TL, TR, BR, BL in image pixels.
    pub corners: [[f32; 2]; 4],
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub text: String,
    /// Mean per-character probability.
    pub confidence: f32,
    pub colour: Colour,
    pub double_layer: bool,
    pub detection_score: f32,
}

pub struct PlateReader {
    det: Session,
    rec: Session,
    cls: Session,
    /// Recogniser class index → character; index 0 is the CTC blank.
    labels: Vec<String>,
    /// Class indices allowed on a plate (blank included).
    allowed: Vec<usize>,
    pub score_threshold: f32,
}

impl PlateReader {
    pub fn load(models_dir: &Path, ort_library: Option<&Path>, intra_threads: usize) -> Result<Self> {
        let env = runtime::init(&runtime::library_path(models_dir, ort_library))?;
        let s = |f| runtime::session(env, models_dir, f, intra_threads);
        let rec = s(RECOGNIZER)?;
        let chars = rec
            .metadata()
            .ok()
            .and_then(|m| m.custom("character"))
            .ok_or_else(|| VisionError::Inference { model: "PP-OCRv4", reason: "no `character` list in the model's metadata".into() })?;
        let mut labels = vec![String::new()];
        labels.extend(chars.split('\n').map(str::to_string));
        labels.push(" ".into());
        let ok = |c: &str| {
            let mut it = c.chars();
            match (it.next(), it.next()) {
                (Some(ch), None) => {
                    PROVINCES.contains(ch) || SUFFIXES.contains(ch) || ch.is_ascii_digit() || (ch.is_ascii_uppercase() && ch != 'I' && ch != 'O')
                }
                _ => false,
            }
        };
        let allowed = (0..labels.len()).filter(|&i| i == 0 || ok(&labels[i])).collect();
        Ok(Self { det: s(DETECTOR)?, rec, cls: s(CLASSIFIER)?, labels, allowed, score_threshold: 0.5 })
    }

    pub fn detect(&mut self, bgr: &Mat) -> Result<Vec<Detection>> {
        let (w, h) = (bgr.cols() as f32, bgr.rows() as f32);
        let s = (DET as f32 / h).min(DET as f32 / w);
        let (nw, nh) = ((w * s).round() as i32, (h * s).round() as i32);
        let (left, top) = ((DET - nw) / 2, (DET - nh) / 2);
        let mut resized = Mat::default();
        imgproc::resize(bgr, &mut resized, Size::new(nw.max(1), nh.max(1)), 0.0, 0.0, imgproc::INTER_LINEAR)?;
        let mut canvas = Mat::default();
        opencv::core::copy_make_border(&resized, &mut canvas, top, DET - nh - top, left, DET - nw - left, BORDER_CONSTANT, Scalar::all(0.0))?;
        let input = to_nchw(&canvas, true, 1.0 / 255.0, 0.0, 1.0)?;
        let t = Tensor::from_array(([1usize, 3, DET as usize, DET as usize], input)).map_err(infer_err("plate detector"))?;
        let out = self.det.run(ort::inputs!["input" => t]).map_err(infer_err("plate detector"))?;
        let (_, v) = out[0].try_extract_tensor::<f32>().map_err(infer_err("plate detector"))?;
        let (lx, ty) = (left as f32, top as f32);
        let mut found = Vec::new();
        for row in v.chunks_exact(15) {
            let (single, double) = (row[4] * row[13], row[4] * row[14]);
            let (score, double_layer) = if double > single { (double, true) } else { (single, false) };
            if score < self.score_threshold {
                continue;
            }
            let (cx, cy, bw, bh) = (row[0], row[1], row[2], row[3]);
            let mut corners = [[0f32; 2]; 4];
            for (i, c) in corners.iter_mut().enumerate() {
                *c = [(row[5 + 2 * i] - lx) / s, (row[6 + 2 * i] - ty) / s];
            }
            found.push(Detection { score, double_layer, bbox: [(cx - bw / 2.0 - lx) / s, (cy - bh / 2.0 - ty) / s, bw / s, bh / s], corners });
        }
        Ok(nms(found, |d| d.bbox, |d| d.score, 0.5))
    }

    /// The plate, rectified from its four corners.
    pub fn warp(bgr: &Mat, c: &[[f32; 2]; 4]) -> Result<Mat> {
        let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
        let w = d(c[0], c[1]).max(d(c[3], c[2])).max(8.0);
        let h = d(c[0], c[3]).max(d(c[1], c[2])).max(4.0);
        let src: Vector<Point2f> = c.iter().map(|p| Point2f::new(p[0], p[1])).collect();
        let dst: Vector<Point2f> = [[0.0, 0.0], [w - 1.0, 0.0], [w - 1.0, h - 1.0], [0.0, h - 1.0]].iter().map(|p| Point2f::new(p[0], p[1])).collect();
        let m = imgproc::get_perspective_transform(&src, &dst, opencv::core::DECOMP_LU)?;
        let mut out = Mat::default();
        imgproc::warp_perspective(bgr, &mut out, &m, Size::new(w as i32, h as i32), imgproc::INTER_LINEAR, BORDER_CONSTANT, Scalar::all(0.0))?;
        Ok(out)
    }

    /// OCR one row of characters, keeping only plate characters (CTC greedy).
    pub fn recognise(&mut self, crop: &Mat) -> Result<(String, f32)> {
        let (w, h) = (crop.cols().max(1), crop.rows().max(1));
        let nw = ((48.0 * w as f32 / h as f32).ceil() as i32).max(1);
        let width = nw.max(320);
        let mut resized = Mat::default();
        imgproc::resize(crop, &mut resized, Size::new(nw, 48), 0.0, 0.0, imgproc::INTER_LINEAR)?;
        let px = to_nchw(&resized, false, 1.0 / 255.0, 0.5, 0.5)?;
        // Right-pad with zeros to `width`.
        let plane = (48 * nw) as usize;
        let mut input = vec![0f32; 3 * 48 * width as usize];
        for c in 0..3 {
            for y in 0..48usize {
                let src = &px[c * plane + y * nw as usize..c * plane + (y + 1) * nw as usize];
                let at = c * 48 * width as usize + y * width as usize;
                input[at..at + nw as usize].copy_from_slice(src);
            }
        }
        let t = Tensor::from_array(([1usize, 3, 48, width as usize], input)).map_err(infer_err("PP-OCRv4"))?;
        let out = self.rec.run(ort::inputs!["x" => t]).map_err(infer_err("PP-OCRv4"))?;
        let (shape, v) = out[0].try_extract_tensor::<f32>().map_err(infer_err("PP-OCRv4"))?;
        let classes = shape[2] as usize;
        let (mut text, mut confs, mut prev) = (String::new(), Vec::new(), 0usize);
        for step in v.chunks_exact(classes) {
            let (best, p) = self.allowed.iter().map(|&i| (i, step[i])).fold((0, f32::MIN), |a, b| if b.1 > a.1 { b } else { a });
            if best != prev && best != 0 {
                text.push_str(&self.labels[best]);
                confs.push(p);
            }
            prev = best;
        }
        let conf = if confs.is_empty() { 0.0 } else { confs.iter().sum::<f32>() / confs.len() as f32 };
        Ok((text, conf))
    }

    pub fn colour(&mut self, crop: &Mat) -> Result<Colour> {
        let mut r = Mat::default();
        imgproc::resize(crop, &mut r, Size::new(96, 96), 0.0, 0.0, imgproc::INTER_LINEAR)?;
        let input = to_nchw(&r, false, 1.0 / 255.0, 0.0, 1.0)?;
        let t = Tensor::from_array(([1usize, 3, 96, 96], input)).map_err(infer_err("plate colour"))?;
        let out = self.cls.run(ort::inputs!["data" => t]).map_err(infer_err("plate colour"))?;
        let (_, v) = out[0].try_extract_tensor::<f32>().map_err(infer_err("plate colour"))?;
        let i = (0..3).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0);
        Ok([Colour::Blue, Colour::Green, Colour::Yellow][i])
    }

    /// Every plate in a frame, read. A small image with no detection is taken
    /// for a pre-cropped plate and padded so the detector sees it in context.
    pub fn read(&mut self, bgr: &Mat) -> Result<Vec<Reading>> {
        let mut padded = None;
        let mut dets = self.detect(bgr)?;
        if dets.is_empty() && bgr.cols() < 400 {
            let mut p = Mat::default();
            let (v, h) = (bgr.rows(), bgr.cols() / 2);
            opencv::core::copy_make_border(bgr, &mut p, v, v, h, h, BORDER_CONSTANT, Scalar::all(0.0))?;
            dets = self.detect(&p)?;
            padded = Some(p);
        }
        let img = padded.as_ref().unwrap_or(bgr);
        let mut out = Vec::new();
        for d in dets {
            let crop = Self::warp(img, &d.corners)?;
            let (text, confidence) = if d.double_layer {
                // Double-layer (yellow truck) plates: the top 40 % is the province row.
                let split = (crop.rows() as f32 * 0.4) as i32;
                let top = Mat::roi(&crop, opencv::core::Rect::new(0, 0, crop.cols(), split.max(1)))?.try_clone()?;
                let bottom = Mat::roi(&crop, opencv::core::Rect::new(0, split, crop.cols(), (crop.rows() - split).max(1)))?.try_clone()?;
                let (t1, c1) = self.recognise(&top)?;
                let (t2, c2) = self.recognise(&bottom)?;
                (t1 + &t2, (c1 + c2) / 2.0)
            } else {
                self.recognise(&crop)?
            };
            let colour = self.colour(&crop)?;
            out.push(Reading { text, confidence, colour, double_layer: d.double_layer, detection_score: d.score });
        }
        Ok(out)
    }
}
