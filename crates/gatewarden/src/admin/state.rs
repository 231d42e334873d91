//! What the admin API's handlers share (axum state): the store, the clock,
//! the monitor's handle, the enrolment fan-out, the channels for test sends,
//! console sessions and roster imports. Tasks never take this: each gets its
//! own typed handles (see `monitor::Handles`, `gate::task::GateTask`).

use crate::alert::channel::Sender;
use crate::enrolment::Fanout;
use crate::monitor::{ClusterView, Command, MonitorHandle};
use crate::telemetry::Metrics;
use config::Config;
use domain::alert::Level;
use domain::clock::Clock;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use store::Store;
use tokio::sync::{mpsc, Notify};

/// The admin API's state. Mutable state lives in the monitor or the store.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub metrics: Arc<Metrics>,
    pub commands: MonitorHandle,
    pub outbox_wake: Arc<Notify>,
    pub senders: HashMap<String, Sender>,
    pub ack_secret: Vec<u8>,
    pub admin_token: String,
    /// (gate, token): device tokens that present credentials at their own gate only.
    pub device_tokens: Vec<(String, String)>,
    pub started: Instant,
    /// The gate task, when gates are configured.
    pub gates: Option<mpsc::Sender<crate::gate::task::GateMsg>>,
    /// The vision process, when vision is enabled (enrolment photos, gallery changes).
    pub vision: Option<mpsc::Sender<crate::gate::task::VisionCmd>>,
    /// Key for PIN/card/QR hashes and ID-number hashes.
    pub credential_key: Vec<u8>,
    /// For publishing alert episodes and box health upstream.
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// Which box alerts, for /healthz (written by the monitor).
    pub cluster: Arc<std::sync::RwLock<ClusterView>>,
    /// The wall clock's health, for /healthz (written by the monitor).
    pub clock_view: Arc<std::sync::RwLock<crate::monitor::ClockView>>,
    /// Roster imports being staged.
    pub imports: crate::admin::roster::Imports,
    /// Per-client limit on acknowledgement links.
    pub ack_limit: super::api::AckLimiter,
    /// Console sessions and login rate limits.
    pub sessions: crate::admin::console::Sessions,
    /// Tells the box (monitor, gates, vision, replicas) that enrolment changed.
    pub enrolment: Fanout,
}

impl Shared {
    /// The ladder for a grid: the store's, else the config's default.
    pub fn ladder(&self, grid: &str) -> Vec<Level> {
        crate::alert::ladder(&self.store, &self.cfg, grid)
    }

    pub async fn command(&self, c: Command) -> anyhow::Result<()> {
        self.commands.send(c).await
    }
}
