//! Plate reading on the shared real plate photos with the real models.

mod testdata;
use domain::gate::plate::validate;
use gatewarden_vision::image;
use gatewarden_vision::plate::{Colour, PlateReader};
use std::path::Path;
use testdata::shared_testdata;

fn reader() -> PlateReader {
    PlateReader::load(&Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).join("models"), None, 2).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn shared_plates_are_read_exactly_with_colour_and_layers() {
    let Some(dir) = shared_testdata("plates") else { return };
    let mut r = reader();
    let csv = std::fs::read_to_string(dir.join("ground_truth.csv")).unwrap();
    let (mut readable, mut exact) = (0, 0);
    for line in csv.lines().skip(1).filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.splitn(5, ',').collect();
        let (file, plate, colour, layers) = (f[0], f[1], f[2], f[3]);
        let img = image::load(&dir.join(file)).unwrap();
        let reads = r.read(&img).unwrap();
        assert!(!reads.is_empty(), "{file}: no plate detected");
        let best = &reads[0];
        let want_colour = match colour {
            "blue" => Colour::Blue,
            "green" => Colour::Green,
            _ => Colour::Yellow,
        };
        assert_eq!(best.double_layer, layers == "2", "{file}: layers");
        if plate.is_empty() {
            continue; // detection only: too small to read
        }
        readable += 1;
        let ok = best.text == plate && best.colour == want_colour;
        println!(
            "{file}: read {} ({:?}, conf {:.2}, province {:.2}) want {plate} ({colour}) {}",
            best.text,
            best.colour,
            best.confidence,
            best.province_confidence,
            if ok { "OK" } else { "MISS" }
        );
        exact += ok as usize;
    }
    println!("{exact} of {readable} readable plates read exactly");
    assert_eq!(readable, 13);
    assert_eq!(exact, 13, "every readable plate, double-layer included, read exactly");
}

#[test]
fn no_plate_is_reported_on_images_without_one() {
    let Some(faces) = shared_testdata("faces/people") else { return };
    let mut r = reader();
    let mut checked = 0;
    for e in std::fs::read_dir(&faces).unwrap().flatten() {
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("jpg") {
            continue;
        }
        let img = image::load(&p).unwrap();
        // What the gate acts on: a read that passes the GA 36 shape check.
        let plates: Vec<String> = r.read(&img).unwrap().into_iter().map(|x| x.text).filter(|t| validate(t).is_ok()).collect();
        assert!(plates.is_empty(), "{}: reported {plates:?}", p.display());
        checked += 1;
    }
    assert!(checked >= 30);
}
