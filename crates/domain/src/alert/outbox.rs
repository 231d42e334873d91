//! The outbox's records and delivery rules: a notification and its delivery
//! state, exponential backoff with jitter, and a sliding-window rate limit.
//! The worker that applies them lives in the daemon (`alert::outbox`).

use super::channel::Message;
use super::message::Language;
use super::{AlertId, AlertKind, NoticeKind};
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
    /// What the alert is about; sets the delivery order (`AlertKind::priority`).
    /// None for test messages and records written before it existed.
    #[serde(default)]
    pub alert_kind: Option<AlertKind>,
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

impl Notification {
    /// The same on every attempt of this notification (a retry, a resend
    /// after a crash, a standby box resending the mirrored outbox), and
    /// different for any other: a receiver may drop what it has seen.
    pub fn idempotency_key(&self) -> String {
        match self.alert_id {
            Some(a) => format!("a{a}-l{}-{}-{}", self.level, self.kind.as_str(), self.created_at.timestamp_millis()),
            None => format!("n{}-{}", self.id, self.created_at.timestamp_millis()),
        }
    }

    /// Lower goes first. Test messages and old records rank with absence.
    pub fn priority(&self) -> u8 {
        self.alert_kind.map_or(1, AlertKind::priority)
    }

    pub fn is_infrastructure(&self) -> bool {
        self.alert_kind.is_some_and(AlertKind::is_infrastructure)
    }
}

/// The next thing a channel sends: of the `due` notifications, the most urgent
/// (then the oldest). An infrastructure one takes every infrastructure
/// notification of `ready` (those whose retry time has come, including ones
/// still inside their digest window) with it, up to `max`, as one digest.
pub fn next_batch<'a>(due: &[&'a Notification], ready: &[&'a Notification], max: usize) -> Vec<&'a Notification> {
    let Some(first) = due.iter().min_by_key(|n| (n.priority(), n.id)).copied() else { return Vec::new() };
    if !first.is_infrastructure() {
        return vec![first];
    }
    let mut batch: Vec<&Notification> = ready.iter().chain([&first]).filter(|n| n.is_infrastructure()).copied().collect();
    batch.sort_by_key(|n| n.id);
    batch.dedup_by_key(|n| n.id);
    batch.sort_by_key(|n| n.id);
    batch.truncate(max.max(1));
    batch
}

/// One message for a batch of infrastructure notifications (gateways and
/// cameras going offline and back), listing each one's title and text.
pub fn digest(batch: &[&Notification], lang: Language, now: Timestamp) -> Message {
    if let [one] = batch {
        let mut m = one.message.clone();
        if m.idempotency_key.is_empty() {
            m.idempotency_key = one.idempotency_key();
        }
        return m;
    }
    let offline = batch.iter().filter(|n| n.message.status == "firing").count();
    let title = match lang {
        Language::Zh => format!("设备状态汇总：{} 条（{} 条离线）", batch.len(), offline),
        Language::En => format!("Device status digest: {} changes ({} offline)", batch.len(), offline),
    };
    let mut text = String::new();
    for n in batch {
        let first_line = n.message.text.lines().next().unwrap_or("");
        text.push_str(&format!("- {}: {}\n", n.message.title, first_line));
    }
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("alertname".to_string(), "device_digest".to_string());
    let fields_kind = title.clone();
    Message {
        title,
        text,
        status: if offline > 0 { "firing".into() } else { "resolved".into() },
        severity: "warning".into(),
        labels,
        starts_at: batch.iter().map(|n| n.message.starts_at).min().unwrap_or(now),
        ends_at: None,
        ack_url: None,
        mention_mobiles: Vec::new(),
        // Stable for the same batch, so a retried digest is recognised as a duplicate.
        idempotency_key: format!("digest-{}-{}", batch[0].id, batch.len()),
        contact_phones: Vec::new(),
        fields: std::collections::BTreeMap::from([("kind".to_string(), fields_kind), ("time".into(), crate::clock::local_minute(now))]),
    }
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

    fn note(id: u64, kind: AlertKind) -> Notification {
        let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let message = Message {
            title: format!("{} {id}", kind.as_str()),
            text: "line one\nline two".into(),
            status: "firing".into(),
            severity: kind.severity().into(),
            labels: Default::default(),
            starts_at: t,
            ends_at: None,
            ack_url: None,
            mention_mobiles: vec![],
            idempotency_key: format!("k{id}"),
            contact_phones: vec![],
            fields: Default::default(),
        };
        Notification {
            id,
            alert_id: Some(id),
            channel: "c".into(),
            kind: NoticeKind::Firing,
            alert_kind: Some(kind),
            level: 0,
            message,
            created_at: t,
            attempts: 0,
            next_attempt_at: t,
            last_error: None,
            delivery: Delivery::Pending,
            delivered_at: None,
        }
    }

    #[test]
    fn every_notification_carries_a_stable_idempotency_key_of_its_own() {
        let mut a = note(1, AlertKind::Sos);
        a.message.idempotency_key.clear();
        let mut b = a.clone();
        b.kind = NoticeKind::Reminder;
        let t = a.created_at;
        let ka = digest(&[&a], Language::Zh, t).idempotency_key;
        assert!(!ka.is_empty());
        a.attempts = 3;
        assert_eq!(digest(&[&a], Language::Zh, t + chrono::Duration::hours(1)).idempotency_key, ka, "the same on every attempt");
        assert_ne!(digest(&[&b], Language::Zh, t).idempotency_key, ka, "another notice of the same alert is another key");
    }

    #[test]
    fn an_sos_goes_before_older_routine_and_infrastructure_notifications() {
        let ns: Vec<Notification> = (1..=45)
            .map(|i| note(i, AlertKind::GatewayOffline))
            .chain([note(46, AlertKind::BatteryLow), note(47, AlertKind::Absence), note(48, AlertKind::Sos)])
            .collect();
        let due: Vec<&Notification> = ns.iter().collect();
        assert_eq!(next_batch(&due, &due, 100).iter().map(|n| n.id).collect::<Vec<_>>(), vec![48]);
        let due: Vec<&Notification> = ns.iter().filter(|n| n.id != 48).collect();
        assert_eq!(next_batch(&due, &due, 100)[0].id, 47);
        // Only the first gateway notification's window has closed: the rest join it.
        let ready: Vec<&Notification> = ns.iter().filter(|n| n.id < 46).collect();
        let batch = next_batch(&ready[..1], &ready, 100);
        assert_eq!(batch.len(), 45, "every due gateway notification goes in one digest");
        let m = digest(&batch, Language::Zh, ns[0].created_at);
        assert!(m.title.contains("45"), "{}", m.title);
        assert_eq!(m.text.lines().count(), 45);
        assert!(!m.text.contains("line two"));
        assert_eq!(next_batch(&ready, &ready, 10).len(), 10, "a digest is bounded");
    }

    #[test]
    fn a_single_infrastructure_notification_is_sent_as_it_is() {
        let n = note(1, AlertKind::CameraOffline);
        assert_eq!(digest(&[&n], Language::En, n.created_at), n.message);
    }

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
