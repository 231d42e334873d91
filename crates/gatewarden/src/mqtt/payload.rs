//! Reading what BLE gateways publish. A message is read by the format of the
//! `[[mqtt.sources]]` entry whose topic filter matches it, or recognised by
//! `auto` from the topic and the payload: ESPresense (current and older
//! topics), OpenMQTTGateway and Theengs (MAC or beacon-uuid topics), Home
//! Assistant's `mqtt_room`, gatewarden's own format, April Brother (iBeacon
//! receiver and BLE Gateway V4, JSON or MessagePack), Ingics `$GPRP` reports,
//! Minew G1/MG3 arrays and Cassia scan data. Raw advertisements go through
//! `domain::ble`. A bad message is a value (`Rejected`) with a reason, counted
//! by the caller; nothing here panics or allocates beyond the payload's size.

use super::msgpack;
use chrono::{DateTime, TimeZone, Utc};
use config::{filter_matches, MqttConfig, MqttSource, SourceFormat};
use domain::ble;
use domain::clock::Timestamp;
use domain::presence::{BandId, BandSighting};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq)]
pub enum Parsed {
    /// One or more wristbands heard (a raw-advertisement gateway reports many at once).
    Sightings(Vec<BandSighting>),
    /// A gateway's LWT / status: "online" or "offline" (or a heartbeat: online).
    GatewayStatus { gateway: String, online: bool },
    /// A PIN, card number or QR payload from a keypad or reader at a gate,
    /// on `gatewarden/<site>/gate/<gate>/credential`: `{"kind":"card","value":"…"}`.
    Credential { gate: String, kind: domain::gate::log::Credential, value: String },
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
    /// A well-formed message we have no use for (a gateway's own telemetry,
    /// a BLE device that carries no wristband identity).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    Oversized,
    NotUtf8,
    Malformed,
    UnknownTopic,
    /// Well-formed (JSON, MessagePack or text) but in no shape we know.
    UnknownShape,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Oversized => "oversized",
            RejectReason::NotUtf8 => "not_utf8",
            RejectReason::Malformed => "malformed",
            RejectReason::UnknownTopic => "unknown_topic",
            RejectReason::UnknownShape => "unknown_shape",
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

/// Gateway names come from topics and payloads: bounded (and MACs spelled
/// one way), so a hostile publisher cannot grow what is kept per gateway.
use domain::presence::gateway_id as gateway_name;

/// The sources of `[mqtt]` and the payload bound.
#[derive(Debug, Clone)]
pub struct Parser {
    sources: Vec<MqttSource>,
    max_bytes: usize,
}

impl Default for Parser {
    fn default() -> Self {
        Parser { sources: Vec::new(), max_bytes: 16 * 1024 }
    }
}

/// Parse one MQTT message with the built-in defaults (`auto` everywhere).
pub fn parse(topic: &str, payload: &[u8], max_bytes: usize) -> Result<Parsed, Rejected> {
    Parser { sources: Vec::new(), max_bytes }.parse(topic, payload)
}

/// What one message was read as: its format (None before one was known) and
/// the result.
pub type Reading = (Option<SourceFormat>, Result<Parsed, Rejected>);

impl Parser {
    pub fn new(cfg: &MqttConfig) -> Parser {
        Parser { sources: cfg.sources.clone(), max_bytes: cfg.max_payload_bytes }
    }

    pub fn parse(&self, topic: &str, payload: &[u8]) -> Result<Parsed, Rejected> {
        self.read(topic, payload).1
    }

    /// Parse, and say which format the message was read as (for `mqtt sniff`
    /// and the per-format metrics).
    pub fn read(&self, topic: &str, payload: &[u8]) -> Reading {
        if payload.len() > self.max_bytes {
            return (None, Err(reject(RejectReason::Oversized, format!("{} bytes > {}", payload.len(), self.max_bytes))));
        }
        let parts: Vec<&str> = topic.split('/').collect();
        if let ["gatewarden", _site, rest @ ..] = parts.as_slice() {
            if rest != ["sighting"] {
                return (None, control(rest, payload));
            }
        }
        let source = self.sources.iter().find(|s| filter_matches(&s.topic, topic));
        let fixed = source.and_then(|s| s.gateway.as_deref());
        let format = source.map_or(SourceFormat::Auto, |s| s.format);
        let msg = Msg { parts: &parts, payload, fixed };
        if let Some(r) = msg.status() {
            return (None, r);
        }
        match format {
            SourceFormat::Auto => msg.auto(),
            f => (Some(f), msg.decode(f, None)),
        }
    }
}

/// gatewarden's own control topics, `gatewarden/<site>/…`.
fn control(rest: &[&str], payload: &[u8]) -> Result<Parsed, Rejected> {
    let text = || std::str::from_utf8(payload).map_err(|e| reject(RejectReason::NotUtf8, e.to_string()));
    match rest {
        ["gate", gate, "credential"] => parse_credential(gate, text()?),
        ["gate", _gate, "event"] => Ok(Parsed::Ignored),
        ["enrolment", _kind, _id] => Ok(Parsed::Enrolment(payload.to_vec())),
        ["cluster", r @ ..] if !r.is_empty() => Ok(Parsed::Cluster { rest: r.join("/"), text: text()?.to_string() }),
        _ => Err(reject(RejectReason::UnknownTopic, format!("no parser for gatewarden/…/{}", rest.join("/")))),
    }
}

/// One message on its way through detection and decoding.
struct Msg<'a> {
    parts: &'a [&'a str],
    payload: &'a [u8],
    /// `gateway` of the matching source.
    fixed: Option<&'a str>,
}

