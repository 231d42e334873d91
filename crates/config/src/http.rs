//! The `[http]` section: the API listener and acknowledgement links.

use crate::Dur;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where /healthz, /metrics, the admin API and acknowledgement links are served.
    #[serde(default = "HttpConfig::default_listen")]
    pub listen: SocketAddr,
    /// Base URL that staff phones use to reach acknowledgement links.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Bearer token for the admin API. Prefer `admin_token_file` or the
    /// GATEWARDEN_ADMIN_TOKEN environment variable in production.
    #[serde(default)]
    pub admin_token: Option<String>,
    #[serde(default)]
    pub admin_token_file: Option<PathBuf>,
    /// HMAC key that signs acknowledgement links.
    #[serde(default)]
    pub ack_secret: Option<String>,
    #[serde(default)]
    pub ack_secret_file: Option<PathBuf>,
    /// How long an acknowledgement link stays valid.
    #[serde(default = "HttpConfig::default_ack_link_ttl")]
    pub ack_link_ttl: Dur,
    /// At most this many open connections; more are closed at once (file
    /// descriptors stay for webhooks, MQTT and the store).
    #[serde(default = "HttpConfig::default_max_connections")]
    pub max_connections: usize,
    /// A connection that has not sent a whole request head within this (idle
    /// keep-alive included) is closed.
    #[serde(default = "HttpConfig::default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// Proxies (e.g. the TLS proxy in front of the console) whose
    /// `X-Forwarded-For` names the client for login lockouts and the ack-link
    /// rate limit. Empty: the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}
impl HttpConfig {
    fn default_listen() -> SocketAddr {
        "127.0.0.1:8470".parse().unwrap()
    }
    fn default_ack_link_ttl() -> Dur {
        Dur::secs(7 * 24 * 3600)
    }
    fn default_max_connections() -> usize {
        256
    }
    fn default_header_read_timeout() -> Dur {
        Dur::secs(10)
    }
}
impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Self::default_listen(),
            public_url: None,
            admin_token: None,
            admin_token_file: None,
            ack_secret: None,
            ack_secret_file: None,
            ack_link_ttl: Self::default_ack_link_ttl(),
            max_connections: Self::default_max_connections(),
            header_read_timeout: Self::default_header_read_timeout(),
            trusted_proxies: Vec::new(),
        }
    }
}
