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
}
impl HttpConfig {
    fn default_listen() -> SocketAddr {
        "127.0.0.1:8470".parse().unwrap()
    }
    fn default_ack_link_ttl() -> Dur {
        Dur::secs(7 * 24 * 3600)
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
        }
    }
}
