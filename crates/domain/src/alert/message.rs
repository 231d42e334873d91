//! What a grid worker reads on the phone. Chinese by default, English as an
//! option. Messages to staff carry full phone numbers (they must call); logs
//! never do (see `telemetry::mask_phone`).

use super::channel::Message;
use super::{Alert, AlertKind, NoticeKind, Staff, Subject};
use crate::clock::Timestamp;
use crate::presence::{Elder, LastSeen};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The language staff read messages in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    Zh,
    En,
}

#[derive(Clone)]
pub struct Context<'a> {
    pub site: &'a str,
    pub site_name: &'a str,
    pub language: Language,
    pub elder: Option<&'a Elder>,
    pub last: Option<&'a LastSeen>,
    pub level_name: &'a str,
    pub staff: &'a [Staff],
    pub ack_url: Option<String>,
    pub now: Timestamp,
    /// The last sighting was a face at this gate, which faces out of the
    /// compound: the elder left, and the message says so.
    pub left_via: Option<&'a str>,
    /// What staff read for a gateway or gate id ("3栋大堂" for gw_building5).
    pub place_name: &'a dyn Fn(&str) -> String,
}

use crate::clock::local_minute as local;

fn kind_title(kind: AlertKind, lang: Language) -> &'static str {
    match (kind, lang) {
        (AlertKind::Absence, Language::Zh) => "老人超时未出现",
        (AlertKind::Sos, Language::Zh) => "紧急呼叫（SOS）",
        (AlertKind::BatteryLow, Language::Zh) => "手环电量低",
        (AlertKind::BandNotWorn, Language::Zh) => "疑似未佩戴手环",
        (AlertKind::GatewayOffline, Language::Zh) => "蓝牙网关离线",
        (AlertKind::Absence, Language::En) => "Elder not seen",
        (AlertKind::Sos, Language::En) => "SOS button pressed",
        (AlertKind::BatteryLow, Language::En) => "Wristband battery low",
        (AlertKind::BandNotWorn, Language::En) => "Wristband possibly not worn",
        (AlertKind::GatewayOffline, Language::En) => "BLE gateway offline",
        (AlertKind::CameraOffline, Language::Zh) => "门禁摄像头离线",
        (AlertKind::SpoofAttempts, Language::Zh) => "疑似人脸伪造攻击",
        (AlertKind::DenyListed, Language::Zh) => "黑名单人员出现",
        (AlertKind::ActuatorFailure, Language::Zh) => "门禁开闸故障",
        (AlertKind::PinLockout, Language::Zh) => "密码多次错误，键盘已锁定",
        (AlertKind::CameraOffline, Language::En) => "Gate camera offline",
        (AlertKind::SpoofAttempts, Language::En) => "Face spoofing attempts",
        (AlertKind::DenyListed, Language::En) => "Deny-listed person at a gate",
        (AlertKind::ActuatorFailure, Language::En) => "Gate actuator failure",
        (AlertKind::PinLockout, Language::En) => "Keypad locked after wrong PINs",
    }
}

pub fn notice_prefix(kind: NoticeKind, lang: Language) -> &'static str {
    match (kind, lang) {
        (NoticeKind::Firing, Language::Zh) => "【告警】",
        (NoticeKind::Reminder, Language::Zh) => "【提醒·未确认】",
        (NoticeKind::Escalated, Language::Zh) => "【升级】",
        (NoticeKind::Acknowledged, Language::Zh) => "【已确认】",
        (NoticeKind::Resolved, Language::Zh) => "【已解除】",
        (NoticeKind::Test, Language::Zh) => "【测试】",
        (NoticeKind::WatchList, Language::Zh) => "【每日巡查】",
        (NoticeKind::Firing, Language::En) => "[ALERT] ",
        (NoticeKind::Reminder, Language::En) => "[REMINDER - unacknowledged] ",
        (NoticeKind::Escalated, Language::En) => "[ESCALATED] ",
        (NoticeKind::Acknowledged, Language::En) => "[ACKNOWLEDGED] ",
        (NoticeKind::Resolved, Language::En) => "[RESOLVED] ",
        (NoticeKind::Test, Language::En) => "[TEST] ",
        (NoticeKind::WatchList, Language::En) => "[DAILY WATCH LIST] ",
    }
}

