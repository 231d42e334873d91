//! Chinese licence plates: HyperLPR's y5fu_320x detector (box, 4 corners,
//! single or double layer), run again around a plate that is small in the
//! frame for exact corners; a perspective warp from the corners; PP-OCRv4
//! recognition decoded by a CTC beam search that only keeps GA 36 plate
//! shapes (8 characters on green new-energy plates, 7 on the others; a
//! double-layer plate's rows side by side, as HyperLPR reads them); the
//! province character's own confidence; and HyperLPR's colour classifier.

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
/// Plates narrower than this at the detector's scale get their corners refined.
const REFINE_BELOW: f32 = 40.0;

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
    /// The province character's own probability: the OCR's most common
    /// slip, so a low one asks for more frames instead of a guess.
    pub province_confidence: f32,
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

    /// OCR one row of characters, decoded by a beam search that only keeps
    /// prefixes of a GA 36 plate shape (`row` says which part of a plate the
    /// crop holds). Returns the text, the mean character probability and each
    /// character's own probability.
    pub fn recognise(&mut self, crop: &Mat, row: Row) -> Result<(String, f32, Vec<f32>)> {
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
        // Per step: the blank, and the likeliest plate characters.
        let steps: Vec<Vec<(char, f32)>> = v
            .chunks_exact(classes)
            .map(|step| {
                let mut top: Vec<(char, f32)> =
                    self.allowed.iter().filter(|&&i| i != 0).filter_map(|&i| self.labels[i].chars().next().map(|c| (c, step[i]))).collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                top.truncate(BEAM_CHARS);
                top.push((BLANK, step[0]));
                top
            })
            .collect();
        let (text, confs) = beam_decode(&steps, row, BEAM_WIDTH);
        Ok((text, mean(&confs), confs))
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
        dets.into_iter().map(|d| self.read_detection(img, d)).collect()
    }

    /// Read one detected plate: corners refined if small, warp, colour, OCR.
    pub fn read_detection(&mut self, img: &Mat, d: Detection) -> Result<Reading> {
        let d = self.refine(img, d)?;
        let crop = Self::warp(img, &d.corners)?;
        // Green plates are new-energy plates, with 8 characters; the others have 7.
        let colour = self.colour(&crop)?;
        let row = if colour == Colour::Green { Row::NewEnergy } else { Row::Classic };
        let (text, confidence, confs) = if d.double_layer {
            self.read_double(&crop)?
        } else {
            match self.recognise(&crop, row)? {
                r if complete(row, &r.0) => r,
                // The colour may be wrong: any plate shape, then.
                _ => self.recognise(&crop, Row::Whole)?,
            }
        };
        let province_confidence = confs.first().copied().unwrap_or(0.0);
        Ok(Reading { text, confidence, province_confidence, colour, double_layer: d.double_layer, detection_score: d.score })
    }

    /// The detector sees the frame at 320 on its long side, so a plate that
    /// is small in a large frame gets corners a few source pixels off, enough
    /// to cut a character. Detect again on the plate's surroundings, where
    /// the plate fills the detector's input, and keep those corners.
    fn refine(&mut self, img: &Mat, d: Detection) -> Result<Detection> {
        let (iw, ih) = (img.cols() as f32, img.rows() as f32);
        let [x, y, w, h] = d.bbox;
        let side = (w.max(h) * 2.0).max(64.0);
        let (cx, cy) = (x + w / 2.0, y + h / 2.0);
        let x0 = (cx - side / 2.0).clamp(0.0, (iw - 1.0).max(0.0));
        let y0 = (cy - side / 2.0).clamp(0.0, (ih - 1.0).max(0.0));
        let (cw, ch) = ((iw - x0).min(side), (ih - y0).min(side));
        // Refine only a plate the detector saw under REFINE_BELOW pixels wide
        // (at its 320 input): larger ones already have exact corners, and the
        // second detection costs as much as the first.
        if w * DET as f32 / iw.max(ih) >= REFINE_BELOW || cw < 16.0 || ch < 16.0 {
            return Ok(d);
        }
        let roi = Mat::roi(img, opencv::core::Rect::new(x0 as i32, y0 as i32, cw as i32, ch as i32))?.try_clone()?;
        let again = self.detect(&roi)?;
        let centre = |b: &[f32; 4]| (b[0] + b[2] / 2.0 + x0 - cx).powi(2) + (b[1] + b[3] / 2.0 + y0 - cy).powi(2);
        let Some(best) = again.into_iter().filter(|a| a.double_layer == d.double_layer).min_by(|a, b| centre(&a.bbox).total_cmp(&centre(&b.bbox))) else {
            return Ok(d);
        };
        if centre(&best.bbox).sqrt() > w.max(h) / 2.0 {
            return Ok(d); // not the same plate
        }
        Ok(Detection { bbox: [best.bbox[0] + x0, best.bbox[1] + y0, best.bbox[2], best.bbox[3]], corners: best.corners.map(|c| [c[0] + x0, c[1] + y0]), ..d })
    }

    /// A double-layer plate (yellow trucks and buses): province and authority
    /// letter on a short top row, the serial below. As HyperLPR does, the top
    /// 5/12 and the bottom 2/3 (they overlap) are put side by side and read
    /// as one line; if that does not give a plate, each row is read alone.
    fn read_double(&mut self, crop: &Mat) -> Result<(String, f32, Vec<f32>)> {
        let (w, h) = (crop.cols(), crop.rows());
        let upper = Mat::roi(crop, opencv::core::Rect::new(0, 0, w, (h * 5 / 12).max(1)))?.try_clone()?;
        let lower = Mat::roi(crop, opencv::core::Rect::new(0, h / 3, w, (h - h / 3).max(1)))?.try_clone()?;
        let mut up = Mat::default();
        imgproc::resize(&upper, &mut up, lower.size()?, 0.0, 0.0, imgproc::INTER_LINEAR)?;
        let mut line = Mat::default();
        opencv::core::hconcat2(&up, &lower, &mut line)?;
        let merged = self.recognise(&line, Row::Whole)?;
        if domain::gate::plate::validate(&merged.0).is_ok() {
            return Ok(merged);
        }
        let split = (h as f32 * 0.4) as i32;
        let top = Mat::roi(crop, opencv::core::Rect::new(0, 0, w, split.max(1)))?.try_clone()?;
        let bottom = Mat::roi(crop, opencv::core::Rect::new(0, split, w, (h - split).max(1)))?.try_clone()?;
        let (t1, _, mut c1) = self.recognise(&top, Row::Top)?;
        let (t2, _, c2) = self.recognise(&bottom, Row::Bottom)?;
        c1.extend(c2);
        Ok((t1 + &t2, mean(&c1), c1))
    }
}

