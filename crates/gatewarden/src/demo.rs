//! `gatewarden demo`: the whole alert path on one machine with nothing else
//! installed. It starts a local webhook sink that prints what a grid worker's
//! phone would show, runs the daemon with its embedded broker, enrols a few
//! elders, publishes BLE sightings in the ESPresense, OpenMQTTGateway and
//! gatewarden formats, and moves the demo clock two days forward.

use crate::admin::cli::{self, Client, Conn};
use anyhow::Context as _;
use axum::routing::post;
use axum::Json;
use config::Config;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Serve `POST <path>` on the first channel's address and print every message.
async fn start_sink(url: &str, received: Arc<AtomicUsize>) -> anyhow::Result<()> {
    let u = reqwest::Url::parse(url)?;
    let addr = format!("{}:{}", u.host_str().unwrap_or("127.0.0.1"), u.port_or_known_default().unwrap_or(80));
    let path = u.path().to_string();
    let app = axum::Router::new().route(
        &path,
        post(move |Json(v): Json<Value>| {
            let received = received.clone();
            async move {
                let a = &v["alerts"][0];
                println!("\n📱 ── webhook sink received ({}) ──", v["status"].as_str().unwrap_or("?"));
                println!("{}", a["annotations"]["summary"].as_str().unwrap_or(""));
                println!("{}", a["annotations"]["description"].as_str().unwrap_or(""));
                if let Some(link) = a["generatorURL"].as_str().filter(|s| !s.is_empty()) {
                    println!("{link}");
                }
                println!("──────────────────────────────────────");
                received.fetch_add(1, Ordering::SeqCst);
                Json(json!({"ok": true}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("demo sink cannot listen on {addr}"))?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(())
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..200 {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("demo: timed out waiting for {what}")
}

fn step(s: &str) {
    println!("\n▶ {s}");
}

/// The shared test photos (never copied into the project): a resident's
/// enrolment photo and another photo of them for the gate camera's clip.
fn sample_faces() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let d = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata/faces/people"));
    let (a, b) = (d.join("img1.jpg"), d.join("img2.jpg"));
    (a.exists() && b.exists()).then_some((a, b))
}

/// Make the gate camera's sample video: someone standing at the north gate.
fn make_clip(photo: &Path, out: &Path) -> anyhow::Result<()> {
    if let Some(d) = out.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = out.with_extension("part.mp4");
    let st = std::process::Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-loop", "1", "-i"])
        .arg(photo)
        .args([
            "-t",
            "20",
            "-r",
            "10",
            "-vf",
            "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&tmp)
        .status()
        .context("ffmpeg is needed for the demo's sample video")?;
    anyhow::ensure!(st.success(), "ffmpeg could not make the sample video");
    std::fs::rename(&tmp, out)?;
    Ok(())
}

/// Each run starts from an empty store: the scenario moves the clock two days
/// forward, and a second run on the same store would start "before" the
/// sightings of the first. Only a store the demo made (it leaves a marker
/// file beside it) is ever deleted.
fn fresh_store(store: &Path) -> anyhow::Result<()> {
    let marker = store.with_extension("demo-store");
    if store.exists() {
        anyhow::ensure!(
            marker.exists(),
            "{} exists but was not made by the demo; the demo starts from an empty store, so point its config at a store of its own (or delete that folder)",
            store.display()
        );
        std::fs::remove_dir_all(store).with_context(|| format!("cannot clear the demo store {}", store.display()))?;
    }
    if let Some(parent) = store.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&marker, "made by `gatewarden demo`; deleted and remade on every run\n")?;
    Ok(())
}

pub async fn run(cfg: Config, config_path: &Path, exit_after: bool) -> anyhow::Result<()> {
    anyhow::ensure!(cfg.debug.manual_clock, "the demo moves time forward; its config needs [debug] manual_clock = true");
    fresh_store(&cfg.store.path)?;
    // The gate part needs the sample video before the camera opens it.
    let camera = cfg.gates.iter().find_map(|g| g.camera.clone());
    if let (Some(cam), Some((_, clip_photo))) = (&camera, sample_faces()) {
        make_clip(&clip_photo, Path::new(cam))?;
    }
    let sink_url = cfg.alert.channels.first().context("the demo config needs a webhook channel")?.url.clone();
    let received = Arc::new(AtomicUsize::new(0));
    start_sink(&sink_url, received.clone()).await?;
    let cancel = CancellationToken::new();
    let path = config_path.to_owned();
    let daemon = tokio::spawn({
        let (cfg, cancel) = (cfg.clone(), cancel.clone());
        async move { crate::daemon::run(cfg, &path, cancel).await }
    });
    let health = format!("http://{}/healthz", cfg.http.listen);
    let http = reqwest::Client::new();
    for i in 0.. {
        if http.get(&health).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        if daemon.is_finished() || i > 100 {
            return daemon.await?.context("the daemon did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = Client::new(&Conn { config: config_path.to_owned(), api: None, token: None, json: false })?;
    let r = scenario(&cfg, &c, &received).await;
    if let Err(e) = &r {
        eprintln!("demo scenario failed: {e:#}");
    }
    if exit_after || r.is_err() {
        cancel.cancel();
    } else {
        // A console user for trying the web console (demo only; a real box gets
        // its users from `gatewarden user add`).
        let pw = "demo-admin-2026";
        let _ = c.call(reqwest::Method::POST, "/users", Some(serde_json::json!({ "name": "admin", "role": "admin", "password": pw }))).await;
        println!("\nThe web console: http://{}/console/ (user admin, password {pw}).", cfg.http.listen);
        println!("The daemon keeps running: try `gatewarden presence --config {}` in another shell. Ctrl-C stops it.", config_path.display());
    }
    daemon.await??;
    r
}

async fn scenario(cfg: &Config, c: &Client, received: &AtomicUsize) -> anyhow::Result<()> {
    use reqwest::Method;
    step("Enrolling a grid worker and three elders (each with a BLE wristband)");
    c.call(Method::POST, "/staff", Some(json!({"id": "s1", "name": "李网格", "phone": "13900002222", "role": "网格员", "grid": "g1"}))).await?;
    let elders = [
        ("E1", "张桂兰", "c3:a1:f0:00:11:01", "3", "2", "401"),
        ("E2", "刘德厚", "ibeacon:e5b9e3a6-27e2-4c36-a257-7698da5fc140:1:102", "5", "1", "102"),
        ("E3", "王秀英", "c3:a1:f0:00:11:03", "7", "3", "602"),
    ];
    for (id, name, band, b, u, r) in elders {
        let body = json!({"id": id, "name": name, "building": format!("{b}栋"), "unit": format!("{u}单元"), "room": r,
            "grid": "g1", "bands": [band], "contacts": [format!("{name}家属:13800001111:子女")], "categories": ["over70", "alone"]});
        if let Err(e) = c.call(Method::POST, "/elders", Some(body)).await {
            println!("  {id}: {e}");
        }
    }
    let (host, port) = (cfg.mqtt.embedded_listen.ip().to_string(), cfg.mqtt.embedded_listen.port());
    let mut o = MqttOptions::new("gatewarden-demo-gateway", host, port);
    o.set_keep_alive(Duration::from_secs(10));
    let (mqtt, mut ev) = AsyncClient::new(o, 64);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    let publish = |topic: &str, payload: String| {
        let (mqtt, topic) = (mqtt.clone(), topic.to_string());
        async move { mqtt.publish(topic, QoS::AtLeastOnce, false, payload).await }
    };
    let see_all = || async {
        publish("espresense/devices/c3a1f0001101/gate_north", json!({"mac": "c3a1f0001101", "id": "c3a1f0001101", "rssi": -71.4, "distance": 2.3}).to_string())
            .await?;
        publish(
            "home/gw_building5/BTtoMQTT/C3A1F0001102",
            json!({"id": "C3:A1:F0:00:11:02", "rssi": -78, "uuid": "e5b9e3a627e24c36a2577698da5fc140", "major": 1, "minor": 102, "batt": 64}).to_string(),
        )
        .await?;
        anyhow::Ok(())
    };
    step("BLE gateways report all three wristbands (ESPresense, OpenMQTTGateway, gatewarden JSON)");
    see_all().await?;
    publish("gatewarden/demo/sighting", json!({"band": "C3:A1:F0:00:11:03", "gateway": "building_7", "battery": 81}).to_string()).await?;
    publish("gatewarden/demo/sighting", "this is not JSON".to_string()).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cli::presence(c).await?;

    step("30 hours pass. 张桂兰 and 刘德厚 are seen again; 王秀英 is not");
    c.call(Method::POST, "/debug/clock", Some(json!({"advance": "30h"}))).await?;
    see_all().await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    step("20 more hours pass: 王秀英 has now been unseen for 50 hours (threshold 48h)");
    let before = received.load(Ordering::SeqCst);
    c.call(Method::POST, "/debug/clock", Some(json!({"advance": "20h"}))).await?;
    wait_for("the absence alert at the webhook sink", || received.load(Ordering::SeqCst) > before).await?;
    cli::presence(c).await?;

    let alerts = c.call(Method::GET, "/alerts", None).await?;
    let id = alerts
        .as_array()
        .and_then(|a| a.iter().find(|x| x["subject"]["id"] == "E3" && x["kind"] == "absence"))
        .and_then(|a| a["id"].as_u64())
        .context("expected an open absence alert for E3")?;
    step(&format!("The grid worker acknowledges alert #{id} (reminders and escalation stop)"));
    let before = received.load(Ordering::SeqCst);
    c.call(Method::POST, &format!("/alerts/{id}/ack"), Some(json!({"by": "李网格"}))).await?;
    wait_for("the acknowledgement notice", || received.load(Ordering::SeqCst) > before).await?;

    step("王秀英's wristband is heard at building 7: a \"returned\" notice closes the episode");
    let before = received.load(Ordering::SeqCst);
    publish("gatewarden/demo/sighting", json!({"band": "C3:A1:F0:00:11:03", "gateway": "building_7"}).to_string()).await?;
    wait_for("the returned notice", || received.load(Ordering::SeqCst) > before).await?;
    cli::presence(c).await?;
    gate_scenario(cfg, c).await?;
    step(&format!("Demo complete: {} messages reached the webhook sink. Metrics: http://{}/metrics", received.load(Ordering::SeqCst), cfg.http.listen));
    Ok(())
}

async fn gate_scenario(cfg: &Config, c: &Client) -> anyhow::Result<()> {
    use base64::Engine as _;
    use reqwest::Method;
    let Some(gate) = cfg.gates.first() else { return Ok(()) };
    step(&format!("Gate \"{}\": a resident who forgot her phone types her PIN (face is never the only way in)", gate.name));
    let pin = json!({"id": "R1", "name": "张桂兰", "unit": "3-2-401", "elder": "E1", "pin": "246810", "cards": ["04A1B2C3"]});
    let (photo, consent) = match sample_faces() {
        Some((enrol_photo, _)) => (
            vec![base64::engine::general_purpose::STANDARD.encode(std::fs::read(enrol_photo)?)],
            json!({"by": "张桂兰", "how": "paper form", "purpose": "小区门禁通行"}),
        ),
        None => (vec![], Value::Null),
    };
    let mut body = pin;
    body["photos"] = json!(photo);
    body["consent"] = consent;
    if let Err(e) = c.call(Method::POST, "/residents", Some(body)).await {
        println!("  {e}");
    }
    let v = c.call(Method::POST, &format!("/gates/{}/credential", gate.name), Some(json!({"kind": "pin", "value": "246810"}))).await?;
    println!("  PIN 246810 → {}", if v["opened"] == true { "opened" } else { "denied" });
    let v = c.call(Method::POST, &format!("/gates/{}/credential", gate.name), Some(json!({"kind": "pin", "value": "135790"}))).await?;
    println!("  PIN 135790 → {} ({})", if v["opened"] == true { "opened" } else { "denied" }, v["entry"]["reason"].as_str().unwrap_or(""));
    step("A visitor registers with her ID card and gets a 4-hour pass");
    let v =
        c.call(Method::POST, "/visitors", Some(json!({"name": "王五", "id_number": "11010519491231002X", "host_unit": "3-2-401", "valid_for": "4h"}))).await?;
    println!(
        "  visitor {} (ID {}), PIN {}, QR {}",
        v["id"].as_str().unwrap_or(""),
        v["id_masked"].as_str().unwrap_or(""),
        v["pin"].as_str().unwrap_or(""),
        v["qr"].as_str().unwrap_or("")
    );
    let qr = v["qr"].as_str().unwrap_or_default().to_string();
    let r = c.call(Method::POST, &format!("/gates/{}/credential", gate.name), Some(json!({"kind": "qr", "value": qr}))).await?;
    println!("  QR pass → {}", if r["opened"] == true { "opened" } else { "denied" });
    if gate.camera.is_some() && sample_faces().is_some() {
        step("The camera at the gate sees 张桂兰 (sample video through OpenCV, face + liveness + 3-of-5 frames)");
        let mut opened = false;
        for _ in 0..60 {
            let log = c.call(Method::GET, &format!("/log?gate={}", gate.name), None).await?;
            opened = log.as_array().is_some_and(|l| l.iter().any(|e| e["entry"]["credential"] == "face" && e["entry"]["opened"] == true));
            if opened {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        println!("  {}", if opened { "face recognised: gate opened (dry run)" } else { "no face decision yet (is the vision process running?)" });
    }
    step("The entry log (hash-chained; `gatewarden log verify`)");
    cli::log(c, cli::LogCmd::Show { since: None, until: None, person: None, gate: None, csv: false }).await?;
    cli::log(c, cli::LogCmd::Verify).await?;
    Ok(())
}
