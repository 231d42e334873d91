//! Who was seen where, and when. Wristband identities, the elder roster record,
//! planned leaves, and the `Presence` state machine that turns observations
//! (a BLE sighting, a face at a gate, a staff check-in) into presence events.
//! Pure: no I/O, no tokio. The daemon persists what `take_dirty` hands back.

use crate::clock::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

pub type ElderId = String;

/// A wristband's identity: its MAC address, its iBeacon (uuid, major, minor)
/// or its Eddystone-UID (namespace, instance). A band is matched by any one
/// it carries. Compared without regard to case or separators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BandId {
    Mac([u8; 6]),
    IBeacon { uuid: u128, major: u16, minor: u16 },
    Eddystone { namespace: [u8; 10], instance: [u8; 6] },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid wristband id {input:?}: {reason}. Use a MAC (C3:A1:F0:00:11:01), an iBeacon (ibeacon:<uuid>:<major>:<minor>) or an Eddystone-UID (eddystone:<namespace>:<instance>)")]
pub struct BandIdError {
    pub input: String,
    pub reason: &'static str,
}

fn hex_digits(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii_hexdigit()).map(|c| c.to_ascii_lowercase()).collect()
}

impl BandId {
    pub fn mac_from_str(s: &str) -> Option<BandId> {
        let seps_ok = s.chars().all(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-' | '.' | ' '));
        let h = hex_digits(s);
        if !seps_ok || h.len() != 12 {
            return None;
        }
        let mut b = [0u8; 6];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&h[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(BandId::Mac(b))
    }

    /// uuid in any case, with or without dashes.
    pub fn ibeacon(uuid: &str, major: u16, minor: u16) -> Option<BandId> {
        let h = hex_digits(uuid);
        if h.len() != 32 || uuid.chars().any(|c| !(c.is_ascii_hexdigit() || c == '-')) {
            return None;
        }
        Some(BandId::IBeacon { uuid: u128::from_str_radix(&h, 16).ok()?, major, minor })
    }

    /// Eddystone-UID: a 10-byte namespace and a 6-byte instance, as hex in
    /// any case, with or without separators (32 digits in all).
    pub fn eddystone(hex: &str) -> Option<BandId> {
        let b = crate::ble::hex(hex)?;
        let b: [u8; 16] = b.try_into().ok()?;
        Some(BandId::Eddystone { namespace: b[..10].try_into().ok()?, instance: b[10..].try_into().ok()? })
    }

    /// ESPresense's fingerprint: "iBeacon:<uuid with dashes>-<major>-<minor>".
    pub fn from_espresense_id(id: &str) -> Option<BandId> {
        let rest = id.strip_prefix("iBeacon:").or_else(|| id.strip_prefix("ibeacon:"))?;
        let mut parts = rest.rsplitn(3, '-');
        let minor = parts.next()?.parse().ok()?;
        let major = parts.next()?.parse().ok()?;
        BandId::ibeacon(parts.next()?, major, minor)
    }
}

/// A gateway's id as gatewarden keeps it: a MAC in any spelling becomes
/// `AA:BB:CC:DD:EE:FF`, anything else is trimmed and cut at 64 characters
/// (ids come from topics and payloads that anyone on the broker can write).
pub fn gateway_id(raw: &str) -> String {
    match BandId::mac_from_str(raw.trim()) {
        Some(mac) => mac.to_string(),
        None => raw.trim().chars().take(MAX_GATEWAY_ID_CHARS).collect(),
    }
}

/// The longest gateway id kept (see `gateway_id`).
pub const MAX_GATEWAY_ID_CHARS: usize = 64;

impl FromStr for BandId {
    type Err = BandIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let err = |reason| BandIdError { input: s.to_string(), reason };
        let lower = t.to_ascii_lowercase();
        if let Some(rest) = lower.strip_prefix("ibeacon:") {
            // "ibeacon:<uuid>:<major>:<minor>" or ESPresense's "<uuid>-<major>-<minor>"
            let parts: Vec<&str> = rest.split(':').collect();
            return match parts.as_slice() {
                [uuid, major, minor] => {
                    let major = major.parse().map_err(|_| err("major must be 0..65535"))?;
                    let minor = minor.parse().map_err(|_| err("minor must be 0..65535"))?;
                    BandId::ibeacon(uuid, major, minor).ok_or_else(|| err("uuid must be 32 hex digits"))
                }
                [_] => BandId::from_espresense_id(t).ok_or_else(|| err("expected <uuid>-<major>-<minor>")),
                _ => Err(err("expected ibeacon:<uuid>:<major>:<minor>")),
            };
        }
        if let Some(rest) = lower.strip_prefix("eddystone:") {
            return BandId::eddystone(rest).ok_or_else(|| err("an Eddystone-UID has 32 hex digits: namespace (20) and instance (12)"));
        }
        if let Some(rest) = lower.strip_prefix("mac:") {
            return BandId::mac_from_str(rest).ok_or_else(|| err("a MAC has 12 hex digits"));
        }
        BandId::mac_from_str(t).ok_or_else(|| err("a MAC has 12 hex digits"))
    }
}

impl fmt::Display for BandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BandId::Mac(b) => write!(f, "{:02X}:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}", b[0], b[1], b[2], b[3], b[4], b[5]),
            BandId::IBeacon { uuid, major, minor } => {
                let h = format!("{uuid:032x}");
                write!(f, "ibeacon:{}-{}-{}-{}-{}:{major}:{minor}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
            }
            BandId::Eddystone { namespace, instance } => {
                f.write_str("eddystone:")?;
                namespace.iter().try_for_each(|b| write!(f, "{b:02x}"))?;
                f.write_str(":")?;
                instance.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}

impl Serialize for BandId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
impl<'de> Deserialize<'de> for BandId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub name: String,
    pub phone: String,
    #[serde(default)]
    pub relation: String,
}

/// An emergency contact that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("invalid phone number {phone:?} in contact {contact:?}")]
    Phone { phone: String, contact: String },
    #[error("contact {0:?} must be NAME:PHONE[:RELATION]")]
    Shape(String),
}

