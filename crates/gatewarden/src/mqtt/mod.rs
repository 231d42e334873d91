//! The MQTT side: one rumqttc connection with a persistent session (clean
//! session off, QoS 1 subscriptions) so sightings published while the daemon
//! restarts are still delivered; reconnect with backoff; and, for the demo, an
//! embedded rumqttd broker on loopback.

pub mod payload;

use crate::telemetry::Metrics;
use config::Config;
pub use payload::{parse, Parsed, RejectReason};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("embedded broker config: {0}")]
    EmbeddedConfig(String),
    #[error("embedded broker did not start listening on {addr} within 5 s (is the port in use?)")]
    EmbeddedNotListening { addr: SocketAddr },
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(#[from] std::io::Error),
}

/// Start rumqttd on `listen` in its own threads and wait until it accepts.
pub fn start_embedded_broker(listen: SocketAddr) -> Result<(), MqttError> {
    let text = format!(
        r#"id = 0
[router]
id = 0
max_connections = 1000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 500
dynamic_filters = true
"#
    );
    let cfg: rumqttd::Config = toml::from_str(&text).map_err(|e| MqttError::EmbeddedConfig(e.to_string()))?;
    std::thread::Builder::new().name("embedded-broker".into()).spawn(move || {
        let mut broker = rumqttd::Broker::new(cfg);
        if let Err(e) = broker.start() {
            tracing::error!(error = %e, "embedded broker stopped");
        }
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            tracing::info!(%listen, "embedded MQTT broker listening");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(MqttError::EmbeddedNotListening { addr: listen })
}

pub fn options(cfg: &Config) -> MqttOptions {
    let (host, port) = match cfg.mqtt.external_addr() {
        Ok(Some(hp)) => hp,
        _ => (cfg.mqtt.embedded_listen.ip().to_string(), cfg.mqtt.embedded_listen.port()),
    };
    let mut o = MqttOptions::new(cfg.client_id(), host, port);
    o.set_clean_session(false);
    o.set_keep_alive(cfg.mqtt.keep_alive.get().max(Duration::from_secs(5)));
    // Let oversized payloads reach the parser so they are counted, instead of
    // the client dropping the connection (and the broker redelivering forever).
    o.set_max_packet_size(4 * 1024 * 1024, 256 * 1024);
    if let Some(u) = &cfg.mqtt.username {
        o.set_credentials(u.clone(), cfg.mqtt_password().unwrap_or_default());
    }
    o
}

/// The client (for publishing events and relay commands) and its event loop.
pub fn connect(cfg: &Config) -> (AsyncClient, rumqttc::EventLoop) {
    AsyncClient::new(options(cfg), 256)
}

/// Receive, parse and forward. The channel to the monitor is bounded and this
/// task awaits when it is full: that stops reading the socket, and the broker
/// holds QoS 1 messages for us (backpressure, never loss).
pub async fn run(
    cfg: Arc<Config>,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<Parsed>,
    enrolment: Option<mpsc::Sender<Vec<u8>>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut topics = cfg.mqtt.topics.clone();
    if !cfg.gates.is_empty() {
        topics.push(format!("gatewarden/{}/gate/+/credential", cfg.site));
    }
    if cfg.cluster.is_some() {
        topics.push(domain::cluster::topic(&cfg.site, "#"));
    }
    if enrolment.is_some() {
        // Retained: on (re)subscribing the whole roster arrives, so a box that
        // was offline catches up.
        topics.push(format!("gatewarden/{}/enrolment/#", cfg.site));
    }
    let max = cfg.mqtt.max_payload_bytes;
    let mut backoff = cfg.mqtt.reconnect_min.get();
    loop {
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff = cfg.mqtt.reconnect_min.get();
                tracing::info!(session_present = ack.session_present, "connected to MQTT broker");
                if tx.send(Parsed::Connected).await.is_err() {
                    break;
                }
                for t in &topics {
                    if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        tracing::error!(topic = %t, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => match parse(&p.topic, &p.payload, max) {
                Ok(Parsed::Ignored) => metrics.message("ignored"),
                Ok(Parsed::Enrolment(raw)) => match &enrolment {
                    Some(e) => {
                        metrics.message("enrolment");
                        // Awaited: a long catch-up slows reading, never drops a record.
                        if e.send(raw).await.is_err() {
                            break;
                        }
                    }
                    None => metrics.message("ignored"),
                },
                Ok(parsed) => {
                    metrics.message(match parsed {
                        Parsed::Sighting(_) => "sighting",
                        Parsed::Credential { .. } => "credential",
                        Parsed::Cluster(_) => "cluster",
                        _ => "status",
                    });
                    if tx.send(parsed).await.is_err() {
                        break; // the monitor is gone: shutting down
                    }
                }
                Err(rej) => {
                    metrics.reject(rej.reason.as_str());
                    tracing::debug!(topic = %p.topic, reason = rej.reason.as_str(), detail = %rej.detail, "rejected MQTT message");
                }
            },
            Ok(_) => {}
            Err(e) => {
                metrics.mqtt_connected.set(0);
                let jitter = backoff.mul_f64(rand::random::<f64>() * 0.3);
                tracing::warn!(error = %e, retry_in_ms = (backoff + jitter).as_millis() as u64, "MQTT connection lost; reconnecting");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(cfg.mqtt.reconnect_max.get());
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), client.disconnect()).await;
    metrics.mqtt_connected.set(0);
}
