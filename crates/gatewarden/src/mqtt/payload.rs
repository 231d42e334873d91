//! Parsing what BLE gateways publish: ESPresense, OpenMQTTGateway, Theengs
//! Gateway, and gatewarden's own JSON format. A bad message is a value
//! (`Rejected`) with a reason, counted by the caller; it never panics.

use chrono::{DateTime, TimeZone, Utc};
use domain::clock::Timestamp;
use domain::presence::{BandId, BandSighting};
use serde::Deserialize;

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    Sighting(BandSighting),
    /// A gateway's LWT / status: "online" or "offline".
    GatewayStatus {
        gateway: String,
        online: bool,
    },
    /// A PIN, card number or QR payload from a keypad or reader at a gate,
    /// on `gatewarden/<site>/gate/<gate>/credential`: `{"kind":"card","value":"…"}`.
    Credential {
        gate: String,
        kind: domain::gate::log::Credential,
        value: String,
    },
    /// A signed enrolment record from the source box (verified by the sync task).
    Enrolment(Vec<u8>),
    /// The broker connection (re)started: retained messages follow.
    Connected,
    /// From another box of this site, still signed: the monitor, which holds
    /// the site's key, verifies and reads it (`domain::cluster::open`).
    Cluster {
        /// The topic after `gatewarden/<site>/cluster/`.
        rest: String,
        text: String,
    },
    /// A well-formed message we have no use for (a gateway's own telemetry).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Oversized,
    NotUtf8,
    Malformed,
    UnknownTopic,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownTopic => "unknown_topic",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub reason: RejectReason,
    pub detail: String,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejected {
    Rejected { reason, detail: detail.into() }
}

/// ESPresense `espresense/devices/<id>/<room>` payload (only the fields we use).
#[derive(Deserialize)]
struct EspresenseDevice<'a> {
    #[serde(default, borrow)]
    mac: Option<&'a str>,
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default)]
    rssi: Option<f32>,
    #[serde(default)]
    batt: Option<f32>,
}

/// OpenMQTTGateway / Theengs `home/<gw>/BTtoMQTT/<MAC>` payload.
#[derive(Deserialize)]
struct BtToMqtt<'a> {
    #[serde(default, borrow)]
    id: Option<&'a str>,
    #[serde(default, borrow)]
    uuid: Option<&'a str>,
    #[serde(default)]
    major: Option<u16>,
    #[serde(default)]
    minor: Option<u16>,
    #[serde(default)]
    rssi: Option<f32>,
    #[serde(default)]
    batt: Option<f32>,
}

/// gatewarden's own format, on `gatewarden/<site>/sighting`:
/// `{"band":"C3:A1:F0:00:11:01","gateway":"gate_north","ts":"2026-11-23T08:00:00+08:00","battery":80,"sos":false}`.
/// `ts` may also be Unix seconds. Documented in README.md.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnSighting {
    band: String,
    gateway: String,
    #[serde(default)]
    ts: Option<TsValue>,
    #[serde(default)]
    battery: Option<f32>,
    #[serde(default)]
    sos: bool,
    #[serde(default)]
    rssi: Option<f32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TsValue {
    Unix(i64),
    Text(String),
}

fn battery(b: Option<f32>) -> Result<Option<u8>, Rejected> {
    match b {
        None => Ok(None),
        Some(v) if (0.0..=100.0).contains(&v) => Ok(Some(v.round() as u8)),
        Some(v) => Err(reject(RejectReason::Malformed, format!("battery {v} is not 0..100"))),
    }
}

fn json<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, Rejected> {
    serde_json::from_str(text).map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))
}

/// Parse one MQTT message. `max_bytes` bounds the payload (16 KiB by default).
pub fn parse(topic: &str, payload: &[u8], max_bytes: usize) -> Result<Parsed, Rejected> {
    if payload.len() > max_bytes {
        return Err(reject(RejectReason::Oversized, format!("{} bytes > {max_bytes}", payload.len())));
    }
    let text = std::str::from_utf8(payload).map_err(|e| reject(RejectReason::NotUtf8, e.to_string()))?;
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["espresense", "devices", _id, room] => parse_espresense(room, text),
        ["espresense", "rooms", room, "status"] => status(room, text),
        // OpenMQTTGateway's and Theengs' last will.
        ["home", gw, "LWT"] => status(gw, text),
        ["home", gw, "BTtoMQTT", _mac] => parse_bt_to_mqtt(gw, text),
        ["home", _gw, "BTtoMQTT"] => Ok(Parsed::Ignored),
        ["gatewarden", _site, "sighting"] => parse_own(text),
        ["gatewarden", _site, "gate", gate, "credential"] => parse_credential(gate, text),
        ["gatewarden", _site, "gate", _gate, "event"] => Ok(Parsed::Ignored),
        ["gatewarden", _site, "enrolment", _kind, _id] => Ok(Parsed::Enrolment(payload.to_vec())),
        ["gatewarden", _site, "cluster", rest @ ..] if !rest.is_empty() => Ok(Parsed::Cluster { rest: rest.join("/"), text: text.to_string() }),
        _ => Err(reject(RejectReason::UnknownTopic, format!("no parser for topic {topic:?}"))),
    }
}