impl FromStr for Contact {
    type Err = ContactError;
    /// "name:phone[:relation]", e.g. "王丽:13800001111:女儿".
    fn from_str(s: &str) -> Result<Self, ContactError> {
        let parts: Vec<&str> = s.splitn(3, ':').map(str::trim).collect();
        match parts.as_slice() {
            [name, phone, rest @ ..] if !name.is_empty() && is_phone(phone) => {
                Ok(Contact { name: name.to_string(), phone: phone.to_string(), relation: rest.first().map(|r| r.to_string()).unwrap_or_default() })
            }
            [_, phone, ..] => Err(ContactError::Phone { phone: phone.to_string(), contact: s.to_string() }),
            _ => Err(ContactError::Shape(s.to_string())),
        }
    }
}

/// Mainland mobiles (11 digits starting with 1) and landlines with area code.
pub fn is_phone(p: &str) -> bool {
    let digits: String = p.chars().filter(|c| !matches!(c, '-' | ' ' | '+')).collect();
    digits.chars().all(|c| c.is_ascii_digit()) && (7..=15).contains(&digits.len())
}

/// An elder under wristband watch (over 70, living alone, bereaved of an only
/// child, or disabled). Enrolled by administrators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Elder {
    pub id: ElderId,
    pub name: String,
    #[serde(default)]
    pub building: String,
    #[serde(default)]
    pub unit: String,
    #[serde(default)]
    pub room: String,
    /// The grid (网格) decides which escalation ladder is used.
    #[serde(default)]
    pub grid: String,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub bands: Vec<BandId>,
    #[serde(default)]
    pub emergency_contacts: Vec<Contact>,
    /// Why the elder is watched: "over70", "alone", "bereaved", "disabled".
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub notes: String,
    pub enrolled_at: Timestamp,
    /// This elder's own absence threshold in seconds (e.g. 24h for someone
    /// with dementia), before their categories' and the site's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absence_after_secs: Option<u64>,
}

