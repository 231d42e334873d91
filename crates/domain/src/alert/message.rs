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

fn notice_prefix(kind: NoticeKind, lang: Language) -> &'static str {
    match (kind, lang) {
        (NoticeKind::Firing, Language::Zh) => "【告警】",
        (NoticeKind::Reminder, Language::Zh) => "【提醒·未确认】",
        (NoticeKind::Escalated, Language::Zh) => "【升级】",
        (NoticeKind::Acknowledged, Language::Zh) => "【已确认】",
        (NoticeKind::Resolved, Language::Zh) => "【已解除】",
        (NoticeKind::Test, Language::Zh) => "【测试】",
        (NoticeKind::Firing, Language::En) => "[ALERT] ",
        (NoticeKind::Reminder, Language::En) => "[REMINDER - unacknowledged] ",
        (NoticeKind::Escalated, Language::En) => "[ESCALATED] ",
        (NoticeKind::Acknowledged, Language::En) => "[ACKNOWLEDGED] ",
        (NoticeKind::Resolved, Language::En) => "[RESOLVED] ",
        (NoticeKind::Test, Language::En) => "[TEST] ",
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
        (s, _) => s.id().to_string(),
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
            if let Some(l) = ctx.last {
                let src = match (l.source, zh) {
                    (crate::presence::Source::Wristband, true) => "手环",
                    (crate::presence::Source::Face, true) => "人脸",
                    (crate::presence::Source::CheckIn, true) => "走访",
                    (s, false) => s.as_str(),
                };
                line("最后出现", "Last seen", format!("{}（{}，{}）", local(l.at), l.place, src));
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
            line("确认人", "Acknowledged by", format!("{} {}", a.acked_by.clone().unwrap_or_default(), a.acked_at.map(local).unwrap_or_default()))
        }
        NoticeKind::Resolved => line("解除原因", "Resolution", a.resolution.clone().unwrap_or_default()),
        NoticeKind::Firing | NoticeKind::Reminder | NoticeKind::Escalated => {
            if a.kind == AlertKind::Absence {
                lines.push(if zh { "请尽快上门查看。".into() } else { "Please knock on the door as soon as possible.".into() });
            }
            if ctx.ack_url.is_some() {
                lines.push(if zh { "处理后请点击下方链接确认：".into() } else { "Acknowledge with the link below:".into() });
            }
        }
        NoticeKind::Test => {}
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
        };
        let m = render(&a, NoticeKind::Firing, &ctx);
        for want in ["张桂兰", "3栋-2单元-401", "gate_north", "2.1 天", "王丽（女儿）13800001111", "李网格 13900002222（网格员）", "2026-11-21 08:00"]
        {
            assert!(m.text.contains(want) || m.title.contains(want), "missing {want:?} in\n{}\n{}", m.title, m.text);
        }
        assert_eq!(m.ack_url.as_deref(), Some("http://box/ack/t"));
        assert_eq!(m.mention_mobiles, vec!["13900002222".to_string()]);
        let en = render(&a, NoticeKind::Resolved, &Context { language: Language::En, ..ctx });
        assert!(en.title.starts_with("[RESOLVED] Elder not seen"), "{}", en.title);
        assert_eq!(en.status, "resolved");
        assert!(en.ack_url.is_none());
    }
}
