//! Gate access end to end: real video through OpenCV into the daemon with the
//! real ONNX models, camera loss over HTTP MJPEG served by ffmpeg, and the
//! face-free credentials (PIN, card, QR) with visitor passes under the test clock.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};

fn ffmpeg() -> &'static str {
    assert!(Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).status().is_ok(), "ffmpeg is not installed: run `bash deploy/gw.sh test`");
    "ffmpeg"
}

/// Finish an ffmpeg command as an H.264 file at `out`, and run it.
fn h264(mut ffmpeg: Command, out: &Path) {
    let st = ffmpeg.args(["-c:v", "libx264", "-pix_fmt", "yuv420p"]).arg(out).status().unwrap();
    assert!(st.success(), "ffmpeg could not make {}", out.display());
}

/// A 720p H.264 clip of one still photo, like a person standing at the camera.
fn clip(photo: &Path, out: &Path, secs: u32) {
    let mut c = Command::new(ffmpeg());
    c.args(["-y", "-loglevel", "error", "-loop", "1", "-i"]).arg(photo).args([
        "-t",
        &secs.to_string(),
        "-r",
        "10",
        "-vf",
        "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2",
    ]);
    h264(c, out);
}

fn models_dir() -> String {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models").display().to_string()
}

fn gate_config(gates: &str) -> String {
    format!(
        r#"
[vision]
enabled = true
models_dir = "{}"
[access]
cooldown = "60s"
camera_offline_after = "2s"
{gates}
"#,
        models_dir()
    )
}

/// An MJPEG camera on a free port: ffmpeg serving a clip in a loop, in real
/// time, to one client at a time (a client that goes away ends the server).
struct MjpegCamera {
    clip: std::path::PathBuf,
    port: u16,
    server: Option<std::process::Child>,
}

impl MjpegCamera {
    fn start(clip: &Path) -> MjpegCamera {
        let mut c = MjpegCamera { clip: clip.to_owned(), port: free_port(), server: None };
        c.serve();
        c
    }

