//! `gatewarden run`: wires the tasks together and owns shutdown.
//!
//! Tasks and channels (see ARCHITECTURE.md):
//! - `mqtt::run` → bounded `Parsed` channel (4096, blocks when full) → monitor
//! - admin API → bounded `Command` channel (256, blocks) → monitor
//! - monitor: owns `Presence` and `Engine`; writes the store; wakes the outbox
//! - one outbox `Worker` per channel: reads the store, sends, records outcomes

use crate::alert::channel::Sender;
use crate::alert::engine::{Action, AckError, Engine, Input, Settings, Watch};
use crate::alert::outbox::{Backoff, Delivery, Notification, Worker};
use crate::alert::{message, token, Alert, AlertKind, AlertState, Level, NoticeKind, Subject};
use crate::clock::{chrono_dur, Clock, Timestamp};
use crate::config::Config;
use crate::mqtt::Parsed;
use crate::presence::{Elder, Observation, Presence, PresenceEvent};
use crate::store::Store;
use crate::telemetry::{AlertLabels, Metrics};
use anyhow::Context as _;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Requests from the admin API to the monitor, which owns the state machines.
pub enum Command {
    ReloadElder(String),
    RemoveElder(String),
    ReloadLeaves(String),
    ReloadLadders,
    Observe(Observation, oneshot::Sender<Vec<PresenceEvent>>),
    Ack { id: u64, by: String, reply: oneshot::Sender<Result<Alert, AckError>> },
    Tick(oneshot::Sender<()>),
    /// Write buffered presence to the store now (before reading it back).
    Flush(oneshot::Sender<()>),
    /// Raise or clear an alert from elsewhere in the box (gates, cameras).
    Alert { kind: AlertKind, subject: Subject, detail: String, firing: bool },
}

/// What every task may read. Mutable state lives in the monitor or the store.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub commands: mpsc::Sender<Command>,
    pub outbox_wake: Arc<Notify>,
    pub senders: HashMap<String, Sender>,
    pub ack_secret: Vec<u8>,
    pub admin_token: String,
    pub started: Instant,
    /// The gate task, when gates are configured.
    pub gates: Option<mpsc::Sender<crate::gate::task::GateMsg>>,
    /// The vision process, when vision is enabled (enrolment photos, gallery changes).
    pub vision: Option<mpsc::Sender<crate::gate::task::VisionCmd>>,
    /// Key for PIN/card/QR hashes and ID-number hashes.
    pub credential_key: Vec<u8>,
    /// For publishing alert episodes and box health upstream.
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// Which box alerts, for /healthz (written by the monitor).
    pub cluster: Arc<std::sync::RwLock<ClusterView>>,
    /// Roster imports being staged.
    pub imports: crate::admin::roster::Imports,
    /// Console sessions and login rate limits.
    pub sessions: crate::admin::console::Sessions,
    /// Enrolment sync, when `cluster.enrolment` is set.
    pub sync: Option<(crate::cluster::sync::EnrolmentRole, crate::cluster::sync::SyncKeys)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    #[serde(rename = "box")]
    pub box_id: String,
    /// Whether this box runs the alert engine and sends notifications.
    pub alerting: bool,
    pub lease_holder: Option<String>,
    pub lease_epoch: Option<u64>,
}

impl Shared {
    pub fn ack_url(&self, alert: u64, level: usize) -> String {
        let exp = self.clock.now() + chrono_dur(self.cfg.http.ack_link_ttl.get());
        format!("{}/ack/{}", self.cfg.public_url(), token::sign(&self.ack_secret, alert, level, exp))
    }

    /// The ladder for a grid: the store's, else the config's default.
    pub fn ladder(&self, grid: &str) -> Vec<Level> {
        match self.store.get_ladder(grid) {
            Ok(Some(l)) if !l.is_empty() => l,
            _ => self
                .cfg
                .alert
                .ladder
                .iter()
                .map(|l| Level { name: l.name.clone(), channels: l.channels.clone(), staff: l.staff.clone() })
                .collect(),
        }
    }

    /// Refuse enrolment writes on a replica: the source box is the one truth.
    pub fn enrolment_writable(&self) -> Result<(), String> {
        match &self.sync {
            Some((crate::cluster::sync::EnrolmentRole::Replica, _)) => {
                Err("this box is an enrolment replica: enrol on the source box (cluster.enrolment = \"source\"); changes arrive here by themselves".into())
            }
            _ => Ok(()),
        }
    }

    /// After an enrolment write on the source box: publish the record's new
    /// state (retained, signed, versioned) for the other boxes.
    pub async fn enrolment_changed(&self, kind: &'static str, id: &str) {
        if let Some((crate::cluster::sync::EnrolmentRole::Source, keys)) = &self.sync {
            let version = match self.store.next_id() {
                Ok(v) => v,
                Err(e) => return tracing::error!(error = %e, "cannot version an enrolment change"),
            };
            self.publish_enrolment(keys, kind, id, version).await;
        }
    }

