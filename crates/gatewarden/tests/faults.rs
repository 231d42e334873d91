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