pub fn render(a: &Alert, notice: NoticeKind, ctx: &Context<'_>) -> Message {
    let zh = ctx.language == Language::Zh;
    let mut lines: Vec<String> = Vec::new();
    let mut line = |zh_label: &str, en_label: &str, value: String| {
        if !value.is_empty() {
            lines.push(format!("{}{}", if zh { format!("{zh_label}：") } else { format!("{en_label}: ") }, value));
        }
    };
    let subject_name = match (&a.subject, ctx.elder) {
        (Subject::Elder(_), Some(e)) => e.name.clone(),
        (s, _) => (ctx.place_name)(s.id()),
    };
    if let Some(e) = ctx.elder {
        line("姓名", "Name", e.name.clone());
        line("住址", "Address", e.address());
        line("电话", "Phone", e.phone.clone().unwrap_or_default());
    } else {
        line("对象", "Subject", subject_name.clone());
    }
    match (a.kind, ctx.last) {
        (AlertKind::Absence, _) => {
            if let (Some(l), Some(gate)) = (ctx.last.filter(|l| l.source == crate::presence::Source::Face), ctx.left_via) {
                line(
                    "最后出现",
                    "Last seen",
                    if zh { format!("{} 经{gate}离开小区（人脸）", local(l.at)) } else { format!("left the compound at {} via {gate}", local(l.at)) },
                );
            } else if let Some(l) = ctx.last {
                let src = match (l.source, zh) {
                    (crate::presence::Source::Wristband, true) => "手环",
                    (crate::presence::Source::Face, true) => "人脸",
                    (crate::presence::Source::CheckIn, true) => "走访",
                    (s, false) => s.as_str(),
                };
                line("最后出现", "Last seen", format!("{}（{}，{}）", local(l.at), (ctx.place_name)(&l.place), src));
            } else {
                line("最后出现", "Last seen", if zh { "从未出现（自登记起计）".into() } else { "never (counted from enrolment)".into() });
            }
            if let Some(r) = a.reference_at {
                let days = (ctx.now - r).num_minutes() as f64 / 1440.0;
                line("未出现", "Absent for", if zh { format!("{days:.1} 天") } else { format!("{days:.1} days") });
            }
        }
        _ => line("详情", "Detail", a.detail.clone()),
    }
    if let Some(e) = ctx.elder {
        let contacts = e
            .emergency_contacts
            .iter()
            .map(|c| if c.relation.is_empty() { format!("{} {}", c.name, c.phone) } else { format!("{}（{}）{}", c.name, c.relation, c.phone) })
            .collect::<Vec<_>>()
            .join("；");
        line("紧急联系人", "Emergency contacts", contacts);
    }
    let staff = ctx.staff.iter().map(|s| format!("{} {}", s.name, s.phone.clone().unwrap_or_default()).trim().to_string()).collect::<Vec<_>>().join("；");
    line("责任人", "Responsible", if ctx.level_name.is_empty() { staff } else { format!("{}（{}）", staff, ctx.level_name) });
    line("发生时间", "Since", local(a.opened_at));
    match notice {
        NoticeKind::Acknowledged => {
            line("确认人", "Acknowledged by", format!("{} {}", a.acked_by.clone().unwrap_or_default(), a.acked_at.map(local).unwrap_or_default()));
            line("处理结果", "Outcome", a.outcome.map(|o| if zh { o.zh() } else { o.en() }).unwrap_or_default().to_string());
            line("备注", "Note", a.note.clone());
        }
        NoticeKind::Resolved => line("解除原因", "Resolution", a.resolution.as_deref().map(|r| resolution_text(r, ctx.language)).unwrap_or_default()),
        NoticeKind::Firing | NoticeKind::Reminder | NoticeKind::Escalated => {
            if a.kind == AlertKind::Absence {
                lines.push(if zh { "请尽快上门查看。".into() } else { "Please knock on the door as soon as possible.".into() });
            }
            if ctx.ack_url.is_some() {
                lines.push(if zh { "处理后请点击下方链接确认：".into() } else { "Acknowledge with the link below:".into() });
            }
        }
        NoticeKind::Test | NoticeKind::WatchList => {}
    }
    lines.push(format!("{}{}-{}", if zh { "编号：" } else { "Ref: " }, ctx.site, a.id));
    let title = format!("{}{} · {} · {}", notice_prefix(notice, ctx.language), kind_title(a.kind, ctx.language), subject_name, ctx.site_name);
    let mut labels = BTreeMap::from([
        ("alertname".to_string(), a.kind.as_str().to_string()),
        ("site".to_string(), ctx.site.to_string()),
        ("severity".to_string(), a.kind.severity().to_string()),
        ("alert_id".to_string(), a.id.to_string()),
        ("notice".to_string(), notice.as_str().to_string()),
        ("subject".to_string(), a.subject.id().to_string()),
    ]);
    if let Some(e) = ctx.elder {
        labels.insert("grid".into(), e.grid.clone());
        labels.insert("building".into(), e.building.clone());
    }
    let resolved = notice == NoticeKind::Resolved;
    Message {
        title,
        text: lines.join("\n"),
        status: if resolved { "resolved".into() } else { "firing".into() },
        severity: a.kind.severity().to_string(),
        labels,
        starts_at: a.opened_at,
        ends_at: if resolved { a.resolved_at } else { None },
        ack_url: if matches!(notice, NoticeKind::Firing | NoticeKind::Reminder | NoticeKind::Escalated) { ctx.ack_url.clone() } else { None },
        mention_mobiles: ctx.staff.iter().filter_map(|s| s.phone.clone()).collect(),
        idempotency_key: String::new(),
        contact_phones: ctx.elder.map(|e| e.emergency_contacts.iter().map(|c| c.phone.clone()).collect()).unwrap_or_default(),
        fields: BTreeMap::from([
            ("name".to_string(), subject_name),
            ("kind".into(), kind_title(a.kind, ctx.language).to_string()),
            ("notice".into(), notice_prefix(notice, ctx.language).trim_matches(['【', '】', '[', ']', ' ']).to_string()),
            ("time".into(), local(a.opened_at)),
            ("address".into(), ctx.elder.map(|e| e.address()).unwrap_or_default()),
            ("place".into(), ctx.last.map(|l| (ctx.place_name)(&l.place)).unwrap_or_default()),
            ("site".into(), ctx.site_name.to_string()),
            ("ref".into(), format!("{}-{}", ctx.site, a.id)),
            (
                "link".into(),
                ctx.ack_url.clone().filter(|_| matches!(notice, NoticeKind::Firing | NoticeKind::Reminder | NoticeKind::Escalated)).unwrap_or_default(),
            ),
        ]),
    }
}

