//! `gatewarden backup` while the daemon runs and writes, and `gatewarden
//! restore` onto a stopped box: a damaged file or a running daemon is refused
//! with nothing touched, and the restored box carries on where it was.

mod common;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_under_load_restores_into_a_box_that_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let cfg = config(dir.path(), broker.port, http, &HOOK_LADDER.replace("{R}", &rx.url("")));
    let mut d = Daemon::start(dir.path(), &cfg, http).await;

    // E1 goes unseen for 49h: one open alert episode to carry across.
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0000001"]})).await;
    let now = d.advance("49h").await;
    let alert = eventually("E1's absence alert", 10, async || d.get("/alerts").await.as_array().unwrap().first().cloned()).await;
    for i in 2..=20 {
        d.post("/elders", json!({"id": format!("E{i}"), "name": format!("老人E{i}"), "bands": [format!("c3a1f00000{i:02}")]})).await;
    }
    d.post("/staff", json!({"id": "S1", "name": "李网格", "phone": "13900001111"})).await;

    // Sightings keep flowing while the backup is taken.
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let p = broker.publisher().await;
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let i = 2 + n % 19;
                p.publish(&format!("home/gw/BTtoMQTT/C3A1F00000{i:02}"), format!(r#"{{"id":"C3:A1:F0:00:00:{i:02}","rssi":-60}}"#)).await;
                n += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            n
        })
    };
    eventually("sightings flowing", 10, async || (!d.last_seen("E20").await.is_null()).then_some(())).await;
    let file = dir.path().join("box.gwbak");
    let out = d.cli(&["backup", "--out", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("records in"), "{}", text(&out));
    stop.store(true, Ordering::Relaxed);
    assert!(flood.await.unwrap() > 0);

    // A running daemon holds the store: restore refuses and says why.
    let out = d.cli(&["restore", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("stop the daemon first"), "{}", text(&out));

    let elders_before = d.get("/elders").await;
    assert!(d.terminate().success());

    // A damaged copy is refused before the store is touched.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let damaged = dir.path().join("damaged.gwbak");
    std::fs::write(&damaged, &bytes).unwrap();
    let out = d.cli(&["restore", damaged.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("damaged or truncated"), "{}", text(&out));
    std::fs::write(&damaged, &bytes[..bytes.len() - 100]).unwrap();
    let out = d.cli(&["restore", damaged.to_str().unwrap()]);
    assert!(text(&out).contains("damaged or truncated"), "{}", text(&out));
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("db."))
        .collect();
    assert!(leftovers.is_empty(), "a refused restore left {leftovers:?}");

    // Without this box's template key, the sealed faces could not be opened: refused unless asked.
    let key = dir.path().join("template.key");
    std::fs::rename(&key, dir.path().join("template.key.saved")).unwrap();
    let out = d.cli(&["restore", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("template key"), "{}", text(&out));
    std::fs::rename(dir.path().join("template.key.saved"), &key).unwrap();

    // The disk is lost: restore onto an empty store path.
    std::fs::remove_dir_all(dir.path().join("db")).unwrap();
    let out = d.cli(&["restore", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("restored"), "{}", text(&out));

    d.restart_at(&now).await;
    assert_eq!(d.get("/elders").await.as_array().unwrap().len(), 20);
    let ids = |v: &serde_json::Value| v.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&d.get("/elders").await), ids(&elders_before));
    assert!(!d.last_seen("E20").await.is_null(), "last-seen state restored");
    let alerts = d.get("/alerts").await;
    assert_eq!(alerts.as_array().unwrap().len(), 1);
    assert_eq!(alerts[0]["id"], alert["id"], "the open episode continues: {alerts}");
    assert_eq!(d.get("/staff").await.as_array().unwrap().len(), 1);
    // Ids handed out after the restore never collide with ones from before it.
    let leave = d.post("/leaves", json!({"elder": "E2", "from": "2026-01-01T00:00:00+08:00", "until": "2026-01-05T00:00:00+08:00", "note": "探亲"})).await;
    assert!(leave["id"].as_u64().unwrap() > alert["id"].as_u64().unwrap(), "leave {leave} vs alert {alert}");
    // And the restored box still alerts: E2..E20 go unseen for 49h.
    d.advance("49h").await;
    eventually("alerts after the restore", 15, async || (d.get("/alerts").await.as_array().unwrap().len() >= 20).then_some(())).await;
}
