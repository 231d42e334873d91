//! Enrolment sync: one box (`cluster.enrolment = "source"`) is the source of
//! truth for who is enrolled; the others (`"replica"`) follow it over MQTT.
//!
//! Every record (elder, staff, ladder, leave, person with face templates,
//! vehicle) is published **retained**, QoS 1, on its own topic
//! `gatewarden/<site>/enrolment/<kind>/<hex id>`, signed with the source's
//! **ed25519** key (only the source holds the private half; replicas are
//! configured with the public one, `cluster.sync_public_key`, so a replica
//! cannot forge), with an epoch and a version. Deletions (a forget, a visitor
//! purge) are signed tombstones, which replace the retained record on the
//! broker. The retained set *is* the snapshot: a box that was offline, or is
//! new, receives all of it when it subscribes and applies each record newer
//! than what it holds; an older one is a replay, refused and counted.
//!
//! The **epoch** is the source's store generation: a new or restored source
//! store starts a new epoch (its versions may be behind what replicas hold).
//! A replica that sees a newer epoch says so loudly and takes the new epoch's
//! records as they come; records of an older epoch are refused.
//!
//! The shared sync key (`sync_key_file`) only keeps secrets in transit: face
//! templates travel sealed (ChaCha20-Poly1305) under a key derived from it and
//! are re-sealed under the receiving box's own template key, and credential
//! hashes are keyed from it so a PIN works at every box.

use crate::enrolment::{Changed, Fanout};
use crate::telemetry::Metrics;
use base64::Engine as _;
use domain::alert::{Level, Staff};
use domain::clock::Timestamp;
use domain::gate::policy::Vehicle;
use domain::presence::{Elder, Leave};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use store::{PersonRecord, Store, StoreError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use domain::cluster::EnrolmentRole;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("bad signature: not signed by this site's enrolment source")]
    BadSignature,
    #[error("a replay: version {version} of epoch {epoch} is older than what this box holds")]
    Replay { epoch: u64, version: u64 },
    #[error("malformed enrolment message: {0}")]
    Malformed(String),
    #[error("for site {0:?}, not this one")]
    OtherSite(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// One record as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    pub site: String,
    /// The source store's generation (see the module comment).
    #[serde(default)]
    pub epoch: u64,
    pub version: u64,
    pub published_at: Timestamp,
    /// None: the record was deleted.
    pub record: Option<Record>,
    pub kind: String,
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Elder(Elder),
    Staff(Staff),
    Ladder { grid: String, levels: Vec<Level> },
    Leave(Leave),
    Person { record: PersonRecord, templates: Vec<String> },
    Vehicle(Vehicle),
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The `Change` as JSON text: what the signature covers, byte for byte.
    change: String,
    sig: String,
}

/// The source's signing key, or a replica's copy of its public half, and the
/// secrets derived from the site's shared sync key.
#[derive(Clone)]
pub struct SyncKeys {
    /// Only on the source.
    signing: Option<SigningKey>,
    verifying: VerifyingKey,
    templates: [u8; 32],
    /// Credential hashes (PIN, card, QR, ID number) must match on every box.
    pub credentials: Vec<u8>,
}

/// The shared secret's derived keys (transit sealing, credential hashes).
fn derived(secret: &[u8]) -> ([u8; 32], Vec<u8>) {
    let derive = |label: &str| -> [u8; 32] { Sha256::new().chain_update(label.as_bytes()).chain_update([0]).chain_update(secret).finalize().into() };
    (derive("gatewarden sync templates"), hex::encode(derive("gatewarden credentials")).into_bytes())
}

fn read_secret(path: &std::path::Path) -> std::io::Result<String> {
    let text = std::fs::read_to_string(path)?;
    let t = text.trim();
    if t.len() < 32 {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the sync key must be at least 32 characters (e.g. `openssl rand -hex 32`)"));
    }
    Ok(t.to_string())
}

impl SyncKeys {
    /// A source: signs with `signing`.
    pub fn source(secret: &[u8], signing: SigningKey) -> SyncKeys {
        let (templates, credentials) = derived(secret);
        SyncKeys { verifying: signing.verifying_key(), signing: Some(signing), templates, credentials }
    }

    /// A replica: verifies with the source's public key, cannot sign.
    pub fn replica(secret: &[u8], verifying: VerifyingKey) -> SyncKeys {
        let (templates, credentials) = derived(secret);
        SyncKeys { signing: None, verifying, templates, credentials }
    }

