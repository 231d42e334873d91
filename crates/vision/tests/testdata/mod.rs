//! The shared third-party test images, read in place from ../shared (never
//! copied into the repository).

use std::path::PathBuf;

pub fn shared_testdata(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata")).join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is absent (a user's own clone without ../shared)", p.display());
        None
    }
}