/// Which part of a plate a crop holds, and so which shape its reading must fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Row {
    /// A whole plate on one line: province, letter, serial (GA 36).
    Whole,
    /// A whole plate of 7 characters (blue, yellow, white, black plates).
    Classic,
    /// A whole new-energy plate: 8 characters (green plates).
    NewEnergy,
    /// The top row of a double-layer plate: province and letter.
    Top,
    /// The bottom row: the serial.
    Bottom,
}

/// The mean character probability (0 for no characters).
fn mean(confs: &[f32]) -> f32 {
    if confs.is_empty() {
        0.0
    } else {
        confs.iter().sum::<f32>() / confs.len() as f32
    }
}

const BLANK: char = '\0';
const BEAM_WIDTH: usize = 12;
/// Plate characters considered per step (besides the blank).
const BEAM_CHARS: usize = 6;

fn serial_char(c: char) -> bool {
    (c.is_ascii_uppercase() && c != 'I' && c != 'O') || c.is_ascii_digit()
}

/// May `c` come at position `i` of a `row` reading?
fn allowed_at(row: Row, i: usize, c: char) -> bool {
    let letter = c.is_ascii_uppercase() && c != 'I' && c != 'O';
    match (row, i) {
        (Row::Whole | Row::Classic | Row::NewEnergy | Row::Top, 0) => PROVINCES.contains(c),
        (Row::Whole | Row::Classic | Row::NewEnergy | Row::Top, 1) => letter,
        (Row::Top, _) => false,
        // Serial: 5 characters (the last may be 学警港澳挂使领), or 6 (new energy).
        (Row::Whole | Row::Classic, 6) | (Row::Bottom, 4) => serial_char(c) || SUFFIXES.contains(c),
        (Row::Whole | Row::NewEnergy, 2..=7) | (Row::Classic, 2..=5) | (Row::Bottom, 0..=5) => serial_char(c),
        _ => false,
    }
}

/// Is `text` a complete reading of a `row`?
fn complete(row: Row, text: &str) -> bool {
    match row {
        Row::Whole => domain::gate::plate::validate(text).is_ok(),
        Row::Classic => text.chars().count() == 7 && domain::gate::plate::validate(text).is_ok(),
        Row::NewEnergy => text.chars().count() == 8 && domain::gate::plate::validate(text).is_ok(),
        Row::Top => text.chars().count() == 2,
        Row::Bottom => domain::gate::plate::validate(&format!("京A{text}")).is_ok(),
    }
}

