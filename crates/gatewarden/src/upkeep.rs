//! Store upkeep, on real time: the integrity manifest every
//! `store.integrity_every` (a clean stop records one too), and a verified
//! backup every `store.backup_every`, keeping `store.backup_keep`, so there is
//! always one to restore when the store is found damaged. Every few seconds
//! it also checks that the store takes writes, and reopens it once a full
//! disk has room again (`Store::recover`).

use crate::telemetry::Metrics;
use config::Config;
use domain::clock::Clock;
use std::sync::Arc;
use std::time::Duration;
use store::Store;
use tokio_util::sync::CancellationToken;

pub struct Upkeep {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
}

impl Upkeep {
    pub async fn run(self, cancel: CancellationToken) {
        let every = self.cfg.store.integrity_every.get();
        let mut manifest = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let backup_every = self.cfg.store.backup_every.get();
        let backups = !backup_every.is_zero();
        let dir = self.cfg.store.backup_dir();
        // The first backup is due `backup_every` after the newest one on disk
        // (a restart does not postpone it), and at least a minute after start.
        let newest_age =
            Store::list_backups(&dir).ok().and_then(|v| v.last().cloned()).and_then(|p| std::fs::metadata(p).ok()?.modified().ok()?.elapsed().ok());
        let first = newest_age.map_or(Duration::ZERO, |age| backup_every.saturating_sub(age)).max(Duration::from_secs(60).min(backup_every));
        let mut backup = tokio::time::interval_at(tokio::time::Instant::now() + first, backup_every.max(Duration::from_secs(1)));
        manifest.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        backup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watch = tokio::time::interval(Duration::from_secs(5));
        watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.metrics.store_writable.set(1);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = watch.tick() => {
                    let store = self.store.clone();
                    let ok = match tokio::task::spawn_blocking(move || store.recover()).await {
                        Ok(Ok(_)) => true,
                        Ok(Err(e @ store::StoreError::Reopen { .. })) => {
                            // Nothing can be stored any more: exit, so systemd restarts us on a fresh open.
                            tracing::error!(error = %e, "STORE LOST");
                            panic!("{e}");
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "the store still refuses writes");
                            false
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "store check task failed");
                            false
                        }
                    };
                    self.metrics.store_writable.set(ok as i64);
                }
                _ = manifest.tick() => {
                    let (store, now) = (self.store.clone(), self.clock.now().timestamp());
                    match tokio::task::spawn_blocking(move || store.write_manifest(now, false)).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot record the store's integrity manifest"),
                        Err(e) => tracing::error!(error = %e, "integrity manifest task failed"),
                    }
                }
                _ = backup.tick(), if backups => {
                    let (store, now, dir, keep) = (self.store.clone(), self.clock.now(), dir.clone(), self.cfg.store.backup_keep);
                    match tokio::task::spawn_blocking(move || store.backup_to_dir(&dir, now, keep)).await {
                        Ok(Ok(path)) => {
                            self.metrics.backups.get_or_create(&crate::telemetry::KindLabel { kind: "ok".into() }).inc();
                            tracing::info!(path = %path.display(), "scheduled backup written and verified");
                        }
                        Ok(Err(e)) => {
                            self.metrics.backups.get_or_create(&crate::telemetry::KindLabel { kind: "failed".into() }).inc();
                            tracing::error!(error = %e, dir = %self.cfg.store.backup_dir().display(), "SCHEDULED BACKUP FAILED: check the disk");
                        }
                        Err(e) => tracing::error!(error = %e, "backup task failed"),
                    }
                }
            }
        }
    }
}
