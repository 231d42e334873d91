//! The real daemon under attack. Each test runs one attack against the
//! release-shaped binary on loopback, asserts that it fails, and then that
//! the daemon still delivers a real alert to a real HTTP receiver.
//! SECURITY.md names the boundary each attack probes.

mod common;
use common::*;
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

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

/// Photos whose headers claim more pixels than any face photo has (a 25,000
/// × 25,000 PNG of a few hundred bytes took the vision process to 2 GB) are
/// refused by their header, before anything decodes them; other formats and
/// torn headers too. The vision process stays up: a real photo still enrols,
/// and alerts still go out.
#[tokio::test(flavor = "multi_thread")]
async fn photos_that_claim_huge_dimensions_are_refused_before_decoding() {
    use base64::Engine;
    let Some(faces) = shared_testdata("faces/people") else { return };
    let w = world(&format!("{HOOK_LADDER}{}", vision_and_north_gate())).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut jpeg = std::fs::read(faces.join("img1.jpg")).unwrap();
    // The same JPEG with its frame header rewritten to 30,000 × 30,000.
    let mut sof = 2;
    while !(0xC0..=0xC2).contains(&jpeg[sof + 1]) {
        sof += 2 + u16::from_be_bytes([jpeg[sof + 2], jpeg[sof + 3]]) as usize;
    }
    jpeg[sof + 5..sof + 9].copy_from_slice(&[0x75, 0x30, 0x75, 0x30]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("png 25000²", vision_protocol::image::png_header(25_000, 25_000), "pixels"),
        ("jpeg 30000²", jpeg, "pixels"),
        ("tiff", b"II*\x00\x08\x00\x00\x00".to_vec(), "not a JPEG, PNG, WebP or BMP"),
        ("torn png", vision_protocol::image::png_header(640, 480)[..19].to_vec(), "truncated or corrupt"),
    ];
    for (what, bytes, want) in cases {
        let (code, v) =
            w.d.api(
                reqwest::Method::POST,
                "/residents",
                Some(json!({"name": "攻击", "unit": "1-1", "photos": [b64(&bytes)], "consent": {"by": "x", "how": "form"}})),
            )
            .await;
        assert_eq!(code, 400, "{what}: {v}");
        assert!(v.to_string().contains(want), "{what}: a clear reason: {v}");
    }
    assert!(w.d.get("/people").await.as_array().unwrap().is_empty(), "nothing enrolled");
    // The vision process, which decodes what the daemon hands it, is told
    // only its own section and the cameras: no store, no channels, no tokens.
    let vision = std::fs::read_to_string(w._dir.path().join("vision.toml")).unwrap();
    assert!(vision.contains("[vision]"), "{vision}");
    let db = w._dir.path().join("db").display().to_string();
    for secret in [db.as_str(), "[alert", "hook", "admin_token", "[http]"] {
        assert!(!vision.contains(secret), "{secret} in the vision process's config:\n{vision}");
    }
    // Still up: a real photo enrols, and an SOS still reaches staff.
    let real = b64(&std::fs::read(faces.join("img1.jpg")).unwrap());
    let (code, v) =
        w.d.api(reqwest::Method::POST, "/residents", Some(json!({"name": "真人", "unit": "1-1", "photos": [real], "consent": {"by": "x", "how": "form"}})))
            .await;
    assert_eq!(code, 200, "{v}");
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

/// 1,100 idle sockets used to exhaust the daemon's file descriptors, and
/// alert webhooks then failed with "Too many open files". Now connections
/// are capped and a socket that sends no request head is closed after
/// `http.header_read_timeout`; bodies are bounded per route. Through it all
/// an SOS still reaches staff.
#[tokio::test(flavor = "multi_thread")]
async fn idle_socket_floods_and_oversized_bodies_cannot_exhaust_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let text = config(dir.path(), broker.port, http, &HOOK_LADDER.replace("{R}", &rx.url("")))
        .replace("[http]\n", "[http]\nmax_connections = 64\nheader_read_timeout = \"2s\"\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    let w = World { _dir: dir, broker, rx, d };
    enroll(&w.d, "E1", "c3a1f0001101").await;
    // The daemon keeps the default limit it started with; this process needs more to attack.
    let n = unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        (l.rlim_cur.saturating_sub(200) as usize).min(1100)
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().unwrap();
    let mut idle = Vec::new();
    for _ in 0..n {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200)) {
            idle.push(s);
        }
    }
    assert!(idle.len() > 500, "only {} sockets opened", idle.len());
    let fds = std::fs::read_dir(format!("/proc/{}/fd", w.d.pid())).unwrap().count();
    assert!(fds < 64 + 100, "{} idle sockets held {fds} descriptors in the daemon", idle.len());
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
    assert!(w.d.metric("gatewarden_mqtt_rejected_total{reason=\"http_connection_cap\"}").await >= 1.0, "refused connections are counted");
    // After the header-read timeout the server has closed the idle sockets, and serves again.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let closed = idle
        .iter_mut()
        .take(20)
        .map(|s| {
            use std::io::Read;
            s.set_read_timeout(Some(std::time::Duration::from_millis(500))).unwrap();
            matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_))
        })
        .filter(|closed| *closed)
        .count();
    assert_eq!(closed, 20, "idle sockets are closed by the server");
    drop(idle);
    eventually("/healthz answers again", 10, async || (w.d.health().await["status"].is_string()).then_some(())).await;
    // Bodies: 1 MiB to the login page and to a JSON route is refused before it is buffered.
    let c = reqwest::Client::new();
    // The server answers 413 as soon as the limit is passed and closes the
    // connection; a client still sending may see the close before the answer.
    // Either way the body is refused, nothing is created, and the daemon lives.
    let refused = |r: Result<reqwest::Response, reqwest::Error>| match r {
        Ok(r) => r.status().as_u16() == 413,
        Err(e) => e.is_request() && !e.is_timeout(),
    };
    let big = vec![b'a'; 1 << 20];
    let r = c.post(format!("http://127.0.0.1:{http}/console/login")).header("content-type", "application/json").body(big).send().await;
    assert!(refused(r), "1 MiB to the login page");
    let token = std::fs::read_to_string(w._dir.path().join("admin.token")).unwrap();
    let elder = format!(r#"{{"id":"E9","name":"{}","bands":["c3a1f0009999"]}}"#, "x".repeat(1 << 20)).into_bytes();
    let r =
        c.post(format!("http://127.0.0.1:{http}/api/v1/elders")).bearer_auth(token.trim()).header("content-type", "application/json").body(elder).send().await;
    assert!(refused(r), "even with the admin token, a JSON write is bounded");
    assert_eq!(w.d.get("/elders").await.as_array().unwrap().len(), 1, "the oversized enrolment created nothing");
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
}

