//! Two boxes on one real mosquitto: presence is shared, exactly one box sends
//! absence alerts, and killing it hands the lease over with the open episode
//! intact (same id, its reminder comes from the new box, acknowledgement works).

mod common;
use common::*;
use serde_json::{json, Value};

const CLUSTER: &str = r#"
[cluster]
box_id = "{BOX}"
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

struct Box {
    _dir: tempfile::TempDir,
    d: Daemon,
}

async fn start_box(name: &str, broker: &Mosquitto, rx: &Receiver) -> Box {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let extra = CLUSTER.replace("{BOX}", name).replace("{R}", &rx.url(""));
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
    dead.d.restart().await;
    dead.d.set_clock(&now).await;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let v = cluster(&dead.d).await;
    assert_eq!(v["alerting"], false, "{v}");
    assert_eq!(v["lease_holder"], cluster(&survivor.d).await["box"], "{v}");
    assert_eq!(about(&rx, "E2").len(), 3, "the returning box sent nothing: {:?}", about(&rx, "E2"));
}
