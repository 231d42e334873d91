//! The entry log: every gate decision, append-only, each record chained to
//! the previous one by HMAC-SHA256 under a key kept outside the database
//! (`entry.key`), so that an edit or a deletion anywhere is found by
//! `gatewarden log verify`, even by someone who can write the database: they
//! cannot recompute the chain without the key.

use crate::clock::Timestamp;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Credential {
    Face,
    Pin,
    Card,
    Qr,
    Plate,
}

impl Credential {
    pub fn as_str(self) -> &'static str {
        match self {
            Credential::Face => "face",
            Credential::Pin => "pin",
            Credential::Card => "card",
            Credential::Qr => "qr",
            Credential::Plate => "plate",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

/// One decision, as logged. No biometric data: a person id, never a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub gate: String,
    pub direction: Direction,
    pub credential: Credential,
    /// Resident, elder or visitor id; None for an unknown person.
    pub person: Option<String>,
    /// "resident", "elder", "visitor", "unknown".
    pub person_kind: String,
    pub score: Option<f32>,
    pub liveness: Option<f32>,
    pub opened: bool,
    pub reason: String,
}

/// An entry as stored: its place in the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chained {
    pub seq: u64,
    pub prev: String,
    pub hash: String,
    pub entry: Entry,
}

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

pub fn hash(key: &[u8], seq: u64, prev: &str, e: &Entry) -> String {
    let mut h = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    h.update(&seq.to_be_bytes());
    h.update(prev.as_bytes());
    h.update(&serde_json::to_vec(e).expect("entry serializes"));
    hex::encode(h.finalize().into_bytes())
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("record {seq} was altered (its hash does not match its content)")]
    Altered { seq: u64 },
    #[error("record(s) before {seq} are missing (expected {expected})")]
    Missing { seq: u64, expected: u64 },
    #[error("record {seq} does not follow record {prev_seq}: the chain was broken")]
    Broken { seq: u64, prev_seq: u64 },
    #[error("the log ends at {found} but the head says {head}: records were removed from the end")]
    Truncated { found: u64, head: u64 },
}

/// Check a whole chain in order against the recorded head. `anchor` is the
/// (seq, hash) of the last record removed by the retention purge, if any: the
/// chain then starts right after it.
pub fn verify<'a>(
    key: &[u8],
    records: impl IntoIterator<Item = &'a Chained>,
    head: Option<(u64, &str)>,
    anchor: Option<(u64, &str)>,
) -> Result<u64, ChainError> {
    let (start, mut prev_hash) = anchor.map_or((1u64, GENESIS.to_string()), |(s, h)| (s + 1, h.to_string()));
    let mut expected = start;
    for r in records {
        if r.seq != expected {
            return Err(ChainError::Missing { seq: r.seq, expected });
        }
        if r.prev != prev_hash {
            return Err(ChainError::Broken { seq: r.seq, prev_seq: r.seq - 1 });
        }
        if hash(key, r.seq, &r.prev, &r.entry) != r.hash {
            return Err(ChainError::Altered { seq: r.seq });
        }
        prev_hash = r.hash.clone();
        expected += 1;
    }
    let last = expected - 1;
    if let Some((head_seq, head_hash)) = head {
        if head_seq != last || (last > 0 && head_hash != prev_hash) {
            return Err(ChainError::Truncated { found: last, head: head_seq });
        }
    }
    Ok(last + 1 - start)
}

pub fn csv_header() -> &'static str {
    "seq,time,gate,direction,credential,person,person_kind,score,liveness,result,reason"
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn csv_row(c: &Chained) -> String {
    let e = &c.entry;
    [
        c.seq.to_string(),
        e.at.to_rfc3339(),
        csv_field(&e.gate),
        format!("{:?}", e.direction).to_lowercase(),
        e.credential.as_str().to_string(),
        csv_field(e.person.as_deref().unwrap_or("")),
        e.person_kind.clone(),
        e.score.map(|s| format!("{s:.3}")).unwrap_or_default(),
        e.liveness.map(|s| format!("{s:.3}")).unwrap_or_default(),
        if e.opened { "opened" } else { "denied" }.to_string(),
        csv_field(&e.reason),
    ]
    .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn entry(n: u32) -> Entry {
        Entry {
            at: Utc::now(),
            gate: "north".into(),
            direction: Direction::In,
            credential: Credential::Pin,
            person: Some(format!("R{n}")),
            person_kind: "resident".into(),
            score: None,
            liveness: None,
            opened: true,
            reason: "resident".into(),
        }
    }

    const KEY: &[u8] = b"this box's entry-log key";

    fn chain(n: u32) -> Vec<Chained> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|i| {
                let e = entry(i);
                let h = hash(KEY, i as u64, &prev, &e);
                let c = Chained { seq: i as u64, prev: prev.clone(), hash: h.clone(), entry: e };
                prev = h;
                c
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let c = chain(5);
        assert_eq!(verify(KEY, &c, Some((5, &c[4].hash)), None), Ok(5));
        // After a retention purge of the first two, the rest verifies from the anchor.
        assert_eq!(verify(KEY, &c[2..], Some((5, &c[4].hash)), Some((2, &c[1].hash))), Ok(3));
        assert!(verify(KEY, &c[3..], Some((5, &c[4].hash)), Some((2, &c[1].hash))).is_err(), "a gap after the anchor is found");
    }

    #[test]
    fn an_edit_a_deletion_or_a_truncation_is_found() {
        let mut c = chain(5);
        c[2].entry.opened = false;
        assert_eq!(verify(KEY, &c, None, None), Err(ChainError::Altered { seq: 3 }));
        let mut c = chain(5);
        c.remove(2);
        assert_eq!(verify(KEY, &c, None, None), Err(ChainError::Missing { seq: 4, expected: 3 }));
        let c = chain(5);
        let head = c[4].hash.clone();
        assert!(matches!(verify(KEY, &c[..4], Some((5, &head)), None), Err(ChainError::Truncated { .. })));
        // Rewriting one record's hash to match its edit still breaks the link to the next.
        let mut c = chain(5);
        c[1].entry.reason = "forged".into();
        c[1].hash = hash(KEY, 2, &c[1].prev, &c[1].entry);
        assert_eq!(verify(KEY, &c, None, None), Err(ChainError::Broken { seq: 3, prev_seq: 2 }));
    }

    #[test]
    fn a_chain_rewritten_without_the_key_does_not_verify() {
        // Whoever can write the database rewrites a record and re-chains every
        // record after it, with any key but the box's own.
        let mut c = chain(5);
        c[1].entry.opened = false;
        let mut prev = c[0].hash.clone();
        for r in c.iter_mut().skip(1) {
            r.prev = prev.clone();
            r.hash = hash(b"a guessed key", r.seq, &r.prev, &r.entry);
            prev = r.hash.clone();
        }
        let head = c[4].hash.clone();
        assert_eq!(verify(KEY, &c, Some((5, &head)), None), Err(ChainError::Altered { seq: 2 }));
        let anchor = c[0].hash.clone();
        assert_eq!(verify(b"a guessed key", &c[1..], Some((5, &head)), Some((1, &anchor))), Ok(4), "the forgery holds only under its own key");
    }
}
