//! The whole face path for one frame or one enrolment photo: detect, judge
//! quality, align, embed, and check liveness.

use super::face::{self, Detection, Detector, Embedder, Quality, QualityGates};
use super::liveness::{self, Liveness};
use super::{runtime, Result};
use opencv::core::Mat;
use std::path::Path;
use std::time::{Duration, Instant};

pub struct FacePipeline {
    pub detector: Detector,
    pub embedder: Embedder,
    pub liveness: Liveness,
    pub gates: QualityGates,
}

/// Why an enrolment photo is refused ("exactly one usable face").
#[derive(Debug, Clone, PartialEq)]
pub enum Rejection {
    NoFace,
    MultipleFaces(usize),
    Poor(Quality),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::NoFace => write!(f, "no face found"),
            Rejection::MultipleFaces(n) => write!(f, "{n} faces found; the photo must show exactly one person"),
            Rejection::Poor(q) => write!(f, "{q}"),
        }
    }
}

/// One face in a frame, fully analysed.
#[derive(Debug, Clone)]
pub struct Face {
    pub detection: Detection,
    pub quality: Quality,
    /// Only for faces that pass the quality gates.
    pub embedding: Option<Vec<f32>>,
    pub liveness: Option<f32>,
}

/// Where the time went for one frame (for the benchmark).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    pub detect: Duration,
    pub align: Duration,
    pub embed: Duration,
    pub liveness: Duration,
}

impl FacePipeline {
    /// Verify and load the four face models.
    pub fn load(models_dir: &Path, ort_library: Option<&Path>, intra_threads: usize) -> Result<Self> {
        let env = runtime::init(&runtime::library_path(models_dir, ort_library))?;
        let s = |f| runtime::session(env, models_dir, f, intra_threads);
        Ok(Self {
            detector: Detector::new(s(face::DETECTOR)?),
            embedder: Embedder::new(s(face::EMBEDDER)?),
            liveness: Liveness::new(s(liveness::V2)?, s(liveness::V1SE)?),
            gates: QualityGates::default(),
        })
    }

    /// The embedding of the single usable face in an enrolment photo.
    pub fn enrol(&mut self, bgr: &Mat) -> Result<std::result::Result<Vec<f32>, Rejection>> {
        let dets = self.detector.detect(bgr)?;
        match dets.len() {
            0 => return Ok(Err(Rejection::NoFace)),
            1 => {}
            n => return Ok(Err(Rejection::MultipleFaces(n))),
        }
        let aligned = face::align(bgr, &dets[0])?;
        match face::quality(&dets[0], &aligned, &self.gates)? {
            Quality::Ok => Ok(Ok(self.embedder.embed(&aligned)?)),
            q => Ok(Err(Rejection::Poor(q))),
        }
    }

    /// Analyse every face in a frame. Liveness runs only when asked (gates ask
    /// for it on faces that could open something).
    pub fn analyse(&mut self, bgr: &Mat, with_liveness: bool, t: &mut Timings) -> Result<Vec<Face>> {
        let dets = self.detect(bgr, t)?;
        dets.into_iter().map(|d| self.examine(bgr, d, true, with_liveness, t)).collect()
    }

    /// Find the faces. The detector sees the frame down-scaled to 640 on its
    /// long side; alignment and liveness crop from the full-resolution frame.
    pub fn detect(&mut self, bgr: &Mat, t: &mut Timings) -> Result<Vec<Detection>> {
        let t0 = Instant::now();
        let dets = self.detector.detect(bgr)?;
        t.detect += t0.elapsed();
        Ok(dets)
    }

    /// Judge one detected face, running the embedder and the liveness pair
    /// only when asked and only on a face that passes the quality gates (a
    /// tracker asks once per track, not once per frame).
    pub fn examine(&mut self, bgr: &Mat, d: Detection, embed: bool, live: bool, t: &mut Timings) -> Result<Face> {
        let t1 = Instant::now();
        let aligned = face::align(bgr, &d)?;
        let q = face::quality(&d, &aligned, &self.gates)?;
        t.align += t1.elapsed();
        let (mut embedding, mut liveness) = (None, None);
        if q == Quality::Ok {
            if embed {
                let t2 = Instant::now();
                embedding = Some(self.embedder.embed(&aligned)?);
                t.embed += t2.elapsed();
            }
            if live {
                let t3 = Instant::now();
                liveness = Some(self.liveness.score(bgr, d.bbox)?);
                t.liveness += t3.elapsed();
            }
        }
        Ok(Face { detection: d, quality: q, embedding, liveness })
    }
}
