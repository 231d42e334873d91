//! `gatewarden-bench`: sighting ingestion throughput through a real mosquitto,
//! side by side with a plain `mosquitto_sub` on the same broker and load, plus
//! the daemon's RSS. Prints a Markdown table for BENCHMARKS.md.
//!
//! Run with `bash deploy/gw.sh bench` (builds in release and installs mosquitto).

use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The admin token the bench gives its daemon (long enough for config validation).
const TOKEN: &str = "bench-admin-token-0123456789";

mod bench_util;
use bench_util::{cpu_us, free_port, proc_kb, Kill};

fn arg(name: &str, default: usize) -> usize {
    bench_util::arg(name, "").parse().unwrap_or(default)
}

fn mac(i: usize) -> String {
    format!("C3:A1:{:02X}:{:02X}:{:02X}:01", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff)
}

async fn publisher(port: u16) -> AsyncClient {
    let mut o = MqttOptions::new(format!("bench-pub-{}", free_port()), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(1000);
    let (c, mut ev) = AsyncClient::new(o, 10_000);
    tokio::spawn(async move { while ev.poll().await.is_ok() {} });
    tokio::time::sleep(Duration::from_millis(300)).await;
    c
}

/// What the gateways publish in a run.
#[derive(Clone, Copy, PartialEq)]
enum Shape {
    /// OpenMQTTGateway JSON on `home/<gw>/BTtoMQTT/<MAC>`: the topic says the format.
    Omg,
    /// Ingics `$GPRP` lines with a raw iBeacon advertisement on `ingics/<gw>`:
    /// nothing in the topic, so `auto` reads the payload and decodes the advertisement.
    Ingics,
}

/// `moving`: each pass over the elders reports them from another gateway, so
/// every sighting changes the stored place (the worst case for the store).
async fn publish_all(c: &AsyncClient, n: usize, elders: usize, qos: QoS, prefix: &str, moving: bool, shape: Shape) {
    for i in 0..n {
        let m = mac(i % elders);
        let gw = if moving { (i / elders) % 4 } else { 0 };
        let (topic, payload) = match shape {
            Shape::Omg => (format!("{prefix}/gw{gw}/BTtoMQTT/{}", m.replace(':', "")), format!(r#"{{"id":"{m}","rssi":-{}}}"#, 50 + i % 40)),
            Shape::Ingics => (
                format!("{prefix}/gw{gw}"),
                format!("$GPRP,{},E7DAE08E6FC{gw},-{},0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6\r\n", m.replace(':', ""), 50 + i % 40),
            ),
        };
        c.publish(topic, qos, false, payload).await.unwrap();
    }
}

async fn sightings(http: &reqwest::Client, port: u16) -> f64 {
    let text = http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix("gatewarden_sightings_total{kind=\"wristband\"} ").and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--messages", 200_000);
    let flush_s = arg("--flush-every-s", 1);
    let elders = arg("--elders", 5_000);
    let exe_dir = std::env::current_exe()?.parent().unwrap().to_owned();
    let gw = exe_dir.join("gatewarden");
    anyhow::ensure!(gw.exists(), "build the daemon first: cargo build --release --bins");
    let dir = tempfile::tempdir()?;
    let (mport, _broker) = bench_util::mosquitto(dir.path(), "max_queued_messages 0\nmax_inflight_messages 0\n")?;

    let hport = free_port();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            "site = \"bench\"\n[store]\npath = \"{}\"\nflush_every = \"{flush_s}s\"\n[http]\nlisten = \"127.0.0.1:{hport}\"\nadmin_token = \"{TOKEN}\"\n\
             [log]\nlevel = \"warn\"\n[mqtt]\nbroker = \"mqtt://127.0.0.1:{mport}\"\n[[mqtt.sources]]\ntopic = \"home/+/BTtoMQTT/#\"\nformat = \"auto\"\n\
             [[mqtt.sources]]\ntopic = \"ingics/#\"\nformat = \"auto\"\n[presence]\nunknown_bands_max = 1000\n",
            dir.path().join("db").display()
        ),
    )?;
    let daemon = Kill(Command::new(&gw).args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn()?);
    let pid = daemon.0.id();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("http://127.0.0.1:{hport}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("enrolling {elders} elders…");
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..elders {
        let http = http.clone();
        set.spawn(async move {
            http.post(format!("http://127.0.0.1:{hport}/api/v1/elders"))
                .bearer_auth(TOKEN)
                .json(&serde_json::json!({"id": format!("E{i}"), "name": format!("E{i}"), "bands": [mac(i)]}))
                .send()
                .await
                .map(|r| r.status().is_success())
        });
        if set.len() >= 32 {
            anyhow::ensure!(set.join_next().await.unwrap()??, "enrolment failed");
        }
    }
    while let Some(r) = set.join_next().await {
        anyhow::ensure!(r??, "enrolment failed");
    }
    eprintln!("enrolled in {:.1}s", t.elapsed().as_secs_f64());
    let rss_idle = proc_kb(pid, "VmRSS:");

    let mut rows = Vec::new();
    for (qos, qn, moving, shape) in [
        (QoS::AtMostOnce, 0, false, Shape::Omg),
        (QoS::AtLeastOnce, 1, false, Shape::Omg),
        (QoS::AtLeastOnce, 1, true, Shape::Omg),
        (QoS::AtLeastOnce, 1, false, Shape::Ingics),
    ] {
        // gatewarden
        let p = publisher(mport).await;
        let base = sightings(&http, hport).await;
        let cpu0 = cpu_us(pid);
        let t0 = Instant::now();
        publish_all(&p, n, elders, qos, if shape == Shape::Omg { "home" } else { "ingics" }, moving, shape).await;
        let mut got = 0.0;
        while t0.elapsed() < Duration::from_secs(120) {
            got = sightings(&http, hport).await - base;
            if got >= n as f64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let gw_rate = got / t0.elapsed().as_secs_f64();
        let cpu_per = (cpu_us(pid) - cpu0) as f64 / got.max(1.0);
        // a plain mosquitto_sub on the same broker and load
        let mut sub = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &mport.to_string(), "-t", "peer/#", "-q", &qn.to_string(), "-C", &n.to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let p2 = publisher(mport).await;
        let t1 = Instant::now();
        publish_all(&p2, n, elders, qos, "peer", moving, shape).await;
        while sub.try_wait()?.is_none() && t1.elapsed() < Duration::from_secs(120) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let peer_rate = n as f64 / t1.elapsed().as_secs_f64();
        let _ = sub.kill();
        rows.push((qn, moving, shape, got as usize, gw_rate, peer_rate, cpu_per));
    }
    let rss = proc_kb(pid, "VmRSS:");
    let hwm = proc_kb(pid, "VmHWM:");
    let cpu = std::fs::read_to_string("/proc/cpuinfo")?
        .lines()
        .find(|l| l.starts_with("model name"))
        .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        .unwrap_or_default();
    println!("Machine: {} cores, {cpu}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
    println!("Load: {n} sightings per row over {elders} enrolled elders, `[[mqtt.sources]] format = \"auto\"`, last-seen written behind every {flush_s} s\n");
    println!("| format | QoS | elders | gatewarden ingested | gatewarden msg/s | mosquitto_sub msg/s | ratio | daemon CPU µs/sighting |");
    println!("|---|---|---|---|---|---|---|---|");
    for (q, moving, shape, got, g, p, cpu) in &rows {
        let how = if *moving { "moving between 4 gateways" } else { "stationary" };
        let f = if *shape == Shape::Omg { "OpenMQTTGateway JSON" } else { "Ingics $GPRP (raw iBeacon)" };
        println!("| {f} | {q} | {how} | {got} | {g:.0} | {p:.0} | {:.2} | {cpu:.1} |", g / p);
    }
    println!("\nDaemon RSS: {} MB idle with {elders} elders, {} MB after the runs, peak {} MB", rss_idle / 1024, rss / 1024, hwm / 1024);
    Ok(())
}
