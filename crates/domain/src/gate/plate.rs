//! Licence plates as the gate sees them: the GA 36 shape check, tolerant
//! matching against enrolled plates, and voting over frames. Pure logic.

use crate::clock::Timestamp;
use chrono::Duration;
use std::collections::HashMap;

pub const PROVINCES: &str = "京津冀晋蒙辽吉黑沪苏浙皖闽赣鲁豫鄂湘粤桂琼渝川贵云藏陕甘青宁新";
pub const SUFFIXES: &str = "学警港澳挂使领";

/// The plate's background colour (GA 36): blue for small cars, green for new
/// energy, yellow for large vehicles (often double-layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Blue,
    Green,
    Yellow,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlateError {
    #[error("a plate starts with a province character ({PROVINCES}); {0:?} is not one")]
    Province(char),
    #[error("the second character is the issuing authority's letter A–Z (not I or O); {0:?} is not")]
    Authority(char),
    #[error("a plate has 7 characters (8 for new-energy plates); this one has {0}")]
    Length(usize),
    #[error("{0:?} may not appear in the serial: only A–Z (not I or O) and 0–9")]
    Serial(char),
    #[error("a new-energy plate's 6-character serial starts or ends with D or F")]
    NewEnergy,
    #[error("{0:?} is only allowed as the last character (学 警 港 澳 挂 使 领)")]
    Suffix(char),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlateKind {
    Regular,
    NewEnergy,
    Special(char),
}

fn serial_char(c: char) -> bool {
    (c.is_ascii_uppercase() && c != 'I' && c != 'O') || c.is_ascii_digit()
}

/// GA 36-2018 shape: province, authority letter, then 5 serial characters,
/// 6 for new-energy plates, or 4 plus one of 学警港澳挂使领.
pub fn validate(plate: &str) -> Result<PlateKind, PlateError> {
    let c: Vec<char> = plate.trim().chars().collect();
    let Some(&p) = c.first() else { return Err(PlateError::Length(0)) };
    if !PROVINCES.contains(p) {
        return Err(PlateError::Province(p));
    }
    match c.get(1) {
        Some(&a) if a.is_ascii_uppercase() && a != 'I' && a != 'O' => {}
        Some(&a) => return Err(PlateError::Authority(a)),
        None => return Err(PlateError::Length(c.len())),
    }
    let serial = &c[2..];
    for (i, &ch) in serial.iter().enumerate() {
        if SUFFIXES.contains(ch) {
            if i + 1 != serial.len() || serial.len() != 5 {
                return Err(PlateError::Suffix(ch));
            }
        } else if !serial_char(ch) {
            return Err(PlateError::Serial(ch));
        }
    }
    match serial.len() {
        5 => Ok(match serial[4] {
            s if SUFFIXES.contains(s) => PlateKind::Special(s),
            _ => PlateKind::Regular,
        }),
        6 if matches!(serial[0], 'D' | 'F') || matches!(serial[5], 'D' | 'F') => Ok(PlateKind::NewEnergy),
        6 => Err(PlateError::NewEnergy),
        _ => Err(PlateError::Length(c.len())),
    }
}

/// Pairs the OCR really confuses.
const CONFUSABLE: [(char, char); 5] = [('0', 'D'), ('8', 'B'), ('2', 'Z'), ('5', 'S'), ('1', 'I')];

fn confusable(a: char, b: char) -> bool {
    CONFUSABLE.iter().any(|&(x, y)| (a, b) == (x, y) || (a, b) == (y, x))
}

#[derive(Debug, Clone, PartialEq)]
pub struct PlateMatch {
    pub plate: String,
    /// One confusable character differed.
    pub tolerant: bool,
}

/// Exact, or one substitution between confusable characters. The province
/// character is never tolerated unless `allow_province` (a wrong province is
/// a different car, not an OCR slip).
pub fn match_plate<'a>(read: &str, enrolled: impl IntoIterator<Item = &'a String>, allow_province: bool) -> Option<PlateMatch> {
    let r: Vec<char> = read.chars().collect();
    let mut tolerant = None;
    for e in enrolled {
        if e == read {
            return Some(PlateMatch { plate: e.clone(), tolerant: false });
        }
        let ec: Vec<char> = e.chars().collect();
        if ec.len() != r.len() {
            continue;
        }
        let diffs: Vec<usize> = (0..r.len()).filter(|&i| r[i] != ec[i]).collect();
        if let [i] = diffs[..] {
            // The province (position 0) only when the caller allows it; any other
            // position only for a visually confusable pair.
            let tolerated = if i == 0 { allow_province } else { confusable(r[i], ec[i]) };
            if tolerated && tolerant.is_none() {
                tolerant = Some(PlateMatch { plate: e.clone(), tolerant: true });
            }
        }
    }
    tolerant
}

/// Confirms a plate once it is read the same way in `k` frames, or once with
/// confidence ≥ `sure`, and then not again until the car has left (unseen for
/// `gone_after`): a car waiting at the barrier is one decision. A read whose
/// province character is doubtful (below `province_min`) is never sure on
/// its own, and such reads count half: the province is the OCR's most
/// common slip, so a doubtful one asks for more frames instead of a guess.
#[derive(Debug, Clone)]
pub struct Voter {
    pub k: usize,
    pub sure: f32,
    pub province_min: f32,
    pub gone_after: Duration,
    /// Per (gate, plate): confident reads, doubtful reads, last read.
    counts: HashMap<(String, String), (usize, usize, Timestamp)>,
    confirmed: HashMap<(String, String), Timestamp>,
}

