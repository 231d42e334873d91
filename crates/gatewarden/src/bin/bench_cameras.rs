//! `gatewarden-bench-cameras`: how many cameras one box serves. For each N,
//! N gates each get a 720p camera (a video file paced in real time, as a
//! camera delivers it): mostly an empty gateway, with enrolled people walking
//! up now and then. The release daemon and its vision process run the whole
//! path (motion gate, detector, tracker, embedder, liveness, policy, durable
//! log, actuator). Reported per N: CPU of the box, frames read / analysed /
//! skipped by motion gating / never looked at, gate decisions against
//! walk-ups, the face → barrier latency p50/p95 (from the daemon's log), and
//! the vision process's peak RSS.
//!
//! With `--python PY`, the same clips also go through the Python reference
//! pipeline (`deploy/bench/cameras_reference.py`, one process per stream,
//! the same ONNX Runtime settings, every frame at 5 fps fully processed), in
//! the same run.
//!
//! `bash deploy/gw.sh bench` runs it; alone:
//! `target/release/gatewarden-bench-cameras --cameras 1,2,4,8 --secs 40 --python target/bench-venv/bin/python`
//! (`--plate-gates K`: the last K gates also read plates; `--keep-logs DIR`: keep the daemon's logs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod bench_util;
use bench_util::{arg, cpu_us, free_port, proc_kb, Kill};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-admin-token-0123456789";

/// Enrolment photo and a different photo of the same person (walking up).
const PEOPLE: [(&str, &str, &str); 4] =
    [("R0", "img1.jpg", "img2.jpg"), ("R1", "img26.jpg", "img27.jpg"), ("R2", "img8.jpg", "img9.jpg"), ("R3", "img29.jpg", "img30.jpg")];

/// The processes a process started, from any of its threads (tokio spawns
/// the vision process from a worker thread).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    tasks
        .flatten()
        .flat_map(|t| {
            std::fs::read_to_string(t.path().join("children")).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>()
        })
        .collect()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Camera `i`'s clip: `secs` of an empty gateway at 10 fps, with two people
/// walking up (4 s each, growing in the frame), at times that differ per
/// camera. The photo fills the frame: pasted on a flat background with a
/// border, it would be a photo held up, and liveness would rightly say so.
fn make_clip(faces: &Path, i: usize, secs: u32, out: &Path) -> anyhow::Result<Vec<f64>> {
    let first = 3.0 + (i as f64 * 1.7) % 8.0;
    let second = first + 4.0 + 9.0;
    let walk = 4.0;
    anyhow::ensure!(second + walk + 1.0 < secs as f64, "--secs must be at least {}", (second + walk + 2.0).ceil());
    let (a, b) = (PEOPLE[i % PEOPLE.len()], PEOPLE[(i + 1) % PEOPLE.len()]);
    let seg = |d: f64| format!("color=c=0x6e6e6e:s=1280x720:r=10:d={d:.1}");
    let walkf = |n: usize| {
        format!(
            "[{n}:v]scale=1280:720:force_original_aspect_ratio=increase,crop=1280:720,setsar=1,\
             zoompan=z='min(1+0.006*on,1.4)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d=1:s=1280x720:fps=10,trim=duration={walk}[w{n}]"
        )
    };
    let st = Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", &seg(first), "-loop", "1", "-i"])
        .arg(faces.join(a.2))
        .args(["-f", "lavfi", "-i", &seg(second - first - walk), "-loop", "1", "-i"])
        .arg(faces.join(b.2))
        .args(["-f", "lavfi", "-i", &seg(secs as f64 - second - walk)])
        .args(["-filter_complex", &format!("{};{};[0:v][w1][2:v][w3][4:v]concat=n=5:v=1[v]", walkf(1), walkf(3)), "-map", "[v]"])
        .args(["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"])
        .arg(out)
        .status()?;
    anyhow::ensure!(st.success(), "ffmpeg could not make {}", out.display());
    Ok(vec![first, second])
}

