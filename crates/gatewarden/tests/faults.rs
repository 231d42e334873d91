//! Faults injected into the real daemon binary. Each test breaks something
//! the way the field does (kill -9 mid-work, …) and checks that no promise
//! gatewarden made was broken: what it told someone survives.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Credentials only, a log actuator, no cooldown between two openings.
const GATE: &str = "[access]\ncooldown = \"1ms\"\n[[gates]]\nname = \"north\"\nactuator = { kind = \"log\" }\n";

#[tokio::test(flavor = "multi_thread")]
async fn every_gate_decision_answered_opened_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, GATE);
    let mut d = Daemon::start(dir.path(), &text, http).await;
    d.post("/residents", json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810"})).await;
    let answered = Arc::new(AtomicUsize::new(0));
    for round in 0..6u64 {
        // Four keypads present the PIN as fast as the daemon answers.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut presenters = Vec::new();
        for _ in 0..4 {
            let (answered, stop) = (answered.clone(), stop.clone());
            let url = format!("http://127.0.0.1:{http}/api/v1/gates/north/credential");
            let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
            presenters.push(tokio::spawn(async move {
                let c = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(r) = c.post(&url).bearer_auth(token.trim()).json(&json!({"kind": "pin", "value": "246810"})).send().await else { break };
                    let Ok(v) = r.json::<serde_json::Value>().await else { break };
                    if v["opened"] == true {
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        // Kill at an arbitrary instant in the stream of decisions.
        tokio::time::sleep(Duration::from_millis(300 + (round * 137) % 500)).await;
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        for p in presenters {
            let _ = p.await;
        }
        d.restart().await;
        let log = d.get("/log").await;
        let opened = log.as_array().unwrap().iter().filter(|e| e["entry"]["opened"] == true).count();
        let told = answered.load(Ordering::SeqCst);
        assert!(told > 0, "round {round}: no decision was answered; the test did nothing");
        assert!(opened >= told, "round {round}: {told} answered \"opened\" but only {opened} in the entry log after kill -9");
    }
    // The fsync before each answer is measured.
    let c = reqwest::Client::new();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let r: serde_json::Value = c
        .post(format!("http://127.0.0.1:{http}/api/v1/gates/north/credential"))
        .bearer_auth(token.trim())
        .json(&json!({"kind": "pin", "value": "246810"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["opened"], true);
    assert!(d.metric("gatewarden_entry_sync_seconds_count").await >= 1.0);
}

/// What the MQTT task has read off the socket (all kinds), and the SOS-carrying
/// wristband sightings presence has applied.
async fn read_and_applied(d: &Daemon) -> (f64, f64) {
    let m = d.metrics().await;
    let read = m.lines().filter(|l| l.starts_with("gatewarden_mqtt_messages_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum();
    let applied = m.lines().find_map(|l| l.strip_prefix("gatewarden_sightings_total{kind=\"wristband\"} ").and_then(|v| v.trim().parse().ok())).unwrap_or(0.0);
    (read, applied)
}

/// An SOS the broker accepted (QoS 1) behind a storm of gateway status
/// changes (each one an alert change, committed with an fsync), the daemon
/// killed the moment it has read the SOS off the socket: after the restart
/// the SOS alert still reaches staff, exactly once. With acknowledgements on
/// read, the SOS sat acknowledged in the 4,096-slot channel and died there.
#[tokio::test(flavor = "multi_thread")]
async fn an_sos_in_flight_at_kill_9_still_alerts_after_restart() {
    let World { _dir, broker, rx, mut d } = world(HOOK_LADDER).await;
    for round in 1..=3 {
        d.post("/elders", json!({"id": format!("E{round}"), "name": format!("老人E{round}"), "bands": [format!("c3a1f00000{round:02}")]})).await;
    }
    let p = broker.publisher().await;
    let storm = 3_000usize;
    for round in 1..=3u32 {
        let (read0, _) = read_and_applied(&d).await;
        for i in 0..storm {
            p.publish("home/gwflood/LWT", if i % 2 == 0 { "offline" } else { "online" }).await;
        }
        p.publish("gatewarden/t/sighting", format!(r#"{{"band":"c3a1f00000{round:02}","gateway":"b3","sos":true}}"#)).await;
        // Kill as soon as the SOS has been read off the socket, whether or not it was applied.
        let want = read0 + storm as f64 + 1.0;
        let (read, applied) = eventually("the daemon reads the storm and the SOS", 60, async || {
            let (r, a) = read_and_applied(&d).await;
            (r >= want).then_some((r, a))
        })
        .await;
        d.kill9();
        eprintln!("round {round}: killed with {read} messages read; SOS applied: {}", applied > 0.0);
        d.restart().await;
        let who = format!("老人E{round}");
        eventually("the SOS notification after the restart", 30, async || {
            rx.accepted("/hook").iter().any(|r| r.text().contains(&who) && r.text().contains("SOS")).then_some(())
        })
        .await;
        let alerts = d.get("/alerts").await;
        let sos = alerts.as_array().unwrap().iter().filter(|a| a["kind"] == "sos" && a["subject"]["id"] == format!("E{round}")).count();
        assert_eq!(sos, 1, "round {round}: exactly one SOS episode: {alerts}");
    }
}

/// A panic in the monitor (the heart of alerting) used to leave the process
/// up, /healthz ok, and nobody alerting. Now the daemon stops non-zero so
/// systemd restarts it, and the restarted daemon delivers an SOS.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_task_stops_the_daemon_non_zero_and_a_restart_alerts_again() {
    let World { _dir, broker, rx, mut d } = world(HOOK_LADDER).await;
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0000001"]})).await;
    d.post("/debug/panic", json!({})).await;
    let st = d.wait_exit(15).unwrap_or_else(|| panic!("the daemon stayed up after its monitor panicked; log:\n{}", d.log()));
    assert!(!st.success(), "exit status {st}: systemd restarts only a failure");
    assert!(d.log().contains("the monitor task panicked"), "the log names the task:\n{}", d.log());
    d.restart().await;
    broker.publisher().await.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0000001","gateway":"b3","sos":true}"#).await;
    eventually("the SOS after the restart", 15, async || rx.accepted("/hook").iter().any(|r| r.text().contains("SOS")).then_some(())).await;
}

/// Flip one byte of sled's data file at several offsets, the way a failing
/// SD card does. The daemon either refuses to start (naming the restore that
/// fixes it, and making no new keys) or comes up with every record it had:
/// never "ok" with fewer. `gatewarden store check` agrees with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_flipped_byte_in_the_store_never_starts_ok_with_fewer_records() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "");
    let mut d = Daemon::start(dir.path(), &text, http).await;
    for i in 0..40 {
        d.post("/elders", json!({"id": format!("E{i:02}"), "name": format!("老人{i:02}"), "bands": [format!("c3a1f00100{i:02}")]})).await;
    }
    d.post("/staff", json!({"id": "S1", "name": "王网格", "phone": "13800001111"})).await;
    assert!(d.terminate().success());
    let db = dir.path().join("db");
    let pristine = tempfile::tempdir().unwrap();
    let copy = |from: &std::path::Path, to: &std::path::Path| {
        let st = std::process::Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).status().unwrap();
        assert!(st.success());
    };
    copy(&db, pristine.path());
    let check = d.cli(&["store", "check"]);
    assert!(check.status.success(), "store check on the whole store: {}", String::from_utf8_lossy(&check.stdout));
    let size = std::fs::metadata(pristine.path().join("db")).unwrap().len();
    let token_before = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let (mut refused, mut whole) = (0, 0);
    for pct in [5u64, 20, 35, 50, 65, 80, 95] {
        std::fs::remove_dir_all(&db).unwrap();
        std::fs::create_dir(&db).unwrap();
        copy(pristine.path(), &db);
        let off = size * pct / 100;
        let mut bytes = std::fs::read(db.join("db")).unwrap();
        bytes[off as usize] ^= 0xFF;
        std::fs::write(db.join("db"), &bytes).unwrap();
        let check = d.cli(&["store", "check"]);
        match d.try_restart().await {
            Err(log) => {
                refused += 1;
                eprintln!("flip at {pct}% ({off} of {size}): refused: {}", log.lines().rev().find(|l| l.starts_with("error:")).unwrap_or("?"));
                assert!(log.contains("gatewarden restore"), "offset {off}: the refusal names the fix:\n{log}");
                assert!(!check.status.success(), "offset {off}: the daemon refused but `store check` said OK:\n{}", String::from_utf8_lossy(&check.stdout));
            }
            Ok(()) => {
                let elders = d.get("/elders").await.as_array().unwrap().len();
                let staff = d.get("/staff").await.as_array().unwrap().len();
                assert_eq!((elders, staff), (40, 1), "offset {off}: came up with fewer records than it had");
                assert_eq!(std::fs::read_to_string(dir.path().join("admin.token")).unwrap(), token_before, "offset {off}: no new secrets");
                whole += 1;
                eprintln!("flip at {pct}% ({off} of {size}): started with every record");
                assert!(d.terminate().success());
            }
        }
    }
    eprintln!("{refused} refused, {whole} started whole");
    assert!(refused > 0, "no flip was detected: the test did not exercise damage");
    // The pristine store starts, and a restart after a clean stop is "exact".
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::create_dir(&db).unwrap();
    copy(pristine.path(), &db);
    d.restart().await;
    assert_eq!(d.get("/elders").await.as_array().unwrap().len(), 40);
    assert!(d.log().contains("store matches its integrity manifest"));
}

/// A store emptied under the daemon (sled starting afresh on an unreadable
/// file) is refused: it is not the store that ran here.
#[tokio::test(flavor = "multi_thread")]
async fn an_emptied_store_is_refused_and_no_new_secrets_are_made() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "");
    let mut d = Daemon::start(dir.path(), &text, http).await;
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0010001"]})).await;
    assert!(d.terminate().success());
    let db = dir.path().join("db");
    for f in std::fs::read_dir(&db).unwrap().flatten() {
        if f.file_name() != "gatewarden-integrity.json" {
            let p = f.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap()
            } else {
                std::fs::remove_file(p).unwrap()
            }
        }
    }
    let log = d.try_restart().await.expect_err("the daemon started on an emptied store");
    assert!(log.contains("is damaged") && log.contains("gatewarden restore"), "{log}");
}

/// A scheduled backup is written, verified and pruned to `backup_keep`.
#[tokio::test(flavor = "multi_thread")]
async fn scheduled_backups_are_written_verified_and_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "").replace("[store]\n", "[store]\nbackup_every = \"1s\"\nbackup_keep = 2\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0010001"]})).await;
    let backups = dir.path().join("backups");
    let list = || -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&backups)
            .map(|r| r.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "gwbackup")).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    // The test clock does not move, so names would collide: move it a second per backup.
    eventually("three scheduled backups taken", 20, async || {
        d.advance("1s").await;
        (d.metric("gatewarden_scheduled_backups_total{kind=\"ok\"}").await >= 3.0).then_some(())
    })
    .await;
    let files = list();
    assert_eq!(files.len(), 2, "pruned to backup_keep: {files:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&files[1]).unwrap().permissions().mode() & 0o777, 0o600);
    for f in &files {
        let h = store::Store::verify_backup(&std::fs::read(f).unwrap()).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(h.records > 0);
    }
}

