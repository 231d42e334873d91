//! Real components for integration tests: a mosquitto broker on a free port,
//! an HTTP server that receives webhooks and answers as told, and the
//! gatewarden binary itself, started, stopped and killed like in production.
#![allow(dead_code)]

pub mod webdriver;

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::Value;
use std::collections::VecDeque;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Absence alerts (48h, reminders 6h, escalation 12h) to one webhook channel
/// "hook" at the receiver `{R}`.
pub const HOOK_LADDER: &str = r#"
[alert.absence]
after = "48h"
repeat_every = "6h"
escalate_after = "12h"
[[alert.channels]]
name = "hook"
kind = "webhook"
url = "{R}/hook"
[[alert.ladder]]
name = "网格员"
channels = ["hook"]
"#;

/// The face models (vision on, no camera: enrolment photos only) and a
/// credentials-only gate "north" with a log actuator.
pub fn vision_and_north_gate() -> String {
    let models = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models");
    format!("[vision]\nenabled = true\nmodels_dir = \"{}\"\n[[gates]]\nname = \"north\"\nactuator = {{ kind = \"log\" }}\n", models.display())
}

/// A broker, a webhook receiver and a daemon configured with `extra`, where
/// `{R}` stands for the receiver's base URL.
pub struct World {
    pub _dir: tempfile::TempDir,
    pub broker: Mosquitto,
    pub rx: Receiver,
    pub d: Daemon,
}

pub async fn world(extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let text = config(dir.path(), broker.port, http, &extra.replace("{R}", &rx.url("")));
    let d = Daemon::start(dir.path(), &text, http).await;
    World { _dir: dir, broker, rx, d }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn shared_testdata(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("../shared/testdata").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (a user's own clone without ../shared)", p.display());
        None
    }
}

/// Poll `f` until it returns Some, or panic after `secs`.
pub async fn eventually<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------- mosquitto ----------------

pub struct Mosquitto {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
    /// More mosquitto.conf lines (a TLS listener).
    extra: String,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        Self::start_with("")
    }

    /// A broker with more configuration (e.g. a TLS listener); the plain
    /// loopback listener on `port` stays, for the tests' own publishers.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Self::spawn(&dir, port, extra);
        Mosquitto { port, child, dir, extra: extra.to_string() }
    }

    /// Kill the broker (as a crash would) and start a new one on the same port.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(500));
        self.child = Self::spawn(&self.dir, self.port, &self.extra);
    }

    fn spawn(dir: &tempfile::TempDir, port: u16, extra: &str) -> Child {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("mosquitto is not installed: run `bash deploy/gw.sh test`, which installs it");
        let conf = dir.path().join("m.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\n{extra}"),
        )
        .unwrap();
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(self.port).await
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (topic, payload) pairs in arrival order.
pub type Messages = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Collects every message on a topic filter.
pub struct Subscriber {
    pub got: Messages,
}

impl Subscriber {
    pub async fn start(port: u16, filter: &str) -> Subscriber {
        let mut o = MqttOptions::new(format!("test-sub-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut ev) = AsyncClient::new(o, 100);
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut tx = Some(tx);
        tokio::spawn(async move {
            let _keep = client;
            loop {
                match ev.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                        if let Some(t) = tx.take() {
                            let _ = t.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => g.lock().unwrap().push((p.topic.clone(), p.payload.to_vec())),
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), rx).await;
        Subscriber { got }
    }

    pub fn messages(&self) -> Vec<(String, String)> {
        self.got.lock().unwrap().iter().map(|(t, p)| (t.clone(), String::from_utf8_lossy(p).to_string())).collect()
    }
}

pub struct Publisher {
    client: AsyncClient,
}

impl Publisher {
    pub async fn connect(port: u16) -> Publisher {
        let mut o = MqttOptions::new(format!("test-pub-{}", free_port()), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut ev) = AsyncClient::new(o, 1000);
        tokio::spawn(async move {
            loop {
                if ev.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Publisher { client }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).await.unwrap();
    }

    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.into()).await.unwrap();
    }
}

// ---------------- webhook receiver ----------------

#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status we answered with.
    pub answered: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// The human-readable text, whatever the channel kind.
    pub fn text(&self) -> String {
        let v = self.json();
        for p in ["/text/content", "/alerts/0/annotations/summary", "/content/text", "/message"] {
            if let Some(s) = v.pointer(p).and_then(|x| x.as_str()) {
                let mut s = s.to_string();
                if p == "/alerts/0/annotations/summary" {
                    s.push('\n');
                    s.push_str(v.pointer("/alerts/0/annotations/description").and_then(|x| x.as_str()).unwrap_or(""));
                }
                return s;
            }
        }
        String::from_utf8_lossy(&self.body).to_string()
    }
}

#[derive(Default)]
struct ReceiverState {
    log: Vec<Received>,
    script: VecDeque<(u16, String)>,
    default: Option<(u16, String)>,
}

/// A real HTTP server on a free port. Answers from a script, then a default
/// (200 `{"errcode":0,"code":0}` unless changed).
#[derive(Clone)]
pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<ReceiverState>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let st = state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let st = st.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default().to_vec();
                let mut s = st.lock().unwrap();
                let (code, answer) = s.script.pop_front().or_else(|| s.default.clone()).unwrap_or((200, r#"{"errcode":0,"errmsg":"ok","code":0}"#.to_string()));
                s.log.push(Received {
                    path: parts.uri.path().to_string(),
                    query: parts.uri.query().unwrap_or("").to_string(),
                    headers: parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string())).collect(),
                    body,
                    answered: code,
                });
                (axum::http::StatusCode::from_u16(code).unwrap(), answer)
            }
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { port, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
    pub fn script(&self, answers: &[(u16, &str)]) {
        self.state.lock().unwrap().script.extend(answers.iter().map(|(c, b)| (*c, b.to_string())));
    }
    pub fn set_default(&self, code: u16, body: &str) {
        self.state.lock().unwrap().default = Some((code, body.to_string()));
    }
    pub fn all(&self) -> Vec<Received> {
        self.state.lock().unwrap().log.clone()
    }
    /// Requests we answered with success (2xx and no error code).
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.all().into_iter().filter(|r| r.path == path && r.answered == 200).collect()
    }
}

// ---------------- the daemon ----------------

pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub http_port: u16,
    child: Option<Child>,
    token: Option<String>,
    http: reqwest::Client,
    /// Where the next start's test clock begins (`restart_at`).
    clock_at: Option<String>,
    /// Whether a start waits for the MQTT session (not for a broker it must refuse).
    wait_for_mqtt: bool,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gatewarden")
}

