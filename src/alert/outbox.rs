//! At-least-once delivery. Every notification is in sled (fsynced) before the
//! first attempt; one worker per channel sends oldest first, respects the
//! service's rate limit by waiting (never by dropping), retries transient
//! failures with exponential backoff and jitter under the injected clock, and
//! parks permanent failures loudly for an operator.

use super::channel::{Message, Outcome, Sender};
use super::{AlertId, NoticeKind};
use crate::clock::{chrono_dur, Clock, Timestamp};
use crate::store::Store;
use crate::telemetry::Metrics;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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

/// Everything one channel's worker needs.
pub struct Worker {
    pub sender: Sender,
    pub store: Store,
    pub clock: Clock,
    pub wake: Arc<Notify>,
    pub metrics: Arc<Metrics>,
    pub backoff: Backoff,
}

impl Worker {
    pub async fn run(self, cancel: CancellationToken) {
        let name = self.sender.name().to_string();
        let mut limit = RateLimit::new(self.sender.cfg.rate_per_minute());
        loop {
            let now = self.clock.now();
            let queue = match self.store.outbox_for_channel(&name) {
                Ok(q) => q,
                Err(e) => {
                    tracing::error!(channel = %name, error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            let pending: Vec<&Notification> = queue.iter().filter(|n| n.delivery == Delivery::Pending).collect();
            self.metrics.set_outbox(&name, pending.len() as i64, (queue.len() - pending.len()) as i64);
            let due = pending.iter().find(|n| n.next_attempt_at <= now).map(|n| (*n).clone());
            let Some(mut n) = due else {
                // Sleep until the next retry is due, new work arrives, or 1 s passes
                // (the clock may be moved forward by a test).
                let next = pending.iter().map(|n| n.next_attempt_at).min();
                let nap = next.map_or(Duration::from_secs(1), |t| (t - now).to_std().unwrap_or_default().min(Duration::from_secs(1)));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
                continue;
            };
            // The service's rate limit: queue, never drop.
            let wait = limit.wait_time(Instant::now());
            if !wait.is_zero() {
                tracing::debug!(channel = %name, wait_ms = wait.as_millis() as u64, "rate limit reached; waiting");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            limit.record(Instant::now());
            n.attempts += 1;
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return, // not recorded: it will be sent again after restart
                o = self.sender.send(&n.message, self.clock.now()) => o,
            };
            let mut pause = Duration::ZERO;
            match outcome {
                Outcome::Delivered => {
                    n.delivery = Delivery::Delivered;
                    n.delivered_at = Some(self.clock.now());
                    n.last_error = None;
                    self.metrics.delivery(&name, "delivered");
                    tracing::info!(channel = %name, notification = n.id, alert = ?n.alert_id, kind = n.kind.as_str(), attempts = n.attempts, "notification delivered");
                }
                Outcome::Retry(why) => {
                    let d = self.backoff.delay(n.attempts, rand::random::<f64>());
                    n.next_attempt_at = self.clock.now() + chrono_dur(d);
                    n.last_error = Some(why.clone());
                    pause = d;
                    self.metrics.delivery(&name, "retry");
                    tracing::warn!(channel = %name, notification = n.id, attempts = n.attempts, retry_in_ms = d.as_millis() as u64, error = %why, "delivery failed; will retry");
                }
                Outcome::Permanent(why) => {
                    n.delivery = Delivery::Failed;
                    n.last_error = Some(why.clone());
                    self.metrics.delivery(&name, "permanent_failure");
                    tracing::error!(channel = %name, notification = n.id, error = %why,
                        "PERMANENT delivery failure: fix the channel (key, secret, keywords) in the config, then `gatewarden alerts retry {}`", n.id);
                }
            }
            if let Err(e) = self.store.update_notification(&n) {
                tracing::error!(channel = %name, error = %e, "cannot record a delivery attempt");
            }
            if !pause.is_zero() {
                // The receiver is unhappy: back off the whole channel, not just this item.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(pause.min(Duration::from_secs(1))) => {}
                }
            }
        }
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