fn status(gateway: &str, text: &str) -> Result<Parsed, Rejected> {
    let online = match text.trim().to_ascii_lowercase().as_str() {
        "online" => true,
        "offline" => false,
        other => return Err(reject(RejectReason::Malformed, format!("status {other:?} is not online/offline"))),
    };
    Ok(Parsed::GatewayStatus { gateway: gateway.to_string(), online })
}

fn parse_espresense(room: &str, text: &str) -> Result<Parsed, Rejected> {
    let d: EspresenseDevice = json(text)?;
    let mut ids = Vec::with_capacity(2);
    if let Some(b) = d.id.and_then(BandId::from_espresense_id) {
        ids.push(b);
    }
    if let Some(b) = d.mac.and_then(BandId::mac_from_str) {
        ids.push(b);
    }
    if ids.is_empty() {
        // ESPresense reports every BLE device; one with neither MAC nor iBeacon id
        // (e.g. "apple:…" fingerprints only) cannot be a wristband.
        return if d.id.is_some() || d.mac.is_some() { Ok(Parsed::Ignored) } else { Err(reject(RejectReason::Malformed, "neither mac nor id")) };
    }
    Ok(Parsed::Sighting(BandSighting { ids, gateway: room.to_string(), at: None, battery: battery(d.batt)?, sos: false, rssi: d.rssi }))
}

