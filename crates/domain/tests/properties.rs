//! Property tests for the state machines: random event sequences, under a
//! clock that only the test moves, must never break the invariants staff
//! rely on.
//! - the alert engine: at most one open episode per subject and kind; no
//!   absence alert fires while the elder is on leave; an acknowledged alert
//!   never reminds or escalates again;
//! - the cluster lease: boxes sharing one retained record through a broker
//!   never have two holders that both alert.

use chrono::{Duration, TimeZone, Utc};
use gatewarden_domain::alert::engine::{Action, Engine, Input, Policy, Settings, Watch};
use gatewarden_domain::alert::{AlertKind, AlertState, NoticeKind, Subject};
use gatewarden_domain::clock::Timestamp;
use gatewarden_domain::cluster::{Lease, LeaseAction, LeaseRecord, Role};
use gatewarden_domain::presence::{PresenceEvent, Source};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

fn t0() -> Timestamp {
    Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap()
}

fn settings() -> Settings {
    let pol = |r, e| Policy { repeat_every: Duration::hours(r), escalate_after: Duration::hours(e) };
    Settings {
        absence_after: Duration::hours(48),
        band_silent_after: Duration::hours(24),
        gateway_silent_after: Duration::minutes(10),
        battery_low_percent: 20,
        gateways_max: 64,
        quiet_hours: None,
        policies: HashMap::from([
            (AlertKind::Absence, pol(6, 12)),
            (AlertKind::Sos, Policy { repeat_every: Duration::minutes(5), escalate_after: Duration::minutes(10) }),
            (AlertKind::BatteryLow, pol(24, 72)),
            (AlertKind::BandNotWorn, pol(24, 72)),
            (AlertKind::GatewayOffline, pol(6, 12)),
            (AlertKind::CameraOffline, pol(6, 12)),
            (AlertKind::ActuatorFailure, pol(6, 12)),
            (AlertKind::SpoofAttempts, pol(6, 12)),
            (AlertKind::DenyListed, pol(6, 12)),
            (AlertKind::PinLockout, pol(6, 12)),
        ]),
    }
}

const ELDERS: u8 = 3;

#[derive(Debug, Clone)]
enum Step {
    /// Move the clock forward (minutes) and tick.
    Wait(u16),
    Seen {
        elder: u8,
        band: bool,
    },
    Sos(u8),
    Battery {
        elder: u8,
        percent: u8,
    },
    /// Acknowledge the n-th open alert (modulo the number open).
    Ack(u8),
    /// A leave for this elder from now (hours ahead) lasting `hours`.
    Leave {
        elder: u8,
        starts_in: u8,
        hours: u8,
    },
    Gateway {
        online: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u16..720).prop_map(Step::Wait),
        3 => (0..ELDERS, any::<bool>()).prop_map(|(elder, band)| Step::Seen { elder, band }),
        1 => (0..ELDERS).prop_map(Step::Sos),
        1 => (0..ELDERS, 0u8..100).prop_map(|(elder, percent)| Step::Battery { elder, percent }),
        2 => any::<u8>().prop_map(Step::Ack),
        1 => (0..ELDERS, 0u8..24, 1u8..96).prop_map(|(elder, starts_in, hours)| Step::Leave { elder, starts_in, hours }),
        1 => any::<bool>().prop_map(|online| Step::Gateway { online }),
    ]
}