    fn serve(&mut self) {
        let child = Command::new(ffmpeg())
            .args(["-loglevel", "error", "-re", "-stream_loop", "-1", "-i"])
            .arg(&self.clip)
            .args(["-f", "mpjpeg", "-q:v", "5", "-listen", "1", &format!("http://127.0.0.1:{}/cam.mjpg", self.port)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.server = Some(child);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Gate "west" on this camera at 2 fps, and a webhook channel to `hook`.
    fn west_gate(&self, hook: &str) -> String {
        format!(
            "[[gates]]\nname = \"west\"\ncamera = \"http://127.0.0.1:{}/cam.mjpg\"\nmax_fps = 2.0\nactuator = {{ kind = \"log\" }}\n\
             [[alert.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{hook}\"\n[[alert.ladder]]\nname = \"物业\"\nchannels = [\"hook\"]\n",
            self.port
        )
    }
}

impl Drop for MjpegCamera {
    fn drop(&mut self) {
        self.stop();
    }
}

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Restart the daemon (`base`: the test config) with one gate, "north",
/// whose camera plays `video`, analysed at `fps` while nobody is in view, at
/// log `level`, and wait until the clip has played (`frames` frames, to its end).
async fn play_at_north(d: &mut Daemon, base: &str, video: &Path, fps: f32, frames: f64, level: &str) {
    let gates = format!("[[gates]]\nname = \"north\"\ncamera = \"{}\"\nmax_fps = {fps:.1}\nactuator = {{ kind = \"log\" }}\n", video.display());
    let text = format!("{base}{}", gate_config(&gates)).replace("level = \"info\"", &format!("level = \"{level}\""));
    std::fs::write(&d.config, text).unwrap();
    d.restart().await;
    let m = async |k: &str| d.metric(&format!("gatewarden_camera_{k}{{camera=\"north\"}}")).await;
    eventually("the clip played", 60, async || (m("frames").await >= frames && m("connected").await == 0.0).then_some(())).await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
}

/// Enrol a resident from a photo, with their consent on record.
fn enrol(d: &Daemon, id: &str, name: &str, photo: &Path) {
    let o = d.cli(&["resident", "add", "--name", name, "--id", id, "--photo", photo.to_str().unwrap(), "--consent-by", name, "--consent-how", "paper form"]);
    assert!(o.status.success(), "{}", out(&o));
}

async fn entries(d: &Daemon) -> Vec<serde_json::Value> {
    d.get("/log").await.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn video_through_opencv_opens_once_for_a_resident_and_never_for_a_stranger_or_a_photo() {
    let (Some(faces), Some(live)) = (shared_testdata("faces/people"), shared_testdata("liveness")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    // Phase 1: enrol (no cameras yet). id00 from one photo; the person in the
    // printed-photo sample from that very print, so only liveness can stop it.
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    // 张三 is also a watched elder: a face at the gate is a sighting.
    d.post("/elders", serde_json::json!({"id": "E1", "name": "张三", "bands": ["c3a1f0001101"]})).await;
    let o = d.cli(&[
        "resident",
        "add",
        "--name",
        "张三",
        "--id",
        "R1",
        "--unit",
        "3-401",
        "--elder",
        "E1",
        "--photo",
        faces.join("img1.jpg").to_str().unwrap(),
        "--consent-by",
        "张三",
        "--consent-how",
        "paper form",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let o = d.cli(&[
        "resident",
        "add",
        "--name",
        "印刷照片",
        "--id",
        "R2",
        "--photo",
        live.join("image_F1.jpg").to_str().unwrap(),
        "--consent-by",
        "x",
        "--consent-how",
        "paper form",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(d.terminate().success());

    let v = |n: &str| dir.path().join(n);
    clip(&faces.join("img2.jpg"), &v("resident.mp4"), 6); // another photo of id00
    clip(&faces.join("img54.jpg"), &v("stranger.mp4"), 6); // an identity nobody enrolled
    clip(&live.join("image_F1.jpg"), &v("spoof.mp4"), 6);
    let gates = format!(
        r#"[[gates]]
name = "north"
camera = "{}"
actuator = {{ kind = "log" }}
[[gates]]
name = "south"
camera = "{}"
actuator = {{ kind = "log" }}
[[gates]]
name = "east"
camera = "{}"
actuator = {{ kind = "log" }}
"#,
        v("resident.mp4").display(),
        v("stranger.mp4").display(),
        v("spoof.mp4").display()
    );
    std::fs::write(&d.config, config(dir.path(), broker.port, http, &gate_config(&gates))).unwrap();
    d.restart().await;
    // Until every clip has played to its end.
    eventually("all three clips played", 90, async || {
        for g in ["north", "south", "east"] {
            let frames = d.metric(&format!("gatewarden_camera_frames{{camera=\"{g}\"}}")).await;
            let connected = d.metric(&format!("gatewarden_camera_connected{{camera=\"{g}\"}}")).await;
            if frames < 55.0 || connected != 0.0 {
                return None;
            }
        }
        Some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let log = entries(&d).await;
    let at = |g: &str| log.iter().filter(|e| e["entry"]["gate"] == g).map(|e| e["entry"].clone()).collect::<Vec<_>>();
    let north = at("north");
    let tail = |log: String| log.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    assert_eq!(north.iter().filter(|e| e["opened"] == true).count(), 1, "north opens exactly once: {north:?}\n{}", tail(d.log()));
    assert_eq!(north[0]["person"], "R1");
    assert_eq!(north[0]["person_kind"], "elder");
    let seen = d.last_seen("E1").await;
    assert_eq!((seen["source"].as_str(), seen["place"].as_str()), (Some("face"), Some("north")), "{seen}");
    assert_eq!(north[0]["credential"], "face");
    assert!(north[0]["liveness"].as_f64().unwrap() >= 0.5);
    let south = at("south");
    assert!(!south.is_empty() && south.iter().all(|e| e["opened"] == false && e["reason"] == "unknown face"), "{south:?}");
    let east = at("east");
    assert!(!east.is_empty() && east.iter().all(|e| e["opened"] == false), "the photo never opens: {east:?}");
    assert!(east.iter().any(|e| e["reason"].as_str().unwrap().contains("liveness")), "{east:?}");
    assert!(d.log().contains("DRY RUN: gate would open"));
    // An unknown face leaves a snapshot (kept for access.unknown_retention),
    // sealed: no JPEG on disk, and only this box's key opens it.
    let snap = std::fs::read_dir(dir.path().join("snapshots")).unwrap().next().expect("a snapshot").unwrap().path();
    assert!(snap.to_string_lossy().ends_with(".jpg.sealed"), "{}", snap.display());
    let raw = std::fs::read(&snap).unwrap();
    assert!(!raw.starts_with(&[0xFF, 0xD8]) && !raw.windows(4).any(|w| w == b"JFIF"), "a JPEG in the clear");
    let opened = dir.path().join("opened.jpg");
    let o = d.cli(&["snapshot", "open", snap.to_str().unwrap(), "--out", opened.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(std::fs::read(&opened).unwrap().starts_with(&[0xFF, 0xD8]), "it opens to a JPEG");
    let renamed = dir.path().join("south-19700101T000000.000.jpg.sealed");
    std::fs::copy(&snap, &renamed).unwrap();
    let o = d.cli(&["snapshot", "open", renamed.to_str().unwrap(), "--out", opened.to_str().unwrap()]);
    assert!(!o.status.success(), "a sealed snapshot is bound to its name");
    // The chain is intact, and CSV export carries the decisions.
    let o = d.cli(&["log", "verify"]);
    assert!(o.status.success() && out(&o).contains("intact"), "{}", out(&o));
    let csv = String::from_utf8_lossy(&d.cli(&["log", "show", "--csv", "--gate", "north"]).stdout).to_string();
    assert!(csv.starts_with("seq,time,gate") && csv.contains(",north,in,face,R1,elder,"), "{csv}");

    // Tamper with one record as someone with the disk would; `log verify` notices.
    assert!(d.terminate().success());
    {
        let s = store::Store::open(&dir.path().join("db")).unwrap();
        let mut c = s.entries().unwrap()[0].clone();
        c.entry.opened = !c.entry.opened;
        s.tamper_entry(&c).unwrap();
        s.flush().unwrap();
    }
    d.restart().await;
    let o = d.cli(&["log", "verify"]);
    assert!(!o.status.success());
    assert!(out(&o).contains("TAMPERED") && out(&o).contains("record 1 was altered"), "{}", out(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn pin_card_and_qr_each_open_and_an_expired_pass_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let gates = r#"[[gates]]
name = "north"
actuator = { kind = "mqtt", topic = "shellies/gate-north/relay/0/command", pulse = "200ms" }
"#;
    let relay = Subscriber::start(broker.port, "shellies/#").await;
    let events = Subscriber::start(broker.port, "gatewarden/t/gate/+/event").await;
    // Credentials only: no camera, no models needed.
    let text = config(dir.path(), broker.port, http, &format!("[access]\ncooldown = \"1s\"\n{gates}"));
    let d = Daemon::start(dir.path(), &text, http).await;
    let o = d.cli(&["resident", "add", "--name", "李四", "--id", "R1", "--pin", "246810", "--card", "04A1B2C3"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = d.cli(&["gate", "present", "north", "--pin", "246810"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = d.cli(&["gate", "present", "north", "--card", "04A1B2C3"]);
    assert!(o.status.success(), "{}", out(&o));
    // A card reader publishing over MQTT.
    let p = broker.publisher().await;
    p.publish("gatewarden/t/gate/north/credential", r#"{"kind":"card","value":"04A1B2C3"}"#).await;
    eventually("the MQTT card read", 10, async || (entries(&d).await.len() == 3).then_some(())).await;
    let o = d.cli(&["gate", "present", "north", "--pin", "000000"]);
    assert_eq!(o.status.code(), Some(3), "a wrong PIN is denied: {}", out(&o));

    // A visitor with a 4h pass.
    let o = d.cli(&["visitor", "register", "--name", "王五", "--id-number", "11010519491231002X", "--host-unit", "3-401", "--valid-for", "4h", "--json"]);
    assert!(o.status.success(), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["id_masked"], "1101**********002X");
    let (pin, qr) = (v["pin"].as_str().unwrap().to_string(), v["qr"].as_str().unwrap().to_string());
    assert!(d.cli(&["gate", "present", "north", "--qr", &qr]).status.success());
    assert!(d.cli(&["gate", "present", "north", "--pin", &pin]).status.success());
    d.advance("4h").await;
    let o = d.cli(&["gate", "present", "north", "--qr", &qr]);
    assert_eq!(o.status.code(), Some(3));
    assert!(out(&o).contains("visitor pass expired"), "{}", out(&o));
    // The ID number is never stored or shown in full.
    let people = String::from_utf8_lossy(&d.cli(&["resident", "list", "--json"]).stdout).to_string();
    assert!(!people.contains("11010519491231002X") && people.contains("1101**********002X"));
    let raw = std::fs::read_dir(dir.path().join("db")).unwrap().flatten().map(|e| std::fs::read(e.path()).unwrap_or_default()).collect::<Vec<_>>();
    assert!(raw.iter().all(|b| !b.windows(18).any(|w| w == b"11010519491231002X")), "plain ID number on disk");

    let results: Vec<bool> = entries(&d).await.iter().map(|e| e["entry"]["opened"] == true).collect();
    assert_eq!(results, vec![true, true, true, false, true, true, false]);
    assert!(d.cli(&["log", "verify"]).status.success());
    // Every open pulsed the relay (on, then off after the pulse); every decision was published.
    let relay_msgs = eventually("relay pulses", 10, async || {
        let m = relay.messages();
        (m.iter().filter(|(_, p)| p == "off").count() == 5).then_some(m)
    })
    .await;
    assert_eq!(relay_msgs.iter().filter(|(_, p)| p == "on").count(), 5);
    assert!(relay_msgs.iter().all(|(t, _)| t == "shellies/gate-north/relay/0/command"));
    let ev = eventually("7 gate events", 10, async || {
        let m = events.messages();
        (m.len() == 7).then_some(m)
    })
    .await;
    let last: serde_json::Value = serde_json::from_str(&ev[6].1).unwrap();
    assert_eq!(last["entry"]["reason"], "visitor pass expired");
    assert_eq!(last["seq"], 7);
    // After access.visitor_retention (30 days) past the end of the pass, the visitor is purged.
    let visitor = v["id"].as_str().unwrap().to_string();
    d.advance("29d").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(d.get("/people").await.as_array().unwrap().iter().any(|p| p["id"] == visitor.as_str()), "kept inside retention");
    d.advance("2d").await;
    eventually("the visitor purged", 10, async || (!d.get("/people").await.as_array().unwrap().iter().any(|p| p["id"] == visitor.as_str())).then_some(()))
        .await;
}

/// A 720p grey frame with `payload` as a QR code (8 px a module, white quiet
/// zone), like a phone screen held up to the camera, as a PGM file.
fn qr_frame(payload: &str, out: &Path) {
    let code = qrcode::QrCode::new(payload.as_bytes()).unwrap();
    let (w, dark) = (code.width(), code.to_colors());
    let (scale, quiet) = (8, 4);
    let side = (w + 2 * quiet) * scale;
    let (x0, y0) = (500, (720 - side) / 2);
    let mut px = vec![110u8; 1280 * 720];
    for y in 0..side {
        for x in 0..side {
            let (mx, my) = ((x / scale).wrapping_sub(quiet), (y / scale).wrapping_sub(quiet));
            let black = mx < w && my < w && dark[my * w + mx] == qrcode::Color::Dark;
            px[(y0 + y) * 1280 + x0 + x] = if black { 0 } else { 255 };
        }
    }
    let mut pgm = b"P5\n1280 720\n255\n".to_vec();
    pgm.extend(px);
    std::fs::write(out, pgm).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitor_pass_shown_to_the_camera_opens_once_while_it_is_held_up() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    let o = d.cli(&["visitor", "register", "--name", "王五", "--id-number", "11010519491231002X", "--host-unit", "3-401", "--valid-for", "4h", "--json"]);
    assert!(o.status.success(), "{}", out(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(d.terminate().success());
    // Held up for 4 s: read on every analysed frame, one credential per cooldown.
    let (still, video) = (dir.path().join("qr.pgm"), dir.path().join("qr.mp4"));
    qr_frame(v["qr"].as_str().unwrap(), &still);
    let mut c = Command::new(ffmpeg());
    c.args(["-y", "-loglevel", "error", "-loop", "1", "-i"]).arg(&still).args(["-t", "4", "-r", "10"]);
    h264(c, &video);
    play_at_north(&mut d, &config(dir.path(), broker.port, http, ""), &video, 5.0, 40.0, "info").await;
    let m = async |k: &str| d.metric(&format!("gatewarden_camera_{k}{{camera=\"north\"}}")).await;
    let log = entries(&d).await;
    assert_eq!(log.len(), 1, "one decision for a code held up for 4 s: {log:?}");
    let e = &log[0]["entry"];
    assert_eq!((e["credential"].as_str(), e["opened"].as_bool(), e["person"].as_str()), (Some("qr"), Some(true), v["id"].as_str()), "{e}");
    assert!(m("frames_analysed").await >= 5.0, "the code was in view frame after frame");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_enrolment_input_gets_a_clear_reason() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    let corrupt = dir.path().join("corrupt.jpg");
    std::fs::write(&corrupt, b"\xff\xd8\xff\xe0garbage").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--photo".into(), corrupt.display().to_string()], "corrupt"),
        (vec!["--photo".into(), faces.join("couple.jpg").display().to_string()], "faces found"),
        (vec!["--photo".into(), faces.join("img1.jpg").display().to_string()], "consent"),
        (vec!["--photo".into(), "/nonexistent.jpg".into()], "cannot read photo"),
        (vec!["--pin".into(), "12".into()], "4 to 8 digits"),
    ];
    for (extra, want) in cases {
        let mut args = vec!["resident", "add", "--name", "X"];
        let with_consent = !want.contains("consent");
        if with_consent {
            args.extend(["--consent-by", "X", "--consent-how", "form"]);
        }
        args.extend(extra.iter().map(String::as_str));
        let o = d.cli(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(out(&o).contains(want), "{args:?}: expected {want:?} in {}", out(&o));
    }
    let o = d.cli(&["visitor", "register", "--name", "王五", "--id-number", "110105194912310021", "--host-unit", "3-401"]);
    assert!(out(&o).contains("check character is wrong (expected X"), "{}", out(&o));
    assert!(d.get("/people").await.as_array().unwrap().is_empty(), "nothing was half-enrolled");
}

#[tokio::test(flavor = "multi_thread")]
async fn forget_removes_every_trace_and_leaves_an_audit_entry_without_personal_data() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let gates = "[[gates]]\nname = \"north\"\nactuator = { kind = \"log\" }\n";
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config(gates)), http).await;
    // `forget` removes every trace: person, templates, credentials, vehicle, and
    // their name in the entry log; the audit entry names no one.
    let o = d.cli(&[
        "resident",
        "add",
        "--name",
        "赵六",
        "--id",
        "R9",
        "--unit",
        "9-909",
        "--pin",
        "975310",
        "--card",
        "CA11D0009",
        "--photo",
        faces.join("img1.jpg").to_str().unwrap(),
        "--consent-by",
        "赵六",
        "--consent-how",
        "app",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(d.cli(&["vehicle", "add", "--plate", "川A97531", "--owner", "R9"]).status.success());
    assert!(d.cli(&["gate", "present", "north", "--pin", "975310"]).status.success());
    assert!(entries(&d).await.iter().any(|e| e["entry"]["person"] == "R9"), "the passage names R9 before forget");
    let o = d.cli(&["resident", "forget", "R9"]);
    assert!(o.status.success(), "{}", out(&o));
    let audit = d.get("/audit").await;
    let forget = audit.as_array().unwrap().iter().find(|e| e["action"] == "DELETE /people/…").expect("an audit entry for forget").clone();
    assert!(forget["target"].as_str().unwrap().starts_with("person (forgotten) "), "{forget}");
    assert!(d.cli(&["log", "verify"]).status.success(), "the entry log still verifies after the erasure");
    let mut d = d;
    assert!(d.terminate().success());
    // sled never overwrites in place: the old records are still in its files.
    // Sealed under the person's key, which forget shredded, they read as noise.
    let mut files = vec![dir.path().join("db")];
    let mut control = false;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        // A positive control: the passage's gate, stored in the clear, is found.
        control |= bytes.windows(5).any(|w| w == b"north");
        for needle in ["赵六", "9-909", "川A97531"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle:?} in the clear in {}", p.display());
        }
    }
    assert!(control, "the scan reads sled's records (the gate name of the passage was not found)");
    let keys = std::fs::read_to_string(dir.path().join("person.keys")).unwrap();
    assert!(!keys.contains("\"R9\""), "the person's key is shredded: {keys}");
    let s = store::Store::open(&dir.path().join("db")).unwrap();
    assert!(s.template_counts().unwrap().is_empty(), "no face template left");
    assert!(s.get_person("R9").unwrap().is_none());
    for needle in ["R9", "赵六", "9-909", "川A97531"] {
        assert_eq!(s.contains_bytes(needle.as_bytes()).unwrap(), Vec::<String>::new(), "{needle:?} is still in the store");
    }
    assert!(s.entries().unwrap().iter().any(|c| c.entry.person.as_deref() == Some("(forgotten)")), "the passage itself stays, anonymised");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_reconnects_to_an_mjpeg_camera_that_went_away_and_alerts_while_it_is_down() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let clip_path = dir.path().join("cam.mp4");
    clip(&faces.join("img54.jpg"), &clip_path, 2);
    let mut cam = MjpegCamera::start(&clip_path);
    let http = free_port();
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config(&cam.west_gate(&rx.url("/hook")))), http).await;
    let frames = async || d.metric(r#"gatewarden_camera_frames{camera="west"}"#).await;
    eventually("frames from the camera", 30, async || (frames().await > 5.0).then_some(())).await;
    cam.stop();
    eventually("the loss noticed", 30, async || d.log().contains("camera lost; reconnecting").then_some(())).await;
    let alert = eventually("camera offline alert", 30, async || rx.accepted("/hook").into_iter().find(|r| r.text().contains("门禁摄像头离线"))).await;
    assert_eq!(alert.json()["status"], "firing");
    let before = frames().await;
    cam.serve();
    eventually("frames again after the camera came back", 60, async || (frames().await > before + 5.0).then_some(())).await;
    assert!(d.metric(r#"gatewarden_camera_reconnects{camera="west"}"#).await >= 1.0);
    eventually("camera back notice", 30, async || rx.accepted("/hook").into_iter().find(|r| r.json()["status"] == "resolved")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_runs_the_face_networks_while_the_scene_is_empty_and_a_person_wakes_them() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    // An empty gateway: a flat, still scene (real video through ffmpeg and OpenCV).
    let empty = dir.path().join("empty.mp4");
    let st = Command::new(ffmpeg())
        .args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=0x6e6e6e:s=1280x720:r=10", "-t", "3", "-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&empty)
        .status()
        .unwrap();
    assert!(st.success());
    let mut cam = MjpegCamera::start(&empty);
    let http = free_port();
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config(&cam.west_gate(&rx.url("/hook")))), http).await;
    let m = async |k: &str| d.metric(&format!("gatewarden_camera_frames_{k}{{camera=\"west\"}}")).await;
    eventually("still frames skipped", 60, async || (m("still").await >= 10.0).then_some(())).await;
    let analysed = m("analysed").await;
    eventually("more still frames", 60, async || (m("still").await >= 20.0).then_some(())).await;
    assert_eq!(m("analysed").await, analysed, "no network ran while the scene stayed empty");
    assert!(analysed <= 2.0, "only the first frame, which has nothing to compare with: {analysed}");
    // Someone steps in front of the camera: the networks wake.
    cam.stop();
    let person = dir.path().join("person.mp4");
    clip(&faces.join("img54.jpg"), &person, 3);
    cam.clip = person;
    cam.serve();
    eventually("frames analysed again once the scene changes", 60, async || (m("analysed").await > analysed + 2.0).then_some(())).await;
}

/// A 720p clip of a person walking up to the camera: two seconds of empty
/// scene, then the photo growing in the frame (a slow zoom), at 10 fps.
fn walk_up(photo: &Path, out: &Path, secs: u32) {
    walk_up_with(photo, out, secs, "null");
}

/// `walk_up`, with an ffmpeg filter applied to the walk-up part (its time `t` starts at 0).
fn walk_up_with(photo: &Path, out: &Path, secs: u32, filter: &str) {
    let mut c = Command::new(ffmpeg());
    c.args(["-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=0x6e6e6e:s=1280x720:r=10:d=2", "-loop", "1", "-i"]).arg(photo).args([
        "-filter_complex",
        &format!(
            "[1:v]scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2,setsar=1,\
             zoompan=z='min(1+0.004*on,1.3)':x='iw/2-(iw/zoom/2)':y='ih/2-(ih/zoom/2)':d=1:s=1280x720:fps=10,trim=duration={secs},{filter}[p];\
             [0:v][p]concat=n=2:v=1[v]"
        ),
        "-map",
        "[v]",
    ]);
    h264(c, out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tracked_person_is_embedded_once_per_track_and_still_opens_the_gate() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    enrol(&d, "R1", "张三", &faces.join("img1.jpg"));
    // Someone else enrolled too, so the margin over the next person is real.
    enrol(&d, "R2", "李四", &faces.join("img26.jpg"));
    assert!(d.terminate().success());
    let video = dir.path().join("walk.mp4");
    walk_up(&faces.join("img2.jpg"), &video, 5); // another photo of the same person
    play_at_north(&mut d, &config(dir.path(), broker.port, http, ""), &video, 5.0, 60.0, "info").await;
    let m = async |k: &str| d.metric(&format!("gatewarden_camera_{k}{{camera=\"north\"}}")).await;
    let log = entries(&d).await;
    let opened: Vec<_> = log.iter().filter(|e| e["entry"]["opened"] == true).collect();
    assert_eq!(opened.len(), 1, "{log:?}");
    assert_eq!(opened[0]["entry"]["person"], "R1");
    let (tracks, embeds, analysed) = (m("face_tracks").await, m("face_embeddings").await, m("frames_analysed").await);
    assert_eq!(tracks, 1.0, "one person walking up is one track");
    assert_eq!(embeds, 1.0, "a strong match is embedded once per track (analysed {analysed} frames)");
    assert!(analysed >= 10.0, "the track was followed frame after frame: {analysed}");
    // The decision was timed from the track's first frame to the barrier's command.
    assert_eq!(d.metric("gatewarden_gate_face_latency_seconds_count").await, 1.0);
    let latency = d.metric("gatewarden_gate_face_latency_seconds_sum").await;
    assert!(latency > 0.0 && latency < 5.0, "{latency}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_live_on_most_frames_is_let_in_though_the_first_frames_look_like_a_spoof() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    enrol(&d, "R1", "张三", &faces.join("img1.jpg"));
    assert!(d.terminate().success());
    // The camera's IR-cut filter switches as the person arrives: the first two
    // frames with the face are monochrome, which the liveness pair scores as
    // a reproduction. Every frame after is in colour.
    let video = dir.path().join("walk.mp4");
    walk_up_with(&faces.join("img2.jpg"), &video, 5, "hue=s=0:enable='lt(t,0.15)'");
    // Every frame analysed (10 fps), so a slow machine still judges at least
    // one of the two monochrome frames.
    play_at_north(&mut d, &config(dir.path(), broker.port, http, ""), &video, 10.0, 60.0, "info,gatewarden_vision::worker=debug").await;
    // The low frames were judged: the vision process logged their scores.
    let scores: Vec<f32> = d
        .log()
        .lines()
        .filter(|l| l.contains("liveness gate=\"north\""))
        .filter_map(|l| l.split(" score=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    eprintln!("liveness frame by frame: {scores:?}");
    assert!(scores.first().is_some_and(|s| *s < 0.5), "the first frame judged was monochrome and scored low: {scores:?}");
    assert!(scores.iter().filter(|s| **s >= 0.5).count() > scores.len() / 2, "live on most frames: {scores:?}");
    let log = entries(&d).await;
    assert!(log.iter().all(|e| !e["entry"]["reason"].as_str().unwrap_or("").contains("liveness")), "no spoof attempt: {log:?}");
    let opened: Vec<_> = log.iter().filter(|e| e["entry"]["opened"] == true).collect();
    assert_eq!(opened.len(), 1, "{log:?}");
    assert_eq!((opened[0]["entry"]["person"].as_str(), opened[0]["entry"]["credential"].as_str()), (Some("R1"), Some("face")));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_actuator_that_fails_is_logged_and_alerted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let http = free_port();
    let dead = free_port(); // nothing listens here: the barrier controller is down
    let extra = format!(
        "[[gates]]\nname = \"garage\"\nactuator = {{ kind = \"http\", url = \"http://127.0.0.1:{dead}/open\" }}\n\
         [[alert.channels]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\n[[alert.ladder]]\nname = \"物业\"\nchannels = [\"hook\"]\n",
        rx.url("/hook")
    );
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &extra), http).await;
    assert!(d.cli(&["resident", "add", "--name", "李四", "--pin", "1357"]).status.success());
    let o = d.cli(&["gate", "present", "garage", "--pin", "1357"]);
    assert!(o.status.success(), "the decision is to open: {}", out(&o));
    let a = eventually("actuator failure alert", 10, async || rx.accepted("/hook").into_iter().find(|r| r.text().contains("门禁开闸故障"))).await;
    assert!(a.text().contains("garage"));
    assert!(d.log().contains("ACTUATOR FAILED"));
}

#[tokio::test(flavor = "multi_thread")]
async fn face_templates_are_sealed_at_rest_and_recognition_survives_a_key_rotation() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &gate_config("")), http).await;
    let o = d.cli(&[
        "resident",
        "add",
        "--name",
        "张三",
        "--id",
        "R1",
        "--photo",
        faces.join("img1.jpg").to_str().unwrap(),
        "--consent-by",
        "张三",
        "--consent-how",
        "paper form",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let key_file = dir.path().join("template.key");
    let before = std::fs::read_to_string(&key_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600, "readable only by the service user");
    let o = d.cli(&["keys", "rotate"]);
    assert!(o.status.success() && out(&o).contains("1 template(s) re-sealed"), "{}", out(&o));
    let after = std::fs::read_to_string(&key_file).unwrap();
    assert_ne!(before, after);
    assert_eq!(after.lines().count(), 1, "the old key is gone once everything is re-sealed");
    assert!(d.terminate().success());
    {
        // What someone with only the database gets: sealed bytes, no templates.
        let s = store::Store::open(&dir.path().join("db")).unwrap();
        assert!(s.raw_templates().unwrap().iter().all(|t| t.starts_with(b"GWE1")));
        assert!(s.templates().is_err(), "no key, no templates");
        let old = store::TemplateKeys { current: <[u8; 32]>::try_from(hex::decode(before.trim()).unwrap()).unwrap(), previous: None };
        s.set_template_keys(old);
        assert!(s.templates().is_err(), "the rotated-out key opens nothing");
    }
    // Recognition still works with the new key: the gate opens for R1 from video.
    let clip_path = dir.path().join("r1.mp4");
    clip(&faces.join("img2.jpg"), &clip_path, 6);
    let gates = format!("[[gates]]\nname = \"north\"\ncamera = \"{}\"\nactuator = {{ kind = \"log\" }}\n", clip_path.display());
    std::fs::write(&d.config, config(dir.path(), broker.port, http, &gate_config(&gates))).unwrap();
    d.restart().await;
    let e = eventually("the gate opened by face", 60, async || {
        entries(&d).await.into_iter().find(|e| e["entry"]["opened"] == true && e["entry"]["credential"] == "face")
    })
    .await;
    assert_eq!(e["entry"]["person"], "R1");
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_purges_old_records_and_the_compliance_report_shows_what_an_inspector_asks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let extra =
        "[access]\nentry_log_retention = \"30d\"\nleave_retention = \"10d\"\ncooldown = \"1s\"\n[[gates]]\nname = \"north\"\nactuator = { kind = \"log\" }\n";
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, extra), http).await;
    assert!(d.cli(&["resident", "add", "--name", "李四", "--id", "R1", "--pin", "2468"]).status.success());
    assert!(d.cli(&["resident", "add", "--name", "王五", "--id", "R2"]).status.success());
    for _ in 0..3 {
        assert!(d.cli(&["gate", "present", "north", "--pin", "2468"]).status.success());
    }
    d.post("/elders", serde_json::json!({"id": "E1", "name": "张三"})).await;
    let now = d.advance("1s").await;
    let until = (chrono::DateTime::parse_from_rfc3339(&now).unwrap() + chrono::Duration::days(1)).to_rfc3339();
    d.post("/leaves", serde_json::json!({"elder": "E1", "until": until})).await;

    let report = String::from_utf8_lossy(&d.cli(&["compliance", "report"]).stdout).to_string();
    assert!(report.contains("Residents without a face-free way in (PIN, card or vehicle): R2"), "{report}");
    assert!(report.contains("entry_log: 30days"), "{report}");

    d.advance("40d").await;
    eventually("the entry log purged", 10, async || d.get("/log").await.as_array().unwrap().is_empty().then_some(())).await;
    assert!(d.get("/leaves").await.as_array().unwrap().is_empty(), "the ended leave is purged");
    // The chain still verifies from its anchor, before and after new records.
    assert!(d.cli(&["log", "verify"]).status.success());
    assert!(d.cli(&["gate", "present", "north", "--pin", "2468"]).status.success());
    let o = d.cli(&["log", "verify"]);
    assert!(o.status.success() && out(&o).contains("1 record(s)"), "{}", out(&o));
    assert_eq!(d.get("/log").await[0]["seq"], 4);
    assert_eq!(d.metric(r#"gatewarden_purged_total{kind="entry_log"}"#).await, 3.0);
    let v = d.get("/compliance").await;
    let entry_purge = v["last_purges"].as_array().unwrap().iter().find(|p| p["what"] == "entry_log").cloned().unwrap();
    assert_eq!(entry_purge["removed"], 3);
}

/// The vision process's children of the daemon (one at a time).
fn vision_child(daemon: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == daemon && stat.contains("(gatewarden-visi")).then_some(pid)
    })
}

/// A vision process stopped with SIGSTOP (as native code that hangs) used to
/// leave its cameras "connected" with no alert. Now the daemon notices the
/// missing heartbeats, raises camera-offline, kills and restarts the process,
/// and the camera comes back.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_vision_process_is_restarted_and_its_cameras_count_as_offline_meanwhile() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let rx = Receiver::start().await;
    let clip_path = dir.path().join("cam.mp4");
    clip(&faces.join("img54.jpg"), &clip_path, 2);
    let mut cam = MjpegCamera::start(&clip_path);
    let http = free_port();
    let text =
        config(dir.path(), broker.port, http, &gate_config(&cam.west_gate(&rx.url("/hook")))).replace("[vision]\n", "[vision]\nheartbeat_timeout = \"4s\"\n");
    let d = Daemon::start(dir.path(), &text, http).await;
    let connected = async || d.metric(r#"gatewarden_camera_connected{camera="west"}"#).await;
    eventually("frames from the camera", 30, async || (d.metric(r#"gatewarden_camera_frames{camera="west"}"#).await > 5.0).then_some(())).await;
    let frozen = vision_child(d.pid()).expect("the vision process");
    assert_eq!(unsafe { libc::kill(frozen as i32, libc::SIGSTOP) }, 0);
    let alert =
        eventually("camera offline alert while vision is frozen", 30, async || rx.accepted("/hook").into_iter().find(|r| r.text().contains("门禁摄像头离线")))
            .await;
    assert_eq!(alert.json()["status"], "firing");
    assert_eq!(connected().await, 0.0, "a frozen process's camera is not \"connected\"");
    eventually("the frozen process killed and another started", 30, async || {
        let gone = std::fs::read_to_string(format!("/proc/{frozen}/stat")).map_or(true, |s| s.contains(") Z"));
        (gone && vision_child(d.pid()).is_some_and(|p| p != frozen)).then_some(())
    })
    .await;
    assert!(d.log().contains("stopped answering heartbeats"), "{}", d.log());
    // The camera served one client, the frozen one: serve the new process.
    cam.stop();
    cam.serve();
    eventually("the restarted process's camera connected", 60, async || (connected().await == 1.0).then_some(())).await;
    eventually("camera back notice", 30, async || rx.accepted("/hook").into_iter().find(|r| r.json()["status"] == "resolved")).await;
}
