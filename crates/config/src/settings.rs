//! The one place where config becomes each domain's settings, so a domain
//! type never reads `Config` and config never reaches into a domain's state.

use crate::{AlertPolicy, Config, GateDirection};
use domain::alert::engine::{Policy, Settings};
use domain::alert::AlertKind;
use domain::clock::chrono_dur;
use domain::gate::log::Direction;
use domain::gate::policy::{self, GateRule};
use std::collections::HashMap;

impl Config {
    /// The alert engine's settings.
    pub fn engine_settings(&self) -> Settings {
        let c = self;
        let p = |pol: &AlertPolicy| Policy { repeat_every: chrono_dur(pol.repeat_every.get()), escalate_after: chrono_dur(pol.escalate_after.get()) };
        let a = &c.alert;
        Settings {
            absence_after: chrono_dur(a.absence_after()),
            band_silent_after: chrono_dur(c.presence.band_silent_after.get()),
            gateway_silent_after: chrono_dur(c.presence.gateway_silent_after.get()),
            battery_low_percent: c.presence.battery_low_percent,
            gateways_max: c.presence.gateways_max,
            // Checked by `validate`: a bad value never gets this far.
            quiet_hours: a.quiet_hours.as_deref().and_then(|q| q.parse().ok()),
            policies: HashMap::from([
                (AlertKind::Absence, p(&a.absence)),
                (AlertKind::Sos, p(&a.sos)),
                (AlertKind::BatteryLow, p(&a.battery)),
                (AlertKind::BandNotWorn, p(&a.band_not_worn)),
                (AlertKind::GatewayOffline, p(&a.gateway_offline)),
                (AlertKind::CameraOffline, p(&a.gateway_offline)),
                (AlertKind::ActuatorFailure, p(&a.gateway_offline)),
                // Security events at a gate are escalated like an SOS.
                (AlertKind::SpoofAttempts, p(&a.sos)),
                (AlertKind::DenyListed, p(&a.sos)),
                (AlertKind::PinLockout, p(&a.gateway_offline)),
            ]),
        }
    }
}

impl Config {
    /// The gate policy's settings (shared by all gates).
    pub fn gate_settings(&self) -> policy::Settings {
        let a = &self.access;
        policy::Settings {
            match_threshold: self.vision.match_threshold,
            liveness_threshold: self.vision.liveness_threshold,
            agree_m: a.agree_frames,
            agree_n: a.window_frames,
            agree_strong: a.strong_agree_frames,
            strong_score: a.strong_match,
            strong_margin: a.strong_margin,
            liveness_min_frames: a.liveness_frames,
            spoof_min_frames: a.spoof_frames,
            cooldown: chrono_dur(a.cooldown.get()),
            pin_max_failures: a.pin_max_failures,
            pin_lockout: chrono_dur(a.pin_lockout.get()),
            pin_site_max_failures: a.pin_site_max_failures,
            pin_site_window: chrono_dur(a.pin_site_window.get()),
            anti_passback: a.anti_passback,
            plate_votes: a.plate_votes,
            plate_sure: a.plate_sure_confidence,
            plate_province_min: a.plate_province_confidence,
            plate_gone_after: chrono_dur(a.plate_gone_after.get()),
            tolerate_province: a.tolerate_province,
            ..Default::default()
        }
    }

    /// Each configured gate's rule (direction, hours).
    pub fn gate_rules(&self) -> Vec<GateRule> {
        self.gates
            .iter()
            .map(|g| GateRule {
                name: g.name.clone(),
                direction: match g.direction {
                    GateDirection::In => Direction::In,
                    GateDirection::Out => Direction::Out,
                },
                visitor_hours: g.visitor_hours.as_deref().and_then(|h| h.parse().ok()),
                resident_hours: g.resident_hours.as_deref().and_then(|h| h.parse().ok()),
            })
            .collect()
    }
}
