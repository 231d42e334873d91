//! The monitor task: the heart of alerting. It owns `Presence`, the alert
//! `Engine` and the cluster `Lease`, takes sightings from the MQTT task and
//! commands from the admin API (both bounded channels that block when full),
//! commits every alert change with its notifications before anything is sent,
//! and wakes the outbox.
//!
//! - `cluster`: the lease, shared sightings and mirrored episodes;
//! - `upstream`: alert episodes and box health for the district.
//!
//! Retention runs in its own task (`crate::retention`).

mod cluster;
mod upstream;

use crate::alert::outbox::{Delivery, Notification};
use crate::alert::AckLinks;
use crate::gate::task::GateMsg;
use crate::mqtt::{Acks, Inbound, Parsed, Receipt};
use crate::telemetry::{AlertLabels, Metrics};
use config::Config;
use domain::alert::engine::{AckError, Action, Engine, Input, Watch};
use domain::alert::{notify, Alert, AlertKind, AlertState, NoticeKind, Subject};
use domain::clock::{chrono_dur, Clock, Timestamp};
use domain::presence::{Elder, Observation, Presence, PresenceEvent};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Requests from the admin API to the monitor, which owns the state machines.
pub enum Command {
    ReloadElder(String),
    RemoveElder(String),
    ReloadLeaves(String),
    ReloadLadders,
    /// A sighting from the API or a gate; answers how many presence events it made.
    Observe(Observation, oneshot::Sender<usize>),
    Ack {
        id: u64,
        by: String,
        outcome: Option<domain::alert::Outcome>,
        note: String,
        reply: oneshot::Sender<Result<Alert, AckError>>,
    },
    /// Close an alert by hand, with a reason.
    Resolve {
        id: u64,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<Alert, AckError>>,
    },
    Tick(oneshot::Sender<()>),
    /// Write buffered presence to the store now (before reading it back).
    Flush(oneshot::Sender<()>),
    /// Fault injection for tests (`[debug] manual_clock` only): panic the monitor.
    Panic,
    /// Fault injection for tests: block the monitor's thread this long.
    Hang(Duration),
    /// Raise or clear an alert from elsewhere in the box (gates, cameras).
    Alert {
        kind: AlertKind,
        subject: Subject,
        detail: String,
        firing: bool,
    },
}

/// How other tasks reach the monitor: a bounded channel (256) that waits when
/// full, so a command is never dropped.
#[derive(Clone)]
pub struct MonitorHandle(mpsc::Sender<Command>);

impl MonitorHandle {
    pub fn new(tx: mpsc::Sender<Command>) -> Self {
        MonitorHandle(tx)
    }

    pub async fn send(&self, c: Command) -> anyhow::Result<()> {
        self.0.send(c).await.map_err(|_| anyhow::anyhow!("the daemon is shutting down"))
    }
}

/// What the monitor needs from the rest of the box, and nothing else.
pub struct Handles {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    /// For the cluster topics and upstream episodes and health.
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// Wakes the outbox workers after a commit.
    pub outbox_wake: Arc<Notify>,
    /// Credentials that arrive over MQTT go to the gate task.
    pub gates: Option<mpsc::Sender<GateMsg>>,
    /// Which box alerts, for /healthz (written here, read by the API).
    pub cluster: Arc<std::sync::RwLock<ClusterView>>,
    /// The configured channel names (a ladder may name others by mistake).
    pub channels: BTreeSet<String>,
    pub ack_links: AckLinks,
    pub started: Instant,
    /// The site's key for cluster messages (`cluster.key_file`); None on a single box.
    pub cluster_key: Option<Vec<u8>>,
    /// The wall clock as the monitor judges it, for /healthz.
    pub clock_view: Arc<std::sync::RwLock<ClockView>>,
}

/// The wall clock's health, as /healthz shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClockView {
    /// Before the build time (minus a day): absence is not judged.
    pub implausible: bool,
    /// The last step seen (seconds, positive forward) and when (RFC 3339).
    pub last_step_s: Option<i64>,
    pub last_step_at: Option<String>,
    /// Absence is held until then after a large forward step.
    pub holding_until: Option<String>,
}

