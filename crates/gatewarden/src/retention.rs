//! The retention task (PIPL: keep personal data no longer than needed). Once
//! an hour on the injected clock it purges sighting history, the audit log,
//! delivered notifications, ended leaves, old entry-log records, unknown-face
//! snapshots and expired visitors. Every purge is logged, counted and
//! recorded for the compliance report. One task, so no two places disagree
//! on what is kept.

use crate::telemetry::{KindLabel, Metrics};
use config::Config;
use domain::clock::{chrono_dur, Clock, Timestamp};
use domain::gate::policy::PersonKind;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use store::{Store, StoreError};
use tokio_util::sync::CancellationToken;

pub struct Retention {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// Unknown-face snapshots (`access.snapshot_dir`).
    pub snapshot_dir: PathBuf,
    /// Told when a visitor is purged: the gate and the gallery forget them,
    /// and on an enrolment source a tombstone replaces their retained record
    /// on the broker (no visitor data stays there).
    pub enrolment: crate::enrolment::Fanout,
}

impl Retention {
    pub async fn run(self, cancel: CancellationToken) {
        // Checked every second against the injected clock, so a test that
        // moves the clock sees the purge at once.
        let mut check = tokio::time::interval(Duration::from_secs(1));
        let mut last: Option<Timestamp> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = check.tick() => {
                    let now = self.clock.now();
                    if last.is_none_or(|t| now - t >= chrono::Duration::hours(1)) {
                        last = Some(now);
                        self.purge(now).await;
                    }
                }
            }
        }
    }

    async fn purge(&self, now: Timestamp) {
        let (st, cfg) = (&self.store, &self.cfg);
        let jobs: [(&str, Result<usize, StoreError>); 5] = [
            ("sighting_history", st.purge_history(now - chrono_dur(cfg.presence.history_window.get()), cfg.presence.history_max)),
            ("audit_log", st.purge_audit(now - chrono_dur(cfg.console.audit_retention.get()))),
            ("deliveries", st.purge_deliveries(now - chrono_dur(cfg.alert.outbox.retention.get()))),
            ("leaves", st.purge_leaves(now - chrono_dur(cfg.access.leave_retention.get()))),
            ("entry_log", st.purge_entries(now - chrono_dur(cfg.access.entry_log_retention.get()))),
        ];
        for (what, r) in jobs {
            match r {
                Ok(n) => self.record(what, now, n),
                Err(e) => tracing::error!(what, error = %e, "retention purge failed"),
            }
        }
        let snapshots = self.purge_snapshots();
        self.record("unknown_snapshots", now, snapshots);
        let visitors = self.purge_visitors(now).await;
        self.record("visitors", now, visitors);
    }

    fn record(&self, what: &str, now: Timestamp, n: usize) {
        if n > 0 {
            tracing::info!(what, purged = n, "retention purge");
            self.metrics.purged.get_or_create(&KindLabel { kind: what.into() }).inc_by(n as u64);
        }
        let _ = self.store.mark_purge(what, now, n);
    }

    /// Unknown-face snapshots older than `access.unknown_retention`.
    fn purge_snapshots(&self) -> usize {
        let keep = self.cfg.access.unknown_retention.get();
        let Ok(rd) = std::fs::read_dir(&self.snapshot_dir) else { return 0 };
        rd.flatten()
            .filter(|e| e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > keep))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Visitors whose pass ended more than `access.visitor_retention` ago,
    /// with their vehicles.
    async fn purge_visitors(&self, now: Timestamp) -> usize {
        let retention = chrono_dur(self.cfg.access.visitor_retention.get());
        let mut n = 0;
        for r in self.store.list_people().unwrap_or_default() {
            let p = &r.person;
            let expired = p.valid_until.is_some_and(|u| u + retention < now);
            if p.kind != PersonKind::Visitor || !expired {
                continue;
            }
            let plates: Vec<String> = self.store.list_vehicles().unwrap_or_default().into_iter().filter(|v| v.owner == p.id).map(|v| v.plate).collect();
            // Their vehicles go with them (and their key: `Store::remove_person`).
            if let Err(e) = self.store.remove_person(&p.id) {
                tracing::error!(error = %e, "cannot purge a visitor");
                continue;
            }
            let _ = self.enrolment.changed(crate::enrolment::Changed::PersonRemoved(p.id.clone())).await;
            for plate in plates {
                let _ = self.enrolment.changed(crate::enrolment::Changed::Vehicle(plate)).await;
            }
            n += 1;
            tracing::info!(visitor = %p.id, "expired visitor purged");
        }
        n
    }
}