async fn step_clock(d: &Daemon, by: &str) {
    d.post("/debug/clock", json!({ "step": by })).await;
}

/// Absence notifications the receiver got for this elder id.
fn absence_for(rx: &Receiver, elder: &str) -> usize {
    rx.accepted("/hook")
        .iter()
        .filter(|r| r.json()["alerts"][0]["labels"]["alertname"] == "absence" && r.json()["alerts"][0]["labels"]["subject"] == elder)
        .count()
}

/// The clock ran 30 h ahead, an elder was seen meanwhile, then NTP stepped it
/// back. The sighting is re-anchored into the corrected frame, so the absence
/// alert fires 48 h after it, not 30 h late.
#[tokio::test(flavor = "multi_thread")]
async fn a_clock_stepped_back_after_running_ahead_still_alerts_on_time() {
    let World { _dir, broker, rx, d } = world(HOOK_LADDER).await;
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0000001"]})).await;
    let p = broker.publisher().await;
    step_clock(&d, "30h").await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0000001","gateway":"b3"}"#).await;
    eventually("E1 seen while the clock runs ahead", 10, async || (!d.last_seen("E1").await.is_null()).then_some(())).await;
    step_clock(&d, "-30h").await;
    let h = d.health().await;
    assert!(h["clock"]["last_step_s"].as_i64().unwrap() <= -30 * 3600 + 5, "{h}");
    let seen = d.last_seen("E1").await["at"].as_str().unwrap().to_string();
    let now = d.advance("0s").await;
    assert!(seen <= now, "last-seen {seen} is not in the future of {now}");
    d.advance("47h").await;
    assert_eq!(absence_for(&rx, "E1"), 0, "not before 48 h");
    d.advance("2h").await;
    eventually("E1's absence alert 48 h after the sighting", 15, async || (absence_for(&rx, "E1") > 0).then_some(())).await;
    assert!(d.metric("gatewarden_clock_steps_total{kind=\"backward\"}").await >= 1.0);
}

