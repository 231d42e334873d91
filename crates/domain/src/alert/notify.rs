//! Notification planning: which channels hear about an alert change, and what
//! each says. Pure: the caller fetches the elder, the last sighting, the
//! grid's ladder and each level's staff, and turns the plan into outbox
//! records. Two levels that share a channel (one group robot) get one
//! message, not two.

use super::channel::Message;
use super::message::{self, Language};
use super::{Alert, Level, NoticeKind, Staff};
use crate::clock::Timestamp;
use crate::presence::{Elder, LastSeen};
use std::collections::BTreeSet;

/// Who an alert can reach, as the caller read it.
pub struct Recipients<'a> {
    pub elder: Option<&'a Elder>,
    pub last: Option<&'a LastSeen>,
    /// The grid's escalation ladder.
    pub ladder: &'a [Level],
    /// The staff of each ladder level, same indices as `ladder`.
    pub staff: &'a [Vec<Staff>],
    /// Whether a channel is configured (a ladder may name others by mistake).
    pub channel_known: &'a dyn Fn(&str) -> bool,
    /// Whether a channel carries this kind of alert (a voice call only for an SOS).
    pub channel_carries: &'a dyn Fn(&str, super::AlertKind) -> bool,
    /// The last sighting was a face at this outward gate (see `message::Context::left_via`).
    pub left_via: Option<&'a str>,
    /// Gateway and gate ids as staff read them.
    pub place_name: &'a dyn Fn(&str) -> String,
}

/// The site a message speaks for.
pub struct Site<'a> {
    pub site: &'a str,
    pub site_name: &'a str,
    pub language: Language,
}

/// One message for one channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    pub channel: String,
    pub level: usize,
    pub message: Message,
}

/// Why part of an alert reaches nobody: the caller logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// The grid has no ladder at all.
    NoLadder,
    /// A ladder level names a channel that is not configured.
    UnknownChannel(String),
}

/// Plan the notifications for `levels` of `a`. `ack_url(level)` signs a link
/// for that level.
pub fn plan(
    a: &Alert,
    levels: &[usize],
    kind: NoticeKind,
    to: &Recipients<'_>,
    site: &Site<'_>,
    ack_url: &dyn Fn(usize) -> String,
    now: Timestamp,
) -> (Vec<Planned>, Vec<Unrouted>) {
    let mut out = Vec::new();
    let mut unrouted = Vec::new();
    let mut channels_done = BTreeSet::new();
    for &lvl in levels {
        // A level past the ladder's end (the ladder was shortened) goes to its top.
        let Some(idx) = (lvl < to.ladder.len()).then_some(lvl).or(to.ladder.len().checked_sub(1)) else {
            unrouted.push(Unrouted::NoLadder);
            continue;
        };
        let level = &to.ladder[idx];
        let staff = to.staff.get(idx).map(Vec::as_slice).unwrap_or_default();
        let ctx = message::Context {
            site: site.site,
            site_name: site.site_name,
            language: site.language,
            elder: to.elder,
            last: to.last,
            level_name: &level.name,
            staff,
            ack_url: Some(ack_url(lvl)),
            now,
            left_via: to.left_via,
            place_name: to.place_name,
        };
        let msg = message::render(a, kind, &ctx);
        for ch in &level.channels {
            if !channels_done.insert(ch.clone()) {
                continue;
            }
            if !(to.channel_known)(ch) {
                unrouted.push(Unrouted::UnknownChannel(ch.clone()));
                continue;
            }
            if !(to.channel_carries)(ch, a.kind) {
                continue;
            }
            out.push(Planned { channel: ch.clone(), level: lvl, message: msg.clone() });
        }
    }
    (out, unrouted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, AlertState, Subject};
    use chrono::{TimeZone, Utc};

    fn alert() -> Alert {
        let t = Utc.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap();
        Alert {
            id: 7,
            kind: AlertKind::Absence,
            subject: Subject::Elder("e1".into()),
            state: AlertState::Firing,
            opened_at: t,
            level: 0,
            level_since: t,
            last_notified_at: t,
            notified_levels: vec![0],
            reference_at: None,
            detail: String::new(),
            acked_by: None,
            acked_at: None,
            resolved_at: None,
            resolution: None,
            reminders: 0,
            outcome: None,
            note: String::new(),
        }
    }

    fn level(name: &str, channels: &[&str]) -> Level {
        Level { name: name.into(), channels: channels.iter().map(|c| c.to_string()).collect(), staff: vec![] }
    }

    #[test]
    fn shared_channels_get_one_message_and_unknown_ones_are_reported() {
        let ladder = [level("网格员", &["wecom", "ghost"]), level("社区", &["wecom", "ntfy"])];
        let staff = [vec![], vec![]];
        let to = Recipients {
            elder: None,
            last: None,
            ladder: &ladder,
            staff: &staff,
            channel_known: &|c| c != "ghost",
            channel_carries: &|_, _| true,
            left_via: None,
            place_name: &|p| p.to_string(),
        };
        let site = Site { site: "s", site_name: "幸福小区", language: Language::Zh };
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap();
        let (plan, unrouted) = plan(&alert(), &[0, 1], NoticeKind::Escalated, &to, &site, &|l| format!("http://box/ack/{l}"), now);
        let got: Vec<(&str, usize)> = plan.iter().map(|p| (p.channel.as_str(), p.level)).collect();
        assert_eq!(got, vec![("wecom", 0), ("ntfy", 1)]);
        assert_eq!(plan[1].message.ack_url.as_deref(), Some("http://box/ack/1"));
        assert_eq!(unrouted, vec![Unrouted::UnknownChannel("ghost".into())]);
    }

    #[test]
    fn a_level_past_the_ladder_goes_to_its_top_and_no_ladder_reaches_nobody() {
        let ladder = [level("网格员", &["wecom"])];
        let staff = [vec![]];
        let site = Site { site: "s", site_name: "s", language: Language::En };
        let now = Utc.with_ymd_and_hms(2026, 11, 3, 8, 0, 0).unwrap();
        let to = Recipients {
            elder: None,
            last: None,
            ladder: &ladder,
            staff: &staff,
            channel_known: &|_| true,
            channel_carries: &|_, _| true,
            left_via: None,
            place_name: &|p| p.to_string(),
        };
        let (plan, _) = plan(&alert(), &[3], NoticeKind::Reminder, &to, &site, &|_| String::new(), now);
        assert_eq!(plan.len(), 1);
        let to = Recipients {
            elder: None,
            last: None,
            ladder: &[],
            staff: &[],
            channel_known: &|_| true,
            channel_carries: &|_, _| true,
            left_via: None,
            place_name: &|p| p.to_string(),
        };
        let (none, unrouted) = super::plan(&alert(), &[0], NoticeKind::Firing, &to, &site, &|_| String::new(), now);
        assert!(none.is_empty());
        assert_eq!(unrouted, vec![Unrouted::NoLadder]);
    }
}
