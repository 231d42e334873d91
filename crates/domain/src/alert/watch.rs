//! The morning watch list (网格发现): once a day, each grid's staff get one
//! message that finds trouble before an alert does. The engine gathers it
//! (`Engine::watch_list`); this renders it.

use super::channel::Message;
use super::message::{notice_prefix, Language};
use super::{AlertId, AlertKind, NoticeKind};
use crate::clock::{local_minute, Timestamp};
use chrono::{Duration, NaiveTime};
use std::collections::BTreeMap;

/// An elder unseen for more than half their threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Unseen {
    pub elder: String,
    /// Counted from: the last sighting, the enrolment or the end of a leave.
    pub since: Timestamp,
    pub threshold: Duration,
}

/// One grid's list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GridWatch {
    pub grid: String,
    /// Elders watched in the grid.
    pub elders: usize,
    pub unseen: Vec<Unseen>,
    /// (elder, percent).
    pub low_battery: Vec<(String, u8)>,
    /// Gateways and cameras with an open offline alert.
    pub offline: Vec<String>,
    /// Open alerts nobody has acknowledged: (id, kind, elder, opened).
    pub unacknowledged: Vec<(AlertId, AlertKind, String, Timestamp)>,
}

/// When the list goes out: the first tick at or after `at` (site time), and
/// within three hours of it, once per day. A box down for the whole window
/// skips that day (its alerts still fire).
pub fn due(at: NaiveTime, now: Timestamp, last_sent_on: Option<chrono::NaiveDate>) -> Option<chrono::NaiveDate> {
    let local = now.with_timezone(&crate::clock::cst());
    let (date, time) = (local.date_naive(), local.time());
    let window_end = at + Duration::hours(3);
    let inside = if window_end > at { time >= at && time < window_end } else { time >= at || time < window_end };
    // A window that crosses midnight belongs to the day it started.
    let day = if time < at { date.pred_opt().unwrap_or(date) } else { date };
    (inside && last_sent_on != Some(day)).then_some(day)
}