fn elder_id(n: u8) -> String {
    format!("e{n}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_invariants_hold_for_any_sequence(steps in proptest::collection::vec(step(), 1..120)) {
        let mut e = Engine::new(settings(), t0(), 1);
        e.set_default_ladder_len(3);
        for n in 0..ELDERS {
            e.upsert_elder(elder_id(n), Watch { grid: "g1".into(), enrolled_at: Some(t0()), last_seen: Some(t0()), has_band: true, ..Default::default() });
        }
        let mut now = t0();
        let mut leaves: BTreeMap<String, Vec<(Timestamp, Timestamp)>> = BTreeMap::new();
        let mut acked: HashSet<u64> = HashSet::new();
        for s in &steps {
            let actions = match s {
                Step::Wait(m) => {
                    now += Duration::minutes(i64::from(*m));
                    e.handle(Input::Tick, now)
                }
                Step::Seen { elder, band } => {
                    let source = if *band { Source::Wristband } else { Source::Face };
                    e.handle(Input::Presence(PresenceEvent::Seen { elder: elder_id(*elder), at: now, source, place: "gate_north".into() }), now)
                }
                Step::Sos(elder) => e.handle(Input::Presence(PresenceEvent::Sos { elder: elder_id(*elder), at: now, place: "3栋".into() }), now),
                Step::Battery { elder, percent } => e.handle(Input::Presence(PresenceEvent::Battery { elder: elder_id(*elder), percent: *percent }), now),
                Step::Ack(n) => {
                    let open: Vec<u64> = e.open_alerts().filter(|a| a.state == AlertState::Firing).map(|a| a.id).collect();
                    if open.is_empty() {
                        continue;
                    }
                    let id = open[usize::from(*n) % open.len()];
                    let acts = e.ack(id, "网格员", now).expect("a firing alert can be acknowledged");
                    acked.insert(id);
                    acts
                }
                Step::Leave { elder, starts_in, hours } => {
                    let from = now + Duration::hours(i64::from(*starts_in));
                    let until = from + Duration::hours(i64::from(*hours));
                    let w = e.elder_mut(&elder_id(*elder)).expect("enrolled");
                    w.leaves.push((from, until));
                    leaves.entry(elder_id(*elder)).or_default().push((from, until));
                    continue;
                }
                Step::Gateway { online } => e.handle(Input::GatewayStatus { gateway: "gw_building5".into(), online: *online }, now),
            };
            for a in &actions {
                if let Action::Notify { alert, kind, .. } = a {
                    if matches!(kind, NoticeKind::Reminder | NoticeKind::Escalated) {
                        prop_assert!(!acked.contains(&alert.id), "acknowledged alert #{} got a {:?} at {}", alert.id, kind, now);
                    }
                    if alert.kind == AlertKind::Absence && *kind == NoticeKind::Firing {
                        let on_leave = leaves.get(alert.subject.id()).is_some_and(|ls| ls.iter().any(|(f, u)| *f <= now && now < *u));
                        prop_assert!(!on_leave, "absence fired for {} while on leave at {}", alert.subject.id(), now);
                    }
                }
            }
            let mut open: HashMap<(AlertKind, Subject), usize> = HashMap::new();
            for a in e.open_alerts() {
                prop_assert!(a.state != AlertState::Resolved, "a resolved alert is still open: #{}", a.id);
                *open.entry((a.kind, a.subject.clone())).or_default() += 1;
            }
            prop_assert!(open.values().all(|n| *n == 1), "two open episodes for one subject and kind: {:?}", open);
        }
    }
}

// ---------------- the lease ----------------

#[derive(Debug, Clone)]
enum LeaseStep {
    /// Advance the wall clock (ms), deliver what is due, let one box tick.
    Tick { box_no: usize, advance_ms: u32 },
    /// Delivery latency for messages published from now on (ms, < settle).
    Latency(u32),
}