impl<'a> Msg<'a> {
    fn text(&self) -> Result<&'a str, Rejected> {
        std::str::from_utf8(self.payload).map_err(|e| reject(RejectReason::NotUtf8, e.to_string()))
    }

    /// The gateway: the source's, else the payload's, else the topic's.
    fn gateway(&self, from_payload: Option<&str>, from_topic: impl FnOnce() -> String) -> String {
        match (self.fixed, from_payload.filter(|g| !g.trim().is_empty())) {
            (Some(f), _) => gateway_name(f),
            (None, Some(p)) => gateway_name(p),
            (None, None) => gateway_name(&from_topic()),
        }
    }

    fn last_level(&self) -> String {
        self.parts.last().copied().unwrap_or_default().to_string()
    }

    /// A last will or status: `…/<gateway>/status`, `…/<gateway>/LWT` with a
    /// plain `online` / `offline`.
    fn status(&self) -> Option<Result<Parsed, Rejected>> {
        let n = self.parts.len();
        let last = *self.parts.last()?;
        if n < 2 || !(last == "status" || last == "LWT") {
            return None;
        }
        let text = self.text().ok()?.trim();
        if text.starts_with(['{', '[', '$']) {
            return None; // a structured status: some gateways' reports, read by the formats
        }
        let online = match text.to_ascii_lowercase().as_str() {
            "online" | "1" | "true" | "connected" => true,
            "offline" | "0" | "false" | "disconnected" | "lost" => false,
            other => return Some(Err(reject(RejectReason::Malformed, format!("status {other:?} is not online/offline")))),
        };
        Some(Ok(Parsed::GatewayStatus { gateway: self.gateway(None, || self.parts[n - 2].to_string()), online }))
    }

    /// Recognise the format: the topic's layout where it is unambiguous,
    /// then the payload's shape.
    fn auto(&self) -> Reading {
        let p = self.parts;
        let by_topic = match p {
            ["espresense", "devices", _, _] | ["espresense", "rooms", _] => Some(SourceFormat::Espresense),
            // Older ESPresense publishes node telemetry beside the devices.
            ["espresense", "rooms", _, _] | ["espresense", "settings", ..] => return (Some(SourceFormat::Espresense), Ok(Parsed::Ignored)),
            _ if p.contains(&"BTtoMQTT") => Some(SourceFormat::Openmqttgateway),
            ["gatewarden", _, "sighting"] => Some(SourceFormat::Gatewarden),
            _ => None,
        };
        if let Some(f) = by_topic {
            // The typed fast path: no JSON value is built.
            let r = self.decode(f, None);
            // A topic that looks like one vendor's but carries another shape
            // (a bridge, a renamed prefix): fall through to the payload.
            if !matches!(&r, Err(e) if matches!(e.reason, RejectReason::UnknownShape | RejectReason::NotUtf8)) {
                return (Some(f), r);
            }
        }
        let value = match self.sniff() {
            Ok(v) => v,
            Err(e) => return (None, Err(e)),
        };
        let f = match self.detect(value.as_ref()) {
            Ok(f) => f,
            Err(e) => return (None, Err(e)),
        };
        (Some(f), self.decode(f, value.as_ref()))
    }

    /// JSON or MessagePack payloads as a value (None for text reports).
    fn sniff(&self) -> Result<Option<Value>, Rejected> {
        if msgpack::looks_like_map(self.payload) {
            return msgpack::to_json(self.payload).map(Some).map_err(|e| reject(RejectReason::Malformed, format!("MessagePack: {e}")));
        }
        let text = self.text()?;
        match text.trim_start().as_bytes().first() {
            Some(b'{' | b'[') => serde_json::from_str(text).map(Some).map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}"))),
            _ => Ok(None),
        }
    }

    fn detect(&self, value: Option<&Value>) -> Result<SourceFormat, Rejected> {
        let Some(v) = value else {
            let text = self.text()?.trim_start();
            if text.starts_with('$') {
                return Ok(SourceFormat::Ingics);
            }
            let head: String = text.chars().take(24).collect();
            return Err(reject(RejectReason::UnknownShape, format!("not JSON, MessagePack or an Ingics report (starts {head:?})")));
        };
        let has = |m: &Map<String, Value>, k: &str| m.contains_key(k);
        match v {
            Value::Array(items) => {
                let objs = || items.iter().filter_map(Value::as_object);
                if objs().any(|o| has(o, "bdaddrs") || has(o, "adData") || has(o, "bdaddr")) {
                    Ok(SourceFormat::Cassia)
                } else if objs().any(|o| has(o, "mac") && (has(o, "type") || has(o, "rawData") || has(o, "ibeaconUuid")))
                    || objs().next().is_some_and(|o| has(o, "gateway"))
                {
                    Ok(SourceFormat::Minew)
                } else {
                    Err(reject(RejectReason::UnknownShape, format!("a JSON array of {} items in no known gateway's shape", items.len())))
                }
            }
            Value::Object(m) => {
                if has(m, "raw_beacons_data") || m.get("devices").is_some_and(Value::is_array) {
                    Ok(SourceFormat::Aprilbrother)
                } else if has(m, "bdaddrs") || has(m, "adData") || (has(m, "action") && has(m, "gateway")) {
                    Ok(SourceFormat::Cassia)
                } else if has(m, "band") && has(m, "gateway") {
                    Ok(SourceFormat::Gatewarden)
                } else if has(m, "id") || has(m, "mac") || has(m, "uuid") {
                    Ok(SourceFormat::HaRoom)
                } else {
                    let keys: Vec<&str> = m.keys().take(8).map(String::as_str).collect();
                    Err(reject(RejectReason::UnknownShape, format!("a JSON object with keys {keys:?}: no id, mac, band or gateway report")))
                }
            }
            other => Err(reject(RejectReason::UnknownShape, format!("a bare JSON {}", json_kind(other)))),
        }
    }

    fn decode(&self, f: SourceFormat, value: Option<&Value>) -> Result<Parsed, Rejected> {
        let owned;
        let value = match value {
            Some(v) => Some(v),
            None if !matches!(f, SourceFormat::Ingics | SourceFormat::Espresense | SourceFormat::Openmqttgateway | SourceFormat::Gatewarden) => {
                owned = self.sniff()?;
                owned.as_ref()
            }
            None => None,
        };
        match f {
            SourceFormat::Auto => self.auto().1,
            SourceFormat::Espresense => self.device(value, f, || {
                // espresense/devices/<id>/<room>, and the older espresense/rooms/<room>
                self.last_level()
            }),
            SourceFormat::Openmqttgateway => self.device(value, f, || {
                // home/<gw>/BTtoMQTT/<id>; a custom topic ends with the gateway's name.
                match self.parts.iter().position(|l| *l == "BTtoMQTT") {
                    Some(i) if i > 0 => self.parts[i - 1].to_string(),
                    _ => self.last_level(),
                }
            }),
            SourceFormat::HaRoom => self.device(value, f, || self.last_level()),
            SourceFormat::Gatewarden => parse_own(self.text()?),
            SourceFormat::Aprilbrother => self.april_brother(need(value, f)?),
            SourceFormat::Ingics => self.ingics(self.text()?),
            SourceFormat::Minew => self.minew(need(value, f)?),
            SourceFormat::Cassia => self.cassia(need(value, f)?),
        }
    }
}

