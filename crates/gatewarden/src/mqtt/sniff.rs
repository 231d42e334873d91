//! `gatewarden mqtt sniff`: listen to the configured broker for a while and
//! say, per topic, what arrived, which format it was read as (or why none),
//! the wristband identities it carried and whether each is enrolled. The
//! installer's answer to "why is this band not matched?". It subscribes with
//! its own client id and a clean session, so the daemon's persistent session
//! and its QoS 1 queue are untouched.

use super::payload::{Parsed, Parser};
use config::Config;
use domain::presence::BandId;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// At most this many topics, and identities per topic, are reported.
const MAX_TOPICS: usize = 500;
const MAX_IDS: usize = 32;

#[derive(Debug, Default, Serialize)]
pub struct TopicReport {
    pub messages: u64,
    /// Format → messages read as it.
    pub formats: BTreeMap<&'static str, u64>,
    pub sightings: u64,
    pub statuses: u64,
    pub ignored: u64,
    /// Reason → (messages, the last detail).
    pub unread: BTreeMap<&'static str, (u64, String)>,
    pub bands: BTreeSet<BandId>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub seconds: f64,
    pub messages: u64,
    pub topics: BTreeMap<String, TopicReport>,
    /// Topics past `MAX_TOPICS`, counted only.
    pub other_topics_messages: u64,
}

impl Report {
    pub fn add(&mut self, parser: &Parser, topic: &str, payload: &[u8]) {
        self.messages += 1;
        if !self.topics.contains_key(topic) && self.topics.len() >= MAX_TOPICS {
            self.other_topics_messages += 1;
            return;
        }
        let t = self.topics.entry(topic.to_string()).or_default();
        t.messages += 1;
        let (format, r) = parser.read(topic, payload);
        if let Some(f) = format {
            *t.formats.entry(f.as_str()).or_default() += 1;
        }
        match r {
            Ok(Parsed::Sightings(all)) => {
                t.sightings += all.len() as u64;
                for id in all.into_iter().flat_map(|s| s.ids) {
                    if t.bands.len() < MAX_IDS {
                        t.bands.insert(id);
                    }
                }
            }
            Ok(Parsed::GatewayStatus { .. }) => t.statuses += 1,
            Ok(_) => t.ignored += 1,
            Err(e) => {
                let u = t.unread.entry(e.reason.as_str()).or_default();
                u.0 += 1;
                u.1 = e.detail;
            }
        }
    }

    /// The report as an installer reads it. `enrolled` maps a band identity
    /// to its elder's id; None when the daemon could not be asked.
    pub fn render(&self, enrolled: Option<&HashMap<BandId, String>>) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "{} messages on {} topics in {:.0} s", self.messages, self.topics.len(), self.seconds);
        if enrolled.is_none() {
            let _ = writeln!(s, "(enrolment unknown: the daemon's API could not be reached)");
        }
        for (topic, t) in &self.topics {
            let _ = writeln!(s, "\n{topic}");
            let formats: Vec<String> = t.formats.iter().map(|(f, n)| format!("{f} ×{n}")).collect();
            let _ = writeln!(
                s,
                "  {} messages; format: {}; {} sightings, {} status, {} ignored",
                t.messages,
                if formats.is_empty() { "none detected".into() } else { formats.join(", ") },
                t.sightings,
                t.statuses,
                t.ignored
            );
            for (reason, (n, detail)) in &t.unread {
                let _ = writeln!(s, "  NOT READ ×{n}: {reason}: {detail}");
            }
            for b in &t.bands {
                let who = match enrolled {
                    Some(m) => match m.get(b) {
                        Some(elder) => format!("enrolled ({elder})"),
                        None => "NOT ENROLLED".to_string(),
                    },
                    None => "?".to_string(),
                };
                let _ = writeln!(s, "  band {b}: {who}");
            }
        }
        if self.other_topics_messages > 0 {
            let _ = writeln!(s, "\n{} more messages on topics past the first {MAX_TOPICS}", self.other_topics_messages);
        }
        s
    }
}

/// Listen for `dur` to the daemon's subscriptions and `extra` filters.
pub async fn listen(cfg: &Config, dur: Duration, extra: &[String]) -> anyhow::Result<Report> {
    let mut o = super::options(cfg)?;
    o.set_client_id(format!("{}-sniff-{}", cfg.client_id(), std::process::id()));
    o.set_clean_session(true);
    o.set_manual_acks(false);
    let (client, mut ev) = AsyncClient::new(o, 64);
    let parser = Parser::new(&cfg.mqtt);
    let mut filters = cfg.mqtt.subscriptions();
    filters.extend(extra.iter().cloned());
    let mut report = Report::default();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + dur;
    let mut connected = false;
    loop {
        let e = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            e = ev.poll() => e,
        };
        match e {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                for f in &filters {
                    client.try_subscribe(f.clone(), QoS::AtMostOnce)?;
                }
                eprintln!("listening on {} for {} s: {}", cfg.mqtt.broker, dur.as_secs(), filters.join(", "));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => report.add(&parser, &p.topic, &p.payload),
            Ok(_) => {}
            Err(e) => {
                if !connected && start.elapsed() > Duration::from_secs(5) {
                    anyhow::bail!("cannot connect to the MQTT broker {}: {e}", cfg.mqtt.broker);
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
    anyhow::ensure!(connected, "never connected to the MQTT broker {}", cfg.mqtt.broker);
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Band identity → elder id, from the daemon's roster.
pub fn enrolled_from(elders: &serde_json::Value) -> HashMap<BandId, String> {
    let mut m = HashMap::new();
    for e in elders.as_array().into_iter().flatten() {
        let id = e.get("id").and_then(|v| v.as_str()).unwrap_or("?").to_string();
        for b in e.get("bands").and_then(|b| b.as_array()).into_iter().flatten() {
            if let Some(b) = b.as_str().and_then(|s| s.parse::<BandId>().ok()) {
                m.insert(b, id.clone());
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_formats_unread_shapes_and_enrolment_per_topic() {
        let p = Parser::default();
        let mut r = Report::default();
        r.add(&p, "home/gw/BTtoMQTT/C3A1F0001101", br#"{"id":"C3:A1:F0:00:11:01","rssi":-60}"#);
        r.add(&p, "home/gw/BTtoMQTT/C3A1F0001102", br#"{"id":"C3:A1:F0:00:11:02","rssi":-60}"#);
        r.add(&p, "vendor/x", br#"{"temperature":21.5}"#);
        r.add(&p, "vendor/x", br#"{"temperature":21.6}"#);
        let enrolled = enrolled_from(&serde_json::json!([{"id":"E001","bands":["c3a1f0001101"]}]));
        let text = r.render(Some(&enrolled));
        assert!(text.contains("band C3:A1:F0:00:11:01: enrolled (E001)"), "{text}");
        assert!(text.contains("band C3:A1:F0:00:11:02: NOT ENROLLED"), "{text}");
        assert!(text.contains("NOT READ ×2: unknown_shape"), "{text}");
        assert!(text.contains("format: openmqttgateway ×1"), "{text}");
        assert!(r.render(None).contains("enrolment unknown"));
    }
}
