//! The build time, for the plausibility floor of the wall clock: a box
//! without an RTC boots in 1970, and absence is never judged on such a clock.

fn main() {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()));
    println!("cargo:rustc-env=GATEWARDEN_BUILD_UNIX={secs}");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
