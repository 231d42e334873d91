//! The `[presence]` section: how sightings become presence.

use crate::Dur;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceConfig {
    /// After start-up, absence is not judged until this has passed, so that
    /// sightings the broker queued for us during a restart arrive first.
    #[serde(default = "PresenceConfig::default_startup_grace")]
    pub startup_grace: Dur,
    /// How often absence, reminders and escalation are evaluated.
    #[serde(default = "PresenceConfig::default_tick_interval")]
    pub tick_interval: Dur,
    #[serde(default = "PresenceConfig::default_battery_low_percent")]
    pub battery_low_percent: u8,
    /// A BLE gateway that sends nothing for this long is reported offline.
    #[serde(default = "PresenceConfig::default_gateway_silent_after")]
    pub gateway_silent_after: Dur,
    /// An elder whose face is seen at a gate while the wristband has been
    /// silent this long is probably not wearing it.
    #[serde(default = "PresenceConfig::default_band_silent_after")]
    pub band_silent_after: Dur,
    /// At most this many BLE gateways are tracked for silence and LWT. Names
    /// come from MQTT topics: a misbehaving publisher must not grow the set
    /// (and the alerts) without bound. Gateways beyond it are counted and logged.
    #[serde(default = "PresenceConfig::default_gateways_max")]
    pub gateways_max: usize,
    /// How many unknown wristbands are remembered for enrolment (oldest dropped).
    #[serde(default = "PresenceConfig::default_unknown_bands_max")]
    pub unknown_bands_max: usize,
    /// Sightings dated further than this into the future are clamped to now.
    #[serde(default = "PresenceConfig::default_max_clock_skew")]
    pub max_clock_skew: Dur,
    /// A wall-clock step (NTP) larger than this, either way, re-anchors
    /// last-seen times taken before it; smaller differences are drift.
    #[serde(default = "PresenceConfig::default_clock_step_threshold")]
    pub clock_step_threshold: Dur,
    /// After a forward step larger than the threshold, absence is not judged
    /// for this long (ops are told; grid staff are not all paged at once).
    #[serde(default = "PresenceConfig::default_clock_step_grace")]
    pub clock_step_grace: Dur,
    /// Whereabouts are sensitive (PIPL Art. 28): besides last-seen, keep a
    /// sighting history (an entry when the place changes, at most once a
    /// minute, and hourly otherwise) only this long. Off ("0s") by default:
    /// data minimisation, and it costs the daemon about 25 MB more at peak
    /// (BENCHMARKS.md)…
    #[serde(default = "PresenceConfig::default_history_window")]
    pub history_window: Dur,
    /// …and at most this many entries per elder.
    #[serde(default = "PresenceConfig::default_history_max")]
    pub history_max: usize,
    /// The gateway inventory: each gateway's id (as its topic or payload
    /// names it; a MAC in any spelling) and what staff read, e.g.
    /// `gw_building5 = "3栋大堂"`. Messages, the console and `gatewarden
    /// gateways` use the name.
    #[serde(default)]
    pub gateway_names: std::collections::BTreeMap<String, String>,
}

impl PresenceConfig {
    /// What staff read for a gateway id: its configured name, else the id.
    pub fn gateway_display(&self, id: &str) -> Option<&str> {
        let want = domain::presence::gateway_id(id);
        self.gateway_names.iter().find(|(k, _)| domain::presence::gateway_id(k) == want).map(|(_, v)| v.as_str())
    }
}
impl PresenceConfig {
    fn default_history_window() -> Dur {
        Dur::secs(0)
    }
    fn default_history_max() -> usize {
        500
    }
    fn default_startup_grace() -> Dur {
        Dur::secs(60)
    }
    fn default_tick_interval() -> Dur {
        Dur::secs(10)
    }
    fn default_battery_low_percent() -> u8 {
        20
    }
    fn default_gateway_silent_after() -> Dur {
        Dur::secs(10 * 60)
    }
    fn default_band_silent_after() -> Dur {
        Dur::secs(24 * 3600)
    }
    fn default_gateways_max() -> usize {
        256
    }
    fn default_unknown_bands_max() -> usize {
        1000
    }
    fn default_clock_step_threshold() -> Dur {
        Dur::secs(120)
    }
    fn default_clock_step_grace() -> Dur {
        Dur::secs(30 * 60)
    }
    fn default_max_clock_skew() -> Dur {
        Dur::secs(300)
    }
}
impl Default for PresenceConfig {
    fn default() -> Self {
        toml::from_str("").expect("presence defaults")
    }
}
