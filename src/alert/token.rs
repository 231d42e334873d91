//! Acknowledgement links: `<public_url>/ack/<token>`, where the token carries the
//! alert id, the ladder level it was sent to and an expiry, signed with
//! HMAC-SHA256. A forwarded or stale link cannot acknowledge anything else.

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
}

fn mac(secret: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload.as_bytes());
    m
}

pub fn sign(secret: &[u8], alert: u64, level: usize, expires: Timestamp) -> String {
    let payload = format!("{alert}.{level}.{}", expires.timestamp());
    let sig = mac(secret, &payload).finalize().into_bytes();
    format!("{}.{}", B64.encode(payload), B64.encode(&sig[..16]))
}

pub fn verify(secret: &[u8], token: &str, now: Timestamp) -> Result<AckClaim, TokenError> {
    let (p, s) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = String::from_utf8(B64.decode(p).map_err(|_| TokenError::Malformed)?).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(s).map_err(|_| TokenError::Malformed)?;
    // Constant-time comparison of the truncated tag.
    mac(secret, &payload).verify_truncated_left(&sig).map_err(|_| TokenError::BadSignature)?;
    let mut it = payload.split('.');
    let (Some(a), Some(l), Some(e), None) = (it.next(), it.next(), it.next(), it.next()) else {
        return Err(TokenError::Malformed);
    };
    let exp: i64 = e.parse().map_err(|_| TokenError::Malformed)?;
    if now.timestamp() > exp {
        let when = chrono::DateTime::from_timestamp(exp, 0).map(|t| t.to_rfc3339()).unwrap_or_default();
        return Err(TokenError::Expired(when));
    }
    Ok(AckClaim { alert: a.parse().map_err(|_| TokenError::Malformed)?, level: l.parse().map_err(|_| TokenError::Malformed)? })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration, Utc};

    #[test]
    fn a_signed_link_verifies_until_it_expires() {
        let now = Utc::now();
        let t = sign(b"k", 42, 1, now + Duration::hours(1));
        assert_eq!(verify(b"k", &t, now).unwrap(), AckClaim { alert: 42, level: 1 });
        assert!(matches!(verify(b"k", &t, now + Duration::hours(2)), Err(TokenError::Expired(_))));
    }

    #[test]
    fn a_tampered_or_foreign_link_is_refused() {
        let now = Utc::now();
        let t = sign(b"k", 42, 1, now + Duration::hours(1));
        assert_eq!(verify(b"other", &t, now), Err(TokenError::BadSignature));
        let forged = format!("{}.{}", B64.encode(format!("43.1.{}", (now + Duration::hours(1)).timestamp())), t.split_once('.').unwrap().1);
        assert_eq!(verify(b"k", &forged, now), Err(TokenError::BadSignature));
        assert_eq!(verify(b"k", "garbage", now), Err(TokenError::Malformed));
    }
}
