//! The `[cluster]` section: several boxes per site, the lease and enrolment sync.

use crate::Dur;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This box's name, unique within the site (letters, digits, '-', '_').
    pub box_id: String,
    /// "lease" (default): the alerting box is chosen by a lease held through a
    /// retained MQTT message, and another box takes over when it lapses;
    /// "primary" / "standby": fixed by config.
    #[serde(default)]
    pub role: domain::cluster::Role,
    /// How long a lease lasts without renewal: the failover time after the
    /// alerting box dies. Renewed at a third left.
    #[serde(default = "ClusterConfig::default_lease_ttl")]
    pub lease_ttl: Dur,
    /// How long a claim must stand unchallenged before the box starts alerting.
    #[serde(default = "ClusterConfig::default_claim_settle")]
    pub claim_settle: Dur,
    /// Enrolment sync: "source" (the admin box: enrol here, published to the
    /// others) or "replica" (follows the source; local enrolment is refused).
    /// Absent: each box keeps its own enrolment.
    #[serde(default)]
    pub enrolment: Option<domain::cluster::EnrolmentRole>,
    /// The site's shared secret (≥ 32 characters, same file on every box, mode
    /// 0640 root:gatewarden): signs enrolment changes, seals templates in
    /// transit, and keys credential hashes so a PIN works at every box.
    #[serde(default)]
    pub sync_key_file: Option<PathBuf>,
    /// The source box's ed25519 signing key for enrolment records, made on
    /// its first start (mode 0600; the public half is written beside it as
    /// `.pub` and logged). Only the source holds it. Default: sync-signing.key
    /// beside the store.
    #[serde(default)]
    pub sync_signing_key_file: Option<PathBuf>,
    /// On a replica: the source's public key (64 hex characters, from the
    /// source's `sync-signing.key.pub`). Records signed by anything else are
    /// refused, so a replica, which holds the shared sync key, cannot forge.
    #[serde(default)]
    pub sync_public_key: Option<String>,
    /// The site's key for cluster messages (lease, shared sightings, mirrored
    /// episodes, forwarded alerts), at least 16 characters, the same file on
    /// every box of the site (`openssl rand -hex 32`). Required: an unsigned
    /// retained lease once silenced a box's alerts.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Shared sightings and forwarded alerts signed longer ago than this are refused (replays).
    #[serde(default = "ClusterConfig::default_max_message_age")]
    pub max_message_age: Dur,
}

impl ClusterConfig {
    fn default_lease_ttl() -> Dur {
        Dur::secs(60)
    }
    fn default_claim_settle() -> Dur {
        Dur::secs(3)
    }
    fn default_max_message_age() -> Dur {
        Dur::secs(300)
    }
}
