//! Acknowledgement links: `<public_url>/ack/<token>`, where the token carries the
//! alert id, the alert's episode (when it opened), the ladder level it was
//! sent to and an expiry, signed with HMAC-SHA256. The full 32-byte tag is
//! required and compared in constant time, so a tag cannot be guessed a byte
//! at a time; a forwarded or stale link cannot acknowledge anything else.

use crate::clock::Timestamp;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the link is malformed")]
    Malformed,
    #[error("the link's signature is wrong")]
    BadSignature,
    #[error("the link expired at {0}")]
    Expired(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckClaim {
    pub alert: u64,
    pub level: usize,
    /// The episode the link was sent for: the alert's `opened_at` in Unix ms.
    pub episode: i64,
}

/// The episode stamp of an alert, as carried in its links.
pub fn episode_of(opened_at: Timestamp) -> i64 {
    opened_at.timestamp_millis()
}

fn mac(secret: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload.as_bytes());
    m
}

pub fn sign(secret: &[u8], claim: &AckClaim, expires: Timestamp) -> String {
    let payload = format!("{}.{}.{}.{}", claim.alert, claim.level, claim.episode, expires.timestamp());
    let sig = mac(secret, &payload).finalize().into_bytes();
    format!("{}.{}", B64.encode(payload), B64.encode(sig))
}

pub fn verify(secret: &[u8], token: &str, now: Timestamp) -> Result<AckClaim, TokenError> {
    let (p, s) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = String::from_utf8(B64.decode(p).map_err(|_| TokenError::Malformed)?).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    // The whole tag, in constant time: `verify_slice` refuses any other length.
    mac(secret, &payload).verify_slice(&sig).map_err(|_| TokenError::BadSignature)?;
    let mut it = payload.split('.');
    let (Some(a), Some(l), Some(ep), Some(e), None) = (it.next(), it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed);
    };
    let exp: i64 = e.parse().map_err(|_| TokenError::Malformed)?;
    if now.timestamp() > exp {
        let when = chrono::DateTime::from_timestamp(exp, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        return Err(TokenError::Expired(when));
    }
    Ok(AckClaim {
        alert: a.parse().map_err(|_| TokenError::Malformed)?,
        level: l.parse().map_err(|_| TokenError::Malformed)?,
        episode: ep.parse().map_err(|_| TokenError::Malformed)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    fn claim() -> AckClaim {
        AckClaim { alert: 42, level: 1, episode: 1_800_000_000_000 }
    }

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let now = Utc::now();
        let t = sign(b"k", &claim(), now + Duration::hours(1));
        assert_eq!(verify(b"k", &t, now).unwrap(), claim());
        assert!(matches!(verify(b"k", &t, now + Duration::hours(2)), Err(TokenError::Expired(_))));
    }

    #[test]
    fn a_tampered_or_foreign_link_is_refused() {
        let now = Utc::now();
        let t = sign(b"k", &claim(), now + Duration::hours(1));
        assert_eq!(verify(b"other", &t, now), Err(TokenError::BadSignature));
        let exp = (now + Duration::hours(1)).timestamp();
        let forged = format!("{}.{}", B64.encode(format!("43.1.1800000000000.{exp}")), t.split_once('.').unwrap().1);
        assert_eq!(verify(b"k", &forged, now), Err(TokenError::BadSignature));
        // Another episode of the same alert id is another payload.
        let other_episode = format!("{}.{}", B64.encode(format!("42.1.1800000000001.{exp}")), t.split_once('.').unwrap().1);
        assert_eq!(verify(b"k", &other_episode, now), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", "garbage", now), Err(TokenError::Malformed));
    }

    #[test]
    fn a_truncated_tag_is_refused_whatever_its_bytes() {
        // The attack: a 1-byte tag has 256 values. Every one, and every
        // prefix of the real tag, must fail.
        let now = Utc::now();
        let exp = (now + Duration::hours(1)).timestamp();
        let payload = format!("42.1.1800000000000.{exp}");
        let p = B64.encode(&payload);
        for b in 0..=255u8 {
            assert_eq!(verify(b"k", &format!("{p}.{}", B64.encode([b])), now), Err(TokenError::BadSignature));
        }
        let full = mac(b"k", &payload).finalize().into_bytes();
        for n in 1..full.len() {
            assert_eq!(verify(b"k", &format!("{p}.{}", B64.encode(&full[..n])), now), Err(TokenError::BadSignature), "prefix of {n} bytes");
        }
        assert!(verify(b"k", &format!("{p}.{}", B64.encode(full)), now).is_ok());
    }
}