impl Voter {
    pub fn new(k: usize, sure: f32, gone_after: Duration) -> Self {
        Self { k: k.max(1), sure, province_min: 0.0, gone_after, counts: HashMap::new(), confirmed: HashMap::new() }
    }

    pub fn with_province_min(mut self, min: f32) -> Self {
        self.province_min = min;
        self
    }

    /// Feed one read with its province character's own confidence; returns
    /// true when this read confirms the plate.
    pub fn read(&mut self, gate: &str, plate: &str, conf: f32, province_conf: f32, now: Timestamp) -> bool {
        let key = (gate.to_string(), plate.to_string());
        self.confirmed.retain(|_, last| now - *last < self.gone_after);
        self.counts.retain(|_, (_, _, last)| now - *last < self.gone_after);
        if let Some(last) = self.confirmed.get_mut(&key) {
            *last = now; // still at the barrier
            return false;
        }
        let doubtful = province_conf < self.province_min;
        let e = self.counts.entry(key.clone()).or_insert((0, 0, now));
        if doubtful {
            e.1 += 1;
        } else {
            e.0 += 1;
        }
        e.2 = now;
        if 2 * e.0 + e.1 >= 2 * self.k || (!doubtful && conf >= self.sure) {
            self.counts.remove(&key);
            self.confirmed.insert(key, now);
            return true;
        }
        false
    }

    /// This plate is confirmed at this gate and still there (read within `gone_after`).
    pub fn is_confirmed(&self, gate: &str, plate: &str) -> bool {
        self.confirmed.contains_key(&(gate.to_string(), plate.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn ga36_shapes_are_accepted_and_each_broken_rule_is_named() {
        assert_eq!(validate("川A12345"), Ok(PlateKind::Regular));
        assert_eq!(validate("苏ED51712"), Ok(PlateKind::NewEnergy));
        assert_eq!(validate("皖KD01833"), Ok(PlateKind::NewEnergy));
        assert_eq!(validate("粤B1234学"), Ok(PlateKind::Special('学')));
        assert_eq!(validate("A12345"), Err(PlateError::Province('A')));
        assert_eq!(validate("川I12345"), Err(PlateError::Authority('I')));
        assert_eq!(validate("川A1234"), Err(PlateError::Length(6)));
        assert_eq!(validate("川A12O45"), Err(PlateError::Serial('O')));
        assert_eq!(validate("川A123456"), Err(PlateError::NewEnergy));
        assert_eq!(validate("川A12警45"), Err(PlateError::Suffix('警')));
    }

    #[test]
    fn one_confusable_edit_is_tolerated_but_never_in_the_province() {
        let enrolled = vec!["川A35D98".to_string(), "京AN7065".to_string()];
        assert_eq!(match_plate("川A35D98", &enrolled, false), Some(PlateMatch { plate: "川A35D98".into(), tolerant: false }));
        assert_eq!(match_plate("川A3SD98", &enrolled, false), Some(PlateMatch { plate: "川A35D98".into(), tolerant: true }), "5/S");
        assert_eq!(match_plate("川A35098", &enrolled, false).map(|m| m.tolerant), Some(true), "D/0");
        assert_eq!(match_plate("川A35E98", &enrolled, false), None, "D/E is not an OCR confusion");
        assert_eq!(match_plate("川A3SD9B", &enrolled, false), None, "two edits");
        assert_eq!(match_plate("渝A35D98", &enrolled, false), None, "province never tolerated");
        assert_eq!(match_plate("渝A35D98", &enrolled, true).map(|m| m.tolerant), Some(true), "unless configured");
    }

    #[test]
    fn a_doubtful_province_asks_for_more_frames_instead_of_a_guess() {
        let t = |s: i64| Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap() + Duration::seconds(s);
        let mut v = Voter::new(3, 0.97, Duration::seconds(20));
        v.province_min = 0.8;
        assert!(!v.read("g", "川A35D98", 0.99, 0.5, t(0)), "sure overall, but the province is a guess");
        for s in 1..5 {
            assert!(!v.read("g", "川A35D98", 0.9, 0.5, t(s)), "doubtful reads count half ({s})");
        }
        assert!(v.read("g", "川A35D98", 0.9, 0.5, t(5)), "six doubtful reads: as good as three");
        // A confident province: three reads, or one sure read.
        assert!(v.read("g", "京AN7065", 0.99, 0.95, t(0)));
    }

    #[test]
    fn a_waiting_car_is_one_decision_and_a_returning_car_another() {
        let t = |s: i64| Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap() + Duration::seconds(s);
        let mut v = Voter::new(3, 0.98, Duration::seconds(20));
        assert!(!v.read("g", "川A35D98", 0.9, 1.0, t(0)));
        assert!(!v.read("g", "川A35D98", 0.9, 1.0, t(1)));
        assert!(v.read("g", "川A35D98", 0.9, 1.0, t(2)), "3 agreeing frames");
        for s in 3..60 {
            assert!(!v.read("g", "川A35D98", 0.99, 1.0, t(s)), "waiting at the barrier");
        }
        assert!(v.read("g", "川A35D98", 0.99, 1.0, t(200)), "came back after leaving: one sure read suffices");
    }
}
