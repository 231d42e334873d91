//! The MQTT side: one rumqttc connection with a persistent session (clean
//! session off, QoS 1 subscriptions) so sightings published while the daemon
//! restarts are still delivered; reconnect with backoff; and, for the demo, an
//! embedded rumqttd broker on loopback.

mod msgpack;
pub mod payload;
pub mod sniff;

use crate::telemetry::Metrics;
use config::Config;
pub use payload::{parse, Parsed, Parser, RejectReason};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
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

/// What the MQTT task hands the monitor: a parsed message and, for QoS 1, the
/// receipt that acknowledges it to the broker. The monitor acknowledges only
/// once the message is applied (presence updated; an SOS's alert committed),
/// so a message still queued when the process dies is redelivered.
#[derive(Debug)]
pub struct Inbound {
    pub parsed: Parsed,
    pub receipt: Option<Receipt>,
}

/// A QoS 1 publish not yet acknowledged to the broker (its packet id only).
#[derive(Debug)]
pub struct Receipt(Publish);

impl Receipt {
    fn of(p: &Publish) -> Option<Receipt> {
        (p.qos != QoS::AtMostOnce).then(|| {
            let mut r = Publish::new("", p.qos, Vec::new());
            r.pkid = p.pkid;
            Receipt(r)
        })
    }
}

/// Receipts waiting for room in the client's request queue. `try_ack` never
/// waits: the monitor must not block on the queue that the MQTT task, itself
/// waiting on the monitor, drains. What does not fit is retried shortly;
/// the broker's in-flight window bounds how many there can be.
#[derive(Default)]
pub struct Acks {
    pending: std::collections::VecDeque<Receipt>,
}

impl Acks {
    pub fn push(&mut self, client: &AsyncClient, r: Receipt) {
        self.pending.push_back(r);
        self.drain(client);
    }

    pub fn drain(&mut self, client: &AsyncClient) {
        while let Some(r) = self.pending.front() {
            if client.try_ack(&r.0).is_err() {
                return;
            }
            self.pending.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

pub fn options(cfg: &Config) -> anyhow::Result<MqttOptions> {
    let (host, port) = match cfg.mqtt.external_addr() {
        Ok(Some(hp)) => hp,
        _ => (cfg.mqtt.embedded_listen.ip().to_string(), cfg.mqtt.embedded_listen.port()),
    };
    let mut o = MqttOptions::new(cfg.client_id(), host, port);
    o.set_clean_session(false);
    // Acknowledge QoS 1 messages once applied, not when read (see `Inbound`).
    o.set_manual_acks(true);
    o.set_keep_alive(cfg.mqtt.keep_alive.get().max(Duration::from_secs(5)));
    // Let oversized payloads reach the parser so they are counted, instead of
    // the client dropping the connection (and the broker redelivering forever).
    o.set_max_packet_size(4 * 1024 * 1024, 256 * 1024);
    if let Some(u) = &cfg.mqtt.username {
        o.set_credentials(u.clone(), cfg.mqtt_password().unwrap_or_default());
    }
    if cfg.mqtt.tls() {
        o.set_transport(rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(cfg)?))));
    }
    Ok(o)
}

/// rustls with the ring provider: the CA from `mqtt.ca_file` (else the public
/// web roots), and a client certificate when one is configured.
fn tls_config(cfg: &Config) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let m = &cfg.mqtt;
    let mut roots = rustls::RootCertStore::empty();
    match &m.ca_file {
        Some(f) => {
            for c in CertificateDer::pem_file_iter(f).with_context(|| format!("mqtt.ca_file {}", f.display()))? {
                roots
                    .add(c.with_context(|| format!("mqtt.ca_file {}: not a PEM certificate", f.display()))?)
                    .with_context(|| format!("mqtt.ca_file {}", f.display()))?;
            }
            anyhow::ensure!(!roots.is_empty(), "mqtt.ca_file {}: no certificate in it", f.display());
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots);
    Ok(match (&m.client_cert_file, &m.client_key_file) {
        (Some(c), Some(k)) => {
            let certs = CertificateDer::pem_file_iter(c)
                .and_then(|i| i.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("mqtt.client_cert_file {}", c.display()))?;
            let key = PrivateKeyDer::from_pem_file(k).with_context(|| format!("mqtt.client_key_file {}", k.display()))?;
            b.with_client_auth_cert(certs, key).context("mqtt.client_cert_file and client_key_file do not make a pair")?
        }
        _ => b.with_no_client_auth(),
    })
}

