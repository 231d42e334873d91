//! The `[[gates]]` sections: each gate, its camera and its actuator.

use crate::Dur;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GateDirection {
    In,
    Out,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    pub name: String,
    /// What staff read in messages ("北门"); default: `name`.
    #[serde(default)]
    pub display_name: Option<String>,
    /// rtsp://…, http://…/cam.mjpg, a video file, or /dev/videoN. None: credentials only.
    #[serde(default)]
    pub camera: Option<String>,
    #[serde(default = "GateConfig::default_direction")]
    pub direction: GateDirection,
    /// Recognise faces on this camera (pedestrian gates).
    #[serde(default = "GateConfig::default_true")]
    pub read_faces: bool,
    /// Read licence plates on this camera (vehicle barriers).
    #[serde(default)]
    pub read_plates: bool,
    /// Analyse at most this many frames per second (the latest frame is always used).
    #[serde(default = "GateConfig::default_fps")]
    pub max_fps: f32,
    #[serde(default = "GateConfig::default_open_timeout")]
    pub open_timeout: Dur,
    #[serde(default = "GateConfig::default_read_timeout")]
    pub read_timeout: Dur,
    /// Visitors may pass only in these hours (China time), e.g. "07:00-22:00".
    #[serde(default)]
    pub visitor_hours: Option<String>,
    #[serde(default)]
    pub resident_hours: Option<String>,
    pub actuator: ActuatorConfig,
    /// A token for this gate's HTTP keypads and card readers: it presents
    /// credentials at this gate (`POST /api/v1/gates/<name>/credential`) and
    /// nothing else. Never give a device the admin token. At least 16 characters.
    #[serde(default)]
    pub device_token_file: Option<std::path::PathBuf>,
}
impl GateConfig {
    fn default_direction() -> GateDirection {
        GateDirection::In
    }
    fn default_true() -> bool {
        true
    }
    fn default_fps() -> f32 {
        5.0
    }
    fn default_open_timeout() -> Dur {
        Dur::secs(5)
    }
    fn default_read_timeout() -> Dur {
        Dur::secs(3)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "lowercase")]
pub enum ActuatorConfig {
    /// Dry run: log the decision, move nothing.
    Log,
    /// Publish to a relay (Shelly: topic "shellies/<id>/relay/0/command", "on"/"off";
    /// Tasmota: "cmnd/<id>/POWER", "ON"/"OFF").
    Mqtt {
        topic: String,
        #[serde(default = "ActuatorConfig::default_on")]
        on: String,
        #[serde(default = "ActuatorConfig::default_off")]
        off: String,
        #[serde(default = "ActuatorConfig::default_pulse")]
        pulse: Dur,
    },
    /// An HTTP request (e.g. a barrier controller's open URL).
    Http {
        url: String,
        #[serde(default = "ActuatorConfig::default_method")]
        method: String,
        #[serde(default)]
        body: Option<String>,
    },
    /// A Linux GPIO line through the character device (/dev/gpiochipN).
    Gpio {
        chip: PathBuf,
        line: u32,
        #[serde(default)]
        active_low: bool,
        #[serde(default = "ActuatorConfig::default_pulse")]
        pulse: Dur,
    },
}
impl ActuatorConfig {
    fn default_on() -> String {
        "on".into()
    }
    fn default_off() -> String {
        "off".into()
    }
    fn default_pulse() -> Dur {
        Dur::millis(800)
    }
    fn default_method() -> String {
        "POST".into()
    }
}
