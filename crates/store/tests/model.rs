//! Model-based test of the store, in the style of sled's `tests/test_tree.rs`:
//! random operations run against the real store and against an in-memory
//! model, with close-and-reopen steps between them. After every step the
//! store must read back exactly what the model holds, and a refused write
//! (a wristband bound twice, a duplicate id, a missing record) must change
//! nothing.

use chrono::{TimeZone, Utc};
use domain::alert::Staff;
use domain::presence::{BandId, Elder, Leave};
use gatewarden_store::{Store, StoreError};
use proptest::prelude::*;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
enum Op {
    PutElder { id: u8, bands: Vec<u8>, must_be_new: bool },
    RemoveElder(u8),
    PutStaff { id: u8, grid: u8 },
    RemoveStaff(u8),
    PutLeave { id: u8, elder: u8, days: u8 },
    RemoveLeave(u8),
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..6, proptest::collection::vec(0u8..8, 0..3), any::<bool>()).prop_map(|(id, bands, must_be_new)| Op::PutElder { id, bands, must_be_new }),
        2 => (0u8..6).prop_map(Op::RemoveElder),
        2 => (0u8..4, 0u8..3).prop_map(|(id, grid)| Op::PutStaff { id, grid }),
        1 => (0u8..4).prop_map(Op::RemoveStaff),
        2 => (0u8..5, 0u8..6, 1u8..30).prop_map(|(id, elder, days)| Op::PutLeave { id, elder, days }),
        1 => (0u8..5).prop_map(Op::RemoveLeave),
        1 => Just(Op::Reopen),
    ]
}

fn band(n: u8) -> BandId {
    format!("c3a1f00011{n:02x}").parse().unwrap()
}

fn elder(id: u8, bands: &[u8]) -> Elder {
    let mut ns = bands.to_vec();
    ns.sort_unstable();
    ns.dedup();
    let bs: Vec<BandId> = ns.into_iter().map(band).collect();
    Elder {
        id: format!("e{id}"),
        name: format!("老人{id}"),
        building: "3".into(),
        unit: "1".into(),
        room: "101".into(),
        grid: "g1".into(),
        phone: None,
        bands: bs,
        emergency_contacts: vec![],
        categories: vec!["over70".into()],
        notes: String::new(),
        enrolled_at: Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap(),
        absence_after_secs: None,
    }
}

#[derive(Default)]
struct Model {
    elders: BTreeMap<String, Elder>,
    staff: BTreeMap<String, Staff>,
    leaves: BTreeMap<u64, Leave>,
}

impl Model {
    fn band_owner(&self, b: &BandId) -> Option<&str> {
        self.elders.values().find(|e| e.bands.contains(b)).map(|e| e.id.as_str())
    }
}

fn check(s: &Store, m: &Model) {
    let elders: BTreeMap<String, Elder> = s.list_elders().unwrap().into_iter().map(|e| (e.id.clone(), e)).collect();
    assert_eq!(elders, m.elders, "elders");
    for b in 0u8..8 {
        assert_eq!(s.elder_for_band(&band(b)).unwrap().as_deref(), m.band_owner(&band(b)), "band index for {b}");
    }
    let staff: BTreeMap<String, Staff> = s.list_staff().unwrap().into_iter().map(|x| (x.id.clone(), x)).collect();
    assert_eq!(staff, m.staff, "staff");
    let leaves: BTreeMap<u64, Leave> = s.list_leaves(None).unwrap().into_iter().map(|l| (l.id, l)).collect();
    assert_eq!(leaves, m.leaves, "leaves");
}

fn apply(s: &Store, m: &mut Model, op: &Op) {
    match op {
        Op::PutElder { id, bands, must_be_new } => {
            let e = elder(*id, bands);
            let taken = e.bands.iter().find_map(|b| m.band_owner(b).filter(|o| *o != e.id).map(str::to_owned));
            let exists = m.elders.contains_key(&e.id);
            match s.put_elder(&e, *must_be_new) {
                Ok(()) => {
                    assert!(taken.is_none() && !(exists && *must_be_new), "the store accepted {op:?}");
                    m.elders.insert(e.id.clone(), e);
                }
                Err(StoreError::BandTaken { elder, .. }) => assert_eq!(Some(elder), taken, "{op:?}"),
                Err(StoreError::Exists { .. }) => assert!(exists && *must_be_new, "{op:?}"),
                Err(other) => panic!("{op:?}: {other}"),
            }
        }
        Op::RemoveElder(id) => {
            let id = format!("e{id}");
            match s.remove_elder(&id) {
                Ok(e) => {
                    assert_eq!(Some(e), m.elders.remove(&id));
                    // An elder's leaves go with them.
                    m.leaves.retain(|_, l| l.elder != id);
                }
                Err(StoreError::NotFound { .. }) => assert!(!m.elders.contains_key(&id)),
                Err(other) => panic!("{op:?}: {other}"),
            }
        }
        Op::PutStaff { id, grid } => {
            let x =
                Staff {
                    id: format!("s{id}"), name: format!("网格员{id}"), phone: Some("13800001111".into()), role: "网格员".into(), grid: format!("g{grid}")
                };
            s.put_staff(&x).unwrap();
            m.staff.insert(x.id.clone(), x);
        }
        Op::RemoveStaff(id) => {
            let id = format!("s{id}");
            match s.remove_staff(&id) {
                Ok(x) => assert_eq!(Some(x), m.staff.remove(&id)),
                Err(StoreError::NotFound { .. }) => assert!(!m.staff.contains_key(&id)),
                Err(other) => panic!("{op:?}: {other}"),
            }
        }
        Op::PutLeave { id, elder, days } => {
            let from = Utc.with_ymd_and_hms(2026, 11, 2, 0, 0, 0).unwrap();
            let l = Leave {
                id: u64::from(*id) + 1,
                elder: format!("e{elder}"),
                from,
                until: from + chrono::Duration::days(i64::from(*days)),
                note: "探亲".into(),
                created_by: "admin".into(),
            };
            s.put_leave(&l).unwrap();
            m.leaves.insert(l.id, l);
        }
        Op::RemoveLeave(id) => {
            let id = u64::from(*id) + 1;
            match s.remove_leave(id) {
                Ok(l) => assert_eq!(Some(l), m.leaves.remove(&id)),
                Err(StoreError::NotFound { .. }) => assert!(!m.leaves.contains_key(&id)),
                Err(other) => panic!("{op:?}: {other}"),
            }
        }
        Op::Reopen => unreachable!("handled by the runner"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_an_in_memory_model_across_reopens(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let mut s = Some(Store::open(&path).unwrap());
        let mut m = Model::default();
        for op in &ops {
            if let Op::Reopen = op {
                let old = s.take().unwrap();
                old.flush().unwrap();
                drop(old);
                s = Some(Store::open(&path).unwrap());
            } else {
                apply(s.as_ref().unwrap(), &mut m, op);
            }
            check(s.as_ref().unwrap(), &m);
        }
    }
}