/// The repository root (models/, deploy/, config/ and ../shared are relative to it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).canonicalize().expect("repository root")
}

/// The vision child, built by the workspace's `gatewarden-vision` package next
/// to the daemon (`cargo test` at the root builds every member).
pub fn vision_bin() -> &'static str {
    static P: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let p = std::path::Path::new(bin()).with_file_name("gatewarden-vision");
        assert!(p.exists(), "{} is missing: run the tests from the workspace root (`cargo test`), which builds it", p.display());
        p.display().to_string()
    })
}

/// A config for tests: real broker, test clock, fast ticks, no start-up grace.
/// `extra` is appended (channels, ladder, overrides).
pub fn config(dir: &std::path::Path, mqtt_port: u16, http_port: u16, extra: &str) -> String {
    format!(
        r#"site = "t"
[store]
path = "{db}"
flush_every = "100ms"
[http]
listen = "127.0.0.1:{http_port}"
[log]
level = "info"
[mqtt]
broker = "mqtt://127.0.0.1:{mqtt_port}"
client_id = "gatewarden-test-{http_port}"
reconnect_min = "100ms"
reconnect_max = "1s"
[presence]
startup_grace = "1s"
tick_interval = "1s"
gateway_silent_after = "1000d"
[debug]
manual_clock = true
{extra}
"#,
        db = dir.join("db").display()
    )
}

