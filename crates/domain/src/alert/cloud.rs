//! SMS and voice through the Chinese clouds, for people who are in no group
//! chat (an elder's family) and for waking a duty officer: Alibaba Cloud SMS
//! (`SendSms`) and voice (`SingleCallByTts`) with Alibaba's RPC signature
//! (HMAC-SHA1), and Tencent Cloud SMS (`SendSms` 2021-01-11) with
//! TC3-HMAC-SHA256. Building a signed request and judging the answer are pure.

use super::channel::{Outcome, Prepared};
use crate::clock::Timestamp;
use crate::mask::mask_phones_in;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What a cloud channel needs besides its URL and secret.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudAccount {
    /// Alibaba AccessKeyId / Tencent SecretId.
    pub key_id: String,
    /// The SMS signature (签名), e.g. "幸福里社区"; not used by voice.
    pub sign_name: String,
    /// Alibaba TemplateCode / TtsCode, Tencent TemplateId.
    pub template: String,
    /// Which message fields fill the template, in order (Tencent's
    /// parameters are positional; Alibaba's are named by these keys).
    pub template_params: Vec<String>,
    /// Tencent SmsSdkAppId.
    pub app_id: String,
    /// Alibaba RegionId / Tencent X-TC-Region.
    pub region: String,
    /// Alibaba voice: the number shown to the callee (CalledShowNumber).
    pub show_number: String,
}

/// RFC 3986 percent-encoding as Alibaba's signature wants it: everything but
/// `A-Z a-z 0-9 - _ . ~`.
pub fn aliyun_encode(s: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');
    percent_encoding::utf8_percent_encode(s, KEEP).to_string()
}

/// Alibaba Cloud RPC signature (version 1.0): base64(HMAC-SHA1(secret + "&",
/// method & enc("/") & enc(sorted, encoded query))).
pub fn aliyun_signature(secret: &str, method: &str, params: &BTreeMap<String, String>) -> String {
    let canonical = params.iter().map(|(k, v)| format!("{}={}", aliyun_encode(k), aliyun_encode(v))).collect::<Vec<_>>().join("&");
    let to_sign = format!("{method}&{}&{}", aliyun_encode("/"), aliyun_encode(&canonical));
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(format!("{secret}&").as_bytes()).expect("any key length");
    m.update(to_sign.as_bytes());
    B64.encode(m.finalize().into_bytes())
}

/// A signed Alibaba RPC call as a form POST (the phone numbers stay out of the URL).
pub fn aliyun_request(url: &str, secret: &str, mut params: BTreeMap<String, String>, key_id: &str, nonce: &str, now: Timestamp) -> Prepared {
    for (k, v) in [
        ("AccessKeyId", key_id),
        ("Format", "JSON"),
        ("SignatureMethod", "HMAC-SHA1"),
        ("SignatureNonce", nonce),
        ("SignatureVersion", "1.0"),
        ("Version", "2017-05-25"),
    ] {
        params.insert(k.into(), v.into());
    }
    params.insert("Timestamp".into(), now.format("%Y-%m-%dT%H:%M:%SZ").to_string());
    let sig = aliyun_signature(secret, "POST", &params);
    params.insert("Signature".into(), sig);
    let body = params.iter().map(|(k, v)| format!("{}={}", aliyun_encode(k), aliyun_encode(v))).collect::<Vec<_>>().join("&");
    Prepared { url: url.to_string(), headers: vec![("Content-Type".into(), "application/x-www-form-urlencoded".into())], body: body.into_bytes() }
}

fn template_values(acc: &CloudAccount, fields: &BTreeMap<String, String>) -> Vec<(String, String)> {
    acc.template_params.iter().map(|k| (k.clone(), fields.get(k).cloned().unwrap_or_default())).collect()
}

/// Alibaba `SendSms` to `phones` with the template filled from `fields`.
pub fn aliyun_sms(url: &str, secret: &str, acc: &CloudAccount, phones: &[String], fields: &BTreeMap<String, String>, nonce: &str, now: Timestamp) -> Prepared {
    let tp: serde_json::Map<String, serde_json::Value> = template_values(acc, fields).into_iter().map(|(k, v)| (k, v.into())).collect();
    let params = BTreeMap::from([
        ("Action".to_string(), "SendSms".to_string()),
        ("RegionId".into(), if acc.region.is_empty() { "cn-hangzhou".into() } else { acc.region.clone() }),
        ("PhoneNumbers".into(), phones.join(",")),
        ("SignName".into(), acc.sign_name.clone()),
        ("TemplateCode".into(), acc.template.clone()),
        ("TemplateParam".into(), serde_json::Value::Object(tp).to_string()),
    ]);
    aliyun_request(url, secret, params, &acc.key_id, nonce, now)
}