    async fn publish_enrolment(&self, keys: &crate::cluster::sync::SyncKeys, kind: &'static str, id: &str, version: u64) {
        use crate::cluster::sync;
        let (Some(m), Ok(record)) = (&self.mqtt, sync::current(&self.store, keys, kind, id)) else {
            return tracing::error!(kind, id, "cannot read an enrolment record to publish");
        };
        let change = sync::Change { site: self.cfg.site.clone(), version, published_at: self.clock.now(), record, kind: kind.into(), id: id.into() };
        let _ = self.store.set_sync_version(kind, id, version);
        if let Err(e) = m.publish(sync::topic(&self.cfg.site, kind, id), rumqttc::QoS::AtLeastOnce, true, keys.sign(&change)).await {
            tracing::error!(error = %e, kind, id, "cannot publish an enrolment change");
        }
    }

    /// At start-up on the source: publish every record at its last version
    /// (replicas skip what they hold), so a broker that lost its retained
    /// messages is refilled.
    pub async fn republish_enrolment(&self) -> anyhow::Result<usize> {
        let Some((crate::cluster::sync::EnrolmentRole::Source, keys)) = &self.sync else { return Ok(0) };
        let ids = crate::cluster::sync::all_ids(&self.store)?;
        for (kind, id) in &ids {
            let v = match self.store.sync_version(kind, id)? {
                0 => self.store.next_id()?,
                v => v,
            };
            self.publish_enrolment(keys, kind, id, v).await;
        }
        Ok(ids.len())
    }

    pub async fn command(&self, c: Command) -> anyhow::Result<()> {
        self.commands.send(c).await.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))
    }
}

struct Monitor {
    sh: Arc<Shared>,
    presence: Presence,
    engine: Engine,
    last_purge: Option<Timestamp>,
    /// None: a single box, which always alerts.
    lease: Option<crate::cluster::Lease>,
}

