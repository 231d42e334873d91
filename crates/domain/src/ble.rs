//! Raw BLE advertisements, decoded in one place. Gateways that forward the
//! advertisement itself (April Brother, Ingics, Minew, Cassia) all come
//! through here: the identities a wristband carries (an iBeacon
//! uuid/major/minor, an Eddystone-UID namespace/instance; the MAC comes from
//! the gateway's report) and its battery from the common service-data frames.
//! Pure and bounded: any byte string decodes to something, never a panic.

use crate::presence::BandId;

/// What one advertisement says about its sender.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advert {
    pub ids: Vec<BandId>,
    /// Percent, 0..=100.
    pub battery: Option<u8>,
}

const APPLE: u16 = 0x004C;
const EDDYSTONE: u16 = 0xFEAA;
const BATTERY_SERVICE: u16 = 0x180F;
/// Minew's frames (E8, S1, i3 …): 0xA1, subtype, battery percent.
const MINEW: u16 = 0xFFE1;
/// BTHome v2: a device-info byte, then (object id, value) pairs; 0x01 is battery %.
const BTHOME: u16 = 0xFCD2;

/// Decode the AD structures of one advertisement (or scan response).
/// Unknown structures are skipped; a truncated one ends the walk.
pub fn decode(data: &[u8]) -> Advert {
    let mut out = Advert::default();
    let mut i = 0;
    while i < data.len() {
        let len = data[i] as usize;
        if len == 0 {
            break; // zero padding after the last structure
        }
        let Some(s) = data.get(i + 1..i + 1 + len) else { break };
        let (ty, body) = (s[0], &s[1..]);
        match ty {
            0xFF => manufacturer(body, &mut out),
            0x16 if body.len() >= 2 => service(u16::from_le_bytes([body[0], body[1]]), &body[2..], &mut out),
            _ => {}
        }
        i += 1 + len;
    }
    out
}

fn push(out: &mut Advert, id: BandId) {
    if !out.ids.contains(&id) {
        out.ids.push(id);
    }
}

fn manufacturer(body: &[u8], out: &mut Advert) {
    // iBeacon: 4C 00 02 15, uuid(16), major(2 BE), minor(2 BE), tx power(1).
    if body.len() >= 24 && u16::from_le_bytes([body[0], body[1]]) == APPLE && body[2] == 0x02 && body[3] == 0x15 {
        let uuid = u128::from_be_bytes(body[4..20].try_into().expect("16 bytes"));
        let major = u16::from_be_bytes([body[20], body[21]]);
        let minor = u16::from_be_bytes([body[22], body[23]]);
        push(out, BandId::IBeacon { uuid, major, minor });
    }
}

fn service(uuid: u16, d: &[u8], out: &mut Advert) {
    match uuid {
        EDDYSTONE => match d.first() {
            // UID: tx power(1), namespace(10), instance(6) [, reserved(2)].
            Some(0x00) if d.len() >= 18 => {
                let namespace: [u8; 10] = d[2..12].try_into().expect("10 bytes");
                let instance: [u8; 6] = d[12..18].try_into().expect("6 bytes");
                push(out, BandId::Eddystone { namespace, instance });
            }
            // TLM (unencrypted, version 0): battery voltage in mV, big-endian; 0 = not known.
            Some(0x20) if d.len() >= 4 && d[1] == 0x00 => {
                let mv = u16::from_be_bytes([d[2], d[3]]);
                if mv != 0 {
                    out.battery = Some(coin_cell_percent(mv));
                }
            }
            _ => {}
        },
        BATTERY_SERVICE => {
            if let Some(&p) = d.first().filter(|p| **p <= 100) {
                out.battery = Some(p);
            }
        }
        MINEW if d.len() >= 3 && d[0] == 0xA1 && d[2] <= 100 => out.battery = Some(d[2]),
        // Device info: bit 0 = encrypted (then nothing here can be read).
        BTHOME if d.first().is_some_and(|info| info & 1 == 0) => {
            let mut j = 1;
            while j + 1 < d.len() {
                match d[j] {
                    0x00 => j += 2, // packet id
                    0x01 => {
                        if d[j + 1] <= 100 {
                            out.battery = Some(d[j + 1]);
                        }
                        break;
                    }
                    _ => break, // lengths of other objects vary; battery comes first by the spec's order
                }
            }
        }
        _ => {}
    }
}

/// A CR2032-class cell: 3.0 V full, 2.0 V empty, linear in between. Rough,
/// but "low battery" only needs the bottom of the range to be right.
pub fn coin_cell_percent(mv: u16) -> u8 {
    (((mv.clamp(2000, 3000) - 2000) as u32 * 100 / 1000) as u8).min(100)
}

/// Hex text (any case, with or without separators) to bytes; None if an odd
/// number of digits or a character that is neither a digit nor a separator.
pub fn hex(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 2);
    let mut hi: Option<u8> = None;
    for c in s.bytes() {
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            b' ' | b':' | b'-' => continue,
            _ => return None,
        };
        match hi.take() {
            None => hi = Some(v),
            Some(h) => out.push(h << 4 | v),
        }
    }
    hi.is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex(s).unwrap()
    }

    #[test]
    fn an_ibeacon_advertisement_yields_its_identity() {
        // April Brother's documented example frame, without the gateway's header.
        let a = decode(&h("0201061AFF4C000215EB6D469624BE4663B15230D46B0E9CC9000D002AC0"));
        assert_eq!(a.ids, vec![BandId::ibeacon("eb6d469624be4663b15230d46b0e9cc9", 13, 42).unwrap()]);
        assert_eq!(a.battery, None);
    }

    #[test]
    fn eddystone_uid_and_tlm_battery_are_read() {
        let uid = "0201060303AAFE1716AAFE00EE0102030405060708090A0B0C0D0E0F100000";
        let a = decode(&h(uid));
        assert_eq!(a.ids, vec!["eddystone:0102030405060708090a:0b0c0d0e0f10".parse().unwrap()]);
        // TLM, 2.9 V.
        let tlm = decode(&h("0201060303AAFE1116AAFE20000B5400160000000100000010"));
        assert_eq!(tlm.battery, Some(90));
    }

    #[test]
    fn battery_comes_from_the_common_service_data_frames() {
        assert_eq!(decode(&h("0201060416 0F18 4B")).battery, Some(75)); // Battery Service
        assert_eq!(decode(&h("0201060303E1FF1316E1FFA10864001302E4CDAB504C5553303031")).battery, Some(100)); // Minew info
        assert_eq!(decode(&h("020106 0816D2FC40 00 0F 01 37")).battery, Some(55)); // BTHome v2
        assert_eq!(decode(&h("0416 0F18 FF")).battery, None, "over 100 is not a percentage");
    }

    #[test]
    fn truncated_and_hostile_bytes_decode_to_nothing_without_panicking() {
        for bytes in [h(""), h("FF"), h("1AFF4C000215"), h("0316AAFE"), h("05160F18"), h("02FF"), vec![0xFF; 64], vec![0x00; 3]] {
            let _ = decode(&bytes);
        }
        let mut x: u64 = 0x9E3779B97F4A7C15;
        for n in 0..5000 {
            let v: Vec<u8> = (0..n % 64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode(&v);
        }
    }

    #[test]
    fn hex_ignores_case_and_separators_and_refuses_garbage() {
        assert_eq!(hex("c3:A1-f0 00"), Some(vec![0xC3, 0xA1, 0xF0, 0x00]));
        assert_eq!(hex("abc"), None);
        assert_eq!(hex("zz"), None);
    }
}