fn need(v: Option<&Value>, f: SourceFormat) -> Result<&Value, Rejected> {
    v.ok_or_else(|| reject(RejectReason::UnknownShape, format!("{} sends JSON (or MessagePack)", f.as_str())))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A number, or a number in a string (some firmwares quote them).
#[derive(Deserialize)]
#[serde(untagged)]
enum Num<'a> {
    N(f64),
    #[serde(borrow)]
    S(Cow<'a, str>),
}

impl Num<'_> {
    fn get(&self) -> Option<f64> {
        match self {
            Num::N(n) => Some(*n),
            Num::S(s) => s.trim().parse().ok(),
        }
    }
}

/// One device report as ESPresense, OpenMQTTGateway/Theengs and Home
/// Assistant's `mqtt_room` trackers publish it (only the fields we use).
#[derive(Deserialize, Default)]
struct Device<'a> {
    #[serde(default, borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    mac: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    uuid: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    major: Option<Num<'a>>,
    #[serde(default, borrow)]
    minor: Option<Num<'a>>,
    /// Theengs' Eddystone-UID.
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    instance: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    rssi: Option<Num<'a>>,
    #[serde(default, borrow)]
    batt: Option<Num<'a>>,
    #[serde(default, borrow)]
    battery: Option<Num<'a>>,
}

/// An identity written as text: a MAC, `ibeacon:…`, `eddystone:…`,
/// ESPresense's `iBeacon:<uuid>-<major>-<minor>`, or a tracker's
/// `<uuid>-<major>-<minor>` / `<uuid>_<major>_<minor>`.
fn id_from_text(s: &str) -> Option<BandId> {
    let s = s.trim();
    if let Ok(b) = s.parse::<BandId>() {
        return Some(b);
    }
    if let Some(b) = BandId::from_espresense_id(s) {
        return Some(b);
    }
    let mut it = s.rsplitn(3, ['-', '_', ':']);
    let minor = it.next()?.parse().ok()?;
    let major = it.next()?.parse().ok()?;
    BandId::ibeacon(it.next()?, major, minor)
}

/// Add an identity once.
fn add_id(ids: &mut Vec<BandId>, b: Option<BandId>) {
    if let Some(b) = b.filter(|b| !ids.contains(b)) {
        ids.push(b);
    }
}

/// An iBeacon identity from a report's fields: major and minor must fit 16 bits.
fn ibeacon_of(uuid: Option<&str>, major: Option<f64>, minor: Option<f64>) -> Option<BandId> {
    let fit = |v: f64| (0.0..=65535.0).contains(&v).then_some(v as u16);
    BandId::ibeacon(uuid?, fit(major?)?, fit(minor?)?)
}

/// An Eddystone-UID identity from a report's namespace and instance fields.
fn eddystone_of(namespace: Option<&str>, instance: Option<&str>) -> Option<BandId> {
    BandId::eddystone(&format!("{}{}", namespace?, instance?))
}

fn percent(b: Option<f64>) -> Result<Option<u8>, Rejected> {
    match b {
        None => Ok(None),
        Some(v) if (0.0..=100.0).contains(&v) => Ok(Some(v.round() as u8)),
        Some(v) => Err(reject(RejectReason::Malformed, format!("battery {v} is not 0..100"))),
    }
}

fn sighting(ids: Vec<BandId>, gateway: String, battery: Option<u8>, rssi: Option<f64>) -> BandSighting {
    BandSighting { ids, gateway, at: None, battery, sos: false, rssi: rssi.map(|r| r as f32) }
}