/// Why an alert ended, in the reader's language. The engine records the
/// reason in English (it is also the audit record); these are its forms.
pub fn resolution_text(r: &str, lang: Language) -> String {
    if lang == Language::En {
        return r.to_string();
    }
    let source_zh = |s: &str| {
        match s {
            "wristband" => "手环",
            "face" => "人脸",
            "check_in" => "走访",
            other => other,
        }
        .to_string()
    };
    if let Some(rest) = r.strip_prefix("seen again at ") {
        // "seen again at <place> (<source>), <rfc3339>"
        if let Some((place, tail)) = rest.rsplit_once(" (") {
            if let Some((src, at)) = tail.split_once("), ") {
                let at = chrono::DateTime::parse_from_rfc3339(at).map(|t| local(t.with_timezone(&chrono::Utc))).unwrap_or_else(|_| at.to_string());
                return format!("{at} 在{place}再次出现（{}）", source_zh(src));
            }
        }
    }
    if let Some(rest) = r.strip_prefix("resolved manually by ") {
        if let Some((by, reason)) = rest.split_once(": ") {
            return format!("由{by}手动解除：{reason}");
        }
    }
    if let Some(by) = r.strip_prefix("handled by ") {
        return format!("已由{by}处理");
    }
    if let Some(p) = r.strip_prefix("battery ").and_then(|x| x.strip_suffix('%')) {
        return format!("电量已恢复至 {p}%");
    }
    match r {
        "planned leave registered" => "已登记外出（请假）".into(),
        "wristband heard again" => "手环信号已恢复".into(),
        "gateway heard again" | "gateway back online" => "网关已恢复在线".into(),
        "elder removed from the roster" => "老人已从名册移除".into(),
        other => other.to_string(),
    }
}

