//! Bounded fuzzing in the suite (proptest): the parsers that take input from
//! outside the box never panic, and forged tokens never verify. Each target
//! runs a few thousand generated inputs, seeded from the shapes the daemon
//! really sees, then mutated. A longer run is `PROPTEST_CASES=… cargo test
//! --release -p gatewarden --test fuzz` (see BENCHMARKS.md).

use chrono::Utc;
use domain::alert::token;
use proptest::prelude::*;

/// Topics in every shape the MQTT task routes, with random segments.
fn topic() -> impl Strategy<Value = String> {
    let seg = "[A-Za-z0-9_:+#-]{0,20}";
    prop_oneof![
        seg.prop_map(|s| format!("home/{s}/BTtoMQTT/C3A1F0001101")),
        seg.prop_map(|s| format!("home/{s}/LWT")),
        seg.prop_map(|s| format!("espresense/devices/{s}/room")),
        seg.prop_map(|s| format!("espresense/rooms/{s}/status")),
        seg.prop_map(|s| format!("gatewarden/t/{s}")),
        (seg, seg).prop_map(|(a, b)| format!("gatewarden/t/cluster/{a}/{b}")),
        (seg, seg).prop_map(|(a, b)| format!("gatewarden/t/gate/{a}/{b}")),
        "[ -~]{0,64}",
    ]
}

/// JSON-ish payloads built from the fields the parsers look for.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    let key = prop_oneof![
        Just("id"),
        Just("band"),
        Just("mac"),
        Just("rssi"),
        Just("battery"),
        Just("sos"),
        Just("gateway"),
        Just("holder"),
        Just("until_ms"),
        Just("epoch"),
        Just("distance"),
    ];
    let val = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f}")),
        "[ -~]{0,24}".prop_map(|s| format!("{s:?}")),
        Just("true".to_string()),
        Just("null".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    prop_oneof![
        proptest::collection::vec((key, val), 0..6).prop_map(|kv| format!(
            "{{{}}}",
            kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect::<Vec<_>>().join(",")
        )
        .into_bytes()),
        proptest::collection::vec(any::<u8>(), 0..256),
        Just(b"online".to_vec()),
        Just(b"offline".to_vec()),
    ]
}

