//! Upstream to the district, at QoS 1: alert episodes (state, kind, subject
//! id and the acknowledgement's outcome; never names, phones, notes or ID
//! numbers) and retained box health.

use super::Monitor;
use domain::alert::Alert;

impl Monitor {
    /// Alert episodes go upstream (QoS 1) for the district: state, kind and
    /// subject id, never names, phones or ID numbers.
    pub(super) fn publish_episode(&self, a: &Alert) {
        let Some(m) = &self.io.mqtt else { return };
        let body = serde_json::json!({
            "site": self.io.cfg.site, "id": a.id, "kind": a.kind.as_str(), "severity": a.kind.severity(),
            "subject": a.subject, "state": a.state.as_str(), "level": a.level, "opened_at": a.opened_at,
            "acked_at": a.acked_at, "resolved_at": a.resolved_at,
            // The outcome is a code; the staff's note is free text and stays on the box.
            "outcome": a.outcome.map(|o| o.as_str()),
        });
        let topic = format!("gatewarden/{}/alert", self.io.cfg.site);
        if let Err(e) = m.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string()) {
            tracing::warn!(error = %e, "cannot publish the alert episode");
        }
    }

    /// Retained box health on `gatewarden/<site>/health`, once a minute.
    pub(super) fn publish_health(&self) {
        let Some(m) = &self.io.mqtt else { return };
        let open = self.engine.open_alerts().count();
        let body = serde_json::json!({
            "site": self.io.cfg.site, "at": self.io.clock.now(), "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.io.started.elapsed().as_secs(), "elders": self.presence.elder_count(), "open_alerts": open,
        });
        let topic = match self.box_id() {
            Some(b) => format!("gatewarden/{}/health/{b}", self.io.cfg.site),
            None => format!("gatewarden/{}/health", self.io.cfg.site),
        };
        let _ = m.try_publish(topic, rumqttc::QoS::AtLeastOnce, true, body.to_string());
    }
}
