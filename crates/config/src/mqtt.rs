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
    /// Where sightings come from and in what shape, one `[[mqtt.sources]]`
    /// each. Every source's topic filter is subscribed too. A message is read
    /// by the first source whose filter matches its topic; `topics` and any
    /// topic no source matches are read with `auto`.
    #[serde(default)]
    pub sources: Vec<MqttSource>,
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
/// One `[[mqtt.sources]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// An MQTT topic filter (`+` and `#` wildcards).
    pub topic: String,
    #[serde(default)]
    pub format: SourceFormat,
    /// The gateway every message on this topic comes from, when neither the
    /// topic nor the payload names it (or to override both).
    #[serde(default)]
    pub gateway: Option<String>,
}

/// The shape a source publishes. `auto` recognises all of the others from the
/// topic and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceFormat {
    #[default]
    Auto,
    /// ESPresense: `espresense/devices/<id>/<room>`, and the older `espresense/rooms/<room>`.
    Espresense,
    /// OpenMQTTGateway and Theengs Gateway: `home/<gw>/BTtoMQTT/<MAC or beacon uuid>`.
    #[serde(alias = "omg", alias = "theengs")]
    Openmqttgateway,
    /// Home Assistant's `mqtt_room`: `{"id":…,"name":…,"distance":…}` on a room topic.
    #[serde(alias = "mqtt_room", alias = "home_assistant")]
    HaRoom,
    /// gatewarden's own `{"band":…,"gateway":…}`.
    Gatewarden,
    /// April Brother: the iBeacon receiver's `raw_beacons_data`, and the BLE
    /// Gateway V4's `devices` of raw advertisements (JSON or MessagePack).
    #[serde(alias = "april_brother")]
    Aprilbrother,
    /// Ingics iGS01/iGS02/iGS03: `$GPRP,<tag>,<gateway>,<rssi>,<raw>[,<ts>]` lines.
    Ingics,
    /// Minew G1/MG3: a JSON array, the gateway first, then one object per device.
    Minew,
    /// Cassia: scan data with `bdaddrs` and `adData`, alone or in its MQTT envelope.
    Cassia,
}

impl SourceFormat {
    pub const ALL: [SourceFormat; 9] = [
        SourceFormat::Auto,
        SourceFormat::Espresense,
        SourceFormat::Openmqttgateway,
        SourceFormat::HaRoom,
        SourceFormat::Gatewarden,
        SourceFormat::Aprilbrother,
        SourceFormat::Ingics,
        SourceFormat::Minew,
        SourceFormat::Cassia,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            SourceFormat::Auto => "auto",
            SourceFormat::Espresense => "espresense",
            SourceFormat::Openmqttgateway => "openmqttgateway",
            SourceFormat::HaRoom => "ha_room",
            SourceFormat::Gatewarden => "gatewarden",
            SourceFormat::Aprilbrother => "aprilbrother",
            SourceFormat::Ingics => "ingics",
            SourceFormat::Minew => "minew",
            SourceFormat::Cassia => "cassia",
        }
    }
}

/// Why a topic filter is not one: `+` and `#` fill a whole level, `#` only last.
pub fn filter_problem(filter: &str) -> Option<&'static str> {
    if filter.is_empty() {
        return Some("is empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Some("`#` must be a whole level and the last one");
        }
        if l.contains('+') && *l != "+" {
            return Some("`+` must be a whole level");
        }
    }
    None
}

/// Whether `topic` matches the MQTT topic filter `filter`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match f {
            "#" => return true,
            "+" => {
                if t.next().is_none() {
                    return false;
                }
            }
            lit => {
                if t.next() != Some(lit) {
                    return false;
                }
            }
        }
    }
    t.next().is_none()
}

impl MqttConfig {
    /// Every filter to subscribe for sightings and gateway status, once each.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in self.topics.iter().chain(self.sources.iter().map(|s| &s.topic)) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        out
    }

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