/// The client (for publishing events and relay commands) and its event loop.
pub fn connect(cfg: &Config) -> anyhow::Result<(AsyncClient, rumqttc::EventLoop)> {
    Ok(AsyncClient::new(options(cfg)?, 256))
}

/// Receive, parse and forward. The channel to the monitor is bounded and this
/// task awaits when it is full: that stops reading the socket, and the broker
/// holds QoS 1 messages for us (backpressure, never loss). Messages that carry
/// nothing to apply (rejected, ignored) are acknowledged here; the rest travel
/// with their receipt and are acknowledged by whoever applies them.
pub async fn run(
    cfg: Arc<Config>,
    client: AsyncClient,
    mut eventloop: rumqttc::EventLoop,
    tx: mpsc::Sender<Inbound>,
    enrolment: Option<mpsc::Sender<Vec<u8>>>,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut topics = cfg.mqtt.subscriptions();
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
    let parser = Parser::new(&cfg.mqtt);
    // Topics already named in the log for carrying nothing we can read: once
    // per topic, not once per message (bounded: a flood of topics is counted,
    // not logged).
    let mut unread_topics: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut backoff = cfg.mqtt.reconnect_min.get();
    // This task polls the event loop, so it must never wait on the client's
    // queue itself: its own acknowledgements go through `Acks` too.
    let mut acks = Acks::default();
    loop {
        acks.drain(&client);
        let ev = tokio::select! {
            _ = cancel.cancelled() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                metrics.mqtt_connected.set(1);
                backoff = cfg.mqtt.reconnect_min.get();
                tracing::info!(session_present = ack.session_present, "connected to MQTT broker");
                if tx.send(Inbound { parsed: Parsed::Connected, receipt: None }).await.is_err() {
                    break;
                }
                for t in &topics {
                    if let Err(e) = client.try_subscribe(t.clone(), QoS::AtLeastOnce) {
                        tracing::error!(topic = %t, error = %e, "cannot subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let receipt = Receipt::of(&p);
                let mut done = |r: Option<Receipt>| {
                    if let Some(r) = r {
                        acks.push(&client, r);
                    }
                };
                let (format, parsed) = parser.read(&p.topic, &p.payload);
                if let Some(f) = format {
                    metrics.format(f.as_str());
                }
                match parsed {
                    Ok(Parsed::Ignored) => {
                        metrics.message("ignored");
                        done(receipt);
                    }
                    Ok(Parsed::Enrolment(raw)) => match &enrolment {
                        Some(e) => {
                            metrics.message("enrolment");
                            // Awaited: a long catch-up slows reading, never drops a record.
                            if e.send(raw).await.is_err() {
                                break;
                            }
                            // Enrolment records are retained: a record lost in a crash
                            // arrives again with the snapshot on the next subscribe.
                            done(receipt);
                        }
                        None => {
                            metrics.message("ignored");
                            done(receipt);
                        }
                    },
                    Ok(parsed) => {
                        metrics.message(match parsed {
                            Parsed::Sightings(_) => "sighting",
                            Parsed::Credential { .. } => "credential",
                            Parsed::Cluster { .. } => "cluster",
                            _ => "status",
                        });
                        if tx.send(Inbound { parsed, receipt }).await.is_err() {
                            break; // the monitor is gone: shutting down
                        }
                    }
                    Err(rej) => {
                        metrics.reject(rej.reason.as_str());
                        if unread_topics.len() < 1024 && unread_topics.insert(p.topic.clone()) {
                            tracing::warn!(
                                topic = %p.topic,
                                reason = rej.reason.as_str(),
                                detail = %rej.detail,
                                "cannot read messages on this topic (logged once per topic; see `gatewarden mqtt sniff` and gatewarden_mqtt_rejected_total)"
                            );
                        } else {
                            tracing::debug!(topic = %p.topic, reason = rej.reason.as_str(), detail = %rej.detail, "rejected MQTT message");
                        }
                        done(receipt);
                    }
                }
            }
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