fn daemon_config(dir: &Path, http: u16, mqtt: u16, models: &Path, gates: &str) -> String {
    let intra = arg("--intra", "0");
    format!(
        "site = \"bench\"\n[store]\npath = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin_token = \"{TOKEN}\"\n[log]\nlevel = \"info\"\n\
         [mqtt]\nbroker = \"mqtt://127.0.0.1:{mqtt}\"\n[vision]\nenabled = true\nmodels_dir = \"{}\"\nintra_threads = {intra}\n[access]\ncooldown = \"5s\"\n{gates}",
        dir.join("db").display(),
        models.display()
    )
}

async fn wait_healthy(http: u16) {
    for _ in 0..300 {
        if reqwest::get(format!("http://127.0.0.1:{http}/healthz")).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the daemon did not come up");
}

async fn metric(http: u16, series: &str) -> f64 {
    let text = match reqwest::get(format!("http://127.0.0.1:{http}/metrics")).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|r| r.trim().parse().ok())).unwrap_or(0.0)
}

struct Row {
    n: usize,
    cpu_pct: f64,
    read: f64,
    analysed: f64,
    still: f64,
    opens: usize,
    walkups: usize,
    p50: f64,
    p95: f64,
    rss_mb: f64,
}

async fn gatewarden_run(gw: &Path, dir: &Path, models: &Path, mqtt: u16, clips: &[(PathBuf, Vec<f64>)]) -> anyhow::Result<Row> {
    let http = free_port();
    let cfg = dir.join("gw.toml");
    let mut gates = String::new();
    // `--plate-gates K`: the last K gates also read plates (barrier cameras),
    // so every model is loaded and the plate path runs on their frames.
    let plate_gates: usize = arg("--plate-gates", "0").parse()?;
    for (i, (clip, _)) in clips.iter().enumerate() {
        let plates = i + plate_gates >= clips.len();
        gates.push_str(&format!(
            "[[gates]]\nname = \"cam{i}\"\ncamera = \"{}\"\nmax_fps = 5.0\nread_plates = {plates}\nactuator = {{ kind = \"log\" }}\n",
            clip.display()
        ));
    }
    std::fs::write(&cfg, daemon_config(dir, http, mqtt, models, &gates))?;
    let log = dir.join(format!("daemon-{}.log", clips.len()));
    let d = Kill(Command::new(gw).args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(std::fs::File::create(&log)?).spawn()?);
    let pid = d.0.id();
    wait_healthy(http).await;
    // Measure from the first frame to the last clip's end.
    let t0 = loop {
        if metric(http, "gatewarden_camera_frames{camera=\"cam0\"}").await > 0.0 {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let cpu0: u64 = std::iter::once(pid).chain(children(pid)).map(cpu_us).sum();
    let (mut read, mut analysed, mut still);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut done = true;
        (read, analysed, still) = (0.0, 0.0, 0.0);
        for i in 0..clips.len() {
            let m = |k: &str| format!("gatewarden_camera_{k}{{camera=\"cam{i}\"}}");
            read += metric(http, &m("frames")).await;
            analysed += metric(http, &m("frames_analysed")).await;
            still += metric(http, &m("frames_still")).await;
            done &= metric(http, &m("connected")).await == 0.0 && metric(http, &m("frames")).await > 0.0;
        }
        if done || t0.elapsed() > Duration::from_secs(600) {
            break;
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let vision = children(pid);
    let cpu1: u64 = std::iter::once(pid).chain(vision.iter().copied()).map(cpu_us).sum();
    let rss_kb: u64 = vision.iter().map(|p| proc_kb(*p, "VmHWM:")).sum();
    tokio::time::sleep(Duration::from_millis(1500)).await; // the last decisions' log lines
    let text = std::fs::read_to_string(&log)?;
    let mut lat: Vec<f64> = text.lines().filter(|l| l.contains("gate opened")).filter_map(latency_ms).collect();
    let opens = lat.len();
    lat.sort_by(|a, b| a.total_cmp(b));
    eprintln!("{} cameras: every face → barrier latency (ms): {lat:?}", clips.len());
    // What the gates said to the faces they did not let in, for the record.
    let log: serde_json::Value =
        reqwest::Client::new().get(format!("http://127.0.0.1:{http}/api/v1/log")).bearer_auth(TOKEN).send().await?.json().await.unwrap_or_default();
    let mut denied: std::collections::BTreeMap<String, usize> = Default::default();
    for e in log.as_array().into_iter().flatten().map(|e| &e["entry"]).filter(|e| e["opened"] == false) {
        *denied.entry(format!("{} {}", e["person"].as_str().unwrap_or("-"), e["reason"].as_str().unwrap_or(""))).or_default() += 1;
    }
    if !denied.is_empty() {
        eprintln!("{} cameras: denied {denied:?}", clips.len());
    }
    drop(d);
    // `--keep-logs DIR`: the daemon's log (with RUST_LOG=…,gatewarden_vision=debug, every track's timeline).
    let keep = arg("--keep-logs", "");
    if !keep.is_empty() {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep)?;
        std::fs::copy(dir.join(format!("daemon-{}.log", clips.len())), keep.join(format!("daemon-{}.log", clips.len())))?;
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    Ok(Row {
        n: clips.len(),
        cpu_pct: (cpu1 - cpu0) as f64 / 1e6 / wall / cores * 100.0,
        read,
        analysed,
        still,
        opens,
        walkups: clips.iter().map(|c| c.1.len()).sum(),
        p50: pct(&mut lat, 0.5),
        p95: pct(&mut lat, 0.95),
        rss_mb: rss_kb as f64 / 1024.0,
    })
}

fn latency_ms(line: &str) -> Option<f64> {
    let at = line.find("latency_ms")? + "latency_ms".len();
    let rest = line[at..].trim_start_matches(['=', '"', ':', ' ']);
    rest.split(|c: char| !c.is_ascii_digit() && c != '.').next()?.parse().ok()
}

fn python_run(py: &Path, script: &Path, models: &Path, faces: &Path, clips: &[(PathBuf, Vec<f64>)]) -> anyhow::Result<Row> {
    let mut kids = Vec::new();
    for (clip, _) in clips {
        let mut c = Command::new(py);
        c.arg(script).arg("--models").arg(models).arg("--video").arg(clip).args(["--fps", "5"]);
        for (id, enrol, _) in PEOPLE {
            c.arg("--enrol").arg(format!("{id}={}", faces.join(enrol).display()));
        }
        kids.push(c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn()?);
    }
    let (mut cpu, mut wall, mut read, mut analysed, mut rss, mut lat) = (0.0, 0.0f64, 0.0, 0.0, 0.0, Vec::new());
    for k in kids {
        let o = k.wait_with_output()?;
        let text = String::from_utf8_lossy(&o.stdout);
        let line = text.lines().find_map(|l| l.strip_prefix("JSON ")).ok_or_else(|| anyhow::anyhow!("the reference printed no result"))?;
        let v: serde_json::Value = serde_json::from_str(line)?;
        cpu += v["cpu_s"].as_f64().unwrap_or(0.0);
        wall = wall.max(v["wall_s"].as_f64().unwrap_or(0.0));
        read += v["frames"].as_f64().unwrap_or(0.0);
        analysed += v["analysed"].as_f64().unwrap_or(0.0);
        rss += v["max_rss_mb"].as_f64().unwrap_or(0.0);
        lat.extend(v["latencies_ms"].as_array().into_iter().flatten().filter_map(|x| x.as_f64()));
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as f64;
    let opens = lat.len();
    Ok(Row {
        n: clips.len(),
        cpu_pct: cpu / wall.max(1e-9) / cores * 100.0,
        read,
        analysed,
        still: 0.0,
        opens,
        walkups: clips.iter().map(|c| c.1.len()).sum(),
        p50: pct(&mut lat, 0.5),
        p95: pct(&mut lat, 0.95),
        rss_mb: rss,
    })
}

fn print_row(who: &str, r: &Row) {
    let skipped = (r.read - r.analysed - r.still).max(0.0);
    println!(
        "| {who} | {} | {:.0} % | {:.0} | {:.0} | {:.0} | {:.0} | {}/{} | {:.0} / {:.0} ms | {:.0} MB |",
        r.n, r.cpu_pct, r.read, r.analysed, r.still, skipped, r.opens, r.walkups, r.p50, r.p95, r.rss_mb
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let counts: Vec<usize> = arg("--cameras", "1,2,4,8").split(',').filter_map(|x| x.trim().parse().ok()).collect();
    let secs: u32 = arg("--secs", "30").parse()?;
    let models = PathBuf::from(arg("--models", "models")).canonicalize()?;
    let faces = PathBuf::from(arg("--faces", "../shared/testdata/faces/people")).canonicalize()?;
    let python = arg("--python", "");
    let exe_dir = std::env::current_exe()?.parent().unwrap().to_owned();
    let gw = exe_dir.join("gatewarden");
    anyhow::ensure!(gw.exists() && exe_dir.join("gatewarden-vision").exists(), "build first: cargo build --release --bins");
    let dir = tempfile::tempdir()?;
    let (mport, _broker) = bench_util::mosquitto(dir.path(), "")?;

    // Enrol the people once, with no camera configured.
    let http = free_port();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, daemon_config(dir.path(), http, mport, &models, ""))?;
    {
        let _d = Kill(Command::new(&gw).args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
        wait_healthy(http).await;
        for (id, photo, _) in PEOPLE {
            let o = Command::new(&gw)
                .args(["resident", "add", "--name", id, "--id", id, "--photo"])
                .arg(faces.join(photo))
                .args(["--consent-by", id, "--consent-how", "bench", "--config"])
                .arg(&cfg)
                .output()?;
            anyhow::ensure!(o.status.success(), "enrolling {id}: {}", String::from_utf8_lossy(&o.stderr));
        }
    }
    let max = counts.iter().copied().max().unwrap_or(1);
    eprintln!("making {max} camera clips of {secs} s…");
    let mut clips = Vec::new();
    for i in 0..max {
        let p = dir.path().join(format!("cam{i}.mp4"));
        let walkups = make_clip(&faces, i, secs, &p)?;
        clips.push((p, walkups));
    }
    println!("| pipeline | cameras | CPU (box) | frames read | analysed | skipped: still | skipped: not looked at | gate opens / walk-ups | face → barrier p50 / p95 | peak RSS (vision) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/bench/cameras_reference.py");
    for n in counts {
        let r = gatewarden_run(&gw, dir.path(), &models, mport, &clips[..n]).await?;
        print_row("gatewarden", &r);
        println!(
            "JSON {{\"pipeline\": \"gatewarden\", \"cameras\": {n}, \"cpu_pct\": {:.1}, \"p50_ms\": {:.0}, \"p95_ms\": {:.0}, \"opens\": {}, \"walkups\": {}, \"rss_mb\": {:.0}}}",
            r.cpu_pct, r.p50, r.p95, r.opens, r.walkups, r.rss_mb
        );
        if !python.is_empty() {
            let r = python_run(Path::new(&python), &script, &models, &faces, &clips[..n])?;
            print_row("Python reference", &r);
            println!(
                "JSON {{\"pipeline\": \"python\", \"cameras\": {n}, \"cpu_pct\": {:.1}, \"p50_ms\": {:.0}, \"p95_ms\": {:.0}, \"opens\": {}, \"walkups\": {}, \"rss_mb\": {:.0}}}",
                r.cpu_pct, r.p50, r.p95, r.opens, r.walkups, r.rss_mb
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn latency_is_read_from_text_and_json_log_lines() {
        assert_eq!(super::latency_ms("INFO gate opened gate=cam0 person=R0 latency_ms=182"), Some(182.0));
        assert_eq!(super::latency_ms(r#"{"fields":{"message":"gate opened","latency_ms":97}}"#), Some(97.0));
        assert_eq!(super::latency_ms("gate opened"), None);
    }
}
