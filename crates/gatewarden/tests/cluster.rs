//! Two boxes on one real mosquitto: presence is shared, exactly one box sends
//! absence alerts, and killing it hands the lease over with the open episode
//! intact (same id, its reminder comes from the new box, acknowledgement works).

mod common;
use common::*;
use serde_json::{json, Value};

const CLUSTER: &str = r#"
[cluster]
box_id = "{BOX}"
key_file = "{CKEY}"
lease_ttl = "3s"
claim_settle = "500ms"
[alert.absence]
after = "48h"
repeat_every = "6h"
escalate_after = "100d"
[alert.outbox]
retry_initial = "200ms"
retry_max = "1s"
[[alert.channels]]
name = "grid-wecom"
kind = "wecom"
url = "{R}/wecom"
[[alert.ladder]]
name = "网格员"
channels = ["grid-wecom"]
"#;

/// The site's cluster key, one file for every box of the tests.
fn cluster_key() -> std::path::PathBuf {
    static K: std::sync::OnceLock<(tempfile::TempDir, std::path::PathBuf)> = std::sync::OnceLock::new();
    K.get_or_init(|| {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("cluster.key");
        std::fs::write(&p, "cluster-test-key-0123456789abcdef0123456789abcdef").unwrap();
        (d, p)
    })
    .1
    .clone()
}

struct Box {
    _dir: tempfile::TempDir,
    d: Daemon,
}

async fn start_box(name: &str, broker: &Mosquitto, rx: &Receiver) -> Box {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let extra = CLUSTER.replace("{BOX}", name).replace("{R}", &rx.url("")).replace("{CKEY}", &cluster_key().display().to_string());
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &extra), http).await;
    Box { _dir: dir, d }
}

async fn cluster(d: &Daemon) -> Value {
    d.health().await["cluster"].clone()
}

/// Wait until exactly one of the boxes alerts and all agree who; returns its index.
async fn leader(boxes: &[&Daemon]) -> usize {
    eventually("one alerting box that every box agrees on", 20, async || {
        let mut views = Vec::new();
        for d in boxes {
            views.push(cluster(d).await);
        }
        let alerting: Vec<usize> = (0..views.len()).filter(|&i| views[i]["alerting"] == true).collect();
        let holder = &views[0]["lease_holder"];
        let agree = views.iter().all(|v| &v["lease_holder"] == holder && !holder.is_null());
        (alerting.len() == 1 && agree && views[alerting[0]]["box"] == *holder).then(|| alerting[0])
    })
    .await
}

