//! End to end through the real binary, a real mosquitto and a real HTTP
//! receiver, with the daemon's test clock moved through its API.

mod common;
use common::*;
use reqwest::Method;
use serde_json::json;

const LADDER: &str = r#"
[alert.absence]
after = "48h"
repeat_every = "6h"
escalate_after = "12h"
[alert.outbox]
retry_initial = "200ms"
retry_max = "1s"
[[alert.channels]]
name = "grid-wecom"
kind = "wecom"
url = "{R}/wecom"
[[alert.channels]]
name = "office-hook"
kind = "webhook"
url = "{R}/hook"
secret = "hook-key"
[[alert.ladder]]
name = "网格员"
channels = ["grid-wecom"]
[[alert.ladder]]
name = "社区办"
channels = ["office-hook"]
"#;

async fn enroll(d: &Daemon, id: &str, band: &str) {
    d.post(
        "/elders",
        json!({"id": id, "name": format!("老人{id}"), "building": "3栋", "room": "401", "bands": [band],
        "contacts": ["王丽:13800001111:女儿"]}),
    )
    .await;
}

async fn wait_seen(d: &Daemon, id: &str, place: &str) -> serde_json::Value {
    eventually(&format!("{id} seen at {place}"), 10, async || {
        let l = d.last_seen(id).await;
        (l["place"] == place).then_some(l)
    })
    .await
}

