//! At-least-once delivery. Every notification is in sled (fsynced) before the
//! first attempt; one worker per channel sends oldest first, respects the
//! service's rate limit by waiting (never by dropping), retries transient
//! failures with exponential backoff and jitter under the injected clock, and
//! parks permanent failures loudly for an operator.

use super::channel::Sender;
use crate::telemetry::Metrics;
use domain::alert::channel::Outcome;
pub use domain::alert::outbox::{Backoff, Delivery, Notification, RateLimit};
use domain::clock::{chrono_dur, Clock};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

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