impl Msg<'_> {
    fn device(&self, value: Option<&Value>, f: SourceFormat, topic_gateway: impl FnOnce() -> String) -> Result<Parsed, Rejected> {
        let d: Device = match value {
            Some(v @ Value::Object(_)) => Device::deserialize(v).map_err(|e| reject(RejectReason::Malformed, e.to_string()))?,
            Some(other) => {
                return Err(reject(RejectReason::UnknownShape, format!("{} sends one JSON object per device, not a {}", f.as_str(), json_kind(other))))
            }
            None => match self.text()?.trim_start().as_bytes().first() {
                Some(b'{') => serde_json::from_str(self.text()?).map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))?,
                _ => return Err(reject(RejectReason::UnknownShape, format!("{} sends a JSON object", f.as_str()))),
            },
        };
        let mut ids = Vec::with_capacity(2);
        add_id(&mut ids, d.id.as_deref().and_then(id_from_text));
        add_id(&mut ids, d.mac.as_deref().and_then(BandId::mac_from_str));
        add_id(&mut ids, ibeacon_of(d.uuid.as_deref(), d.major.as_ref().and_then(Num::get), d.minor.as_ref().and_then(Num::get)));
        add_id(&mut ids, eddystone_of(d.namespace.as_deref(), d.instance.as_deref()));
        if ids.is_empty() {
            return match (f, &d.id, &d.mac) {
                // OpenMQTTGateway always sends the MAC as `id`: anything else is broken.
                (SourceFormat::Openmqttgateway, Some(id), _) => {
                    Err(reject(RejectReason::Malformed, format!("id {id:?} is not a MAC and there is no iBeacon or Eddystone identity")))
                }
                (SourceFormat::Openmqttgateway, None, None) => Err(reject(RejectReason::Malformed, "missing id")),
                // Trackers report every BLE device; one without a band identity
                // (a phone's "apple:…" fingerprint, a named tracker) is not a band.
                (_, Some(_), _) | (_, _, Some(_)) => Ok(Parsed::Ignored),
                _ => Err(reject(RejectReason::Malformed, "neither id nor mac")),
            };
        }
        let battery = percent(d.batt.as_ref().or(d.battery.as_ref()).and_then(Num::get))?;
        let gateway = self.gateway(d.room.as_deref(), topic_gateway);
        Ok(Parsed::Sightings(vec![sighting(ids, gateway, battery, d.rssi.as_ref().and_then(Num::get))]))
    }

    /// April Brother: the iBeacon receiver's `{"id":<receiver>,"raw_beacons_data":"rec;rec;"}`
    /// and the BLE Gateway V4's `{"mac":<gateway>,"devices":[<type><mac><rssi><adv>…]}`.
    fn april_brother(&self, v: &Value) -> Result<Parsed, Rejected> {
        let m = v.as_object().ok_or_else(|| reject(RejectReason::UnknownShape, "April Brother sends an object"))?;
        let mut out = Vec::new();
        let mut bad = 0usize;
        if let Some(raw) = m.get("raw_beacons_data") {
            let raw = raw.as_str().ok_or_else(|| reject(RejectReason::Malformed, "raw_beacons_data is not a string"))?;
            let gw = self.gateway(m.get("id").and_then(Value::as_str), || self.last_level());
            for rec in raw.split(';').map(str::trim).filter(|r| !r.is_empty()) {
                match ble::hex(rec).and_then(|b| april_brother_receiver(&b)) {
                    Some((ids, battery, rssi)) => out.push(sighting(ids, gw.clone(), battery, Some(rssi as f64))),
                    None => bad += 1,
                }
            }
        } else if let Some(devs) = m.get("devices").and_then(Value::as_array) {
            let gw = self.gateway(m.get("mac").and_then(Value::as_str), || self.last_level());
            for d in devs {
                // type(1) mac(6) rssi(1) advertisement
                match d.as_str().and_then(ble::hex).filter(|b| b.len() >= 8) {
                    Some(b) => {
                        let mac = BandId::Mac(b[1..7].try_into().expect("6 bytes"));
                        out.push(from_advert(mac, &b[8..], gw.clone(), b[7] as i8 as f64));
                    }
                    None => bad += 1,
                }
            }
        } else {
            return Err(reject(RejectReason::UnknownShape, "April Brother: neither raw_beacons_data nor devices"));
        }
        many(out, bad, "April Brother record")
    }

    /// Ingics iGS0x: `$<type>,<tag>,<gateway>,<rssi>,<raw>[,<ts>]`, one per line.
    fn ingics(&self, text: &str) -> Result<Parsed, Rejected> {
        let mut out = Vec::new();
        let (mut bad, mut heartbeat) = (0usize, None);
        for line in text.split(['\r', '\n']).map(str::trim).filter(|l| !l.is_empty()) {
            let f: Vec<&str> = line.splitn(7, ',').collect();
            match f.as_slice() {
                [ty, tag, gw, rssi, raw, ..] if matches!(*ty, "$GPRP" | "$RSPR" | "$LRAD" | "$LRSR" | "$1MAD" | "$1MSR") => {
                    match (BandId::mac_from_str(tag), ble::hex(raw), rssi.trim().parse::<f64>()) {
                        (Some(mac), Some(adv), Ok(r)) => out.push(from_advert(mac, &adv, self.gateway(Some(gw), || self.last_level()), r)),
                        _ => bad += 1,
                    }
                }
                ["$HBRP", _, gw, ..] => heartbeat = Some(self.gateway(Some(gw), || self.last_level())),
                [ty, ..] if matches!(*ty, "$GPRP" | "$RSPR" | "$LRAD" | "$LRSR" | "$1MAD" | "$1MSR" | "$HBRP") => bad += 1,
                [ty, ..] if ty.starts_with('$') => {} // GNSS and other reports
                _ => bad += 1,
            }
        }
        if out.is_empty() && bad == 0 {
            return Ok(match heartbeat {
                Some(gateway) => Parsed::GatewayStatus { gateway, online: true },
                None => Parsed::Ignored,
            });
        }
        many(out, bad, "Ingics line")
    }

    /// Minew G1/MG3: `[{"type":"Gateway","mac":…}, {"type":"iBeacon","mac":…,
    /// "ibeaconUuid":…,"ibeaconMajor":…,"ibeaconMinor":…,"battery":…}, {"type":"Unknown","mac":…,"rawData":…}]`.
    fn minew(&self, v: &Value) -> Result<Parsed, Rejected> {
        let items = v.as_array().ok_or_else(|| reject(RejectReason::UnknownShape, "Minew sends a JSON array"))?;
        let objs = || items.iter().filter_map(Value::as_object);
        let gw_item = objs().find(|o| o.get("type").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("gateway")));
        let from_payload = gw_item.and_then(|o| o.get("mac")).or_else(|| objs().find_map(|o| o.get("gateway"))).and_then(Value::as_str);
        let gw = self.gateway(from_payload, || self.last_level());
        let mut out = Vec::new();
        let mut bad = 0usize;
        for o in objs().filter(|o| !gw_item.is_some_and(|g| std::ptr::eq(*o, g))) {
            let Some(mac) = o.get("mac").and_then(Value::as_str).and_then(BandId::mac_from_str) else {
                // JSON-RAW's first item names the gateway and is no device.
                if !o.contains_key("gateway") {
                    bad += 1;
                }
                continue;
            };
            let rssi = o.get("rssi").and_then(Value::as_f64).unwrap_or(f64::NAN);
            let adv = o.get("rawData").and_then(Value::as_str).and_then(ble::hex).unwrap_or_default();
            let mut s = from_advert(mac, &adv, gw.clone(), rssi);
            let text = |k: &str| o.get(k).and_then(Value::as_str);
            let num = |k: &str| o.get(k).and_then(Value::as_f64);
            add_id(&mut s.ids, ibeacon_of(text("ibeaconUuid"), num("ibeaconMajor"), num("ibeaconMinor")));
            add_id(&mut s.ids, eddystone_of(text("namespace"), text("instance")));
            if let Some(b) = o.get("battery").and_then(Value::as_f64).filter(|b| (0.0..=100.0).contains(b)) {
                s.battery = Some(b.round() as u8);
            }
            out.push(s);
        }
        many(out, bad, "Minew device")
    }

    /// Cassia: scan data `{"bdaddrs":[{"bdaddr":…}],"adData":…,"scanData":…,"rssi":…}`,
    /// alone, in an array, or in the MQTT API's envelope
    /// `{"action":"data.scan","gateway":…,"data":…}` on `up/<gateway>/scan`.
    fn cassia(&self, v: &Value) -> Result<Parsed, Rejected> {
        let (gw_field, data) = match v.as_object() {
            Some(m) if m.contains_key("action") => {
                let gw = m.get("gateway").and_then(Value::as_str);
                match m.get("action").and_then(Value::as_str).unwrap_or("") {
                    "data.scan" | "scan" => (gw, m.get("data").unwrap_or(&Value::Null)),
                    "gateway_status" | "heartbeat" => {
                        return Ok(Parsed::GatewayStatus { gateway: self.gateway(gw, || self.cassia_topic_gateway()), online: true });
                    }
                    _ => return Ok(Parsed::Ignored), // API replies, notifications, connection state
                }
            }
            _ => (None, v),
        };
        let gw = self.gateway(gw_field, || self.cassia_topic_gateway());
        let one = |o: &Map<String, Value>| -> Option<BandSighting> {
            let mac = o
                .get("bdaddrs")
                .and_then(|b| b.get(0))
                .and_then(|b| b.get("bdaddr"))
                .or_else(|| o.get("bdaddr"))
                .or_else(|| o.get("mac"))
                .or_else(|| o.get("device_mac"))
                .and_then(Value::as_str)
                .and_then(BandId::mac_from_str)?;
            let hexf = |k: &str| o.get(k).and_then(Value::as_str).and_then(ble::hex).unwrap_or_default();
            let mut adv = hexf("adData");
            adv.extend(hexf("ad_data"));
            adv.extend(hexf("scanData"));
            Some(from_advert(mac, &adv, gw.clone(), o.get("rssi").and_then(Value::as_f64).unwrap_or(f64::NAN)))
        };
        let (mut out, mut bad) = (Vec::new(), 0usize);
        let items: Vec<&Value> = match data {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![data],
            other => return Err(reject(RejectReason::Malformed, format!("Cassia scan data is a {}", json_kind(other)))),
        };
        for i in items {
            match i.as_object().and_then(one) {
                Some(s) => out.push(s),
                None => bad += 1,
            }
        }
        many(out, bad, "Cassia scan record")
    }

    fn cassia_topic_gateway(&self) -> String {
        match self.parts {
            ["up", gw, ..] => gw.to_string(),
            _ => self.last_level(),
        }
    }
}