/// One documented report of every gateway format `auto` reads, to mutate.
const VENDOR_SAMPLES: [(&str, &[u8]); 8] = [
    ("aprilbrother/r", br#"{"id":"ABCDEF123456","raw_beacons_data":"F4B85ED84CB7123456781234123412341234123412347DAD33B1C6FF41;0117C538C0CF23A01AF0232A45189C0E323FB773F5EF00100020B3FFB2;"}"#),
    ("abgw/up", br#"{"v":"1.5.9","mac":"AABBCCDDEEFF","devices":["02C8FD1949A530CE0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0"]}"#),
    ("abgw/up", &[0x82, 0xa3, b'm', b'a', b'c', 0xa2, b'A', b'B', 0xa7, b'd', b'e', b'v', b'i', b'c', b'e', b's', 0x91, 0xc4, 0x0c, 0x02, 0xC8, 0xFD, 0x19, 0x49, 0xA5, 0x30, 0xCE, 0x02, 0x01, 0x06, 0x00]),
    ("ingics/gw", b"$GPRP,0C61CFC1452E,E7DAE08E6FC3,-44,0201061AFF4C000215B9A5D27D56CC4E3AAB511F2153BCB9670001452ED6\r\n$HBRP,FECE97089146,FECE97089146,-127,00000000"),
    ("minew/gw", br#"[{"type":"Gateway","mac":"AC233FC0ABCD"},{"type":"iBeacon","mac":"AC233F261234","rssi":-62,"ibeaconUuid":"E2C56DB5DFFB48D2B060D0F5A71096E0","ibeaconMajor":10,"ibeaconMinor":7,"battery":87},{"type":"Unknown","mac":"C3A1F0001109","rawData":"0201060303AAFE1716AAFE00EE0102030405060708090A0B0C0D0E0F100000"}]"#),
    ("up/CC:1B:E0:E2:8F:2C/scan", br#"{"action":"data.scan","gateway":"CC:1B:E0:E2:8F:2C","data":[{"bdaddrs":[{"bdaddr":"CC:1B:E0:E0:F1:D0"}],"adData":"0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0","rssi":-54}]}"#),
    ("room_presence/kitchen", br#"{"id":"e5b9e3a6-27e2-4c36-a257-7698da5fc140-1-108","name":"Band","distance":2.5}"#),
    ("home/gw/BTtoMQTT/e5b9e3a627e24c36a2577698da5fc140", br#"{"id":"C3:A1:F0:00:11:07","uuid":"e5b9e3a627e24c36a2577698da5fc140","major":"1","minor":107,"namespace":"0102030405060708090a","instance":"0b0c0d0e0f10"}"#),
];

/// The suite's bounded run; `GATEWARDEN_FUZZ_SCALE=N` multiplies every
/// target's cases for the long run recorded in BENCHMARKS.md.
fn cases(n: u32) -> u32 {
    n.saturating_mul(std::env::var("GATEWARDEN_FUZZ_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(4000), ..ProptestConfig::default() })]

    #[test]
    fn mqtt_payload_parser_never_panics(t in topic(), p in payload()) {
        let _ = gatewarden::mqtt::payload::parse(&t, &p, 16 * 1024);
    }

    #[test]
    fn gateway_reports_with_bytes_flipped_cut_or_inserted_never_panic(
        which in 0usize..VENDOR_SAMPLES.len(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
    ) {
        let (topic, sample) = VENDOR_SAMPLES[which];
        let mut b = sample.to_vec();
        for (at, byte, op) in edits {
            let i = if b.is_empty() { 0 } else { at % b.len() };
            match op {
                0 if !b.is_empty() => b[i] = byte,
                1 if !b.is_empty() => { b.truncate(i); }
                _ => b.insert(i.min(b.len()), byte),
            }
        }
        let _ = gatewarden::mqtt::payload::parse(topic, &b, 16 * 1024);
    }

    #[test]
    fn random_ack_tokens_never_verify(tok in "[A-Za-z0-9_.-]{0,120}") {
        prop_assert!(token::verify(b"a-secret-of-enough-length", &tok, Utc::now()).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(1500), ..ProptestConfig::default() })]

    #[test]
    fn a_mutated_enrolment_record_never_verifies_as_anything_but_what_was_signed(at in any::<usize>(), to in any::<u8>()) {
        use gatewarden::cluster::sync::{Change, Record, SyncKeys};
        let keys = SyncKeys::source(b"a-shared-sync-secret-of-32-chars!", ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]));
        let replica = SyncKeys::replica(b"a-shared-sync-secret-of-32-chars!", ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key());
        let change = Change { site: "s".into(), epoch: 1, version: 3, published_at: chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap(), record: Some(Record::Staff(domain::alert::Staff { id: "S1".into(), name: "李网格".into(), phone: None, role: String::new(), grid: "g1".into() })), kind: "staff".into(), id: "S1".into() };
        let mut b = keys.sign(&change).into_bytes();
        prop_assert_eq!(replica.verify(&b, "s").ok(), Some(change.clone()), "the untouched record verifies");
        let i = at % b.len();
        if b[i] != to {
            b[i] = to;
            // A change that still verifies is the signed one (e.g. a hex digit's case): never another.
            if let Ok(c) = replica.verify(&b, "s") {
                prop_assert_eq!(c, change);
            }
        }
    }

    #[test]
    fn a_mutated_cluster_message_never_opens_as_anything_but_what_was_signed(at in any::<usize>(), to in any::<u8>()) {
        let key = b"a-cluster-key-of-enough-length-32";
        let f = domain::cluster::Freshness { max_age: std::time::Duration::from_secs(60), max_skew: std::time::Duration::from_secs(5), lease_ttl: std::time::Duration::from_secs(30) };
        let body = r#"{"holder":"box-a","until_ms":1800000030000,"epoch":4}"#;
        let good = domain::cluster::sign(key, "s", "lease", body, 1_800_000_000_000);
        let want = domain::cluster::open(key, "s", &["lease"], &good, 1_800_000_000_500, &f).map(|m| format!("{m:?}"));
        prop_assert!(want.is_ok(), "the untouched message opens: {:?}", want);
        let mut b = good.into_bytes();
        let i = at % b.len();
        if b[i] != to {
            b[i] = to;
            if let Ok(text) = std::str::from_utf8(&b) {
                if let Ok(m) = domain::cluster::open(key, "s", &["lease"], text, 1_800_000_000_500, &f) {
                    prop_assert_eq!(Some(format!("{m:?}")), want.as_ref().ok().cloned());
                }
            }
        }
    }

    #[test]
    fn image_headers_never_panic_and_nothing_over_the_caps_passes(
        base in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        use vision_protocol::image::{check, png_header, MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE};
        let mut b = match base {
            0 => png_header(640, 480),
            // A baseline JPEG: SOI, APP0, SOF0 of 480 × 640.
            1 => vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x01, 0xE0, 0x02, 0x80, 0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1],
            _ => tail.clone(),
        };
        for (at, v) in edits {
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = v;
            }
        }
        b.extend_from_slice(&tail);
        if let Ok((_, w, h)) = check(&b) {
            prop_assert!(w <= MAX_IMAGE_SIDE && h <= MAX_IMAGE_SIDE && w as u64 * h as u64 <= MAX_IMAGE_PIXELS);
        }
    }

    #[test]
    fn a_mutated_ack_token_never_verifies(flip in 0usize..200, to in any::<u8>()) {
        let now = Utc::now();
        let claim = token::AckClaim { alert: 7, level: 0, episode: 1_800_000_000_000 };
        let good = token::sign(b"a-secret-of-enough-length", &claim, now + chrono::Duration::hours(1));
        let mut bytes = good.clone().into_bytes();
        let i = flip % bytes.len();
        if bytes[i] != to && to.is_ascii_graphic() {
            bytes[i] = to;
            let forged = String::from_utf8_lossy(&bytes).to_string();
            prop_assert!(token::verify(b"a-secret-of-enough-length", &forged, now).is_err(), "{forged}");
        }
    }

    #[test]
    fn config_parsing_never_panics_on_mutated_configs(cut in 0usize..4000, insert in "[ -~\n]{0,12}") {
        let base = include_str!("../../../config/gatewarden.example.toml");
        let at = base.char_indices().map(|(i, _)| i).nth(cut % base.chars().count()).unwrap_or(0);
        let text = format!("{}{insert}{}", &base[..at], &base[at..]);
        if let Ok(c) = config::Config::parse(&text) {
            let _ = c.validate();
        }
    }

    #[test]
    fn roster_reader_never_panics_on_random_files(bytes in proptest::collection::vec(any::<u8>(), 0..2048), xlsx in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if xlsx { "r.xlsx" } else { "r.csv" });
        std::fs::write(&path, &bytes).unwrap();
        let _ = gatewarden::admin::roster::read_file(&path);
    }
}