/// NTP jumps the clock 60 h forward. Elders seen in this run are re-anchored
/// (their absence is not 60 h older than it is), absence is held for the
/// grace and /healthz tells ops; the rule works again afterwards. A clock
/// before the build (a box without an RTC) judges no absence at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_large_forward_step_tells_ops_instead_of_paging_every_grid_worker() {
    let World { _dir, broker, rx, d } = world(HOOK_LADDER).await;
    let p = broker.publisher().await;
    for i in 1..=3 {
        d.post("/elders", json!({"id": format!("E{i}"), "name": format!("老人E{i}"), "bands": [format!("c3a1f000000{i}")]})).await;
        p.publish("gatewarden/t/sighting", format!(r#"{{"band":"c3a1f000000{i}","gateway":"b3"}}"#)).await;
    }
    eventually("all three seen", 10, async || (d.metric("gatewarden_sightings_total{kind=\"wristband\"}").await >= 3.0).then_some(())).await;
    step_clock(&d, "60h").await;
    let h = d.health().await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(h["clock"]["holding_until"].is_string(), "{h}");
    assert!(d.metric("gatewarden_clock_steps_total{kind=\"forward\"}").await >= 1.0);
    d.advance("31m").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(rx.accepted("/hook").len(), 0, "nobody paged for a clock step: {:?}", rx.accepted("/hook").iter().map(|r| r.text()).collect::<Vec<_>>());
    d.advance("48h").await;
    eventually("the rule works after the step", 15, async || ((1..=3).all(|i| absence_for(&rx, &format!("E{i}")) > 0)).then_some(())).await;
    // Back to 1970: the clock is implausible, and no new absence is judged.
    d.post("/elders", json!({"id": "E4", "name": "老人E4", "bands": ["c3a1f0000004"]})).await;
    step_clock(&d, "-500000h").await;
    assert_eq!(d.health().await["clock"]["implausible"], true);
    d.advance("100h").await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(absence_for(&rx, "E4"), 0, "absence judged on a 1970 clock");
}

/// A size-limited tmpfs mounted for one test (CI runs as root), unmounted
/// when dropped: declare it before the daemon, so the daemon stops first.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(at).status().expect("mount(8)");
        assert!(st.success(), "mounting a tmpfs needs root (CI runs as root); mount exited {st}");
        SmallDisk(at.to_owned())
    }

    /// Fill it up: write until the filesystem says ENOSPC.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let p = self.0.join("filler");
        let mut f = std::fs::File::create(&p).unwrap();
        let block = vec![0xA5u8; 64 * 1024];
        loop {
            if let Err(e) = f.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(28), "filling stops at ENOSPC: {e}");
                break;
            }
        }
        p
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The store's disk fills up. An SOS read meanwhile cannot be stored: the
/// daemon holds it (and the broker's acknowledgement, and a grid worker's
/// acknowledgement of an earlier alert) in memory, sends nothing it has not
/// stored, and says so in /healthz and a metric. Once space returns it
/// reopens the store and the SOS reaches staff, exactly once; the
/// acknowledgement is answered only then; a clean restart finds both.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_holds_alerts_until_space_returns_and_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("db"), "48m");
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let text = config(dir.path(), broker.port, http, &HOOK_LADDER.replace("{R}", &rx.url("")));
    let mut d = Daemon::start(dir.path(), &text, http).await;
    for e in ["E1", "E2"] {
        d.post("/elders", json!({"id": e, "name": format!("老人{e}"), "bands": [format!("c3a1f00000{}", &e[1..].parse::<u8>().unwrap() + 10)]})).await;
    }
    let p = broker.publisher().await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0000011","gateway":"b3","sos":true}"#).await;
    eventually("the first SOS", 15, async || rx.accepted("/hook").iter().any(|r| r.text().contains("老人E1")).then_some(())).await;
    let first = d.get("/alerts").await.as_array().unwrap().iter().find(|a| a["kind"] == "sos").unwrap()["id"].as_u64().unwrap();

    let filler = disk.fill();
    // sled writes into pages it already has until it needs a new one: gateway
    // status changes (each an fsynced alert change) until a write is refused.
    let mut i = 0;
    eventually("a store write refused", 30, async || {
        for _ in 0..20 {
            i += 1;
            p.publish("home/gwfill/LWT", if i % 2 == 0 { "online" } else { "offline" }).await;
        }
        (d.health().await["store_writable"] == false).then_some(())
    })
    .await;
    let sent_before = rx.accepted("/hook").len();
    // A grid worker acknowledges the first SOS while the disk is full.
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let ack = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http}/api/v1/alerts/{first}/ack"))
            .bearer_auth(token.trim())
            .json(&json!({"by": "李网格"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0000012","gateway":"b3","sos":true}"#).await;
    eventually("/healthz says the store refuses writes", 15, async || {
        let h = d.health().await;
        (h["store_writable"] == false && h["status"] == "degraded").then_some(())
    })
    .await;
    eventually("alert changes held in memory", 10, async || (d.metric("gatewarden_alerts_uncommitted ").await > 0.0).then_some(())).await;
    assert!(d.metric("gatewarden_store_write_failures_total ").await > 0.0);
    assert!(!rx.accepted("/hook").iter().any(|r| r.text().contains("老人E2")), "nothing is sent before it is stored");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(rx.accepted("/hook").len() <= sent_before + 1, "a delivery that cannot be recorded is not sent again and again");
    assert!(!ack.is_finished(), "the acknowledgement is not answered before it is stored");
    assert!(d.log().contains("CANNOT STORE ALERTS"), "the log says so:\n{}", d.log());

    std::fs::remove_file(filler).unwrap();
    eventually("the held SOS once space returns", 20, async || rx.accepted("/hook").iter().any(|r| r.text().contains("老人E2")).then_some(())).await;
    let (code, body) = ack.await.unwrap();
    assert_eq!(code, 200, "the acknowledgement is answered once stored: {body}");
    eventually("/healthz ok again", 15, async || (d.health().await["status"] == "ok").then_some(())).await;
    assert_eq!(d.metric("gatewarden_alerts_uncommitted ").await, 0.0);

    assert!(d.terminate().success(), "a clean stop");
    d.restart().await;
    let alerts = d.get("/alerts?all=true").await;
    let sos: Vec<_> = alerts.as_array().unwrap().iter().filter(|a| a["kind"] == "sos").collect();
    assert_eq!(sos.len(), 2, "both SOS episodes, once each: {alerts}");
    assert!(sos.iter().any(|a| a["id"] == first && a["acked_by"] == "李网格"), "the acknowledgement survived: {alerts}");
    let e2 = rx.accepted("/hook").iter().filter(|r| r.text().contains("老人E2") && r.text().contains("SOS")).count();
    assert_eq!(e2, 1, "the held SOS was sent once");
    drop(d);
    drop(disk);
}

/// A task stuck in blocking code (here the monitor, its thread blocked as a
/// hung native call would block it) stops beating: /healthz names it and says
/// degraded, and the metric shows its age; once it runs again, ok. Before,
/// /healthz had no view of the tasks at all.
#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_task_is_named_in_healthz_until_it_runs_again() {
    let World { _dir, broker: _broker, rx: _rx, d } = world(HOOK_LADDER).await;
    let h = eventually("every task beating", 10, async || {
        let h = d.health().await;
        (h["status"] == "ok").then_some(h)
    })
    .await;
    for t in ["monitor", "mqtt", "http", "outbox:hook", "retention", "upkeep"] {
        assert!(h["tasks"][t]["heartbeat_age_s"].as_f64().is_some_and(|a| a < 5.0), "{t} beats: {h}");
    }
    d.post("/debug/hang", json!({"secs": 16})).await;
    let h = eventually("the stuck monitor named in /healthz", 25, async || {
        let h = d.health().await;
        h["stale_tasks"].as_array().is_some_and(|s| s.iter().any(|t| t == "monitor")).then_some(h)
    })
    .await;
    assert_eq!(h["status"], "degraded", "{h}");
    assert!(d.metric(r#"gatewarden_task_heartbeat_age_seconds{task="monitor"}"#).await > 10.0);
    eventually("ok once it runs again", 20, async || (d.health().await["status"] == "ok").then_some(())).await;
}