/// The message `gatewarden alerts test-channel NAME` sends.
pub fn test_message(site: &str, site_name: &str, lang: Language, now: Timestamp) -> Message {
    let (title, text) = match lang {
        Language::Zh => (format!("【测试】gatewarden 通知通道测试 · {site_name}"), format!("这是一条测试消息，发送于 {}。收到即表示通道可用。", local(now))),
        Language::En => (
            format!("[TEST] gatewarden channel test · {site_name}"),
            format!("This is a test message sent at {}. If you can read it, the channel works.", local(now)),
        ),
    };
    Message {
        title,
        text,
        status: "firing".into(),
        severity: "info".into(),
        labels: BTreeMap::from([("alertname".into(), "test".into()), ("site".into(), site.into())]),
        starts_at: now,
        ends_at: None,
        ack_url: None,
        mention_mobiles: vec![],
        idempotency_key: format!("{site}-test-{}", now.timestamp_millis()),
        contact_phones: vec![],
        fields: BTreeMap::from([
            ("name".to_string(), if lang == Language::Zh { "测试".to_string() } else { "test".to_string() }),
            ("kind".into(), if lang == Language::Zh { "通道测试".into() } else { "channel test".into() }),
            ("time".into(), local(now)),
            ("site".into(), site_name.to_string()),
        ]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertState;
    use crate::presence::{Contact, Source};
    use chrono::{Duration, TimeZone, Utc};

    #[test]
    fn absence_message_carries_everything_a_grid_worker_needs() {
        let now = Utc.with_ymd_and_hms(2026, 11, 23, 2, 0, 0).unwrap();
        let e = Elder {
            id: "e1".into(),
            name: "张桂兰".into(),
            building: "3栋".into(),
            unit: "2单元".into(),
            room: "401".into(),
            grid: "g1".into(),
            phone: None,
            bands: vec![],
            emergency_contacts: vec![Contact { name: "王丽".into(), phone: "13800001111".into(), relation: "女儿".into() }],
            categories: vec![],
            notes: String::new(),
            enrolled_at: now,
            absence_after_secs: None,
        };
        let last = LastSeen { at: now - Duration::hours(50), source: Source::Wristband, place: "gate_north".into(), band_at: None, battery: None };
        let a = Alert {
            id: 7,
            kind: AlertKind::Absence,
            subject: Subject::Elder("e1".into()),
            state: AlertState::Firing,
            opened_at: now,
            level: 0,
            level_since: now,
            last_notified_at: now,
            notified_levels: vec![0],
            reference_at: Some(last.at),
            detail: String::new(),
            acked_by: None,
            acked_at: None,
            resolved_at: None,
            resolution: None,
            reminders: 0,
            outcome: None,
            note: String::new(),
        };
        let staff = [Staff { id: "s1".into(), name: "李网格".into(), phone: Some("13900002222".into()), role: String::new(), grid: "g1".into() }];
        let ctx = Context {
            site: "demo",
            site_name: "幸福里小区",
            language: Language::Zh,
            elder: Some(&e),
            last: Some(&last),
            level_name: "网格员",
            staff: &staff,
            ack_url: Some("http://box/ack/t".into()),
            now,
            left_via: None,
            place_name: &|p: &str| if p == "gate_north" { "北门".to_string() } else { p.to_string() },
        };
        let m = render(&a, NoticeKind::Firing, &ctx);
        for want in ["张桂兰", "3栋-2单元-401", "北门", "2.1 天", "王丽（女儿）13800001111", "李网格 13900002222（网格员）", "2026-11-21 08:00"]
        {
            assert!(m.text.contains(want) || m.title.contains(want), "missing {want:?} in\n{}\n{}", m.title, m.text);
        }
        assert_eq!(m.ack_url.as_deref(), Some("http://box/ack/t"));
        assert_eq!(m.mention_mobiles, vec!["13900002222".to_string()]);
        let en = render(&a, NoticeKind::Resolved, &Context { language: Language::En, ..ctx.clone() });
        assert!(en.title.starts_with("[RESOLVED] Elder not seen"), "{}", en.title);
        assert_eq!(en.status, "resolved");
        assert!(en.ack_url.is_none());
        // The resolution in the reader's language.
        let mut r = a.clone();
        r.resolution = Some("seen again at gate_north (wristband), 2026-11-23T01:30:00Z".into());
        let m = render(&r, NoticeKind::Resolved, &ctx);
        assert!(m.text.contains("解除原因：2026-11-23 09:30 在gate_north再次出现（手环）"), "{}", m.text);
        // A gateway's alert names it as staff know it.
        let mut g = a.clone();
        g.kind = AlertKind::GatewayOffline;
        g.subject = Subject::Gateway("gate_north".into());
        assert!(render(&g, NoticeKind::Firing, &Context { elder: None, ..ctx.clone() }).title.contains("北门"));
        for (en, zh) in [
            ("handled by 王主任", "已由王主任处理"),
            ("planned leave registered", "已登记外出（请假）"),
            ("resolved manually by 王主任: 搬去养老院", "由王主任手动解除：搬去养老院"),
            ("battery 95%", "电量已恢复至 95%"),
            ("wristband heard again", "手环信号已恢复"),
        ] {
            assert_eq!(resolution_text(en, Language::Zh), zh);
            assert_eq!(resolution_text(en, Language::En), en);
        }
        // The outcome and note go out with the acknowledgement.
        let mut k = a.clone();
        k.acked_by = Some("李网格".into());
        k.acked_at = Some(now);
        k.outcome = Some(crate::alert::Outcome::Hospital);
        k.note = "120 已接走".into();
        let m = render(&k, NoticeKind::Acknowledged, &ctx);
        assert!(m.text.contains("处理结果：已送医") && m.text.contains("备注：120 已接走"), "{}", m.text);
        // Last seen as a face at a gate facing out: they left, and the message says where.
        let out =
            LastSeen { at: Utc.with_ymd_and_hms(2026, 11, 21, 0, 14, 0).unwrap(), source: Source::Face, place: "north".into(), band_at: None, battery: None };
        let m = render(&a, NoticeKind::Firing, &Context { last: Some(&out), left_via: Some("北门"), ..ctx.clone() });
        assert!(m.text.contains("2026-11-21 08:14 经北门离开小区"), "{}", m.text);
        let m = render(&a, NoticeKind::Firing, &Context { last: Some(&out), left_via: Some("the north gate"), language: Language::En, ..ctx.clone() });
        assert!(m.text.contains("left the compound at 2026-11-21 08:14 via the north gate"), "{}", m.text);
    }
}
