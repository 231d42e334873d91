//! The HTTP side of the alert channels: one `Sender` per configured channel.
//! Building and signing the request and judging the answer are pure, in
//! `domain::alert::channel`.

use config::ChannelConfig;
use domain::alert::channel::{judge, prepare, redact, Message, Outcome};
use domain::clock::Timestamp;
use std::time::Duration;

/// One configured channel, ready to send.
#[derive(Clone)]
pub struct Sender {
    pub cfg: ChannelConfig,
    secret: Option<String>,
    http: reqwest::Client,
}

impl Sender {
    pub fn new(cfg: ChannelConfig, timeout: Duration) -> Self {
        let http = reqwest::Client::builder().timeout(timeout).user_agent(concat!("gatewarden/", env!("CARGO_PKG_VERSION"))).build().expect("reqwest client");
        let secret = cfg.resolved_secret();
        Self { cfg, secret, http }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    pub async fn send(&self, m: &Message, now: Timestamp) -> Outcome {
        let p = match prepare(&self.cfg.endpoint(), self.secret.as_deref(), m, now) {
            Ok(p) => p,
            Err(why) => return Outcome::Permanent(why),
        };
        let mut req = self.http.post(&p.url).body(p.body);
        for (k, v) in &p.headers {
            req = req.header(k, v);
        }
        match req.send().await {
            // reqwest quotes the URL, and the URL carries the robot's key:
            // never let it reach a log line or the outbox's last_error.
            Err(e) => Outcome::Retry(redact(&format!("network: {}", error_chain(&e.without_url())), &p.url)),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let body = resp.text().await.unwrap_or_default();
                judge(self.cfg.kind, status, &body)
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
