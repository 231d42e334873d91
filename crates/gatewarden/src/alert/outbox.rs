//! At-least-once delivery. Every notification is in sled (fsynced) before the
//! first attempt; one worker per channel sends the most urgent first (SOS,
//! absence, band and battery, then devices: `AlertKind::priority`), coalesces
//! gateway and camera notifications into one digest, respects the service's
//! rate limit by waiting (never by dropping), retries transient failures with
//! exponential backoff and jitter under the injected clock, and parks
//! permanent failures loudly for an operator. An outcome the store refuses
//! (a full disk) is kept in memory and recorded later: it is never sent again
//! while the process lives.

use super::channel::Sender;
use crate::telemetry::Metrics;
use domain::alert::channel::Outcome;
use domain::alert::message::Language;
use domain::alert::outbox::{digest, next_batch};
pub use domain::alert::outbox::{Backoff, Delivery, Notification, RateLimit};
use domain::clock::{chrono_dur, Clock};
use std::collections::HashMap;
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
    /// How long a device notification waits for others to join its digest
    /// (real time: a storm is a burst of real seconds, whatever the clock says).
    pub digest_window: Duration,
    pub digest_max: usize,
    pub language: Language,
}

impl Worker {
    pub async fn run(self, cancel: CancellationToken) {
        let name = self.sender.name().to_string();
        let mut limit = RateLimit::new(self.sender.cfg.rate_per_minute());
        // When this worker first saw each pending device notification.
        let mut first_seen: HashMap<u64, Instant> = HashMap::new();
        // Outcomes the store refused, by id: recorded before anything else is sent.
        let mut unrecorded: HashMap<u64, Notification> = HashMap::new();
        loop {
            unrecorded.retain(|_, n| self.store.update_notification(n).is_err());
            if !unrecorded.is_empty() {
                // The store refuses writes: send nothing more until it takes them again.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
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
            let seen_now = Instant::now();
            let pending_ids: std::collections::HashSet<u64> = pending.iter().map(|n| n.id).collect();
            first_seen.retain(|id, _| pending_ids.contains(id));
            for n in pending.iter().filter(|n| n.is_infrastructure()) {
                first_seen.entry(n.id).or_insert(seen_now);
            }
            let settled = |n: &Notification| !n.is_infrastructure() || first_seen.get(&n.id).is_none_or(|t| seen_now.duration_since(*t) >= self.digest_window);
            let ready: Vec<&Notification> = pending.iter().filter(|n| n.next_attempt_at <= now).copied().collect();
            let due: Vec<&Notification> = ready.iter().filter(|n| settled(n)).copied().collect();
            let batch: Vec<Notification> = next_batch(&due, &ready, self.digest_max).into_iter().cloned().collect();
            if batch.is_empty() {
                // Sleep until the next retry is due, a digest window closes, new
                // work arrives, or 1 s passes (the clock may be moved by a test).
                let next = pending.iter().map(|n| n.next_attempt_at).min();
                let mut nap = next.map_or(Duration::from_secs(1), |t| (t - now).to_std().unwrap_or_default().min(Duration::from_secs(1)));
                if let Some(w) = first_seen.values().map(|t| (*t + self.digest_window).saturating_duration_since(seen_now)).min() {
                    nap = nap.min(w.max(Duration::from_millis(10)));
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(nap) => {}
                }
                continue;
            }
            // The service's rate limit: queue, never drop.
            let wait = limit.wait_time(Instant::now());
            if !wait.is_zero() {
                tracing::debug!(channel = %name, wait_ms = wait.as_millis() as u64, "rate limit reached; waiting");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    // Something more urgent may arrive meanwhile: choose again after the wait.
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
            limit.record(Instant::now());
            let refs: Vec<&Notification> = batch.iter().collect();
            let message = digest(&refs, self.language, self.clock.now());
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return, // not recorded: it will be sent again after restart
                o = self.sender.send(&message, self.clock.now()) => o,
            };
            if batch.len() > 1 {
                tracing::info!(channel = %name, notifications = batch.len(), "device notifications sent as one digest");
            }
            let mut pause = Duration::ZERO;
            for mut n in batch {
                n.attempts += 1;
                match &outcome {
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
                        pause = pause.max(d);
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
                    tracing::error!(channel = %name, notification = n.id, error = %e, "cannot record a delivery attempt; kept in memory and recorded when the store takes writes");
                    self.metrics.store_write_failures.inc();
                    self.metrics.store_writable.set(0);
                    unrecorded.insert(n.id, n);
                }
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