impl Elder {
    pub fn address(&self) -> String {
        [&self.building, &self.unit, &self.room].iter().filter(|s| !s.is_empty()).map(|s| s.as_str()).collect::<Vec<_>>().join("-")
    }
}

/// A planned absence ("staying with her daughter until the 30th").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leave {
    pub id: u64,
    pub elder: ElderId,
    pub from: Timestamp,
    pub until: Timestamp,
    #[serde(default)]
    pub note: String,
    #[serde(default)]
    pub created_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Wristband,
    Face,
    CheckIn,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Wristband => "wristband",
            Source::Face => "face",
            Source::CheckIn => "check_in",
        }
    }
}

/// What the store keeps per elder: the last sighting of any kind, plus the last
/// wristband sighting and battery (to tell "band not worn" and "battery low").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastSeen {
    pub at: Timestamp,
    pub source: Source,
    /// Gateway, room, gate or "check-in by <staff>".
    pub place: String,
    #[serde(default)]
    pub band_at: Option<Timestamp>,
    #[serde(default)]
    pub battery: Option<u8>,
}

/// Last-seen times closer than this to the stored one are not rewritten.
pub const STORE_RESOLUTION: chrono::Duration = chrono::Duration::seconds(60);

fn needs_write(stored: Option<&LastSeen>, now: &LastSeen) -> bool {
    let Some(s) = stored else { return true };
    s.place != now.place
        || s.source != now.source
        || s.battery != now.battery
        // Either way: a clock step can move a last-seen back (`clock_stepped`).
        || (now.at - s.at).abs() >= STORE_RESOLUTION
        || now.band_at.zip(s.band_at).map_or(now.band_at != s.band_at, |(n, o)| (n - o).abs() >= STORE_RESOLUTION)
}

/// A BLE sighting of some wristband, as parsed from a gateway's MQTT message.
#[derive(Debug, Clone, PartialEq)]
pub struct BandSighting {
    /// A tag can be reported by MAC and iBeacon identity at once; either may match.
    pub ids: Vec<BandId>,
    pub gateway: String,
    pub at: Option<Timestamp>,
    pub battery: Option<u8>,
    pub sos: bool,
    pub rssi: Option<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnknownBand {
    pub band: BandId,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub count: u64,
    pub gateway: String,
    #[serde(default)]
    pub rssi: Option<f32>,
}

/// Inputs to the presence machine.
#[derive(Debug, Clone)]
pub enum Observation {
    Band(BandSighting),
    /// A face recognised at a gate (issue #3's hook).
    Face {
        elder: ElderId,
        gate: String,
        at: Timestamp,
    },
    /// A staff visit: "visited, all well".
    CheckIn {
        elder: ElderId,
        by: String,
        note: String,
        at: Timestamp,
    },
}

/// Outputs: what the alert engine needs to hear.
#[derive(Debug, Clone, PartialEq)]
pub enum PresenceEvent {
    Seen {
        elder: ElderId,
        at: Timestamp,
        source: Source,
        place: String,
    },
    Battery {
        elder: ElderId,
        percent: u8,
    },
    Sos {
        elder: ElderId,
        at: Timestamp,
        place: String,
    },
    /// First sighting of a wristband nobody is enrolled with.
    UnknownBand {
        band: BandId,
    },
    /// Any traffic from a BLE gateway shows it is alive.
    GatewayHeard {
        gateway: String,
        at: Timestamp,
    },
    /// An observation named an elder that is not enrolled (face or check-in).
    UnknownElder {
        elder: ElderId,
    },
}

#[derive(Debug)]
pub struct Presence {
    by_band: HashMap<BandId, ElderId>,
    elders: HashSet<ElderId>,
    last: HashMap<ElderId, LastSeen>,
    /// What was last handed to the store, to skip writes that change nothing
    /// that matters (see `needs_write`).
    persisted: HashMap<ElderId, LastSeen>,
    dirty: HashSet<ElderId>,
    unknown: HashMap<BandId, UnknownBand>,
    unknown_dirty: HashSet<BandId>,
    unknown_removed: Vec<BandId>,
    max_unknown: usize,
    max_skew: chrono::Duration,
}

impl Presence {
    pub fn new(max_unknown: usize, max_skew: std::time::Duration) -> Self {
        Self {
            by_band: HashMap::new(),
            elders: HashSet::new(),
            last: HashMap::new(),
            persisted: HashMap::new(),
            dirty: HashSet::new(),
            unknown: HashMap::new(),
            unknown_dirty: HashSet::new(),
            unknown_removed: Vec::new(),
            max_unknown: max_unknown.max(1),
            max_skew: crate::clock::chrono_dur(max_skew),
        }
    }

