//! The services that reach staff phones: a generic JSON webhook, WeCom, DingTalk,
//! Feishu/Lark and ntfy. Building a request (with its signature) and judging a
//! response are pure functions; the daemon's `alert::channel::Sender` does the HTTP.

use crate::clock::Timestamp;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use std::collections::BTreeMap;

/// What a notification says, independent of the service that carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub title: String,
    pub text: String,
    /// "firing" or "resolved" (Alertmanager's vocabulary).
    pub status: String,
    pub severity: String,
    pub labels: BTreeMap<String, String>,
    pub starts_at: Timestamp,
    #[serde(default)]
    pub ends_at: Option<Timestamp>,
    #[serde(default)]
    pub ack_url: Option<String>,
    /// Phones to @-mention in group robots.
    #[serde(default)]
    pub mention_mobiles: Vec<String>,
    /// Stable across retries, so receivers can drop duplicates (at-least-once delivery).
    pub idempotency_key: String,
    /// The elder's emergency contacts' phones (for SMS channels with `to = "contacts"`).
    #[serde(default)]
    pub contact_phones: Vec<String>,
    /// Short fields that fill an SMS or voice template: name, kind, time,
    /// address, place, site, notice, ref, link.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Generic JSON webhook (Alertmanager-like), signed with X-Gatewarden-Signature.
    Webhook,
    Wecom,
    Dingtalk,
    Feishu,
    Ntfy,
    /// Alibaba Cloud SMS (`SendSms`).
    #[serde(rename = "aliyun_sms")]
    AliyunSms,
    /// Tencent Cloud SMS (`SendSms` 2021-01-11).
    #[serde(rename = "tencent_sms")]
    TencentSms,
    /// Alibaba Cloud voice notification (`SingleCallByTts`): one call, to the
    /// first number; for waking a duty officer on an SOS.
    #[serde(rename = "aliyun_voice")]
    AliyunVoice,
}

impl ChannelKind {
    /// The receiving service's documented rate limit.
    pub fn default_rate_per_minute(self) -> u32 {
        match self {
            ChannelKind::Wecom | ChannelKind::Dingtalk => 20,
            ChannelKind::Feishu => 100,
            ChannelKind::Ntfy | ChannelKind::Webhook | ChannelKind::AliyunSms | ChannelKind::TencentSms => 60,
            ChannelKind::AliyunVoice => 10,
        }
    }

    /// SMS and voice: sent to phone numbers, through a signed cloud API.
    pub fn is_cloud(self) -> bool {
        matches!(self, ChannelKind::AliyunSms | ChannelKind::TencentSms | ChannelKind::AliyunVoice)
    }
}

/// Whom an SMS or voice channel reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Audience {
    /// The ladder level's staff (and `phones`).
    #[default]
    Staff,
    /// The elder's emergency contacts, their family (and `phones`).
    Contacts,
}

/// How a group robot's message is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TextFormat {
    #[default]
    Text,
    Markdown,
}

/// Where one channel sends: the parts of its config that shape a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub kind: ChannelKind,
    /// WeCom and DingTalk only.
    pub format: TextFormat,
    pub url: String,
    /// ntfy topic.
    pub topic: Option<String>,
    /// ntfy access token.
    pub token: Option<String>,
    /// SMS and voice: the account, template and recipients.
    pub cloud: super::cloud::CloudAccount,
    pub audience: Audience,
    /// Always sent to as well (a duty officer's phone).
    pub phones: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Network error, 5xx, 429, or a rate-limit / transient code in the body.
    Retry(String),
    /// A 4xx or a code that retrying cannot fix (bad key, bad signature).
    Permanent(String),
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// DingTalk: `urlencode(base64(HMAC-SHA256(key=secret, msg=timestamp_ms + "\n" + secret)))`.
pub fn dingtalk_sign(secret: &str, timestamp_ms: i64) -> String {
    let raw = B64.encode(hmac_sha256(secret.as_bytes(), format!("{timestamp_ms}\n{secret}").as_bytes()));
    percent_encoding::utf8_percent_encode(&raw, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Feishu/Lark: `base64(HMAC-SHA256(key=timestamp_s + "\n" + secret, msg=""))`.
pub fn feishu_sign(secret: &str, timestamp_s: i64) -> String {
    B64.encode(hmac_sha256(format!("{timestamp_s}\n{secret}").as_bytes(), b""))
}

/// Generic webhook: `X-Gatewarden-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
pub fn webhook_signature(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret.as_bytes(), body)))
}

