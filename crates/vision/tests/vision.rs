//! The face pipeline on real photos with the real ONNX models: recognition
//! accuracy (TAR/FAR over all pairs), liveness, and clear errors for bad photos.

mod testdata;
use gatewarden_vision::matcher::cosine;
use gatewarden_vision::pipeline::{FacePipeline, Rejection};
use gatewarden_vision::{image, VisionError};
use std::path::{Path, PathBuf};
use testdata::shared_testdata;

fn models() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models")
}

fn pipeline() -> FacePipeline {
    FacePipeline::load(&models(), None, 2).unwrap_or_else(|e| panic!("{e}"))
}

/// The match threshold documented in README.md (cosine similarity).
const THRESHOLD: f32 = gatewarden_vision::DEFAULT_MATCH_THRESHOLD;

#[test]
fn recognition_on_shared_faces_meets_tar_and_far_targets() {
    let Some(dir) = shared_testdata("faces/people") else { return };
    let mut p = pipeline();
    let csv = std::fs::read_to_string(dir.join("identities.csv")).unwrap();
    let mut photos: Vec<(String, Vec<f32>)> = Vec::new();
    for line in csv.lines().skip(1).filter(|l| !l.is_empty()) {
        let (file, id) = line.split_once(',').unwrap();
        let img = image::load(&dir.join(file)).unwrap();
        // Some photos show bystanders too: the identity is the largest face.
        let dets = p.detector.detect(&img).unwrap();
        let d = dets.iter().max_by(|a, b| (a.bbox[2] * a.bbox[3]).total_cmp(&(b.bbox[2] * b.bbox[3]))).unwrap_or_else(|| panic!("{file}: no face"));
        let e = p.embedder.embed(&gatewarden_vision::face::align(&img, d).unwrap()).unwrap();
        photos.push((id.to_string(), e));
    }
    // Enrol each identity from its first photo; match every other photo against every enrolment.
    let mut enrolled: Vec<(String, usize)> = Vec::new();
    for (i, (id, _)) in photos.iter().enumerate() {
        if !enrolled.iter().any(|(e, _)| e == id) {
            enrolled.push((id.clone(), i));
        }
    }
    let (mut genuine, mut accepted, mut impostor, mut false_accepts) = (0, 0, 0, 0);
    for (i, (id, probe)) in photos.iter().enumerate() {
        if enrolled.iter().any(|(_, j)| *j == i) {
            continue;
        }
        for (eid, j) in &enrolled {
            let s = cosine(probe, &photos[*j].1);
            if eid == id {
                genuine += 1;
                accepted += (s >= THRESHOLD) as usize;
            } else {
                impostor += 1;
                false_accepts += (s >= THRESHOLD) as usize;
            }
        }
    }
    // And every pair of photos, for the FAR "over all pairs".
    let (mut all_imp, mut all_fa, mut all_gen, mut all_acc) = (0, 0, 0, 0);
    for i in 0..photos.len() {
        for j in i + 1..photos.len() {
            let s = cosine(&photos[i].1, &photos[j].1);
            if photos[i].0 == photos[j].0 {
                all_gen += 1;
                all_acc += (s >= THRESHOLD) as usize;
            } else {
                all_imp += 1;
                all_fa += (s >= THRESHOLD) as usize;
            }
        }
    }
    let tar = accepted as f64 / genuine as f64;
    let far = false_accepts as f64 / impostor as f64;
    let all_tar = all_acc as f64 / all_gen as f64;
    let all_far = all_fa as f64 / all_imp as f64;
    println!("threshold {THRESHOLD}: enrol-one TAR {tar:.3} ({accepted}/{genuine}), FAR {far:.4} ({false_accepts}/{impostor})");
    println!("all pairs: TAR {all_tar:.3} ({all_acc}/{all_gen}), FAR {all_far:.4} ({all_fa}/{all_imp})");
    assert!(tar >= 0.97, "TAR {tar}");
    assert!(far <= 0.001, "FAR {far}");
    assert!(all_far <= 0.001, "FAR over all pairs {all_far}");
}

#[test]
fn liveness_samples_are_classified_right() {
    let Some(dir) = shared_testdata("liveness") else { return };
    let mut p = pipeline();
    let csv = std::fs::read_to_string(dir.join("labels.csv")).unwrap();
    for line in csv.lines().skip(1).filter(|l| !l.is_empty()) {
        let (file, label) = line.split_once(',').unwrap();
        let img = image::load(&dir.join(file)).unwrap();
        let dets = p.detector.detect(&img).unwrap();
        assert!(!dets.is_empty(), "{file}: no face");
        let best = dets.iter().max_by(|a, b| (a.bbox[2] * a.bbox[3]).total_cmp(&(b.bbox[2] * b.bbox[3]))).unwrap();
        let (real, score) = p.liveness.is_real(&img, best.bbox).unwrap();
        println!("{file}: liveness {score:.3} ({label})");
        assert_eq!(real, label == "real", "{file}: score {score}");
    }
}

#[test]
fn enrolment_photos_need_exactly_one_usable_face() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let mut p = pipeline();
    let couple = image::load(&faces.join("couple.jpg")).unwrap();
    assert!(matches!(p.enrol(&couple).unwrap(), Err(Rejection::MultipleFaces(n)) if n >= 2));
    if let Some(plates) = shared_testdata("plates/plate01.jpg") {
        let car = image::load(&plates).unwrap();
        assert_eq!(p.enrol(&car).unwrap(), Err(Rejection::NoFace));
    }
}

#[test]
fn a_corrupt_or_missing_photo_gives_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("corrupt.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 this is not really a jpeg").unwrap();
    let e = image::load(&bad).unwrap_err();
    assert!(matches!(e, VisionError::Image { .. }) && e.to_string().contains("corrupt"), "{e}");
    let e = image::load(&dir.path().join("missing.jpg")).unwrap_err();
    assert!(e.to_string().contains("missing.jpg"), "{e}");
    if let Some(real) = shared_testdata("faces/people/img1.jpg") {
        let bytes = std::fs::read(real).unwrap();
        let truncated = dir.path().join("truncated.jpg");
        std::fs::write(&truncated, &bytes[..200]).unwrap();
        assert!(image::load(&truncated).is_err(), "a truncated JPEG is refused");
    }
}

#[test]
fn a_missing_or_corrupt_model_is_a_clear_error_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let e = FacePipeline::load(dir.path(), Some(&models().join(gatewarden_vision::runtime::ORT_LIBRARY)), 1).err().unwrap();
    assert!(e.to_string().contains("face_detection_yunet_2023mar.onnx") && e.to_string().contains("fetch-models"), "{e}");
    std::fs::write(dir.path().join("face_detection_yunet_2023mar.onnx"), b"garbage").unwrap();
    let e = FacePipeline::load(dir.path(), Some(&models().join(gatewarden_vision::runtime::ORT_LIBRARY)), 1).err().unwrap();
    assert!(e.to_string().contains("corrupt") && e.to_string().contains("SHA-256"), "{e}");
}
