//! The real daemon under attack. Each test runs one attack against the
//! release-shaped binary on loopback, asserts that it fails, and then that
//! the daemon still delivers a real alert to a real HTTP receiver.
//! SECURITY.md names the boundary each attack probes.

mod common;
use common::*;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};

async fn enroll(d: &Daemon, id: &str, band: &str) {
    d.post("/elders", json!({"id": id, "name": format!("老人{id}"), "building": "3栋", "room": "401", "bands": [band]})).await;
}

/// An HTTP client whose requests come from another loopback address, so it
/// has a rate-limit budget of its own.
fn client_from(last_octet: u8) -> reqwest::Client {
    reqwest::Client::builder().local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet))).build().unwrap()
}

/// The first absence alert's acknowledgement link, as staff received it.
async fn absence_link(w: &World) -> String {
    let m =
        eventually("the absence alert", 15, async || w.rx.accepted("/hook").into_iter().find(|m| m.json()["alerts"][0]["labels"]["alertname"] == "absence"))
            .await;
    m.json()["alerts"][0]["generatorURL"].as_str().unwrap().to_string()
}

async fn sos_reaches_staff(w: &World, elder: &str, band: &str) {
    let p = w.broker.publisher().await;
    p.publish("gatewarden/t/sighting", format!(r#"{{"band":"{band}","gateway":"b3","sos":true}}"#)).await;
    eventually("a real SOS reaches the receiver", 15, async || {
        w.rx.accepted("/hook")
            .into_iter()
            .any(|m| m.json()["alerts"][0]["labels"]["alertname"] == "sos" && m.json()["alerts"][0]["labels"]["subject"] == elder)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_ack_tags_never_acknowledge_and_the_real_alert_still_goes_out() {
    let w = world(HOOK_LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("49h").await;
    let link = absence_link(&w).await;
    let (base, token) = link.rsplit_once("/ack/").unwrap();
    let (payload, _tag) = token.split_once('.').unwrap();

    // Every 1-byte tag (the old verifier accepted any prefix): none
    // acknowledges, and the per-client limit stops the run early.
    let attacker = client_from(1);
    let mut codes = std::collections::BTreeMap::<u16, usize>::new();
    for b in 0..=255u8 {
        use base64::Engine as _;
        let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([b]);
        let r = attacker.post(format!("{base}/ack/{payload}.{t}")).form(&[("by", "attacker")]).send().await.unwrap();
        *codes.entry(r.status().as_u16()).or_default() += 1;
    }
    assert!(!codes.contains_key(&200), "a forged tag acknowledged: {codes:?}");
    assert!(codes.get(&429).copied().unwrap_or(0) >= 200, "the per-client limit must stop a guessing run: {codes:?}");
    assert_eq!(w.d.get("/alerts").await[0]["state"], "firing", "the alert is still open");

    // The real link, from a phone (another address), shows who and where.
    let phone = client_from(2);
    let page = phone.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let text = page.text().await.unwrap();
    assert!(text.contains("老人E1") && text.contains("3栋-401"), "the page names the elder and the address: {text}");
    assert_eq!(phone.post(&link).form(&[("by", "网格员")]).send().await.unwrap().status(), 200);
    assert_eq!(w.d.get("/alerts").await[0]["state"], "acknowledged");

    // And alerting goes on: an SOS still reaches staff.
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ack_link_works_only_for_its_own_open_episode() {
    let w = world(HOOK_LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("49h").await;
    let link = absence_link(&w).await;
    let client = client_from(3);
    // The elder comes back: the episode resolves, and its link is refused.
    let p = w.broker.publisher().await;
    p.publish("home/gw1/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01"}"#).await;
    eventually("the absence resolved", 10, async || (w.d.get("/alerts?all=true").await[0]["state"] == "resolved").then_some(())).await;
    let r = client.post(&link).form(&[("by", "x")]).send().await.unwrap();
    assert_eq!(r.status(), 409, "a resolved alert cannot be acknowledged");
    // A second absence episode later: the first episode's link does not open it.
    w.d.advance("49h").await;
    eventually("a second absence alert", 15, async || {
        w.d.get("/alerts").await.as_array().unwrap().iter().find(|a| a["kind"] == "absence" && a["state"] == "firing").cloned()
    })
    .await;
    let r = client.post(&link).form(&[("by", "x")]).send().await.unwrap();
    assert!(r.status() == 403 || r.status() == 409, "an old episode's link must not acknowledge a new one: {}", r.status());
    assert!(w.d.get("/alerts").await.as_array().unwrap().iter().any(|a| a["state"] == "firing"), "the new episode is still open");
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_roster_files_are_refused_and_the_daemon_stays_up() {
    let w = world(HOOK_LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let dir = tempfile::tempdir().unwrap();
    // A tiny XLSX that declares cells at A1 and XFD1048576: read as a range,
    // it would allocate the whole sheet (the old reader aborted the daemon).
    let path = dir.path().join("huge.xlsx");
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.write_string(0, 0, "name").unwrap();
    ws.write_string(1_048_575, 16_383, "x").unwrap();
    wb.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() < 16 * 1024, "the attack file is small: {} bytes", bytes.len());
    let (code, v) = w.d.post_bytes("/roster/parse?name=huge.xlsx", bytes).await;
    assert_eq!(code, 400, "{v}");
    assert!(v.to_string().contains("column") || v.to_string().contains("row"), "a clear reason: {v}");
    // A CSV with a row of 10,000 fields, and one with a 1 MB field.
    let wide = format!("name,{}\n", vec!["x"; 10_000].join(","));
    let (code, v) = w.d.post_bytes("/roster/parse?name=wide.csv", wide.into_bytes()).await;
    assert_eq!(code, 400, "{v}");
    let long = format!("name\n{}\n", "x".repeat(1 << 20));
    let (code, v) = w.d.post_bytes("/roster/parse?name=long.csv", long.into_bytes()).await;
    assert_eq!(code, 400, "{v}");
    // Still up, still alerting.
    assert_eq!(w.d.health().await["store"], true);
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
}

#[test]
fn dangerous_config_values_are_refused_at_load_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("ack.key");
    std::fs::write(&empty, "").unwrap();
    for (extra, key) in [
        (format!("[http]\nack_secret_file = \"{}\"\n", empty.display()), "http.ack_secret_file"),
        ("[console]\nlogin_max_failures = 0\n".to_string(), "console.login_max_failures"),
        ("[presence]\ntick_interval = \"0s\"\n".to_string(), "presence.tick_interval"),
    ] {
        let cfg = dir.path().join("gw.toml");
        std::fs::write(&cfg, format!("site = \"t\"\n[store]\npath = \"{}\"\n{extra}", dir.path().join("db").display())).unwrap();
        let o = std::process::Command::new(bin()).args(["config", "check"]).arg(&cfg).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(!o.status.success() && text.contains(key), "{key}: {text}");
        // And `run` refuses it too, rather than starting with it.
        let mut child = std::process::Command::new(bin())
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break Some(st);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert!(status.is_some_and(|s| !s.success()), "run must refuse {key} at once");
    }
}