fn parse_bt_to_mqtt(gw: &str, text: &str) -> Result<Parsed, Rejected> {
    let d: BtToMqtt = json(text)?;
    let mut ids = Vec::with_capacity(2);
    if let (Some(u), Some(maj), Some(min)) = (d.uuid, d.major, d.minor) {
        if let Some(b) = BandId::ibeacon(u, maj, min) {
            ids.push(b);
        }
    }
    match d.id.map(|id| (id, BandId::mac_from_str(id))) {
        Some((_, Some(b))) => ids.push(b),
        Some((id, None)) => return Err(reject(RejectReason::Malformed, format!("id {id:?} is not a MAC"))),
        None => return Err(reject(RejectReason::Malformed, "missing id")),
    }
    Ok(Parsed::Sighting(BandSighting { ids, gateway: gw.to_string(), at: None, battery: battery(d.batt)?, sos: false, rssi: d.rssi }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialMsg {
    kind: String,
    value: String,
}

fn parse_credential(gate: &str, text: &str) -> Result<Parsed, Rejected> {
    use domain::gate::log::Credential;
    let m: CredentialMsg = json(text)?;
    let kind = match m.kind.as_str() {
        "pin" => Credential::Pin,
        "card" => Credential::Card,
        "qr" => Credential::Qr,
        k => return Err(reject(RejectReason::Malformed, format!("credential kind {k:?} is not pin, card or qr"))),
    };
    if m.value.trim().is_empty() || m.value.len() > 512 {
        return Err(reject(RejectReason::Malformed, "credential value must be 1..512 bytes"));
    }
    Ok(Parsed::Credential { gate: gate.to_string(), kind, value: m.value })
}

fn parse_own(text: &str) -> Result<Parsed, Rejected> {
    let d: OwnSighting = json(text)?;
    let band: BandId = d.band.parse().map_err(|e: domain::presence::BandIdError| reject(RejectReason::Malformed, e.to_string()))?;
    if d.gateway.trim().is_empty() {
        return Err(reject(RejectReason::Malformed, "empty gateway"));
    }
    let at = match d.ts {
        None => None,
        Some(TsValue::Unix(s)) => Some(Utc.timestamp_opt(s, 0).single().ok_or_else(|| reject(RejectReason::Malformed, format!("ts {s} out of range")))?),
        Some(TsValue::Text(s)) => {
            Some(DateTime::parse_from_rfc3339(&s).map_err(|e| reject(RejectReason::Malformed, format!("ts {s:?}: {e}")))?.with_timezone(&Utc))
        }
    };
    Ok(Parsed::Sighting(BandSighting {
        ids: vec![band],
        gateway: d.gateway,
        at: at.map(|t: Timestamp| t),
        battery: battery(d.battery)?,
        sos: d.sos,
        rssi: d.rssi,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    #[test]
    fn espresense_ibeacon_sighting_carries_both_identities() {
        let p = parse(
            "espresense/devices/iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-102/building_3",
            br#"{"mac":"c3a1f0001102","id":"iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-102","rssi":-80.2,"batt":78}"#,
            MAX,
        )
        .unwrap();
        let Parsed::Sighting(s) = p else { panic!("{p:?}") };
        assert_eq!(s.gateway, "building_3");
        assert_eq!(s.battery, Some(78));
        assert!(s.ids.contains(&BandId::ibeacon("e5b9e3a627e24c36a2577698da5fc140", 1, 102).unwrap()));
        assert!(s.ids.contains(&"c3:a1:f0:00:11:02".parse().unwrap()));
    }

    #[test]
    fn gateway_status_and_lwt_are_understood() {
        assert_eq!(
            parse("espresense/rooms/gate_north/status", b"offline", MAX).unwrap(),
            Parsed::GatewayStatus { gateway: "gate_north".into(), online: false }
        );
        assert_eq!(parse("home/OpenMQTTGateway/LWT", b"online", MAX).unwrap(), Parsed::GatewayStatus { gateway: "OpenMQTTGateway".into(), online: true });
    }

    #[test]
    fn own_format_carries_timestamp_battery_and_sos() {
        let p = parse(
            "gatewarden/demo/sighting",
            r#"{"band":"ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:101","gateway":"b3","ts":"2026-11-23T08:00:00+08:00","battery":15,"sos":true}"#
                .as_bytes(),
            MAX,
        )
        .unwrap();
        let Parsed::Sighting(s) = p else { panic!() };
        assert!(s.sos);
        assert_eq!(s.battery, Some(15));
        assert_eq!(s.at.unwrap().to_rfc3339(), "2026-11-23T00:00:00+00:00");
    }

    #[test]
    fn bad_payloads_are_rejected_with_their_reason() {
        let cases: Vec<(&str, Vec<u8>, RejectReason)> = vec![
            ("home/gw/BTtoMQTT/AA", b"{not json".to_vec(), RejectReason::Malformed),
            ("home/gw/BTtoMQTT/AA", vec![0xff, 0xfe, 0x00, 0x80], RejectReason::NotUtf8),
            ("home/gw/BTtoMQTT/AA", vec![b' '; MAX + 1], RejectReason::Oversized),
            ("home/gw/BTtoMQTT/AA", br#"{"id":"not-a-mac"}"#.to_vec(), RejectReason::Malformed),
            ("gatewarden/s/sighting", br#"{"band":"x","gateway":"g"}"#.to_vec(), RejectReason::Malformed),
            ("gatewarden/s/sighting", br#"{"band":"c3a1f0001101","gateway":"g","battery":300}"#.to_vec(), RejectReason::Malformed),
            ("gatewarden/s/sighting", br#"{"band":"c3a1f0001101","gateway":"g","extra":1}"#.to_vec(), RejectReason::Malformed),
            ("espresense/rooms/x/status", b"maybe".to_vec(), RejectReason::Malformed),
            ("weather/today", b"{}".to_vec(), RejectReason::UnknownTopic),
        ];
        for (topic, payload, want) in cases {
            let got = parse(topic, &payload, MAX).unwrap_err();
            assert_eq!(got.reason, want, "{topic} {:?}: {}", String::from_utf8_lossy(&payload), got.detail);
        }
    }

    #[test]
    fn reader_credentials_are_parsed_and_bad_ones_rejected() {
        let p = parse("gatewarden/s/gate/north/credential", br#"{"kind":"card","value":"04A1B2C3"}"#, MAX).unwrap();
        assert_eq!(p, Parsed::Credential { gate: "north".into(), kind: domain::gate::log::Credential::Card, value: "04A1B2C3".into() });
        let e = parse("gatewarden/s/gate/north/credential", br#"{"kind":"iris","value":"x"}"#, MAX).unwrap_err();
        assert_eq!(e.reason, RejectReason::Malformed);
    }

    #[test]
    fn every_shared_sample_line_parses() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/mqtt/sightings.txt"));
        let Ok(text) = std::fs::read_to_string(path) else {
            eprintln!("skipping: {} is absent (a user's own clone)", path.display());
            return;
        };
        let mut sightings = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (topic, payload) = line.split_once('\t').unwrap();
            match parse(topic, payload.as_bytes(), MAX).unwrap_or_else(|e| panic!("{line}: {e:?}")) {
                Parsed::Sighting(_) => sightings += 1,
                Parsed::GatewayStatus { .. }
                | Parsed::Ignored
                | Parsed::Credential { .. }
                | Parsed::Connected
                | Parsed::Cluster { .. }
                | Parsed::Enrolment(_) => {}
            }
        }
        assert_eq!(sightings, 5);
    }
}