impl ClockView {
    pub fn degraded(&self, now: Timestamp) -> bool {
        self.implausible || self.holding_until.as_deref().and_then(|h| chrono::DateTime::parse_from_rfc3339(h).ok()).is_some_and(|h| now < h)
    }
}

/// Alert changes and their notifications that the store has not taken yet
/// (a full disk). Held in order and retried; until stored, nothing in them is
/// sent, published or acknowledged, and neither is any MQTT message read after
/// them (QoS 1 acknowledgements go out in order).
#[derive(Default)]
struct Batch {
    alerts: Vec<Alert>,
    notes: Vec<Notification>,
    /// An acknowledgement's reply, given once it is stored.
    replies: Vec<(oneshot::Sender<Result<Alert, AckError>>, Alert)>,
    receipts: Vec<Receipt>,
}

type AckReply = (oneshot::Sender<Result<Alert, AckError>>, Alert);

/// The earliest plausible wall-clock time: a day before this binary was built.
pub fn plausible_after() -> Timestamp {
    let built: i64 = env!("GATEWARDEN_BUILD_UNIX").parse().unwrap_or(0);
    chrono::DateTime::from_timestamp(built - 86_400, 0).unwrap_or_default()
}

/// Which box alerts, as /healthz shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClusterView {
    #[serde(rename = "box")]
    pub box_id: String,
    /// Whether this box runs the alert engine and sends notifications.
    pub alerting: bool,
    pub lease_holder: Option<String>,
    pub lease_epoch: Option<u64>,
    /// Cluster messages refused (unsigned, bad signature, stale…) since start.
    pub rejected_messages: u64,
    /// When a lease that does not verify was last seen (unix ms): someone
    /// without the key is trying to silence this box. Health is degraded for
    /// 10 minutes after; the box keeps alerting.
    pub forged_lease_at_ms: Option<i64>,
}

impl ClusterView {
    /// Whether a forged lease was seen in the last 10 minutes.
    pub fn under_attack(&self, now_ms: i64) -> bool {
        self.forged_lease_at_ms.is_some_and(|t| now_ms - t < 10 * 60 * 1000)
    }
}

/// The monitor task: owns `Presence`, the alert `Engine` and the cluster
/// `Lease`; turns sightings, ticks and commands into committed alerts.
pub struct Monitor {
    io: Handles,
    presence: Presence,
    engine: Engine,
    /// None: a single box, which always alerts.
    lease: Option<domain::cluster::Lease>,
    /// QoS 1 receipts of applied messages, waiting for room in the client's queue.
    acks: Acks,
    /// Each gateway's last-heard as last written: a gateway is written again
    /// only when it is new or its time moved by a minute (not on every flush).
    gateways_written: HashMap<String, Timestamp>,
    /// Wall-clock steps, and the start of the current clock frame: times
    /// taken since then move with a step (`clock::reanchor`).
    steps: domain::clock::StepWatch,
    frame_since: Timestamp,
    last_step_check: Instant,
    /// Oldest first; see `Batch`.
    uncommitted: VecDeque<Batch>,
    /// The store refused a write and has not taken one since.
    store_failing: bool,
    /// The site day whose watch list went out last (kept in the store).
    watch_sent_on: Option<chrono::NaiveDate>,
}

