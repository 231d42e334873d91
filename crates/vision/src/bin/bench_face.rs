//! `gatewarden-bench-face`: latency from frame available to gate decision at
//! 720p with one face, broken down by stage, and 1:N matching against 50,000
//! enrolled embeddings. Prints JSON lines and a Markdown table.
//!
//! Run with `bash deploy/gw.sh bench` (which also times the Python reference
//! pipeline on the same frames and reports the ratio).

use gatewarden_vision::matcher::{normalize, Gallery, DIM};
use gatewarden_vision::pipeline::{FacePipeline, Timings};
use std::time::{Duration, Instant};

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let get = |k: &str, d: &str| args.iter().position(|a| a == k).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| d.to_string());
    let models = std::path::PathBuf::from(get("--models", "models"));
    let frame_path = get("--frame", "");
    let plate_frame = get("--plate-frame", "");
    let iters: usize = get("--iters", "100").parse()?;
    let threads: usize = get("--threads", "2").parse()?;

    if !plate_frame.is_empty() {
        return plates(&models, &plate_frame, iters, threads);
    }
    anyhow::ensure!(!frame_path.is_empty(), "--frame FILE.jpg (a 720p frame with one face) or --plate-frame FILE.jpg is required");
    let mut p = FacePipeline::load(&models, None, threads)?;
    let jpeg = std::fs::read(&frame_path)?;
    // The gallery: 50,000 random unit vectors plus the person in the frame.
    let mut g = Gallery::default();
    let mut seed = 0x2545F4914F6CDD1Du64;
    for i in 0..50_000 {
        let mut v: Vec<f32> = (0..DIM)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed % 2000) as f32 / 1000.0 - 1.0
            })
            .collect();
        normalize(&mut v);
        g.add(&format!("P{i}"), &v);
    }
    let first = gatewarden_vision::image::decode(&jpeg, &frame_path)?;
    let mut t = Timings::default();
    let faces = p.analyse(&first, true, &mut t)?;
    anyhow::ensure!(faces.len() == 1 && faces[0].embedding.is_some(), "the frame must hold exactly one usable face (found {})", faces.len());
    g.add("target", faces[0].embedding.as_deref().expect("checked"));

    let (mut total, mut decode, mut detect, mut align, mut embed, mut live, mut mat) = (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for _ in 0..iters {
        let t0 = Instant::now();
        let img = gatewarden_vision::image::decode(&jpeg, "frame")?;
        let td = t0.elapsed();
        let mut t = Timings::default();
        let faces = p.analyse(&img, true, &mut t)?;
        let tm = Instant::now();
        let m = g.best(faces[0].embedding.as_deref().expect("face")).expect("match");
        let tmatch = tm.elapsed();
        assert_eq!(m.person, "target");
        total.push(ms(t0.elapsed()));
        decode.push(ms(td));
        detect.push(ms(t.detect));
        align.push(ms(t.align));
        embed.push(ms(t.embed));
        live.push(ms(t.liveness));
        mat.push(ms(tmatch));
    }
    // Tracked: one person in view for TRACK analysed frames (2 s at 5 fps).
    // The tracker embeds once and runs liveness on the first
    // vision.track_liveness_frames frames; every frame is detected. This is
    // the per-frame cost the box pays at a gate, where the reference pays
    // the full path on every frame.
    const TRACK: usize = 10;
    let live_frames = config::VisionConfig::default().track_liveness_frames;
    let mut tracked = vec![];
    for _ in 0..(iters / TRACK).max(1) {
        let mut tracker = gatewarden_vision::track::Tracker::default();
        for _ in 0..TRACK {
            let t0 = Instant::now();
            let img = gatewarden_vision::image::decode(&jpeg, "frame")?;
            let mut t = Timings::default();
            let dets = p.detect(&img, &mut t)?;
            let boxes: Vec<[f32; 4]> = dets.iter().map(|d| d.bbox).collect();
            let ids = tracker.update(&boxes, t0);
            let (d, id) = dets.into_iter().zip(ids).next().expect("a face");
            let tr = tracker.get_mut(id).expect("tracked");
            let (we, wl) = (tr.identity.is_none(), tr.wants_liveness(live_frames, 0.5));
            let f = p.examine(&img, d, we, wl, &mut t)?;
            if let Some(e) = f.embedding.as_deref() {
                let (m, margin) = g.best_with_margin(e).expect("match");
                assert_eq!(m.person, "target");
                tr.identified(gatewarden_vision::track::Identity { person: Some(m.person), score: m.score, margin, strong: true }, t0);
            }
            if let Some(l) = f.liveness {
                tr.add_liveness(l, live_frames);
            }
            tracked.push(ms(t0.elapsed()));
        }
    }
    let tracked_mean = tracked.iter().sum::<f64>() / tracked.len() as f64;
    let rss = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    println!("| stage | p50 ms | p95 ms |");
    println!("|---|---|---|");
    for (name, v) in [
        ("decode (JPEG → BGR)", &mut decode),
        ("detect (YuNet)", &mut detect),
        ("align + quality", &mut align),
        ("embed (SFace)", &mut embed),
        ("liveness (2× MiniFASNet)", &mut live),
        ("match (1:50,001)", &mut mat),
        ("**frame → decision**", &mut total),
    ] {
        println!("| {name} | {:.2} | {:.2} |", pct(v, 0.5), pct(v, 0.95));
    }
    println!("| **tracked: mean per frame over a {TRACK}-frame track** | {tracked_mean:.2} (mean) | {:.2} |", pct(&mut tracked.clone(), 0.95));
    println!(
        "\nJSON {{\"p50_ms\": {:.2}, \"p95_ms\": {:.2}, \"tracked_mean_ms\": {tracked_mean:.2}, \"match_p50_ms\": {:.3}, \"peak_rss_kb\": {rss}, \"iters\": {iters}, \"threads\": {threads}}}",
        pct(&mut total, 0.5),
        pct(&mut total, 0.95),
        pct(&mut mat, 0.5)
    );
    Ok(())
}

