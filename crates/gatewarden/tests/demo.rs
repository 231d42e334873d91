//! The README's first command runs `gatewarden demo`: it must play its whole
//! scenario, and play it again on a second run (it moves its clock two days
//! forward, so a stale store would break a re-run).

mod common;
use common::*;
use std::path::Path;

#[test]
fn the_demo_plays_its_scenario_and_plays_it_again() {
    if shared_testdata("faces/people").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    // The shipped demo config, with its store, video and ports moved aside.
    let (http, sink, mqtt) = (free_port(), free_port(), free_port());
    let cfg = std::fs::read_to_string(root.join("config/demo.toml"))
        .unwrap()
        .replace("target/demo/db", &dir.path().join("db").display().to_string())
        .replace("target/demo/gate-north.mp4", &dir.path().join("gate-north.mp4").display().to_string())
        .replace("127.0.0.1:8470", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:8471", &format!("127.0.0.1:{sink}"))
        .replace("127.0.0.1:18830", &format!("127.0.0.1:{mqtt}"));
    let config = dir.path().join("demo.toml");
    std::fs::write(&config, cfg).unwrap();
    for run in 1..=2 {
        let o = std::process::Command::new(bin()).args(["demo", "--exit-after-scenario", "--config"]).arg(&config).current_dir(root).output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
        assert!(o.status.success(), "run {run}:\n{text}");
        for want in ["Demo complete: 3 messages reached the webhook sink", "face recognised: gate opened", "PIN 246810 → opened", "QR pass → opened"] {
            assert!(text.contains(want), "run {run}: {want:?} missing:\n{text}");
        }
    }
    // A store the demo did not make is never deleted.
    let other = dir.path().join("other");
    std::fs::create_dir_all(other.join("db")).unwrap();
    let cfg2 = std::fs::read_to_string(&config).unwrap().replace(&dir.path().join("db").display().to_string(), &other.join("db").display().to_string());
    std::fs::write(&config, cfg2).unwrap();
    let o = std::process::Command::new(bin()).args(["demo", "--exit-after-scenario", "--config"]).arg(&config).current_dir(root).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("was not made by the demo"));
    assert!(other.join("db").exists());
}
