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
}

impl ChannelKind {
    /// The receiving service's documented rate limit.
    pub fn default_rate_per_minute(self) -> u32 {
        match self {
            ChannelKind::Wecom | ChannelKind::Dingtalk => 20,
            ChannelKind::Feishu => 100,
            ChannelKind::Ntfy | ChannelKind::Webhook => 60,
        }
    }
}

/// Where one channel sends: the parts of its config that shape a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub name: String,
    pub kind: ChannelKind,
    pub url: String,
    /// ntfy topic.
    pub topic: Option<String>,
    /// ntfy access token.
    pub token: Option<String>,
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

/// Build the HTTP request for one message on one channel at time `now`.
pub fn prepare(ch: &Endpoint, secret: Option<&str>, m: &Message, now: Timestamp) -> Prepared {
    let json_hdr = ("Content-Type".to_string(), "application/json".to_string());
    let idem = ("Idempotency-Key".to_string(), m.idempotency_key.clone());
    match ch.kind {
        ChannelKind::Webhook => {
            let body = serde_json::to_vec(&json!({
                "version": "1",
                "receiver": ch.name,
                "status": m.status,
                "idempotency_key": m.idempotency_key,
                "alerts": [{
                    "status": m.status,
                    "labels": m.labels,
                    "annotations": { "summary": m.title, "description": m.text },
                    "startsAt": m.starts_at.to_rfc3339(),
                    "endsAt": m.ends_at.map(|t| t.to_rfc3339()).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                    "generatorURL": m.ack_url.clone().unwrap_or_default(),
                }],
            }))
            .expect("json");
            let mut headers = vec![json_hdr, idem];
            if let Some(s) = secret {
                headers.push(("X-Gatewarden-Signature".into(), webhook_signature(s, &body)));
            }
            Prepared { url: ch.url.clone(), headers, body }
        }
        ChannelKind::Wecom => {
            let body = json!({
                "msgtype": "text",
                "text": { "content": plain_text(m), "mentioned_mobile_list": m.mention_mobiles },
            });
            Prepared { url: ch.url.clone(), headers: vec![json_hdr, idem], body: serde_json::to_vec(&body).expect("json") }
        }
        ChannelKind::Dingtalk => {
            let mut url = ch.url.clone();
            if let Some(s) = secret {
                let ts = now.timestamp_millis();
                let sep = if url.contains('?') { '&' } else { '?' };
                url = format!("{url}{sep}timestamp={ts}&sign={}", dingtalk_sign(s, ts));
            }
            let mut content = plain_text(m);
            for p in &m.mention_mobiles {
                content.push_str(&format!(" @{p}"));
            }
            let body = json!({
                "msgtype": "text",
                "text": { "content": content },
                "at": { "atMobiles": m.mention_mobiles, "isAtAll": false },
            });
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
        ChannelKind::Webhook | ChannelKind::Ntfy => return Outcome::Delivered,
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
        }
    }

    fn ch(kind: ChannelKind, url: &str) -> Endpoint {
        Endpoint { name: "c".into(), kind, url: url.into(), topic: Some("t".into()), token: None }
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
        let p = prepare(&ch(ChannelKind::Dingtalk, "https://oapi.dingtalk.com/robot/send?access_token=x"), Some("SECtest"), &msg(), now);
        assert_eq!(p.url, format!("https://oapi.dingtalk.com/robot/send?access_token=x&timestamp=1700000000000&sign={DINGTALK_VECTOR}"));
        let p = prepare(&ch(ChannelKind::Feishu, "https://open.feishu.cn/hook/x"), Some("feishu-secret"), &msg(), now);
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["timestamp"], "1700000000");
        assert_eq!(v["sign"], FEISHU_VECTOR);
        let p = prepare(&ch(ChannelKind::Webhook, "http://h/"), Some("k"), &msg(), now);
        let sig = p.headers.iter().find(|(k, _)| k == "X-Gatewarden-Signature").unwrap();
        assert_eq!(sig.1, webhook_signature("k", &p.body));
        let p = prepare(&ch(ChannelKind::Wecom, "https://qyapi/x"), None, &msg(), now);
        let v: serde_json::Value = serde_json::from_slice(&p.body).unwrap();
        assert_eq!(v["text"]["mentioned_mobile_list"][0], "13800001111");
    }
}