fn plain_text(m: &Message) -> String {
    let mut s = format!("{}\n{}", m.title, m.text);
    if let Some(u) = &m.ack_url {
        s.push_str(&format!("\n{u}"));
    }
    s
}

/// The message in the markdown both WeCom and DingTalk render: a bold
/// title, one quoted line per field, and the acknowledge link.
fn markdown(m: &Message) -> String {
    let esc = |t: &str| t.replace(['*', '_', '`', '[', ']'], " ");
    let mut s = format!("### {}\n", esc(&m.title));
    for l in m.text.lines() {
        s.push_str(&format!("> {}\n", esc(l)));
    }
    if let Some(u) = &m.ack_url {
        s.push_str(&format!("\n[确认已处理 / Acknowledge]({u})\n"));
    }
    s
}

/// Alertmanager's fingerprint: a 64-bit FNV-1a over the sorted label set,
/// without `notice` (the alert, not this message about it).
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for (k, v) in labels.iter().filter(|(k, _)| k.as_str() != "notice") {
        for b in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// The phone numbers an SMS or voice channel sends `m` to, once each.
pub fn cloud_recipients(ch: &Endpoint, m: &Message) -> Vec<String> {
    let from_message = match ch.audience {
        Audience::Staff => &m.mention_mobiles,
        Audience::Contacts => &m.contact_phones,
    };
    let mut out: Vec<String> = Vec::new();
    for p in from_message.iter().chain(&ch.phones) {
        let p = p.trim().to_string();
        if !p.is_empty() && !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

/// Build the HTTP request for one message on one channel at time `now`; an
/// error is a message this channel cannot carry (an SMS with nobody to send
/// it to), which no retry fixes.
pub fn prepare(ch: &Endpoint, secret: Option<&str>, m: &Message, now: Timestamp) -> Result<Prepared, String> {
    if ch.kind.is_cloud() {
        use super::cloud;
        let phones = cloud_recipients(ch, m);
        if phones.is_empty() {
            return Err(format!("no phone number to send to ({:?} has none{})", ch.audience, if ch.phones.is_empty() { "; set phones" } else { "" }));
        }
        let secret = secret.ok_or("no secret (AccessKeySecret / SecretKey) configured")?;
        // Unique per attempt: the same notification is retried at another instant.
        let nonce = format!("{}-{}", m.idempotency_key, now.timestamp_nanos_opt().unwrap_or_default());
        return Ok(match ch.kind {
            ChannelKind::AliyunSms => cloud::aliyun_sms(&ch.url, secret, &ch.cloud, &phones, &m.fields, &nonce, now),
            ChannelKind::AliyunVoice => cloud::aliyun_voice(&ch.url, secret, &ch.cloud, &phones[0], &m.fields, &nonce, now),
            _ => cloud::tencent_sms(&ch.url, secret, &ch.cloud, &phones, &m.fields, now),
        });
    }
    Ok(prepare_robot(ch, secret, m, now))
}

fn prepare_robot(ch: &Endpoint, secret: Option<&str>, m: &Message, now: Timestamp) -> Prepared {
    let json_hdr = ("Content-Type".to_string(), "application/json".to_string());
    let idem = ("Idempotency-Key".to_string(), m.idempotency_key.clone());
    match ch.kind {
        ChannelKind::Webhook => {
            // Alertmanager's webhook payload, version 4, so an existing
            // Alertmanager receiver takes it as it is.
            let annotations = json!({ "summary": m.title, "description": m.text });
            let group_labels: BTreeMap<&str, &str> =
                m.labels.iter().filter(|(k, _)| matches!(k.as_str(), "alertname" | "alert_id" | "site")).map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let group_key = format!("{{}}:{{{}}}", group_labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect::<Vec<_>>().join(", "));
            let body = serde_json::to_vec(&json!({
                "version": "4",
                "groupKey": group_key,
                "truncatedAlerts": 0,
                "status": m.status,
                "receiver": ch.name,
                "groupLabels": group_labels,
                "commonLabels": m.labels,
                "commonAnnotations": annotations,
                "externalURL": m.ack_url.as_deref().and_then(|u| u.find("/ack/").map(|i| &u[..i])).unwrap_or_default(),
                "alerts": [{
                    "status": m.status,
                    "labels": m.labels,
                    "annotations": annotations,
                    "startsAt": m.starts_at.to_rfc3339(),
                    "endsAt": m.ends_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                    "generatorURL": m.ack_url.clone().unwrap_or_default(),
                    "fingerprint": fingerprint(&m.labels),
                }],
                "idempotency_key": m.idempotency_key,
            }))
            .expect("json");
            let mut headers = vec![json_hdr, idem];
            if let Some(s) = secret {
                headers.push(("X-Gatewarden-Signature".into(), webhook_signature(s, &body)));
            }
            Prepared { url: ch.url.clone(), headers, body }
        }
        ChannelKind::Wecom => {
            let body = match ch.format {
                TextFormat::Text => json!({
                    "msgtype": "text",
                    "text": { "content": plain_text(m), "mentioned_mobile_list": m.mention_mobiles },
                }),
                // WeCom's markdown cannot @-mention by phone: the text form can.
                TextFormat::Markdown => json!({ "msgtype": "markdown", "markdown": { "content": markdown(m) } }),
            };
            Prepared { url: ch.url.clone(), headers: vec![json_hdr, idem], body: serde_json::to_vec(&body).expect("json") }
        }
        ChannelKind::Dingtalk => {
            let mut url = ch.url.clone();
            if let Some(s) = secret {
                let ts = now.timestamp_millis();
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}timestamp={ts}&sign={}", dingtalk_sign(s, ts));
            }
            // DingTalk mentions a phone only when the text also says "@<phone>".
            let mentions: String = m.mention_mobiles.iter().map(|p| format!(" @{p}")).collect();
            let body = match ch.format {
                TextFormat::Text => json!({
                    "msgtype": "text",
                    "text": { "content": format!("{}{mentions}", plain_text(m)) },
                    "at": { "atMobiles": m.mention_mobiles, "isAtAll": false },
                }),
                TextFormat::Markdown => json!({
                    "msgtype": "markdown",
                    "markdown": { "title": m.title, "text": format!("{}{mentions}", markdown(m)) },
                    "at": { "atMobiles": m.mention_mobiles, "isAtAll": false },
                }),
            };
            Prepared { url, headers: vec![json_hdr, idem], body: serde_json::to_vec(&body).expect("json") }
        }
        ChannelKind::Feishu => {
            let mut body = json!({ "msg_type": "text", "content": { "text": plain_text(m) } });
            if let Some(s) = secret {
                let ts = now.timestamp();
                body["timestamp"] = json!(ts.to_string());
                body["sign"] = json!(feishu_sign(s, ts));
            }
            Prepared { url: ch.url.clone(), headers: vec![json_hdr, idem], body: serde_json::to_vec(&body).expect("json") }
        }
        ChannelKind::Ntfy => {
            let priority = match m.severity.as_str() {
                "critical" => 5,
                "high" => 4,
                "info" => 2,
                _ => 3,
            };
            let mut body = json!({
                "topic": ch.topic.clone().unwrap_or_default(),
                "title": m.title,
                "message": m.text,
                "priority": priority,
                "tags": [m.status.clone(), m.labels.get("alertname").cloned().unwrap_or_default()],
            });
            if let Some(u) = &m.ack_url {
                body["click"] = json!(u);
                body["actions"] = json!([{ "action": "view", "label": "确认 / Acknowledge", "url": u }]);
            }
            let mut headers = vec![json_hdr, idem];
            if let Some(t) = &ch.token {
                headers.push(("Authorization".into(), format!("Bearer {t}")));
            }
            Prepared { url: ch.url.trim_end_matches('/').to_string(), headers, body: serde_json::to_vec(&body).expect("json") }
        }
        ChannelKind::AliyunSms | ChannelKind::TencentSms | ChannelKind::AliyunVoice => unreachable!("cloud channels are prepared by `prepare`"),
    }
}

/// Query keys whose values are secrets in the services' webhook URLs
/// (WeCom `key`, DingTalk `access_token` and `sign`, ntfy/generic tokens).
const SECRET_QUERY_KEYS: &[&str] = &["key", "access_token", "token", "sign", "signature", "secret", "password", "auth", "apikey", "api_key"];

/// The secret parts of a channel URL: secret query values, and the token that
/// Feishu/Lark and Slack-style robots carry as the last path segment.
pub fn url_secrets(url: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    for pair in query.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            if SECRET_QUERY_KEYS.contains(&k.to_ascii_lowercase().as_str()) && !v.is_empty() {
                out.push(v.to_string());
            }
        }
    }
    let segs: Vec<&str> = path.split('/').collect();
    if let Some(i) = segs.iter().position(|s| *s == "hook" || *s == "hooks" || *s == "webhook") {
        out.extend(segs[i + 1..].iter().filter(|s| s.len() >= 8).map(|s| s.to_string()));
    }
    out
}