/// The message for one grid. `who(elder)` gives "name（address）" for an elder id.
pub fn render(w: &GridWatch, who: &dyn Fn(&str) -> String, site: &str, site_name: &str, lang: Language, now: Timestamp) -> Message {
    let zh = lang == Language::Zh;
    let grid = if w.grid.is_empty() {
        if zh {
            "默认网格".to_string()
        } else {
            "default grid".to_string()
        }
    } else {
        w.grid.clone()
    };
    let mut lines: Vec<String> = Vec::new();
    let mut section = |title_zh: &str, title_en: &str, items: Vec<String>| {
        lines.push(format!("{}（{}）", if zh { title_zh } else { title_en }, items.len()));
        if items.is_empty() {
            lines.push(if zh { "  无".into() } else { "  none".into() });
        }
        lines.extend(items.into_iter().map(|i| format!("  - {i}")));
    };
    let days = |d: Duration| d.num_minutes() as f64 / 1440.0;
    section(
        "超过一半时限未出现",
        "Unseen for over half their threshold",
        w.unseen
            .iter()
            .map(|u| {
                if zh {
                    format!("{}：{:.1} 天未出现（时限 {:.1} 天），最后 {}", who(&u.elder), days(now - u.since), days(u.threshold), local_minute(u.since))
                } else {
                    format!("{}: unseen {:.1} days (threshold {:.1}), since {}", who(&u.elder), days(now - u.since), days(u.threshold), local_minute(u.since))
                }
            })
            .collect(),
    );
    section("手环电量低", "Low wristband batteries", w.low_battery.iter().map(|(e, p)| format!("{} {p}%", who(e))).collect());
    section("设备离线", "Devices offline", w.offline.clone());
    section(
        "未确认的告警",
        "Alerts nobody has acknowledged",
        w.unacknowledged.iter().map(|(id, kind, e, at)| format!("#{id} {} · {} · {}", kind.as_str(), who(e), local_minute(*at))).collect(),
    );
    let trouble = w.unseen.len() + w.low_battery.len() + w.offline.len() + w.unacknowledged.len();
    lines.push(match (zh, trouble) {
        (true, 0) => format!("{} 位老人，一切正常。", w.elders),
        (true, n) => format!("{} 位老人，{n} 项需关注。", w.elders),
        (false, 0) => format!("{} elders, all well.", w.elders),
        (false, n) => format!("{} elders, {n} to look at.", w.elders),
    });
    let title =
        format!("{}{} · {} · {}", notice_prefix(NoticeKind::WatchList, lang), site_name, grid, now.with_timezone(&crate::clock::cst()).format("%Y-%m-%d"));
    Message {
        title: title.clone(),
        text: lines.join("\n"),
        status: if trouble == 0 { "resolved".into() } else { "firing".into() },
        severity: "info".into(),
        labels: BTreeMap::from([
            ("alertname".into(), "watch_list".into()),
            ("site".into(), site.into()),
            ("grid".into(), w.grid.clone()),
            ("notice".into(), "watch_list".into()),
        ]),
        starts_at: now,
        ends_at: None,
        ack_url: None,
        mention_mobiles: vec![],
        idempotency_key: format!("{site}-watch-{}-{}", w.grid, now.with_timezone(&crate::clock::cst()).format("%Y%m%d")),
        contact_phones: vec![],
        fields: BTreeMap::from([
            ("kind".to_string(), if zh { "每日巡查".to_string() } else { "daily watch list".to_string() }),
            ("site".into(), site_name.to_string()),
            ("time".into(), local_minute(now)),
            ("name".into(), grid),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn the_list_is_due_once_a_day_inside_its_window() {
        let at = NaiveTime::from_hms_opt(7, 30, 0).unwrap();
        let utc = |h, m| Utc.with_ymd_and_hms(2026, 12, 1, h, m, 0).unwrap(); // +8 at the site
        assert_eq!(due(at, utc(23, 29), None), None, "07:29");
        let day = due(at, utc(23, 30), None).expect("07:30");
        assert_eq!(day.to_string(), "2026-12-02");
        assert_eq!(due(at, Utc.with_ymd_and_hms(2026, 12, 2, 0, 10, 0).unwrap(), Some(day)), None, "sent already today");
        assert_eq!(due(at, Utc.with_ymd_and_hms(2026, 12, 2, 2, 31, 0).unwrap(), None), None, "10:31: the window is over");
        // A window across midnight: 23:00 for three hours.
        let late = NaiveTime::from_hms_opt(23, 0, 0).unwrap();
        let d = due(late, Utc.with_ymd_and_hms(2026, 12, 1, 17, 30, 0).unwrap(), None).expect("01:30 next day");
        assert_eq!(d.to_string(), "2026-12-01");
    }

    #[test]
    fn the_message_lists_each_section_and_says_all_is_well_when_it_is() {
        let now = Utc.with_ymd_and_hms(2026, 12, 1, 23, 30, 0).unwrap();
        let w = GridWatch {
            grid: "g1".into(),
            elders: 12,
            unseen: vec![Unseen { elder: "E1".into(), since: now - Duration::hours(30), threshold: Duration::hours(48) }],
            low_battery: vec![("E2".into(), 9)],
            offline: vec!["3栋大堂".into()],
            unacknowledged: vec![(7, AlertKind::BatteryLow, "E2".into(), now - Duration::hours(2))],
        };
        let who = |e: &str| format!("老人{e}");
        let m = render(&w, &who, "s", "幸福里", Language::Zh, now);
        assert!(m.title.starts_with("【每日巡查】幸福里 · g1 · 2026-12-02"), "{}", m.title);
        for want in [
            "超过一半时限未出现（1）",
            "老人E1：1.2 天未出现（时限 2.0 天）",
            "手环电量低（1）",
            "老人E2 9%",
            "设备离线（1）",
            "3栋大堂",
            "#7 battery_low",
            "12 位老人，4 项需关注。",
        ] {
            assert!(m.text.contains(want), "missing {want:?} in\n{}", m.text);
        }
        let calm = render(&GridWatch { grid: "g1".into(), elders: 3, ..Default::default() }, &who, "s", "幸福里", Language::Zh, now);
        assert!(calm.text.ends_with("3 位老人，一切正常。"), "{}", calm.text);
    }
}