    /// Load (or refresh) one elder's enrolment and stored last-seen.
    pub fn upsert_elder(&mut self, elder: &Elder, last: Option<LastSeen>) {
        self.remove_elder(&elder.id);
        self.elders.insert(elder.id.clone());
        for b in &elder.bands {
            self.by_band.insert(*b, elder.id.clone());
            if self.unknown.remove(b).is_some() {
                self.unknown_removed.push(*b);
                self.unknown_dirty.remove(b);
            }
        }
        if let Some(l) = last {
            self.persisted.insert(elder.id.clone(), l.clone());
            self.last.insert(elder.id.clone(), l);
        }
    }

    pub fn remove_elder(&mut self, id: &str) {
        self.by_band.retain(|_, e| e != id);
        self.elders.remove(id);
        self.last.remove(id);
        self.persisted.remove(id);
        self.dirty.remove(id);
    }

    pub fn load_unknown(&mut self, u: UnknownBand) {
        self.unknown.insert(u.band, u);
    }

    /// The wall clock was stepped (see `clock::reanchor`): move last-seen
    /// times taken in the old frame, keep none in the future, and mark the
    /// changed ones for writing.
    pub fn clock_stepped(&mut self, since: Timestamp, by: chrono::Duration, now: Timestamp) {
        let fix = |t: Timestamp| crate::clock::reanchor(t, since, by, now);
        for (id, l) in self.last.iter_mut() {
            let before = (l.at, l.band_at);
            l.at = fix(l.at);
            l.band_at = l.band_at.map(fix);
            if before != (l.at, l.band_at) {
                self.dirty.insert(id.clone());
            }
        }
        for (b, u) in self.unknown.iter_mut() {
            let before = u.last_seen;
            u.last_seen = fix(u.last_seen);
            u.first_seen = fix(u.first_seen).min(u.last_seen);
            if before != u.last_seen {
                self.unknown_dirty.insert(*b);
            }
        }
    }

    pub fn last_seen(&self, id: &str) -> Option<&LastSeen> {
        self.last.get(id)
    }

    pub fn elder_count(&self) -> usize {
        self.elders.len()
    }

    /// Changed last-seen records since the previous call (write-behind).
    /// A record whose only change is a newer time within `STORE_RESOLUTION` of
    /// the stored one is not rewritten: against a threshold of days, a minute
    /// of resolution is plenty, and it keeps a chatty band from rewriting the
    /// store every second.
    pub fn take_dirty(&mut self) -> Vec<(ElderId, LastSeen)> {
        let ids: Vec<ElderId> = self.dirty.drain().collect();
        let mut out = Vec::new();
        for id in ids {
            let Some(l) = self.last.get(&id) else { continue };
            if needs_write(self.persisted.get(&id), l) {
                self.persisted.insert(id.clone(), l.clone());
                out.push((id, l.clone()));
            }
        }
        out
    }

    /// The store refused what `take_dirty` and `take_unknown_dirty` handed
    /// out (a full disk): take it back, so the next call hands it out again.
    pub fn unwritten(&mut self, dirty: Vec<(ElderId, LastSeen)>, unknown: Vec<UnknownBand>, removed: Vec<BandId>) {
        for (id, _) in dirty {
            self.persisted.remove(&id);
            self.dirty.insert(id);
        }
        self.unknown_dirty.extend(unknown.into_iter().map(|u| u.band));
        self.unknown_removed.extend(removed);
    }