fn texts(rx: &Receiver, path: &str) -> Vec<String> {
    rx.accepted(path).iter().map(|r| r.text()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_shared_sample_format_updates_the_right_elder() {
    let Some(samples) = shared_testdata("mqtt/sightings.txt") else { return };
    let w = world(LADDER).await;
    // Enrolled half by MAC, half by iBeacon identity: both must match.
    enroll(&w.d, "E101", "C3:A1:F0:00:11:01").await;
    enroll(&w.d, "E102", "ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:102").await;
    enroll(&w.d, "E103", "ibeacon:E5B9E3A627E24C36A2577698DA5FC140:1:103").await;
    enroll(&w.d, "E104", "c3-a1-f0-00-11-04").await;
    enroll(&w.d, "E105", "ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:105").await;
    let p = w.broker.publisher().await;
    for line in std::fs::read_to_string(samples).unwrap().lines().filter(|l| !l.is_empty()) {
        let (topic, payload) = line.split_once('\t').unwrap();
        p.publish(topic, payload).await;
    }
    for (id, place, battery) in [
        ("E101", "gate_north", None),
        ("E102", "building_3", Some(78)),
        ("E103", "OpenMQTTGateway", None),
        ("E104", "OpenMQTTGateway", None),
        ("E105", "TheengsGateway", Some(64)),
    ] {
        let l = wait_seen(&w.d, id, place).await;
        assert_eq!(l["source"], "wristband", "{id}");
        assert_eq!(l["battery"].as_u64(), battery, "{id}");
    }
    assert!(w.d.get("/wristbands/unknown").await.as_array().unwrap().is_empty(), "every sample band was enrolled");
}

#[tokio::test(flavor = "multi_thread")]
async fn absence_fires_once_then_reminds_escalates_and_sends_returned_to_everyone_told() {
    let w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let p = w.broker.publisher().await;
    p.publish("home/gw1/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01","rssi":-70}"#).await;
    wait_seen(&w.d, "E1", "gw1").await;

    w.d.advance("47h").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(w.rx.all().is_empty(), "nothing before 48h");
    w.d.advance("61m").await;
    let first = eventually("the absence alert", 10, async || w.rx.accepted("/wecom").first().cloned()).await;
    let t = first.text();
    for want in ["老人超时未出现", "老人E1", "3栋-401", "gw1", "王丽（女儿）13800001111", "/ack/"] {
        assert!(t.contains(want), "missing {want:?} in:\n{t}");
    }
    // More ticks at the same time send nothing more: exactly once.
    w.d.post("/debug/tick", json!({})).await;
    w.d.advance("1h").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(w.rx.accepted("/wecom").len(), 1);

    w.d.advance("5h").await; // 6h after firing: reminder to level 1
    eventually("the reminder", 10, async || (w.rx.accepted("/wecom").len() == 2).then_some(())).await;
    assert!(texts(&w.rx, "/wecom")[1].contains("提醒"));
    assert!(w.rx.accepted("/hook").is_empty(), "no escalation before 12h");
    w.d.advance("6h").await; // 12h without acknowledgement: level 2
    let esc = eventually("the escalation", 10, async || w.rx.accepted("/hook").first().cloned()).await;
    let v = esc.json();
    let am = AlertmanagerV4::accept(&esc.body);
    assert_eq!((am.status.as_str(), am.alerts[0].labels["alertname"].as_str()), ("firing", "absence"));
    assert_eq!(v["status"], "firing");
    assert_eq!(v["alerts"][0]["labels"]["notice"], "escalated");
    assert!(v["alerts"][0]["generatorURL"].as_str().unwrap().contains("/ack/"));
    // Signed with HMAC-SHA256 over the exact body.
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"hook-key").unwrap();
    mac.update(&esc.body);
    assert_eq!(esc.header("X-Gatewarden-Signature").unwrap(), format!("sha256={}", hex::encode(mac.finalize().into_bytes())));

    p.publish("home/gw2/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01","rssi":-70}"#).await;
    eventually("returned notice on both levels", 10, async || {
        let w1 = texts(&w.rx, "/wecom").iter().any(|t| t.contains("已解除"));
        let w2 = w.rx.accepted("/hook").iter().any(|r| r.json()["status"] == "resolved");
        (w1 && w2).then_some(())
    })
    .await;
    let alerts = w.d.get("/alerts?all=true").await;
    let a = &alerts.as_array().unwrap()[0];
    assert_eq!(a["state"], "resolved");
    assert_eq!(alerts.as_array().unwrap().iter().filter(|a| a["kind"] == "absence").count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn leave_suppresses_the_alert_and_an_acknowledgement_stops_reminders() {
    let w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    enroll(&w.d, "E2", "c3a1f0001102").await;
    // E1 stays with her daughter for ten days.
    let now = w.d.advance("1s").await;
    let until = (chrono::DateTime::parse_from_rfc3339(&now).unwrap() + chrono::Duration::days(10)).to_rfc3339();
    w.d.post("/leaves", json!({"elder": "E1", "until": until, "note": "住女儿家", "by": "李网格"})).await;
    w.d.advance("49h").await;
    let a = eventually("E2's alert", 10, async || w.rx.accepted("/wecom").first().cloned()).await;
    assert!(a.text().contains("老人E2"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人E1")), "no alert during a leave");

    // Acknowledge E2's alert through the CLI, as staff would.
    let id = w.d.get("/alerts").await[0]["id"].as_u64().unwrap().to_string();
    let out = w.d.cli(&["alerts", "ack", &id, "--by", "李网格"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let n = eventually("the acknowledgement notice", 10, async || {
        let t = texts(&w.rx, "/wecom");
        t.iter().any(|x| x.contains("已确认")).then_some(t.len())
    })
    .await;
    w.d.advance("7h").await;
    w.d.advance("7h").await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(texts(&w.rx, "/wecom").len(), n, "no reminders after acknowledgement");
    assert!(w.rx.accepted("/hook").is_empty(), "no escalation after acknowledgement");
    let again = w.d.cli(&["alerts", "ack", &id, "--by", "someone"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already acknowledged by 李网格"));

    // After the leave ends, counting starts again from its end: 48h later, E1 is alerted.
    w.d.advance("9d").await; // leave over (day ~10.8)
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人E1")), "not right at the end of the leave");
    w.d.advance("49h").await;
    eventually("E1's alert after the leave", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人E1")).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_failing_with_500_then_errcode_still_gets_the_alert_once_acknowledged_by_body() {
    let w = world(LADDER).await;
    w.rx.script(&[
        (500, "oops"),
        (502, "bad gateway"),
        (200, r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
        (200, r#"{"errcode":-1,"errmsg":"system busy"}"#),
    ]);
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("49h").await;
    let ok = eventually("delivery after failures", 20, async || {
        w.rx.accepted("/wecom").into_iter().find(|r| r.answered == 200 && !r.text().is_empty() && w.rx.all().len() >= 5)
    })
    .await;
    let all: Vec<_> = w.rx.all().into_iter().filter(|r| r.path == "/wecom").collect();
    assert_eq!(all.len(), 5, "4 failures then success");
    let key = ok.header("Idempotency-Key").unwrap().to_string();
    assert!(all.iter().all(|r| r.header("Idempotency-Key") == Some(key.as_str())), "one idempotency key across retries");
    assert!(all.iter().all(|r| r.body == all[0].body), "the same message every time");
    eventually("outbox drained", 10, async || w.d.get("/outbox").await.as_array().unwrap().is_empty().then_some(())).await;
    assert!(w.d.metric(r#"gatewarden_deliveries_total{channel="grid-wecom",result="retry"}"#).await >= 4.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_error_is_parked_loudly_and_can_be_retried() {
    let w = world(LADDER).await;
    w.rx.script(&[(200, r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#)]);
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("49h").await;
    let failed = eventually("a parked notification", 10, async || {
        let o = w.d.get("/outbox").await;
        o.as_array().unwrap().iter().find(|n| n["delivery"] == "failed").cloned()
    })
    .await;
    assert!(failed["last_error"].as_str().unwrap().contains("93000"));
    assert_eq!(w.d.health().await["status"], "degraded");
    assert!(w.d.log().contains("PERMANENT delivery failure"));
    let out = w.d.cli(&["alerts", "outbox"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("failed"));
    // The operator fixes the key and requeues it.
    let id = failed["id"].as_u64().unwrap().to_string();
    assert!(w.d.cli(&["alerts", "retry", &id]).status.success());
    eventually("delivered after retry", 10, async || w.d.get("/outbox").await.as_array().unwrap().is_empty().then_some(())).await;
    assert_eq!(w.rx.accepted("/wecom").iter().filter(|r| r.text().contains("老人E1")).count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_with_pending_alerts_loses_none_and_restart_neither_resets_nor_fakes_absence() {
    let mut w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    enroll(&w.d, "E2", "c3a1f0001102").await;
    let p = w.broker.publisher().await;
    // The receiver is down (503) while the alert fires.
    w.rx.set_default(503, "down");
    let now = w.d.advance("30h").await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001102", r#"{"id":"C3:A1:F0:00:11:02"}"#).await;
    wait_seen(&w.d, "E2", "gw").await;
    let now = {
        let _ = now;
        w.d.advance("19h").await // E1: 49h unseen → alert; E2: 19h
    };
    eventually("a failed attempt", 10, async || (!w.rx.all().is_empty()).then_some(())).await;
    let pending = w.d.get("/outbox").await;
    assert_eq!(pending.as_array().unwrap().len(), 1);

    w.d.kill9();
    w.rx.set_default(200, r#"{"errcode":0,"errmsg":"ok"}"#);
    w.d.restart_at(&now).await;
    let got =
        eventually("the pending alert delivered after restart", 15, async || w.rx.accepted("/wecom").into_iter().find(|r| r.text().contains("老人E1"))).await;
    assert!(got.text().contains("老人超时未出现"));
    let alerts = w.d.get("/alerts?all=true").await;
    assert_eq!(alerts.as_array().unwrap().len(), 1, "the restart opened no second episode: {alerts}");
    // E2's clock was not reset by the restart: 29h more makes 48h.
    w.d.advance("28h").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人E2")), "restart faked an absence");
    w.d.advance("2h").await;
    eventually("E2's alert at 49h despite the restart", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人E2")).then_some(())).await;
    // And a clean SIGTERM exits 0.
    assert!(w.d.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_oversized_and_binary_payloads_are_counted_and_nothing_crashes() {
    let w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let p = w.broker.publisher().await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001101", "{not json").await;
    p.publish("espresense/devices/x/room", vec![0xff, 0xfe, 0x00, 0x9f]).await;
    p.publish("gatewarden/t/sighting", vec![b'x'; 20_000]).await;
    p.publish("gatewarden/t/sighting", r#"{"band":"not-a-band","gateway":"g"}"#).await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001199", r#"{"id":"C3:A1:F0:00:11:99","rssi":-60}"#).await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01","rssi":-60}"#).await;
    wait_seen(&w.d, "E1", "gw").await;
    eventually("rejections counted", 10, async || {
        let m = w.d.metric(r#"gatewarden_mqtt_rejected_total{reason="malformed"}"#).await;
        let u = w.d.metric(r#"gatewarden_mqtt_rejected_total{reason="not_utf8"}"#).await;
        let o = w.d.metric(r#"gatewarden_mqtt_rejected_total{reason="oversized"}"#).await;
        (m == 2.0 && u == 1.0 && o == 1.0).then_some(())
    })
    .await;
    assert_eq!(w.d.health().await["status"], "ok");
    let unknown = w.d.get("/wristbands/unknown").await;
    assert_eq!(unknown[0]["band"], "C3:A1:F0:00:11:99", "unknown wristband listed for enrolment");
    let out = w.d.cli(&["wristbands", "unknown"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("C3:A1:F0:00:11:99"));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_errors_are_clear_for_unknown_elders_taken_wristbands_and_bad_input() {
    let w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let err = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = err(w.d.cli(&["elder", "add", "--name", "李四", "--band", "C3:A1:F0:00:11:01"]));
    assert!(e.contains("already bound to elder E1"), "{e}");
    let e = err(w.d.cli(&["elder", "add", "--name", "李四", "--band", "zz:zz"]));
    assert!(e.contains("invalid wristband id"), "{e}");
    let e = err(w.d.cli(&["elder", "update", "NOPE", "--room", "1"]));
    assert!(e.contains("no elder \"NOPE\""), "{e}");
    let e = err(w.d.cli(&["leave", "add", "E1", "--until", "next week"]));
    assert!(e.contains("invalid time"), "{e}");
    let e = err(w.d.cli(&["elder", "add", "--name", "李四", "--contact", "王丽:not-a-phone"]));
    assert!(e.contains("invalid phone"), "{e}");
    let e = err(w.d.cli(&["alerts", "test-channel", "nope"]));
    assert!(e.contains("no channel \"nope\""), "{e}");
    let (code, _) = w.d.api(Method::POST, "/debug/clock", Some(json!({"advance": "two days"}))).await;
    assert_eq!(code, 400);
    // Good input still works through the CLI.
    let ok = w.d.cli(&["elder", "add", "--name", "李四", "--id", "E2", "--band", "ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:9"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let list = String::from_utf8_lossy(&w.d.cli(&["elder", "list"]).stdout).to_string();
    assert!(list.contains("E2") && list.contains("李四"), "{list}");
    // A wrong token is refused.
    let o = std::process::Command::new(bin()).args(["elder", "list", "--token", "wrong", "--config"]).arg(&w.d.config).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong admin token"));
}

#[tokio::test(flavor = "multi_thread")]
async fn test_channel_sends_a_real_message_and_staff_check_in_counts_as_sighting() {
    let w = world(LADDER).await;
    let out = w.d.cli(&["alerts", "test-channel", "grid-wecom"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(w.rx.accepted("/wecom")[0].text().contains("测试"));
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("40h").await;
    let o = w.d.cli(&["checkin", "E1", "--by", "李网格", "--note", "visited, all well"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(w.d.last_seen("E1").await["source"], "check_in");
    w.d.advance("40h").await; // 80h since enrolment, 40h since the visit
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(w.d.get("/alerts").await.as_array().unwrap().is_empty());
    let p = String::from_utf8_lossy(&w.d.cli(&["presence"]).stdout).to_string();
    assert!(p.contains("check-in by 李网格"), "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_ack_link_in_a_message_acknowledges_the_alert() {
    let w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.d.advance("49h").await;
    let m = eventually("the alert", 10, async || w.rx.accepted("/wecom").first().cloned()).await;
    let text = m.text();
    let link = text.lines().find(|l| l.contains("/ack/")).unwrap().trim().to_string();
    let http = reqwest::Client::new();
    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form"), "GET only shows a form");
    assert_eq!(w.d.get("/alerts").await[0]["state"], "firing");
    let r = http.post(&link).form(&[("by", "王主任")]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let a = &w.d.get("/alerts").await[0];
    assert_eq!(a["state"], "acknowledged");
    assert_eq!(a["acked_by"], "王主任 (link)");
    let forged = link.replace("/ack/", "/ack/x");
    assert_eq!(http.post(&forged).form(&[("by", "x")]).send().await.unwrap().status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn sos_from_own_format_alerts_immediately() {
    let w = world(LADDER).await;
    let upstream = Subscriber::start(w.broker.port, "gatewarden/t/alert").await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let p = w.broker.publisher().await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001101","gateway":"b3","sos":true,"battery":12}"#).await;
    eventually("SOS and low battery alerts", 10, async || {
        let t = texts(&w.rx, "/wecom");
        (t.iter().any(|x| x.contains("SOS")) && t.iter().any(|x| x.contains("电量低"))).then_some(())
    })
    .await;
    // The episode also goes upstream for the district, without personal data.
    let ep = eventually("the SOS episode on MQTT", 10, async || upstream.messages().into_iter().find(|(_, p)| p.contains("\"sos\"")).map(|(_, p)| p)).await;
    let v: serde_json::Value = serde_json::from_str(&ep).unwrap();
    assert_eq!((v["kind"].as_str(), v["state"].as_str(), v["subject"]["id"].as_str()), (Some("sos"), Some("firing"), Some("E1")));
    assert!(!ep.contains("老人E1") && !ep.contains("13800001111"), "no names or phones upstream: {ep}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sightings_published_while_the_daemon_is_down_are_delivered_after_restart() {
    let mut w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    assert!(w.d.terminate().success(), "clean shutdown on SIGTERM");
    // The broker holds QoS 1 messages for our persistent session meanwhile.
    let p = w.broker.publisher().await;
    p.publish("espresense/devices/c3a1f0001101/kitchen", r#"{"mac":"c3a1f0001101","id":"c3a1f0001101","rssi":-60}"#).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    w.d.restart().await;
    wait_seen(&w.d, "E1", "kitchen").await;
}

#[test]
fn config_check_names_every_bad_key_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "site = \"t\"\n[store]\npath = \"/tmp/x\"\n[alert.absence]\nafter = \"two days\"\nrepeat_every = \"6h\"\nescalate_after = \"12h\"\n")
        .unwrap();
    let o = std::process::Command::new(bin()).args(["config", "check"]).arg(&f).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("alert.absence.after") && e.contains("invalid duration"), "{e}");
    std::fs::write(&f, "site = \"t\"\n[store]\npath = \"/tmp/x\"\n[[alert.channels]]\nname = \"d\"\nkind = \"dingtalk\"\nurl = \"nope\"\n").unwrap();
    let o = std::process::Command::new(bin()).args(["config", "check"]).arg(&f).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("alert.channels[0].url") && e.contains("alert.channels[0].secret"), "{e}");
    let good = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("config/gatewarden.example.toml");
    let o = std::process::Command::new(bin()).args(["config", "check"]).arg(&good).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reconnects_by_itself_after_the_broker_restarts() {
    let mut w = world(LADDER).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    w.broker.restart();
    eventually("MQTT disconnect noticed and reconnected", 20, async || {
        let h = w.d.health().await;
        (h["mqtt_connected"] == true && w.d.log().contains("MQTT connection lost")).then_some(())
    })
    .await;
    // A non-persistent broker lost our subscriptions: they must have been renewed.
    let p = w.broker.publisher().await;
    eventually("a sighting after the broker restart", 20, async || {
        p.publish("home/gw9/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01"}"#).await;
        (w.d.last_seen("E1").await["place"] == "gw9").then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_robots_and_ntfy_receive_what_their_services_expect_on_a_per_grid_ladder() {
    let extra = r#"
[[alert.channels]]
name = "default-hook"
kind = "webhook"
url = "{R}/default"
[[alert.channels]]
name = "ding"
kind = "dingtalk"
url = "{R}/ding?access_token=abc"
secret = "SECding"
[[alert.channels]]
name = "lark"
kind = "feishu"
url = "{R}/lark"
secret = "larksecret"
[[alert.channels]]
name = "push"
kind = "ntfy"
url = "{R}/ntfy"
topic = "duty"
token = "tk_123"
[[alert.ladder]]
name = "default"
channels = ["default-hook"]
"#;
    let w = world(extra).await;
    w.d.post("/staff", json!({"id": "s1", "name": "李网格", "phone": "13900002222"})).await;
    let o = w.d.cli(&["escalation", "set", "--grid", "g7", "--level", "网格员:ding+lark+push:s1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bad = w.d.cli(&["escalation", "set", "--grid", "g7", "--level", "网格员:nosuch"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown channel \"nosuch\""));
    w.d.post("/elders", json!({"id": "E7", "name": "赵大爷", "grid": "g7", "bands": ["c3a1f0001107"]})).await;
    w.d.advance("49h").await;
    let (ding, lark, push) = eventually("all three channels", 10, async || {
        let d = w.rx.accepted("/ding").first().cloned()?;
        let l = w.rx.accepted("/lark").first().cloned()?;
        let p = w.rx.accepted("/ntfy").first().cloned()?;
        Some((d, l, p))
    })
    .await;
    assert!(w.rx.accepted("/default").is_empty(), "grid g7 has its own ladder");
    use base64::Engine as _;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::STANDARD;
    // DingTalk: timestamp and sign in the query; sign = b64(HMAC(secret, ts + "\n" + secret)), URL-encoded.
    let q: std::collections::HashMap<String, String> = url_pairs(&ding.query);
    assert_eq!(q["access_token"], "abc");
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"SECding").unwrap();
    m.update(format!("{}\nSECding", q["timestamp"]).as_bytes());
    assert_eq!(q["sign"], b64.encode(m.finalize().into_bytes()));
    assert_eq!(ding.json()["at"]["atMobiles"][0], "13900002222");
    // Feishu: timestamp and sign in the body; sign = b64(HMAC(key = ts + "\n" + secret, msg = "")).
    let v = lark.json();
    let ts = v["timestamp"].as_str().unwrap();
    let m = hmac::Hmac::<sha2::Sha256>::new_from_slice(format!("{ts}\nlarksecret").as_bytes()).unwrap();
    assert_eq!(v["sign"].as_str().unwrap(), b64.encode(m.finalize().into_bytes()));
    assert!(v["content"]["text"].as_str().unwrap().contains("赵大爷"));
    // ntfy: JSON publish with topic, priority, click-through to the ack link, and the token.
    let v = push.json();
    assert_eq!(v["topic"], "duty");
    assert_eq!(v["priority"], 4);
    assert!(v["click"].as_str().unwrap().contains("/ack/"));
    assert_eq!(push.header("authorization"), Some("Bearer tk_123"));
}

/// Decode `a=b&c=d` (percent-decoding values).
fn url_pairs(q: &str) -> std::collections::HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_hears_ready_and_watchdog_pings_and_the_unit_file_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let cfg = dir.path().join("g.toml");
    std::fs::write(&cfg, config(dir.path(), broker.port, http, "")).unwrap();
    let mut child = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !(got.iter().any(|m: &String| m == "READY=1") && got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2) {
        let n = sock.recv(&mut buf).expect("a notification within 20 s");
        got.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    std::process::Command::new("sh").args(["-c", &format!("kill -TERM {}", child.id())]).status().unwrap();
    assert!(child.wait().unwrap().success());
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");

    // The shipped unit passes `systemd-analyze verify` (pointed at this build's binary).
    if let Ok(o) = std::process::Command::new("systemd-analyze").arg("--version").output() {
        if o.status.success() {
            let unit = std::fs::read_to_string(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("deploy/gatewarden.service")).unwrap();
            let unit = unit.replace("/usr/bin/gatewarden", bin());
            let p = dir.path().join("gatewarden.service");
            std::fs::write(&p, unit).unwrap();
            let v = std::process::Command::new("systemd-analyze").arg("verify").arg(&p).output().unwrap();
            let text = String::from_utf8_lossy(&v.stderr).to_string();
            let problems: Vec<&str> = text.lines().filter(|l| l.contains("gatewarden.service")).collect();
            assert!(v.status.success() && problems.is_empty(), "systemd-analyze verify: {text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sighting_history_is_a_bounded_window_never_an_unbounded_track() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "").replace("[presence]\n", "[presence]\nhistory_window = \"7d\"\nhistory_max = 3\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    enroll(&d, "E1", "c3a1f0001101").await;
    let p = broker.publisher().await;
    // Five sightings, ten minutes apart, in different places.
    for i in 0..5 {
        d.advance("10m").await;
        p.publish(&format!("home/gw{i}/BTtoMQTT/C3A1F0001101"), r#"{"id":"C3:A1:F0:00:11:01"}"#).await;
        wait_seen(&d, "E1", &format!("gw{i}")).await;
    }
    let h = d.get("/elders/E1/history").await;
    let places: Vec<&str> = h["sightings"].as_array().unwrap().iter().map(|s| s["place"].as_str().unwrap()).collect();
    assert_eq!(places, ["gw0", "gw1", "gw2", "gw3", "gw4"]);
    // The hourly purge keeps at most 3 per elder…
    // (The retention task checks the clock every second.)
    d.advance("61m").await;
    eventually("history capped per elder", 10, async || {
        let h = d.get("/elders/E1/history").await;
        let places: Vec<String> = h["sightings"].as_array().unwrap().iter().map(|s| s["place"].as_str().unwrap().to_string()).collect();
        (places == ["gw2", "gw3", "gw4"]).then_some(())
    })
    .await;
    // …and nothing older than the window; last-seen itself stays.
    d.advance("8d").await;
    eventually("history older than 7 days purged", 10, async || d.get("/elders/E1/history").await["sightings"].as_array().unwrap().is_empty().then_some(()))
        .await;
    assert_eq!(d.last_seen("E1").await["place"], "gw4");
    assert!(d.metric("gatewarden_purged_total{kind=\"sighting_history\"}").await >= 5.0);
}

/// One Wi-Fi outage: 45 BLE gateways heard, then 45 LWT "offline", then an
/// SOS, all to one WeCom group robot limited to 20 messages a minute. The SOS
/// goes out first, within seconds, and staff get the 45 gateways as one digest.
#[tokio::test(flavor = "multi_thread")]
async fn an_sos_overtakes_a_gateway_storm_and_the_storm_arrives_as_one_digest() {
    let w = world(
        r#"
[alert.outbox]
retry_initial = "200ms"
retry_max = "1s"
digest_window = "2s"
[[alert.channels]]
name = "grid-wecom"
kind = "wecom"
url = "{R}/wecom"
[[alert.ladder]]
name = "网格员"
channels = ["grid-wecom"]
"#,
    )
    .await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let p = w.broker.publisher().await;
    for i in 0..45 {
        p.publish("gatewarden/t/sighting", format!(r#"{{"band":"c3a1f0001101","gateway":"gw{i:02}"}}"#)).await;
    }
    eventually("45 gateways known", 10, async || (w.d.metric("gatewarden_sightings_total{kind=\"wristband\"}").await >= 45.0).then_some(())).await;
    for i in 0..45 {
        p.publish(&format!("home/gw{i:02}/LWT"), "offline").await;
    }
    eventually("45 gateway alerts open", 10, async || {
        let open = w.d.get("/alerts").await.as_array().unwrap().iter().filter(|a| a["kind"] == "gateway_offline" && a["state"] == "firing").count();
        (open == 45).then_some(())
    })
    .await;
    let sent = std::time::Instant::now();
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001101","gateway":"gw00","sos":true}"#).await;
    eventually("the SOS reaches WeCom", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("SOS")).then_some(())).await;
    eprintln!("SOS delivered {:.2}s after it was published", sent.elapsed().as_secs_f64());
    let digest = eventually("the gateway digest", 20, async || texts(&w.rx, "/wecom").into_iter().find(|t| t.contains("设备状态汇总"))).await;
    assert!(digest.contains("45"), "{digest}");
    for i in 0..45 {
        assert!(digest.contains(&format!("gw{i:02}")), "gw{i:02} missing from the digest: {digest}");
    }
    // Nothing else was queued: the first message was the SOS and the only other one the digest.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let all = texts(&w.rx, "/wecom");
    assert!(all[0].contains("SOS"), "the SOS went first: {all:?}");
    assert_eq!(all.iter().filter(|t| t.contains("网关")).count(), 1, "one digest, not 45 messages: {all:?}");
    assert_eq!(all.len(), 2, "{all:?}");
}

/// Installers' declared sources for the vendor test: `auto` unless the
/// vendor's topic is the installer's own choice and the format is certain.
const VENDOR_SOURCES: &str = r#"
[[mqtt.sources]]
topic = "room_presence/+"
[[mqtt.sources]]
topic = "espresense/rooms/+"
[[mqtt.sources]]
topic = "aprilbrother/#"
[[mqtt.sources]]
topic = "ingics/#"
format = "ingics"
[[mqtt.sources]]
topic = "minew/#"
[[mqtt.sources]]
topic = "up/+/scan"
format = "cassia"
[[mqtt.sources]]
topic = "vendor/#"
"#;

/// MessagePack `{"mac": <str>, "devices": [<bin>…]}`, as the April Brother
/// BLE Gateway V4 posts by default.
fn april_brother_msgpack(gateway: &str, devices: &[&str]) -> Vec<u8> {
    let mut b = vec![0x82, 0xa3];
    b.extend(b"mac");
    b.push(0xa0 | gateway.len() as u8);
    b.extend(gateway.as_bytes());
    b.push(0xa7);
    b.extend(b"devices");
    b.push(0x90 | devices.len() as u8);
    for d in devices {
        let raw: Vec<u8> = (0..d.len()).step_by(2).map(|i| u8::from_str_radix(&d[i..i + 2], 16).unwrap()).collect();
        b.extend([0xc4, raw.len() as u8]);
        b.extend(raw);
    }
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn each_vendor_format_updates_the_right_elder_by_mac_by_ibeacon_and_by_eddystone() {
    let w = world(&format!("{LADDER}{VENDOR_SOURCES}")).await;
    let bands = [
        ("E201", "ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:108"),
        ("E202", "ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:106"),
        ("E203", "C3:A1:F0:00:11:07"),
        ("E204", "ibeacon:12345678-1234-1234-1234-123412341234:32173:13233"),
        ("E205", "c8fd1949a530"),
        ("E206", "ibeacon:e5b9e3a627e24c36a2577698da5fc140:1:110"),
        ("E207", "ibeacon:B9A5D27D-56CC-4E3A-AB51-1F2153BCB967:1:17710"),
        ("E208", "AC-23-3F-26-12-34"),
        ("E209", "ibeacon:eb6d469624be4663b15230d46b0e9cc9:13:99"),
        ("E210", "eddystone:0102030405060708090A:0B0C0D0E0F10"),
    ];
    for (id, band) in bands {
        enroll(&w.d, id, band).await;
    }
    let p = w.broker.publisher().await;
    // Home Assistant mqtt_room, older ESPresense, OpenMQTTGateway with the beacon uuid in the topic.
    p.publish("room_presence/kitchen", r#"{"id":"e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-108","name":"Band 108","distance":2.5}"#).await;
    p.publish("espresense/rooms/living_room", r#"{"id":"iBeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-106","rssi":-65,"distance":1.2}"#).await;
    p.publish(
        "home/OMG_ESP32_BLE/BTtoMQTT/e5b9e3a627e24c36a2577698da5fc140",
        r#"{"id":"C3:A1:F0:00:11:07","mac_type":1,"rssi":-70,"brand":"GENERIC","model":"iBeacon","model_id":"IBEACON","mfid":"4c00","uuid":"e5b9e3a627e24c36a2577698da5fc140","major":1,"minor":107,"txpower":-59}"#,
    )
    .await;
    // April Brother: the iBeacon receiver's documented sample; the Gateway V4 as JSON and as MessagePack.
    p.publish(
        "aprilbrother/receiver",
        r#"{"id":"ABCDEF123456","raw_beacons_data":"F4B85ED84CB7123456781234123412341234123412347DAD33B1C6FF41;0117C538C0CF23A01AF0232A45189C0E323FB773F5EF00100020B3FFB2;"}"#,
    )
    .await;
    p.publish(
        "aprilbrother/gw4",
        r#"{"v":"1.5.9","mid":1208,"time":50062,"ip":"192.168.1.77","mac":"AABBCCDDEEFF","devices":["02C8FD1949A530CE0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0"]}"#,
    )
    .await;
    p.publish("aprilbrother/gw4b", april_brother_msgpack("112233445566", &["00C3A1F000110AB00201061AFF4C000215E5B9E3A627E24C36A2577698DA5FC1400001006EC5"]))
        .await;
    // Ingics, the documented iBeacon line; Minew JSON-LONG with an iBeacon and an Eddystone-UID; Cassia's envelope.
    p.publish("ingics/lobby", "$GPRP,0C61CFC1452E,E7DAE08E6FC3,-44,0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6\r\n").await;
    p.publish(
        "minew/gw/ac233fc0abcd",
        r#"[{"timestamp":"2026-11-30T08:00:00.000Z","type":"Gateway","mac":"AC233FC0ABCD","gatewayFree":95},
            {"timestamp":"2026-11-30T08:00:00.100Z","type":"iBeacon","mac":"AC233F261234","rssi":-62,"ibeaconUuid":"E2C56DB5DFFB48D2B060D0F5A71096E0","ibeaconMajor":10,"ibeaconMinor":7,"battery":87},
            {"timestamp":"2026-11-30T08:00:00.200Z","type":"Unknown","mac":"D0D1D2D3D4D5","rssi":-71,"rawData":"0201060303AAFE1716AAFE00EE0102030405060708090A0B0C0D0E0F100000"}]"#,
    )
    .await;
    p.publish(
        "up/CC:1B:E0:E2:8F:2C/scan",
        r#"{"id":"1","action":"data.scan","timestamp":1678698297028,"gateway":"CC:1B:E0:E2:8F:2C","data":[{"bdaddrs":[{"bdaddr":"CC:1B:E0:E0:F1:D0","bdaddrType":"public"}],"scanData":"","adData":"0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D0063C0","rssi":-54,"name":"unknown","evtType":0}]}"#,
    )
    .await;
    for (id, place) in [
        ("E201", "kitchen"),
        ("E202", "living_room"),
        ("E203", "OMG_ESP32_BLE"),
        ("E204", "AB:CD:EF:12:34:56"),
        ("E205", "AA:BB:CC:DD:EE:FF"),
        ("E206", "11:22:33:44:55:66"),
        ("E207", "E7:DA:E0:8E:6F:C3"),
        ("E208", "AC:23:3F:C0:AB:CD"),
        ("E209", "CC:1B:E0:E2:8F:2C"),
        ("E210", "AC:23:3F:C0:AB:CD"),
    ] {
        let l = wait_seen(&w.d, id, place).await;
        assert_eq!(l["source"], "wristband", "{id}");
    }
    assert_eq!(w.d.last_seen("E208").await["battery"], 87);
    for f in ["ha_room", "espresense", "openmqttgateway", "aprilbrother", "ingics", "minew", "cassia"] {
        assert!(w.d.metric(&format!(r#"gatewarden_mqtt_formats_total{{kind="{f}"}}"#)).await >= 1.0, "{f} counted");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_payload_in_no_known_shape_is_counted_logged_once_and_shown_by_sniff() {
    let w = world(&format!("{LADDER}{VENDOR_SOURCES}")).await;
    enroll(&w.d, "E301", "C3:A1:F0:00:13:01").await;
    let sniff = std::process::Command::new(bin())
        .args(["mqtt", "sniff", "--for", "6s", "--config"])
        .arg(&w.d.config)
        .env_remove("GATEWARDEN_ADMIN_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let p = w.broker.publisher().await;
    for t in [21.5, 21.6, 21.7] {
        p.publish("vendor/thermo", format!(r#"{{"temperature":{t}}}"#)).await;
    }
    p.publish("vendor/thermo", vec![0xde, 0xad, 0xbe, 0xef]).await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001301", r#"{"id":"C3:A1:F0:00:13:01","rssi":-60}"#).await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001399", r#"{"id":"C3:A1:F0:00:13:99","rssi":-60}"#).await;
    wait_seen(&w.d, "E301", "gw").await;
    let out = tokio::task::spawn_blocking(move || sniff.wait_with_output().unwrap()).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("vendor/thermo") && text.contains("NOT READ ×3: unknown_shape"), "{text}");
    assert!(text.contains("band C3:A1:F0:00:13:01: enrolled (E301)"), "{text}");
    assert!(text.contains("band C3:A1:F0:00:13:99: NOT ENROLLED"), "{text}");
    assert!(text.contains("format: openmqttgateway ×1"), "{text}");
    eventually("unknown shapes counted", 10, async || (w.d.metric(r#"gatewarden_mqtt_rejected_total{reason="unknown_shape"}"#).await >= 3.0).then_some(()))
        .await;
    assert_eq!(w.d.health().await["status"], "ok");
    let logged = w.d.log().matches("cannot read messages on this topic").count();
    assert_eq!(logged, 1, "once per topic, not once per message:\n{}", w.d.log());
}

/// `hh:mm` site time (UTC+8) on a day after today, as RFC 3339, and that day:
/// the test clock only moves forward, and a time before the build is
/// implausible to the daemon.
fn site_time(hh: u32, mm: u32) -> (String, chrono::NaiveDate) {
    let cst = chrono::FixedOffset::east_opt(8 * 3600).unwrap();
    let day = (chrono::Utc::now() + chrono::Duration::days(2)).with_timezone(&cst).date_naive();
    let at = day.and_hms_opt(hh, mm, 0).unwrap().and_local_timezone(cst).unwrap().with_timezone(&chrono::Utc);
    (at.to_rfc3339(), day)
}

/// Elders with an open absence alert, by id.
async fn absent(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .get("/alerts")
        .await
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["kind"] == "absence")
        .filter_map(|a| a["subject"]["id"].as_str().map(str::to_string))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn elders_at_24h_48h_and_72h_alert_at_their_own_times_under_the_test_clock() {
    let w = world(&format!("{LADDER}\n[alert.absence_by_category]\ndementia = \"24h\"\n")).await;
    let add = |id: &str, extra: serde_json::Value| {
        let mut body = json!({"id": id, "name": format!("老人{id}")});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        w.d.post("/elders", body)
    };
    add("E401", json!({"categories": ["over70", "dementia"]})).await; // the category's 24h
    add("E402", json!({"categories": ["dementia"], "absence_after": "72h"})).await; // their own 72h beats the category
    add("E403", json!({})).await; // the site's 48h
    let (code, err) = w.d.api(Method::POST, "/elders", Some(json!({"id": "E499", "name": "x", "absence_after": "soon"}))).await;
    assert_eq!(code, 400, "{err}");
    let settle = async || {
        w.d.post("/debug/tick", json!({})).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        absent(&w.d).await
    };
    w.d.advance("23h50m").await;
    assert!(settle().await.is_empty());
    w.d.advance("11m").await;
    eventually("the 24h elder", 10, async || (absent(&w.d).await == ["E401"]).then_some(())).await;
    w.d.advance("23h50m").await;
    assert_eq!(settle().await, ["E401"]);
    w.d.advance("11m").await;
    eventually("the 48h elder", 10, async || (absent(&w.d).await == ["E401", "E403"]).then_some(())).await;
    w.d.advance("23h50m").await;
    assert_eq!(settle().await, ["E401", "E403"]);
    w.d.advance("11m").await;
    eventually("the 72h elder", 10, async || (absent(&w.d).await == ["E401", "E402", "E403"]).then_some(())).await;
    // The threshold is shown with the elder, and can be cleared.
    let (_, e) = w.d.api(Method::PATCH, "/elders/E402", Some(json!({"absence_after": "default"}))).await;
    assert!(e.get("absence_after_secs").is_none(), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn quiet_hours_delay_a_reminder_and_never_an_sos() {
    let w = world(&format!("[alert]\nquiet_hours = \"22:00-07:00\"\n{LADDER}\n[alert.absence_by_category]\ndementia = \"10m\"\n")).await;
    w.d.set_clock(&site_time(20, 0).0).await;
    enroll(&w.d, "E501", "c3a1f0001501").await;
    w.d.post("/elders", json!({"id": "E502", "name": "老人E502", "categories": ["dementia"]})).await;
    let count = |needle: &'static str| texts(&w.rx, "/wecom").iter().filter(|t| t.contains(needle) && t.contains("提醒")).count();
    w.d.advance("11m").await;
    eventually("the first absence alert, at 20:11", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("老人超时未出现")).then_some(())).await;
    // Its 6-hourly reminder falls due at 02:11: held.
    w.d.advance("6h4m").await; // 02:15
    w.d.post("/debug/tick", json!({})).await;
    // An SOS in the middle of the night is sent, and so are its reminders.
    let p = w.broker.publisher().await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001501","gateway":"b3","sos":true}"#).await;
    eventually("the SOS at 02:15", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("SOS")).then_some(())).await;
    w.d.advance("6m").await;
    eventually("an SOS reminder at 02:21", 10, async || (count("SOS") >= 1).then_some(())).await;
    w.d.advance("4h30m").await; // 06:51
    w.d.post("/debug/tick", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(count("老人超时未出现"), 0, "no absence reminder in quiet hours:\n{:#?}", texts(&w.rx, "/wecom"));
    w.d.advance("10m").await; // 07:01
    eventually("the held reminder once quiet hours end", 10, async || (count("老人超时未出现") == 1).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_elder_last_seen_at_a_gate_facing_out_is_reported_as_having_left() {
    let gate = "\n[[gates]]\nname = \"north\"\ndisplay_name = \"北门\"\ndirection = \"out\"\nactuator = { kind = \"log\" }\n";
    let w = world(&format!("{LADDER}{gate}")).await;
    let (at, day) = site_time(8, 14);
    w.d.set_clock(&at).await;
    enroll(&w.d, "E601", "c3a1f0001601").await;
    w.d.post("/sightings/face", json!({"elder": "E601", "gate": "north"})).await;
    w.d.advance("48h1m").await;
    let first = eventually("the absence alert", 10, async || w.rx.accepted("/wecom").first().cloned()).await;
    assert!(first.text().contains(&format!("{day} 08:14 经北门离开小区")), "{}", first.text());
}

/// The form fields of an Alibaba RPC call.
fn form(r: &Received) -> std::collections::BTreeMap<String, String> {
    url_pairs(&String::from_utf8_lossy(&r.body)).into_iter().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn family_get_a_signed_sms_the_duty_officer_a_call_and_no_phone_is_logged_in_full() {
    let (aliyun, tencent, voice) = (Receiver::start().await, Receiver::start().await, Receiver::start().await);
    aliyun.script(&[(200, r#"{"Code":"isv.BUSINESS_LIMIT_CONTROL","Message":"触发分钟级流控Permits:1"}"#)]);
    aliyun.set_default(200, r#"{"Message":"OK","RequestId":"r1","BizId":"b1","Code":"OK"}"#);
    tencent.set_default(
        200,
        r#"{"Response":{"Error":{"Code":"AuthFailure.SignatureFailure","Message":"The provided credentials could not be validated."},"RequestId":"r2"}}"#,
    );
    voice.set_default(200, r#"{"Message":"OK","RequestId":"r3","CallId":"c1","Code":"OK"}"#);
    let extra = format!(
        r#"
[alert.outbox]
retry_initial = "200ms"
retry_max = "1s"
[[alert.channels]]
name = "grid-wecom"
kind = "wecom"
url = "{{R}}/wecom"
[[alert.channels]]
name = "family-sms"
kind = "aliyun_sms"
url = "{a}/"
access_key_id = "LTAItest"
secret = "aliyun-secret"
sign_name = "幸福里社区"
template = "SMS_100000001"
template_params = ["name", "kind", "time"]
to = "contacts"
[[alert.channels]]
name = "office-sms"
kind = "tencent_sms"
url = "{t}/"
access_key_id = "AKIDtest"
secret = "tencent-secret"
sign_name = "幸福里社区"
template = "449739"
app_id = "1400006666"
template_params = ["name", "kind"]
phones = ["13700003333"]
[[alert.channels]]
name = "duty-call"
kind = "aliyun_voice"
url = "{v}/"
access_key_id = "LTAItest"
secret = "aliyun-secret"
template = "TTS_100000002"
template_params = ["name", "address"]
phones = ["13600004444"]
[[alert.ladder]]
name = "网格员与家属"
channels = ["grid-wecom", "family-sms", "office-sms", "duty-call"]
"#,
        a = aliyun.url(""),
        t = tencent.url(""),
        v = voice.url("")
    );
    let w = world(&extra).await;
    enroll(&w.d, "E701", "c3a1f0001701").await; // contact 王丽:13800001111:女儿
    let p = w.broker.publisher().await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001701","gateway":"b3","sos":true}"#).await;
    // Alibaba SMS to the family: rate-limited once, then sent, signed.
    let sent = eventually("the family SMS, after one flow-control answer", 10, async || (aliyun.all().len() >= 2).then(|| aliyun.all()[1].clone())).await;
    let f = form(&sent);
    assert_eq!((f["Action"].as_str(), f["PhoneNumbers"].as_str(), f["TemplateCode"].as_str()), ("SendSms", "13800001111", "SMS_100000001"));
    let tp: serde_json::Value = serde_json::from_str(&f["TemplateParam"]).unwrap();
    assert_eq!((tp["name"].as_str(), tp["kind"].as_str()), (Some("老人E701"), Some("紧急呼叫（SOS）")));
    let mut unsigned = f.clone();
    let sig = unsigned.remove("Signature").unwrap();
    assert_eq!(sig, domain::alert::cloud::aliyun_signature("aliyun-secret", "POST", &unsigned), "the signature verifies as Alibaba would check it");
    // Tencent refuses the signature: parked as a permanent failure, loudly.
    let failed = eventually("the Tencent SMS parked", 10, async || {
        w.d.get("/outbox").await.as_array().unwrap().iter().find(|n| n["channel"] == "office-sms" && n["delivery"] == "failed").cloned()
    })
    .await;
    assert!(failed["last_error"].as_str().unwrap().contains("AuthFailure.SignatureFailure"), "{failed}");
    let t = &tencent.all()[0];
    assert!(t.header("Authorization").unwrap().starts_with("TC3-HMAC-SHA256 Credential=AKIDtest/"));
    assert_eq!(t.header("X-TC-Action"), Some("SendSms"));
    assert_eq!(t.json()["PhoneNumberSet"][0], "+8613700003333");
    // The duty officer's phone rings for the SOS, once; a low battery does not call.
    let call = eventually("the voice call", 10, async || voice.all().first().cloned()).await;
    assert_eq!((form(&call)["Action"].as_str(), form(&call)["CalledNumber"].as_str()), ("SingleCallByTts", "13600004444"));
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001701","gateway":"b3","battery":9}"#).await;
    eventually("the low-battery alert", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("电量低")).then_some(())).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(voice.all().len(), 1, "a voice channel carries only SOS");
    let log = w.d.log();
    for phone in ["13800001111", "13700003333", "13600004444"] {
        assert!(!log.contains(phone), "{phone} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_grid_gets_one_morning_watch_list_a_day_under_the_test_clock() {
    let w = world(&format!("[alert]\nwatch_list_at = \"07:30\"\n{LADDER}")).await;
    let (start, _) = site_time(12, 0);
    w.d.set_clock(&start).await;
    w.d.post("/elders", json!({"id": "E801", "name": "老人E801", "building": "5栋", "room": "101", "absence_after": "24h"})).await;
    enroll(&w.d, "E802", "c3a1f0001802").await;
    let p = w.broker.publisher().await;
    p.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0001802","gateway":"b3","battery":9}"#).await;
    p.publish("home/gw_b7/LWT", "offline").await;
    eventually("the low-battery alert", 10, async || texts(&w.rx, "/wecom").iter().any(|t| t.contains("电量低")).then_some(())).await;
    let lists = || texts(&w.rx, "/wecom").into_iter().filter(|t| t.contains("每日巡查")).collect::<Vec<_>>();
    w.d.advance("19h").await; // 07:00
    w.d.post("/debug/tick", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(lists().is_empty(), "not before 07:30");
    w.d.advance("31m").await; // 07:31
    let list = eventually("the watch list at 07:31", 10, async || lists().first().cloned()).await;
    for want in [
        "超过一半时限未出现（1）",
        "老人E801（5栋-101）",
        "手环电量低（1）",
        "老人E802（3栋-401） 9%",
        "设备离线（1）",
        "gw_b7",
        "未确认的告警",
        "battery_low",
        "2 位老人",
    ] {
        assert!(list.contains(want), "missing {want:?} in\n{list}");
    }
    w.d.advance("1h").await;
    w.d.post("/debug/tick", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(lists().len(), 1, "once a day");
    // A restart does not send it again the same day.
    let mut d = w.d;
    d.terminate();
    let same_day = chrono::DateTime::parse_from_rfc3339(&start).unwrap() + chrono::Duration::minutes(20 * 60 + 32);
    d.restart_at(&same_day.to_rfc3339()).await; // 08:32 the next morning, after its list
    d.post("/debug/tick", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert_eq!(lists().len(), 1, "once a day, across a restart");
    d.advance("23h").await; // 07:31 the next day
    eventually("the next day's list", 10, async || (lists().len() == 2).then_some(())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acknowledgement_with_an_outcome_and_a_note_is_stored_sent_and_published() {
    let w = world(LADDER).await;
    let upstream = Subscriber::start(w.broker.port, "gatewarden/t/alert").await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    enroll(&w.d, "E2", "c3a1f0001102").await;
    w.d.advance("49h").await;
    eventually("both alerts", 10, async || (w.rx.accepted("/wecom").len() >= 2).then_some(())).await;
    let alerts = w.d.get("/alerts").await;
    let id_of = |elder: &str| alerts.as_array().unwrap().iter().find(|a| a["subject"]["id"] == elder).unwrap()["id"].as_u64().unwrap();
    // From the ack page: the form offers the four outcomes and a note.
    let m = w.rx.accepted("/wecom").into_iter().find(|r| r.text().contains("老人E1")).unwrap();
    let link = m.text().lines().find(|l| l.contains("/ack/")).unwrap().trim().to_string();
    let http = reqwest::Client::new();
    let page = http.get(&link).send().await.unwrap().text().await.unwrap();
    for o in ["已上门，一切正常", "已送医", "已联系家属", "其他", "<textarea name=\"note\""] {
        assert!(page.contains(o), "missing {o:?} in the ack page");
    }
    let r = http.post(&link).form(&[("by", "李网格"), ("outcome", "all_well"), ("note", "在女儿家，电话确认")]).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let sent =
        eventually("the acknowledged notice", 10, async || texts(&w.rx, "/wecom").into_iter().find(|t| t.contains("已确认") && t.contains("老人E1"))).await;
    assert!(sent.contains("处理结果：已上门，一切正常") && sent.contains("备注：在女儿家，电话确认"), "{sent}");
    let a = w.d.get("/alerts?all=true").await;
    let e1 = a.as_array().unwrap().iter().find(|a| a["subject"]["id"] == "E1").unwrap().clone();
    assert_eq!((e1["outcome"].as_str(), e1["note"].as_str()), (Some("all_well"), Some("在女儿家，电话确认")));
    // Upstream hears the outcome's code, never the note.
    let ep = eventually("the acknowledged episode upstream", 10, async || {
        upstream.messages().into_iter().map(|(_, p)| p).find(|p| p.contains("\"acknowledged\"") && p.contains("all_well"))
    })
    .await;
    assert!(!ep.contains("女儿家"), "{ep}");
    // From the CLI: acknowledge with an outcome, list, and an unknown outcome is refused.
    let e2 = id_of("E2").to_string();
    let bad = w.d.cli(&["alerts", "ack", &e2, "--by", "王主任", "--outcome", "maybe"]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("all_well"), "{}", String::from_utf8_lossy(&bad.stderr));
    let ok = w.d.cli(&["alerts", "ack", &e2, "--by", "王主任", "--outcome", "已送医", "--note", "120 已接走"]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let list = String::from_utf8_lossy(&w.d.cli(&["alerts", "list"]).stdout).to_string();
    assert!(list.contains("已送医（120 已接走）") && list.contains("已上门，一切正常（在女儿家，电话确认）"), "{list}");
    // Resolve by hand, with a reason, in the message's language.
    let r = w.d.cli(&["alerts", "resolve", &e2, "--by", "王主任", "--reason", "已转入养老院"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let done = eventually("the resolved notice", 10, async || texts(&w.rx, "/wecom").into_iter().find(|t| t.contains("已解除") && t.contains("老人E2"))).await;
    assert!(done.contains("解除原因：由王主任手动解除：已转入养老院"), "{done}");
    let (code, _) = w.d.api(Method::POST, &format!("/alerts/{e2}/resolve"), Some(json!({"by": "x", "reason": "y"}))).await;
    assert_eq!(code, 404, "already resolved");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_are_named_as_staff_know_them_in_messages_the_inventory_and_presence() {
    let names = "\n[presence.gateway_names]\ngw_building5 = \"3栋大堂\"\n\"aa-bb-cc-dd-ee-01\" = \"北门岗亭\"\n";
    let w = world(&format!("{LADDER}{names}")).await;
    enroll(&w.d, "E901", "c3a1f0001901").await;
    let p = w.broker.publisher().await;
    p.publish("home/gw_building5/BTtoMQTT/C3A1F0001901", r#"{"id":"C3:A1:F0:00:19:01","rssi":-60}"#).await;
    wait_seen(&w.d, "E901", "gw_building5").await;
    let row = w.d.get("/presence").await.as_array().unwrap().iter().find(|r| r["elder"] == "E901").cloned().unwrap();
    assert_eq!(row["place"], "3栋大堂");
    p.publish("home/gw_building5/LWT", "offline").await;
    let inventory = eventually("the gateway offline", 10, async || {
        let g = w.d.get("/gateways").await;
        g.as_array().unwrap().iter().any(|g| g["id"] == "gw_building5" && g["offline"] == true).then_some(g)
    })
    .await;
    let north = inventory.as_array().unwrap().iter().find(|g| g["id"] == "AA:BB:CC:DD:EE:01").cloned().unwrap();
    assert_eq!((north["name"].as_str(), north["last_heard"].is_null()), (Some("北门岗亭"), true), "named in the config, never heard");
    let out = String::from_utf8_lossy(&w.d.cli(&["gateways"]).stdout).to_string();
    assert!(out.contains("3栋大堂") && out.contains("OFFLINE") && out.contains("北门岗亭") && out.contains("never"), "{out}");
    w.d.advance("49h").await;
    let m = eventually("the absence alert", 10, async || texts(&w.rx, "/wecom").into_iter().find(|t| t.contains("老人超时未出现"))).await;
    assert!(m.contains("3栋大堂") && !m.contains("gw_building5"), "{m}");
}