/// Behind the TLS proxy the README recommends, every login comes from the
/// proxy's address. With `http.trusted_proxies`, lockout follows the client
/// named in X-Forwarded-For: a guesser is locked out, the administrator at
/// another address is not; and an untrusted peer cannot pick its address.
#[tokio::test(flavor = "multi_thread")]
async fn lockout_behind_a_trusted_proxy_follows_the_real_client() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "[console]\nlogin_max_failures = 3\n").replace("[http]\n", "[http]\ntrusted_proxies = [\"127.0.0.1\"]\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    d.post("/users", json!({"name": "admin", "role": "admin", "password": "correct-horse-battery"})).await;
    let login = async |from: &reqwest::Client, xff: &str, pw: &str| {
        from.post(format!("http://127.0.0.1:{http}/console/login"))
            .header("x-forwarded-for", xff)
            .json(&json!({"user": "admin", "password": pw}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    let proxy = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(login(&proxy, "10.0.0.66", "guess").await, 401);
    }
    assert_eq!(login(&proxy, "10.0.0.66", "correct-horse-battery").await, 429, "the guesser is locked out");
    assert_eq!(login(&proxy, "10.0.0.10", "correct-horse-battery").await, 200, "the administrator elsewhere is not");
    // From an untrusted peer (127.0.0.9), X-Forwarded-For is ignored: its own address counts.
    let other = client_from(9);
    for _ in 0..3 {
        assert_eq!(login(&other, "10.0.0.77", "guess").await, 401);
    }
    assert_eq!(login(&other, "10.0.0.78", "correct-horse-battery").await, 429, "a forged header does not reset the lockout");
}

/// From a copy of the db file a 6-digit PIN came back in 3 s, because the
/// hash keys lived inside the store and every backup. Now every secret is in
/// a key file beside the store (0600): neither the store's files nor a backup
/// contains one; a box whose credential key file is lost refuses to start
/// rather than lock everyone out with a new key; an old store's secrets move
/// out on the first start, keeping every PIN working.
#[tokio::test(flavor = "multi_thread")]
async fn a_stolen_backup_or_store_copy_holds_no_secret() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let gate = "[access]\ncooldown = \"1ms\"\n[[gates]]\nname = \"north\"\nactuator = { kind = \"log\" }\n";
    let text = config(dir.path(), broker.port, http, &(HOOK_LADDER.replace("{R}", &rx.url("")) + gate));
    let mut d = Daemon::start(dir.path(), &text, http).await;
    d.post("/residents", json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810"})).await;
    let opens = async |d: &Daemon| d.post("/gates/north/credential", json!({"kind": "pin", "value": "246810"})).await["opened"] == true;
    assert!(opens(&d).await);
    let secrets: Vec<(String, String)> = ["credential.key", "ack.key", "admin.token"]
        .iter()
        .map(|f| {
            let p = dir.path().join(f);
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
            (f.to_string(), std::fs::read_to_string(p).unwrap().trim().to_string())
        })
        .collect();
    let backup = dir.path().join("box.gwbak");
    assert!(d.cli(&["backup", "--out", backup.to_str().unwrap()]).status.success());
    let bytes = std::fs::read(&backup).unwrap();
    assert!(d.terminate().success());
    let store = store::Store::open(&dir.path().join("db")).unwrap();
    for (f, s) in &secrets {
        assert!(!bytes.windows(s.len()).any(|w| w == s.as_bytes()), "{f}'s secret is in the backup");
        assert_eq!(store.contains_bytes(s.as_bytes()).unwrap(), Vec::<String>::new(), "{f}'s secret is in the store");
    }
    drop(store);
    // The credential key file is lost: refusing beats a new key that locks everyone out.
    let key = dir.path().join("credential.key");
    std::fs::rename(&key, dir.path().join("credential.key.saved")).unwrap();
    let log = d.try_restart().await.expect_err("started without the credential key while residents are enrolled");
    assert!(log.contains("credential.key") && log.contains("missing"), "{log}");
    std::fs::rename(dir.path().join("credential.key.saved"), &key).unwrap();
    d.restart().await;
    assert!(opens(&d).await, "the PIN still opens with the key from its file");
    assert!(d.terminate().success());
    // A store from before key files: its secrets move out, and the PIN keeps working.
    std::fs::remove_file(&key).unwrap();
    let store = store::Store::open(&dir.path().join("db")).unwrap();
    store.put_legacy_secret("credential_key", &secrets[0].1).unwrap();
    store.flush().unwrap();
    drop(store);
    d.restart().await;
    assert_eq!(std::fs::read_to_string(&key).unwrap().trim(), secrets[0].1, "moved out of the store, unchanged");
    assert!(opens(&d).await);
    assert!(d.terminate().success());
    let store = store::Store::open(&dir.path().join("db")).unwrap();
    assert_eq!(store.contains_bytes(secrets[0].1.as_bytes()).unwrap(), Vec::<String>::new(), "the store forgot its copy");
}

/// A right PIN presented over MQTT at a gate that is not configured was
/// logged as "opened", and each made-up gate had a PIN lockout of its own.
/// Now only configured gates take credentials; the real keypad still works.
#[tokio::test(flavor = "multi_thread")]
async fn credentials_for_a_made_up_gate_are_refused() {
    let gate = "[access]\ncooldown = \"1ms\"\n[[gates]]\nname = \"north\"\nactuator = { kind = \"log\" }\n";
    let w = world(&(HOOK_LADDER.to_string() + gate)).await;
    w.d.post("/residents", json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810"})).await;
    let p = w.broker.publisher().await;
    for i in 0..20 {
        p.publish(&format!("gatewarden/t/gate/ghost{i}/credential"), r#"{"kind":"pin","value":"246810"}"#).await;
    }
    eventually("every made-up gate refused", 10, async || {
        (w.d.metric("gatewarden_mqtt_rejected_total{reason=\"credential_unknown_gate\"}").await >= 20.0).then_some(())
    })
    .await;
    assert!(w.d.get("/log").await.as_array().unwrap().is_empty(), "nothing was decided at a gate that does not exist");
    assert!(!w.d.metrics().await.contains("ghost"), "no metric label from a made-up gate");
    p.publish("gatewarden/t/gate/north/credential", r#"{"kind":"pin","value":"246810"}"#).await;
    eventually("the real keypad opens", 10, async || {
        w.d.get("/log").await.as_array().unwrap().iter().any(|e| e["entry"]["gate"] == "north" && e["entry"]["opened"] == true).then_some(())
    })
    .await;
    enroll(&w.d, "E1", "c3a1f0000009").await;
    sos_reaches_staff(&w, "E1", "c3a1f0000009").await;
}

/// A console session's cookie goes with every request the browser makes,
/// whichever page asks. A write on a session from another origin is refused;
/// the console's own writes pass; no page can be framed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cross_origin_write_on_a_console_session_is_refused() {
    let w = world(HOOK_LADDER).await;
    let http = w.d.http_port;
    w.d.post("/users", json!({"name": "admin", "role": "admin", "password": "correct-horse-battery"})).await;
    let c = reqwest::Client::new();
    let r = c.post(format!("http://127.0.0.1:{http}/console/login")).json(&json!({"user": "admin", "password": "correct-horse-battery"})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let set = r.headers().get("set-cookie").unwrap().to_str().unwrap().to_string();
    assert!(!set.contains("Secure"), "plain-HTTP console: a Secure cookie would never come back: {set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let write = async |origin: Option<&str>, id: &str| {
        let mut req = c.post(format!("http://127.0.0.1:{http}/api/v1/elders")).header("cookie", &cookie).json(&json!({"id": id, "name": "老人", "bands": []}));
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().await.unwrap().status().as_u16()
    };
    assert_eq!(write(Some("http://evil.example"), "X1").await, 403, "another site's page");
    assert_eq!(write(None, "X2").await, 403, "no Origin at all");
    assert_eq!(write(Some(&format!("http://127.0.0.1:{http}")), "E1").await, 200, "the console itself");
    let ids: Vec<String> = w.d.get("/elders").await.as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, vec!["E1".to_string()]);
    // Reads need no Origin; the CLI's token needs none either.
    assert_eq!(c.get(format!("http://127.0.0.1:{http}/api/v1/elders")).header("cookie", &cookie).send().await.unwrap().status().as_u16(), 200);
    let page = c.get(format!("http://127.0.0.1:{http}/console/")).send().await.unwrap();
    let csp = page.headers().get("content-security-policy").unwrap().to_str().unwrap().to_string();
    assert!(csp.contains("frame-ancestors 'none'") && csp.contains("default-src 'self'"), "{csp}");
    assert_eq!(page.headers().get("x-frame-options").unwrap(), "DENY");
    enroll(&w.d, "E2", "c3a1f0000002").await;
    sos_reaches_staff(&w, "E2", "c3a1f0000002").await;
}

/// A guesser who spreads wrong PINs over the site's keypads stays under each
/// keypad's own limit. Counted across the site, the run is caught: PIN entry
/// stops at every gate, staff get one alert, and the right PIN is refused
/// until the lockout ends. Alerts still go out.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_pins_spread_over_the_keypads_are_caught_as_one_guessing_run() {
    let mut gates = String::from("[access]\ncooldown = \"1ms\"\npin_site_max_failures = 12\n");
    for g in ["north", "south", "east", "west"] {
        gates.push_str(&format!("[[gates]]\nname = \"{g}\"\nactuator = {{ kind = \"log\" }}\n"));
    }
    let w = world(&(HOOK_LADDER.to_string() + &gates)).await;
    w.d.post("/residents", json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810"})).await;
    let p = w.broker.publisher().await;
    // Three a keypad (each keypad's own limit is five), over MQTT like a real keypad.
    for i in 0..12 {
        let gate = ["north", "south", "east", "west"][i % 4];
        p.publish(&format!("gatewarden/t/gate/{gate}/credential"), format!(r#"{{"kind":"pin","value":"{:06}"}}"#, 100_000 + i)).await;
    }
    let alert = eventually("one guessing alert", 20, async || w.rx.accepted("/hook").into_iter().find(|r| r.text().contains("guessing"))).await;
    assert!(alert.text().contains("12 wrong PINs across 4 keypads"), "{}", alert.text());
    for gate in ["north", "west"] {
        let r = w.d.post(&format!("/gates/{gate}/credential"), json!({"kind": "pin", "value": "246810"})).await;
        assert_eq!(r["opened"], false, "{gate}: the right PIN waits out the lockout: {r}");
    }
    let log = w.d.get("/log").await;
    assert!(log.as_array().unwrap().iter().any(|e| e["entry"]["reason"].as_str().unwrap_or_default().contains("every gate")), "{log}");
    enroll(&w.d, "E1", "c3a1f0000009").await;
    sos_reaches_staff(&w, "E1", "c3a1f0000009").await;
}

/// A keypad at the north gate holds a device token, not the admin token. It
/// presents credentials at its own gate; at any other gate, and on every
/// other route, it is refused (and counted). A stolen keypad cannot enrol,
/// read the roster or open another gate.
#[tokio::test(flavor = "multi_thread")]
async fn a_device_token_presents_credentials_at_its_own_gate_only() {
    let keys = tempfile::tempdir().unwrap();
    let token = "north-keypad-0123456789abcdef";
    std::fs::write(keys.path().join("north.token"), token).unwrap();
    let gates = format!(
        "[access]\ncooldown = \"1ms\"\n[[gates]]\nname = \"north\"\nactuator = {{ kind = \"log\" }}\ndevice_token_file = \"{}\"\n[[gates]]\nname = \"south\"\nactuator = {{ kind = \"log\" }}\n",
        keys.path().join("north.token").display()
    );
    let w = world(&(HOOK_LADDER.to_string() + &gates)).await;
    w.d.post("/residents", json!({"id": "R1", "name": "张三", "unit": "3-401", "pin": "246810"})).await;
    let c = reqwest::Client::new();
    let url = |p: &str| format!("http://127.0.0.1:{}/api/v1{p}", w.d.http_port);
    let call = async |m: reqwest::Method, p: &str, body: Option<serde_json::Value>, tok: &str| {
        let mut r = c.request(m, url(p)).bearer_auth(tok);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
    };
    let pin = json!({"kind": "pin", "value": "246810"});
    let (code, v) = call(reqwest::Method::POST, "/gates/north/credential", Some(pin.clone()), token).await;
    assert_eq!((code, v["opened"].clone()), (200, json!(true)), "its own gate: {v}");
    let (code, v) = call(reqwest::Method::POST, "/gates/south/credential", Some(pin.clone()), token).await;
    assert_eq!(code, 403, "another gate: {v}");
    for (m, p, b) in [
        (reqwest::Method::GET, "/people", None),
        (reqwest::Method::POST, "/residents", Some(json!({"name": "入侵", "unit": "1-1", "pin": "111111"}))),
        (reqwest::Method::GET, "/log", None),
        (reqwest::Method::POST, "/backup", None),
    ] {
        let (code, v) = call(m.clone(), p, b, token).await;
        assert_eq!(code, 403, "{m} {p}: {v}");
    }
    let (code, _) = call(reqwest::Method::POST, "/gates/north/credential", Some(pin), "north-keypad-0123456789abcdeX").await;
    assert_eq!(code, 401, "a wrong token is not a device token");
    assert!(w.d.metric("gatewarden_mqtt_rejected_total{reason=\"device_token_scope\"}").await >= 5.0);
    assert_eq!(w.d.get("/people").await.as_array().unwrap().len(), 1, "nothing enrolled by the keypad");
    enroll(&w.d, "E1", "c3a1f0000009").await;
    sos_reaches_staff(&w, "E1", "c3a1f0000009").await;
}

/// Make a CA, and certificates it signs, with the openssl CLI: (ca, cert, key) paths.
fn tls_files(dir: &std::path::Path, ca: &str, name: &str, ext: &str) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let o = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl(1)");
        assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    if !dir.join(format!("{ca}.crt")).exists() {
        run(&[&["req", "-x509"][..], &ec, &["-keyout", &format!("{ca}.key"), "-out", &format!("{ca}.crt"), "-days", "2", "-subj", &format!("/CN={ca}")]]
            .concat());
    }
    run(&[&["req"][..], &ec, &["-keyout", &format!("{name}.key"), "-out", &format!("{name}.csr"), "-subj", &format!("/CN={name}")]].concat());
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{ca}.crt"),
        "-CAkey",
        &format!("{ca}.key"),
        "-CAcreateserial",
        "-out",
        &format!("{name}.crt"),
        "-days",
        "2",
        "-extfile",
        &format!("{name}.ext"),
    ]);
    (dir.join(format!("{ca}.crt")), dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// The daemon reaches a TLS-only broker listener (`mqtts://`, the shipped
/// mosquitto's LAN listener) with the site CA and a client certificate, and
/// alerts through it. A broker whose certificate another CA signed (a
/// man in the middle) is refused: the daemon never connects to it.
#[tokio::test(flavor = "multi_thread")]
async fn mqtts_with_the_site_ca_and_a_client_certificate_and_no_other_ca() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, srv, srv_key) = tls_files(pki.path(), "site-ca", "broker", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    let (_, cli, cli_key) = tls_files(pki.path(), "site-ca", "gatewarden", "extendedKeyUsage=clientAuth\n");
    let (evil_ca, _, _) = tls_files(pki.path(), "evil-ca", "evil", "subjectAltName=DNS:localhost\n");
    // mosquitto, started as root, drops to its own user: let it read its files.
    {
        use std::os::unix::fs::PermissionsExt;
        for e in std::fs::read_dir(pki.path()).unwrap() {
            std::fs::set_permissions(e.unwrap().path(), std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        std::fs::set_permissions(pki.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let tls = free_port();
    let broker = Mosquitto::start_with(&format!(
        "listener {tls} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        ca.display(),
        srv.display(),
        srv_key.display()
    ));
    let rx = Receiver::start().await;
    let mqtts = |ca: &std::path::Path| {
        format!(
            "[mqtt]\nbroker = \"mqtts://localhost:{tls}\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nreconnect_min = \"100ms\"\nreconnect_max = \"1s\"\n",
            ca.display(),
            cli.display(),
            cli_key.display()
        )
    };
    let with_tls = |dir: &std::path::Path, http: u16, ca: &std::path::Path| {
        let base = config(dir, broker.port, http, &HOOK_LADDER.replace("{R}", &rx.url("")));
        // Replace the plain [mqtt] section with the TLS one.
        let start = base.find("[mqtt]").unwrap();
        let end = start + base[start..].find("[presence]").unwrap();
        format!("{}{}{}", &base[..start], mqtts(ca), &base[end..])
    };
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let d = Daemon::start(dir.path(), &with_tls(dir.path(), http, &ca), http).await;
    eventually("connected over TLS", 15, async || (d.health().await["mqtt_connected"] == true).then_some(())).await;
    enroll(&d, "E1", "c3a1f0000009").await;
    broker.publisher().await.publish("gatewarden/t/sighting", r#"{"band":"c3a1f0000009","gateway":"b3","sos":true}"#).await;
    eventually("the SOS through the TLS listener", 15, async || rx.accepted("/hook").iter().any(|r| r.text().contains("SOS")).then_some(())).await;

    // The same daemon configuration trusting another CA: never connected.
    let dir2 = tempfile::tempdir().unwrap();
    let http2 = free_port();
    let d2 = Daemon::start_unconnected(dir2.path(), &with_tls(dir2.path(), http2, &evil_ca), http2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(d2.health().await["mqtt_connected"], false, "connected to a broker it cannot verify");
    assert!(d2.log().to_lowercase().contains("certificate") || d2.log().contains("UnknownIssuer"), "the log says why:\n{}", d2.log());
}

/// Behind the TLS proxy the README recommends (`http.public_url` is https),
/// the session cookie is `Secure`: a browser never sends it over plain HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_cookie_is_secure_behind_https() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let text = config(dir.path(), broker.port, http, "").replace("[http]\n", "[http]\npublic_url = \"https://gate.example\"\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    d.post("/users", json!({"name": "admin", "role": "admin", "password": "correct-horse-battery"})).await;
    let r = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/console/login"))
        .json(&json!({"user": "admin", "password": "correct-horse-battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let set = r.headers().get("set-cookie").unwrap().to_str().unwrap();
    assert!(set.contains("; Secure") && set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
}

#[tokio::test(flavor = "multi_thread")]
async fn robot_keys_in_channel_urls_never_reach_the_log_or_the_outbox() {
    // Two robots whose URLs carry their secrets, both down (a closed port);
    // beside them the real webhook that must still get the SOS.
    let closed = free_port();
    let extra = format!(
        r#"
[alert.outbox]
retry_initial = "200ms"
retry_max = "1s"
[[alert.channels]]
name = "hook"
kind = "webhook"
url = "{{R}}/hook"
[[alert.channels]]
name = "wecom-down"
kind = "wecom"
url = "http://127.0.0.1:{closed}/cgi-bin/webhook/send?key=693a91f6-wecom-SECRET-4bc4"
[[alert.channels]]
name = "ding-down"
kind = "dingtalk"
url = "http://127.0.0.1:{closed}/robot/send?access_token=ding-SECRET-token-123456"
secret = "SECding-signing-SECRET-9876"
[[alert.ladder]]
name = "网格员"
channels = ["hook", "wecom-down", "ding-down"]
"#
    );
    let w = world(&extra).await;
    enroll(&w.d, "E1", "c3a1f0001101").await;
    sos_reaches_staff(&w, "E1", "c3a1f0001101").await;
    let errors = eventually("both robots failing, with their errors recorded", 15, async || {
        let o = w.d.get("/outbox").await;
        let errs: Vec<String> =
            o.as_array().unwrap().iter().filter(|n| n["channel"] != "hook").filter_map(|n| n["last_error"].as_str().map(str::to_string)).collect();
        (errs.len() >= 2).then_some(errs)
    })
    .await;
    let log = w.d.log();
    assert!(errors.iter().all(|e| e.starts_with("network") && e.contains("Connection refused")), "the failures are reported with their cause: {errors:?}");
    for secret in ["693a91f6-wecom-SECRET-4bc4", "ding-SECRET-token-123456", "SECding-signing-SECRET-9876"] {
        assert!(!log.contains(secret), "{secret} in the log");
        assert!(errors.iter().all(|e| !e.contains(secret)), "{secret} in last_error: {errors:?}");
        // Percent-encoded, as a signed URL carries it.
        let enc = secret.replace('-', "%2D");
        assert!(!log.contains(&enc) && errors.iter().all(|e| !e.contains(&enc)));
    }
    assert!(!w.d.metrics().await.contains("SECRET"), "no secret in the metrics");
}