/// iBeacon-mode record: mac(6) uuid(16) major(2) minor(2) power(1) battery(1) rssi(1);
/// RAW-mode record: mac(6) rssi(1) type(1) length(1) advertisement.
fn april_brother_receiver(b: &[u8]) -> Option<(Vec<BandId>, Option<u8>, i16)> {
    // The documented examples give the signal bytes as offsets below 255.
    let signal = |x: u8| if x >= 128 { x as i16 - 256 } else { -(x as i16) };
    let mac = BandId::Mac(b.get(0..6)?.try_into().ok()?);
    if b.len() >= 9 && 9 + b[8] as usize == b.len() && well_formed_ads(&b[9..]) {
        let a = ble::decode(&b[9..]);
        let mut ids = vec![mac];
        ids.extend(a.ids);
        return Some((ids, a.battery, signal(b[6])));
    }
    if b.len() != 29 {
        return None;
    }
    let uuid = u128::from_be_bytes(b[6..22].try_into().ok()?);
    let ib = BandId::IBeacon { uuid, major: u16::from_be_bytes([b[22], b[23]]), minor: u16::from_be_bytes([b[24], b[25]]) };
    let battery = (b[27] <= 100).then_some(b[27]);
    Some((vec![mac, ib], battery, signal(b[28])))
}

