//! Several boxes in one compound, through the MQTT broker they already share
//! (no home-made replication):
//! - **Shared presence.** BLE gateways publish to the broker, so every box sees
//!   every band. What only one box sees — a face at its gate, a staff check-in
//!   typed into it — it publishes on `gatewarden/<site>/cluster/sighting/<box>`
//!   (QoS 1) and the others apply it.
//! - **One alerting box.** A lease in a retained message on
//!   `gatewarden/<site>/cluster/lease` names the box that runs the alert
//!   engine and sends notifications. The holder renews it; when it lapses
//!   (the holder died), another box claims it. Claims settle before a box
//!   starts alerting, so two boxes racing do not both send.
//! - **Episodes survive failover.** The alerting box publishes every alert
//!   episode retained on `gatewarden/<site>/cluster/episode/<id>`; standbys
//!   keep a copy in their store and load it when they take over, so an open
//!   episode keeps its id, level, acknowledgement and reminder schedule.
//! - **Box-local alerts** (a camera offline at a standby's gate) are forwarded
//!   to the alerting box on `gatewarden/<site>/cluster/alert/<box>`.
//!
//! The lease is judged on wall-clock time (boxes run NTP); `Lease::handle`
//! is a pure state machine and takes `now` so tests drive it.
//!
//! **Every message is signed** (`sign`/`open`): HMAC-SHA256 under the site's
//! `cluster.key_file`, over the site, the topic and the signing time, so a
//! message cannot be forged, moved to another topic, or replayed late. Sightings
//! and forwarded alerts older than `max_age` are refused; a lease cannot
//! promise more than one ttl past its signing; empty payloads (clearing a
//! retained topic) carry nothing to sign and only ever free a lease.

use crate::alert::{Alert, AlertKind, Subject};
use crate::clock::Timestamp;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::time::Duration;

/// The part a box plays in enrolment sync (`cluster.enrolment`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrolmentRole {
    /// Admin writes happen here and are published.
    Source,
    /// Enrolment comes only from the source; local admin writes are refused.
    Replica,
}

/// How the alerting box is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// By the MQTT lease (default): any box can take over.
    #[default]
    Lease,
    /// This box always alerts (and takes no lease).
    Primary,
    /// This box never alerts.
    Standby,
}

/// The retained lease record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: String,
    /// Unix milliseconds (wall clock) after which the lease is free.
    pub until_ms: i64,
    /// Bumped by every new claim, kept by renewals.
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAction {
    /// Publish this record, retained, QoS 1.
    Publish(LeaseRecord),
    /// Start running the alert engine (load the mirrored episodes first).
    Promote,
    /// Stop alerting: another box holds the lease.
    Demote { holder: String },
}

#[derive(Debug, Clone)]
pub struct Lease {
    me: String,
    role: Role,
    ttl: Duration,
    settle: Duration,
    seen: Option<LeaseRecord>,
    /// Whether the retained topic has been read since (re)connecting: never
    /// claim on an empty view.
    synced_since: Option<i64>,
    claimed_at: Option<i64>,
    leader: bool,
}

impl Lease {
    pub fn new(me: impl Into<String>, role: Role, ttl: Duration, settle: Duration) -> Lease {
        Lease { me: me.into(), role, ttl, settle, seen: None, synced_since: None, claimed_at: None, leader: false }
    }

    pub fn is_leader(&self) -> bool {
        self.leader
    }

    pub fn holder(&self) -> Option<&LeaseRecord> {
        self.seen.as_ref()
    }

    fn ms(d: Duration) -> i64 {
        d.as_millis() as i64
    }

    /// The broker connection came up: the retained lease (if any) arrives
    /// shortly after the subscription; give it `settle` to do so.
    pub fn connected(&mut self, now_ms: i64) {
        self.synced_since = Some(now_ms);
    }

    /// The retained record changed (None: cleared).
    pub fn observe(&mut self, r: Option<LeaseRecord>, now_ms: i64) -> Vec<LeaseAction> {
        self.seen = r;
        self.synced_since.get_or_insert(now_ms);
        let mut out = Vec::new();
        if let Some(r) = &self.seen {
            if self.leader && r.holder != self.me && r.until_ms > now_ms && self.role == Role::Lease {
                self.leader = false;
                out.push(LeaseAction::Demote { holder: r.holder.clone() });
            }
        }
        out
    }