    /// The source: the shared secret, and its signing key file (made, mode
    /// 0600, with the public half beside it as `.pub`, when missing).
    pub fn load_source(secret_file: &std::path::Path, signing_file: &std::path::Path) -> std::io::Result<SyncKeys> {
        let secret = read_secret(secret_file)?;
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", signing_file.display()));
        let signing = match std::fs::read_to_string(signing_file) {
            Ok(t) => SigningKey::from_bytes(
                &hex::decode(t.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| bad("not a 32-byte hex ed25519 key"))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = SigningKey::from_bytes(&rand::random::<[u8; 32]>());
                store::write_private(signing_file, hex::encode(k.to_bytes()).as_bytes())?;
                k
            }
            Err(e) => return Err(e),
        };
        let public = hex::encode(signing.verifying_key().to_bytes());
        let mut pub_file = signing_file.as_os_str().to_owned();
        pub_file.push(".pub");
        std::fs::write(&pub_file, format!("{public}\n"))?;
        Ok(SyncKeys::source(secret.as_bytes(), signing))
    }

    /// A replica: the shared secret, and the source's public key (hex).
    pub fn load_replica(secret_file: &std::path::Path, public_hex: &str) -> std::io::Result<SyncKeys> {
        let secret = read_secret(secret_file)?;
        let vk = hex::decode(public_hex.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "cluster.sync_public_key is not an ed25519 public key"))?;
        Ok(SyncKeys::replica(secret.as_bytes(), vk))
    }

    /// The public key replicas must be configured with.
    pub fn public_hex(&self) -> String {
        hex::encode(self.verifying.to_bytes())
    }

    pub fn sign(&self, c: &Change) -> String {
        let change = serde_json::to_string(c).expect("serializes");
        let signing = self.signing.as_ref().expect("only the source signs");
        let sig = hex::encode(signing.sign(change.as_bytes()).to_bytes());
        serde_json::to_string(&Envelope { change, sig }).expect("serializes")
    }

    pub fn verify(&self, payload: &[u8], site: &str) -> Result<Change, SyncError> {
        let env: Envelope = serde_json::from_slice(payload).map_err(|e| SyncError::Malformed(e.to_string()))?;
        let sig = hex::decode(&env.sig).ok().and_then(|b| <[u8; 64]>::try_from(b).ok()).ok_or(SyncError::BadSignature)?;
        if self.verifying.verify_strict(env.change.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig)).is_err() {
            return Err(SyncError::BadSignature);
        }
        let c: Change = serde_json::from_str(&env.change).map_err(|e| SyncError::Malformed(e.to_string()))?;
        if c.site != site {
            return Err(SyncError::OtherSite(c.site));
        }
        Ok(c)
    }
}

pub fn topic(site: &str, kind: &str, id: &str) -> String {
    format!("gatewarden/{site}/enrolment/{kind}/{}", hex::encode(id.as_bytes()))
}

/// Read a record's current state from the store, for publishing.
pub fn current(store: &Store, keys: &SyncKeys, kind: &str, id: &str) -> Result<Option<Record>, StoreError> {
    Ok(match kind {
        "elder" => store.get_elder(id)?.map(Record::Elder),
        "staff" => store.get_staff(id)?.map(Record::Staff),
        "ladder" => store.get_ladder(id)?.map(|levels| Record::Ladder { grid: id.to_string(), levels }),
        "leave" => store.list_leaves(None)?.into_iter().find(|l| l.id.to_string() == id).map(Record::Leave),
        "vehicle" => store.get_vehicle(id)?.map(Record::Vehicle),
        "person" => match store.get_person(id)? {
            None => None,
            Some(record) => {
                let templates = store
                    .templates_of(id)?
                    .iter()
                    .map(|e| base64::engine::general_purpose::STANDARD.encode(store::seal_for_transfer(&keys.templates, id, e)))
                    .collect();
                Some(Record::Person { record, templates })
            }
        },
        other => unreachable!("unknown enrolment kind {other}"),
    })
}

/// Every record the source holds, as (kind, id), for a full republish.
pub fn all_ids(store: &Store) -> Result<Vec<(&'static str, String)>, StoreError> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    v.extend(store.list_elders()?.into_iter().map(|e| ("elder", e.id)));
    v.extend(store.list_staff()?.into_iter().map(|s| ("staff", s.id)));
    v.extend(store.list_ladders()?.into_iter().map(|(g, _)| ("ladder", g)));
    v.extend(store.list_leaves(None)?.into_iter().map(|l| ("leave", l.id.to_string())));
    v.extend(store.list_people()?.into_iter().map(|r| ("person", r.person.id)));
    v.extend(store.list_vehicles()?.into_iter().map(|v| ("vehicle", v.plate)));
    Ok(v)
}