    /// Changed and evicted unknown-band records since the previous call.
    pub fn take_unknown_dirty(&mut self) -> (Vec<UnknownBand>, Vec<BandId>) {
        let changed = self.unknown_dirty.drain().filter_map(|b| self.unknown.get(&b).cloned()).collect();
        (changed, std::mem::take(&mut self.unknown_removed))
    }

    pub fn handle(&mut self, obs: Observation, now: Timestamp) -> Vec<PresenceEvent> {
        let mut out = Vec::new();
        match obs {
            Observation::Band(s) => {
                // Gateways carry no clock of their own; an own-format timestamp from
                // the future is clamped so a bad gateway clock cannot hide an absence.
                let at = s.at.map(|t| t.min(now + self.max_skew)).unwrap_or(now);
                out.push(PresenceEvent::GatewayHeard { gateway: s.gateway.clone(), at: now });
                let elder = s.ids.iter().find_map(|b| self.by_band.get(b)).cloned();
                let Some(elder) = elder else {
                    self.note_unknown(&s, now, &mut out);
                    return out;
                };
                // The hot path: no key or place is cloned unless it is new.
                if !self.last.contains_key(&elder) {
                    self.last.insert(elder.clone(), LastSeen { at, source: Source::Wristband, place: s.gateway.clone(), band_at: None, battery: None });
                }
                let rec = self.last.get_mut(&elder).expect("inserted above");
                // Out-of-order delivery (QoS 1 redelivery) must never move last-seen back.
                if at >= rec.at {
                    rec.at = at;
                    rec.source = Source::Wristband;
                    if rec.place != s.gateway {
                        rec.place.clone_from(&s.gateway);
                    }
                }
                rec.band_at = Some(rec.band_at.map_or(at, |b| b.max(at)));
                if let Some(b) = s.battery {
                    rec.battery = Some(b);
                    out.push(PresenceEvent::Battery { elder: elder.clone(), percent: b });
                }
                if !self.dirty.contains(&elder) {
                    self.dirty.insert(elder.clone());
                }
                if s.sos {
                    out.push(PresenceEvent::Sos { elder: elder.clone(), at, place: s.gateway.clone() });
                }
                out.insert(1, PresenceEvent::Seen { elder, at, source: Source::Wristband, place: s.gateway });
            }
            Observation::Face { elder, gate, at } => {
                self.seen_directly(elder, at.min(now), Source::Face, gate, &mut out);
            }
            Observation::CheckIn { elder, by, note, at } => {
                let place = if note.is_empty() { format!("check-in by {by}") } else { format!("check-in by {by}: {note}") };
                self.seen_directly(elder, at.min(now), Source::CheckIn, place, &mut out);
            }
        }
        out
    }

    fn seen_directly(&mut self, elder: ElderId, at: Timestamp, source: Source, place: String, out: &mut Vec<PresenceEvent>) {
        if !self.elders.contains(&elder) {
            out.push(PresenceEvent::UnknownElder { elder });
            return;
        }
        let rec = self.last.entry(elder.clone()).or_insert_with(|| LastSeen { at, source, place: place.clone(), band_at: None, battery: None });
        if at >= rec.at {
            rec.at = at;
            rec.source = source;
            rec.place = place.clone();
        }
        self.dirty.insert(elder.clone());
        out.push(PresenceEvent::Seen { elder, at, source, place });
    }