fn about(rx: &Receiver, elder: &str) -> Vec<String> {
    rx.accepted("/wecom").iter().map(|r| r.text()).filter(|t| t.contains(&format!("老人{elder}"))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_boxes_share_presence_send_one_alert_and_hand_over_the_open_episode() {
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    rx.set_default(200, r#"{"errcode":0,"errmsg":"ok"}"#);
    let mut a = start_box("box-a", &broker, &rx).await;
    let mut b = start_box("box-b", &broker, &rx).await;
    for bx in [&a, &b] {
        for (id, band) in [("E1", "c3a1f0001101"), ("E2", "c3a1f0001102")] {
            bx.d.post("/elders", json!({"id": id, "name": format!("老人{id}"), "bands": [band]})).await;
        }
    }
    let now = a.d.advance("1s").await;
    b.d.set_clock(&now).await;
    let li = leader(&[&a.d, &b.d]).await;
    let (lead, standby) = if li == 0 { (&a, &b) } else { (&b, &a) };
    let standby_name = cluster(&standby.d).await["box"].as_str().unwrap().to_string();

    // A face at the standby's gate keeps E1 present on the alerting box…
    standby.d.post("/sightings/face", json!({"elder": "E1", "gate": "north"})).await;
    let seen = eventually("E1's face at the standby reaches the alerting box", 10, async || {
        let l = lead.d.last_seen("E1").await;
        (l["source"] == "face").then_some(l)
    })
    .await;
    assert!(seen["place"].as_str().unwrap().contains(&standby_name), "{seen}");
    // …and a band near any BLE gateway reaches both boxes through the broker.
    let p = broker.publisher().await;
    let now = a.d.advance("30h").await;
    b.d.set_clock(&now).await;
    p.publish("home/gw-east/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01","rssi":-70}"#).await;
    for d in [&a.d, &b.d] {
        eventually("E1's band on both boxes", 10, async || (d.last_seen("E1").await["source"] == "wristband").then_some(())).await;
    }

    // 49h: E2 was never seen; E1 was seen 19h ago. Exactly one alert reaches staff.
    let now = a.d.advance("19h").await;
    b.d.set_clock(&now).await;
    eventually("E2's absence alert", 10, async || (!about(&rx, "E2").is_empty()).then_some(())).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(about(&rx, "E2").len(), 1, "one box alerted, once: {:?}", about(&rx, "E2"));
    assert!(about(&rx, "E1").is_empty(), "E1 was present thanks to shared presence");
    let alert = lead.d.get("/alerts").await[0].clone();
    eventually("the standby keeps a copy of the open episode", 10, async || {
        standby.d.get("/alerts").await.as_array().unwrap().iter().any(|x| x["id"] == alert["id"]).then_some(())
    })
    .await;
    // The standby refuses acknowledgements, naming the alerting box.
    let (code, body) = standby.d.api(reqwest::Method::POST, &format!("/alerts/{}/ack", alert["id"]), Some(json!({"by": "王网格"}))).await;
    assert_eq!(code, 409, "{body}");

    // The alerting box dies. Within the lease ttl and settle, the standby takes over.
    let lead_was_a = li == 0;
    let (dead, survivor) = if lead_was_a { (&mut a, &b) } else { (&mut b, &a) };
    dead.d.kill9();
    eventually("the standby takes the lease", 20, async || (cluster(&survivor.d).await["alerting"] == true).then_some(())).await;
    let open = survivor.d.get("/alerts").await;
    assert_eq!(open.as_array().unwrap().len(), 1, "{open}");
    assert_eq!(open[0]["id"], alert["id"], "the same episode continues");

    // Its reminder now comes from the new alerting box; no second episode opens.
    let now = survivor.d.advance("6h").await;
    let reminders = eventually("the reminder from the new alerting box", 15, async || {
        let r = about(&rx, "E2");
        (r.len() >= 2).then_some(r)
    })
    .await;
    assert!(reminders[1].contains("提醒"), "{}", reminders[1]);
    assert_eq!(survivor.d.get("/alerts").await.as_array().unwrap().len(), 1);
    let acked = survivor.d.post(&format!("/alerts/{}/ack", alert["id"]), json!({"by": "王网格"})).await;
    assert_eq!(acked["state"], "acknowledged");
    // Staff hear the acknowledgement too: firing, reminder, acknowledged.
    eventually("the acknowledgement notice", 10, async || (about(&rx, "E2").len() == 3).then_some(())).await;

    // The old box comes back as a standby: the lease stays where it is.
    dead.d.restart_at(&now).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let v = cluster(&dead.d).await;
    assert_eq!(v["alerting"], false, "{v}");
    assert_eq!(v["lease_holder"], cluster(&survivor.d).await["box"], "{v}");
    assert_eq!(about(&rx, "E2").len(), 3, "the returning box sent nothing: {:?}", about(&rx, "E2"));
}

const SYNC: &str = r#"
[cluster]
box_id = "{BOX}"
key_file = "{CKEY}"
enrolment = "{ROLE}"
sync_key_file = "{KEY}"
{PUBLIC}
"#;

/// A box of an enrolment-synced site; a replica is given the source's public key.
async fn sync_box(name: &str, role: &str, broker: &Mosquitto, key: &std::path::Path, public: Option<&str>) -> Box {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let extra = SYNC
        .replace("{BOX}", name)
        .replace("{ROLE}", role)
        .replace("{KEY}", &key.display().to_string())
        .replace("{CKEY}", &cluster_key().display().to_string())
        .replace("{PUBLIC}", &public.map(|p| format!("sync_public_key = \"{p}\"")).unwrap_or_default())
        + &vision_and_north_gate();
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &extra), http).await;
    Box { _dir: dir, d }
}

fn b64(path: &std::path::Path) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_was_offline_catches_up_with_signed_enrolment_and_refuses_forgeries() {
    let Some(face) = shared_testdata("faces/people/img1.jpg") else { return };
    let broker = Mosquitto::start();
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("sync.key");
    std::fs::write(&key, "5f0c3e9a7b1d2468ace0135797531bdf2468ace013579bdf").unwrap();
    let source = sync_box("admin", "source", &broker, &key, None).await;
    // The source made its ed25519 key pair; replicas get only the public half.
    let public = std::fs::read_to_string(source._dir.path().join("sync-signing.key.pub")).unwrap();
    assert!(source.d.log().contains(public.trim()), "the source logs the public key to give replicas");
    let mut replica = sync_box("gate-b", "replica", &broker, &key, Some(public.trim())).await;

    // Online: an elder enrolled on the source appears on the replica.
    source.d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0001101"]})).await;
    eventually("E1 on the replica", 15, async || (replica.d.api(reqwest::Method::GET, "/elders/E1", None).await.0 == 200).then_some(())).await;
    // The replica refuses local enrolment: the source is the one truth.
    let (code, body) = replica.d.api(reqwest::Method::POST, "/elders", Some(json!({"id": "X1", "name": "x"}))).await;
    assert_eq!(code, 409, "{body}");
    assert!(body["error"].as_str().unwrap().contains("replica"), "{body}");

    // Offline: the replica is down while the source enrols and removes.
    assert!(replica.d.terminate().success());
    source.d.post("/elders", json!({"id": "E2", "name": "老人E2", "bands": ["c3a1f0001102"]})).await;
    source.d.post("/staff", json!({"id": "S1", "name": "李网格", "phone": "13900001111"})).await;
    let r = source
        .d
        .post(
            "/residents",
            json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810", "photos": [b64(&face)],
            "consent": {"by": "张三", "how": "paper form"}}),
        )
        .await;
    assert_eq!(r["templates"], 1, "{r}");
    source.d.post("/vehicles", json!({"plate": "川A12345", "owner": "R1"})).await;
    let (code, _) = source.d.api(reqwest::Method::DELETE, "/elders/E1", None).await;
    assert_eq!(code, 200);

    // A forged change (wrong key) published meanwhile is refused.
    let p = broker.publisher().await;
    let forged = json!({"change": json!({"site": "t", "version": 999999, "published_at": "2026-11-23T00:00:00Z", "kind": "elder", "id": "EVIL",
        "record": {"type": "elder", "id": "EVIL", "name": "伪造", "bands": [], "enrolled_at": "2026-11-23T00:00:00Z"}}).to_string(), "sig": "00".repeat(32)});
    p.publish(&format!("gatewarden/t/enrolment/elder/{}", "4556494c"), forged.to_string()).await;
    // A forgery by a box that holds the shared sync key but not the source's
    // signing key (a stolen replica) is refused too.
    let secret = std::fs::read_to_string(&key).unwrap();
    let thief = gatewarden::cluster::sync::SyncKeys::source(secret.trim().as_bytes(), ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]));
    let elder: domain::presence::Elder =
        serde_json::from_value(json!({"id": "EVIL2", "name": "伪造", "bands": [], "enrolled_at": "2026-11-23T00:00:00Z"})).unwrap();
    let change = gatewarden::cluster::sync::Change {
        site: "t".into(),
        epoch: u64::MAX,
        version: 1,
        published_at: chrono::Utc::now(),
        record: Some(gatewarden::cluster::sync::Record::Elder(elder)),
        kind: "elder".into(),
        id: "EVIL2".into(),
    };
    p.publish(&format!("gatewarden/t/enrolment/elder/{}", hex::encode("EVIL2")), thief.sign(&change)).await;

    // Back online, it catches up from the retained records.
    replica.d.restart().await;
    eventually("the replica catches up", 20, async || {
        let elders = replica.d.get("/elders").await;
        let ids: Vec<&str> = elders.as_array().unwrap().iter().filter_map(|e| e["id"].as_str()).collect();
        (ids == ["E2"]).then_some(())
    })
    .await;
    assert_eq!(replica.d.get("/staff").await[0]["name"], "李网格");
    let people = replica.d.get("/people").await;
    let r1 = people.as_array().unwrap().iter().find(|p| p["id"] == "R1").expect("R1 synced").clone();
    assert_eq!(r1["consent"]["by"], "张三", "{r1}");
    let faces = replica.d.get("/compliance").await;
    assert_eq!(faces["faces"]["people"], 1, "the face template arrived and was re-sealed here: {faces}");
    assert_eq!(replica.d.get("/vehicles").await[0]["plate"], "川A12345");
    // The PIN enrolled on the source opens the replica's gate.
    let opened = replica.d.post("/gates/north/credential", json!({"kind": "pin", "value": "246810"})).await;
    assert_eq!(opened["opened"], true, "{opened}");
    assert!(replica.d.metric("gatewarden_mqtt_rejected_total{reason=\"bad_signature\"}").await >= 2.0);
    assert_eq!(replica.d.api(reqwest::Method::GET, "/elders/EVIL", None).await.0, 404);
    assert_eq!(replica.d.api(reqwest::Method::GET, "/elders/EVIL2", None).await.0, 404);
}