    pub fn tick(&mut self, now_ms: i64) -> Vec<LeaseAction> {
        let mut out = Vec::new();
        match self.role {
            Role::Primary => {
                if !self.leader {
                    self.leader = true;
                    out.push(LeaseAction::Promote);
                }
                return out;
            }
            Role::Standby => return out,
            Role::Lease => {}
        }
        let Some(synced) = self.synced_since else { return out };
        if now_ms - synced < Self::ms(self.settle) {
            return out;
        }
        let ttl = Self::ms(self.ttl);
        match self.seen.clone() {
            Some(r) if r.holder == self.me && r.until_ms > now_ms => {
                let settled = self.claimed_at.is_none_or(|c| now_ms - c >= Self::ms(self.settle));
                if !self.leader && settled {
                    self.leader = true;
                    out.push(LeaseAction::Promote);
                }
                if r.until_ms - now_ms < ttl * 2 / 3 {
                    out.push(LeaseAction::Publish(LeaseRecord { holder: self.me.clone(), until_ms: now_ms + ttl, epoch: r.epoch }));
                }
            }
            Some(r) if r.holder != self.me && r.until_ms > now_ms => {}
            // Free or lapsed. A leader that cannot see its own renewal (broker
            // down) keeps alerting: two senders beat none for elders' safety.
            other => {
                let recently = self.claimed_at.is_some_and(|c| now_ms - c < 2 * Self::ms(self.settle));
                if !recently {
                    let epoch = other.map_or(1, |r| r.epoch + 1);
                    self.claimed_at = Some(now_ms);
                    out.push(LeaseAction::Publish(LeaseRecord { holder: self.me.clone(), until_ms: now_ms + ttl, epoch }));
                }
            }
        }
        out
    }
}

/// A sighting only this box could make, shared with the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerSighting {
    #[serde(rename = "box")]
    pub from: String,
    pub elder: String,
    pub at: Timestamp,
    #[serde(flatten)]
    pub what: PeerWhat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum PeerWhat {
    Face { gate: String },
    CheckIn { by: String, note: String },
}

/// A box-local alert, forwarded to the alerting box.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerAlert {
    #[serde(rename = "box")]
    pub from: String,
    pub kind: AlertKind,
    pub subject: Subject,
    pub detail: String,
    pub firing: bool,
}

/// An alert episode as the alerting box last saved it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    #[serde(rename = "box")]
    pub from: String,
    pub alert: Alert,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClusterMsg {
    Lease(Option<LeaseRecord>),
    Sighting(PeerSighting),
    Alert(PeerAlert),
    Episode(Episode),
    /// A cleared retained episode.
    EpisodeCleared,
}

pub fn topic(site: &str, rest: &str) -> String {
    format!("gatewarden/{site}/cluster/{rest}")
}

/// A cluster message that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterParseError {
    #[error("{what}: not the expected JSON: {reason}")]
    Json { what: &'static str, reason: String },
    #[error("unknown cluster topic")]
    UnknownTopic,
}

/// The envelope every cluster message travels in.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signed {
    v: u8,
    /// Unix milliseconds (wall clock) when it was signed.
    ts: i64,
    body: String,
    /// Hex HMAC-SHA256, full length.
    sig: String,
}

/// Why a cluster message was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterReject {
    #[error("not signed")]
    Unsigned,
    #[error("bad signature")]
    BadSignature,
    #[error("signed {age_ms} ms ago: too old to act on")]
    Stale { age_ms: i64 },
    #[error("signed {ahead_ms} ms in the future")]
    Future { ahead_ms: i64 },
    #[error("a lease until {until_ms} promises more than one ttl past its signing at {ts}")]
    LeaseTooLong { ts: i64, until_ms: i64 },
    #[error(transparent)]
    Parse(#[from] ClusterParseError),
}

