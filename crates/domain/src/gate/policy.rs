//! Gate decisions as a pure state machine: `handle(input, now) -> actions`.
//! Face is never the only way in (SPC 2021 provisions; 2025 Measures on
//! Facial Recognition Technology): PIN, card and QR open the gate the same way.

use super::log::{Credential, Direction, Entry};
use crate::clock::Timestamp;
use chrono::{Duration, NaiveTime, Timelike};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// Cosine similarity at or above which a face matches an enrolment.
/// How it was chosen, with its TAR and FAR, is in README.md.
pub const DEFAULT_MATCH_THRESHOLD: f32 = 0.363;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PersonKind {
    Resident,
    Visitor,
    /// On the deny list: never opens, and raises an alert.
    Denied,
}

/// Who may pass, as the gate policy sees them. Secrets are kept as keyed hashes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub kind: PersonKind,
    #[serde(default)]
    pub unit: String,
    /// The elder this person is, if they wear a wristband (face → presence).
    #[serde(default)]
    pub elder: Option<String>,
    #[serde(default)]
    pub pin_hash: Option<String>,
    #[serde(default)]
    pub cards: Vec<String>,
    #[serde(default)]
    pub qr_hash: Option<String>,
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}

/// Daily opening hours in China time, "06:00-23:00" (may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hours {
    pub from: NaiveTime,
    pub to: NaiveTime,
}

/// Opening hours that do not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("hours {0:?} must look like 06:00-23:00")]
    Shape(String),
    #[error("bad time {time:?} in {hours:?}")]
    Time { time: String, hours: String },
}

impl std::str::FromStr for Hours {
    type Err = HoursError;
    fn from_str(s: &str) -> Result<Self, HoursError> {
        let (a, b) = s.split_once('-').ok_or_else(|| HoursError::Shape(s.to_string()))?;
        let t = |x: &str| NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|_| HoursError::Time { time: x.to_string(), hours: s.to_string() });
        Ok(Hours { from: t(a)?, to: t(b)? })
    }
}

impl Hours {
    pub fn contains(&self, now: Timestamp) -> bool {
        let local = (now + Duration::hours(8)).time();
        let t = NaiveTime::from_hms_opt(local.hour(), local.minute(), local.second()).expect("valid");
        if self.from <= self.to {
            self.from <= t && t < self.to
        } else {
            t >= self.from || t < self.to
        }
    }
}

#[derive(Debug, Clone)]
pub struct GateRule {
    pub name: String,
    /// Which way people pass this gate's camera and reader.
    pub direction: Direction,
    pub visitor_hours: Option<Hours>,
    pub resident_hours: Option<Hours>,
}

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub match_threshold: f32,
    pub liveness_threshold: f32,
    /// A face decision needs the same result in `agree_m` of the last `agree_n` frames…
    pub agree_m: usize,
    pub agree_n: usize,
    /// …or, for a strong, unambiguous match (score ≥ `strong_score`, ahead of
    /// the next person by ≥ `strong_margin`), in `agree_strong` frames.
    pub agree_strong: usize,
    pub strong_score: f32,
    pub strong_margin: f32,
    /// Liveness is the median over a face's track. A face opens a gate only
    /// once that median covers `liveness_min_frames` frames, and is a spoof
    /// attempt only once it covers `spoof_min_frames`: one low frame is not.
    pub liveness_min_frames: u32,
    pub spoof_min_frames: u32,
    pub cooldown: Duration,
    pub anti_passback: bool,
    /// Spoof attempts at one gate within `spoof_window` before an alert.
    pub spoof_alert_after: u32,
    pub spoof_window: Duration,
    /// Wrong PINs at one gate before it stops taking PINs for `pin_lockout`.
    pub pin_max_failures: u32,
    pub pin_lockout: Duration,
    /// Wrong PINs across every keypad of the site within `pin_site_window`
    /// before PIN entry stops at every gate for `pin_lockout`, with an alert:
    /// a guesser who spreads tries over the keypads stays under each one's limit.
    pub pin_site_max_failures: u32,
    pub pin_site_window: Duration,
    /// A plate is confirmed after this many identical reads, or one read this sure.
    pub plate_votes: usize,
    pub plate_sure: f32,
    /// A read whose province character is less sure than this needs more frames.
    pub plate_province_min: f32,
    /// A confirmed car that is unseen this long has left; its return is a new decision.
    pub plate_gone_after: Duration,
    /// Tolerate an OCR slip in the province character (off: a different province is a different car).
    pub tolerate_province: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            match_threshold: DEFAULT_MATCH_THRESHOLD,
            liveness_threshold: 0.5,
            agree_m: 3,
            agree_n: 5,
            agree_strong: 2,
            strong_score: 0.5,
            strong_margin: 0.1,
            liveness_min_frames: 2,
            spoof_min_frames: 5,
            cooldown: Duration::seconds(10),
            anti_passback: false,
            spoof_alert_after: 3,
            spoof_window: Duration::minutes(10),
            pin_max_failures: 5,
            pin_lockout: Duration::minutes(5),
            pin_site_max_failures: 15,
            pin_site_window: Duration::minutes(10),
            plate_votes: 3,
            plate_sure: 0.97,
            plate_province_min: 0.8,
            plate_gone_after: Duration::seconds(30),
            tolerate_province: false,
        }
    }
}

