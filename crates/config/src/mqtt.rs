//! The `[mqtt]` section: the broker, topics and the embedded broker.

use crate::Dur;

/// `mqtt.broker` that is not a broker address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("{0:?} must be \"embedded\", \"mqtt://host:port\" or \"mqtts://host:port\" (TLS)")]
    Scheme(String),
    #[error("bad port in {0:?}")]
    Port(String),
    #[error("no host in {0:?}")]
    NoHost(String),
}
use serde::Deserialize;
use std::net::SocketAddr;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// "embedded" starts a broker inside the daemon (demo); otherwise
    /// "mqtt://host:port".
    #[serde(default = "MqttConfig::default_broker")]
    pub broker: String,
    /// Listen address of the embedded broker.
    #[serde(default = "MqttConfig::default_embedded_listen")]
    pub embedded_listen: SocketAddr,
    /// Defaults to "gatewarden-<site>". Must be stable across restarts, because
    /// the broker keeps the persistent session under this id.
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default = "MqttConfig::default_keep_alive")]
    pub keep_alive: Dur,
    /// Topic filters for wristband sightings and gateway status. The defaults
    /// cover ESPresense, OpenMQTTGateway, Theengs and gatewarden's own format.
    #[serde(default = "MqttConfig::default_topics")]
    pub topics: Vec<String>,
    #[serde(default = "MqttConfig::default_max_payload_bytes")]
    pub max_payload_bytes: usize,
    #[serde(default = "MqttConfig::default_reconnect_min")]
    pub reconnect_min: Dur,
    #[serde(default = "MqttConfig::default_reconnect_max")]
    pub reconnect_max: Dur,
    /// With `mqtts://`: the CA (PEM) that signed the broker's certificate,
    /// e.g. the site CA of `deploy/mosquitto`. Without it, the public web roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// With `mqtts://`: a client certificate and its key (PEM), when the
    /// broker asks for one (`require_certificate true`). Both or neither.
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
}
impl MqttConfig {
    fn default_broker() -> String {
        "embedded".into()
    }
    fn default_embedded_listen() -> SocketAddr {
        "127.0.0.1:1883".parse().unwrap()
    }
    fn default_keep_alive() -> Dur {
        Dur::secs(30)
    }
    pub fn default_topics() -> Vec<String> {
        // home/+/LWT: OpenMQTTGateway's last will, so "gateway offline" works out of the box.
        vec!["espresense/devices/#".into(), "espresense/rooms/+/status".into(), "home/+/BTtoMQTT/#".into(), "home/+/LWT".into(), "gatewarden/+/sighting".into()]
    }
    fn default_max_payload_bytes() -> usize {
        16 * 1024
    }
    fn default_reconnect_min() -> Dur {
        Dur::millis(500)
    }
    fn default_reconnect_max() -> Dur {
        Dur::secs(60)
    }
    /// Whether the broker is reached over TLS (`mqtts://`).
    pub fn tls(&self) -> bool {
        self.broker.starts_with("mqtts://") || self.broker.starts_with("ssl://")
    }

    /// (host, port) of an external broker, or None for the embedded one.
    pub fn external_addr(&self) -> Result<Option<(String, u16)>, BrokerUrlError> {
        if self.broker == "embedded" {
            return Ok(None);
        }
        let (rest, default_port) = match self.broker.split_once("://") {
            Some(("mqtt" | "tcp", r)) => (r, 1883),
            Some(("mqtts" | "ssl", r)) => (r, 8883),
            _ => return Err(BrokerUrlError::Scheme(self.broker.clone())),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| BrokerUrlError::Port(self.broker.clone()))?),
            None => (rest, default_port),
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(self.broker.clone()));
        }
        Ok(Some((host.to_string(), port)))
    }
}
impl Default for MqttConfig {
    fn default() -> Self {
        toml::from_str("").expect("mqtt defaults")
    }
}
