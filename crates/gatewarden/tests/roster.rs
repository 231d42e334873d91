//! `gatewarden roster import|export` against the real daemon and the real face
//! models: a dry run names every bad row with its reason and imports nothing,
//! a file with bad rows is refused whole, a good XLSX imports whole, and the
//! export writes the same format back without any biometric data.

mod common;
use common::*;
use serde_json::json;
use std::path::Path;

const HEADER: &str = "kind,id,name,unit,building,room,grid,phone,id_number,photo,pin,card,plate,owner,band,elder,categories,contacts,consent_by,consent_how";

fn out(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_names_every_bad_row_and_a_real_import_is_all_or_nothing() {
    let (Some(faces), Some(plates)) = (shared_testdata("faces/people"), shared_testdata("plates")) else { return };
    let dir = tempfile::tempdir().unwrap();
    let photos = dir.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for (from, to) in [(faces.join("img1.jpg"), "wang.jpg"), (faces.join("couple.jpg"), "couple.jpg"), (plates.join("plate00.jpg"), "car.jpg")] {
        std::fs::copy(from, photos.join(to)).unwrap();
    }
    std::fs::write(dir.path().join("units.txt"), "# the compound's units\n1-101\n3-401\n3-402\n").unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let models = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models");
    let extra =
        format!("[vision]\nenabled = true\nmodels_dir = \"{}\"\n[access]\nunits_file = \"{}\"\n", models.display(), dir.path().join("units.txt").display());
    let d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, &extra), http).await;
    d.post("/elders", json!({"id": "E9", "name": "老人E9", "bands": ["c3a1f0009999"]})).await;

    let rows = [
        "resident,R1,王建国,3-401,,,,,11010519491231002X,wang.jpg,135790,,,,,,,,王建国,纸质同意书",
        "resident,R2,李四,3-401,,,,,110105194912310021,,,,,,,,,,,",
        "resident,R3,两个人,3-401,,,,,,couple.jpg,,,,,,,,,张三,app",
        "resident,R4,没有脸,3-401,,,,,,car.jpg,,,,,,,,,张三,app",
        "resident,R5,错房号,9-999,,,,,,,,,,,,,,,,",
        "elder,E1,张桂兰,3-402,3栋,402,g1,13800001111,,,,,,,C3:A1:F0:00:11:01,,over70;alone,王丽:13800002222:女儿,,",
        "wristband,,,,,,,,,,,,,,C3:A1:F0:00:11:01,E1,,,,",
        "wristband,,,,,,,,,,,,,,C3:A1:F0:00:99:99,E1,,,,",
        "vehicle,,,,,,,,,,,,川A1234,R1,,,,,,",
        "vehicle,,,,,,,,,,,,川A12345,R1,,,,,,",
    ];
    let bad = dir.path().join("roster.csv");
    std::fs::write(&bad, format!("{HEADER}\n{}\n", rows.join("\n"))).unwrap();

    // Dry run: every bad row with its reason; nothing imported.
    let o = d.cli(&["roster", "import", bad.to_str().unwrap(), "--photos", photos.to_str().unwrap(), "--dry-run"]);
    let text = out(&o);
    assert!(!o.status.success(), "{text}");
    for (line, reason) in [
        (3, "invalid ID number"),
        (4, "2 faces"),
        (5, "no face"),
        (6, "unknown unit \"9-999\""),
        (8, "duplicate wristband C3:A1:F0:00:11:01: appears twice in the file"),
        (9, "duplicate wristband C3:A1:F0:00:99:99: already bound to elder E9"),
        (10, "invalid plate \"川A1234\""),
    ] {
        let l = text.lines().find(|l| l.starts_with(&format!("line {line}:"))).unwrap_or_else(|| panic!("no report for line {line}:\n{text}"));
        assert!(l.contains(reason), "line {line}: expected {reason:?} in {l:?}");
    }
    for good in [2, 7, 11] {
        assert!(!text.contains(&format!("line {good}:")), "line {good} is good:\n{text}");
    }
    assert!(text.contains("rows checked"), "progress is shown: {text}");
    assert!(text.contains("nothing imported"), "{text}");
    assert!(d.get("/people").await.as_array().unwrap().is_empty());
    assert_eq!(d.get("/elders").await.as_array().unwrap().len(), 1);

    // A real import of the same file: refused whole.
    let o = d.cli(&["roster", "import", bad.to_str().unwrap(), "--photos", photos.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(out(&o).contains("nothing was imported"), "{}", out(&o));
    assert!(d.get("/people").await.as_array().unwrap().is_empty(), "all or nothing");
    assert!(d.get("/vehicles").await.as_array().unwrap().is_empty());

    // The good rows, as an XLSX file: imported whole.
    let cols: Vec<String> = HEADER.split(',').map(String::from).collect();
    let good: Vec<Vec<String>> = [rows[0], rows[5], rows[9]].iter().map(|r| r.split(',').map(String::from).collect()).collect();
    let xlsx = dir.path().join("good.xlsx");
    gatewarden::admin::roster::write_file(&xlsx, &cols, &good).unwrap();
    let o = d.cli(&["roster", "import", xlsx.to_str().unwrap(), "--photos", photos.to_str().unwrap()]);
    assert!(o.status.success(), "{}", out(&o));
    assert!(out(&o).contains("imported"), "{}", out(&o));
    let people = d.get("/people").await;
    let r1 = &people[0];
    assert_eq!((r1["id"].as_str(), r1["faces"].as_u64(), r1["pin"].as_bool()), (Some("R1"), Some(1), Some(true)), "{r1}");
    assert_eq!(r1["id_masked"], "1101**********002X");
    let e1 = d.get("/elders/E1").await;
    assert_eq!(e1["elder"]["bands"], json!(["C3:A1:F0:00:11:01"]), "{e1}");
    assert_eq!(d.get("/vehicles").await[0]["plate"], "川A12345");
    // The imported wristband is live: a sighting reaches E1.
    let p = broker.publisher().await;
    p.publish("home/gw/BTtoMQTT/C3A1F0001101", r#"{"id":"C3:A1:F0:00:11:01"}"#).await;
    eventually("E1 seen through the imported band", 10, async || (d.last_seen("E1").await["place"] == "gw").then_some(())).await;

    // Export, both formats: the same columns, the same people, no biometrics.
    for f in ["export.csv", "export.xlsx"] {
        let path = dir.path().join(f);
        let o = d.cli(&["roster", "export", path.to_str().unwrap()]);
        assert!(o.status.success(), "{}", out(&o));
        let back = gatewarden::admin::roster::read_file(&path).unwrap();
        let kinds: Vec<String> = back.iter().map(|r| format!("{}:{}{}", r.cells["kind"], r.cells["id"], r.cells["plate"])).collect();
        for want in ["resident:R1", "elder:E1", "elder:E9", "vehicle:川A12345"] {
            assert!(kinds.iter().any(|k| k == want), "{f}: {want} missing from {kinds:?}");
        }
        assert!(
            back.iter().all(|r| r.cells["photo"].is_empty() && r.cells["pin"].is_empty() && r.cells["id_number"].is_empty()),
            "{f}: no photos, PINs or ID numbers"
        );
        let e1 = back.iter().find(|r| r.cells["id"] == "E1").unwrap();
        assert_eq!((e1.cells["band"].as_str(), e1.cells["contacts"].as_str()), ("C3:A1:F0:00:11:01", "王丽:13800002222:女儿"));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_9_in_the_middle_of_an_import_leaves_nothing_half_imported() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::start();
    let http = free_port();
    let mut d = Daemon::start(dir.path(), &config(dir.path(), broker.port, http, ""), http).await;
    let import = d.post("/roster/imports", json!(null)).await["import"].as_str().unwrap().to_string();
    let rows: Vec<serde_json::Value> = (0..20)
        .map(
            |i| json!({"line": i + 2, "cells": {"kind": "elder", "id": format!("E{i}"), "name": format!("老人{i}"), "band": format!("C3:A1:F0:00:20:{i:02}")}}),
        )
        .collect();
    let v = d.post(&format!("/roster/imports/{import}/rows"), json!(rows[..10])).await;
    assert_eq!(v["errors"], json!([]));
    // Killed after half the rows were checked, before the commit.
    d.kill9();
    d.restart().await;
    assert!(d.get("/elders").await.as_array().unwrap().is_empty(), "nothing half-imported");
    // The staged import is gone with the process, and the answer says so.
    let (code, body) = d.api(reqwest::Method::POST, &format!("/roster/imports/{import}/commit"), None).await;
    assert_eq!(code, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("no import"), "{body}");
    // Starting again imports everything.
    let import = d.post("/roster/imports", json!(null)).await["import"].as_str().unwrap().to_string();
    d.post(&format!("/roster/imports/{import}/rows"), json!(rows)).await;
    let v = d.post(&format!("/roster/imports/{import}/commit"), json!(null)).await;
    assert_eq!(v["imported"], true, "{v}");
    assert_eq!(d.get("/elders").await.as_array().unwrap().len(), 20);
}