    fn note_unknown(&mut self, s: &BandSighting, now: Timestamp, out: &mut Vec<PresenceEvent>) {
        let Some(band) = s.ids.first().copied() else { return };
        if let Some(u) = self.unknown.get_mut(&band) {
            u.last_seen = now;
            u.count += 1;
            u.gateway.clone_from(&s.gateway);
            u.rssi = s.rssi;
        } else {
            if self.unknown.len() >= self.max_unknown {
                // Bounded: forget the band heard from longest ago.
                if let Some(oldest) = self.unknown.values().min_by_key(|u| u.last_seen).map(|u| u.band) {
                    self.unknown.remove(&oldest);
                    self.unknown_dirty.remove(&oldest);
                    self.unknown_removed.push(oldest);
                }
            }
            self.unknown.insert(band, UnknownBand { band, first_seen: now, last_seen: now, count: 1, gateway: s.gateway.clone(), rssi: s.rssi });
            out.push(PresenceEvent::UnknownBand { band });
        }
        self.unknown_dirty.insert(band);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, TimeZone, Utc};

    fn t(h: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).unwrap() + Duration::hours(h)
    }

    fn elder(id: &str, band: &str) -> Elder {
        Elder {
            id: id.into(),
            name: "张阿姨".into(),
            building: "3".into(),
            unit: "2".into(),
            room: "401".into(),
            grid: "g1".into(),
            phone: None,
            bands: vec![band.parse().unwrap()],
            emergency_contacts: vec![],
            categories: vec![],
            notes: String::new(),
            enrolled_at: t(0),
            absence_after_secs: None,
        }
    }

    fn sighting(id: &str, gw: &str) -> BandSighting {
        BandSighting { ids: vec![id.parse().unwrap()], gateway: gw.into(), at: None, battery: None, sos: false, rssi: None }
    }

    #[test]
    fn band_ids_compare_without_case_or_separators() {
        let a: BandId = "C3:A1:F0:00:11:01".parse().unwrap();
        assert_eq!(a, "c3a1f0001101".parse().unwrap());
        assert_eq!(a, "c3-a1-f0-00-11-01".parse().unwrap());
        let i: BandId = "ibeacon:E5B9E3A6-27E2-4C36-A257-7698DA5FC140:1:101".parse().unwrap();
        assert_eq!(i, BandId::ibeacon("e5b9e3a627e24c36a2577698da5fc140", 1, 101).unwrap());
        assert_eq!(i, "iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-101".parse().unwrap());
        assert_eq!(i.to_string().parse::<BandId>().unwrap(), i);
        assert_eq!(a.to_string(), "C3:A1:F0:00:11:01");
        let e: BandId = "Eddystone:0102030405060708090A-0B0C0D0E0F10".parse().unwrap();
        assert_eq!(e, "eddystone:0102030405060708090a0b0c0d0e0f10".parse().unwrap());
        assert_eq!(e.to_string(), "eddystone:0102030405060708090a:0b0c0d0e0f10");
        assert_eq!(e.to_string().parse::<BandId>().unwrap(), e);
    }

    #[test]
    fn malformed_band_ids_are_rejected_with_a_reason() {
        for bad in
            ["", "c3a1f000110", "zz:a1:f0:00:11:01", "ibeacon:1234:1:2", "ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:99999", "eddystone:0102", "eddystone:zz"]
        {
            let e = bad.parse::<BandId>().unwrap_err();
            assert!(!e.reason.is_empty(), "{bad}");
        }
    }

    #[test]
    fn sighting_updates_last_seen_and_never_moves_it_back() {
        let mut p = Presence::new(10, std::time::Duration::from_secs(300));
        p.upsert_elder(&elder("e1", "c3a1f0001101"), None);
        let ev = p.handle(Observation::Band(sighting("C3:A1:F0:00:11:01", "gate_north")), t(5));
        assert!(ev.contains(&PresenceEvent::Seen { elder: "e1".into(), at: t(5), source: Source::Wristband, place: "gate_north".into() }));
        let mut old = sighting("c3a1f0001101", "building_3");
        old.at = Some(t(1));
        p.handle(Observation::Band(old), t(6));
        let l = p.last_seen("e1").unwrap();
        assert_eq!((l.at, l.place.as_str()), (t(5), "gate_north"));
        assert_eq!(p.take_dirty().len(), 1);
        assert!(p.take_dirty().is_empty());
        // The store refused a batch: handed out again, even though nothing changed since.
        let refused = {
            p.handle(Observation::Band(sighting("c3a1f0001101", "gate_south")), t(60));
            p.take_dirty()
        };
        assert_eq!(refused.len(), 1);
        p.unwritten(refused.clone(), vec![], vec![]);
        assert_eq!(p.take_dirty(), refused, "a refused write is retried");
    }

