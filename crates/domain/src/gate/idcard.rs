//! Resident ID numbers (居民身份证号码) under GB 11643-1999: 18 characters,
//! a real province code, a real birth date, and the ISO 7064 MOD 11-2 check
//! character. Numbers are never stored in plain text (see `IdNumber::masked`
//! and `IdNumber::keyed_hash`).

use chrono::{Datelike, NaiveDate};
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an ID number has 18 characters, this one has {0}")]
    Length(usize),
    #[error("an ID number is 17 digits and a final digit or X")]
    Characters,
    #[error("{0:02} is not a province code")]
    Province(u32),
    #[error("the birth date {0} does not exist or is in the future")]
    BirthDate(String),
    #[error("the check character is wrong (expected {expected}, found {found}): a digit was probably mistyped")]
    Check { expected: char, found: char },
}

/// Province-level codes (GB/T 2260), including Taiwan, Hong Kong and Macao.
const PROVINCES: &[u32] =
    &[11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91];

/// ISO 7064 MOD 11-2 over the first 17 digits.
pub fn check_char(first17: &[u8]) -> char {
    const W: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let s: u32 = first17.iter().zip(W).map(|(d, w)| (d - b'0') as u32 * w).sum();
    b"10X98765432"[(s % 11) as usize] as char
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdNumber(String);

impl IdNumber {
    /// Validate; `today` bounds the birth date.
    pub fn parse(raw: &str, today: NaiveDate) -> Result<IdNumber, IdError> {
        let s: String = raw.trim().to_ascii_uppercase();
        let b = s.as_bytes();
        if b.len() != 18 {
            return Err(IdError::Length(s.chars().count()));
        }
        if !b[..17].iter().all(u8::is_ascii_digit) || !(b[17].is_ascii_digit() || b[17] == b'X') {
            return Err(IdError::Characters);
        }
        let prov: u32 = s[..2].parse().expect("digits");
        if !PROVINCES.contains(&prov) {
            return Err(IdError::Province(prov));
        }
        let date = &s[6..14];
        match NaiveDate::parse_from_str(date, "%Y%m%d") {
            Ok(d) if d <= today && d.year() >= 1880 => {}
            _ => return Err(IdError::BirthDate(date.to_string())),
        }
        let expected = check_char(&b[..17]);
        if expected != b[17] as char {
            return Err(IdError::Check { expected, found: b[17] as char });
        }
        Ok(IdNumber(s))
    }

    /// For display and logs: "5101**********123X".
    pub fn masked(&self) -> String {
        crate::mask::mask_id_number(&self.0)
    }

    /// HMAC-SHA256 under the box's key: lets a returning visitor be recognised
    /// without the number being stored.
    pub fn keyed_hash(&self, key: &[u8]) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        m.update(self.0.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    // Check characters computed independently of this code with Python:
    //   W=[7,9,10,5,8,4,2,1,6,3,7,9,10,5,8,4,2]
    //   "10X98765432"[sum(int(c)*w for c,w in zip(s17,W)) % 11]
    // 11010519491231002X and 440524188001010014 are also GB 11643's own examples.
    const VALID: &[&str] =
        &["11010519491231002X", "440524188001010014", "510104199001011230", "310115198205203514", "650102199902280014", "320583200002296546"];

    #[test]
    fn valid_numbers_from_independent_vectors_are_accepted() {
        for v in VALID {
            let id = IdNumber::parse(v, today()).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(id.masked().len(), 18);
        }
        assert!(IdNumber::parse("11010519491231002x", today()).is_ok(), "lower-case x");
    }

    #[test]
    fn every_wrong_check_character_is_refused_with_the_right_one_named() {
        for v in VALID {
            for c in "0123456789X".chars().filter(|c| *c != v.chars().last().unwrap()) {
                let bad = format!("{}{c}", &v[..17]);
                let e = IdNumber::parse(&bad, today()).unwrap_err();
                assert_eq!(e, IdError::Check { expected: v.chars().last().unwrap(), found: c }, "{bad}");
            }
        }
    }

    #[test]
    fn malformed_numbers_get_the_reason() {
        assert_eq!(IdNumber::parse("1101051949123100", today()), Err(IdError::Length(16)));
        assert_eq!(IdNumber::parse("11010519491231002Y", today()), Err(IdError::Characters));
        assert_eq!(IdNumber::parse("990105194912310029", today()), Err(IdError::Province(99)));
        assert!(matches!(IdNumber::parse("110105194902300021", today()), Err(IdError::BirthDate(_))), "30 February");
        assert!(matches!(IdNumber::parse("110105203001010021", today()), Err(IdError::BirthDate(_))), "born in the future");
    }

    #[test]
    fn stored_forms_reveal_nothing_but_the_mask() {
        let id = IdNumber::parse("11010519491231002X", today()).unwrap();
        assert_eq!(id.masked(), "1101**********002X");
        let h = id.keyed_hash(b"k1");
        assert_eq!(h.len(), 64);
        assert_ne!(h, id.keyed_hash(b"k2"));
        assert!(!h.contains("1949"));
    }
}