/// Alibaba `SingleCallByTts`: one call, to one number.
pub fn aliyun_voice(url: &str, secret: &str, acc: &CloudAccount, phone: &str, fields: &BTreeMap<String, String>, nonce: &str, now: Timestamp) -> Prepared {
    let tp: serde_json::Map<String, serde_json::Value> = template_values(acc, fields).into_iter().map(|(k, v)| (k, v.into())).collect();
    let mut params = BTreeMap::from([
        ("Action".to_string(), "SingleCallByTts".to_string()),
        ("RegionId".into(), if acc.region.is_empty() { "cn-hangzhou".into() } else { acc.region.clone() }),
        ("CalledNumber".into(), phone.to_string()),
        ("TtsCode".into(), acc.template.clone()),
        ("TtsParam".into(), serde_json::Value::Object(tp).to_string()),
        ("PlayTimes".into(), "3".into()),
    ]);
    if !acc.show_number.is_empty() {
        params.insert("CalledShowNumber".into(), acc.show_number.clone());
    }
    aliyun_request(url, secret, params, &acc.key_id, nonce, now)
}

fn hmac256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

/// Tencent Cloud TC3-HMAC-SHA256: the `Authorization` header for a JSON POST
/// of `payload` to `host` (service `sms`) at `timestamp`.
pub fn tc3_authorization(secret_id: &str, secret_key: &str, host: &str, service: &str, payload: &[u8], timestamp: i64) -> String {
    let date = chrono::DateTime::from_timestamp(timestamp, 0).expect("a valid time").format("%Y-%m-%d").to_string();
    let canonical =
        format!("POST\n/\n\ncontent-type:application/json; charset=utf-8\nhost:{host}\n\ncontent-type;host\n{}", hex::encode(Sha256::digest(payload)));
    let scope = format!("{date}/{service}/tc3_request");
    let to_sign = format!("TC3-HMAC-SHA256\n{timestamp}\n{scope}\n{}", hex::encode(Sha256::digest(canonical.as_bytes())));
    let k_date = hmac256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac256(&k_date, service.as_bytes());
    let k_signing = hmac256(&k_service, b"tc3_request");
    let signature = hex::encode(hmac256(&k_signing, to_sign.as_bytes()));
    format!("TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders=content-type;host, Signature={signature}")
}

/// Tencent `SendSms` (2021-01-11) to `phones` (E.164 is added for +86 numbers).
pub fn tencent_sms(url: &str, secret: &str, acc: &CloudAccount, phones: &[String], fields: &BTreeMap<String, String>, now: Timestamp) -> Prepared {
    let host = url.split("://").nth(1).unwrap_or(url).split('/').next().unwrap_or_default().to_string();
    let e164: Vec<String> = phones.iter().map(|p| if p.starts_with('+') { p.clone() } else { format!("+86{p}") }).collect();
    let body = serde_json::to_vec(&serde_json::json!({
        "PhoneNumberSet": e164,
        "SmsSdkAppId": acc.app_id,
        "SignName": acc.sign_name,
        "TemplateId": acc.template,
        "TemplateParamSet": template_values(acc, fields).into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    }))
    .expect("json");
    let ts = now.timestamp();
    let auth = tc3_authorization(&acc.key_id, secret, &host, "sms", &body, ts);
    let region = if acc.region.is_empty() { "ap-guangzhou".to_string() } else { acc.region.clone() };
    let headers = vec![
        ("Content-Type".to_string(), "application/json; charset=utf-8".to_string()),
        ("Host".into(), host),
        ("Authorization".into(), auth),
        ("X-TC-Action".into(), "SendSms".into()),
        ("X-TC-Version".into(), "2021-01-11".into()),
        ("X-TC-Timestamp".into(), ts.to_string()),
        ("X-TC-Region".into(), region),
    ];
    Prepared { url: url.to_string(), headers, body }
}

/// Alibaba codes that clear by themselves (flow control, a busy service,
/// a nonce or clock problem that the next attempt does not have).
const ALIYUN_RETRY: &[&str] = &[
    "isv.BUSINESS_LIMIT_CONTROL",
    "isv.DAY_LIMIT_CONTROL",
    "Throttling.User",
    "Throttling",
    "isp.SYSTEM_ERROR",
    "isp.GATEWAY_ERROR",
    "ServiceUnavailable",
    "InternalError",
    "SignatureNonceUsed",
    "InvalidTimeStamp.Expired",
];