impl ClusterReject {
    /// A metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClusterReject::Unsigned => "unsigned",
            ClusterReject::BadSignature => "bad_signature",
            ClusterReject::Stale { .. } => "stale",
            ClusterReject::Future { .. } => "future",
            ClusterReject::LeaseTooLong { .. } => "lease_too_long",
            ClusterReject::Parse(_) => "malformed",
        }
    }

    /// Someone without the key wrote it (as opposed to a late or odd message from a box).
    pub fn is_forgery(&self) -> bool {
        matches!(self, ClusterReject::Unsigned | ClusterReject::BadSignature | ClusterReject::LeaseTooLong { .. })
    }
}

/// How fresh a message must be.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    /// Sightings and forwarded alerts older than this are refused.
    pub max_age: Duration,
    /// Clocks of the boxes may differ this much.
    pub max_skew: Duration,
    pub lease_ttl: Duration,
}

fn mac(key: &[u8], site: &str, rest: &str, ts: i64, body: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    for part in ["gatewarden-cluster-v1", site, rest, &ts.to_string()] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m.update(body.as_bytes());
    m
}

/// The payload for `gatewarden/<site>/cluster/<rest>`: `body` signed at `now_ms`.
pub fn sign(key: &[u8], site: &str, rest: &str, body: &str, now_ms: i64) -> String {
    let sig = hex::encode(mac(key, site, rest, now_ms, body).finalize().into_bytes());
    serde_json::to_string(&Signed { v: 1, ts: now_ms, body: body.to_string(), sig }).expect("serializes")
}

/// Verify and read a message on `gatewarden/<site>/cluster/<parts…>`.
pub fn open(key: &[u8], site: &str, parts: &[&str], text: &str, now_ms: i64, f: &Freshness) -> Result<ClusterMsg, ClusterReject> {
    if text.trim().is_empty() {
        // Clearing a retained topic: nothing to sign, and nothing it can do but free.
        return Ok(parse(parts, "")?);
    }
    let env: Signed = serde_json::from_str(text).map_err(|_| ClusterReject::Unsigned)?;
    let sig = hex::decode(&env.sig).map_err(|_| ClusterReject::BadSignature)?;
    // `verify_slice` is constant-time and requires the full 32-byte tag.
    mac(key, site, &parts.join("/"), env.ts, &env.body).verify_slice(&sig).map_err(|_| ClusterReject::BadSignature)?;
    let skew = f.max_skew.as_millis() as i64;
    if env.ts - now_ms > skew {
        return Err(ClusterReject::Future { ahead_ms: env.ts - now_ms });
    }
    let msg = parse(parts, &env.body)?;
    match &msg {
        // Retained: as old as the last renewal, and judged by its own expiry.
        ClusterMsg::Lease(Some(r)) if r.until_ms > env.ts + f.lease_ttl.as_millis() as i64 + skew => {
            return Err(ClusterReject::LeaseTooLong { ts: env.ts, until_ms: r.until_ms });
        }
        // Retained snapshots: a standby reads them whenever it (re)subscribes.
        ClusterMsg::Lease(_) | ClusterMsg::Episode(_) | ClusterMsg::EpisodeCleared => {}
        ClusterMsg::Sighting(_) | ClusterMsg::Alert(_) => {
            let age = now_ms - env.ts;
            if age > f.max_age.as_millis() as i64 + skew {
                return Err(ClusterReject::Stale { age_ms: age });
            }
        }
    }
    Ok(msg)
}