/// `text` with every secret of `url` replaced by `***`: for errors that
/// quote the URL, before they reach a log line or the outbox's `last_error`.
pub fn redact(text: &str, url: &str) -> String {
    let mut t = text.to_string();
    for s in url_secrets(url) {
        t = t.replace(&s, "***");
        // Percent-encoded forms too (a DingTalk sign carries '%2B' and '%3D').
        let enc = percent_encoding::utf8_percent_encode(&s, percent_encoding::NON_ALPHANUMERIC).to_string();
        if enc != s {
            t = t.replace(&enc, "***");
        }
    }
    t
}

/// Codes in a 200 body that mean "slow down and try again".
const RATE_LIMIT_CODES: &[i64] = &[45009, 130101, 11232];
/// Codes that retrying cannot fix: bad webhook key or token, bad signature,
/// keyword / IP whitelist refusal, malformed message.
const PERMANENT_CODES: &[i64] = &[
    93000, 40008, 40058, 44004, // WeCom: invalid key, bad msgtype, bad param, empty content
    300001, 310000, 400101, 40035, // DingTalk: token missing/invalid, sign/keyword/IP refusal
    19001, 19021, 19022, 19024, 9499, // Feishu: bad param, sign mismatch, IP, keywords, bad request
];

/// Judge success from the status *and* the body: WeCom and DingTalk answer 200
/// with `errcode`, Feishu with `code`.
pub fn judge(kind: ChannelKind, status: u16, body: &str) -> Outcome {
    match kind {
        ChannelKind::AliyunSms | ChannelKind::AliyunVoice => return super::cloud::judge_aliyun(status, body),
        ChannelKind::TencentSms => return super::cloud::judge_tencent(status, body),
        _ => {}
    }
    let snippet: String = body.chars().take(200).collect();
    if status == 429 || status == 408 || status >= 500 {
        return Outcome::Retry(format!("HTTP {status}: {snippet}"));
    }
    if status >= 400 {
        return Outcome::Permanent(format!("HTTP {status}: {snippet}"));
    }
    if !(200..300).contains(&status) {
        return Outcome::Retry(format!("unexpected HTTP {status}"));
    }
    let field = match kind {
        ChannelKind::Wecom | ChannelKind::Dingtalk => "errcode",
        ChannelKind::Feishu => "code",
        _ => return Outcome::Delivered,
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return Outcome::Retry(format!("HTTP {status} without a JSON body: {snippet}"));
    };
    // Older Feishu robots answer {"StatusCode":0,...}.
    let code = v.get(field).or_else(|| v.get("StatusCode")).and_then(|c| c.as_i64());
    match code {
        Some(0) => Outcome::Delivered,
        Some(c) if RATE_LIMIT_CODES.contains(&c) => Outcome::Retry(format!("rate limited ({field} {c}): {snippet}")),
        Some(c) if PERMANENT_CODES.contains(&c) => Outcome::Permanent(format!("{field} {c}: {snippet}")),
        Some(c) => Outcome::Retry(format!("{field} {c}: {snippet}")),
        None => Outcome::Retry(format!("no {field} in the answer: {snippet}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    // Vectors computed independently of this code, with Python's standard library:
    //   python3 -c 'import hmac,hashlib,base64,urllib.parse as u; s="SECtest"; t=1700000000000;
    //     print(u.quote_plus(base64.b64encode(hmac.new(s.encode(),f"{t}\n{s}".encode(),hashlib.sha256).digest())))'
    //   python3 -c 'import hmac,hashlib,base64; s="feishu-secret"; t=1700000000;
    //     print(base64.b64encode(hmac.new(f"{t}\n{s}".encode(),b"",hashlib.sha256).digest()).decode())'
    //   python3 -c 'import hmac,hashlib; print(hmac.new(b"k",b"{\"a\":1}",hashlib.sha256).hexdigest())'
    const DINGTALK_VECTOR: &str = "aZLLrriXgn05YbwaGR7knYsLeJADjr9NwLaNNKpxh4g%3D";
    const FEISHU_VECTOR: &str = "OrBzY1Y01Gq+HgJsl+7OfWcMVwc7YocohQm5iiZwjhU=";
    const WEBHOOK_VECTOR: &str = "c3a92ff9e274cdcce27a58c15a78ec6dcbbdbd0038a87e7a11baef2028fd8bff";

    #[test]
    fn dingtalk_signature_matches_independent_vector() {
        assert_eq!(dingtalk_sign("SECtest", 1_700_000_000_000), DINGTALK_VECTOR);
    }

    #[test]
    fn feishu_signature_matches_independent_vector() {
        assert_eq!(feishu_sign("feishu-secret", 1_700_000_000), FEISHU_VECTOR);
    }

    #[test]
    fn webhook_signature_matches_independent_vector() {
        assert_eq!(webhook_signature("k", br#"{"a":1}"#), format!("sha256={WEBHOOK_VECTOR}"));
    }

    #[test]
    fn success_is_judged_from_the_body_not_only_the_status() {
        use ChannelKind::*;
        assert_eq!(judge(Wecom, 200, r#"{"errcode":0,"errmsg":"ok"}"#), Outcome::Delivered);
        assert!(matches!(judge(Wecom, 200, r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#), Outcome::Retry(_)));
        assert!(matches!(judge(Wecom, 200, r#"{"errcode":-1,"errmsg":"system busy"}"#), Outcome::Retry(_)));
        assert!(matches!(judge(Wecom, 200, r#"{"errcode":93000,"errmsg":"invalid webhook url"}"#), Outcome::Permanent(_)));
        assert!(matches!(judge(Dingtalk, 200, r#"{"errcode":310000,"errmsg":"sign not match"}"#), Outcome::Permanent(_)));
        assert!(matches!(judge(Dingtalk, 200, r#"{"errcode":130101,"errmsg":"send too fast"}"#), Outcome::Retry(_)));
        assert_eq!(judge(Feishu, 200, r#"{"code":0,"msg":"success"}"#), Outcome::Delivered);
        assert_eq!(judge(Feishu, 200, r#"{"StatusCode":0,"StatusMessage":"success"}"#), Outcome::Delivered);
        assert!(matches!(judge(Feishu, 200, r#"{"code":19021,"msg":"sign match fail"}"#), Outcome::Permanent(_)));
        assert!(matches!(judge(Wecom, 200, "<html>portal</html>"), Outcome::Retry(_)));
        assert!(matches!(judge(Webhook, 503, ""), Outcome::Retry(_)));
        assert!(matches!(judge(Webhook, 429, ""), Outcome::Retry(_)));
        assert!(matches!(judge(Webhook, 404, ""), Outcome::Permanent(_)));
        assert_eq!(judge(Ntfy, 200, "{}"), Outcome::Delivered);
    }

    fn msg() -> Message {
        Message {
            title: "t".into(),
            text: "x".into(),
            status: "firing".into(),
            severity: "high".into(),
            labels: BTreeMap::new(),
            starts_at: Utc.timestamp_opt(1_700_000_000, 0).unwrap(),
            ends_at: None,
            ack_url: Some("http://box/ack/abc".into()),
            mention_mobiles: vec!["13800001111".into()],
            idempotency_key: "site-1".into(),
            contact_phones: vec![],
            fields: BTreeMap::new(),
        }
    }

    fn ch(kind: ChannelKind, url: &str) -> Endpoint {
        Endpoint {
            name: "c".into(),
            kind,
            format: TextFormat::Text,
            url: url.into(),
            topic: Some("t".into()),
            token: None,
            cloud: Default::default(),
            audience: Audience::Staff,
            phones: vec![],
        }
    }

    #[test]
    fn channel_secrets_are_redacted_from_any_text_that_quotes_the_url() {
        let cases = [
            ("https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx-4bc4", "693a91f6-7xxx-4bc4"),
            ("https://oapi.dingtalk.com/robot/send?access_token=abcdef123456&timestamp=1&sign=a%2Bb%3D", "abcdef123456"),
            ("https://open.feishu.cn/open-apis/bot/v2/hook/0b9f5c1e-7a1d-4c1b", "0b9f5c1e-7a1d-4c1b"),
            ("https://hooks.example/alerts?Token=s3cr3t-t0ken", "s3cr3t-t0ken"),
        ];
        for (url, secret) in cases {
            let err = format!("error sending request for url ({url}): connection refused");
            let r = redact(&err, url);
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains("connection refused") && r.contains("***"), "{r}");
        }
        let ding = "https://oapi.dingtalk.com/robot/send?access_token=abc123456789&sign=a%2Bb%3D";
        assert!(!redact(&format!("url {ding}"), ding).contains("a%2Bb%3D"));
        assert_eq!(redact("no url here", "http://h/hook"), "no url here");
    }

    #[test]
    fn signed_robots_carry_their_signature_where_the_service_expects_it() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let p = prepare(&ch(ChannelKind::Dingtalk, "https://oapi.dingtalk.com/robot/send?access_token=x"), Some("SECtest"), &msg(), now).unwrap();
        assert_eq!(p.url, format!("https://oapi.dingtalk.com/robot/send?access_token=x&timestamp=1700000000000&sign={DINGTALK_VECTOR}"));
        let p = prepare(&ch(ChannelKind::Feishu, "https://open.feishu.cn/hook/x"), Some("feishu-secret"), &msg(), now).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["timestamp"], "1700000000");
        assert_eq!(v["sign"], FEISHU_VECTOR);
        let p = prepare(&ch(ChannelKind::Webhook, "http://h/"), Some("k"), &msg(), now).unwrap();
        let sig = p.headers.iter().find(|(k, _)| k == "X-Gatewarden-Signature").unwrap();
        assert_eq!(sig.1, webhook_signature("k", &p.body));
        let p = prepare(&ch(ChannelKind::Wecom, "https://qyapi/x"), None, &msg(), now).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["text"]["mentioned_mobile_list"][0], "13800001111");
    }

    #[test]
    fn wecom_and_dingtalk_markdown_carry_the_title_fields_and_the_ack_link() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let mut m = msg();
        m.text = "姓名：张桂兰\n住址：3栋-401".into();
        let md = |kind| {
            let mut c = ch(kind, "https://robot/x");
            c.format = TextFormat::Markdown;
            serde_json::from_slice::<serde_json::Value>(&prepare(&c, None, &m, now).unwrap().body).unwrap()
        };
        let w = md(ChannelKind::Wecom);
        assert_eq!(w["msgtype"], "markdown");
        let content = w["markdown"]["content"].as_str().unwrap();
        assert!(content.starts_with("### t\n> 姓名：张桂兰\n> 住址：3栋-401\n") && content.contains("(http://box/ack/abc)"), "{content}");
        let d = md(ChannelKind::Dingtalk);
        assert_eq!((d["msgtype"].as_str(), d["markdown"]["title"].as_str()), (Some("markdown"), Some("t")));
        assert!(d["markdown"]["text"].as_str().unwrap().contains("@13800001111"), "DingTalk mentions need the phone in the text");
        assert_eq!(d["at"]["atMobiles"][0], "13800001111");
    }

    #[test]
    fn the_generic_webhook_is_an_alertmanager_v4_payload_with_a_stable_fingerprint() {
        let now = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let mut m = msg();
        m.labels = BTreeMap::from([
            ("alertname".into(), "absence".into()),
            ("alert_id".into(), "7".into()),
            ("site".into(), "s".into()),
            ("notice".into(), "firing".into()),
        ]);
        let v: serde_json::Value = serde_json::from_slice(&prepare(&ch(ChannelKind::Webhook, "http://h/"), None, &m, now).unwrap().body).unwrap();
        assert_eq!(v["version"], "4");
        assert_eq!(v["groupKey"], r#"{}:{alert_id="7", alertname="absence", site="s"}"#);
        assert_eq!(v["commonLabels"]["alertname"], "absence");
        assert_eq!(v["externalURL"], "http://box");
        let f = v["alerts"][0]["fingerprint"].as_str().unwrap().to_string();
        assert_eq!(f.len(), 16);
        m.labels.insert("notice".into(), "reminder".into());
        assert_eq!(fingerprint(&m.labels), f, "the same alert, another notice: the same fingerprint");
        m.labels.insert("alert_id".into(), "8".into());
        assert_ne!(fingerprint(&m.labels), f);
    }
}
