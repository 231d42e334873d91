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

use crate::alert::{Alert, AlertKind, Subject};
use crate::clock::Timestamp;
use serde::{Deserialize, Serialize};
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