/// Judge an Alibaba answer by its `Code` ("OK" is success), then its status.
/// Any phone number the answer quotes is masked before it is kept.
pub fn judge_aliyun(status: u16, body: &str) -> Outcome {
    let snippet: String = mask_phones_in(&body.chars().take(200).collect::<String>());
    let code = serde_json::from_str::<serde_json::Value>(body).ok().and_then(|v| v.get("Code").and_then(|c| c.as_str()).map(str::to_string));
    match code.as_deref() {
        Some("OK") if (200..300).contains(&status) => Outcome::Delivered,
        Some(c) if ALIYUN_RETRY.contains(&c) => Outcome::Retry(format!("Alibaba {c}: {snippet}")),
        // Bad key or signature, unapproved sign or template, an invalid
        // number, no balance: retrying cannot fix these.
        Some(c) => Outcome::Permanent(format!("Alibaba {c}: {snippet}")),
        None if status == 429 || status >= 500 => Outcome::Retry(format!("HTTP {status}: {snippet}")),
        None if status >= 400 => Outcome::Permanent(format!("HTTP {status}: {snippet}")),
        None => Outcome::Retry(format!("HTTP {status} without a Code: {snippet}")),
    }
}

fn tencent_retryable(code: &str) -> bool {
    code.starts_with("InternalError") || code.starts_with("RequestLimitExceeded") || code.starts_with("LimitExceeded") || code == "ResourceUnavailable"
}