fn lease_step() -> impl Strategy<Value = LeaseStep> {
    prop_oneof![
        8 => (0usize..3, 0u32..6_000).prop_map(|(box_no, advance_ms)| LeaseStep::Tick { box_no, advance_ms }),
        1 => (0u32..1_000).prop_map(LeaseStep::Latency),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn lease_never_has_two_holders_that_both_alert(steps in proptest::collection::vec(lease_step(), 1..300)) {
        // ttl 60 s, settle 3 s; messages reach every box (in publish order)
        // within less than the settle time, as on one site broker.
        let ttl = std::time::Duration::from_secs(60);
        let settle = std::time::Duration::from_secs(3);
        let mut boxes: Vec<Lease> = (0..3).map(|i| Lease::new(format!("box{i}"), Role::Lease, ttl, settle)).collect();
        let mut now: i64 = 1_800_000_000_000;
        for b in boxes.iter_mut() {
            b.connected(now);
        }
        let mut latency: i64 = 200;
        // (deliver_at, record): the broker's retained topic, in publish order.
        let mut in_flight: Vec<(i64, LeaseRecord)> = Vec::new();
        for s in &steps {
            match s {
                LeaseStep::Latency(ms) => latency = i64::from(*ms),
                LeaseStep::Tick { box_no, advance_ms } => {
                    let target = now + i64::from(*advance_ms);
                    // Deliver everything due up to `target`, in time order.
                    in_flight.sort_by_key(|(at, _)| *at);
                    while let Some((at, _)) = in_flight.first() {
                        if *at > target {
                            break;
                        }
                        let (at, r) = in_flight.remove(0);
                        now = now.max(at);
                        for b in boxes.iter_mut() {
                            let _ = b.observe(Some(r.clone()), now);
                        }
                        let leaders = boxes.iter().filter(|b| b.is_leader()).count();
                        prop_assert!(leaders <= 1, "{leaders} boxes alert at {now}");
                    }
                    now = target;
                    for a in boxes[*box_no].tick(now) {
                        if let LeaseAction::Publish(r) = a {
                            in_flight.push((now + latency, r));
                        }
                    }
                    let leaders = boxes.iter().filter(|b| b.is_leader()).count();
                    prop_assert!(leaders <= 1, "{leaders} boxes alert at {now}");
                }
            }
        }
    }
}

mod gate_faces {
    //! The face path of the gate policy: whatever a tracker reports, frame
    //! after frame, a gate opens only for a live, matched face, never on one
    //! frame, and a low liveness median becomes a spoof attempt only once it
    //! covers `spoof_min_frames`.
    use super::t0;
    use gatewarden_domain::gate::log::Direction;
    use gatewarden_domain::gate::policy::{Action, FaceSeen, GateRule, Input, Person, PersonKind, Policy, Settings};
    use proptest::prelude::*;

    fn face() -> impl Strategy<Value = Option<FaceSeen>> {
        proptest::option::weighted(
            0.9,
            (proptest::option::of(prop_oneof![Just("R1".to_string()), Just("R2".to_string())]), 0.0f32..1.0, 0.0f32..1.0, 1u32..8, 0.0f32..0.6)
                .prop_map(|(person, score, liveness, liveness_frames, margin)| FaceSeen { person, score, liveness, liveness_frames, margin, track: None }),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn a_face_opens_only_when_live_over_enough_frames_matched_and_agreed(frames in proptest::collection::vec(face(), 1..40)) {
            let s = Settings::default();
            let mut p = Policy::new(s, vec![GateRule { name: "north".into(), direction: Direction::In, visitor_hours: None, resident_hours: None }]);
            for id in ["R1", "R2"] {
                p.upsert(Person {
                    id: id.into(), name: id.into(), kind: PersonKind::Resident, unit: "1-101".into(), elder: None,
                    pin_hash: None, cards: vec![], qr_hash: None, valid_from: None, valid_until: None,
                });
            }
            // Faces since the last decision: agreement never reaches back past one.
            let mut history: Vec<FaceSeen> = Vec::new();
            for f in frames {
                let mut decided = false;
                let acts = p.handle(Input::Frame { gate: "north".into(), faces: f.iter().cloned().collect() }, t0());
                if let Some(f) = &f {
                    history.push(f.clone());
                }
                for a in &acts {
                    if let Action::Open { person, .. } = a {
                        let last = f.as_ref().expect("a frame without a face decides nothing");
                        prop_assert_eq!(last.person.as_deref(), Some(person.as_str()));
                        prop_assert!(last.score >= s.match_threshold && last.liveness >= s.liveness_threshold);
                        prop_assert!(last.liveness_frames >= s.liveness_min_frames);
                        let agreeing = history.iter().filter(|h| h.person.as_deref() == Some(person.as_str())
                            && h.score >= s.match_threshold && h.liveness >= s.liveness_threshold).count();
                        let needed = if s.is_strong(last.score, last.margin) { s.agree_strong } else { s.agree_m };
                        prop_assert!(agreeing >= needed.max(2), "{} agreeing frames, {} needed", agreeing, needed);
                    }
                    if matches!(a, Action::Log(_)) {
                        decided = true;
                    }
                    if let Action::Log(e) = a {
                        if e.reason.contains("spoof") {
                            let last = f.as_ref().expect("a frame without a face decides nothing");
                            prop_assert!(last.liveness_frames >= s.spoof_min_frames && last.liveness < s.liveness_threshold);
                        }
                    }
                }
                if decided {
                    history.clear();
                }
            }
        }
    }
}