/// What a replica must refresh after applying a change.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Older than (or the same as) what this box holds.
    Stale,
    Elder {
        id: String,
        removed: bool,
    },
    Ladders,
    Leaves {
        elder: String,
    },
    Staff,
    Person {
        id: String,
    },
    Vehicle {
        plate: String,
    },
}

/// Apply a verified change on a replica, if it is newer than what it holds.
pub fn apply(store: &Store, keys: &SyncKeys, c: &Change) -> Result<Applied, SyncError> {
    let held = store.sync_version(c.epoch, &c.kind, &c.id)?;
    if held > c.version {
        return Err(SyncError::Replay { epoch: c.epoch, version: c.version });
    }
    if held == c.version {
        // The retained copy again (every subscribe): nothing new.
        return Ok(Applied::Stale);
    }
    let applied = match (&c.record, c.kind.as_str()) {
        (Some(Record::Elder(e)), _) => {
            store.put_elder(e, false)?;
            Applied::Elder { id: e.id.clone(), removed: false }
        }
        (None, "elder") => {
            ignore_missing(store.remove_elder(&c.id).map(|_| ()))?;
            Applied::Elder { id: c.id.clone(), removed: true }
        }
        (Some(Record::Staff(s)), _) => {
            store.put_staff(s)?;
            Applied::Staff
        }
        (None, "staff") => {
            ignore_missing(store.remove_staff(&c.id).map(|_| ()))?;
            Applied::Staff
        }
        (Some(Record::Ladder { grid, levels }), _) => {
            store.put_ladder(grid, levels)?;
            Applied::Ladders
        }
        (None, "ladder") => {
            ignore_missing(store.remove_ladder(&c.id))?;
            Applied::Ladders
        }
        (Some(Record::Leave(l)), _) => {
            store.put_leave(l)?;
            Applied::Leaves { elder: l.elder.clone() }
        }
        (None, "leave") => {
            let id: u64 = c.id.parse().map_err(|_| SyncError::Malformed(format!("leave id {:?}", c.id)))?;
            match store.remove_leave(id) {
                Ok(l) => Applied::Leaves { elder: l.elder },
                Err(StoreError::NotFound { .. }) => Applied::Stale,
                Err(e) => return Err(e.into()),
            }
        }
        (Some(Record::Person { record, templates }), _) => {
            let id = &record.person.id;
            let plain = templates
                .iter()
                .map(|t| {
                    let raw = base64::engine::general_purpose::STANDARD.decode(t).map_err(|e| SyncError::Malformed(e.to_string()))?;
                    store::open_transfer(&keys.templates, id, &raw).ok_or_else(|| SyncError::Malformed(format!("template of {id} does not open")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            store.replace_person(record, &plain)?;
            Applied::Person { id: id.clone() }
        }
        (None, "person") => {
            // A `forget` on the source: this box's records of the person go too,
            // including their passages through this box's gates.
            ignore_missing(store.remove_person(&c.id).map(|_| ()))?;
            store.erase_from_entries(&c.id, "(forgotten)")?;
            Applied::Person { id: c.id.clone() }
        }
        (Some(Record::Vehicle(v)), _) => {
            store.put_vehicle(v)?;
            Applied::Vehicle { plate: v.plate.clone() }
        }
        (None, "vehicle") => {
            ignore_missing(store.remove_vehicle(&c.id).map(|_| ()))?;
            Applied::Vehicle { plate: c.id.clone() }
        }
        (None, other) => return Err(SyncError::Malformed(format!("unknown kind {other:?}"))),
    };
    store.set_sync_version(c.epoch, &c.kind, &c.id, c.version)?;
    Ok(applied)
}

fn ignore_missing(r: Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Err(StoreError::NotFound { .. }) => Ok(()),
        other => other,
    }
}

/// The replica's task: verify, apply, then tell the box through the one
/// enrolment fan-out (a replica never republishes).
pub async fn run_replica(fanout: Fanout, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Vec<u8>>, cancel: CancellationToken) {
    let Some((_, keys)) = fanout.sync.clone() else { return };
    let mut epoch = fanout.store.sync_epoch().unwrap_or(0);
    loop {
        let raw = tokio::select! {
            _ = cancel.cancelled() => break,
            r = rx.recv() => match r { Some(r) => r, None => break },
        };
        let res = keys.verify(&raw, &fanout.cfg.site).and_then(|c| {
            if c.epoch < epoch {
                // A record of a source store that has since been replaced.
                return Err(SyncError::Replay { epoch: c.epoch, version: c.version });
            }
            if c.epoch > epoch && epoch == 0 {
                tracing::info!(epoch = c.epoch, "following the enrolment source");
                fanout.store.set_sync_epoch(c.epoch)?;
                epoch = c.epoch;
            } else if c.epoch > epoch {
                tracing::warn!(
                    from = epoch,
                    to = c.epoch,
                    "ENROLMENT SOURCE EPOCH CHANGED: the source's store is new or was restored; its records now replace what this box holds"
                );
                fanout.store.set_sync_epoch(c.epoch)?;
                epoch = c.epoch;
            }
            apply(&fanout.store, &keys, &c).map(|a| (c, a))
        });
        let (c, applied) = match res {
            Ok(x) => x,
            Err(e) => {
                let reason = match e {
                    SyncError::BadSignature => "bad_signature",
                    SyncError::Replay { .. } => "enrolment_replay",
                    _ => "enrolment",
                };
                metrics.reject(reason);
                tracing::warn!(error = %e, "enrolment change refused");
                continue;
            }
        };
        if applied != Applied::Stale {
            tracing::info!(kind = %c.kind, id = %c.id, version = c.version, deleted = c.record.is_none(), "enrolment synced from the source");
        }
        let changed = match applied {
            Applied::Stale => continue,
            Applied::Staff => Changed::Staff(c.id.clone()),
            Applied::Elder { id, removed: false } => Changed::Elder(id),
            Applied::Elder { id, removed: true } => Changed::ElderRemoved(id),
            Applied::Ladders => Changed::Ladder(c.id.clone()),
            Applied::Leaves { elder } => Changed::Leave { id: c.id.parse().unwrap_or_default(), elder },
            // The store holds the re-sealed templates (none after a deletion).
            Applied::Person { id } => Changed::Person(id),
            Applied::Vehicle { plate } => Changed::Vehicle(plate),
        };
        if fanout.changed(changed).await.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(record: Option<Record>, version: u64) -> Change {
        Change { site: "t".into(), epoch: 1, version, published_at: chrono::Utc::now(), record, kind: "staff".into(), id: "S1".into() }
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn source() -> SyncKeys {
        SyncKeys::source(SECRET, SigningKey::from_bytes(&[7u8; 32]))
    }

    fn staff(name: &str) -> Record {
        Record::Staff(Staff { id: "S1".into(), name: name.into(), phone: None, role: String::new(), grid: String::new() })
    }

    #[test]
    fn signed_changes_verify_and_tampered_or_foreign_ones_do_not() {
        let k = source();
        let replica = SyncKeys::replica(SECRET, k.verifying);
        let signed = k.sign(&change(Some(staff("李")), 1));
        assert_eq!(replica.verify(signed.as_bytes(), "t").unwrap().version, 1);
        let tampered = signed.replace("李", "王");
        assert!(matches!(replica.verify(tampered.as_bytes(), "t"), Err(SyncError::BadSignature)));
        // Another box of the site holds the same shared secret, but not the source's key.
        let other = SyncKeys::source(SECRET, SigningKey::from_bytes(&[8u8; 32]));
        let forged = other.sign(&change(Some(staff("伪")), 99));
        assert!(matches!(replica.verify(forged.as_bytes(), "t"), Err(SyncError::BadSignature)), "a replica cannot forge");
        assert!(matches!(replica.verify(signed.as_bytes(), "elsewhere"), Err(SyncError::OtherSite(_))));
        assert!(matches!(replica.verify(b"{", "t"), Err(SyncError::Malformed(_))));
    }

    #[test]
    fn a_replica_applies_newer_versions_only_and_tombstones_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let k = source();
        assert_eq!(apply(&store, &k, &change(Some(staff("李")), 5)).unwrap(), Applied::Staff);
        assert_eq!(apply(&store, &k, &change(Some(staff("李")), 5)).unwrap(), Applied::Stale, "the retained copy again");
        assert!(matches!(apply(&store, &k, &change(Some(staff("旧")), 4)), Err(SyncError::Replay { .. })), "a superseded record is a replay");
        assert_eq!(store.get_staff("S1").unwrap().unwrap().name, "李");
        apply(&store, &k, &change(None, 6)).unwrap();
        assert!(store.get_staff("S1").unwrap().is_none());
        // A late, older re-delivery does not bring it back.
        assert!(apply(&store, &k, &change(Some(staff("李")), 5)).is_err());
        assert!(store.get_staff("S1").unwrap().is_none());
        // A new epoch (a restored source) starts its versions afresh.
        let mut c = change(Some(staff("新")), 2);
        c.epoch = 2;
        assert_eq!(apply(&store, &k, &c).unwrap(), Applied::Staff);
    }
}