/// Judge a Tencent answer: `Response.Error.Code`, else each number's status.
/// Delivered when any number was accepted (resending would repeat it to them).
pub fn judge_tencent(status: u16, body: &str) -> Outcome {
    let snippet: String = mask_phones_in(&body.chars().take(300).collect::<String>());
    if status == 429 || status >= 500 {
        return Outcome::Retry(format!("HTTP {status}: {snippet}"));
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return if status >= 400 {
            Outcome::Permanent(format!("HTTP {status}: {snippet}"))
        } else {
            Outcome::Retry(format!("HTTP {status} without JSON: {snippet}"))
        };
    };
    let r = &v["Response"];
    if let Some(code) = r["Error"]["Code"].as_str() {
        return if tencent_retryable(code) {
            Outcome::Retry(format!("Tencent {code}: {snippet}"))
        } else {
            Outcome::Permanent(format!("Tencent {code}: {snippet}"))
        };
    }
    let codes: Vec<&str> = r["SendStatusSet"].as_array().into_iter().flatten().filter_map(|s| s["Code"].as_str()).collect();
    match codes.as_slice() {
        [] => Outcome::Retry(format!("no SendStatusSet: {snippet}")),
        c if c.iter().any(|c| c.eq_ignore_ascii_case("ok")) => Outcome::Delivered,
        [first, ..] if tencent_retryable(first) => Outcome::Retry(format!("Tencent {first}: {snippet}")),
        [first, ..] => Outcome::Permanent(format!("Tencent {first}: {snippet}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    // Vectors computed independently of this code, with Python's standard
    // library (hmac, hashlib, base64, urllib.parse, json):
    //   Alibaba: the 14 parameters of the test below (TemplateParam as
    //     json.dumps(..., ensure_ascii=False, separators=(',',':'), sort_keys=True)),
    //     canonical = "&".join(quote(k,safe='-_.~')+"="+quote(v,safe='-_.~') for sorted items),
    //     base64(hmac.new(b"testsecret&", ("POST&%2F&"+quote(canonical,safe='-_.~')).encode(), sha1))
    //   Tencent: the TC3 steps of the Tencent Cloud API 3.0 documentation
    //     (canonical request, string to sign, TC3<key> → date → "sms" →
    //     "tc3_request" HMAC chain) with the documentation's example SecretId/Key.
    const ALIYUN_VECTOR: &str = "3kWzf/qPFrkv0xymsYONn1ouwTI=";
    const TC3_VECTOR: &str = "d2e72bc967ad80c785e78abefee594e502de687413abc716a55fb2d79ddd6ffc";

    fn acc() -> CloudAccount {
        CloudAccount {
            key_id: "testid".into(),
            sign_name: "幸福里社区".into(),
            template: "SMS_123456789".into(),
            template_params: vec!["name".into(), "kind".into(), "time".into()],
            app_id: "1400006666".into(),
            region: String::new(),
            show_number: String::new(),
        }
    }

    fn fields() -> BTreeMap<String, String> {
        BTreeMap::from([("name".into(), "张桂兰".into()), ("kind".into(), "紧急呼叫（SOS）".into()), ("time".into(), "2026-11-21 08:14".into())])
    }

    #[test]
    fn alibaba_rpc_signature_matches_an_independent_vector() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 11, 21, 0, 14, 0).unwrap();
        let p = aliyun_sms("https://dysmsapi.aliyuncs.com/", "testsecret", &acc(), &["13800001111".into()], &fields(), "nonce-1", now);
        let body = String::from_utf8(p.body).unwrap();
        let sig = body.split('&').find_map(|kv| kv.strip_prefix("Signature=")).unwrap();
        assert_eq!(sig, aliyun_encode(ALIYUN_VECTOR));
        assert!(body.contains("TemplateParam=") && body.contains("PhoneNumbers=13800001111"), "{body}");
        assert!(!p.url.contains("13800001111"), "phone numbers stay out of the URL");
    }

    #[test]
    fn tencent_tc3_signature_matches_an_independent_vector() {
        let payload =
            br#"{"PhoneNumberSet":["+8613800001111"],"SmsSdkAppId":"1400006666","SignName":"test","TemplateId":"449739","TemplateParamSet":["1234"]}"#;
        let auth = tc3_authorization(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            "sms.tencentcloudapi.com",
            "sms",
            payload,
            1_551_113_065,
        );
        assert_eq!(
            auth,
            format!("TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/sms/tc3_request, SignedHeaders=content-type;host, Signature={TC3_VECTOR}")
        );
    }

    #[test]
    fn every_documented_answer_is_judged_and_no_phone_survives_in_the_reason() {
        use Outcome::*;
        let a = |status, body: &str| judge_aliyun(status, body);
        assert_eq!(a(200, r#"{"Message":"OK","RequestId":"r","BizId":"b","Code":"OK"}"#), Delivered);
        for (c, retry) in [
            ("isv.BUSINESS_LIMIT_CONTROL", true),
            ("Throttling.User", true),
            ("isp.SYSTEM_ERROR", true),
            ("isv.MOBILE_NUMBER_ILLEGAL", false),
            ("isv.TEMPLATE_MISSING_PARAMETERS", false),
            ("isv.SMS_SIGNATURE_ILLEGAL", false),
            ("isv.AMOUNT_NOT_ENOUGH", false),
            ("SignatureDoesNotMatch", false),
            ("InvalidAccessKeyId.NotFound", false),
        ] {
            let got = a(if retry { 200 } else { 400 }, &format!(r#"{{"Code":"{c}","Message":"x 13800001111"}}"#));
            assert_eq!(matches!(got, Retry(_)), retry, "{c}: {got:?}");
            let text = format!("{got:?}");
            assert!(!text.contains("13800001111") && text.contains("138****1111"), "{text}");
        }
        let t = |body: &str| judge_tencent(200, body);
        assert_eq!(t(r#"{"Response":{"SendStatusSet":[{"PhoneNumber":"+8613800001111","Code":"Ok","Message":"send success"}],"RequestId":"r"}}"#), Delivered);
        for (c, retry) in [
            ("AuthFailure.SignatureFailure", false),
            ("AuthFailure.SecretIdNotFound", false),
            ("FailedOperation.TemplateIncorrectOrUnapproved", false),
            ("UnauthorizedOperation.SmsSdkAppIdVerifyFail", false),
            ("RequestLimitExceeded", true),
            ("InternalError.Timeout", true),
        ] {
            let got = t(&format!(r#"{{"Response":{{"Error":{{"Code":"{c}","Message":"m"}},"RequestId":"r"}}}}"#));
            assert_eq!(matches!(got, Retry(_)), retry, "{c}: {got:?}");
        }
        let per_number = t(
            r#"{"Response":{"SendStatusSet":[{"PhoneNumber":"+8613800001111","Code":"InvalidParameterValue.IncorrectPhoneNumber","Message":"bad"}],"RequestId":"r"}}"#,
        );
        assert!(matches!(&per_number, Permanent(m) if !m.contains("13800001111")), "{per_number:?}");
        let limited = t(
            r#"{"Response":{"SendStatusSet":[{"PhoneNumber":"+8613800001111","Code":"LimitExceeded.PhoneNumberDailyLimit","Message":"m"}],"RequestId":"r"}}"#,
        );
        assert!(matches!(limited, Retry(_)));
        assert!(matches!(judge_tencent(502, "bad gateway"), Retry(_)));
    }
}
