//! A bounded MessagePack reader, for the April Brother BLE Gateway V4 (which
//! posts MessagePack by default). It reads into `serde_json::Value` so one
//! decoder serves the JSON and the MessagePack forms; `bin` becomes a hex
//! string, the way the JSON form carries raw advertisements. Hostile input
//! cannot make it allocate more than its own length or recurse deeply.

use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 16;

/// Decode one MessagePack value that fills `b` exactly.
pub fn to_json(b: &[u8]) -> Result<Value, String> {
    let mut r = Reader { b, i: 0 };
    let v = r.value(0)?;
    if r.i != b.len() {
        return Err(format!("{} trailing bytes", b.len() - r.i));
    }
    Ok(v)
}

/// Whether `b` starts like a MessagePack map (what a gateway report is).
pub fn looks_like_map(b: &[u8]) -> bool {
    matches!(b.first(), Some(0x80..=0x8f | 0xde | 0xdf))
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.i.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| format!("truncated at byte {}", self.i))?;
        let s = &self.b[self.i..end];
        self.i = end;
        Ok(s)
    }
    fn byte(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn be(&mut self, n: usize) -> Result<u64, String> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| acc << 8 | *b as u64))
    }
    /// A count of elements, each at least one byte: more than the bytes left is a lie.
    fn count(&mut self, n: usize, per: usize) -> Result<usize, String> {
        let c = self.be(n)? as usize;
        if c.saturating_mul(per) > self.b.len() - self.i {
            return Err(format!("count {c} exceeds the {} bytes left", self.b.len() - self.i));
        }
        Ok(c)
    }
    fn str(&mut self, n: usize) -> Result<Value, String> {
        let s = self.take(n)?;
        Ok(Value::String(String::from_utf8_lossy(s).into_owned()))
    }
    fn bin(&mut self, n: usize) -> Result<Value, String> {
        let s = self.take(n)?;
        let mut h = String::with_capacity(s.len() * 2);
        for b in s {
            h.push_str(&format!("{b:02X}"));
        }
        Ok(Value::String(h))
    }
    fn array(&mut self, n: usize, depth: usize) -> Result<Value, String> {
        (0..n).map(|_| self.value(depth + 1)).collect::<Result<Vec<_>, _>>().map(Value::Array)
    }
    fn map(&mut self, n: usize, depth: usize) -> Result<Value, String> {
        let mut m = Map::new();
        for _ in 0..n {
            let k = match self.value(depth + 1)? {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let v = self.value(depth + 1)?;
            m.insert(k, v);
        }
        Ok(Value::Object(m))
    }
    fn ext(&mut self, n: usize) -> Result<Value, String> {
        self.take(1 + n)?; // type, data: nothing a gateway report needs
        Ok(Value::Null)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let m = self.byte()?;
        Ok(match m {
            0x00..=0x7f => Value::from(m),
            0xe0..=0xff => Value::from(m as i8),
            0x80..=0x8f => return self.map((m & 0x0f) as usize, depth),
            0x90..=0x9f => return self.array((m & 0x0f) as usize, depth),
            0xa0..=0xbf => return self.str((m & 0x1f) as usize),
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            // bin 8/16/32 and ext 8/16/32: a 1-, 2- or 4-byte length.
            0xc4..=0xc6 => {
                let n = self.be(1 << (m - 0xc4))? as usize;
                return self.bin(n);
            }
            0xc7..=0xc9 => {
                let n = self.be(1 << (m - 0xc7))? as usize;
                return self.ext(n);
            }
            0xca => Number::from_f64(f32::from_bits(self.be(4)? as u32) as f64).map_or(Value::Null, Value::Number),
            0xcb => Number::from_f64(f64::from_bits(self.be(8)?)).map_or(Value::Null, Value::Number),
            0xcc => Value::from(self.be(1)?),
            0xcd => Value::from(self.be(2)?),
            0xce => Value::from(self.be(4)?),
            0xcf => Value::from(self.be(8)?),
            0xd0 => Value::from(self.be(1)? as u8 as i8),
            0xd1 => Value::from(self.be(2)? as u16 as i16),
            0xd2 => Value::from(self.be(4)? as u32 as i32),
            0xd3 => Value::from(self.be(8)? as i64),
            // fixext 1, 2, 4, 8, 16.
            0xd4..=0xd8 => return self.ext(1 << (m - 0xd4)),
            // str 8/16/32.
            0xd9..=0xdb => {
                let n = self.be(1 << (m - 0xd9))? as usize;
                return self.str(n);
            }
            // array 16/32 (each element at least one byte), map 16/32 (two).
            0xdc | 0xdd => {
                let n = self.count(if m == 0xdc { 2 } else { 4 }, 1)?;
                return self.array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.count(if m == 0xde { 2 } else { 4 }, 2)?;
                return self.map(n, depth);
            }
            0xc1 => return Err("0xc1 is never used in MessagePack".into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_report_reads_as_json_with_bin_as_hex() {
        // {"v":"1.5.9","mac":"AABBCCDDEEFF","devices":[bin 3 bytes 01 02 ff], "rssi":-40, "time": 300}
        let mut b = vec![0x85];
        b.extend([0xa1, b'v', 0xa5]);
        b.extend(b"1.5.9");
        b.extend([0xa3]);
        b.extend(b"mac");
        b.extend([0xac]);
        b.extend(b"AABBCCDDEEFF");
        b.extend([0xa7]);
        b.extend(b"devices");
        b.extend([0x91, 0xc4, 0x03, 0x01, 0x02, 0xff]);
        b.extend([0xa4]);
        b.extend(b"rssi");
        b.extend([0xd0, 0xd8]);
        b.extend([0xa4]);
        b.extend(b"time");
        b.extend([0xcd, 0x01, 0x2c]);
        let v = to_json(&b).unwrap();
        assert_eq!(v, serde_json::json!({"v":"1.5.9","mac":"AABBCCDDEEFF","devices":["0102FF"],"rssi":-40,"time":300}));
        assert!(looks_like_map(&b));
    }

    #[test]
    fn lying_lengths_and_deep_nesting_are_refused_without_allocating() {
        assert!(to_json(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err(), "a 4-billion-element array in 5 bytes");
        assert!(to_json(&[0xdf, 0x7f, 0xff, 0xff, 0xff, 0x01]).is_err());
        assert!(to_json(&[0xc6, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(to_json(&[0x91; 100]).is_err(), "100 nested arrays");
        assert!(to_json(&[0xc1]).is_err());
        assert!(to_json(&[0x01, 0x02]).is_err(), "trailing bytes");
        let mut x: u32 = 12345;
        for n in 0..20000usize {
            let v: Vec<u8> = (0..n % 48)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = to_json(&v);
        }
    }
}
