//! The outbox's records and delivery rules: a notification and its delivery
//! state, exponential backoff with jitter, and a sliding-window rate limit.
//! The worker that applies them lives in the daemon (`alert::outbox`).

use super::channel::Message;
use super::{AlertId, NoticeKind};
use crate::clock::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    Pending,
    Delivered,
    /// A permanent error (bad key, bad signature): needs an operator, then `alerts retry`.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    pub id: u64,
    #[serde(default)]
    pub alert_id: Option<AlertId>,
    pub channel: String,
    pub kind: NoticeKind,
    pub level: usize,
    pub message: Message,
    pub created_at: Timestamp,
    pub attempts: u32,
    pub next_attempt_at: Timestamp,
    #[serde(default)]
    pub last_error: Option<String>,
    pub delivery: Delivery,
    #[serde(default)]
    pub delivered_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// Exponential with "equal jitter": a delay in [d/2, d], d = initial·2^(n-1), capped.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self.initial.saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(30)).unwrap_or(u32::MAX));
        let d = exp.min(self.max);
        d.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// At most `per_minute` sends in any sliding 60-second window.
#[derive(Debug)]
pub struct RateLimit {
    per_minute: usize,
    sent: VecDeque<Instant>,
}

impl RateLimit {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute: per_minute.max(1) as usize, sent: VecDeque::new() }
    }

    /// How long to wait before the next send is allowed (zero if now).
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        let window = Duration::from_secs(60);
        while self.sent.front().is_some_and(|t| now.duration_since(*t) >= window) {
            self.sent.pop_front();
        }
        if self.sent.len() < self.per_minute {
            Duration::ZERO
        } else {
            window - now.duration_since(self.sent[0])
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.sent.push_back(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_a_cap() {
        let b = Backoff { initial: Duration::from_secs(2), max: Duration::from_secs(600) };
        assert_eq!(b.delay(1, 1.0), Duration::from_secs(2));
        assert_eq!(b.delay(3, 1.0), Duration::from_secs(8));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(b.delay(40, 1.0), Duration::from_secs(600));
    }

    #[test]
    fn rate_limit_allows_n_per_sliding_minute_then_makes_you_wait() {
        let mut r = RateLimit::new(20);
        let t0 = Instant::now();
        for i in 0..20 {
            assert_eq!(r.wait_time(t0 + Duration::from_secs(i)), Duration::ZERO);
            r.record(t0 + Duration::from_secs(i));
        }
        assert_eq!(r.wait_time(t0 + Duration::from_secs(30)), Duration::from_secs(30));
        assert_eq!(r.wait_time(t0 + Duration::from_secs(60)), Duration::ZERO);
    }
}