/// Per-frame plate latency at 720p with one plate: detection + warp + reading + colour.
fn plates(models: &std::path::Path, frame: &str, iters: usize, threads: usize) -> anyhow::Result<()> {
    let mut r = gatewarden_vision::plate::PlateReader::load(models, None, threads)?;
    let jpeg = std::fs::read(frame)?;
    let img = gatewarden_vision::image::decode(&jpeg, frame)?;
    let first = r.read(&img)?;
    anyhow::ensure!(first.len() == 1, "the frame must show exactly one plate (found {})", first.len());
    let (mut total, mut det) = (vec![], vec![]);
    for _ in 0..iters {
        let t0 = Instant::now();
        let d = r.detect(&img)?;
        det.push(t0.elapsed().as_secs_f64() * 1000.0);
        let t1 = Instant::now();
        let reads = r.read(&img)?; // detection again, then warp, OCR and colour
        let read_ms = t1.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(reads[0].text, first[0].text);
        assert_eq!(d.len(), 1);
        total.push(read_ms);
    }
    println!("plate {} ({:?})", first[0].text, first[0].colour);
    println!("| stage | p50 ms | p95 ms |");
    println!("|---|---|---|");
    let mut rest: Vec<f64> = total.iter().zip(&det).map(|(t, d)| (t - d).max(0.0)).collect();
    println!("| detect (y5fu 320) | {:.2} | {:.2} |", pct(&mut det.clone(), 0.5), pct(&mut det.clone(), 0.95));
    println!("| warp + OCR + colour | {:.2} | {:.2} |", pct(&mut rest.clone(), 0.5), pct(&mut rest, 0.95));
    println!("| **frame → plate** | {:.2} | {:.2} |", pct(&mut total.clone(), 0.5), pct(&mut total.clone(), 0.95));
    // Tracked: a car in view for TRACK analysed frames (2 s at 5 fps). Every
    // frame is detected; the plate is read until its reads confirm it as the
    // gate policy would (access.plate_votes), then once a second.
    const TRACK: usize = 10;
    let settings = domain::gate::policy::Settings::default();
    let (mut tracked, mut ocr) = (vec![], 0u64);
    for _ in 0..(iters / TRACK).max(1) {
        let mut tracker = gatewarden_vision::track::PlateTracker::new(&settings);
        let start = Instant::now();
        for i in 0..TRACK {
            let at = start + Duration::from_millis(200 * i as u64);
            let t0 = Instant::now();
            let dets = r.detect(&img)?;
            let ids = tracker.update(&dets.iter().map(|d| d.bbox).collect::<Vec<_>>());
            for (d, id) in dets.into_iter().zip(ids) {
                if tracker.wants_read(id, at) {
                    let x = r.read_detection(&img, d)?;
                    assert_eq!(x.text, first[0].text);
                    tracker.read(id, Some((&x.text, x.confidence, x.province_confidence)), at);
                }
            }
            tracked.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        ocr += tracker.reads;
    }
    let tracked_mean = tracked.iter().sum::<f64>() / tracked.len() as f64;
    let reads_per_track = ocr as f64 / (iters / TRACK).max(1) as f64;
    println!(
        "| **tracked: mean per frame over a {TRACK}-frame track ({reads_per_track:.1} reads)** | {tracked_mean:.2} (mean) | {:.2} |",
        pct(&mut tracked.clone(), 0.95)
    );
    println!(
        "\nJSON {{\"p50_ms\": {:.2}, \"p95_ms\": {:.2}, \"tracked_mean_ms\": {tracked_mean:.2}, \"reads_per_track\": {reads_per_track:.1}, \"iters\": {iters}, \"threads\": {threads}}}",
        pct(&mut total.clone(), 0.5),
        pct(&mut total, 0.95)
    );
    Ok(())
}