/// Wall-clock milliseconds for the cluster lease. Not the injectable clock:
/// the lease is shared between boxes and must follow real time (NTP).
fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Monitor {
    fn load(sh: Arc<Shared>) -> anyhow::Result<Monitor> {
        let cfg = &sh.cfg;
        let judging_from = sh.clock.now() + chrono_dur(cfg.presence.startup_grace.get());
        let mut presence = Presence::new(cfg.presence.unknown_bands_max, cfg.presence.max_clock_skew.get());
        for u in sh.store.list_unknown()? {
            presence.load_unknown(u);
        }
        let lease = cfg.cluster.as_ref().map(|c| crate::cluster::Lease::new(c.box_id.clone(), c.role, c.lease_ttl.get(), c.claim_settle.get()));
        let engine = Engine::new(Settings::from_config(cfg), judging_from, 1);
        let mut m = Monitor { sh: sh.clone(), presence, engine, last_purge: None, lease };
        m.rebuild_engine(judging_from)?;
        sh.metrics.elders.set(m.presence.elder_count() as i64);
        tracing::info!(
            elders = m.presence.elder_count(),
            open_alerts = m.engine.open_alerts().count(),
            judging_from = %judging_from.to_rfc3339(),
            "state loaded; absence is judged after the start-up grace"
        );
        Ok(m)
    }

    /// The alert engine from the store: open episodes, gateways, elders (with
    /// last-seen and leaves) and ladders. At start-up, and when a standby box
    /// takes over alerting (the episodes it mirrored are in its store).
    fn rebuild_engine(&mut self, judging_from: Timestamp) -> anyhow::Result<()> {
        let now = self.sh.clock.now();
        let store = &self.sh.store;
        let mut engine = Engine::new(Settings::from_config(&self.sh.cfg), judging_from, 1);
        for a in store.list_alerts()? {
            engine.load_alert(a);
        }
        for (g, at) in store.list_gateways()? {
            engine.load_gateway(g, at, now);
        }
        self.engine = engine;
        for e in self.sh.store.list_elders()? {
            self.load_elder(&e)?;
        }
        self.reload_ladders()?;
        self.update_alert_gauges();
        Ok(())
    }

    fn load_elder(&mut self, e: &Elder) -> anyhow::Result<()> {
        // A restart is not a sighting: last-seen comes from the store, untouched.
        let last = match self.presence.last_seen(&e.id).cloned() {
            Some(l) => Some(l),
            None => self.sh.store.get_last_seen(&e.id)?,
        };
        let leaves = self.sh.store.list_leaves(Some(&e.id))?.into_iter().map(|l| (l.from, l.until)).collect();
        self.engine.upsert_elder(
            e.id.clone(),
            Watch {
                grid: e.grid.clone(),
                enrolled_at: Some(e.enrolled_at),
                last_seen: last.as_ref().map(|l| l.at),
                last_band: last.as_ref().and_then(|l| l.band_at),
                has_band: !e.bands.is_empty(),
                leaves,
            },
        );
        self.presence.upsert_elder(e, last);
        Ok(())
    }

    fn reload_ladders(&mut self) -> anyhow::Result<()> {
        self.engine.set_default_ladder_len(self.sh.cfg.alert.ladder.len());
        for (grid, levels) in self.sh.store.list_ladders()? {
            self.engine.set_ladder_len(&grid, Some(levels.len()));
        }
        Ok(())
    }

    fn alerting(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.is_leader())
    }

    fn box_id(&self) -> Option<&str> {
        self.sh.cfg.cluster.as_ref().map(|c| c.box_id.as_str())
    }

    fn publish_cluster(&self, rest: &str, retain: bool, body: String) {
        let (Some(m), Some(_)) = (&self.sh.mqtt, self.box_id()) else { return };
        if let Err(e) = m.try_publish(crate::cluster::topic(&self.sh.cfg.site, rest), rumqttc::QoS::AtLeastOnce, retain, body) {
            tracing::warn!(error = %e, topic = rest, "cannot publish to the other boxes");
        }
    }

    /// A face at this box's gate or a check-in typed into it: the other boxes
    /// cannot see it, so tell them.
    fn share_sighting(&self, obs: &Observation) {
        use crate::cluster::{PeerSighting, PeerWhat};
        let Some(me) = self.box_id() else { return };
        let s = match obs {
            Observation::Face { elder, gate, at } => PeerSighting { from: me.into(), elder: elder.clone(), at: *at, what: PeerWhat::Face { gate: gate.clone() } },
            Observation::CheckIn { elder, by, note, at } => {
                PeerSighting { from: me.into(), elder: elder.clone(), at: *at, what: PeerWhat::CheckIn { by: by.clone(), note: note.clone() } }
            }
            Observation::Band(_) => return,
        };
        self.publish_cluster(&format!("sighting/{me}"), false, serde_json::to_string(&s).expect("serializes"));
    }

    fn on_cluster(&mut self, msg: crate::cluster::ClusterMsg) {
        use crate::cluster::{ClusterMsg, PeerWhat};
        let me = self.box_id().unwrap_or_default().to_string();
        match msg {
            ClusterMsg::Lease(r) => {
                let acts = match &mut self.lease {
                    Some(l) => l.observe(r, wall_ms()),
                    None => return,
                };
                self.lease_actions(acts);
            }
            ClusterMsg::Sighting(s) if s.from != me => {
                let obs = match s.what {
                    PeerWhat::Face { gate } => Observation::Face { elder: s.elder, gate: format!("{}:{gate}", s.from), at: s.at },
                    PeerWhat::CheckIn { by, note } => Observation::CheckIn { elder: s.elder, by, note, at: s.at },
                };
                self.observe_from(obs, false);
            }
            // Only the alerting box acts on a forwarded box-local alert.
            ClusterMsg::Alert(a) if a.from != me && self.alerting() => {
                let acts = self.engine.handle(Input::External { kind: a.kind, subject: a.subject, detail: a.detail, firing: a.firing }, self.sh.clock.now());
                self.apply(acts);
            }
            ClusterMsg::Episode(e) if e.from != me => {
                if self.alerting() {
                    tracing::warn!(from = %e.from, alert = e.alert.id, "another box published an alert episode while this box alerts; keeping ours");
                } else if let Err(err) = self.sh.store.commit_alerts(std::slice::from_ref(&e.alert), &mut []) {
                    tracing::error!(error = %err, "cannot keep the alerting box's episode");
                }
            }
            _ => {}
        }
    }

    fn lease_tick(&mut self) {
        let acts = match &mut self.lease {
            Some(l) => l.tick(wall_ms()),
            None => return,
        };
        self.lease_actions(acts);
    }

    fn lease_actions(&mut self, acts: Vec<crate::cluster::LeaseAction>) {
        use crate::cluster::LeaseAction;
        for a in acts {
            match a {
                LeaseAction::Publish(r) => self.publish_cluster("lease", true, serde_json::to_string(&r).expect("serializes")),
                LeaseAction::Promote => {
                    if let Err(e) = self.promote() {
                        tracing::error!(error = %format!("{e:#}"), "cannot take over alerting");
                    }
                }
                LeaseAction::Demote { holder } => {
                    tracing::warn!(%holder, "another box holds the alerting lease: this box stops sending alerts");
                }
            }
        }
        if let Some(l) = &self.lease {
            let mut v = self.sh.cluster.write().unwrap_or_else(|e| e.into_inner());
            v.alerting = l.is_leader();
            v.lease_holder = l.holder().map(|r| r.holder.clone());
            v.lease_epoch = l.holder().map(|r| r.epoch);
        }
    }

    /// This box now alerts: rebuild the engine from the store, where the
    /// episodes mirrored from the previous alerting box are, so they go on.
    fn promote(&mut self) -> anyhow::Result<()> {
        // Presence is shared, so absence is judged at once: no start-up grace.
        self.rebuild_engine(self.sh.clock.now())?;
        tracing::info!(open_alerts = self.engine.open_alerts().count(), "this box now sends the alerts (holds the lease)");
        self.tick();
        Ok(())
    }

    fn observe(&mut self, obs: Observation) -> Vec<PresenceEvent> {
        self.observe_from(obs, true)
    }

    fn observe_from(&mut self, obs: Observation, local: bool) -> Vec<PresenceEvent> {
        if local {
            self.share_sighting(&obs);
        }
        let now = self.sh.clock.now();
        let alerting = self.alerting();
        let is_band = matches!(obs, Observation::Band(_));
        let events = self.presence.handle(obs, now);
        let mut actions = Vec::new();
        for ev in &events {
            match ev {
                PresenceEvent::Seen { source, .. } => {
                    self.sh.metrics.sightings.get_or_create(&crate::telemetry::KindLabel { kind: source.as_str().into() }).inc();
                }
                PresenceEvent::UnknownBand { band } => {
                    tracing::info!(%band, "unknown wristband seen; see `gatewarden wristbands unknown`");
                    continue;
                }
                PresenceEvent::UnknownElder { elder } => {
                    tracing::warn!(%elder, "observation names an elder who is not enrolled");
                    continue;
                }
                _ => {}
            }
            if alerting {
                actions.extend(self.engine.handle(Input::Presence(ev.clone()), now));
            }
        }
        if is_band && !events.iter().any(|e| matches!(e, PresenceEvent::Seen { .. })) {
            self.sh.metrics.unknown_band_sightings.inc();
        }
        self.apply(actions);
        events
    }

    fn on_parsed(&mut self, p: Parsed) {
        match p {
            Parsed::Sighting(s) => {
                self.observe(Observation::Band(s));
            }
            Parsed::GatewayStatus { gateway, online } => {
                tracing::info!(%gateway, online, "gateway status");
                let acts = self.engine.handle(Input::GatewayStatus { gateway, online }, self.sh.clock.now());
                self.apply(acts);
            }
            Parsed::Credential { gate, kind, value } => match &self.sh.gates {
                // Never block the monitor on the gate task: a full queue drops the reading (the person retries).
                Some(g) => {
                    if g.try_send(crate::gate::task::GateMsg::Credential { gate, kind, value, reply: None }).is_err() {
                        tracing::warn!("gate task busy; credential dropped");
                    }
                }
                None => tracing::warn!(%gate, "credential for a gate that is not configured"),
            },
            Parsed::Cluster(m) => self.on_cluster(m),
            // Routed to the sync task by the MQTT task.
            Parsed::Enrolment(_) => {}
            Parsed::Connected => {
                if let Some(l) = &mut self.lease {
                    l.connected(wall_ms());
                }
            }
            Parsed::Ignored => {}
        }
    }

    fn tick(&mut self) {
        let now = self.sh.clock.now();
        if self.alerting() {
            let acts = self.engine.handle(Input::Tick, now);
            self.apply(acts);
        }
        if self.last_purge.is_none_or(|t| now - t > chrono::Duration::hours(1)) {
            self.last_purge = Some(now);
            self.purge(now);
        }
    }

    /// Retention (PIPL: keep personal data no longer than needed): delivered
    /// notifications, ended leaves and old entry-log records. Logged, counted,
    /// and recorded for the compliance report.
    fn purge(&mut self, now: Timestamp) {
        let st = &self.sh.store;
        let cfg = &self.sh.cfg;
        let jobs: [(&str, Result<usize, crate::store::StoreError>); 5] = [
            ("sighting_history", st.purge_history(now - chrono_dur(cfg.presence.history_window.get()), cfg.presence.history_max)),
            ("audit_log", st.purge_audit(now - chrono_dur(cfg.console.audit_retention.get()))),
            ("deliveries", st.purge_deliveries(now - chrono_dur(cfg.alert.outbox.retention.get()))),
            ("leaves", st.purge_leaves(now - chrono_dur(cfg.access.leave_retention.get()))),
            ("entry_log", st.purge_entries(now - chrono_dur(cfg.access.entry_log_retention.get()))),
        ];
        for (what, r) in jobs {
            match r {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(what, purged = n, "retention purge");
                        self.sh.metrics.purged.get_or_create(&crate::telemetry::KindLabel { kind: what.into() }).inc_by(n as u64);
                    }
                    let _ = st.mark_purge(what, now, n);
                }
                Err(e) => tracing::error!(what, error = %e, "retention purge failed"),
            }
        }
    }

    /// Write-behind of presence state. Alerts are never buffered here.
    fn flush(&mut self) {
        let dirty = self.presence.take_dirty();
        let (unknown, removed) = self.presence.take_unknown_dirty();
        let gateways: Vec<(String, Timestamp)> = self.engine.gateway_names().map(|(n, t)| (n.clone(), t)).collect();
        let r = self
            .sh
            .store
            .put_last_seen_batch(&dirty, !self.sh.cfg.presence.history_window.get().is_zero())
            .and_then(|_| self.sh.store.put_unknown_batch(&unknown, &removed))
            .and_then(|_| self.sh.store.put_gateways(&gateways));
        match r {
            Ok(()) => {
                self.sh.metrics.store_flushes.inc();
            }
            Err(e) => tracing::error!(error = %e, "cannot persist presence"),
        };
    }

    /// Persist alert changes and their notifications in one transaction, fsync,
    /// then wake the outbox. Nothing is sent that is not stored first.
    fn apply(&mut self, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        if !self.alerting() {
            // A standby's engine is rebuilt from the store when it takes over.
            return;
        }
        let now = self.sh.clock.now();
        let mut alerts = Vec::new();
        let mut notes = Vec::new();
        for a in actions {
            match a {
                Action::Save(alert) => {
                    let state = alert.state.as_str();
                    self.publish_episode(&alert);
                    if let Some(me) = self.box_id() {
                        let e = crate::cluster::Episode { from: me.to_string(), alert: alert.clone() };
                        self.publish_cluster(&format!("episode/{}", alert.id), true, serde_json::to_string(&e).expect("serializes"));
                    }
                    self.sh.metrics.alert_event(alert.kind.as_str(), state);
                    tracing::info!(alert = alert.id, kind = alert.kind.as_str(), subject = %alert.subject.id(), state, level = alert.level, "alert changed");
                    alerts.push(alert);
                }
                Action::Notify { alert, levels, kind } => notes.extend(self.notifications(&alert, &levels, kind, now)),
            }
        }
        if let Err(e) = self.sh.store.commit_alerts(&alerts, &mut notes) {
            tracing::error!(error = %e, "CANNOT STORE ALERTS: notifications may be lost; check the disk");
        }
        if !notes.is_empty() {
            self.sh.outbox_wake.notify_waiters();
        }
        self.update_alert_gauges();
    }

    /// Alert episodes go upstream (QoS 1) for the district: state, kind and
    /// subject id, never names, phones or ID numbers.
    fn publish_episode(&self, a: &Alert) {
        let Some(m) = &self.sh.mqtt else { return };
        let body = serde_json::json!({
            "site": self.sh.cfg.site, "id": a.id, "kind": a.kind.as_str(), "severity": a.kind.severity(),
            "subject": a.subject, "state": a.state.as_str(), "level": a.level, "opened_at": a.opened_at,
            "acked_at": a.acked_at, "resolved_at": a.resolved_at,
        });
        let topic = format!("gatewarden/{}/alert", self.sh.cfg.site);
        if let Err(e) = m.try_publish(topic, rumqttc::QoS::AtLeastOnce, false, body.to_string()) {
            tracing::warn!(error = %e, "cannot publish the alert episode");
        }
    }

    /// Retained box health on `gatewarden/<site>/health`, once a minute.
    fn publish_health(&self) {
        let Some(m) = &self.sh.mqtt else { return };
        let open = self.engine.open_alerts().count();
        let body = serde_json::json!({
            "site": self.sh.cfg.site, "at": self.sh.clock.now(), "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": self.sh.started.elapsed().as_secs(), "elders": self.presence.elder_count(), "open_alerts": open,
        });
        let topic = match self.box_id() {
            Some(b) => format!("gatewarden/{}/health/{b}", self.sh.cfg.site),
            None => format!("gatewarden/{}/health", self.sh.cfg.site),
        };
        let _ = m.try_publish(topic, rumqttc::QoS::AtLeastOnce, true, body.to_string());
    }

    fn notifications(&self, a: &Alert, levels: &[usize], kind: NoticeKind, now: Timestamp) -> Vec<Notification> {
        let sh = &self.sh;
        let elder = match &a.subject {
            Subject::Elder(id) => sh.store.get_elder(id).ok().flatten(),
            Subject::Gateway(_) | Subject::Gate(_) => None,
        };
        let grid = elder.as_ref().map(|e| e.grid.clone()).unwrap_or_default();
        let ladder = sh.ladder(&grid);
        let last = elder.as_ref().and_then(|e| self.presence.last_seen(&e.id).cloned());
        let mut out = Vec::new();
        let mut channels_done = BTreeSet::new();
        for &lvl in levels {
            let Some(level) = ladder.get(lvl).or(ladder.last()) else {
                tracing::error!(alert = a.id, grid = %grid, "no escalation ladder: this alert reaches nobody. Configure [[alert.ladder]] or `gatewarden escalation set`");
                sh.metrics.delivery("(none)", "no_route");
                continue;
            };
            let staff: Vec<_> = level.staff.iter().filter_map(|s| sh.store.get_staff(s).ok().flatten()).collect();
            let ctx = message::Context {
                site: &sh.cfg.site,
                site_name: sh.cfg.site_name.as_deref().unwrap_or(&sh.cfg.site),
                language: sh.cfg.language,
                elder: elder.as_ref(),
                last: last.as_ref(),
                level_name: &level.name,
                staff: &staff,
                ack_url: Some(sh.ack_url(a.id, lvl)),
                now,
            };
            let msg = message::render(a, kind, &ctx);
            for ch in &level.channels {
                // Two levels sharing a group robot get one message, not two.
                if !channels_done.insert(ch.clone()) {
                    continue;
                }
                if !sh.senders.contains_key(ch) {
                    tracing::error!(channel = %ch, "ladder names an unknown channel");
                    continue;
                }
                out.push(Notification {
                    id: 0,
                    alert_id: Some(a.id),
                    channel: ch.clone(),
                    kind,
                    level: lvl,
                    message: msg.clone(),
                    created_at: now,
                    attempts: 0,
                    next_attempt_at: now,
                    last_error: None,
                    delivery: Delivery::Pending,
                    delivered_at: None,
                });
            }
        }
        out
    }

    fn update_alert_gauges(&self) {
        let mut counts: HashMap<(AlertKind, AlertState), i64> = HashMap::new();
        for a in self.engine.open_alerts() {
            *counts.entry((a.kind, a.state)).or_default() += 1;
        }
        for k in AlertKind::ALL {
            for s in [AlertState::Firing, AlertState::Acknowledged] {
                let l = AlertLabels { kind: k.as_str().into(), state: s.as_str().into() };
                self.sh.metrics.alerts.get_or_create(&l).set(*counts.get(&(k, s)).unwrap_or(&0));
            }
        }
    }

    fn command(&mut self, c: Command) {
        let now = self.sh.clock.now();
        let res: anyhow::Result<()> = (|| {
            match c {
                Command::ReloadElder(id) => {
                    if let Some(e) = self.sh.store.get_elder(&id)? {
                        self.load_elder(&e)?;
                    }
                }
                Command::RemoveElder(id) => {
                    self.presence.remove_elder(&id);
                    let acts = self.engine.remove_elder(&id, now);
                    self.apply(acts);
                }
                Command::ReloadLeaves(id) => {
                    let leaves = self.sh.store.list_leaves(Some(&id))?.into_iter().map(|l| (l.from, l.until)).collect();
                    if let Some(w) = self.engine.elder_mut(&id) {
                        w.leaves = leaves;
                    }
                    self.tick();
                }
                Command::ReloadLadders => self.reload_ladders()?,
                Command::Observe(obs, reply) => {
                    let _ = reply.send(self.observe(obs));
                }
                Command::Ack { id, by, reply } => {
                    if !self.alerting() {
                        let holder = self.lease.as_ref().and_then(|l| l.holder()).map(|r| r.holder.clone()).unwrap_or_else(|| "(none yet)".into());
                        let _ = reply.send(Err(AckError::Elsewhere { holder }));
                        return Ok(());
                    }
                    let r = self.engine.ack(id, &by, now);
                    let out = match r {
                        Ok(acts) => {
                            let alert = acts.iter().rev().find_map(|a| match a {
                                Action::Save(a) => Some(a.clone()),
                                _ => None,
                            });
                            self.apply(acts);
                            Ok(alert.expect("ack saves the alert"))
                        }
                        Err(e) => Err(e),
                    };
                    let _ = reply.send(out);
                }
                Command::Tick(reply) => {
                    self.tick();
                    let _ = reply.send(());
                }
                Command::Flush(reply) => {
                    self.flush();
                    let _ = reply.send(());
                }
                Command::Alert { kind, subject, detail, firing } if !self.alerting() => {
                    let me = self.box_id().unwrap_or_default().to_string();
                    let a = crate::cluster::PeerAlert { from: me.clone(), kind, subject, detail, firing };
                    self.publish_cluster(&format!("alert/{me}"), false, serde_json::to_string(&a).expect("serializes"));
                }
                Command::Alert { kind, subject, detail, firing } => {
                    let acts = self.engine.handle(Input::External { kind, subject, detail, firing }, now);
                    self.apply(acts);
                }
            }
            Ok(())
        })();
        if let Err(e) = res {
            tracing::error!(error = %format!("{e:#}"), "admin command failed");
        }
        self.sh.metrics.elders.set(self.presence.elder_count() as i64);
    }

    async fn run(mut self, mut mqtt: mpsc::Receiver<Parsed>, mut cmds: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.sh.cfg.presence.tick_interval.get());
        // Pinged from this loop, so a stuck monitor (the heart of alerting) gets us restarted.
        let wd = crate::telemetry::watchdog_interval();
        let mut watchdog = tokio::time::interval(wd.unwrap_or(Duration::from_secs(3600)));
        let mut health = tokio::time::interval(Duration::from_secs(60));
        let mut flush = tokio::time::interval(self.sh.cfg.store.flush_every.get());
        let lease_every = self.sh.cfg.cluster.as_ref().map_or(Duration::from_secs(3600), |c| (c.lease_ttl.get() / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)));
        let mut lease = tokio::time::interval(lease_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                Some(c) = cmds.recv() => self.command(c),
                _ = tick.tick() => self.tick(),
                _ = flush.tick() => self.flush(),
                _ = lease.tick(), if self.lease.is_some() => self.lease_tick(),
                _ = watchdog.tick(), if wd.is_some() => crate::telemetry::sd_notify("WATCHDOG=1"),
                _ = health.tick() => self.publish_health(),
                p = mqtt.recv() => match p {
                    Some(p) => self.on_parsed(p),
                    None => break,
                },
            }
        }
        // Drain what the MQTT task already handed us, then persist everything.
        while let Ok(p) = mqtt.try_recv() {
            self.on_parsed(p);
        }
        self.flush();
        if let Err(e) = self.sh.store.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("monitor stopped; store flushed");
    }
}