impl Daemon {
    /// Write the config and start the binary; waits for /healthz.
    pub async fn start(dir: &std::path::Path, config_text: &str, http_port: u16) -> Daemon {
        let config = dir.join("gatewarden.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut d =
            Daemon { dir: dir.to_owned(), config, http_port, child: None, token: None, http: reqwest::Client::new(), clock_at: None, wait_for_mqtt: true };
        d.restart().await;
        d
    }

    /// Start without waiting for the MQTT session (a broker it must refuse).
    pub async fn start_unconnected(dir: &std::path::Path, config_text: &str, http_port: u16) -> Daemon {
        let config = dir.join("gatewarden.toml");
        std::fs::write(&config, config_text).unwrap();
        let mut d =
            Daemon { dir: dir.to_owned(), config, http_port, child: None, token: None, http: reqwest::Client::new(), clock_at: None, wait_for_mqtt: false };
        d.restart().await;
        d
    }

    /// Restart with the test clock at `now` (RFC 3339), as a real box keeps
    /// its wall clock across a restart; a plain restart's clock begins at the
    /// real time, which to the daemon looks like a clock stepped back.
    pub async fn restart_at(&mut self, now: &str) {
        self.clock_at = Some(now.to_string());
        self.restart().await;
    }

    pub async fn restart(&mut self) {
        if let Err(log) = self.try_restart().await {
            panic!("daemon did not start; log:\n{log}");
        }
    }

    /// Start the binary; Err(log) if it exits before it is healthy and connected.
    pub async fn try_restart(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("daemon.log")).unwrap();
        let mut cmd = Command::new(bin());
        if let Some(at) = self.clock_at.take() {
            cmd.env("GATEWARDEN_TEST_CLOCK_AT", at);
        }
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env_remove("RUST_LOG")
            .env_remove("GATEWARDEN_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let url = format!("http://127.0.0.1:{}/healthz", self.http_port);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("daemon exited with {st}; log:\n{}", self.log()));
            }
            assert!(Instant::now() < deadline, "daemon did not become healthy; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.token = Some(std::fs::read_to_string(self.dir.join("admin.token")).unwrap().trim().to_string());
        // Wait until the MQTT session is up so nothing published next is missed.
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.wait_for_mqtt && !self.health().await["mqtt_connected"].as_bool().unwrap_or(false) {
            assert!(Instant::now() < deadline, "daemon did not connect to MQTT; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// kill -9: no shutdown code runs.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// Wait up to `secs` for the process to exit by itself.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.as_mut().expect("running").try_wait().unwrap() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // The shell builtin: a minimal Debian may lack /bin/kill.
        Command::new("sh").args(["-c", &format!("kill -TERM {}", c.id())]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn health(&self) -> Value {
        let url = format!("http://127.0.0.1:{}/healthz", self.http_port);
        match self.http.get(&url).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    pub async fn metrics(&self) -> String {
        self.http.get(format!("http://127.0.0.1:{}/metrics", self.http_port)).send().await.unwrap().text().await.unwrap()
    }

    /// A metric's value (0 if absent), e.g. `gatewarden_mqtt_rejected_total{reason="malformed"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        self.metrics().await.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
    }

    /// Call the admin API; returns (status, body).
    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("http://127.0.0.1:{}/api/v1{path}", self.http_port)).bearer_auth(self.token.as_deref().unwrap_or(""));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    /// POST raw bytes to the admin API (file uploads); returns (status, body).
    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://127.0.0.1:{}/api/v1{path}", self.http_port))
            .bearer_auth(self.token.as_deref().unwrap_or(""))
            .body(body)
            .send()
            .await
            .unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (code, v) = self.api(reqwest::Method::POST, path, Some(body)).await;
        assert!((200..300).contains(&code), "POST {path} → {code} {v}");
        v
    }

    pub async fn get(&self, path: &str) -> Value {
        let (code, v) = self.api(reqwest::Method::GET, path, None).await;
        assert_eq!(code, 200, "GET {path} → {v}");
        v
    }

    /// Move the daemon's test clock forward (runs a tick). Returns the new now.
    pub async fn advance(&self, by: &str) -> String {
        self.post("/debug/clock", serde_json::json!({ "advance": by })).await["now"].as_str().unwrap().to_string()
    }

    pub async fn set_clock(&self, to: &str) {
        self.post("/debug/clock", serde_json::json!({ "set": to })).await;
    }

    /// The CLI, pointed at this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin()).args(args).arg("--config").arg(&self.config).env_remove("GATEWARDEN_ADMIN_TOKEN").output().unwrap()
    }

    pub async fn last_seen(&self, elder: &str) -> Value {
        self.get(&format!("/elders/{elder}")).await["last_seen"].clone()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What an Alertmanager webhook receiver reads: Prometheus Alertmanager's
/// `notify/webhook.Message` (version 4), every field required and typed as
/// the Go receiver expects. A body that deserializes into this is accepted.
#[allow(dead_code)]
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerV4 {
    pub version: String,
    pub group_key: String,
    pub truncated_alerts: u64,
    pub status: String,
    pub receiver: String,
    pub group_labels: std::collections::BTreeMap<String, String>,
    pub common_labels: std::collections::BTreeMap<String, String>,
    pub common_annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "externalURL")]
    pub external_url: String,
    pub alerts: Vec<AlertmanagerAlert>,
}

#[allow(dead_code)]
#[derive(serde::Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AlertmanagerAlert {
    pub status: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    pub starts_at: chrono::DateTime<chrono::Utc>,
    pub ends_at: chrono::DateTime<chrono::Utc>,
    #[serde(rename = "generatorURL")]
    pub generator_url: String,
    pub fingerprint: String,
}

impl AlertmanagerV4 {
    /// Accept `body` as an Alertmanager receiver would, or say why not.
    #[allow(dead_code)]
    pub fn accept(body: &[u8]) -> AlertmanagerV4 {
        let m: AlertmanagerV4 =
            serde_json::from_slice(body).unwrap_or_else(|e| panic!("not an Alertmanager v4 payload: {e}\n{}", String::from_utf8_lossy(body)));
        assert_eq!(m.version, "4");
        assert!(matches!(m.status.as_str(), "firing" | "resolved"), "{}", m.status);
        assert!(!m.alerts.is_empty() && m.alerts.iter().all(|a| a.fingerprint.len() == 16 && a.labels.contains_key("alertname")));
        m
    }
}
