//! The alert state machine: `handle(input, now) -> actions`. No I/O and no
//! tokio, so a two-day absence rule is tested in microseconds. The daemon
//! persists `Action::Save` and enqueues `Action::Notify` in one store
//! transaction before anything is sent.

use super::{Alert, AlertId, AlertKind, AlertState, NoticeKind, Subject};
use crate::clock::Timestamp;
use crate::presence::{ElderId, PresenceEvent, Source};
use chrono::Duration;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub repeat_every: Duration,
    pub escalate_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub absence_after: Duration,
    pub band_silent_after: Duration,
    pub gateway_silent_after: Duration,
    pub battery_low_percent: u8,
    /// Gateways tracked at most (names come from MQTT topics).
    pub gateways_max: usize,
    pub policies: HashMap<AlertKind, Policy>,
    /// Reminders wait out these hours; an SOS and every first alert never do.
    pub quiet_hours: Option<QuietHours>,
}

/// Hours of the site's day (UTC+8) in which reminders are held, e.g.
/// `22:00-07:00`. Escalation is not a reminder and is not held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    pub from: chrono::NaiveTime,
    pub until: chrono::NaiveTime,
}

impl QuietHours {
    pub fn contains(&self, t: Timestamp) -> bool {
        let local = t.with_timezone(&crate::clock::cst()).time();
        if self.from <= self.until {
            self.from <= local && local < self.until
        } else {
            local >= self.from || local < self.until
        }
    }
}

impl std::str::FromStr for QuietHours {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?} is not HH:MM-HH:MM"))?;
        let t = |x: &str| chrono::NaiveTime::parse_from_str(x.trim(), "%H:%M").map_err(|e| format!("{x:?}: {e}"));
        let q = QuietHours { from: t(a)?, until: t(b)? };
        if q.from == q.until {
            return Err(format!("{s:?} is empty: from and until are the same"));
        }
        Ok(q)
    }
}

/// What the engine knows about one elder (a cache of the store).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub grid: String,
    pub enrolled_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub last_band: Option<Timestamp>,
    pub has_band: bool,
    /// Planned absences as [from, until).
    pub leaves: Vec<(Timestamp, Timestamp)>,
    /// This elder's absence threshold (their own, or their categories');
    /// None: the site's `absence_after`.
    pub absence_after: Option<Duration>,
}

/// The open alert per (kind, subject), looked up by reference: a sighting
/// checks it several times, and must not allocate to do so.
#[derive(Debug, Default)]
struct OpenIndex(HashMap<AlertKind, HashMap<Subject, AlertId>>);

impl OpenIndex {
    fn get(&self, kind: AlertKind, subject: &Subject) -> Option<AlertId> {
        self.0.get(&kind)?.get(subject).copied()
    }
    fn insert(&mut self, kind: AlertKind, subject: Subject, id: AlertId) {
        self.0.entry(kind).or_default().insert(subject, id);
    }
    fn remove(&mut self, kind: AlertKind, subject: &Subject) {
        if let Some(m) = self.0.get_mut(&kind) {
            m.remove(subject);
        }
    }
}

#[derive(Debug, Clone)]
struct GatewayWatch {
    last_heard: Timestamp,
}