/// Build everything and run until SIGTERM / SIGINT (or `cancel`).
pub async fn run(cfg: Config, config_path: &std::path::Path, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let clock = if cfg.debug.manual_clock {
        tracing::warn!("debug.manual_clock is on: the clock can be moved through the API. Never use this on a real gate");
        Clock::adjustable()
    } else {
        Clock::system()
    };
    if let Some(parent) = cfg.store.path.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let store = Store::open(&cfg.store.path)?;
    let admin_token = match cfg.admin_token().map_err(anyhow::Error::msg)? {
        Some(t) => t,
        None => {
            let t = store.secret("admin_token")?;
            let path = admin_token_path(&cfg);
            write_private(&path, &t).with_context(|| format!("cannot write the admin token to {}", path.display()))?;
            tracing::info!(path = %path.display(), "admin API token written (the CLI reads it from there)");
            t
        }
    };
    let ack_secret = match cfg.ack_secret().map_err(anyhow::Error::msg)? {
        Some(s) => s.into_bytes(),
        None => store.secret("ack_link_key")?.into_bytes(),
    };
    if cfg.alert.ladder.is_empty() && store.list_ladders()?.is_empty() {
        tracing::warn!("no escalation ladder is configured: alerts will reach nobody. Add [[alert.ladder]] to the config");
    }
    let metrics = Arc::new(Metrics::new());
    let timeout = cfg.alert.outbox.request_timeout.get();
    let senders: HashMap<String, Sender> =
        cfg.alert.channels.iter().map(|c| (c.name.clone(), Sender::new(c.clone(), timeout))).collect();
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (mqtt_tx, mqtt_rx) = mpsc::channel(4096);
    let (mqtt_client, mqtt_loop) = crate::mqtt::connect(&cfg);
    let sync = match cfg.cluster.as_ref().and_then(|c| c.enrolment.zip(c.sync_key_file.clone())) {
        Some((role, file)) => {
            let keys = crate::cluster::sync::SyncKeys::load(&file).with_context(|| format!("cluster.sync_key_file {}", file.display()))?;
            Some((role, keys))
        }
        None => None,
    };
    // With enrolment sync, credential hashes are keyed from the site's sync key
    // so a PIN enrolled on the source opens every box's gates.
    let credential_key = match &sync {
        Some((_, k)) => k.credentials.clone(),
        None => store.secret("credential_key")?.into_bytes(),
    };
    let key_file = template_key_path(&cfg);
    let keys = crate::store::TemplateKeys::load_or_create(&key_file).with_context(|| format!("template key file {}", key_file.display()))?;
    let finish_rotation = keys.previous.is_some();
    store.set_template_keys(keys.clone());
    let resealed = store.reseal_templates()?;
    if resealed > 0 {
        tracing::info!(resealed, "face templates re-sealed under the current key");
    }
    if finish_rotation {
        // A rotation was interrupted: everything is under the new key now.
        let k = crate::store::TemplateKeys { current: keys.current, previous: None };
        k.save(&key_file)?;
        store.set_template_keys(k);
    }
    let vision_enabled = cfg.vision.enabled.unwrap_or_else(|| cfg.gates.iter().any(|g| g.camera.is_some()));
    let (gate_tx, gate_rx) = mpsc::channel(64);
    let camera_stats: crate::gate::task::CameraStats = Default::default();
    let (vision_tx, vision_rx) = mpsc::channel(16);
    if vision_enabled {
        // Fail fast, naming the file and the fix, rather than in the child.
        for f in [crate::vision::face::DETECTOR, crate::vision::face::EMBEDDER, crate::vision::liveness::V2, crate::vision::liveness::V1SE] {
            crate::vision::runtime::verify(&cfg.vision.models_dir.join(f))?;
        }
        if cfg.gates.iter().any(|g| g.read_plates && g.camera.is_some()) {
            for f in [crate::vision::plate::DETECTOR, crate::vision::plate::RECOGNIZER, crate::vision::plate::CLASSIFIER] {
                crate::vision::runtime::verify(&cfg.vision.models_dir.join(f))?;
            }
        }
        let lib = crate::vision::runtime::library_path(&cfg.vision.models_dir, cfg.vision.ort_library.as_deref());
        anyhow::ensure!(lib.exists(), "the ONNX Runtime library {} is missing. Fix: run `bash deploy/fetch-models.sh`, or set vision.ort_library", lib.display());
    }
    let sh = Arc::new(Shared {
        cfg: cfg.clone(),
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        commands: cmd_tx,
        outbox_wake: Arc::new(Notify::new()),
        senders,
        ack_secret,
        admin_token,
        started: Instant::now(),
        gates: (!cfg.gates.is_empty()).then(|| gate_tx.clone()),
        vision: vision_enabled.then(|| vision_tx.clone()),
        credential_key: credential_key.clone(),
        mqtt: Some(mqtt_client.clone()),
        cluster: Arc::new(std::sync::RwLock::new(ClusterView {
            box_id: cfg.cluster.as_ref().map(|c| c.box_id.clone()).unwrap_or_default(),
            alerting: cfg.cluster.is_none(),
            ..Default::default()
        })),
        sync,
        sessions: Default::default(),
        imports: Default::default(),
    });

    if cfg.mqtt.external_addr().map_err(anyhow::Error::msg)?.is_none() {
        crate::mqtt::start_embedded_broker(cfg.mqtt.embedded_listen)?;
    }
    let monitor = Monitor::load(sh.clone())?;
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .with_context(|| format!("cannot listen on http.listen = {}", cfg.http.listen))?;
    tracing::info!(listen = %cfg.http.listen, site = %cfg.site, "gatewarden running: /healthz, /metrics, /api/v1");

    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(monitor.run(mqtt_rx, cmd_rx, cancel.clone()));
    let enrolment_tx = match &sh.sync {
        Some((crate::cluster::sync::EnrolmentRole::Replica, _)) => {
            let (tx, rx) = mpsc::channel(1024);
            tasks.spawn(crate::cluster::sync::run_replica(sh.clone(), rx, cancel.clone()));
            Some(tx)
        }
        Some((crate::cluster::sync::EnrolmentRole::Source, _)) => {
            let sh = sh.clone();
            tasks.spawn(async move {
                match sh.republish_enrolment().await {
                    Ok(n) => tracing::info!(records = n, "enrolment published for the replicas"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot publish enrolment"),
                }
            });
            None
        }
        None => None,
    };
    tasks.spawn(crate::mqtt::run(cfg.clone(), mqtt_client.clone(), mqtt_loop, mqtt_tx, enrolment_tx, metrics.clone(), cancel.clone()));
    if !cfg.gates.is_empty() {
        let rules = cfg
            .gates
            .iter()
            .map(|g| crate::gate::policy::GateRule {
                name: g.name.clone(),
                direction: match g.direction {
                    crate::config::GateDirection::In => crate::gate::log::Direction::In,
                    crate::config::GateDirection::Out => crate::gate::log::Direction::Out,
                },
                visitor_hours: g.visitor_hours.as_deref().and_then(|h| h.parse().ok()),
                resident_hours: g.resident_hours.as_deref().and_then(|h| h.parse().ok()),
            })
            .collect();
        let a = &cfg.access;
        let settings = crate::gate::policy::Settings {
            match_threshold: cfg.vision.match_threshold,
            liveness_threshold: cfg.vision.liveness_threshold,
            agree_m: a.agree_frames,
            agree_n: a.window_frames,
            cooldown: chrono_dur(a.cooldown.get()),
            anti_passback: a.anti_passback,
            plate_votes: a.plate_votes,
            plate_sure: a.plate_sure_confidence,
            plate_gone_after: chrono_dur(a.plate_gone_after.get()),
            tolerate_province: a.tolerate_province,
            ..Default::default()
        };
        let mut policy = crate::gate::policy::Policy::new(settings, rules);
        for r in store.list_people()? {
            policy.upsert(r.person);
        }
        for v in store.list_vehicles()? {
            policy.upsert_vehicle(v);
        }
        let task = crate::gate::task::GateTask {
            sh: sh.clone(),
            policy,
            actuators: cfg.gates.iter().map(|g| (g.name.clone(), crate::gate::actuator::Actuator::new(g.actuator.clone(), Some(mqtt_client.clone())))).collect(),
            mqtt: Some(mqtt_client.clone()),
            cameras: cfg.gates.iter().filter(|g| g.camera.is_some()).map(|g| g.name.clone()).collect(),
            camera_stats: camera_stats.clone(),
            snapshot_dir: cfg.access.snapshot_dir.clone().unwrap_or_else(|| admin_token_path(&cfg).with_file_name("snapshots")),
            credential_key,
        };
        tasks.spawn(task.run(gate_rx, cancel.clone()));
    }
    if vision_enabled {
        let binary = match std::env::var_os("GATEWARDEN_VISION_BIN") {
            Some(p) => std::path::PathBuf::from(p),
            None => std::env::current_exe()?.with_file_name("gatewarden-vision"),
        };
        anyhow::ensure!(binary.exists(), "{} is missing: it is built and installed with gatewarden", binary.display());
        let sup = crate::gate::task::VisionSupervisor {
            binary,
            config: std::fs::canonicalize(config_path).with_context(|| format!("cannot find {}", config_path.display()))?,
            store: store.clone(),
            gates: gate_tx.clone(),
            stats: camera_stats.clone(),
        };
        tasks.spawn(sup.run(vision_rx, cancel.clone()));
    }
    let backoff = Backoff { initial: cfg.alert.outbox.retry_initial.get(), max: cfg.alert.outbox.retry_max.get() };
    for s in sh.senders.values() {
        let w = Worker {
            sender: s.clone(),
            store: store.clone(),
            clock: clock.clone(),
            wake: sh.outbox_wake.clone(),
            metrics: metrics.clone(),
            backoff,
        };
        tasks.spawn(w.run(cancel.clone()));
    }
    let app = crate::admin::api::router(sh.clone());
    let c = cancel.clone();
    tasks.spawn(async move {
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let r = axum::serve(listener, app).with_graceful_shutdown(async move { c.cancelled().await }).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });

    crate::telemetry::sd_notify("READY=1");
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        c.cancel();
    });
    cancel.cancelled().await;
    crate::telemetry::sd_notify("STOPPING=1");
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            r = tasks.join_next() => if r.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!("tasks did not stop within 10 s; flushing and exiting");
                break;
            }
        }
    }
    store.flush()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

pub fn template_key_path(cfg: &Config) -> std::path::PathBuf {
    cfg.access.template_key_file.clone().unwrap_or_else(|| admin_token_path(cfg).with_file_name("template.key"))
}

/// Seal every face template under a fresh key. The key file holds the new key
/// and the old one until every template is re-sealed, so a crash at any point
/// leaves each template openable.
pub fn rotate_template_key(cfg: &Config, store: &Store) -> anyhow::Result<usize> {
    let path = template_key_path(cfg);
    let old = crate::store::TemplateKeys::load_or_create(&path)?;
    let both = crate::store::TemplateKeys { current: rand::random(), previous: Some(old.current) };
    both.save(&path)?;
    store.set_template_keys(both.clone());
    let n = store.reseal_templates()?;
    let new = crate::store::TemplateKeys { current: both.current, previous: None };
    new.save(&path)?;
    store.set_template_keys(new);
    tracing::info!(resealed = n, "template key rotated");
    Ok(n)
}

pub fn admin_token_path(cfg: &Config) -> std::path::PathBuf {
    let p = &cfg.store.path;
    p.parent().unwrap_or(std::path::Path::new(".")).join("admin.token")
}

fn write_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(content.as_bytes())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