/// The attack that once worked: a retained, unsigned `cluster/lease` naming a
/// ghost holder until the end of time silenced a box while /healthz said ok.
/// Now the forged lease is ignored (the box claims the lease and alerts),
/// health says degraded, and forged or replayed sightings cannot keep an
/// absent elder "present": the absence alert reaches staff.
#[tokio::test(flavor = "multi_thread")]
async fn forged_or_replayed_cluster_messages_cannot_silence_a_box() {
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let p = broker.publisher().await;
    p.publish_retained("gatewarden/t/cluster/lease", r#"{"holder":"ghost","until_ms":9e18,"epoch":1}"#).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let b = start_box("b1", &broker, &rx).await;
    let d = &b.d;
    d.post("/elders", json!({"id": "E1", "name": "老人E1", "bands": ["c3a1f0000001"]})).await;
    let v = eventually("the box claims the lease and alerts despite the ghost", 20, async || {
        let v = cluster(d).await;
        (v["alerting"] == true && v["lease_holder"] == "b1").then_some(v)
    })
    .await;
    assert!(v["forged_lease_at_ms"].is_i64(), "{v}");
    assert_eq!(d.health().await["status"], "degraded", "a forged lease is reported");
    assert!(d.metric("gatewarden_cluster_rejected_total{reason=\"unsigned\"}").await >= 1.0);
    // A sighting of E1 signed with another key, and one signed with the right key ten minutes ago.
    let now = chrono::Utc::now().timestamp_millis();
    let at = d.advance("1m").await;
    let body = json!({"box": "b2", "elder": "E1", "at": at, "source": "face", "gate": "north"}).to_string();
    let wrong = domain::cluster::sign(b"not-the-site-key-0123456789abcdef", "t", "sighting/b2", &body, now);
    let key = std::fs::read_to_string(cluster_key()).unwrap();
    let stale = domain::cluster::sign(key.trim().as_bytes(), "t", "sighting/b2", &body, now - 10 * 60 * 1000);
    p.publish("gatewarden/t/cluster/sighting/b2", wrong).await;
    p.publish("gatewarden/t/cluster/sighting/b2", stale).await;
    eventually("both refused", 10, async || {
        let bad = d.metric("gatewarden_cluster_rejected_total{reason=\"bad_signature\"}").await;
        let stale = d.metric("gatewarden_cluster_rejected_total{reason=\"stale\"}").await;
        (bad >= 1.0 && stale >= 1.0).then_some(())
    })
    .await;
    assert!(d.last_seen("E1").await.is_null(), "a forged sighting made E1 present");
    d.advance("49h").await;
    eventually("E1's absence alert", 15, async || (!about(&rx, "E1").is_empty()).then_some(())).await;
}