/// Wall-clock milliseconds for the cluster lease. Not the injectable clock:
/// the lease is shared between boxes and must follow real time (NTP).
fn wall_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Monitor {
    pub fn load(io: Handles) -> anyhow::Result<Monitor> {
        let cfg = io.cfg.clone();
        let judging_from = io.clock.now() + chrono_dur(cfg.presence.startup_grace.get());
        let mut presence = Presence::new(cfg.presence.unknown_bands_max, cfg.presence.max_clock_skew.get());
        for u in io.store.list_unknown()? {
            presence.load_unknown(u);
        }
        let lease = cfg.cluster.as_ref().map(|c| domain::cluster::Lease::new(c.box_id.clone(), c.role, c.lease_ttl.get(), c.claim_settle.get()));
        let engine = Engine::new(cfg.engine_settings(), judging_from, 1);
        let steps = domain::clock::StepWatch::new(cfg.presence.clock_step_threshold.get());
        let frame_since = io.clock.now();
        let mut m = Monitor {
            io,
            presence,
            engine,
            lease,
            acks: Acks::default(),
            gateways_written: HashMap::new(),
            steps,
            frame_since,
            last_step_check: Instant::now(),
            uncommitted: VecDeque::new(),
            store_failing: false,
            watch_sent_on: None,
        };
        m.watch_sent_on = m.io.store.watch_list_sent()?.and_then(|d| d.parse().ok());
        m.rebuild_engine(judging_from)?;
        // Nothing loaded may lie in the future (a clock that ran ahead before a restart).
        let now = m.io.clock.now();
        m.presence.clock_stepped(now, chrono::Duration::zero(), now);
        let acts = m.engine.clock_stepped(now, chrono::Duration::zero(), now, None);
        m.apply(acts);
        m.check_clock();
        m.io.metrics.elders.set(m.presence.elder_count() as i64);
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
        let now = self.io.clock.now();
        let store = &self.io.store;
        let mut engine = Engine::new(self.io.cfg.engine_settings(), judging_from, 1);
        for a in store.list_alerts()? {
            engine.load_alert(a);
        }
        for (g, at) in store.list_gateways()? {
            engine.load_gateway(g, at, now);
        }
        self.engine = engine;
        for e in self.io.store.list_elders()? {
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
            None => self.io.store.get_last_seen(&e.id)?,
        };
        let leaves = self.io.store.list_leaves(Some(&e.id))?.into_iter().map(|l| (l.from, l.until)).collect();
        self.engine.upsert_elder(
            e.id.clone(),
            Watch {
                grid: e.grid.clone(),
                enrolled_at: Some(e.enrolled_at),
                last_seen: last.as_ref().map(|l| l.at),
                last_band: last.as_ref().and_then(|l| l.band_at),
                has_band: !e.bands.is_empty(),
                leaves,
                absence_after: self.io.cfg.alert.absence_after_for(e.absence_after_secs, &e.categories).map(chrono_dur),
            },
        );
        self.presence.upsert_elder(e, last);
        Ok(())
    }

    fn reload_ladders(&mut self) -> anyhow::Result<()> {
        self.engine.set_default_ladder_len(self.io.cfg.alert.ladder.len());
        for (grid, levels) in self.io.store.list_ladders()? {
            self.engine.set_ladder_len(&grid, Some(levels.len()));
        }
        Ok(())
    }

    fn observe(&mut self, obs: Observation) -> usize {
        self.observe_from(obs, true)
    }

    /// Presence, then the engine, for one sighting; returns how many presence
    /// events it made. Runs for every MQTT sighting: events move, never clone.
    fn observe_from(&mut self, obs: Observation, local: bool) -> usize {
        // At most once a second: a step is then caught before more than a
        // second of sightings is stamped in the new frame.
        if self.last_step_check.elapsed() >= Duration::from_secs(1) {
            self.check_clock();
        }
        if local {
            self.share_sighting(&obs);
        }
        let now = self.io.clock.now();
        let alerting = self.alerting();
        let is_band = matches!(obs, Observation::Band(_));
        let events = self.presence.handle(obs, now);
        let made = events.len();
        let mut seen = false;
        let mut actions = Vec::new();
        for ev in events {
            match &ev {
                PresenceEvent::Seen { source, .. } => {
                    seen = true;
                    self.io.metrics.sighting(source.as_str());
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
                actions.extend(self.engine.handle(Input::Presence(ev), now));
            }
        }
        if is_band && !seen {
            self.io.metrics.unknown_band_sightings.inc();
        }
        self.apply(actions);
        made
    }

    fn on_parsed(&mut self, p: Parsed) {
        match p {
            Parsed::Sightings(all) => {
                for s in all {
                    self.observe(Observation::Band(s));
                }
            }
            Parsed::GatewayStatus { gateway, online } => {
                tracing::info!(%gateway, online, "gateway status");
                let acts = self.engine.handle(Input::GatewayStatus { gateway, online }, self.io.clock.now());
                self.apply(acts);
            }
            Parsed::Credential { gate, kind, value } => match &self.io.gates {
                // Never block the monitor on the gate task: a full queue drops the reading (the person retries).
                Some(g) => {
                    if g.try_send(GateMsg::Credential { gate, kind, value, reply: None }).is_err() {
                        tracing::warn!("gate task busy; credential dropped");
                    }
                }
                None => tracing::warn!(%gate, "credential for a gate that is not configured"),
            },
            Parsed::Cluster { rest, text } => self.on_cluster_signed(&rest, &text),
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

    /// Compare the wall clock with the monotonic one; on a step, re-anchor
    /// presence and the engine, and after a large forward step hold absence
    /// for `presence.clock_step_grace` and tell ops (log, metric, /healthz).
    fn check_clock(&mut self) {
        self.last_step_check = Instant::now();
        let now = self.io.clock.now();
        let implausible = now < plausible_after();
        if let Some(by) = self.steps.observe(now, self.io.clock.monotonic()) {
            let forward = by > chrono::Duration::zero();
            let hold = forward.then(|| now + chrono_dur(self.io.cfg.presence.clock_step_grace.get()));
            self.presence.clock_stepped(self.frame_since, by, now);
            let acts = self.engine.clock_stepped(self.frame_since, by, now, hold);
            self.apply(acts);
            self.frame_since = now;
            self.io.metrics.clock_steps.get_or_create(&crate::telemetry::KindLabel { kind: if forward { "forward" } else { "backward" }.into() }).inc();
            tracing::error!(
                step_s = by.num_seconds(),
                holding_absence_until = hold.map(|h| h.to_rfc3339()),
                "WALL CLOCK STEPPED: last-seen times re-anchored{}",
                if forward { "; absence is held for the grace period instead of paging every grid worker" } else { "" }
            );
            let mut v = self.io.clock_view.write().unwrap_or_else(|e| e.into_inner());
            v.last_step_s = Some(by.num_seconds());
            v.last_step_at = Some(now.to_rfc3339());
            let judging = self.engine.judging_from();
            v.holding_until = (judging > now).then(|| judging.to_rfc3339());
        }
        let mut v = self.io.clock_view.write().unwrap_or_else(|e| e.into_inner());
        if implausible && !v.implausible {
            tracing::error!(now = %now.to_rfc3339(), "the wall clock is before this build: absence is not judged until time is set (NTP)");
        }
        v.implausible = implausible;
    }

    fn tick(&mut self) {
        self.check_clock();
        let now = self.io.clock.now();
        if self.io.clock_view.read().unwrap_or_else(|e| e.into_inner()).implausible {
            return;
        }
        if self.alerting() {
            let acts = self.engine.handle(Input::Tick, now);
            self.apply(acts);
            self.watch_list(now);
        }
    }

    /// Each grid's morning watch list, once a day at `alert.watch_list_at`,
    /// to the first level of the grid's ladder, through the outbox (stored
    /// before sent, like every notification).
    fn watch_list(&mut self, now: Timestamp) {
        let Some(at) = self.io.cfg.alert.watch_list_time() else { return };
        let Some(day) = domain::alert::watch::due(at, now, self.watch_sent_on) else { return };
        let io = &self.io;
        let presence = &self.presence;
        let battery = |id: &str| presence.last_seen(id).and_then(|l| l.battery);
        let mut lists = self.engine.watch_list(now, &battery);
        for w in &mut lists {
            for d in &mut w.offline {
                *d = io.cfg.place_name(d);
            }
        }
        let who = |id: &str| match io.store.get_elder(id).ok().flatten() {
            Some(e) if e.address().is_empty() => e.name,
            Some(e) => format!("{}（{}）", e.name, e.address()),
            None => id.to_string(),
        };
        let site_name = io.cfg.site_name.as_deref().unwrap_or(&io.cfg.site);
        let mut notes = Vec::new();
        for w in &lists {
            let ladder = crate::alert::ladder(&io.store, &io.cfg, &w.grid);
            let Some(first) = ladder.first() else {
                tracing::warn!(grid = %w.grid, "no escalation ladder: the watch list reaches nobody");
                continue;
            };
            let message = domain::alert::watch::render(w, &who, &io.cfg.site, site_name, io.cfg.language, now);
            for ch in first.channels.iter().filter(|c| io.channels.contains(c.as_str())) {
                notes.push(Notification {
                    id: 0,
                    alert_id: None,
                    channel: ch.clone(),
                    kind: NoticeKind::WatchList,
                    alert_kind: None,
                    level: 0,
                    message: message.clone(),
                    created_at: now,
                    attempts: 0,
                    next_attempt_at: now,
                    last_error: None,
                    delivery: domain::alert::outbox::Delivery::Pending,
                    delivered_at: None,
                });
            }
        }
        tracing::info!(%day, grids = lists.len(), messages = notes.len(), "morning watch list");
        // The day is marked once the list is queued: a crash in between sends it twice, never not at all.
        self.uncommitted.push_back(Batch { notes, ..Batch::default() });
        self.commit_pending();
        self.watch_sent_on = Some(day);
        if let Err(e) = self.io.store.set_watch_list_sent(&day.to_string()) {
            tracing::warn!(error = %e, "cannot record the watch list's day; it may go out again after a restart");
        }
    }

    /// Write-behind of presence state. Alerts are never buffered here.
    fn flush(&mut self) {
        let dirty = self.presence.take_dirty();
        let (unknown, removed) = self.presence.take_unknown_dirty();
        let written = &self.gateways_written;
        let gateways: Vec<(String, Timestamp)> = self
            .engine
            .gateway_names()
            .filter(|(n, t)| written.get(*n).is_none_or(|w| (*t - *w).abs() >= chrono::Duration::minutes(1)))
            .map(|(n, t)| (n.clone(), t))
            .collect();
        let refused = self.engine.gateways_refused as i64;
        if refused > self.io.metrics.gateways_refused.get() {
            tracing::warn!(
                refused,
                max = self.io.cfg.presence.gateways_max,
                "messages from gateways beyond presence.gateways_max were ignored: raise it if the site really has that many"
            );
            self.io.metrics.gateways_refused.set(refused);
        }
        let r = self
            .io
            .store
            .put_last_seen_batch(&dirty, !self.io.cfg.presence.history_window.get().is_zero())
            .and_then(|_| self.io.store.put_unknown_batch(&unknown, &removed))
            .and_then(|_| self.io.store.put_gateways(&gateways));
        match r {
            Ok(()) => {
                self.io.metrics.store_flushes.inc();
                self.gateways_written.extend(gateways);
            }
            Err(e) => {
                // Handed back, so the next flush after the store recovers writes it.
                self.presence.unwritten(dirty, unknown, removed);
                self.store_failed(&e, "cannot persist presence; kept in memory and retried");
            }
        };
    }

    /// Persist alert changes and their notifications in one transaction, fsync,
    /// then publish them and wake the outbox. Nothing is sent that is not
    /// stored first; what the store refuses waits in `uncommitted`.
    fn apply(&mut self, actions: Vec<Action>) {
        self.apply_then(actions, None);
    }

    /// `apply`, then answer an acknowledgement once it is stored.
    fn apply_then(&mut self, actions: Vec<Action>, reply: Option<AckReply>) {
        if actions.is_empty() {
            return;
        }
        if !self.alerting() {
            // A standby's engine is rebuilt from the store when it takes over.
            return;
        }
        let now = self.io.clock.now();
        let mut batch = Batch { replies: reply.into_iter().collect(), ..Batch::default() };
        for a in actions {
            match a {
                Action::Save(alert) => {
                    let state = alert.state.as_str();
                    self.io.metrics.alert_event(alert.kind.as_str(), state);
                    tracing::info!(alert = alert.id, kind = alert.kind.as_str(), subject = %alert.subject.id(), state, level = alert.level, "alert changed");
                    batch.alerts.push(alert);
                }
                Action::Notify { alert, levels, kind } => batch.notes.extend(self.notifications(&alert, &levels, kind, now)),
            }
        }
        self.uncommitted.push_back(batch);
        self.commit_pending();
        self.update_alert_gauges();
    }

    /// Store the held batches in order; each one stored is then published,
    /// handed to the outbox, answered and acknowledged to the broker.
    fn commit_pending(&mut self) {
        while let Some(b) = self.uncommitted.front_mut() {
            if let Err(e) = self.io.store.commit_alerts(&b.alerts, &mut b.notes) {
                let held = self.uncommitted.iter().map(|b| b.alerts.len() + b.notes.len()).sum::<usize>();
                self.store_failed(&e, "CANNOT STORE ALERTS: held in memory and retried every second, nothing is sent until stored; free disk space");
                self.io.metrics.alerts_uncommitted.set(held as i64);
                return;
            }
            let b = self.uncommitted.pop_front().expect("front exists");
            for alert in &b.alerts {
                self.publish_episode(alert);
                if let Some(me) = self.box_id() {
                    let e = domain::cluster::Episode { from: me.to_string(), alert: alert.clone() };
                    self.publish_cluster(&format!("episode/{}", alert.id), true, serde_json::to_string(&e).expect("serializes"));
                }
            }
            if !b.notes.is_empty() {
                self.io.outbox_wake.notify_waiters();
            }
            for (tx, a) in b.replies {
                let _ = tx.send(Ok(a));
            }
            if let Some(c) = &self.io.mqtt {
                for r in b.receipts {
                    self.acks.push(c, r);
                }
            }
        }
        self.io.metrics.alerts_uncommitted.set(0);
    }

    /// A write failed: count it, and say so once until the store recovers.
    fn store_failed(&mut self, e: &store::StoreError, what: &str) {
        self.io.metrics.store_write_failures.inc();
        self.io.metrics.store_writable.set(0);
        if !self.store_failing {
            tracing::error!(error = %e, "{what}");
        }
        self.store_failing = true;
    }

    /// Every second while the store refuses writes: reopen it once the disk
    /// takes writes again (`Store::recover`), then store what was held.
    fn retry_store(&mut self) {
        match self.io.store.recover() {
            Ok(_) => {
                if self.store_failing {
                    tracing::warn!(held = self.uncommitted.len(), "the store takes writes again; storing what was held");
                }
                self.store_failing = false;
                self.io.metrics.store_writable.set(1);
                self.commit_pending();
                if self.uncommitted.is_empty() {
                    self.flush();
                }
            }
            Err(e) => tracing::debug!(error = %e, "the store still refuses writes"),
        }
    }

    /// Fetch who an alert reaches, plan the messages (`domain::alert::notify`)
    /// and make them outbox records.
    fn notifications(&self, a: &Alert, levels: &[usize], kind: NoticeKind, now: Timestamp) -> Vec<Notification> {
        let io = &self.io;
        let elder = match &a.subject {
            Subject::Elder(id) => io.store.get_elder(id).ok().flatten(),
            Subject::Gateway(_) | Subject::Gate(_) => None,
        };
        let grid = elder.as_ref().map(|e| e.grid.clone()).unwrap_or_default();
        let ladder = crate::alert::ladder(&io.store, &io.cfg, &grid);
        let staff: Vec<Vec<_>> = ladder.iter().map(|l| l.staff.iter().filter_map(|s| io.store.get_staff(s).ok().flatten()).collect()).collect();
        let last = elder.as_ref().and_then(|e| self.presence.last_seen(&e.id).cloned());
        let known = |ch: &str| io.channels.contains(ch);
        // A face at a gate facing out is the elder leaving, not "last seen".
        let left_via = last
            .as_ref()
            .filter(|l| l.source == domain::presence::Source::Face)
            .and_then(|l| io.cfg.gates.iter().find(|g| g.name == l.place && g.direction == config::GateDirection::Out))
            .map(|g| g.display_name.as_deref().unwrap_or(&g.name));
        let carries = |ch: &str, kind| io.cfg.alert.channels.iter().find(|c| c.name == ch).is_none_or(|c| c.carries(kind));
        let to = notify::Recipients {
            elder: elder.as_ref(),
            last: last.as_ref(),
            ladder: &ladder,
            staff: &staff,
            channel_known: &known,
            channel_carries: &carries,
            left_via,
            place_name: &|p| io.cfg.place_name(p),
        };
        let site = notify::Site { site: &io.cfg.site, site_name: io.cfg.site_name.as_deref().unwrap_or(&io.cfg.site), language: io.cfg.language };
        let (planned, unrouted) = notify::plan(a, levels, kind, &to, &site, &|lvl| io.ack_links.url(a, lvl), now);
        for u in unrouted {
            match u {
                notify::Unrouted::NoLadder => {
                    tracing::error!(alert = a.id, grid = %grid, "no escalation ladder: this alert reaches nobody. Configure [[alert.ladder]] or `gatewarden escalation set`");
                    io.metrics.delivery("(none)", "no_route");
                }
                notify::Unrouted::UnknownChannel(ch) => tracing::error!(channel = %ch, "ladder names an unknown channel"),
            }
        }
        planned
            .into_iter()
            .map(|p| Notification {
                id: 0,
                alert_id: Some(a.id),
                channel: p.channel,
                kind,
                alert_kind: Some(a.kind),
                level: p.level,
                message: p.message,
                created_at: now,
                attempts: 0,
                next_attempt_at: now,
                last_error: None,
                delivery: Delivery::Pending,
                delivered_at: None,
            })
            .collect()
    }

    fn update_alert_gauges(&self) {
        let mut counts: HashMap<(AlertKind, AlertState), i64> = HashMap::new();
        for a in self.engine.open_alerts() {
            *counts.entry((a.kind, a.state)).or_default() += 1;
        }
        for k in AlertKind::ALL {
            for s in [AlertState::Firing, AlertState::Acknowledged] {
                let l = AlertLabels { kind: k.as_str().into(), state: s.as_str().into() };
                self.io.metrics.alerts.get_or_create(&l).set(*counts.get(&(k, s)).unwrap_or(&0));
            }
        }
    }

    fn command(&mut self, c: Command) {
        let now = self.io.clock.now();
        let res: anyhow::Result<()> = (|| {
            match c {
                Command::ReloadElder(id) => {
                    if let Some(e) = self.io.store.get_elder(&id)? {
                        self.load_elder(&e)?;
                    }
                }
                Command::RemoveElder(id) => {
                    self.presence.remove_elder(&id);
                    let acts = self.engine.remove_elder(&id, now);
                    self.apply(acts);
                }
                Command::ReloadLeaves(id) => {
                    let leaves = self.io.store.list_leaves(Some(&id))?.into_iter().map(|l| (l.from, l.until)).collect();
                    if let Some(w) = self.engine.elder_mut(&id) {
                        w.leaves = leaves;
                    }
                    self.tick();
                }
                Command::ReloadLadders => self.reload_ladders()?,
                Command::Observe(obs, reply) => {
                    let _ = reply.send(self.observe(obs));
                }
                Command::Ack { id, by, outcome, note, reply } => {
                    let r = self.alerting_or_elsewhere().and_then(|_| self.engine.ack_with(id, &by, outcome, &note, now));
                    self.answer_when_stored(r, reply);
                }
                Command::Resolve { id, by, reason, reply } => {
                    let r = self.alerting_or_elsewhere().and_then(|_| self.engine.resolve_manually(id, &by, &reason, now));
                    self.answer_when_stored(r, reply);
                }
                Command::Tick(reply) => {
                    self.tick();
                    let _ = reply.send(());
                }
                Command::Panic => panic!("monitor panic injected through /api/v1/debug/panic"),
                Command::Hang(d) => {
                    tracing::warn!(secs = d.as_secs(), "monitor hang injected through /api/v1/debug/hang");
                    std::thread::sleep(d);
                }
                Command::Flush(reply) => {
                    self.flush();
                    let _ = reply.send(());
                }
                Command::Alert { kind, subject, detail, firing } if !self.alerting() => {
                    let me = self.box_id().unwrap_or_default().to_string();
                    let a = domain::cluster::PeerAlert { from: me.clone(), kind, subject, detail, firing };
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
        self.io.metrics.elders.set(self.presence.elder_count() as i64);
    }

    /// Only the box that sends the alerts changes them.
    fn alerting_or_elsewhere(&self) -> Result<(), AckError> {
        if self.alerting() {
            return Ok(());
        }
        let holder = self.lease.as_ref().and_then(|l| l.holder()).map(|r| r.holder.clone()).unwrap_or_else(|| "(none yet)".into());
        Err(AckError::Elsewhere { holder })
    }

    /// Apply what a person asked for, and answer them once it is stored
    /// (`commit_pending`): durable before acknowledged.
    fn answer_when_stored(&mut self, r: Result<Vec<Action>, AckError>, reply: oneshot::Sender<Result<Alert, AckError>>) {
        match r {
            Ok(acts) => {
                let alert = acts.iter().rev().find_map(|a| match a {
                    Action::Save(a) => Some(a.clone()),
                    _ => None,
                });
                self.apply_then(acts, Some((reply, alert.expect("an acknowledgement or resolution saves the alert"))));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Apply one message from the broker, then acknowledge it: a sighting once
    /// presence has it, an SOS once its alert is committed (`apply` fsyncs).
    fn on_inbound(&mut self, m: Inbound) {
        self.on_parsed(m.parsed);
        let Some(r) = m.receipt else { return };
        match self.uncommitted.back_mut() {
            // In order: after whatever the store has not taken yet.
            Some(b) => b.receipts.push(r),
            None => {
                if let Some(c) = &self.io.mqtt {
                    self.acks.push(c, r);
                }
            }
        }
    }

    pub async fn run(mut self, mut mqtt: mpsc::Receiver<Inbound>, mut cmds: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.io.cfg.presence.tick_interval.get());
        // Pinged from this loop, so a stuck monitor (the heart of alerting) gets us restarted.
        let wd = crate::telemetry::watchdog_interval();
        let mut watchdog = tokio::time::interval(wd.unwrap_or(Duration::from_secs(3600)));
        let mut health = tokio::time::interval(Duration::from_secs(60));
        let mut flush = tokio::time::interval(self.io.cfg.store.flush_every.get());
        let lease_every = self
            .io
            .cfg
            .cluster
            .as_ref()
            .map_or(Duration::from_secs(3600), |c| (c.lease_ttl.get() / 10).clamp(Duration::from_millis(100), Duration::from_secs(5)));
        let mut lease = tokio::time::interval(lease_every);
        let mut ack_retry = tokio::time::interval(Duration::from_millis(5));
        let mut store_retry = tokio::time::interval(Duration::from_secs(1));
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
                _ = store_retry.tick(), if self.store_failing || !self.uncommitted.is_empty() => self.retry_store(),
                _ = ack_retry.tick(), if !self.acks.is_empty() => {
                    if let Some(c) = &self.io.mqtt {
                        self.acks.drain(c);
                    }
                }
                p = mqtt.recv() => match p {
                    Some(p) => self.on_inbound(p),
                    None => break,
                },
            }
        }
        // Drain what the MQTT task already handed us, then persist everything.
        while let Ok(p) = mqtt.try_recv() {
            self.on_inbound(p);
        }
        self.commit_pending();
        if !self.uncommitted.is_empty() {
            // Never acknowledged to anyone; absence is judged again at start-up and the broker redelivers.
            tracing::error!(held = self.uncommitted.len(), "stopping with alert changes the store refused");
        }
        self.flush();
        if let Err(e) = self.io.store.flush() {
            tracing::error!(error = %e, "final store flush failed");
        }
        tracing::info!("monitor stopped; store flushed");
    }
}