/// Parse a message under `gatewarden/<site>/cluster/…` (`parts` after "cluster").
pub fn parse(parts: &[&str], text: &str) -> Result<ClusterMsg, ClusterParseError> {
    let json = |what: &'static str| move |e: serde_json::Error| ClusterParseError::Json { what, reason: e.to_string() };
    match parts {
        ["lease"] if text.trim().is_empty() => Ok(ClusterMsg::Lease(None)),
        ["lease"] => serde_json::from_str(text).map(|r| ClusterMsg::Lease(Some(r))).map_err(json("lease")),
        ["sighting", _box] => serde_json::from_str(text).map(ClusterMsg::Sighting).map_err(json("sighting")),
        ["alert", _box] => serde_json::from_str(text).map(ClusterMsg::Alert).map_err(json("alert")),
        ["episode", _id] if text.trim().is_empty() => Ok(ClusterMsg::EpisodeCleared),
        ["episode", _id] => serde_json::from_str(text).map(ClusterMsg::Episode).map_err(json("episode")),
        _ => Err(ClusterParseError::UnknownTopic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const F: Freshness = Freshness { max_age: Duration::from_secs(300), max_skew: Duration::from_secs(5), lease_ttl: Duration::from_secs(60) };
    const K: &[u8] = b"site-key-0123456789abcdef0123456789";

    #[test]
    fn a_signed_message_opens_and_every_forgery_of_it_is_refused() {
        let now = 1_800_000_000_000;
        let lease = r#"{"holder":"b1","until_ms":1800000060000,"epoch":3}"#;
        let good = sign(K, "s", "lease", lease, now);
        assert!(matches!(open(K, "s", &["lease"], &good, now + 1000, &F), Ok(ClusterMsg::Lease(Some(r))) if r.holder == "b1"));
        // The old attack: an unsigned lease held forever.
        let ghost = r#"{"holder":"ghost","until_ms":9e18,"epoch":1}"#;
        assert_eq!(open(K, "s", &["lease"], ghost, now, &F), Err(ClusterReject::Unsigned));
        // Another key, another site, another topic, a changed body or time, a cut tag.
        assert_eq!(open(b"another-key-0123456789abcdef012345", "s", &["lease"], &good, now, &F), Err(ClusterReject::BadSignature));
        assert_eq!(open(K, "t", &["lease"], &good, now, &F), Err(ClusterReject::BadSignature));
        assert_eq!(open(K, "s", &["episode", "1"], &good, now, &F), Err(ClusterReject::BadSignature));
        let mut env: serde_json::Value = serde_json::from_str(&good).unwrap();
        env["body"] = serde_json::Value::String(lease.replace("b1", "b2"));
        assert_eq!(open(K, "s", &["lease"], &env.to_string(), now, &F), Err(ClusterReject::BadSignature));
        let mut env: serde_json::Value = serde_json::from_str(&good).unwrap();
        env["ts"] = (now + 1).into();
        assert_eq!(open(K, "s", &["lease"], &env.to_string(), now, &F), Err(ClusterReject::BadSignature));
        let mut env: serde_json::Value = serde_json::from_str(&good).unwrap();
        let short = env["sig"].as_str().unwrap()[..2].to_string();
        env["sig"] = short.into();
        assert_eq!(open(K, "s", &["lease"], &env.to_string(), now, &F), Err(ClusterReject::BadSignature));
        // Signed with the key, but promising the lease for longer than a ttl.
        let long = sign(K, "s", "lease", r#"{"holder":"b1","until_ms":1900000000000,"epoch":3}"#, now);
        assert!(matches!(open(K, "s", &["lease"], &long, now, &F), Err(ClusterReject::LeaseTooLong { .. })));
    }

    #[test]
    fn sightings_are_refused_when_stale_or_from_the_future_and_retained_records_are_not() {
        let now = 1_800_000_000_000;
        let body = r#"{"box":"b2","elder":"E1","at":"2027-01-15T08:00:00Z","source":"face","gate":"north"}"#;
        let s = sign(K, "s", "sighting/b2", body, now);
        assert!(open(K, "s", &["sighting", "b2"], &s, now + 60_000, &F).is_ok());
        assert!(matches!(open(K, "s", &["sighting", "b2"], &s, now + 600_000, &F), Err(ClusterReject::Stale { .. })));
        assert!(matches!(open(K, "s", &["sighting", "b2"], &s, now - 60_000, &F), Err(ClusterReject::Future { .. })));
        // An empty payload clears a retained topic: nothing to sign.
        assert_eq!(open(K, "s", &["lease"], "", now, &F), Ok(ClusterMsg::Lease(None)));
    }

    fn lease(me: &str) -> Lease {
        let mut l = Lease::new(me, Role::Lease, 30 * S, 2 * S);
        l.connected(0);
        l
    }

    fn published(acts: &[LeaseAction]) -> Option<LeaseRecord> {
        acts.iter().find_map(|a| match a {
            LeaseAction::Publish(r) => Some(r.clone()),
            _ => None,
        })
    }

    #[test]
    fn a_free_lease_is_claimed_and_alerting_starts_only_after_the_claim_settles() {
        let mut a = lease("a");
        assert!(a.tick(1_000).is_empty(), "waits for the retained lease after connecting");
        let claim = published(&a.tick(2_000)).expect("claims");
        assert_eq!((claim.holder.as_str(), claim.epoch, claim.until_ms), ("a", 1, 32_000));
        a.observe(Some(claim), 2_050);
        assert!(!a.tick(3_000).contains(&LeaseAction::Promote), "not settled yet");
        assert!(a.tick(4_000).contains(&LeaseAction::Promote));
        assert!(a.is_leader());
    }

    #[test]
    fn of_two_racing_claims_the_one_the_broker_kept_wins_and_the_other_box_never_alerts() {
        let (mut a, mut b) = (lease("a"), lease("b"));
        let ca = published(&a.tick(2_000)).unwrap();
        let cb = published(&b.tick(2_000)).unwrap();
        // The broker keeps the last retained write (b's); both boxes see both, in order.
        for l in [&mut a, &mut b] {
            l.observe(Some(ca.clone()), 2_010);
            l.observe(Some(cb.clone()), 2_020);
        }
        let (ra, rb) = (a.tick(5_000), b.tick(5_000));
        assert!(!ra.contains(&LeaseAction::Promote) && !a.is_leader());
        assert!(rb.contains(&LeaseAction::Promote) && b.is_leader());
    }

    #[test]
    fn the_holder_renews_before_expiry_and_a_standby_takes_over_only_after_it_lapses() {
        let (mut a, mut b) = (lease("a"), lease("b"));
        let claim = published(&a.tick(2_000)).unwrap();
        a.observe(Some(claim.clone()), 2_000);
        b.observe(Some(claim.clone()), 2_000);
        a.tick(4_000);
        // At a third of the ttl left, a renews, keeping its epoch.
        let renewal = published(&a.tick(22_500)).expect("renews");
        assert_eq!((renewal.epoch, renewal.until_ms), (1, 52_500));
        b.observe(Some(renewal.clone()), 22_500);
        assert!(published(&b.tick(40_000)).is_none(), "the lease is still valid");
        // a dies: no more renewals. After expiry b claims with a new epoch, then alerts.
        let claim_b = published(&b.tick(52_600)).expect("claims the lapsed lease");
        assert_eq!((claim_b.holder.as_str(), claim_b.epoch), ("b", 2));
        b.observe(Some(claim_b), 52_650);
        assert!(b.tick(54_700).contains(&LeaseAction::Promote));
    }

    #[test]
    fn a_leader_that_sees_another_valid_holder_demotes_itself() {
        let mut a = lease("a");
        let claim = published(&a.tick(2_000)).unwrap();
        a.observe(Some(claim), 2_000);
        a.tick(5_000);
        assert!(a.is_leader());
        let acts = a.observe(Some(LeaseRecord { holder: "b".into(), until_ms: 40_000, epoch: 2 }), 6_000);
        assert_eq!(acts, vec![LeaseAction::Demote { holder: "b".into() }]);
        assert!(!a.is_leader());
    }

    #[test]
    fn fixed_roles_ignore_the_lease() {
        let mut p = Lease::new("p", Role::Primary, 30 * S, 2 * S);
        assert_eq!(p.tick(0), vec![LeaseAction::Promote]);
        let mut s = Lease::new("s", Role::Standby, 30 * S, 2 * S);
        s.connected(0);
        assert!(s.tick(100_000).is_empty());
    }

    #[test]
    fn cluster_payloads_parse_and_bad_ones_say_why() {
        let m = parse(&["sighting", "a"], r#"{"box":"a","elder":"E1","at":"2026-11-01T08:00:00+08:00","source":"face","gate":"north"}"#).unwrap();
        assert!(matches!(m, ClusterMsg::Sighting(PeerSighting { what: PeerWhat::Face { .. }, .. })));
        assert_eq!(parse(&["lease"], "").unwrap(), ClusterMsg::Lease(None));
        assert!(parse(&["lease"], "{not json").unwrap_err().to_string().contains("lease"));
        assert!(parse(&["sighting", "a"], r#"{"box":"a"}"#).unwrap_err().to_string().contains("sighting"));
    }
}
