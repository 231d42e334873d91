//! The monitor's cluster side: the alerting lease (a pure state machine in
//! `domain::cluster`, judged on wall-clock time), sightings only this box can
//! make, forwarded box-local alerts and mirrored alert episodes.

use super::{wall_ms, Monitor};
use domain::alert::engine::Input;
use domain::presence::Observation;

impl Monitor {
    pub(super) fn alerting(&self) -> bool {
        self.lease.as_ref().is_none_or(|l| l.is_leader())
    }

    pub(super) fn box_id(&self) -> Option<&str> {
        self.io.cfg.cluster.as_ref().map(|c| c.box_id.as_str())
    }

    /// Publish `body` to the other boxes, signed with the site's key.
    pub(super) fn publish_cluster(&self, rest: &str, retain: bool, body: String) {
        let (Some(m), Some(_), Some(key)) = (&self.io.mqtt, self.box_id(), &self.io.cluster_key) else { return };
        let payload = domain::cluster::sign(key, &self.io.cfg.site, rest, &body, wall_ms());
        if let Err(e) = m.try_publish(domain::cluster::topic(&self.io.cfg.site, rest), rumqttc::QoS::AtLeastOnce, retain, payload) {
            tracing::warn!(error = %e, topic = rest, "cannot publish to the other boxes");
        }
    }

    /// A face at this box's gate or a check-in typed into it: the other boxes
    /// cannot see it, so tell them.
    pub(super) fn share_sighting(&self, obs: &Observation) {
        use domain::cluster::{PeerSighting, PeerWhat};
        let Some(me) = self.box_id() else { return };
        let s = match obs {
            Observation::Face { elder, gate, at } => {
                PeerSighting { from: me.into(), elder: elder.clone(), at: *at, what: PeerWhat::Face { gate: gate.clone() } }
            }
            Observation::CheckIn { elder, by, note, at } => {
                PeerSighting { from: me.into(), elder: elder.clone(), at: *at, what: PeerWhat::CheckIn { by: by.clone(), note: note.clone() } }
            }
            Observation::Band(_) => return,
        };
        self.publish_cluster(&format!("sighting/{me}"), false, serde_json::to_string(&s).expect("serializes"));
    }

    /// A message under `gatewarden/<site>/cluster/`: verified and fresh, or
    /// refused and counted. A lease that does not verify is ignored (so this
    /// box goes on alerting, and its own signed claim replaces it on the
    /// broker) and degrades health: someone is trying to silence the box.
    pub(super) fn on_cluster_signed(&mut self, rest: &str, text: &str) {
        let (Some(key), Some(c)) = (&self.io.cluster_key, &self.io.cfg.cluster) else { return };
        let f =
            domain::cluster::Freshness { max_age: c.max_message_age.get(), max_skew: self.io.cfg.presence.max_clock_skew.get(), lease_ttl: c.lease_ttl.get() };
        let parts: Vec<&str> = rest.split('/').collect();
        let now = wall_ms();
        match domain::cluster::open(key, &self.io.cfg.site, &parts, text, now, &f) {
            Ok(m) => self.on_cluster(m),
            Err(e) => {
                self.io.metrics.cluster_rejected.get_or_create(&crate::telemetry::ReasonLabel { reason: e.as_str().into() }).inc();
                let lease = parts.first() == Some(&"lease");
                let mut v = self.io.cluster.write().unwrap_or_else(|e| e.into_inner());
                v.rejected_messages += 1;
                if lease && e.is_forgery() {
                    let first = !v.under_attack(now);
                    v.forged_lease_at_ms = Some(now);
                    if first {
                        tracing::error!(topic = rest, reason = %e, "FORGED CLUSTER LEASE ignored: someone without the site key is trying to stop this box alerting; it keeps alerting");
                    }
                } else {
                    tracing::warn!(topic = rest, reason = %e, "cluster message refused");
                }
            }
        }
    }

    pub(super) fn on_cluster(&mut self, msg: domain::cluster::ClusterMsg) {
        use domain::cluster::{ClusterMsg, PeerWhat};
        let me = self.box_id().unwrap_or_default().to_string();
        match msg {
            ClusterMsg::Lease(r) => {
                let acts = match &mut self.lease {
                    Some(l) => l.observe(r, wall_ms()),
                    None => return,
                };
                self.lease_actions(acts);
            }
            ClusterMsg::Sighting(s) if s.from != me => {
                let obs = match s.what {
                    PeerWhat::Face { gate } => Observation::Face { elder: s.elder, gate: format!("{}:{gate}", s.from), at: s.at },
                    PeerWhat::CheckIn { by, note } => Observation::CheckIn { elder: s.elder, by, note, at: s.at },
                };
                self.observe_from(obs, false);
            }
            // Only the alerting box acts on a forwarded box-local alert.
            ClusterMsg::Alert(a) if a.from != me && self.alerting() => {
                let acts = self.engine.handle(Input::External { kind: a.kind, subject: a.subject, detail: a.detail, firing: a.firing }, self.io.clock.now());
                self.apply(acts);
            }
            ClusterMsg::Episode(e) if e.from != me => {
                if self.alerting() {
                    tracing::warn!(from = %e.from, alert = e.alert.id, "another box published an alert episode while this box alerts; keeping ours");
                } else if let Err(err) = self.io.store.commit_alerts(std::slice::from_ref(&e.alert), &mut []) {
                    tracing::error!(error = %err, "cannot keep the alerting box's episode");
                }
            }
            _ => {}
        }
    }

    pub(super) fn lease_tick(&mut self) {
        let acts = match &mut self.lease {
            Some(l) => l.tick(wall_ms()),
            None => return,
        };
        self.lease_actions(acts);
    }

    pub(super) fn lease_actions(&mut self, acts: Vec<domain::cluster::LeaseAction>) {
        use domain::cluster::LeaseAction;
        for a in acts {
            match a {
                LeaseAction::Publish(r) => self.publish_cluster("lease", true, serde_json::to_string(&r).expect("serializes")),
                LeaseAction::Promote => {
                    if let Err(e) = self.promote() {
                        tracing::error!(error = %format!("{e:#}"), "cannot take over alerting");
                    }
                }
                LeaseAction::Demote { holder } => {
                    tracing::warn!(%holder, "another box holds the alerting lease: this box stops sending alerts");
                }
            }
        }
        if let Some(l) = &self.lease {
            let mut v = self.io.cluster.write().unwrap_or_else(|e| e.into_inner());
            v.alerting = l.is_leader();
            v.lease_holder = l.holder().map(|r| r.holder.clone());
            v.lease_epoch = l.holder().map(|r| r.epoch);
        }
    }

    /// This box now alerts: rebuild the engine from the store, where the
    /// episodes mirrored from the previous alerting box are, so they go on.
    pub(super) fn promote(&mut self) -> anyhow::Result<()> {
        // Presence is shared, so absence is judged at once: no start-up grace.
        self.rebuild_engine(self.io.clock.now())?;
        tracing::info!(open_alerts = self.engine.open_alerts().count(), "this box now sends the alerts (holds the lease)");
        self.tick();
        Ok(())
    }
}