/// CTC prefix beam search over per-step candidates (`BLANK` is the blank),
/// extending a prefix only with a character the plate shape allows there.
/// Returns the likeliest complete reading (or, if none is complete, the
/// likeliest prefix, which the shape check downstream then refuses) and the
/// probability of each of its characters where it was emitted.
pub fn beam_decode(steps: &[Vec<(char, f32)>], row: Row, width: usize) -> (String, Vec<f32>) {
    #[derive(Clone)]
    struct Beam {
        text: Vec<char>,
        /// Probability of the prefix ending in a blank, and in its last character.
        pb: f64,
        pnb: f64,
        confs: Vec<f32>,
    }
    let mut beams = vec![Beam { text: vec![], pb: 1.0, pnb: 0.0, confs: vec![] }];
    for step in steps {
        let blank = step.iter().find(|(c, _)| *c == BLANK).map_or(0.0, |x| x.1 as f64);
        let mut next: Vec<Beam> = Vec::with_capacity(beams.len() * (step.len() + 1));
        let mut add = |text: Vec<char>, pb: f64, pnb: f64, confs: &[f32]| match next.iter_mut().find(|b| b.text == text) {
            Some(b) => {
                b.pb += pb;
                b.pnb += pnb;
                for (x, y) in b.confs.iter_mut().zip(confs) {
                    *x = x.max(*y);
                }
            }
            None => next.push(Beam { text, pb, pnb, confs: confs.to_vec() }),
        };
        for b in &beams {
            // A blank, or the last character again: the same prefix.
            add(b.text.clone(), (b.pb + b.pnb) * blank, 0.0, &b.confs);
            if let Some(&last) = b.text.last() {
                let p = step.iter().find(|(c, _)| *c == last).map_or(0.0, |x| x.1 as f64);
                let mut confs = b.confs.clone();
                if let Some(c) = confs.last_mut() {
                    *c = c.max(p as f32);
                }
                add(b.text.clone(), 0.0, b.pnb * p, &confs);
            }
            for &(c, p) in step.iter().filter(|(c, _)| *c != BLANK) {
                if !allowed_at(row, b.text.len(), c) {
                    continue;
                }
                let mut text = b.text.clone();
                text.push(c);
                let mut confs = b.confs.clone();
                confs.push(p);
                // A repeated character needs a blank between its two emissions.
                let from = if b.text.last() == Some(&c) { b.pb } else { b.pb + b.pnb };
                add(text, 0.0, from * p as f64, &confs);
            }
        }
        next.sort_by(|a, b| (b.pb + b.pnb).total_cmp(&(a.pb + a.pnb)));
        next.truncate(width);
        beams = next;
    }
    let text = |b: &Beam| b.text.iter().collect::<String>();
    let best = beams.iter().find(|b| complete(row, &text(b))).or_else(|| beams.first());
    best.map(|b| (text(b), b.confs.clone())).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Steps that spell `s` with one blank between characters, each
    /// character at `p`, except where `alt` puts a rival character `a` at
    /// `q` beside the true one at `pc`.
    fn spell(s: &str, p: f32, alt: &[(usize, char, f32, f32)]) -> Vec<Vec<(char, f32)>> {
        let mut steps = Vec::new();
        for (i, c) in s.chars().enumerate() {
            let step = match alt.iter().find(|x| x.0 == i) {
                Some(&(_, a, q, pc)) => vec![(a, q), (c, pc), (BLANK, (1.0 - pc - q).max(0.0))],
                None => vec![(c, p), (BLANK, 1.0 - p)],
            };
            steps.push(step);
            steps.push(vec![(BLANK, 0.98), (c, 0.02)]);
        }
        steps
    }

    #[test]
    fn the_beam_keeps_to_plate_shapes_where_greedy_would_not() {
        let (t, c) = beam_decode(&spell("川A35D98", 0.9, &[]), Row::Whole, 12);
        assert_eq!(t, "川A35D98");
        assert!((c[0] - 0.9).abs() < 1e-6 && c.len() == 7);
        // The likeliest character at position 1 is a digit, which a plate cannot have there.
        let (t, _) = beam_decode(&spell("川A35D98", 0.9, &[(1, '4', 0.55, 0.4)]), Row::Whole, 12);
        assert_eq!(t, "川A35D98");
        // Repeated characters need their blank, and are kept.
        assert_eq!(beam_decode(&spell("京AN7755", 0.9, &[]), Row::Whole, 12).0, "京AN7755");
        // A new-energy plate's 8 characters, and the suffix plates.
        assert_eq!(beam_decode(&spell("苏ED51712", 0.9, &[]), Row::Whole, 12).0, "苏ED51712");
        assert_eq!(beam_decode(&spell("粤B1234学", 0.9, &[]), Row::Whole, 12).0, "粤B1234学");
        // A green plate has 8 characters: a faint one is kept rather than dropped.
        let (t, _) = beam_decode(&spell("苏ED51712", 0.9, &[(5, BLANK, 0.65, 0.3)]), Row::NewEnergy, 12);
        assert_eq!(t, "苏ED51712");
        // Rows of a double-layer plate.
        assert_eq!(beam_decode(&spell("京A", 0.9, &[]), Row::Top, 12).0, "京A");
        assert_eq!(beam_decode(&spell("N7065", 0.9, &[]), Row::Bottom, 12).0, "N7065");
    }

    #[test]
    fn a_doubtful_province_carries_its_own_low_confidence() {
        let (t, c) = beam_decode(&spell("川A35D98", 0.95, &[(0, '渝', 0.4, 0.55)]), Row::Whole, 12);
        assert_eq!(t, "川A35D98");
        assert!(c[0] < 0.6, "the province's own probability: {c:?}");
        assert!(c[1..].iter().all(|p| *p > 0.9));
    }
}