/// One face in one frame, after recognition.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceSeen {
    /// Best match, if its score reached the threshold.
    pub person: Option<String>,
    pub score: f32,
    /// The median liveness over the face's track so far…
    pub liveness: f32,
    /// …and how many frames it covers.
    pub liveness_frames: u32,
    /// How far `score` is ahead of the best other enrolled person.
    pub margin: f32,
    /// The camera's track for this face (the same id while it stays in view).
    pub track: Option<u64>,
}

impl Settings {
    /// A match sure enough to decide on `agree_strong` frames.
    pub fn is_strong(&self, score: f32, margin: f32) -> bool {
        score >= self.strong_score.max(self.match_threshold) && margin >= self.strong_margin
    }
}

#[derive(Debug, Clone)]
pub enum Input {
    /// The faces (already quality-gated) in one camera frame at a gate.
    Frame { gate: String, faces: Vec<FaceSeen> },
    /// PIN from a keypad, card number from a reader, or QR payload from the camera.
    Credential { gate: String, kind: Credential, secret_hash: String },
    /// A plate read in one frame (already GA 36-shaped), with its OCR
    /// confidence and its province character's own.
    Plate { gate: String, text: String, confidence: f32, province_confidence: f32 },
}

/// A vehicle allowed through the barrier, and whose it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vehicle {
    pub plate: String,
    pub owner: String,
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum GateAlert {
    SpoofAttempts {
        gate: String,
        count: u32,
    },
    DenyListed {
        gate: String,
        person: String,
    },
    PinLockout {
        gate: String,
    },
    /// Wrong PINs across the site's keypads: someone is guessing; PIN entry is locked everywhere.
    PinGuessing {
        failures: u32,
        gates: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Open {
        gate: String,
        person: String,
    },
    Log(Entry),
    /// A face-recognised elder counts as a presence sighting.
    ElderSeen {
        elder: String,
        gate: String,
    },
    /// Keep a snapshot of the unknown face (for `unknown_retention`).
    Snapshot {
        gate: String,
    },
    Alert(GateAlert),
}

#[derive(Debug, Clone, PartialEq)]
enum Vote {
    /// Person, score, liveness, and whether the match is strong.
    Person(String, f32, f32, bool),
    Unknown(f32),
    Spoof(Option<String>, f32),
}

#[derive(Default)]
struct GateState {
    votes: VecDeque<Vote>,
    last_decision: HashMap<String, Timestamp>,
    spoofs: VecDeque<Timestamp>,
    pin_failures: VecDeque<Timestamp>,
    pin_locked_until: Option<Timestamp>,
    /// The camera track last decided as a person, and when.
    decided_track: Option<(u64, Timestamp)>,
}

/// How long the track of a person already decided at a gate is remembered.
const DECIDED_TRACK_MEMORY: Duration = Duration::minutes(2);

pub struct Policy {
    pub settings: Settings,
    gates: HashMap<String, GateRule>,
    people: HashMap<String, Person>,
    by_secret: HashMap<(Credential, String), String>,
    state: HashMap<String, GateState>,
    /// Anti-passback: the direction of each person's last passage.
    last_direction: HashMap<String, Direction>,
    /// Wrong PINs across the site (time, gate), and the site-wide lock.
    site_pin_failures: VecDeque<(Timestamp, String)>,
    site_pin_locked_until: Option<Timestamp>,
    vehicles: HashMap<String, Vehicle>,
    voter: super::plate::Voter,
}

impl Policy {
    pub fn new(settings: Settings, gates: Vec<GateRule>) -> Self {
        Policy {
            settings,
            gates: gates.into_iter().map(|g| (g.name.clone(), g)).collect(),
            people: HashMap::new(),
            by_secret: HashMap::new(),
            state: HashMap::new(),
            last_direction: HashMap::new(),
            site_pin_failures: VecDeque::new(),
            site_pin_locked_until: None,
            vehicles: HashMap::new(),
            voter: super::plate::Voter::new(settings.plate_votes, settings.plate_sure, settings.plate_gone_after)
                .with_province_min(settings.plate_province_min),
        }
    }

    pub fn upsert_vehicle(&mut self, v: Vehicle) {
        self.vehicles.insert(v.plate.clone(), v);
    }

    pub fn remove_vehicle(&mut self, plate: &str) {
        self.vehicles.remove(plate);
    }

    pub fn upsert(&mut self, p: Person) {
        // Replace credentials, keep vehicles (they are managed on their own).
        self.by_secret.retain(|_, v| *v != p.id);
        if let Some(h) = &p.pin_hash {
            self.by_secret.insert((Credential::Pin, h.clone()), p.id.clone());
        }
        if let Some(h) = &p.qr_hash {
            self.by_secret.insert((Credential::Qr, h.clone()), p.id.clone());
        }
        for c in &p.cards {
            self.by_secret.insert((Credential::Card, c.clone()), p.id.clone());
        }
        self.people.insert(p.id.clone(), p);
    }

    pub fn remove(&mut self, id: &str) {
        self.vehicles.retain(|_, v| v.owner != id);
        self.people.remove(id);
        self.by_secret.retain(|_, v| v != id);
        self.last_direction.remove(id);
    }

    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Frame { gate, faces } => self.frame(gate, faces, now, &mut out),
            Input::Credential { gate, kind, secret_hash } => self.credential(gate, kind, secret_hash, now, &mut out),
            Input::Plate { gate, text, confidence, province_confidence } => self.plate(gate, text, confidence, province_confidence, now, &mut out),
        }
        out
    }

    fn plate(&mut self, gate: String, text: String, confidence: f32, province_confidence: f32, now: Timestamp, out: &mut Vec<Action>) {
        if !self.voter.read(&gate, &text, confidence, province_confidence, now) {
            return;
        }
        let m = super::plate::match_plate(&text, self.vehicles.keys(), self.settings.tolerate_province);
        let Some(m) = m else {
            out.push(self.log(&gate, Credential::Plate, None, "unknown", None, None, false, &format!("unknown vehicle {text}"), now));
            return;
        };
        let v = self.vehicles[&m.plate].clone();
        if v.valid_until.is_some_and(|u| now >= u) {
            out.push(self.log(
                &gate,
                Credential::Plate,
                Some(v.owner.clone()),
                "vehicle",
                None,
                None,
                false,
                &format!("vehicle {} registration expired", v.plate),
                now,
            ));
            return;
        }
        let start = out.len();
        self.decide(&gate, &v.owner, Credential::Plate, Some(confidence), None, now, out);
        // Say which plate, and whether the match was tolerant, in the log.
        for a in &mut out[start..] {
            if let Action::Log(e) = a {
                e.reason = if m.tolerant {
                    format!("{} · plate {} (tolerant match: read {text})", e.reason, v.plate)
                } else {
                    format!("{} · plate {}", e.reason, v.plate)
                };
            }
        }
    }

    fn frame(&mut self, gate: String, faces: Vec<FaceSeen>, now: Timestamp, out: &mut Vec<Action>) {
        let s = self.settings;
        // The nearest face decides: the caller puts the largest first.
        let nearest = faces.first();
        let vote = nearest.and_then(|f| {
            if f.liveness < s.liveness_threshold {
                // Judged over the track: until it covers enough frames, a low
                // median is a pending judgement, not a spoof attempt.
                (f.liveness_frames >= s.spoof_min_frames).then(|| Vote::Spoof(f.person.clone(), f.liveness))
            } else {
                Some(match &f.person {
                    Some(p) if f.score >= s.match_threshold => Vote::Person(p.clone(), f.score, f.liveness, s.is_strong(f.score, f.margin)),
                    _ => Vote::Unknown(f.liveness),
                })
            }
        });
        let live_frames = nearest.map_or(0, |f| f.liveness_frames);
        let track = nearest.and_then(|f| f.track);
        let st = self.state.entry(gate.clone()).or_default();
        // The person just decided, still in view as they pass under the
        // camera (closer, turned, cut by the frame's edge): their track
        // falling below the match threshold is not an unknown face, and
        // their photo is not filed as one. Someone behind them is another track.
        let decided = st.decided_track.is_some_and(|(t, at)| track == Some(t) && now - at < DECIDED_TRACK_MEMORY);
        if decided && matches!(vote, Some(Vote::Unknown(_) | Vote::Spoof(..))) {
            return;
        }
        // A frame without a face (or with a pending judgement) says nothing;
        // agreement counts frames with a vote.
        let Some(vote) = vote else { return };
        st.votes.push_back(vote.clone());
        while st.votes.len() > s.agree_n {
            st.votes.pop_front();
        }
        let same = |a: &Vote, b: &Vote| match (a, b) {
            (Vote::Person(x, ..), Vote::Person(y, ..)) => x == y,
            (Vote::Unknown(_), Vote::Unknown(_)) => true,
            (Vote::Spoof(..), Vote::Spoof(..)) => true,
            _ => false,
        };
        let agreeing = st.votes.iter().filter(|v| same(v, &vote)).count();
        let needed = match &vote {
            // A strong, live, unambiguous match decides sooner, once its
            // liveness median covers enough frames.
            Vote::Person(_, _, _, true) if live_frames >= s.liveness_min_frames => s.agree_strong.clamp(1, s.agree_m.max(1)),
            Vote::Person(..) => s.agree_m.max(s.agree_strong),
            _ => s.agree_m,
        };
        if agreeing < needed || (matches!(vote, Vote::Person(..)) && live_frames < s.liveness_min_frames) {
            return;
        }
        st.votes.clear();
        let key = match &vote {
            Vote::Person(p, ..) => p.clone(),
            Vote::Unknown(_) => "\u{0}unknown".into(),
            Vote::Spoof(..) => "\u{0}spoof".into(),
        };
        // Someone standing in front of the camera is one decision, not one per frame.
        if st.last_decision.get(&key).is_some_and(|t| now - *t < s.cooldown) {
            return;
        }
        st.last_decision.insert(key, now);
        if let (Vote::Person(..), Some(t)) = (&vote, track) {
            st.decided_track = Some((t, now));
        }
        match vote {
            Vote::Person(p, score, live, _) => self.decide(&gate, &p, Credential::Face, Some(score), Some(live), now, out),
            Vote::Unknown(live) => {
                out.push(Action::Snapshot { gate: gate.clone() });
                out.push(self.log(&gate, Credential::Face, None, "unknown", None, Some(live), false, "unknown face", now));
            }
            Vote::Spoof(p, live) => {
                let st = self.state.get_mut(&gate).expect("gate state");
                st.spoofs.push_back(now);
                while st.spoofs.front().is_some_and(|t| now - *t > s.spoof_window) {
                    st.spoofs.pop_front();
                }
                let count = st.spoofs.len() as u32;
                out.push(self.log(&gate, Credential::Face, p, "unknown", None, Some(live), false, "liveness check failed (spoof attempt)", now));
                if count >= s.spoof_alert_after {
                    out.push(Action::Alert(GateAlert::SpoofAttempts { gate: gate.clone(), count }));
                }
            }
        }
    }

    fn credential(&mut self, gate: String, kind: Credential, secret_hash: String, now: Timestamp, out: &mut Vec<Action>) {
        let s = self.settings;
        let st = self.state.entry(gate.clone()).or_default();
        if kind == Credential::Pin && st.pin_locked_until.is_some_and(|t| now < t) {
            out.push(self.log(&gate, kind, None, "unknown", None, None, false, "PIN entry locked after repeated wrong PINs", now));
            return;
        }
        if kind == Credential::Pin && self.site_pin_locked_until.is_some_and(|t| now < t) {
            out.push(self.log(&gate, kind, None, "unknown", None, None, false, "PIN entry locked at every gate: wrong PINs across the site", now));
            return;
        }
        match self.by_secret.get(&(kind, secret_hash)).cloned() {
            Some(p) => self.decide(&gate, &p, kind, None, None, now, out),
            None => {
                if kind == Credential::Pin {
                    st.pin_failures.push_back(now);
                    while st.pin_failures.front().is_some_and(|t| now - *t > s.pin_lockout) {
                        st.pin_failures.pop_front();
                    }
                    if st.pin_failures.len() as u32 >= s.pin_max_failures {
                        st.pin_locked_until = Some(now + s.pin_lockout);
                        st.pin_failures.clear();
                        out.push(Action::Alert(GateAlert::PinLockout { gate: gate.clone() }));
                    }
                    let site = &mut self.site_pin_failures;
                    site.push_back((now, gate.clone()));
                    // Bounded by the window, and by the limit itself.
                    while site.front().is_some_and(|(t, _)| now - *t > s.pin_site_window) || site.len() > s.pin_site_max_failures.max(1) as usize {
                        site.pop_front();
                    }
                    if site.len() as u32 >= s.pin_site_max_failures.max(1) {
                        let gates = site.iter().map(|(_, g)| g).collect::<std::collections::HashSet<_>>().len();
                        self.site_pin_locked_until = Some(now + s.pin_lockout);
                        out.push(Action::Alert(GateAlert::PinGuessing { failures: site.len() as u32, gates }));
                        site.clear();
                    }
                }
                out.push(self.log(&gate, kind, None, "unknown", None, None, false, &format!("unknown {}", kind.as_str()), now));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn decide(&mut self, gate: &str, id: &str, cred: Credential, score: Option<f32>, live: Option<f32>, now: Timestamp, out: &mut Vec<Action>) {
        let Some(p) = self.people.get(id).cloned() else {
            out.push(self.log(gate, cred, Some(id.into()), "unknown", score, live, false, "person no longer enrolled", now));
            return;
        };
        let rule = self.gates.get(gate).cloned();
        let direction = rule.as_ref().map_or(Direction::In, |r| r.direction);
        let kind = match (p.kind, &p.elder) {
            (PersonKind::Resident, Some(_)) => "elder",
            (PersonKind::Resident, None) => "resident",
            (PersonKind::Visitor, _) => "visitor",
            (PersonKind::Denied, _) => "denied",
        };
        if let (Some(elder), Credential::Face) = (&p.elder, cred) {
            // Seen at the gate is seen in the compound, whatever the gate decides.
            out.push(Action::ElderSeen { elder: elder.clone(), gate: gate.to_string() });
        }
        let refuse = |reason: String| Some(reason);
        let verdict: Option<String> = match p.kind {
            PersonKind::Denied => {
                out.push(Action::Alert(GateAlert::DenyListed { gate: gate.into(), person: p.id.clone() }));
                refuse("on the deny list".into())
            }
            PersonKind::Visitor => match (p.valid_from, p.valid_until) {
                (Some(f), _) if now < f => refuse("visitor pass not yet valid".into()),
                (_, Some(u)) if now >= u => refuse("visitor pass expired".into()),
                (_, None) => refuse("visitor pass has no end".into()),
                _ if rule.as_ref().and_then(|r| r.visitor_hours).is_some_and(|h| !h.contains(now)) => refuse("outside visiting hours".into()),
                _ => None,
            },
            PersonKind::Resident if rule.as_ref().and_then(|r| r.resident_hours).is_some_and(|h| !h.contains(now)) => {
                refuse("outside this gate's hours".into())
            }
            PersonKind::Resident => None,
        };
        let verdict = verdict.or_else(|| {
            (self.settings.anti_passback && self.last_direction.get(&p.id) == Some(&direction))
                .then(|| format!("anti-passback: already passed {direction:?}").to_lowercase())
        });
        match verdict {
            Some(reason) => out.push(self.log(gate, cred, Some(p.id.clone()), kind, score, live, false, &reason, now)),
            None => {
                self.last_direction.insert(p.id.clone(), direction);
                out.push(Action::Open { gate: gate.into(), person: p.id.clone() });
                out.push(self.log(gate, cred, Some(p.id.clone()), kind, score, live, true, kind, now));
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        gate: &str,
        cred: Credential,
        person: Option<String>,
        kind: &str,
        score: Option<f32>,
        live: Option<f32>,
        opened: bool,
        reason: &str,
        now: Timestamp,
    ) -> Action {
        Action::Log(Entry {
            at: now,
            gate: gate.into(),
            direction: self.gates.get(gate).map_or(Direction::In, |r| r.direction),
            credential: cred,
            person,
            person_kind: kind.into(),
            score,
            liveness: live,
            opened,
            reason: reason.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn t(s: i64) -> Timestamp {
        Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap() + Duration::seconds(s)
    }
    fn resident(id: &str) -> Person {
        Person {
            id: id.into(),
            name: id.into(),
            kind: PersonKind::Resident,
            unit: "3-401".into(),
            elder: None,
            pin_hash: Some(format!("pin-{id}")),
            cards: vec![format!("card-{id}")],
            qr_hash: None,
            valid_from: None,
            valid_until: None,
        }
    }
    fn policy() -> Policy {
        let mut p =
            Policy::new(Settings::default(), vec![GateRule { name: "north".into(), direction: Direction::In, visitor_hours: None, resident_hours: None }]);
        p.upsert(resident("R1"));
        p
    }
    fn face(person: Option<&str>, score: f32, live: f32) -> Input {
        Input::Frame {
            gate: "north".into(),
            faces: vec![FaceSeen { person: person.map(Into::into), score, liveness: live, liveness_frames: 5, margin: 0.0, track: None }],
        }
    }
    fn opens(a: &[Action]) -> usize {
        a.iter().filter(|x| matches!(x, Action::Open { .. })).count()
    }
    fn logs(a: &[Action]) -> Vec<Entry> {
        a.iter().filter_map(|x| if let Action::Log(e) = x { Some(e.clone()) } else { None }).collect()
    }

    #[test]
    fn one_lucky_frame_never_opens_but_m_of_n_agreeing_frames_do() {
        let mut p = policy();
        assert_eq!(opens(&p.handle(face(Some("R1"), 0.6, 0.9), t(0))), 0);
        assert_eq!(opens(&p.handle(face(None, 0.1, 0.9), t(0))), 0);
        assert_eq!(opens(&p.handle(face(Some("R1"), 0.6, 0.9), t(0))), 0);
        let a = p.handle(face(Some("R1"), 0.6, 0.9), t(0));
        assert_eq!(opens(&a), 1);
        assert!(logs(&a)[0].opened);
    }

    fn tracked(person: Option<&str>, score: f32, margin: f32, live: f32, frames: u32) -> Input {
        Input::Frame {
            gate: "north".into(),
            faces: vec![FaceSeen { person: person.map(Into::into), score, liveness: live, liveness_frames: frames, margin, track: None }],
        }
    }

    fn on_track(track: u64, person: Option<&str>, score: f32, live: f32) -> Input {
        Input::Frame {
            gate: "north".into(),
            faces: vec![FaceSeen { person: person.map(Into::into), score, liveness: live, liveness_frames: 5, margin: 0.3, track: Some(track) }],
        }
    }

    #[test]
    fn a_resident_let_in_is_not_logged_as_an_unknown_face_as_they_pass_but_a_stranger_behind_them_is() {
        let mut p = policy();
        let opened: usize = (0..3).map(|_| opens(&p.handle(on_track(7, Some("R1"), 0.42, 0.9), t(0)))).sum();
        assert_eq!(opened, 1);
        // R1 walks under the camera: the same track now scores below the threshold.
        for i in 0..6 {
            let a = p.handle(on_track(7, None, 0.3, 0.9), t(1 + i));
            assert!(a.is_empty(), "frame {i} of the decided track did something: {a:?}");
        }
        // A stranger right behind them is a new track, and is logged with a snapshot.
        let a: Vec<Action> = (0..3).flat_map(|i| p.handle(on_track(8, None, 0.2, 0.9), t(8 + i))).collect();
        assert!(a.iter().any(|x| matches!(x, Action::Snapshot { .. })));
        assert_eq!(logs(&a).iter().filter(|e| e.reason == "unknown face" && !e.opened).count(), 1);
        // Long after, the old track id (a restarted vision process counts from 1 again) is a face like any other.
        let later: Vec<Action> = (0..3).flat_map(|i| p.handle(on_track(7, None, 0.2, 0.9), t(400 + i))).collect();
        assert_eq!(logs(&later).iter().filter(|e| e.reason == "unknown face").count(), 1);
    }

    #[test]
    fn a_strong_live_unambiguous_match_decides_on_two_frames_and_a_borderline_one_needs_three() {
        let mut p = policy();
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.72, 0.4, 0.9, 1), t(0))), 0, "one frame never decides");
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.72, 0.4, 0.9, 2), t(0))), 1, "strong: the second frame opens");
        // Borderline score: three agreeing frames, as before.
        let mut p = policy();
        for f in 1..=2 {
            assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.42, 0.4, 0.9, f), t(0))), 0);
        }
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.42, 0.4, 0.9, 3), t(0))), 1);
        // A high score with someone else close behind is ambiguous: three frames.
        let mut p = policy();
        for f in 1..=2 {
            assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.72, 0.05, 0.9, f), t(0))), 0);
        }
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.72, 0.05, 0.9, 3), t(0))), 1);
    }

    #[test]
    fn a_strong_match_waits_until_its_liveness_covers_enough_frames() {
        let mut p = policy();
        p.settings.liveness_min_frames = 3;
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.8, 0.5, 0.9, 1), t(0))), 0);
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.8, 0.5, 0.9, 2), t(0))), 0, "agreeing, but liveness covers 2 frames");
        assert_eq!(opens(&p.handle(tracked(Some("R1"), 0.8, 0.5, 0.9, 3), t(0))), 1);
    }

    #[test]
    fn one_low_liveness_frame_is_not_a_spoof_attempt_but_a_low_median_over_the_track_is() {
        let mut p = policy();
        // A genuine person with one bad frame: the median recovers, the gate opens, no spoof is logged.
        let mut all = p.handle(tracked(Some("R1"), 0.72, 0.4, 0.2, 1), t(0));
        all.extend(p.handle(tracked(Some("R1"), 0.72, 0.4, 0.2, 2), t(0)));
        all.extend(p.handle(tracked(Some("R1"), 0.72, 0.4, 0.8, 3), t(0)));
        all.extend(p.handle(tracked(Some("R1"), 0.72, 0.4, 0.8, 4), t(0)));
        assert!(logs(&all).iter().all(|e| !e.reason.contains("spoof")), "{:?}", logs(&all));
        assert_eq!(opens(&all), 1);
        // A photo: the median stays low over the spoof frames and more.
        let mut p = policy();
        let mut all = Vec::new();
        for f in 1..=7 {
            all.extend(p.handle(tracked(Some("R1"), 0.72, 0.4, 0.1, f), t(0)));
        }
        assert_eq!(opens(&all), 0);
        assert_eq!(logs(&all).iter().filter(|e| e.reason.contains("spoof")).count(), 1);
    }

    #[test]
    fn someone_standing_at_the_camera_opens_once_per_cooldown() {
        let mut p = policy();
        let mut n = 0;
        for i in 0..50 {
            n += opens(&p.handle(face(Some("R1"), 0.6, 0.9), t(i / 10)));
        }
        assert_eq!(n, 1, "5 seconds at 10 fps");
        for _ in 0..3 {
            n += opens(&p.handle(face(Some("R1"), 0.6, 0.9), t(30)));
        }
        assert_eq!(n, 2, "back after the cooldown");
    }

    #[test]
    fn a_photo_held_up_is_denied_logged_and_repeated_attempts_alert() {
        let mut p = policy();
        let mut all = Vec::new();
        for i in 0..3 {
            for _ in 0..3 {
                all.extend(p.handle(face(Some("R1"), 0.7, 0.1), t(i * 60)));
            }
        }
        assert_eq!(opens(&all), 0);
        assert_eq!(logs(&all).iter().filter(|e| e.reason.contains("spoof")).count(), 3);
        assert!(all.contains(&Action::Alert(GateAlert::SpoofAttempts { gate: "north".into(), count: 3 })));
    }

    #[test]
    fn unknown_faces_are_denied_with_a_snapshot() {
        let mut p = policy();
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(p.handle(face(None, 0.2, 0.9), t(0)));
        }
        assert_eq!(opens(&all), 0);
        assert!(all.contains(&Action::Snapshot { gate: "north".into() }));
        assert_eq!(logs(&all)[0].reason, "unknown face");
    }

    #[test]
    fn pin_card_and_qr_open_like_a_face() {
        let mut p = policy();
        let mut v = resident("V1");
        v.kind = PersonKind::Visitor;
        v.qr_hash = Some("qr-V1".into());
        v.valid_from = Some(t(0));
        v.valid_until = Some(t(4 * 3600));
        p.upsert(v);
        for (kind, secret) in [(Credential::Pin, "pin-R1"), (Credential::Card, "card-R1"), (Credential::Qr, "qr-V1")] {
            let a = p.handle(Input::Credential { gate: "north".into(), kind, secret_hash: secret.into() }, t(10));
            assert_eq!(opens(&a), 1, "{kind:?}");
            assert_eq!(logs(&a)[0].credential, kind);
        }
    }

    #[test]
    fn a_visitor_pass_works_inside_its_window_and_not_after() {
        let mut p = policy();
        let mut v = resident("V1");
        v.kind = PersonKind::Visitor;
        v.valid_from = Some(t(0));
        v.valid_until = Some(t(4 * 3600));
        p.upsert(v);
        let pin = |p: &mut Policy, at| p.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: "pin-V1".into() }, at);
        assert_eq!(opens(&pin(&mut p, t(-10))), 0);
        assert_eq!(opens(&pin(&mut p, t(3600))), 1);
        let a = pin(&mut p, t(4 * 3600));
        assert_eq!(opens(&a), 0);
        assert_eq!(logs(&a)[0].reason, "visitor pass expired");
    }

    #[test]
    fn a_confirmed_plate_lifts_the_barrier_once_and_tolerant_matches_are_logged() {
        let mut p = policy();
        p.upsert_vehicle(Vehicle { plate: "川A35D98".into(), owner: "R1".into(), valid_until: None });
        let read =
            |p: &mut Policy, text: &str, at| p.handle(Input::Plate { gate: "north".into(), text: text.into(), confidence: 0.9, province_confidence: 0.95 }, at);
        let mut all = Vec::new();
        for i in 0..20 {
            all.extend(read(&mut p, "川A3SD98", t(i)));
        }
        assert_eq!(opens(&all), 1, "a car waiting at the barrier");
        let l = logs(&all);
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].credential, Credential::Plate);
        assert!(l[0].reason.contains("tolerant match: read 川A3SD98"), "{}", l[0].reason);
        let mut all = Vec::new();
        for i in 0..3 {
            all.extend(read(&mut p, "渝A35D98", t(100 + i)));
        }
        assert_eq!(opens(&all), 0, "another province is another car");
        assert_eq!(logs(&all)[0].reason, "unknown vehicle 渝A35D98");
    }

    #[test]
    fn repeated_wrong_pins_lock_the_keypad_and_alert() {
        let mut p = policy();
        let mut all = Vec::new();
        for i in 0..5 {
            all.extend(p.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: format!("guess{i}") }, t(i)));
        }
        assert!(all.contains(&Action::Alert(GateAlert::PinLockout { gate: "north".into() })));
        let a = p.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(10));
        assert_eq!(opens(&a), 0, "locked even for a right PIN");
        let a = p.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(400));
        assert_eq!(opens(&a), 1);
    }

    #[test]
    fn wrong_pins_spread_over_the_keypads_lock_every_gate_and_alert() {
        let mut p = policy();
        let gates = ["north", "south", "east", "west"];
        let mut all = Vec::new();
        // Four a gate: under each keypad's limit of five.
        for i in 0..15 {
            let gate = gates[i % 4];
            all.extend(p.handle(Input::Credential { gate: gate.into(), kind: Credential::Pin, secret_hash: format!("guess{i}") }, t(i as i64)));
        }
        assert!(!all.iter().any(|a| matches!(a, Action::Alert(GateAlert::PinLockout { .. }))), "no keypad reached its own limit");
        assert!(all.contains(&Action::Alert(GateAlert::PinGuessing { failures: 15, gates: 4 })), "{all:?}");
        for gate in gates {
            let a = p.handle(Input::Credential { gate: gate.into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(20));
            assert_eq!(opens(&a), 0, "locked at {gate} even for a right PIN");
            assert!(logs(&a)[0].reason.contains("every gate"));
        }
        // Cards still work: only PIN entry is locked.
        let a = p.handle(Input::Credential { gate: "north".into(), kind: Credential::Card, secret_hash: "card-R1".into() }, t(21));
        assert_eq!(opens(&a), 1);
        let a = p.handle(Input::Credential { gate: "south".into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(400));
        assert_eq!(opens(&a), 1, "open again after the lockout");
        // Slow guessing, under the site rate, never trips it.
        let mut slow = Vec::new();
        for i in 0..40 {
            slow.extend(
                p.handle(Input::Credential { gate: gates[i % 4].into(), kind: Credential::Pin, secret_hash: format!("slow{i}") }, t(1000 + i as i64 * 60)),
            );
        }
        assert!(!slow.iter().any(|a| matches!(a, Action::Alert(GateAlert::PinGuessing { .. }))));
    }

    #[test]
    fn deny_list_elders_anti_passback_and_hours() {
        let mut p = policy();
        let mut d = resident("X1");
        d.kind = PersonKind::Denied;
        p.upsert(d);
        let a = p.handle(Input::Credential { gate: "north".into(), kind: Credential::Card, secret_hash: "card-X1".into() }, t(0));
        assert_eq!(opens(&a), 0);
        assert!(a.contains(&Action::Alert(GateAlert::DenyListed { gate: "north".into(), person: "X1".into() })));

        let mut e = resident("R2");
        e.elder = Some("E7".into());
        p.upsert(e);
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(p.handle(face(Some("R2"), 0.8, 0.95), t(0)));
        }
        assert!(all.contains(&Action::ElderSeen { elder: "E7".into(), gate: "north".into() }));
        assert_eq!(logs(&all)[0].person_kind, "elder");

        p.settings.anti_passback = true;
        let card = |p: &mut Policy, at| opens(&p.handle(Input::Credential { gate: "north".into(), kind: Credential::Card, secret_hash: "card-R1".into() }, at));
        assert_eq!(card(&mut p, t(100)), 1);
        assert_eq!(card(&mut p, t(200)), 0, "in twice without going out");

        let mut q = Policy::new(
            Settings::default(),
            vec![GateRule { name: "north".into(), direction: Direction::In, visitor_hours: None, resident_hours: Some("06:00-23:00".parse().unwrap()) }],
        );
        q.upsert(resident("R1"));
        // 02:00 UTC is 10:00 China time; 16:00 UTC is midnight.
        assert_eq!(opens(&q.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(0))), 1);
        assert_eq!(opens(&q.handle(Input::Credential { gate: "north".into(), kind: Credential::Pin, secret_hash: "pin-R1".into() }, t(14 * 3600))), 0);
    }
}
