//! One fan-out for "enrolment changed". After any write to an elder, staff
//! member, ladder, leave, person or vehicle (from the API, the console, a
//! roster import or a replica's sync task), `Fanout::changed` tells every
//! part of the box that caches it: the monitor (presence and the alert
//! engine), the gate task (policy), the vision process (the face gallery),
//! and, on the enrolment source box, the replicas (a signed, versioned,
//! retained record). Callers write the store first; the store is the truth
//! every receiver re-reads.

use crate::cluster::sync::{self, EnrolmentRole, SyncKeys};
use crate::gate::task::{GateMsg, VisionCmd};
use crate::monitor::{Command, MonitorHandle};
use config::Config;
use domain::clock::Clock;
use std::sync::Arc;
use store::Store;
use tokio::sync::mpsc;

/// What changed; the id is enough, receivers read the record back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changed {
    /// An elder was added or updated.
    Elder(String),
    ElderRemoved(String),
    Staff(String),
    /// A grid's ladder was set or removed.
    Ladder(String),
    Leave {
        id: u64,
        elder: String,
    },
    /// A resident, visitor or deny-list entry was added or updated (its
    /// templates included).
    Person(String),
    PersonRemoved(String),
    /// A vehicle was added, updated or removed.
    Vehicle(String),
}

impl Changed {
    /// The enrolment-sync record kind and id.
    fn record(&self) -> (&'static str, String) {
        match self {
            Changed::Elder(id) | Changed::ElderRemoved(id) => ("elder", id.clone()),
            Changed::Staff(id) => ("staff", id.clone()),
            Changed::Ladder(grid) => ("ladder", grid.clone()),
            Changed::Leave { id, .. } => ("leave", id.to_string()),
            Changed::Person(id) | Changed::PersonRemoved(id) => ("person", id.clone()),
            Changed::Vehicle(plate) => ("vehicle", plate.clone()),
        }
    }
}

/// The receivers of enrolment changes, as typed handles.
#[derive(Clone)]
pub struct Fanout {
    pub cfg: Arc<Config>,
    pub store: Store,
    pub clock: Clock,
    pub monitor: MonitorHandle,
    /// The gate task, when gates are configured.
    pub gates: Option<mpsc::Sender<GateMsg>>,
    /// The vision process, when vision is enabled.
    pub vision: Option<mpsc::Sender<VisionCmd>>,
    /// For publishing to the replicas.
    pub mqtt: Option<rumqttc::AsyncClient>,
    /// Enrolment sync, when `cluster.enrolment` is set.
    pub sync: Option<(EnrolmentRole, SyncKeys)>,
    /// On the source: its store's epoch (see `cluster::sync`).
    pub epoch: u64,
}

impl Fanout {
    /// Tell every receiver. Waits on full queues (nothing is dropped); fails
    /// only when the daemon is shutting down.
    pub async fn changed(&self, c: Changed) -> anyhow::Result<()> {
        match &c {
            Changed::Elder(id) => self.monitor.send(Command::ReloadElder(id.clone())).await?,
            Changed::ElderRemoved(id) => self.monitor.send(Command::RemoveElder(id.clone())).await?,
            Changed::Staff(_) => {}
            Changed::Ladder(_) => self.monitor.send(Command::ReloadLadders).await?,
            Changed::Leave { elder, .. } => self.monitor.send(Command::ReloadLeaves(elder.clone())).await?,
            Changed::Person(id) | Changed::PersonRemoved(id) => {
                if let Some(v) = &self.vision {
                    // The gallery follows the store: drop what it holds, load what is stored.
                    // If the vision process is restarting, it loads the store itself.
                    let _ = v.send(VisionCmd::GalleryRemove { person: id.clone() }).await;
                    if matches!(c, Changed::Person(_)) {
                        for embedding in self.store.templates_of(id).unwrap_or_default() {
                            let _ = v.send(VisionCmd::GalleryAdd { person: id.clone(), embedding }).await;
                        }
                    }
                }
                if let Some(g) = &self.gates {
                    let _ = g.send(GateMsg::Reload(id.clone())).await;
                }
            }
            Changed::Vehicle(plate) => {
                if let Some(g) = &self.gates {
                    let _ = g.send(GateMsg::ReloadVehicle(plate.clone())).await;
                }
            }
        }
        self.publish(&c).await;
        Ok(())
    }

    /// Refuse enrolment writes on a replica: the source box is the one truth.
    pub fn writable(&self) -> Result<(), ReplicaOnly> {
        match &self.sync {
            Some((EnrolmentRole::Replica, _)) => Err(ReplicaOnly),
            _ => Ok(()),
        }
    }

    /// On the source box: publish the record's new state (retained, signed,
    /// versioned) for the replicas.
    async fn publish(&self, c: &Changed) {
        let Some((EnrolmentRole::Source, keys)) = &self.sync else { return };
        let (kind, id) = c.record();
        let version = match self.store.next_id() {
            Ok(v) => v,
            Err(e) => return tracing::error!(error = %e, "cannot version an enrolment change"),
        };
        self.publish_record(keys, kind, &id, version).await;
    }

    async fn publish_record(&self, keys: &SyncKeys, kind: &'static str, id: &str, version: u64) {
        let (Some(m), Ok(record)) = (&self.mqtt, sync::current(&self.store, keys, kind, id)) else {
            return tracing::error!(kind, id, "cannot read an enrolment record to publish");
        };
        let change =
            sync::Change { site: self.cfg.site.clone(), epoch: self.epoch, version, published_at: self.clock.now(), record, kind: kind.into(), id: id.into() };
        let _ = self.store.set_sync_version(self.epoch, kind, id, version);
        if let Err(e) = m.publish(sync::topic(&self.cfg.site, kind, id), rumqttc::QoS::AtLeastOnce, true, keys.sign(&change)).await {
            tracing::error!(error = %e, kind, id, "cannot publish an enrolment change");
        }
    }

    /// At start-up on the source: publish every record at its last version
    /// (replicas skip what they hold), so a broker that lost its retained
    /// messages is refilled.
    pub async fn republish(&self) -> anyhow::Result<usize> {
        let Some((EnrolmentRole::Source, keys)) = &self.sync else { return Ok(0) };
        let ids = sync::all_ids(&self.store)?;
        for (kind, id) in &ids {
            let v = match self.store.sync_version(self.epoch, kind, id)? {
                0 => self.store.next_id()?,
                v => v,
            };
            self.publish_record(keys, kind, id, v).await;
        }
        Ok(ids.len())
    }
}

/// A local enrolment write on a replica box.
#[derive(Debug, thiserror::Error)]
#[error("this box is an enrolment replica: enrol on the source box (cluster.enrolment = \"source\"); changes arrive here by themselves")]
pub struct ReplicaOnly;