/// Whether `d` is a whole number of AD structures.
fn well_formed_ads(d: &[u8]) -> bool {
    let mut i = 0;
    while i < d.len() {
        let l = d[i] as usize;
        if l == 0 {
            return d[i..].iter().all(|x| *x == 0);
        }
        i += 1 + l;
    }
    i == d.len()
}

fn from_advert(mac: BandId, adv: &[u8], gateway: String, rssi: f64) -> BandSighting {
    let a = ble::decode(adv);
    let mut ids = Vec::with_capacity(1 + a.ids.len());
    ids.push(mac);
    ids.extend(a.ids);
    sighting(ids, gateway, a.battery, rssi.is_finite().then_some(rssi))
}

/// Many records in one message: the good ones count even if some are broken.
fn many(out: Vec<BandSighting>, bad: usize, what: &str) -> Result<Parsed, Rejected> {
    if out.is_empty() {
        return if bad == 0 { Ok(Parsed::Ignored) } else { Err(reject(RejectReason::Malformed, format!("{bad} unreadable {what}(s), none readable"))) };
    }
    if bad > 0 {
        tracing::debug!(bad, what, "some records of a gateway report were unreadable");
    }
    Ok(Parsed::Sightings(out))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialMsg {
    kind: String,
    value: String,
}

fn parse_credential(gate: &str, text: &str) -> Result<Parsed, Rejected> {
    use domain::gate::log::Credential;
    let m: CredentialMsg = serde_json::from_str(text).map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))?;
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
    battery: Option<f64>,
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