    #[test]
    fn store_writes_are_skipped_when_only_the_time_moved_by_less_than_a_minute() {
        let mut p = Presence::new(10, std::time::Duration::from_secs(300));
        p.upsert_elder(&elder("e1", "c3a1f0001101"), None);
        p.handle(Observation::Band(sighting("c3a1f0001101", "gw")), t(1));
        assert_eq!(p.take_dirty().len(), 1);
        p.handle(Observation::Band(sighting("c3a1f0001101", "gw")), t(1) + Duration::seconds(30));
        assert!(p.take_dirty().is_empty(), "same place, 30 s later");
        p.handle(Observation::Band(sighting("c3a1f0001101", "gw2")), t(1) + Duration::seconds(40));
        assert_eq!(p.take_dirty().len(), 1, "a new place is written at once");
        p.handle(Observation::Band(sighting("c3a1f0001101", "gw2")), t(1) + Duration::seconds(101));
        assert_eq!(p.take_dirty().len(), 1, "a minute later the time is written");
        assert_eq!(p.last_seen("e1").unwrap().at, t(1) + Duration::seconds(101), "memory is always exact");
    }

    #[test]
    fn future_timestamps_are_clamped_to_now_plus_skew() {
        let mut p = Presence::new(10, std::time::Duration::from_secs(300));
        p.upsert_elder(&elder("e1", "c3a1f0001101"), None);
        let mut s = sighting("c3a1f0001101", "gw");
        s.at = Some(t(100));
        p.handle(Observation::Band(s), t(1));
        assert_eq!(p.last_seen("e1").unwrap().at, t(1) + Duration::minutes(5));
    }

    #[test]
    fn unknown_bands_are_listed_bounded_and_forgotten_on_enrolment() {
        let mut p = Presence::new(2, std::time::Duration::from_secs(300));
        let ev = p.handle(Observation::Band(sighting("aa:00:00:00:00:01", "gw")), t(1));
        assert!(ev.contains(&PresenceEvent::UnknownBand { band: "aa0000000001".parse().unwrap() }));
        p.handle(Observation::Band(sighting("aa:00:00:00:00:02", "gw")), t(2));
        p.handle(Observation::Band(sighting("aa:00:00:00:00:03", "gw")), t(3));
        let (changed, removed) = p.take_unknown_dirty();
        assert_eq!(changed.len(), 2);
        assert_eq!(removed, vec!["aa0000000001".parse().unwrap()]);
        p.upsert_elder(&elder("e9", "aa:00:00:00:00:03"), None);
        let (_, removed) = p.take_unknown_dirty();
        assert_eq!(removed, vec!["aa0000000003".parse().unwrap()]);
    }

    #[test]
    fn face_and_check_in_count_as_sightings_but_unknown_elders_do_not() {
        let mut p = Presence::new(10, std::time::Duration::from_secs(300));
        p.upsert_elder(&elder("e1", "c3a1f0001101"), None);
        p.handle(Observation::CheckIn { elder: "e1".into(), by: "李网格".into(), note: "all well".into(), at: t(3) }, t(3));
        assert_eq!(p.last_seen("e1").unwrap().source, Source::CheckIn);
        let ev = p.handle(Observation::Face { elder: "nobody".into(), gate: "g".into(), at: t(4) }, t(4));
        assert_eq!(ev, vec![PresenceEvent::UnknownElder { elder: "nobody".into() }]);
    }

    #[test]
    fn contacts_parse_and_reject_bad_phones() {
        let c: Contact = "王丽:13800001111:女儿".parse().unwrap();
        assert_eq!(c.relation, "女儿");
        assert!("王丽:call-me".parse::<Contact>().is_err());
        assert!("王丽".parse::<Contact>().is_err());
    }
}
