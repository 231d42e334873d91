//! `gatewarden-bench-store`: how long `backup` freezes the store's writers, and
//! how long `restore` takes, on a compound-sized store. Prints figures for
//! BENCHMARKS.md.
//!
//!   gatewarden-bench-store [--elders 5000] [--people 3000] [--entries 100000]

use domain::gate::log::{Credential, Direction, Entry};
use domain::gate::policy::{Person, PersonKind};
use domain::presence::{Elder, LastSeen, Source};
use gatewarden_store::{PersonRecord, Store, TemplateKeys};
use std::time::Instant;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (n_elders, n_people, n_entries) = (arg("--elders", 5000), arg("--people", 3000), arg("--entries", 100_000));
    let dir = tempfile::tempdir()?;
    let store = Store::open(&dir.path().join("db"))?;
    store.set_template_keys(TemplateKeys { current: rand::random(), previous: None });
    store.set_person_keys(gatewarden_store::PersonKeys::load_or_create(&dir.path().join("person.keys"))?);
    store.set_entry_key(rand::random::<[u8; 32]>().to_vec());
    let now = chrono::Utc::now();
    let t = Instant::now();
    for i in 0..n_elders {
        let e = Elder {
            id: format!("E{i:05}"),
            name: format!("老人{i}"),
            building: "3栋".into(),
            unit: "2单元".into(),
            room: format!("{}", 100 + i % 900),
            grid: format!("g{}", i % 20),
            phone: None,
            bands: vec![format!("C3:A1:{:02X}:{:02X}:{:02X}:01", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff).parse()?],
            emergency_contacts: vec![],
            categories: vec!["over70".into()],
            notes: String::new(),
            enrolled_at: now,
            absence_after_secs: None,
        };
        store.put_elder(&e, true)?;
    }
    let seen: Vec<(String, LastSeen)> = (0..n_elders)
        .map(|i| (format!("E{i:05}"), LastSeen { at: now, source: Source::Wristband, place: "gw-east".into(), band_at: Some(now), battery: Some(80) }))
        .collect();
    store.put_last_seen_batch(&seen, false)?;
    for i in 0..n_people {
        let p = Person {
            id: format!("R{i:05}"),
            name: format!("住户{i}"),
            kind: PersonKind::Resident,
            unit: format!("{}-{}", i % 30, 100 + i % 900),
            elder: None,
            pin_hash: Some(format!("{:064x}", i)),
            cards: vec![],
            qr_hash: None,
            valid_from: None,
            valid_until: None,
        };
        let r = PersonRecord { person: p, consent: None, id_masked: None, id_hash: None, host_unit: None, plate: None, created_at: now };
        let emb: Vec<f32> = (0..128).map(|j| ((i * 31 + j) % 97) as f32 / 97.0).collect();
        store.replace_person(&r, &[emb])?;
    }
    for i in 0..n_entries {
        let e = Entry {
            at: now,
            gate: "north".into(),
            direction: Direction::In,
            credential: Credential::Face,
            person: Some(format!("R{:05}", i % n_people.max(1))),
            person_kind: "resident".into(),
            score: Some(0.7),
            liveness: Some(0.99),
            opened: true,
            reason: String::new(),
        };
        store.append_entry(&e)?;
    }
    store.flush()?;
    println!(
        "store filled in {:.1} s: {n_elders} elders with last-seen, {n_people} residents with a face template, {n_entries} entry-log records",
        t.elapsed().as_secs_f64()
    );

    // A gate decision: the entry-log append alone, then append + fsync, which
    // the gate task now does before the barrier moves (issue #12).
    let decision = |i: usize| Entry {
        at: now,
        gate: "north".into(),
        direction: Direction::In,
        credential: Credential::Pin,
        person: Some(format!("R{:05}", i % n_people.max(1))),
        person_kind: "resident".into(),
        score: None,
        liveness: None,
        opened: true,
        reason: String::new(),
    };
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        v[((v.len() as f64 - 1.0) * p) as usize]
    };
    let (mut plain, mut synced) = (Vec::new(), Vec::new());
    for i in 0..500 {
        let t = Instant::now();
        store.append_entry(&decision(i))?;
        plain.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        store.append_entry(&decision(i))?;
        store.flush()?;
        synced.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!(
        "gate decision log write over 500: append p50 {:.3} ms p99 {:.3} ms; append + fsync p50 {:.2} ms p99 {:.2} ms",
        pct(&mut plain, 0.5),
        pct(&mut plain, 0.99),
        pct(&mut synced, 0.5),
        pct(&mut synced, 0.99)
    );

    let mut times = Vec::new();
    let mut bytes = Vec::new();
    for _ in 0..5 {
        let mut out = Vec::new();
        let t = Instant::now();
        let h = store.backup(now.timestamp(), &mut out)?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        bytes = out;
        assert!(h.records > 0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    println!(
        "backup (writers paused for all of it): median {:.0} ms, min {:.0} ms, max {:.0} ms over 5 runs; file {:.1} MB",
        times[2],
        times[0],
        times[4],
        bytes.len() as f64 / 1e6
    );
    drop(store);
    let target = dir.path().join("restored");
    let t = Instant::now();
    let (h, _) = Store::restore(&bytes, &target, now.timestamp())?;
    let restore_ms = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let check = Store::open(&target)?;
    let reopened = check.list_elders()?.len();
    println!(
        "restore: {restore_ms:.0} ms for {} records (checksum, new store, fsync, rename); reopen and list {reopened} elders: {:.0} ms",
        h.records,
        t.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}