fn parse_own(text: &str) -> Result<Parsed, Rejected> {
    let d: OwnSighting = serde_json::from_str(text).map_err(|e| reject(RejectReason::Malformed, format!("invalid JSON: {e}")))?;
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
    Ok(Parsed::Sightings(vec![BandSighting {
        ids: vec![band],
        gateway: gateway_name(&d.gateway),
        at: at.map(|t: Timestamp| t),
        battery: percent(d.battery)?,
        sos: d.sos,
        rssi: d.rssi,
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16 * 1024;

    fn one(topic: &str, payload: &[u8]) -> Vec<BandSighting> {
        match parse(topic, payload, MAX) {
            Ok(Parsed::Sightings(s)) => s,
            other => panic!("{topic}: {other:?}"),
        }
    }

    fn id(s: &str) -> BandId {
        s.parse().unwrap()
    }

    #[test]
    fn espresense_ibeacon_sighting_carries_both_identities() {
        let s = one(
            "espresense/devices/iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-102/building_3",
            br#"{"mac":"c3a1f0001102","id":"iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-102","rssi":-80.2,"batt":78}"#,
        );
        assert_eq!(s[0].gateway, "building_3");
        assert_eq!(s[0].battery, Some(78));
        assert!(s[0].ids.contains(&BandId::ibeacon("e5b9e3a627e24c36a2577698da5fc140", 1, 102).unwrap()));
        assert!(s[0].ids.contains(&id("c3:a1:f0:00:11:02")));
    }

    #[test]
    fn older_espresense_rooms_topic_is_a_sighting_and_its_telemetry_is_not() {
        let s = one("espresense/rooms/living_room", br#"{"id":"iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-106","name":"band","rssi":-65,"distance":1.2}"#);
        assert_eq!(s[0].gateway, "living_room");
        assert_eq!(s[0].ids, vec![id("ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:106")]);
        assert_eq!(parse("espresense/rooms/living_room/telemetry", br#"{"ip":"10.0.0.9","uptime":5}"#, MAX).unwrap(), Parsed::Ignored);
    }

    #[test]
    fn openmqttgateway_with_the_beacon_uuid_in_the_topic_is_read_by_mac_and_ibeacon() {
        let s = one(
            "home/OMG_ESP32_BLE/BTtoMQTT/e5b9e3a627e24c36a2577698da5fc140",
            br#"{"id":"C3:A1:F0:00:11:07","mac_type":1,"rssi":-70,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"e5b9e3a627e24c36a2577698da5fc140","major":1,"minor":107,"txpower":-59}"#,
        );
        assert_eq!(s[0].gateway, "OMG_ESP32_BLE");
        assert!(s[0].ids.contains(&id("C3A1F0001107")) && s[0].ids.contains(&id("ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:107")));
        // The uuid in `id`, the MAC in `mac`, numbers quoted: still both identities.
        let s = one(
            "home/gw2/BTtoMQTT/e5b9e3a627e24c36a2577698da5fc140",
            br#"{"id":"e5b9e3a627e24c36a2577698da5fc140","mac":"c3a1f0001107","uuid":"E5B9E3A6-27E2-4C36-A257-7698DA5FC140","major":"1","minor":"107"}"#,
        );
        assert_eq!(s[0].ids.len(), 2, "{:?}", s[0].ids);
        // A custom topic that ends with the gateway's name.
        assert_eq!(
            one("home/home_presence/OpenMQTTGateway_ESP32_BLE_House", br#"{"id":"59:D6:88:02:47:B8","rssi":-56,"distance":0.59}"#)[0].gateway,
            "OpenMQTTGateway_ESP32_BLE_House"
        );
    }

    #[test]
    fn home_assistant_mqtt_room_shape_on_a_room_topic() {
        let s = one("room_presence/kitchen", br#"{"id":"e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-108","name":"Band 108","distance":2.5}"#);
        assert_eq!((s[0].gateway.as_str(), s[0].ids[0]), ("kitchen", id("ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:108")));
        assert_eq!(one("room_presence/hall", br#"{"id":"c3a1f0001108","name":"x","distance":1}"#)[0].ids, vec![id("C3:A1:F0:00:11:08")]);
        // The documented example: an id that is no band identity is ignored, not an error.
        assert_eq!(parse("room_presence/living_room", br#"{"id":"123testid","name":"Test Device","distance":5.678}"#, MAX).unwrap(), Parsed::Ignored);
    }

    #[test]
    fn april_brother_ibeacon_receiver_raw_beacons_data() {
        // The vendor's documented sample.
        let s = one(
            "aprilbrother/receiver",
            br#"{"id":"ABCDEF123456","raw_beacons_data":"F4B85ED84CB7123456781234123412341234123412347DAD33B1C6FF41;0117C538C0CF23A01AF0232A45189C0E323FB773F5EF00100020B3FFB2;"}"#,
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].gateway, "AB:CD:EF:12:34:56");
        assert_eq!(s[0].ids, vec![id("F4:B8:5E:D8:4C:B7"), BandId::ibeacon("12345678123412341234123412341234", 0x7DAD, 0x33B1).unwrap()]);
        assert_eq!(s[0].battery, None, "FF: battery not known");
        assert_eq!(s[1].ids[1], BandId::ibeacon("23A01AF0232A45189C0E323FB773F5EF", 0x10, 0x20).unwrap());
    }

    const AB_V4_DEVICE: &str = "02C8FD1949A530CE0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0";

    #[test]
    fn april_brother_gateway_v4_devices_as_json_and_as_messagepack() {
        let json = format!(r#"{{"v":"1.5.9","mid":1208,"time":50062,"ip":"192.168.1.77","mac":"AABBCCDDEEFF","devices":["{AB_V4_DEVICE}","0012"]}}"#);
        let s = one("abgw/up", json.as_bytes());
        assert_eq!(s.len(), 1, "the short record is skipped, the good one kept");
        assert_eq!(s[0].gateway, "AA:BB:CC:DD:EE:FF");
        assert_eq!(s[0].ids, vec![id("C8:FD:19:49:A5:30"), BandId::ibeacon("eb6d469624be4663b15230d46b0e9cc9", 13, 42).unwrap()]);
        assert_eq!(s[0].rssi, Some(-50.0));
        // The same report in MessagePack, the gateway's default: {"mac": str, "devices": [bin]}.
        let dev = ble::hex(AB_V4_DEVICE).unwrap();
        let mut mp = vec![0x82, 0xa3];
        mp.extend(b"mac");
        mp.push(0xac);
        mp.extend(b"AABBCCDDEEFF");
        mp.push(0xa7);
        mp.extend(b"devices");
        mp.extend([0x91, 0xc4, dev.len() as u8]);
        mp.extend(&dev);
        assert_eq!(one("abgw/up", &mp), s);
    }

    #[test]
    fn ingics_gprp_reports_one_per_line() {
        // The vendor's documented examples, in one message.
        let text = "$GPRP,0C61CFC1452E,E7DAE08E6FC3,-44,0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6\r\n\
                    $GPRP,CCB97E7361A4,CB412F0C8EDC,-49,1309696773206D65736820233220285445535429020106,1574921085\r\n";
        let s = one("ingics/gw", text.as_bytes());
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].gateway, "E7:DA:E0:8E:6F:C3");
        assert_eq!(s[0].ids, vec![id("0C:61:CF:C1:45:2E"), BandId::ibeacon("B9A5D27D56CC4E3AAB511F2153BCB967", 1, 0x452E).unwrap()]);
        assert_eq!(s[0].rssi, Some(-44.0));
        assert_eq!(s[1].ids, vec![id("CC:B9:7E:73:61:A4")]);
        assert_eq!(
            parse("ingics/gw", b"$HBRP,FECE97089146,FECE97089146,-127,00000000", MAX).unwrap(),
            Parsed::GatewayStatus { gateway: "FE:CE:97:08:91:46".into(), online: true }
        );
    }

    #[test]
    fn minew_json_long_array_by_ibeacon_fields_and_raw_data() {
        let text = r#"[{"timestamp":"2026-11-30T08:00:00.000Z","type":"Gateway","mac":"AC233FC0ABCD","gatewayFree":95,"gatewayLoad":0.21},
            {"timestamp":"2026-11-30T08:00:00.100Z","type":"iBeacon","mac":"AC233F261234","bleName":"","rssi":-62,"ibeaconUuid":"E2C56DB5DFFB48D2B060D0F5A71096E0","ibeaconMajor":10,"ibeaconMinor":7,"ibeaconTxPower":-59,"battery":87},
            {"timestamp":"2026-11-30T08:00:00.200Z","type":"Unknown","mac":"C3A1F0001109","bleName":"","rssi":-70,"rawData":"0201060303E1FF1316E1FFA10864001302E4CDAB504C5553303031"}]"#;
        let s = one("/gw/ac233fc0abcd/status", text.as_bytes());
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|x| x.gateway == "AC:23:3F:C0:AB:CD"));
        assert_eq!(s[0].ids, vec![id("AC:23:3F:26:12:34"), BandId::ibeacon("E2C56DB5DFFB48D2B060D0F5A71096E0", 10, 7).unwrap()]);
        assert_eq!(s[0].battery, Some(87));
        assert_eq!((s[1].ids[0], s[1].battery), (id("C3:A1:F0:00:11:09"), Some(100)));
    }

    #[test]
    fn cassia_scan_data_alone_and_in_its_mqtt_envelope() {
        let scan = r#"{"bdaddrs":[{"bdaddr":"CC:1B:E0:E0:F1:D0","bdaddrType":"public"}],"scanData":"","adData":"0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0","rssi":-54,"name":"unknown","evtType":0}"#;
        let s = one("cassia/CC:1B:E0:E2:8F:2C", scan.as_bytes());
        assert_eq!(s[0].ids, vec![id("CC:1B:E0:E0:F1:D0"), BandId::ibeacon("eb6d469624be4663b15230d46b0e9cc9", 13, 42).unwrap()]);
        let env = format!(r#"{{"id":"35656","action":"data.scan","timestamp":1678698297028,"gateway":"CC:1B:E0:E2:8F:2C","data":[{scan}]}}"#);
        let s = one("up/CC:1B:E0:E2:8F:2C/scan", env.as_bytes());
        assert_eq!(s[0].gateway, "CC:1B:E0:E2:8F:2C");
        let status = r#"{"id":"1","action":"gateway_status","timestamp":1678698297028,"gateway":"CC:1B:E0:E2:8F:2C","data":{"model":"M2000"}}"#;
        assert_eq!(
            parse("up/CC:1B:E0:E2:8F:2C/gateway_status", status.as_bytes(), MAX).unwrap(),
            Parsed::GatewayStatus { gateway: "CC:1B:E0:E2:8F:2C".into(), online: true }
        );
    }

    #[test]
    fn a_declared_format_and_gateway_override_the_guess() {
        let cfg: MqttConfig = toml::from_str(
            r#"[[sources]]
               topic = "compound/+/ble"
               format = "ingics"
               gateway = "3栋大堂""#,
        )
        .unwrap();
        let p = Parser::new(&cfg);
        let (f, r) = p.read("compound/b3/ble", b"$GPRP,0C61CFC1452E,E7DAE08E6FC3,-44,0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6");
        assert_eq!(f, Some(SourceFormat::Ingics));
        let Ok(Parsed::Sightings(s)) = r else { panic!("{r:?}") };
        assert_eq!(s[0].gateway, "3栋大堂");
        // Declared Ingics, but JSON arrives: said so, not guessed.
        let (_, r) = p.read("compound/b3/ble", br#"{"id":"c3a1f0001101"}"#);
        assert!(r.is_err());
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
        let s = one(
            "gatewarden/demo/sighting",
            r#"{"band":"ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:101","gateway":"b3","ts":"2026-11-23T08:00:00+08:00","battery":15,"sos":true}"#
                .as_bytes(),
        );
        assert!(s[0].sos);
        assert_eq!(s[0].battery, Some(15));
        assert_eq!(s[0].at.unwrap().to_rfc3339(), "2026-11-23T00:00:00+00:00");
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
            ("weather/today", b"{}".to_vec(), RejectReason::UnknownShape),
            ("weather/today", b"sunny".to_vec(), RejectReason::UnknownShape),
            ("weather/today", b"[1,2,3]".to_vec(), RejectReason::UnknownShape),
            ("gatewarden/s/nonsense", b"{}".to_vec(), RejectReason::UnknownTopic),
            ("abgw/up", br#"{"mac":"AABBCCDDEEFF","devices":["zz"]}"#.to_vec(), RejectReason::Malformed),
            ("abgw/up", vec![0x81, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff], RejectReason::Malformed),
            ("ingics/gw", b"$GPRP,nonsense".to_vec(), RejectReason::Malformed),
        ];
        for (topic, payload, want) in cases {
            let got = parse(topic, &payload, MAX).unwrap_err();
            assert_eq!(got.reason, want, "{topic} {:?}: {}", String::from_utf8_lossy(&payload), got.detail);
        }
    }

    #[test]
    fn gateway_names_are_bounded_and_macs_spelled_one_way() {
        let long = "g".repeat(500);
        let s = one(&format!("room_presence/{long}"), br#"{"id":"c3a1f0001101"}"#);
        assert_eq!(s[0].gateway.chars().count(), domain::presence::MAX_GATEWAY_ID_CHARS);
        assert_eq!(gateway_name("aabbccddeeff"), gateway_name("AA-BB-CC-DD-EE-FF"));
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
                Parsed::Sightings(s) => sightings += s.len(),
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
