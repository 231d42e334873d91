//! `gatewarden-soak`: the whole box under faults for a sustained run (not a
//! CI test). A real mosquitto (persistent), the release daemon, 2,000
//! wristband sightings/s, an SOS every couple of seconds (each from another
//! elder), PINs presented at a gate, a webhook receiver that fails a third of
//! its requests, kill -9 of the daemon at random intervals and broker
//! restarts; then a quiet phase for memory. Reports lost and duplicated SOS
//! episodes, lost entry-log records, the maximum alert delay and RSS.
//!
//! `bash deploy/gw.sh soak` (or `gatewarden-soak --minutes 10`).

use axum::{extract::State, http::StatusCode, routing::post, Router};
use rand::Rng;
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "soak-admin-token-0123456789";
const PIN: &str = "135790";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn mac(i: usize) -> String {
    format!("C3A1{:02X}{:02X}{:02X}01", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Broker {
    conf: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(dir: &Path, port: u16) -> Broker {
        let conf = dir.join("mosquitto.conf");
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        // Started as root, mosquitto drops to its own user: without write
        // access its persistence fails silently and sessions die with it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 5\nmax_queued_messages 0\nmax_inflight_messages 0\n",
                data.display()
            ),
        )
        .unwrap();
        let mut b = Broker { conf, child: None };
        b.spawn();
        b
    }

    fn spawn(&mut self) {
        self.child = Some(Command::new("mosquitto").arg("-c").arg(&self.conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("mosquitto"));
        std::thread::sleep(Duration::from_millis(300));
    }

    /// A clean broker restart (SIGTERM: it saves its persistent sessions).
    fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
        std::thread::sleep(Duration::from_millis(500));
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Daemon {
    exe: PathBuf,
    config: PathBuf,
    dir: PathBuf,
    http: u16,
    child: Option<Child>,
    lives: usize,
    started: Instant,
}

impl Daemon {
    async fn start(&mut self, client: &reqwest::Client) {
        let log = std::fs::File::create(self.dir.join(format!("daemon-{}.log", self.lives))).unwrap();
        self.lives += 1;
        self.child = Some(Command::new(&self.exe).args(["run", "--config"]).arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().expect("gatewarden"));
        self.started = Instant::now();
        for _ in 0..300 {
            if client.get(format!("http://127.0.0.1:{}/healthz", self.http)).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the daemon did not come up; see {}", self.dir.display());
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The webhook receiver: fails every third request with a 500; remembers when
/// each SOS elder (`EL0000X` in the text) first got through.
#[derive(Default)]
struct Rx {
    n: AtomicU64,
    failed: AtomicU64,
    first: Mutex<HashMap<usize, Instant>>,
    /// Accepted deliveries by Idempotency-Key (one per notification).
    deliveries: Mutex<HashMap<String, usize>>,
}

async fn hook(State(rx): State<Arc<Rx>>, headers: axum::http::HeaderMap, body: String) -> StatusCode {
    if rx.n.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
        rx.failed.fetch_add(1, Ordering::SeqCst);
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let now = Instant::now();
    let mut seen = std::collections::HashSet::new();
    let b = body.as_bytes();
    for i in 0..b.len().saturating_sub(7) {
        if &b[i..i + 2] == b"EL" && b[i + 6] == b'X' && b[i + 2..i + 6].iter().all(u8::is_ascii_digit) {
            seen.insert(std::str::from_utf8(&b[i + 2..i + 6]).unwrap().parse::<usize>().unwrap());
        }
    }
    for e in seen {
        rx.first.lock().unwrap().entry(e).or_insert(now);
    }
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    *rx.deliveries.lock().unwrap().entry(key).or_insert(0) += 1;
    StatusCode::OK
}

async fn publisher(port: u16, id: &str) -> AsyncClient {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_session(false);
    o.set_inflight(500);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move {
        loop {
            if ev.poll().await.is_err() {
                // The broker restarts: keep polling, rumqttc reconnects and resends.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    c
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let chaos = Duration::from_secs(arg("--minutes", 10) * 60);
    let quiet = Duration::from_secs(arg("--quiet-s", 180));
    let rate = arg("--rate", 2000) as usize;
    let bands = arg("--elders", 2000) as usize;
    let exe = std::env::current_exe()?.parent().unwrap().join("gatewarden");
    anyhow::ensure!(exe.exists(), "build the daemon first: cargo build --release --bins");
    let dir = tempfile::Builder::new().prefix("gatewarden-soak").tempdir()?;
    let keep = dir.path().to_owned();
    eprintln!("soak: working in {} (logs daemon-N.log)", keep.display());
    let mport = free_port();
    let mut broker = Broker::start(dir.path(), mport);

    let rx = Arc::new(Rx::default());
    let rport = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", rport)).await?;
    let app = Router::new().route("/hook", post(hook)).with_state(rx.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let hport = free_port();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            r#"site = "soak"
[store]
path = "{db}"
[http]
listen = "127.0.0.1:{hport}"
admin_token = "{TOKEN}"
[log]
level = "info"
[mqtt]
broker = "mqtt://127.0.0.1:{mport}"
client_id = "gatewarden-soak"
reconnect_min = "100ms"
reconnect_max = "1s"
[presence]
startup_grace = "1s"
unknown_bands_max = 1000
[access]
cooldown = "1ms"
[[gates]]
name = "north"
actuator = {{ kind = "log" }}
[alert.outbox]
retry_max = "2s"
[[alert.channels]]
name = "hook"
kind = "webhook"
url = "http://127.0.0.1:{rport}/hook"
rate_per_minute = 600
[[alert.ladder]]
name = "网格员"
channels = ["hook"]
"#,
            db = dir.path().join("db").display()
        ),
    )?;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
    let mut d = Daemon { exe, config, dir: keep.clone(), http: hport, child: None, lives: 0, started: Instant::now() };
    d.start(&client).await;

    // Enrolment: the SOS elders (one SOS each), the band elders, one resident.
    let sos_total = (chaos.as_secs() / 2) as usize;
    let api = |p: &str| format!("http://127.0.0.1:{hport}/api/v1{p}");
    eprintln!("soak: enrolling {} elders…", bands + sos_total);
    for i in 0..(bands + sos_total) {
        let (id, name) = if i < bands { (format!("B{i}"), format!("带{i}")) } else { (format!("EL{:04}", i - bands), format!("EL{:04}X", i - bands)) };
        let r = client.post(api("/elders")).bearer_auth(TOKEN).json(&serde_json::json!({"id": id, "name": name, "bands": [mac(i)]})).send().await?;
        anyhow::ensure!(r.status().is_success(), "enrolment: {}", r.text().await?);
    }
    let r = client
        .post(api("/residents"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"id": "R1", "name": "住户", "unit": "1-101", "pin": PIN, "consent": {"by": "住户", "how": "form"}}))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "resident: {}", r.text().await?);

    let stop = Arc::new(AtomicBool::new(false));
    // 2,000 sightings/s, QoS 1, OpenMQTTGateway format.
    let load = {
        let (stop, p) = (stop.clone(), publisher(mport, "soak-load").await);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut i = 0usize;
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                for _ in 0..rate / 100 {
                    let m = mac(i % bands);
                    let _ = p
                        .publish(format!("home/gw{}/BTtoMQTT/{m}", i % 8), QoS::AtLeastOnce, false, format!(r#"{{"id":"{m}","rssi":-{}}}"#, 50 + i % 40))
                        .await;
                    i += 1;
                    sent += 1;
                }
            }
            sent
        })
    };
    // An SOS every 2 s, each from another elder.
    let published: Arc<Mutex<BTreeMap<usize, Instant>>> = Default::default();
    let sos = {
        let (stop, p, published) = (stop.clone(), publisher(mport, "soak-sos").await, published.clone());
        tokio::spawn(async move {
            for k in 0..sos_total {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = format!(r#"{{"band":"{}","gateway":"b3","sos":true}}"#, mac(bands + k));
                published.lock().unwrap().insert(k, Instant::now());
                let _ = p.publish("gatewarden/soak/sighting", QoS::AtLeastOnce, false, body).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    };
    // PINs at the gate: count every "opened" answer.
    let told = Arc::new(AtomicU64::new(0));
    let gate = {
        let (stop, told, client, url) = (stop.clone(), told.clone(), client.clone(), api("/gates/north/credential"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(r) = client.post(&url).bearer_auth(TOKEN).json(&serde_json::json!({"kind": "pin", "value": PIN})).send().await {
                    if let Ok(v) = r.json::<serde_json::Value>().await {
                        if v["opened"] == true {
                            told.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    // Chaos: kill -9 every 20–60 s, a broker restart every 60–120 s.
    let t0 = Instant::now();
    let mut rng = rand::thread_rng();
    let mut next_kill = t0 + Duration::from_secs(rng.gen_range(20..60));
    let mut next_broker = t0 + Duration::from_secs(rng.gen_range(60..120));
    let (mut kills, mut broker_restarts) = (0, 0);
    let mut lifetimes: Vec<(u64, u64)> = Vec::new(); // (RSS 15 s after start, RSS at death), kB
    let mut rss_15 = 0;
    while t0.elapsed() < chaos {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if rss_15 == 0 && d.started.elapsed() > Duration::from_secs(15) {
            rss_15 = rss_kb(d.pid());
        }
        if Instant::now() >= next_kill {
            lifetimes.push((rss_15, rss_kb(d.pid())));
            d.kill9();
            kills += 1;
            d.start(&client).await;
            rss_15 = 0;
            next_kill = Instant::now() + Duration::from_secs(rng.gen_range(20..60));
        }
        if Instant::now() >= next_broker {
            broker.restart();
            broker_restarts += 1;
            next_broker = Instant::now() + Duration::from_secs(rng.gen_range(60..120));
        }
    }
    // Quiet: the same sightings, no faults, and staff acknowledge the open
    // SOS episodes (which would otherwise remind every 5 minutes for ever, so
    // the outbox's delivery log grows); memory is sampled every 10 s.
    eprintln!("soak: chaos over ({kills} kills, {broker_restarts} broker restarts); quiet phase");
    let q0 = Instant::now();
    let mut acked = 0;
    let mut samples = Vec::new();
    while q0.elapsed() < quiet {
        if q0.elapsed() > Duration::from_secs(30) && acked == 0 {
            // Once the last SOS has gone out (one every 2 s, from the chaos phase).
            let open: serde_json::Value = client.get(api("/alerts")).bearer_auth(TOKEN).send().await?.json().await?;
            for a in open.as_array().into_iter().flatten().filter(|a| a["state"] == "firing") {
                let id = a["id"].as_u64().unwrap_or_default();
                let r = client
                    .post(api(&format!("/alerts/{id}/ack")))
                    .bearer_auth(TOKEN)
                    .json(&serde_json::json!({"by": "soak", "outcome": "all_well"}))
                    .send()
                    .await?;
                acked += r.status().is_success() as usize;
            }
            eprintln!("soak: {acked} open alerts acknowledged");
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        samples.push(rss_kb(d.pid()));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = load.await?;
    sos.await?;
    gate.await?;
    let expected: Vec<usize> = published.lock().unwrap().keys().copied().collect();
    let deadline = Instant::now() + Duration::from_secs(180);
    while Instant::now() < deadline && expected.iter().any(|k| !rx.first.lock().unwrap().contains_key(k)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let alerts: serde_json::Value = client.get(api("/alerts?all=true")).bearer_auth(TOKEN).send().await?.json().await?;
    let mut episodes: HashMap<String, usize> = HashMap::new();
    for a in alerts.as_array().unwrap().iter().filter(|a| a["kind"] == "sos") {
        *episodes.entry(a["subject"]["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    let log: serde_json::Value = client.get(api("/log")).bearer_auth(TOKEN).send().await?.json().await?;
    let logged = log.as_array().unwrap().iter().filter(|e| e["entry"]["opened"] == true).count() as u64;
    let told = told.load(Ordering::SeqCst);

    let first = rx.first.lock().unwrap().clone();
    let pubs = published.lock().unwrap().clone();
    let lost: Vec<usize> = expected.iter().copied().filter(|k| !first.contains_key(k)).collect();
    let dup_episodes = expected.iter().filter(|k| episodes.get(&format!("EL{k:04}")).copied().unwrap_or(0) > 1).count();
    let missing_episodes = expected.iter().filter(|k| episodes.get(&format!("EL{k:04}")).copied().unwrap_or(0) == 0).count();
    let mut delays: Vec<f64> = first.iter().filter_map(|(k, at)| pubs.get(k).map(|p| at.duration_since(*p).as_secs_f64())).collect();
    delays.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| delays.get(((delays.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);
    let (notified, redelivered) = {
        let d = rx.deliveries.lock().unwrap();
        (d.len(), d.values().filter(|n| **n > 1).count())
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();

    println!("Machine: {} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!(
        "Run: {} min of faults + {} s quiet; {rate} sightings/s (QoS 1) over {bands} bands; {} SOS (one per elder, every 2 s); PINs every 100 ms; receiver failing every third request\n",
        chaos.as_secs() / 60,
        quiet.as_secs(),
        expected.len()
    );
    println!("| measure | result |\n|---|---|");
    println!("| daemon kill -9 | {kills} |");
    println!("| broker restarts | {broker_restarts} |");
    println!("| sightings published | {sent} |");
    println!("| receiver requests (failed with 500) | {} ({}) |", rx.n.load(Ordering::SeqCst), rx.failed.load(Ordering::SeqCst));
    println!("| SOS published / delivered | {} / {} |", expected.len(), expected.len() - lost.len());
    println!("| **SOS lost** | **{}** {:?} |", lost.len(), &lost[..lost.len().min(10)]);
    println!("| **SOS episodes duplicated / missing** | **{dup_episodes} / {missing_episodes}** |");
    println!("| notifications delivered / delivered again (at-least-once: sent, then killed before recording it) | {notified} / {redelivered} |");
    println!("| alert delay p50 / p99 / **max** | {:.1} s / {:.1} s / **{:.1} s** |", pct(0.5), pct(0.99), delays.last().copied().unwrap_or(0.0));
    println!("| gate decisions answered \"opened\" / in the entry log | {told} / {logged} |");
    println!("| **entry-log records lost** | **{}** |", told.saturating_sub(logged));
    let l: Vec<String> = lifetimes.iter().map(|(a, b)| format!("{}→{}", a / 1024, b / 1024)).collect();
    println!("| RSS per daemon life, MB (15 s → at kill) | {} |", l.join(", "));
    if let (Some(a), Some(b)) = (samples.first(), samples.last()) {
        println!(
            "| RSS in the quiet phase, MB (first → last sample, {} samples; {acked} open alerts acknowledged after 30 s) | {} → {} (max {}) |",
            samples.len(),
            a / 1024,
            b / 1024,
            samples.iter().max().unwrap() / 1024
        );
        // The second half's slope: flat memory is ~0 once caches are warm.
        let half = &samples[samples.len() / 2..];
        if half.len() >= 2 {
            let minutes = (half.len() - 1) as f64 * 10.0 / 60.0;
            let slope = (*half.last().unwrap() as f64 - half[0] as f64) / 1024.0 / minutes;
            println!("| RSS slope over the quiet phase's second half | {slope:+.2} MB/min ({} → {} MB) |", half[0] / 1024, half.last().unwrap() / 1024);
        }
        let series: Vec<String> = samples.iter().step_by(3).map(|k| (k / 1024).to_string()).collect();
        println!("| RSS every 30 s in the quiet phase, MB | {} |", series.join(", "));
    }
    let ok = lost.is_empty() && dup_episodes == 0 && missing_episodes == 0 && told <= logged;
    println!("\nResult: {}", if ok { "nothing lost, nothing duplicated" } else { "PROMISES BROKEN (see above)" });
    drop(d);
    drop(broker);
    if ok {
        drop(dir);
    } else {
        let _ = dir.keep();
        eprintln!("soak: kept {} for inspection", keep.display());
    }
    std::process::exit(if ok { 0 } else { 1 });
}
