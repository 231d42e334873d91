//! Plates end to end: a real video through the vision process lifts the
//! barrier for an enrolled car, once, and never for an unknown one.

mod common;
use common::shared_testdata;
use std::path::Path;

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn clip(photo: &Path, out_path: &Path) {
    let st = std::process::Command::new("ffmpeg")
        .args(["-y", "-loglevel", "error", "-loop", "1", "-i"])
        .arg(photo)
        .args([
            "-t",
            "6",
            "-r",
            "10",
            "-vf",
            "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(out_path)
        .status()
        .expect("ffmpeg is installed by `bash deploy/gw.sh test`");
    assert!(st.success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_video_of_an_enrolled_car_lifts_the_barrier_exactly_once_and_an_unknown_car_never() {
    let Some(plates) = shared_testdata("plates") else { return };
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Mosquitto::start();
    let http = common::free_port();
    let models = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models");
    let base = |gates: &str| {
        common::config(dir.path(), broker.port, http, &format!("[vision]\nmodels_dir = \"{}\"\n[access]\ncooldown = \"60s\"\n{gates}", models.display()))
    };
    let barrier = "[[gates]]\nname = \"barrier\"\nactuator = { kind = \"log\" }\n";
    let mut d = common::Daemon::start(dir.path(), &base(barrier), http).await;
    assert!(d.cli(&["resident", "add", "--name", "车主", "--id", "R1", "--pin", "8642"]).status.success());
    let o = d.cli(&["vehicle", "add", "--plate", "川A35D98", "--owner", "R1"]);
    assert!(o.status.success(), "{}", out(&o));
    let o = d.cli(&["vehicle", "add", "--plate", "川A35O98", "--owner", "R1"]);
    assert!(out(&o).contains("may not appear in the serial"), "a bad plate names the rule: {}", out(&o));
    assert!(d.terminate().success());

    clip(&plates.join("plate02.jpg"), &dir.path().join("enrolled.mp4")); // 川A35D98
    clip(&plates.join("plate03.jpg"), &dir.path().join("unknown.mp4")); // 晋H41014
    let gates = format!(
        "[[gates]]\nname = \"barrier\"\ncamera = \"{}\"\nread_faces = false\nread_plates = true\nactuator = {{ kind = \"log\" }}\n\
         [[gates]]\nname = \"exit\"\ncamera = \"{}\"\nread_faces = false\nread_plates = true\nactuator = {{ kind = \"log\" }}\n",
        dir.path().join("enrolled.mp4").display(),
        dir.path().join("unknown.mp4").display()
    );
    std::fs::write(&d.config, base(&gates)).unwrap();
    d.restart().await;
    common::eventually("both clips played", 90, async || {
        for g in ["barrier", "exit"] {
            if d.metric(&format!("gatewarden_camera_frames{{camera=\"{g}\"}}")).await < 55.0
                || d.metric(&format!("gatewarden_camera_connected{{camera=\"{g}\"}}")).await != 0.0
            {
                return None;
            }
        }
        Some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let log = d.get("/log").await;
    let at = |g: &str| log.as_array().unwrap().iter().map(|e| e["entry"].clone()).filter(|e| e["gate"] == g).collect::<Vec<_>>();
    let b = at("barrier");
    assert_eq!(b.len(), 1, "one decision for a car waiting at the barrier: {b:?}");
    assert_eq!((b[0]["opened"].as_bool(), b[0]["credential"].as_str(), b[0]["person"].as_str()), (Some(true), Some("plate"), Some("R1")));
    assert!(b[0]["reason"].as_str().unwrap().contains("川A35D98"));
    let x = at("exit");
    assert!(!x.is_empty() && x.iter().all(|e| e["opened"] == false), "{x:?}");
    assert_eq!(x[0]["reason"], "unknown vehicle 晋H41014");
    // Each car was followed on every analysed frame, and read only until its
    // reads confirmed it, then once a second (6 s in view).
    for g in ["barrier", "exit"] {
        let analysed = d.metric(&format!("gatewarden_camera_frames_analysed{{camera=\"{g}\"}}")).await;
        let reads = d.metric(&format!("gatewarden_camera_plate_reads{{camera=\"{g}\"}}")).await;
        eprintln!("{g}: {reads} plate reads over {analysed} analysed frames");
        assert!(analysed >= 20.0, "{g}: the parked car stayed analysed though nothing moved: {analysed}");
        assert!((3.0..=12.0).contains(&reads), "{g}: {reads} OCR runs over {analysed} analysed frames");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_visitors_plate_works_inside_the_pass_window_and_not_after() {
    let dir = tempfile::tempdir().unwrap();
    let broker = common::Mosquitto::start();
    let http = common::free_port();
    let text = common::config(dir.path(), broker.port, http, "[[gates]]\nname = \"barrier\"\nactuator = { kind = \"log\" }\n");
    let d = common::Daemon::start(dir.path(), &text, http).await;
    let o = d.cli(&[
        "visitor",
        "register",
        "--name",
        "王五",
        "--id-number",
        "11010519491231002X",
        "--host-unit",
        "3-401",
        "--valid-for",
        "4h",
        "--plate",
        "川B12345",
    ]);
    assert!(o.status.success(), "{}", out(&o));
    let o = d.cli(&["gate", "present", "barrier", "--plate", "川B12345"]);
    assert!(o.status.success(), "{}", out(&o));
    d.advance("4h").await;
    // The car left and came back later: a new decision, now refused.
    let o = d.cli(&["gate", "present", "barrier", "--plate", "川B12345"]);
    assert_eq!(o.status.code(), Some(3), "{}", out(&o));
    assert!(out(&o).contains("expired"), "{}", out(&o));
    let o = d.cli(&["visitor", "register", "--name", "赵六", "--id-number", "11010519491231002X", "--host-unit", "3-401", "--plate", "川B1234"]);
    assert!(out(&o).contains("invalid plate") && out(&o).contains("7 characters"), "{}", out(&o));
}