#[derive(Debug)]
pub enum Input {
    Presence(PresenceEvent),
    GatewayStatus {
        gateway: String,
        online: bool,
    },
    /// An alert raised (or cleared) by another part of the box, e.g. a gate.
    External {
        kind: AlertKind,
        subject: Subject,
        detail: String,
        firing: bool,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Persist this alert (new or changed).
    Save(Alert),
    /// Tell these ladder levels about this alert.
    Notify { alert: Alert, levels: Vec<usize>, kind: NoticeKind },
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AckError {
    #[error("no open alert #{0}")]
    NotFound(AlertId),
    #[error("alert #{id} was already acknowledged by {by}")]
    AlreadyAcknowledged { id: AlertId, by: String },
    #[error("this box does not send the alerts (box {holder} holds the lease): acknowledge there")]
    Elsewhere { holder: String },
}

pub struct Engine {
    settings: Settings,
    /// Absence and gateway silence are not judged before this (start-up grace).
    judging_from: Timestamp,
    elders: HashMap<ElderId, Watch>,
    gateways: BTreeMap<String, GatewayWatch>,
    open: BTreeMap<AlertId, Alert>,
    by_subject: OpenIndex,
    ladder_len: HashMap<String, usize>,
    default_ladder_len: usize,
    next_id: AlertId,
    /// Messages about gateways not tracked because `gateways_max` was reached.
    pub gateways_refused: u64,
}

impl Engine {
    pub fn new(settings: Settings, judging_from: Timestamp, next_id: AlertId) -> Self {
        Self {
            settings,
            judging_from,
            elders: HashMap::new(),
            gateways: BTreeMap::new(),
            open: BTreeMap::new(),
            by_subject: OpenIndex::default(),
            ladder_len: HashMap::new(),
            default_ladder_len: 1,
            next_id: next_id.max(1),
            gateways_refused: 0,
        }
    }

    // --- loading and roster changes (from the store / admin API) ---

    pub fn load_alert(&mut self, a: Alert) {
        self.next_id = self.next_id.max(a.id + 1);
        if a.state != AlertState::Resolved {
            self.by_subject.insert(a.kind, a.subject.clone(), a.id);
            self.open.insert(a.id, a);
        }
    }

    /// A gateway known from before a restart. It gets a fresh silence window from
    /// `now`: the daemon was not listening while it was down.
    pub fn load_gateway(&mut self, name: String, last_heard: Timestamp, now: Timestamp) {
        if self.track_gateway(&name, now) {
            self.gateways.insert(name, GatewayWatch { last_heard: last_heard.max(now) });
        }
    }

    /// Whether `name` is (or may now become) a tracked gateway: the set is
    /// bounded, because names come from MQTT topics.
    fn track_gateway(&mut self, name: &str, at: Timestamp) -> bool {
        if self.gateways.contains_key(name) {
            return true;
        }
        if self.gateways.len() >= self.settings.gateways_max {
            self.gateways_refused += 1;
            return false;
        }
        self.gateways.insert(name.to_string(), GatewayWatch { last_heard: at });
        true
    }

    pub fn upsert_elder(&mut self, id: ElderId, w: Watch) {
        self.elders.insert(id, w);
    }

    pub fn elder_mut(&mut self, id: &str) -> Option<&mut Watch> {
        self.elders.get_mut(id)
    }

    /// Close this elder's open alerts without notifying (the record was deleted).
    pub fn remove_elder(&mut self, id: &str, now: Timestamp) -> Vec<Action> {
        self.elders.remove(id);
        let subject = Subject::Elder(id.to_string());
        let ids: Vec<AlertId> = self.open.values().filter(|a| a.subject == subject).map(|a| a.id).collect();
        ids.into_iter().filter_map(|aid| self.close(aid, now, "elder removed from the roster".into(), false)).flatten().collect()
    }

    pub fn set_ladder_len(&mut self, grid: &str, len: Option<usize>) {
        match len {
            Some(n) => {
                self.ladder_len.insert(grid.to_string(), n.max(1));
            }
            None => {
                self.ladder_len.remove(grid);
            }
        }
    }

    pub fn set_default_ladder_len(&mut self, n: usize) {
        self.default_ladder_len = n.max(1);
    }

    /// The wall clock was stepped by `by` (found at `now`); times taken since
    /// `since` (in the old frame) move with it, and none stays in the future
    /// (`clock::reanchor`). Absence is not judged before `hold_until`, when
    /// given (a large forward step is suspect: ops are told, staff are not
    /// paged). Returns the changed open alerts to save; ack links stay valid
    /// (`opened_at` is never moved).
    pub fn clock_stepped(&mut self, since: Timestamp, by: chrono::Duration, now: Timestamp, hold_until: Option<Timestamp>) -> Vec<Action> {
        let fix = |t: Timestamp| crate::clock::reanchor(t, since, by, now);
        for w in self.elders.values_mut() {
            w.last_seen = w.last_seen.map(fix);
            w.last_band = w.last_band.map(fix);
            w.enrolled_at = w.enrolled_at.map(fix);
        }
        for g in self.gateways.values_mut() {
            g.last_heard = fix(g.last_heard);
        }
        let mut out = Vec::new();
        for a in self.open.values_mut() {
            let before = (a.level_since, a.last_notified_at, a.reference_at);
            a.level_since = fix(a.level_since);
            a.last_notified_at = fix(a.last_notified_at);
            a.reference_at = a.reference_at.map(fix);
            if before != (a.level_since, a.last_notified_at, a.reference_at) {
                out.push(Action::Save(a.clone()));
            }
        }
        // A hold set in the old frame keeps its length in the new one.
        if self.judging_from >= since {
            self.judging_from += by;
        }
        if let Some(h) = hold_until {
            self.judging_from = self.judging_from.max(h);
        }
        out
    }

    /// Absence and gateway silence are judged from this time.
    pub fn judging_from(&self) -> Timestamp {
        self.judging_from
    }

    /// Each grid's morning watch list (网格发现): elders unseen for more than
    /// half their threshold (not on leave), low batteries (`battery` reads
    /// presence), devices offline (every grid hears of them) and alerts
    /// nobody has acknowledged.
    pub fn watch_list(&self, now: Timestamp, battery: &dyn Fn(&str) -> Option<u8>) -> Vec<super::watch::GridWatch> {
        use super::watch::{GridWatch, Unseen};
        let mut grids: BTreeMap<String, GridWatch> = BTreeMap::new();
        for (id, w) in &self.elders {
            let g = grids.entry(w.grid.clone()).or_insert_with(|| GridWatch { grid: w.grid.clone(), ..Default::default() });
            g.elders += 1;
            let on_leave = w.leaves.iter().any(|(from, until)| *from <= now && now < *until);
            let threshold = w.absence_after.unwrap_or(self.settings.absence_after);
            let leave_end = w.leaves.iter().map(|(_, u)| *u).filter(|u| *u <= now).max();
            if let Some(r) = [w.last_seen, w.enrolled_at, leave_end].into_iter().flatten().max() {
                if !on_leave && now - r > threshold / 2 {
                    g.unseen.push(Unseen { elder: id.clone(), since: r, threshold });
                }
            }
            if let Some(b) = battery(id).filter(|b| *b <= self.settings.battery_low_percent) {
                g.low_battery.push((id.clone(), b));
            }
        }
        let offline: Vec<String> =
            self.open.values().filter(|a| matches!(a.kind, AlertKind::GatewayOffline | AlertKind::CameraOffline)).map(|a| a.subject.id().to_string()).collect();
        for g in grids.values_mut() {
            g.offline = offline.clone();
            g.unseen.sort_by_key(|u| u.since);
            g.low_battery.sort();
        }
        for a in self.open.values().filter(|a| a.state == AlertState::Firing) {
            if let Subject::Elder(e) = &a.subject {
                let grid = self.elders.get(e).map(|w| w.grid.clone()).unwrap_or_default();
                if let Some(g) = grids.get_mut(&grid) {
                    g.unacknowledged.push((a.id, a.kind, e.clone(), a.opened_at));
                }
            }
        }
        grids.into_values().collect()
    }

    pub fn open_alerts(&self) -> impl Iterator<Item = &Alert> {
        self.open.values()
    }

    pub fn gateway_names(&self) -> impl Iterator<Item = (&String, Timestamp)> {
        self.gateways.iter().map(|(k, v)| (k, v.last_heard))
    }

    // --- the state machine ---

    pub fn handle(&mut self, input: Input, now: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Presence(ev) => self.on_presence(ev, now, &mut out),
            Input::GatewayStatus { gateway, online } => {
                if !self.track_gateway(&gateway, now) {
                    return out;
                }
                let subject = Subject::Gateway(gateway);
                if online {
                    self.resolve(AlertKind::GatewayOffline, &subject, now, "gateway back online".into(), &mut out);
                } else {
                    self.open_alert(AlertKind::GatewayOffline, subject, now, None, "gateway reported offline (LWT)".into(), &mut out);
                }
            }
            Input::External { kind, subject, detail, firing } => {
                if firing {
                    self.open_alert(kind, subject, now, None, detail, &mut out);
                } else {
                    self.resolve(kind, &subject, now, detail.into(), &mut out);
                }
            }
            Input::Tick => self.tick(now, &mut out),
        }
        out
    }

    /// Staff acknowledged. Stops reminders and escalation; an SOS is then handled.
    pub fn ack(&mut self, id: AlertId, by: &str, now: Timestamp) -> Result<Vec<Action>, AckError> {
        self.ack_with(id, by, None, "", now)
    }

    /// Acknowledge with what staff found and their note: both are kept with
    /// the alert and go out in the "acknowledged" notice.
    pub fn ack_with(&mut self, id: AlertId, by: &str, outcome: Option<super::Outcome>, note: &str, now: Timestamp) -> Result<Vec<Action>, AckError> {
        let a = self.open.get_mut(&id).ok_or(AckError::NotFound(id))?;
        if a.state == AlertState::Acknowledged {
            return Err(AckError::AlreadyAcknowledged { id, by: a.acked_by.clone().unwrap_or_default() });
        }
        a.state = AlertState::Acknowledged;
        a.acked_by = Some(by.to_string());
        a.acked_at = Some(now);
        a.outcome = outcome;
        a.note = note.trim().to_string();
        let levels = a.notified_levels.clone();
        let mut out = vec![Action::Save(a.clone()), Action::Notify { alert: a.clone(), levels, kind: NoticeKind::Acknowledged }];
        if a.kind.ends_on_ack() {
            // An SOS or a security event has no "seen again" to end it: a person responding ends it.
            out.extend(self.close(id, now, format!("handled by {by}"), false).unwrap_or_default());
        }
        Ok(out)
    }

    /// Close an open alert by hand, with a reason ("the elder moved to a
    /// care home"): everyone told hears it resolved.
    pub fn resolve_manually(&mut self, id: AlertId, by: &str, reason: &str, now: Timestamp) -> Result<Vec<Action>, AckError> {
        if !self.open.contains_key(&id) {
            return Err(AckError::NotFound(id));
        }
        Ok(self.close(id, now, format!("resolved manually by {by}: {}", reason.trim()), true).unwrap_or_default())
    }

    fn on_presence(&mut self, ev: PresenceEvent, now: Timestamp, out: &mut Vec<Action>) {
        match ev {
            PresenceEvent::Seen { elder, at, source, place } => {
                let Some(w) = self.elders.get_mut(&elder) else { return };
                w.last_seen = Some(w.last_seen.map_or(at, |t| t.max(at)));
                let band_ref = w.last_band.or(w.enrolled_at);
                if source == Source::Wristband {
                    w.last_band = Some(w.last_band.map_or(at, |t| t.max(at)));
                }
                let has_band = w.has_band;
                let subject = Subject::Elder(elder);
                if let Some(aid) = self.by_subject.get(AlertKind::Absence, &subject) {
                    let reference = self.open[&aid].reference_at.unwrap_or(self.open[&aid].opened_at);
                    // Only a sighting newer than the one the count started from ends
                    // it; a late QoS 1 redelivery of an old one does not.
                    if at > reference {
                        let how = format!("seen again at {place} ({}), {}", source.as_str(), at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                        out.extend(self.close(aid, now, how, true).unwrap_or_default());
                    }
                }
                match source {
                    Source::Wristband => self.resolve(AlertKind::BandNotWorn, &subject, now, "wristband heard again".into(), out),
                    Source::Face if has_band && now >= self.judging_from => {
                        let silent = band_ref.is_none_or(|b| at - b >= self.settings.band_silent_after);
                        if silent {
                            let detail = format!("face seen at {place} but the wristband has been silent");
                            self.open_alert(AlertKind::BandNotWorn, subject, now, band_ref, detail, out);
                        }
                    }
                    _ => {}
                }
            }
            PresenceEvent::Battery { elder, percent } => {
                if !self.elders.contains_key(&elder) {
                    return;
                }
                let subject = Subject::Elder(elder);
                let low = self.settings.battery_low_percent;
                if percent <= low {
                    self.open_alert(AlertKind::BatteryLow, subject, now, None, format!("battery {percent}%"), out);
                } else if percent >= low.saturating_add(10) {
                    // Hysteresis, so a battery wavering at the threshold does not flap.
                    self.resolve(AlertKind::BatteryLow, &subject, now, format!("battery {percent}%").into(), out);
                }
            }
            PresenceEvent::Sos { elder, at, place } => {
                if self.elders.contains_key(&elder) {
                    let detail = format!("SOS pressed at {place}");
                    self.open_alert(AlertKind::Sos, Subject::Elder(elder), now, Some(at), detail, out);
                }
            }
            PresenceEvent::GatewayHeard { gateway, at } => {
                if !self.track_gateway(&gateway, at) {
                    return;
                }
                let g = self.gateways.get_mut(&gateway).expect("tracked");
                g.last_heard = g.last_heard.max(at);
                let subject = Subject::Gateway(gateway);
                self.resolve(AlertKind::GatewayOffline, &subject, now, "gateway heard again".into(), out);
            }
            PresenceEvent::UnknownBand { .. } | PresenceEvent::UnknownElder { .. } => {}
        }
    }

    fn tick(&mut self, now: Timestamp, out: &mut Vec<Action>) {
        let judging = now >= self.judging_from;
        let mut to_open = Vec::new();
        let mut to_close = Vec::new();
        for (id, w) in &self.elders {
            let subject = Subject::Elder(id.clone());
            let on_leave = w.leaves.iter().any(|(from, until)| *from <= now && now < *until);
            if let Some(aid) = self.by_subject.get(AlertKind::Absence, &subject) {
                if on_leave {
                    to_close.push(aid);
                }
                continue;
            }
            if on_leave || !judging {
                continue;
            }
            // Counting starts from the latest of: last sighting, enrolment, end of a leave.
            let leave_end = w.leaves.iter().map(|(_, u)| *u).filter(|u| *u <= now).max();
            let reference = [w.last_seen, w.enrolled_at, leave_end].into_iter().flatten().max();
            if let Some(r) = reference {
                if now - r >= w.absence_after.unwrap_or(self.settings.absence_after) {
                    to_open.push((subject, r));
                }
            }
        }
        for aid in to_close {
            out.extend(self.close(aid, now, "planned leave registered".into(), true).unwrap_or_default());
        }
        for (subject, r) in to_open {
            let days = (now - r).num_hours() as f64 / 24.0;
            self.open_alert(AlertKind::Absence, subject, now, Some(r), format!("not seen for {days:.1} days"), out);
        }
        if judging {
            let silent: Vec<(String, Timestamp)> = self
                .gateways
                .iter()
                .filter(|(_, g)| now - g.last_heard >= self.settings.gateway_silent_after)
                .map(|(n, g)| (n.clone(), g.last_heard))
                .collect();
            for (name, heard) in silent {
                let detail = format!("silent since {}", heard.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                self.open_alert(AlertKind::GatewayOffline, Subject::Gateway(name), now, Some(heard), detail, out);
            }
        }
        // Reminders and escalation for everything nobody has acknowledged yet.
        let quiet = self.settings.quiet_hours.is_some_and(|q| q.contains(now));
        let ids: Vec<AlertId> = self.open.values().filter(|a| a.state == AlertState::Firing).map(|a| a.id).collect();
        for aid in ids {
            let ladder = self.ladder_for(&self.open[&aid].subject);
            let pol = self.settings.policies[&self.open[&aid].kind];
            let a = self.open.get_mut(&aid).expect("open alert");
            if now - a.level_since >= pol.escalate_after && a.level + 1 < ladder {
                a.level += 1;
                a.level_since = now;
                a.last_notified_at = now;
                if !a.notified_levels.contains(&a.level) {
                    a.notified_levels.push(a.level);
                }
                out.push(Action::Save(a.clone()));
                out.push(Action::Notify { alert: a.clone(), levels: vec![a.level], kind: NoticeKind::Escalated });
            } else if now - a.last_notified_at >= pol.repeat_every && !(quiet && a.kind != AlertKind::Sos) {
                // Held in quiet hours: sent at the first tick after they end.
                a.last_notified_at = now;
                a.reminders += 1;
                out.push(Action::Save(a.clone()));
                out.push(Action::Notify { alert: a.clone(), levels: vec![a.level], kind: NoticeKind::Reminder });
            }
        }
    }

    fn ladder_for(&self, subject: &Subject) -> usize {
        match subject {
            Subject::Elder(id) => self.elders.get(id).and_then(|w| self.ladder_len.get(&w.grid)).copied().unwrap_or(self.default_ladder_len),
            Subject::Gateway(_) | Subject::Gate(_) => self.default_ladder_len,
        }
    }

    /// Open an alert unless one of this kind is already open for the subject.
    fn open_alert(&mut self, kind: AlertKind, subject: Subject, now: Timestamp, reference_at: Option<Timestamp>, detail: String, out: &mut Vec<Action>) {
        if self.by_subject.get(kind, &subject).is_some() {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let a = Alert {
            id,
            kind,
            subject,
            state: AlertState::Firing,
            opened_at: now,
            level: 0,
            level_since: now,
            last_notified_at: now,
            notified_levels: vec![0],
            reference_at,
            detail,
            acked_by: None,
            acked_at: None,
            resolved_at: None,
            resolution: None,
            reminders: 0,
            outcome: None,
            note: String::new(),
        };
        self.by_subject.insert(kind, a.subject.clone(), id);
        self.open.insert(id, a.clone());
        out.push(Action::Save(a.clone()));
        out.push(Action::Notify { alert: a, levels: vec![0], kind: NoticeKind::Firing });
    }

    /// Close the open alert of this kind for `subject`, if any. `how` is only
    /// rendered when there is one: this runs for every sighting.
    fn resolve(&mut self, kind: AlertKind, subject: &Subject, now: Timestamp, how: std::borrow::Cow<'static, str>, out: &mut Vec<Action>) {
        if let Some(aid) = self.by_subject.get(kind, subject) {
            out.extend(self.close(aid, now, how.into_owned(), true).unwrap_or_default());
        }
    }

    fn close(&mut self, aid: AlertId, now: Timestamp, how: String, notify: bool) -> Option<Vec<Action>> {
        let mut a = self.open.remove(&aid)?;
        self.by_subject.remove(a.kind, &a.subject);
        a.state = AlertState::Resolved;
        a.resolved_at = Some(now);
        a.resolution = Some(how);
        let mut out = vec![Action::Save(a.clone())];
        if notify {
            let levels = a.notified_levels.clone();
            out.push(Action::Notify { alert: a, levels, kind: NoticeKind::Resolved });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn t0() -> Timestamp {
        Utc.with_ymd_and_hms(2026, 11, 1, 8, 0, 0).unwrap()
    }
    fn h(n: i64) -> Timestamp {
        t0() + Duration::hours(n)
    }
    fn settings() -> Settings {
        let pol = |r, e| Policy { repeat_every: Duration::hours(r), escalate_after: Duration::hours(e) };
        Settings {
            absence_after: Duration::hours(48),
            band_silent_after: Duration::hours(24),
            gateway_silent_after: Duration::minutes(10),
            battery_low_percent: 20,
            gateways_max: 8,
            quiet_hours: None,
            policies: HashMap::from([
                (AlertKind::Absence, pol(6, 12)),
                (AlertKind::Sos, Policy { repeat_every: Duration::minutes(5), escalate_after: Duration::minutes(10) }),
                (AlertKind::BatteryLow, pol(24, 72)),
                (AlertKind::BandNotWorn, pol(24, 72)),
                (AlertKind::GatewayOffline, pol(6, 12)),
                (AlertKind::CameraOffline, pol(6, 12)),
                (AlertKind::ActuatorFailure, pol(6, 12)),
                (AlertKind::SpoofAttempts, pol(6, 12)),
                (AlertKind::DenyListed, pol(6, 12)),
                (AlertKind::PinLockout, pol(6, 12)),
            ]),
        }
    }
    fn engine() -> Engine {
        let mut e = Engine::new(settings(), t0(), 1);
        e.set_default_ladder_len(3);
        e.upsert_elder("e1".into(), Watch { grid: "g1".into(), enrolled_at: Some(t0()), last_seen: Some(t0()), has_band: true, ..Default::default() });
        e
    }
    fn seen(at: Timestamp, source: Source) -> Input {
        Input::Presence(PresenceEvent::Seen { elder: "e1".into(), at, source, place: "gate_north".into() })
    }
    fn notices(actions: &[Action]) -> Vec<(NoticeKind, Vec<usize>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Notify { kind, levels, .. } => Some((*kind, levels.clone())),
                _ => None,
            })
            .collect()
    }
    /// Tick every 10 minutes from `from` to `to` (inclusive), collecting notices.
    fn run(e: &mut Engine, from: Timestamp, to: Timestamp) -> Vec<(Timestamp, NoticeKind, Vec<usize>)> {
        let mut out = Vec::new();
        let mut t = from;
        while t <= to {
            for (k, l) in notices(&e.handle(Input::Tick, t)) {
                out.push((t, k, l));
            }
            t += Duration::minutes(10);
        }
        out
    }

    #[test]
    fn absence_alert_fires_exactly_once_after_48h() {
        let mut e = engine();
        let got = run(&mut e, h(0), h(48) + Duration::minutes(50));
        assert_eq!(got, vec![(h(48), NoticeKind::Firing, vec![0])]);
        assert_eq!(e.open_alerts().count(), 1);
    }

    #[test]
    fn reminders_and_escalation_follow_the_configured_times() {
        let mut e = engine();
        let got = run(&mut e, h(48), h(48 + 36));
        let expect = vec![
            (h(48), NoticeKind::Firing, vec![0]),
            (h(54), NoticeKind::Reminder, vec![0]),
            (h(60), NoticeKind::Escalated, vec![1]),
            (h(66), NoticeKind::Reminder, vec![1]),
            (h(72), NoticeKind::Escalated, vec![2]),
            (h(78), NoticeKind::Reminder, vec![2]),
            (h(84), NoticeKind::Reminder, vec![2]),
        ];
        assert_eq!(got, expect);
    }

    #[test]
    fn acknowledgement_stops_reminders_and_escalation() {
        let mut e = engine();
        e.handle(Input::Tick, h(48));
        let id = e.open_alerts().next().unwrap().id;
        let acts = e.ack(id, "李网格", h(49)).unwrap();
        assert_eq!(notices(&acts), vec![(NoticeKind::Acknowledged, vec![0])]);
        assert!(run(&mut e, h(49), h(100)).is_empty());
        assert!(matches!(e.ack(id, "x", h(101)), Err(AckError::AlreadyAcknowledged { .. })));
        assert_eq!(e.ack(999, "x", h(101)), Err(AckError::NotFound(999)));
    }

    #[test]
    fn returned_notice_goes_to_every_level_that_was_told() {
        let mut e = engine();
        run(&mut e, h(48), h(61));
        let acts = e.handle(seen(h(62), Source::Wristband), h(62));
        assert_eq!(notices(&acts), vec![(NoticeKind::Resolved, vec![0, 1])]);
        let Action::Save(a) = &acts[0] else { panic!() };
        assert_eq!(a.state, AlertState::Resolved);
        assert!(run(&mut e, h(62), h(100)).is_empty(), "count restarts from the new sighting");
        assert_eq!(notices(&e.handle(Input::Tick, h(110))), vec![(NoticeKind::Firing, vec![0])]);
    }

    #[test]
    fn a_late_redelivery_of_an_old_sighting_does_not_end_the_episode() {
        let mut e = engine();
        e.handle(Input::Tick, h(48));
        assert!(notices(&e.handle(seen(h(-1), Source::Wristband), h(49))).is_empty());
        assert_eq!(e.open_alerts().count(), 1);
    }

    #[test]
    fn leave_suppresses_the_alert_and_counting_restarts_when_it_ends() {
        let mut e = engine();
        e.elder_mut("e1").unwrap().leaves = vec![(h(24), h(24 * 10))];
        assert!(run(&mut e, h(0), h(24 * 10 + 47)).is_empty());
        assert_eq!(notices(&e.handle(Input::Tick, h(24 * 12))), vec![(NoticeKind::Firing, vec![0])]);
    }

    #[test]
    fn leave_registered_during_an_episode_closes_it() {
        let mut e = engine();
        e.handle(Input::Tick, h(48));
        e.elder_mut("e1").unwrap().leaves = vec![(h(49), h(100))];
        assert_eq!(notices(&e.handle(Input::Tick, h(50))), vec![(NoticeKind::Resolved, vec![0])]);
    }

    #[test]
    fn startup_grace_defers_absence_judgement() {
        let mut e = Engine::new(settings(), h(100), 1);
        e.upsert_elder("e1".into(), Watch { last_seen: Some(t0()), enrolled_at: Some(t0()), ..Default::default() });
        assert!(notices(&e.handle(Input::Tick, h(99))).is_empty());
        assert_eq!(notices(&e.handle(Input::Tick, h(100))).len(), 1);
    }

    #[test]
    fn each_elder_is_judged_against_their_own_threshold() {
        let mut e = engine(); // e1: the site's 48h
        let w = |after: i64| Watch { enrolled_at: Some(t0()), last_seen: Some(t0()), absence_after: Some(Duration::hours(after)), ..Default::default() };
        e.upsert_elder("dementia".into(), w(24));
        e.upsert_elder("visits_family".into(), w(72));
        let mut opened: Vec<(String, Timestamp)> = Vec::new();
        let mut t = h(0);
        while t <= h(80) {
            for a in e.handle(Input::Tick, t) {
                if let Action::Notify { alert, kind: NoticeKind::Firing, .. } = a {
                    if let Subject::Elder(id) = alert.subject {
                        opened.push((id, t));
                    }
                }
            }
            t += Duration::minutes(30);
        }
        assert_eq!(opened, vec![("dementia".to_string(), h(24)), ("e1".to_string(), h(48)), ("visits_family".to_string(), h(72))]);
    }

    #[test]
    fn quiet_hours_hold_reminders_but_never_an_sos_or_a_first_alert() {
        let quiet: QuietHours = "22:00-07:00".parse().unwrap();
        // t0 is 16:00 at the site (UTC+8): absence opens at h(48) = 16:00,
        // its 6-hourly reminder falls due at h(54) = 22:00, inside quiet hours.
        let mut plain = engine();
        let mut s = settings();
        s.quiet_hours = Some(quiet);
        let mut calm = Engine::new(s, t0(), 1);
        calm.set_default_ladder_len(1);
        plain.set_default_ladder_len(1);
        calm.upsert_elder("e1".into(), Watch { enrolled_at: Some(t0()), last_seen: Some(t0()), has_band: true, ..Default::default() });
        let reminders =
            |got: Vec<(Timestamp, NoticeKind, Vec<usize>)>| got.into_iter().filter(|(_, k, _)| *k == NoticeKind::Reminder).map(|(t, ..)| t).collect::<Vec<_>>();
        assert_eq!(reminders(run(&mut plain, h(0), h(64))), vec![h(54), h(60)], "without quiet hours");
        let got = run(&mut calm, h(0), h(64));
        assert!(got.contains(&(h(48), NoticeKind::Firing, vec![0])), "the first alert is never held");
        assert_eq!(reminders(got), vec![h(63)], "held from 22:00 to 07:00, then sent once");
        // An SOS at 23:00 reminds every 5 minutes, quiet hours or not.
        let mut s = settings();
        s.quiet_hours = Some(quiet);
        let mut calm = Engine::new(s, t0(), 1);
        calm.set_default_ladder_len(1);
        calm.upsert_elder("e1".into(), Watch { enrolled_at: Some(t0()), last_seen: Some(t0()), has_band: true, ..Default::default() });
        let sos_at = h(7);
        calm.handle(Input::Presence(PresenceEvent::Sos { elder: "e1".into(), at: sos_at, place: "b3".into() }), sos_at);
        let sos_reminders =
            run(&mut calm, sos_at + Duration::minutes(10), sos_at + Duration::minutes(40)).into_iter().filter(|(_, k, _)| *k == NoticeKind::Reminder).count();
        assert!(sos_reminders >= 3, "{sos_reminders}");
        assert!("07:00-07:00".parse::<QuietHours>().is_err() && "7-22".parse::<QuietHours>().is_err());
    }

    #[test]
    fn an_acknowledgement_keeps_its_outcome_and_note_and_a_manual_resolution_its_reason() {
        let mut e = engine();
        run(&mut e, h(0), h(48));
        let id = e.open_alerts().next().unwrap().id;
        let acts = e.ack_with(id, "李网格", Some(super::super::Outcome::AllWell), " 老人在女儿家 ", h(49)).unwrap();
        let Some(Action::Notify { alert, kind: NoticeKind::Acknowledged, .. }) = acts.iter().find(|a| matches!(a, Action::Notify { .. })) else {
            panic!("{acts:?}")
        };
        assert_eq!((alert.outcome, alert.note.as_str()), (Some(super::super::Outcome::AllWell), "老人在女儿家"));
        let acts = e.resolve_manually(id, "王主任", "moved to a care home", h(50)).unwrap();
        let Some(Action::Notify { alert, kind: NoticeKind::Resolved, .. }) = acts.iter().find(|a| matches!(a, Action::Notify { .. })) else {
            panic!("{acts:?}")
        };
        assert_eq!(alert.resolution.as_deref(), Some("resolved manually by 王主任: moved to a care home"));
        assert_eq!(e.open_alerts().count(), 0);
        assert!(matches!(e.resolve_manually(id, "x", "y", h(51)), Err(AckError::NotFound(_))));
    }

    #[test]
    fn the_watch_list_names_the_half_absent_the_low_batteries_the_devices_and_the_unacknowledged() {
        let mut e = engine(); // e1, grid g1, 48h
        let w = |grid: &str, after: Option<i64>| Watch {
            grid: grid.into(),
            enrolled_at: Some(t0()),
            last_seen: Some(t0()),
            absence_after: after.map(Duration::hours),
            ..Default::default()
        };
        e.upsert_elder("quick".into(), w("g1", Some(24)));
        e.upsert_elder("other".into(), w("g2", None));
        e.handle(Input::GatewayStatus { gateway: "b7".into(), online: false }, h(1));
        e.handle(Input::Presence(PresenceEvent::Battery { elder: "other".into(), percent: 9 }), h(1));
        let battery = |id: &str| (id == "other").then_some(9u8);
        let lists = e.watch_list(h(13), &battery);
        let g1 = lists.iter().find(|g| g.grid == "g1").unwrap();
        assert_eq!(g1.unseen.iter().map(|u| u.elder.as_str()).collect::<Vec<_>>(), ["quick"], "13h > half of 24h, not of 48h");
        assert_eq!(g1.offline, ["b7"]);
        assert!(g1.low_battery.is_empty() && g1.unacknowledged.is_empty());
        let g2 = lists.iter().find(|g| g.grid == "g2").unwrap();
        assert_eq!(g2.low_battery, [("other".to_string(), 9)]);
        assert_eq!(g2.unacknowledged.iter().map(|u| u.1).collect::<Vec<_>>(), [AlertKind::BatteryLow]);
        assert_eq!(g2.offline, ["b7"], "every grid hears of devices");
        let lists = e.watch_list(h(25), &battery);
        assert_eq!(lists.iter().find(|g| g.grid == "g1").unwrap().unseen.len(), 2, "e1 too, past 24h of 48h");
    }

    #[test]
    fn sos_is_immediate_escalates_fast_and_ends_on_acknowledgement() {
        let mut e = engine();
        let acts = e.handle(Input::Presence(PresenceEvent::Sos { elder: "e1".into(), at: h(1), place: "b3".into() }), h(1));
        assert_eq!(notices(&acts), vec![(NoticeKind::Firing, vec![0])]);
        let again = e.handle(Input::Presence(PresenceEvent::Sos { elder: "e1".into(), at: h(1), place: "b3".into() }), h(1));
        assert!(again.is_empty(), "one press, one episode");
        let n = notices(&e.handle(Input::Tick, h(1) + Duration::minutes(10)));
        assert_eq!(n, vec![(NoticeKind::Escalated, vec![1])]);
        let id = e.open_alerts().next().unwrap().id;
        let acts = e.ack(id, "王主任", h(2)).unwrap();
        assert_eq!(notices(&acts), vec![(NoticeKind::Acknowledged, vec![0, 1])]);
        assert_eq!(e.open_alerts().count(), 0);
    }

    #[test]
    fn low_battery_opens_once_and_resolves_with_hysteresis() {
        let mut e = engine();
        let bat = |p| Input::Presence(PresenceEvent::Battery { elder: "e1".into(), percent: p });
        assert_eq!(notices(&e.handle(bat(15), h(1))), vec![(NoticeKind::Firing, vec![0])]);
        assert!(e.handle(bat(12), h(2)).is_empty());
        assert!(e.handle(bat(25), h(3)).is_empty(), "inside hysteresis band");
        assert_eq!(notices(&e.handle(bat(95), h(4))), vec![(NoticeKind::Resolved, vec![0])]);
    }

    #[test]
    fn face_at_gate_with_silent_band_raises_band_not_worn() {
        let mut e = engine();
        e.handle(seen(h(1), Source::Wristband), h(1));
        assert!(notices(&e.handle(seen(h(10), Source::Face), h(10))).is_empty());
        assert_eq!(notices(&e.handle(seen(h(30), Source::Face), h(30))), vec![(NoticeKind::Firing, vec![0])]);
        assert_eq!(notices(&e.handle(seen(h(31), Source::Wristband), h(31))), vec![(NoticeKind::Resolved, vec![0])]);
    }

    #[test]
    fn gateway_offline_by_lwt_or_silence_and_back() {
        let mut e = engine();
        let heard = |at| Input::Presence(PresenceEvent::GatewayHeard { gateway: "gw1".into(), at });
        e.handle(heard(h(0)), h(0));
        assert!(notices(&e.handle(Input::Tick, h(0) + Duration::minutes(9))).is_empty());
        let n = notices(&e.handle(Input::Tick, h(0) + Duration::minutes(10)));
        assert!(n.contains(&(NoticeKind::Firing, vec![0])));
        assert_eq!(notices(&e.handle(heard(h(1)), h(1))), vec![(NoticeKind::Resolved, vec![0])]);
        let off = e.handle(Input::GatewayStatus { gateway: "gw2".into(), online: false }, h(2));
        assert_eq!(notices(&off), vec![(NoticeKind::Firing, vec![0])]);
        let on = e.handle(Input::GatewayStatus { gateway: "gw2".into(), online: true }, h(2));
        assert_eq!(notices(&on), vec![(NoticeKind::Resolved, vec![0])]);
    }

    #[test]
    fn gateways_beyond_the_cap_are_refused_and_raise_nothing() {
        let mut e = engine(); // gateways_max = 8
        for i in 0..50 {
            let off = e.handle(Input::GatewayStatus { gateway: format!("gw{i}"), online: false }, h(1));
            assert_eq!(notices(&off).is_empty(), i >= 8, "gateway {i}");
        }
        for i in 0..50 {
            e.handle(Input::Presence(PresenceEvent::GatewayHeard { gateway: format!("x{i}"), at: h(1) }), h(1));
        }
        assert_eq!(e.gateway_names().count(), 8);
        assert_eq!(e.gateways_refused, 92);
        // A tracked gateway still works.
        assert_eq!(notices(&e.handle(Input::GatewayStatus { gateway: "gw3".into(), online: true }, h(2))), vec![(NoticeKind::Resolved, vec![0])]);
    }

    #[test]
    fn reloaded_open_alert_is_not_opened_twice() {
        let mut e = engine();
        let acts = e.handle(Input::Tick, h(48));
        let Action::Save(a) = &acts[0] else { panic!() };
        let mut e2 = engine();
        e2.load_alert(a.clone());
        assert!(notices(&e2.handle(Input::Tick, h(49))).is_empty());
        let acts = e2.handle(Input::Tick, h(60));
        assert!(matches!(&acts[0], Action::Save(b) if b.id == a.id), "episode continues, ids do not collide");
    }
}
