//! The web console in a real browser (headless Debian Chromium through
//! chromedriver) against the real daemon with the real face models: log in,
//! see presence colours, get face-quality feedback on upload, enrol a resident
//! with a real photo, register a visitor and get the QR pass, acknowledge an
//! alert, filter the entry log. Plus roles, login rate limiting, and the audit
//! log of every write.

mod common;
use common::webdriver::Browser;
use common::*;
use serde_json::json;
use std::path::Path;

const EXTRA: &str = r#"
[console]
login_max_failures = 3
[presence.gateway_names]
gw-east = "东区3栋大堂"
"#;

struct World {
    dir: tempfile::TempDir,
    broker: Mosquitto,
    _rx: Receiver,
    d: Daemon,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let extra = format!("{HOOK_LADDER}{EXTRA}{}", vision_and_north_gate()).replace("{R}", &rx.url(""));
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &extra), http).await;
    World { dir, broker, _rx: rx, d }
}

fn add_user(d: &Daemon, name: &str, role: &str, password: &str) {
    let o = std::process::Command::new(bin())
        .args(["user", "add", name, "--role", role, "--config"])
        .arg(&d.config)
        .env("GATEWARDEN_PASSWORD", password)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

async fn login(b: &Browser, d: &Daemon, user: &str, password: &str) {
    b.goto(&format!("http://127.0.0.1:{}/console/", d.http_port)).await;
    b.type_into("#login input[name=user]", user).await;
    b.type_into("#login input[name=password]", password).await;
    b.click("#login button[type=submit]").await;
    b.wait_text("#who", user).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_administrator_enrols_registers_acknowledges_and_reads_the_log_in_a_real_browser() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let faces = faces.canonicalize().unwrap();
    let Some(browser) = Browser::start().await else {
        eprintln!("SKIPPED: needs chromium and chromium-driver (deploy/gw.sh test installs them)");
        return;
    };
    let w = world().await;
    let d = &w.d;
    add_user(d, "admin1", "admin", "correct-horse-42");
    d.post("/elders", json!({"id": "E1", "name": "张桂兰", "building": "3栋", "room": "401", "bands": ["c3a1f0001101"]})).await;
    d.post("/elders", json!({"id": "E2", "name": "李秀英", "bands": ["c3a1f0001102"]})).await;
    d.advance("30h").await;
    d.post("/checkins", json!({"elder": "E2", "by": "李网格"})).await;
    d.advance("19h").await; // E1: 49h unseen → alert; E2: 19h
    let alert = eventually("E1's alert", 10, async || d.get("/alerts").await.as_array().unwrap().first().cloned()).await;

    login(&browser, d, "admin1", "correct-horse-42").await;
    // Presence: E1 red (absent), E2 fresh.
    browser.find("tr[data-elder=E1]").await;
    let classes = browser.script("return [...document.querySelectorAll('tr[data-elder]')].map(r => r.dataset.elder + ':' + r.className)").await;
    assert_eq!(classes, json!(["E1:absent", "E2:fresh"]), "longest unseen first, coloured");

    // Residents: immediate feedback on a two-face photo, then a good one, then enrol.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/residents", d.http_port)).await;
    browser.type_into("input[name=photo]", faces.join("couple.jpg").to_str().unwrap()).await;
    let verdict = browser.wait_text("#photo-verdict", "face").await;
    assert!(verdict.contains("2 faces") || verdict.contains("faces"), "{verdict}");
    browser.script("document.querySelector('input[name=photo]').value = ''").await;
    browser.type_into("input[name=photo]", faces.join("img1.jpg").to_str().unwrap()).await;
    browser.wait_text("#photo-verdict", "照片可用").await;
    browser.type_into("input[name=name]", "王建国").await;
    browser.type_into("input[name=id]", "R1").await;
    browser.type_into("input[name=unit]", "3-401").await;
    browser.type_into("input[name=pin]", "246810").await;
    browser.type_into("input[name=consent_by]", "王建国").await;
    browser.type_into("input[name=consent_how]", "纸质同意书").await;
    browser.click("#page form.card button[type=submit]").await;
    browser.wait_text("tr[data-person=R1]", "王建国").await;
    let people = d.get("/people").await;
    let r1 = people.as_array().unwrap().iter().find(|p| p["id"] == "R1").unwrap().clone();
    assert_eq!((r1["faces"].as_u64(), r1["pin"].as_bool()), (Some(1), Some(true)), "{r1}");
    assert_eq!(r1["consent"]["how"], "纸质同意书");

    // Visitors: register, then the QR pass and PIN are shown.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/visitors", d.http_port)).await;
    browser.type_into("input[name=name]", "赵访客").await;
    browser.type_into("input[name=id_number]", "11010519491231002X").await;
    browser.type_into("input[name=host_unit]", "3-401").await;
    browser.click("#page form.card button[type=submit]").await;
    browser.find("img.qr").await;
    let pin = browser.text("#visitor-pin").await;
    assert!(pin.len() >= 4 && pin.chars().all(|c| c.is_ascii_digit()), "{pin:?}");
    let qr_ok = browser.script("const i = document.querySelector('img.qr'); return i.complete && i.naturalWidth > 0").await;
    assert_eq!(qr_ok, json!(true), "the QR image rendered");
    // The PIN shown on the pass opens the gate.
    let opened = d.post("/gates/north/credential", json!({"kind": "pin", "value": pin})).await;
    assert_eq!(opened["opened"], true, "{opened}");

    // Roster import in the console: a dry run with one bad row shows progress
    // and the row's reason, and imports nothing.
    let csv = w.dir.path().join("roster.csv");
    std::fs::write(&csv, "kind,id,name,unit,plate,owner\nelder,E7,王奶奶,3-401,,\nvehicle,,,,川A1234,R1\n").unwrap();
    browser.goto(&format!("http://127.0.0.1:{}/console/#/roster", d.http_port)).await;
    browser.type_into("input[name=roster]", csv.to_str().unwrap()).await;
    browser.click("#page form.card button[type=submit]").await;
    browser.wait_text("#import-status", "1 行有问题").await;
    let bad_row = browser.text("tr[data-line='3']").await;
    assert!(bad_row.contains("invalid plate"), "{bad_row}");
    let progress = browser.script("const p = document.querySelector('#import-progress'); return [p.value, p.max]").await;
    assert_eq!(progress, json!([2, 2]));
    assert_eq!(d.api(reqwest::Method::GET, "/elders/E7", None).await.0, 404, "a dry run imports nothing");

    // An unknown wristband heard by a gateway: bound to E2 in one click.
    let p = w.broker.publisher().await;
    p.publish("home/gw-east/BTtoMQTT/C3A1F0007777", r#"{"id":"C3:A1:F0:00:77:77","rssi":-70}"#).await;
    eventually("the unknown band is listed", 10, async || (!d.get("/wristbands/unknown").await.as_array().unwrap().is_empty()).then_some(())).await;
    browser.goto(&format!("http://127.0.0.1:{}/console/#/elders", d.http_port)).await;
    browser.find("tr[data-band] select").await;
    browser.script("const s = document.querySelector('tr[data-band] select'); s.value = 'E2';").await;
    browser.click("tr[data-band] button").await;
    eventually("E2 wears the new band", 10, async || (d.get("/elders/E2").await["elder"]["bands"].as_array().unwrap().len() == 2).then_some(())).await;

    // Staff and the escalation ladder: add a staff member, then a ladder for a grid.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/staff", d.http_port)).await;
    browser.type_into("#page form input[name=id]", "S1").await;
    browser.type_into("#page form input[name=name]", "李网格").await;
    browser.click("#page form.card button[type=submit]").await;
    browser.wait_text("table", "李网格").await;
    browser.type_into("#page form:nth-of-type(2) input[name=grid]", "g1").await;
    browser.type_into("#page form:nth-of-type(2) textarea[name=levels]", "网格员:hook:S1").await;
    browser.click("#page form:nth-of-type(2) button[type=submit]").await;
    browser.wait_text("tr[data-grid=g1]", "网格员").await;
    let ladders = d.get("/ladders").await;
    assert_eq!(ladders["grids"][0]["levels"][0]["staff"], json!(["S1"]), "{ladders}");

    // Alerts: acknowledge in the browser; the daemon records who.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/alerts", d.http_port)).await;
    browser.click(&format!("tr[data-alert='{}'] button", alert["id"])).await;
    browser.wait_text(&format!("tr[data-alert='{}']", alert["id"]), "admin1").await;
    let a = d.get("/alerts").await[0].clone();
    assert_eq!((a["state"].as_str(), a["acked_by"].as_str()), (Some("acknowledged"), Some("admin1")), "{a}");

    // The gateway inventory names the gateway as staff know it.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/gateways", d.http_port)).await;
    browser.wait_text("tr[data-gateway=gw-east]", "东区3栋大堂").await;

    // The entry log, filtered to the north gate, shows the visitor's passage.
    browser.goto(&format!("http://127.0.0.1:{}/console/#/log?gate=north", d.http_port)).await;
    browser.wait_text("table", "放行").await;

    // Every write above is in the audit log under the console user's name.
    let audit = d.get("/audit").await;
    let by_admin1: Vec<String> =
        audit.as_array().unwrap().iter().filter(|e| e["actor"] == "admin1").map(|e| e["action"].as_str().unwrap().to_string()).collect();
    for want in ["POST /residents", "POST /visitors", "POST /alerts/…/ack"] {
        assert!(by_admin1.iter().any(|a| a == want), "{want} missing from {by_admin1:?}");
    }
    if let Ok(p) = std::env::var("GW_CONSOLE_SCREENSHOT") {
        browser.goto(&format!("http://127.0.0.1:{}/console/#/presence", d.http_port)).await;
        browser.find("tr[data-elder=E1]").await;
        browser.screenshot(Path::new(&p)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn staff_cannot_enrol_and_repeated_wrong_passwords_are_locked_out() {
    let w = world().await;
    let d = &w.d;
    add_user(d, "grid1", "staff", "staff-password-1");
    let url = |p: &str| format!("http://127.0.0.1:{}{p}", d.http_port);
    let r = reqwest::Client::new().post(url("/console/login")).json(&json!({"user": "grid1", "password": "staff-password-1"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(reqwest::header::COOKIE, cookie.parse().unwrap());
    let c = reqwest::Client::builder().default_headers(h).build().unwrap();
    // Staff read presence and may check in, but cannot enrol.
    assert_eq!(c.get(url("/api/v1/presence")).send().await.unwrap().status(), 200);
    let r = c.post(url("/api/v1/residents")).json(&json!({"name": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(c.get(url("/api/v1/audit")).send().await.unwrap().status(), 403);
    // No session, no API.
    assert_eq!(reqwest::get(url("/api/v1/presence")).await.unwrap().status(), 401);
    // Three wrong passwords lock the account for the window, even for the right one.
    let anon = reqwest::Client::new();
    for _ in 0..3 {
        let r = anon.post(url("/console/login")).json(&json!({"user": "grid1", "password": "wrong"})).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = anon.post(url("/console/login")).json(&json!({"user": "grid1", "password": "staff-password-1"})).send().await.unwrap();
    assert_eq!(r.status(), 429, "{}", r.text().await.unwrap());
    // After the window (moved on the test clock) the right password works again.
    d.advance("16m").await;
    let r = anon.post(url("/console/login")).json(&json!({"user": "grid1", "password": "staff-password-1"})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The stored password is an argon2id hash, never the password.
    let users = d.get("/users").await;
    assert!(!users.to_string().contains("staff-password-1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_admin_write_leaves_an_audit_entry_and_reads_leave_none() {
    use reqwest::Method;
    let w = world().await;
    let d = &w.d;
    let writes: Vec<(Method, String, Option<serde_json::Value>)> = vec![
        (Method::POST, "/elders".into(), Some(json!({"id": "E1", "name": "张桂兰", "bands": ["c3a1f0001101"]}))),
        (Method::PATCH, "/elders/E1".into(), Some(json!({"room": "402"}))),
        (Method::POST, "/staff".into(), Some(json!({"id": "S1", "name": "李网格"}))),
        (Method::PUT, "/ladders/g1".into(), Some(json!([{"name": "网格员", "channels": ["hook"], "staff": ["S1"]}]))),
        (Method::POST, "/checkins".into(), Some(json!({"elder": "E1", "by": "李网格"}))),
        (Method::POST, "/residents".into(), Some(json!({"id": "R1", "name": "王建国", "pin": "246810"}))),
        (Method::POST, "/visitors".into(), Some(json!({"name": "赵访客", "id_number": "11010519491231002X", "host_unit": "3-401", "valid_for": "4h"}))),
        (Method::POST, "/vehicles".into(), Some(json!({"plate": "川A12345", "owner": "R1"}))),
        (Method::DELETE, "/vehicles/川A12345".into(), None),
        (Method::DELETE, "/ladders/g1".into(), None),
        (Method::DELETE, "/staff/S1".into(), None),
        (Method::POST, "/users".into(), Some(json!({"name": "temp", "role": "staff", "password": "temporary-pass"}))),
        (Method::DELETE, "/users/temp".into(), None),
        (Method::POST, "/keys/rotate".into(), None),
        (Method::POST, "/channels/hook/test".into(), None),
        (Method::DELETE, "/people/R1".into(), None),
    ];
    let reads = ["/elders", "/presence", "/people", "/alerts", "/log", "/compliance", "/users"];
    for r in reads {
        d.get(r).await;
    }
    for (m, path, body) in &writes {
        let (code, v) = d.api(m.clone(), path, body.clone()).await;
        assert!((200..300).contains(&code), "{m} {path} → {code} {v}");
    }
    // A leave, taken and removed (its id comes from the answer).
    let leave = d.post("/leaves", json!({"elder": "E1", "until": "2099-01-01"})).await;
    let (code, _) = d.api(Method::DELETE, &format!("/leaves/{}", leave["id"]), None).await;
    assert_eq!(code, 200);
    // And a refused write is recorded too, with its status.
    let (code, _) = d.api(Method::POST, "/elders", Some(json!({"id": "E1", "name": "dup"}))).await;
    assert_eq!(code, 409);
    let (code, _) = d.api(Method::DELETE, "/elders/E1", None).await;
    assert_eq!(code, 200);

    let audit = d.get("/audit?limit=1000").await;
    let entries = audit.as_array().unwrap();
    assert_eq!(entries.len(), writes.len() + 4, "one entry per write, none per read: {audit:#}");
    for (m, path, _) in &writes {
        let parts: Vec<&str> = path.split('/').collect();
        let route = match parts.len() {
            3 if parts[2] == "rotate" => path.clone(),
            3 => format!("/{}/…", parts[1]),
            4 => format!("/{}/…/{}", parts[1], parts[3]),
            _ => path.clone(),
        };
        let action = format!("{m} {route}");
        assert!(entries.iter().any(|e| e["action"] == action.as_str() && e["actor"] == "admin-token" && e["status"] == 200), "no audit entry for {action}");
    }
    assert!(entries.iter().any(|e| e["action"] == "POST /elders" && e["status"] == 409), "refused writes are audited");
    assert!(entries.iter().all(|e| e["at"].is_string() && e["role"] == "admin"));
    // The CLI shows it.
    let o = d.cli(&["audit", "--limit", "5"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("DELETE /elders/…"));
}
