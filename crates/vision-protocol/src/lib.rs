//! The line protocol between the daemon and its `gatewarden-vision` child.
//! OpenCV and ONNX Runtime live only in the child: a crash in native code
//! cannot take the alerting daemon down, and the daemon does not map the
//! ~240 shared libraries OpenCV pulls in (55 MB of RSS). One JSON object per line.

pub mod image;
pub mod models;

/// A visitor pass in a QR code: this prefix, then the pass token.
pub const QR_PREFIX: &str = "GW1:";

use serde::{Deserialize, Serialize};

/// One face in one frame, after recognition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceOut {
    pub person: Option<String>,
    pub score: f32,
    /// The median of the track's per-frame liveness scores…
    pub liveness: f32,
    /// …over this many frames.
    #[serde(default = "one")]
    pub liveness_frames: u32,
    /// The score's lead over the best other enrolled person.
    #[serde(default)]
    pub margin: f32,
    /// The tracker's id for this face: one per person walking up.
    #[serde(default)]
    pub track: u64,
    /// How long ago (monotonic ms, at sending) the track's first frame was
    /// captured: where the face → barrier latency starts.
    #[serde(default)]
    pub track_age_ms: u64,
}

fn one() -> u32 {
    1
}

fn one_f() -> f32 {
    1.0
}

/// One plate in one frame that passed the GA 36 shape check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateOut {
    pub text: String,
    pub confidence: f32,
    /// The province character's own probability.
    #[serde(default = "one_f")]
    pub province_confidence: f32,
    pub colour: domain::gate::plate::Colour,
    pub double_layer: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromVision {
    /// Models loaded, gallery received: frames follow.
    Ready {
        templates: usize,
    },
    /// Faces largest first, QR payloads read, and a JPEG when the nearest face is unknown.
    Frame {
        gate: String,
        faces: Vec<FaceOut>,
        qr: Vec<String>,
        snapshot: Option<String>,
        #[serde(default)]
        plates: Vec<PlateOut>,
    },
    Camera {
        gate: String,
        frames: u64,
        connected: bool,
        reconnects: u64,
        finished: bool,
        silent_ms: Option<u64>,
        /// Frames the networks ran on.
        #[serde(default)]
        analysed: u64,
        /// Frames skipped by motion gating: nothing moved and nothing was there.
        #[serde(default)]
        still: u64,
        /// Face tracks opened, and embeddings computed (about one per track).
        #[serde(default)]
        tracks: u64,
        #[serde(default)]
        embeddings: u64,
        /// Plate OCR runs (until each plate is confirmed, then one a second).
        #[serde(default)]
        plate_reads: u64,
    },
    Enrolled {
        id: u64,
        result: EnrolResult,
    },
    /// The answer to `ToVision::Ping`, from the main loop: it is not hung.
    Pong {
        id: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolResult {
    Ok(Vec<f32>),
    /// The photo is refused ("no face found", "2 faces found", …).
    Rejected(String),
    /// The photo could not be read at all.
    Error(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToVision {
    /// Base64 JPEG/PNG.
    Enrol {
        id: u64,
        image: String,
    },
    GalleryAdd {
        person: String,
        embedding: Vec<f32>,
    },
    GalleryRemove {
        person: String,
    },
    /// Sent after the initial gallery: start the cameras.
    Start,
    /// A heartbeat: answered with `FromVision::Pong` between frames. A process
    /// that stops answering (hung in native code, or stopped) is restarted.
    Ping {
        id: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_single_json_lines() {
        let m = FromVision::Frame {
            gate: "north".into(),
            faces: vec![FaceOut { person: Some("R1".into()), score: 0.7, liveness: 0.99, liveness_frames: 2, margin: 0.3, track: 4, track_age_ms: 180 }],
            qr: vec![],
            snapshot: None,
            plates: vec![],
        };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<FromVision>(&line).unwrap(), m);
        let e = ToVision::Enrol { id: 3, image: "AAAA".into() };
        assert_eq!(serde_json::from_str::<ToVision>(&serde_json::to_string(&e).unwrap()).unwrap(), e);
    }
}
