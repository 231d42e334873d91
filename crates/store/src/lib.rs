//! The one owner of the sled database. Everything that must survive a crash
//! lives here behind typed methods; raw keys and `IVec`s never leave this file.
//! Values are JSON (inspectable with `gatewarden` itself), keys are ids.

use domain::alert::outbox::{Delivery, Notification};
use domain::alert::{Alert, AlertId, Level, Staff};
use domain::clock::Timestamp;
use domain::gate::log::{self as entry_log, Chained, Entry};
use domain::gate::policy::{Person, Vehicle};
use domain::presence::{BandId, Elder, LastSeen, Leave, UnknownBand};
use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// Bumped whenever the layout changes; `open` migrates older stores forward.
/// 1: first release. 2: face templates sealed with ChaCha20-Poly1305 (the
/// daemon re-seals schema-1 templates at start-up, see `reseal_templates`).
/// 3: people, vehicles, templates and entry-log reasons sealed per person
/// (`shred`; the daemon seals older records at start-up).
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the store at {path}: {source}. If another gatewarden runs with this store, stop it (sled is single-process); \
         otherwise the store is damaged: restore the last backup with `gatewarden restore <file>`"
    )]
    Open { path: String, source: sled::Error },
    #[error("store error: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record in {tree}: {source}")]
    Corrupt { tree: &'static str, source: serde_json::Error },
    #[error("the store was written by a newer gatewarden (schema {found}, this build knows {SCHEMA_VERSION}); upgrade gatewarden or restore a backup")]
    TooNew { found: u32 },
    #[error("wristband {band} is already bound to elder {elder}")]
    BandTaken { band: String, elder: String },
    #[error("{what} {id:?} already exists")]
    Exists { what: &'static str, id: String },
    #[error("no {what} {id:?}")]
    NotFound { what: &'static str, id: String },
    #[error("face templates are sealed and no template key is loaded (access.template_key_file)")]
    NoTemplateKey,
    #[error("a face template of {person} cannot be opened with the loaded keys: wrong or lost template key file")]
    TemplateKey { person: String },
    #[error("integrity manifest {path}: {source}")]
    ManifestIo { path: String, source: std::io::Error },
    #[error("the store's filesystem at {path} still refuses writes: {source}")]
    Unwritable { path: String, source: std::io::Error },
    #[error("the store at {path} could not be reopened after a write failure: {reason}. Restart gatewarden; if it does not start, restore the last backup")]
    Reopen { path: String, reason: String },
    #[error("the entry log is chained under a key and none is loaded (entry.key)")]
    NoEntryKey,
    #[error("personal data is sealed per person and no person key file is loaded (access.person_keys_file)")]
    NoPersonKeys,
    #[error("the record of {person} cannot be opened with its key: the person key file does not belong to this store")]
    PersonKey { person: String },
    #[error("template key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
}

mod access;
mod alerts;
mod backup;
mod console;
mod elders;
mod entries;
mod integrity;
mod presence;
mod retention;
mod scheduled;
mod shred;
mod staff;
mod sync;
mod templates;

pub use access::{Consent, PersonRecord};
pub use backup::{key_fingerprint, BackupError, BackupHeader};
pub use console::{AuditEntry, User};
pub use integrity::{Damage, Integrity, Manifest, TreeSum, MANIFEST};
pub use shred::{open_blob, seal_blob, PersonKeys};
pub use templates::{open_transfer, rotate_template_key, seal_for_transfer, TemplateKeys};

// Helpers the table files share.
use elders::band_key;
use shred::template_seal_key;
use templates::seal;

type Result<T> = std::result::Result<T, StoreError>;

/// One tree of a backup: its name and its raw records (never leaves this crate).
type TreeDump = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

#[derive(Clone)]
pub struct Store {
    keys: Arc<RwLock<Option<TemplateKeys>>>,
    /// Writers share it; `backup` takes it exclusively, so a backup is one
    /// consistent point in time across all trees while the daemon runs.
    gate: Arc<RwLock<()>>,
    /// Ids below this were handed out before a restore (sled's id counter
    /// restarts in a restored database).
    id_floor: u64,
    /// sled's directory; the integrity manifest lives there too.
    path: std::path::PathBuf,
    /// The open database. Behind a lock because sled's first I/O error (a
    /// full disk) poisons its handle for good: `recover` reopens it in place
    /// once the disk takes writes again, and every clone sees the new one.
    trees: Arc<RwLock<Option<Arc<Trees>>>>,
    /// The last history entry written per elder (time, place), to decide
    /// whether the next sighting is worth an entry (see `history_due`).
    history_last: Arc<std::sync::Mutex<std::collections::HashMap<String, (Timestamp, String)>>>,
    /// Per-person keys, from a file outside sled (`shred`).
    person_keys: Arc<std::sync::Mutex<Option<PersonKeys>>>,
    /// The entry-log chain's HMAC key (`entry.key`, outside sled).
    entry_key: Arc<RwLock<Option<Vec<u8>>>>,
}

/// One open sled database and its trees.
struct Trees {
    db: sled::Db,
    meta: sled::Tree,
    elders: sled::Tree,
    bands: sled::Tree,
    staff: sled::Tree,
    ladders: sled::Tree,
    leaves: sled::Tree,
    last_seen: sled::Tree,
    unknown: sled::Tree,
    gateways: sled::Tree,
    alerts: sled::Tree,
    outbox: sled::Tree,
    deliveries: sled::Tree,
    people: sled::Tree,
    vehicles: sled::Tree,
    templates: sled::Tree,
    entries: sled::Tree,
    history: sled::Tree,
    users: sled::Tree,
    audit: sled::Tree,
}

impl Trees {
    fn open(path: &Path) -> Result<Trees> {
        let cfg = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            // sled's default page cache is 1 GiB; a gateway box has far less to spare
            // and the working set (a few thousand elders) is tiny.
            .cache_capacity(8 * 1024 * 1024);
        // A store closed a moment ago (in this process, or by a process that is
        // exiting) releases its file lock when sled's flusher thread ends: wait
        // briefly for it, then report who holds the store.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let db = loop {
            match cfg.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.kind() == std::io::ErrorKind::Other && e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(source) => return Err(StoreError::Open { path: path.display().to_string(), source }),
            }
        };
        let t = |n: &str| db.open_tree(n);
        Ok(Trees {
            meta: t("meta")?,
            elders: t("elders")?,
            bands: t("bands")?,
            staff: t("staff")?,
            ladders: t("ladders")?,
            leaves: t("leaves")?,
            last_seen: t("last_seen")?,
            unknown: t("unknown_bands")?,
            gateways: t("gateways")?,
            alerts: t("alerts")?,
            outbox: t("outbox")?,
            deliveries: t("deliveries")?,
            people: t("people")?,
            vehicles: t("vehicles")?,
            templates: t("face_templates")?,
            entries: t("entry_log")?,
            history: t("sighting_history")?,
            users: t("users")?,
            audit: t("audit_log")?,
            db,
        })
    }
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store values serialize")
}

fn dec<T: DeserializeOwned>(tree: &'static str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|source| StoreError::Corrupt { tree, source })
}

fn all<T: DeserializeOwned>(tree: &sled::Tree, name: &'static str) -> Result<Vec<T>> {
    tree.iter().values().map(|v| dec(name, &v?)).collect()
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let s = Store {
            keys: Arc::new(RwLock::new(None)),
            gate: Arc::new(RwLock::new(())),
            id_floor: 0,
            path: path.to_owned(),
            trees: Arc::new(RwLock::new(Some(Arc::new(Trees::open(path)?)))),
            history_last: Default::default(),
            person_keys: Default::default(),
            entry_key: Default::default(),
        };
        s.migrate()?;
        let id_floor = s.t().meta.get("id_floor")?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0);
        Ok(Store { id_floor, ..s })
    }

    /// The open database. Held only for one statement: `recover` waits for
    /// these to be dropped before it reopens.
    fn t(&self) -> Arc<Trees> {
        self.trees.read().unwrap_or_else(|e| e.into_inner()).clone().expect("the store could not be reopened after a write failure")
    }

    fn migrate(&self) -> Result<()> {
        let found = match self.t().meta.get("schema_version")? {
            None => {
                self.t().meta.insert("schema_version", enc(&SCHEMA_VERSION))?;
                return Ok(());
            }
            Some(v) => dec::<u32>("meta", &v)?,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        // Future migrations go here, one step per version: `if found < 2 { … }`.
        if found < SCHEMA_VERSION {
            self.t().meta.insert("schema_version", enc(&SCHEMA_VERSION))?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u32> {
        Ok(self.t().meta.get("schema_version")?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    /// Every write method holds this while it writes. Taking it also counts
    /// the write in the generation (`integrity`), before the write happens.
    fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        let g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.bump_generation();
        g
    }

    /// Make everything written so far durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.t().db.flush()?;
        Ok(())
    }

    pub fn is_healthy(&self) -> bool {
        self.t().meta.get("schema_version").is_ok()
    }

    /// Whether the store takes writes. sled's first I/O error (a full disk,
    /// EIO) poisons the open database: every later write and flush returns it.
    pub fn writable(&self) -> Result<()> {
        self.t().db.flush()?;
        Ok(())
    }

    /// After a write failure: once the disk takes a test write again, reopen
    /// the database in place. sled recovers what reached the disk; what did
    /// not was never acknowledged to anyone (every acknowledged write is
    /// flushed first). `Ok(true)` when it reopened, `Ok(false)` when nothing
    /// was wrong, an error while the disk still refuses.
    pub fn recover(&self) -> Result<bool> {
        if self.writable().is_ok() {
            return Ok(false);
        }
        probe_space(&self.path)?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut slot = self.trees.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = slot.take() {
            // Readers hold a clone for one statement; sled's file lock goes with the last one.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let mut last = None;
        for _ in 0..3 {
            match Trees::open(&self.path) {
                Ok(t) => {
                    *slot = Some(Arc::new(t));
                    tracing::warn!(path = %self.path.display(), "store reopened after a write failure; it takes writes again");
                    return Ok(true);
                }
                Err(e) => last = Some(e),
            }
        }
        let e = last.expect("tried");
        Err(StoreError::Reopen { path: self.path.display().to_string(), reason: e.to_string() })
    }

    /// A fresh id, monotonic across restarts.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.t().db.generate_id()? + 1 + self.id_floor)
    }

    /// A secret that versions before key files kept inside the store (and so
    /// in every backup). The daemon writes it to its key file, then calls
    /// `forget_legacy_secret`; no secret is ever written here again.
    pub fn legacy_secret(&self, name: &str) -> Result<Option<String>> {
        self.t().meta.get(format!("secret:{name}"))?.map(|v| dec("meta", &v)).transpose()
    }

    /// Delete a legacy secret and make that durable (it now lives in a key file).
    pub fn forget_legacy_secret(&self, name: &str) -> Result<()> {
        let key = format!("secret:{name}");
        if self.t().meta.get(&key)?.is_none() {
            return Ok(());
        }
        {
            let _w = self.writing();
            self.t().meta.remove(key)?;
        }
        self.flush()
    }

    /// Tests only: a store as versions before key files left it.
    #[doc(hidden)]
    pub fn put_legacy_secret(&self, name: &str, value: &str) -> Result<()> {
        let _w = self.writing();
        self.t().meta.insert(format!("secret:{name}"), enc(&value.to_string()))?;
        Ok(())
    }

    /// Whether anyone is enrolled for the gates: their PIN, card, QR and
    /// ID-number hashes are keyed, so the key must never be replaced.
    pub fn has_people(&self) -> bool {
        !self.t().people.is_empty()
    }
}

/// Can the store's filesystem take a segment's worth of data? Written,
/// fsynced and removed before sled is reopened on it.
fn probe_space(dir: &Path) -> Result<()> {
    use std::io::Write;
    let p = dir.join(".gatewarden-space-probe");
    let r = (|| {
        let mut f = std::fs::File::create(&p)?;
        f.write_all(&vec![0u8; 2 * 1024 * 1024])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&p);
    r.map_err(|source| StoreError::Unwritable { path: dir.display().to_string(), source })
}

/// Replace `path` with `bytes` durably and privately: a 0600 temporary file,
/// fsynced, renamed over the old one, and the directory fsynced. Key files,
/// backups and the integrity manifest all go through here, so a crash leaves
/// either the old file or the new one, never a torn one.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    {
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(dir)?.sync_all()
}

impl Store {
    /// For tests and `forget` checks: does any key or value in any tree
    /// contain these bytes?
    #[doc(hidden)]
    pub fn contains_bytes(&self, needle: &[u8]) -> Result<Vec<String>> {
        let mut hits = Vec::new();
        for name in self.t().db.tree_names() {
            let tree = self.t().db.open_tree(&name)?;
            for kv in tree.iter() {
                let (k, v) = kv?;
                if k.windows(needle.len()).any(|w| w == needle) || v.windows(needle.len()).any(|w| w == needle) {
                    hits.push(String::from_utf8_lossy(&name).to_string());
                    break;
                }
            }
        }
        Ok(hits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates::{unseal, SEALED};
    use chrono::Utc;

    fn elder(id: &str, bands: &[&str]) -> Elder {
        Elder {
            id: id.into(),
            name: "测试".into(),
            building: String::new(),
            unit: String::new(),
            room: String::new(),
            grid: String::new(),
            phone: None,
            bands: bands.iter().map(|b| b.parse().unwrap()).collect(),
            emergency_contacts: vec![],
            categories: vec![],
            notes: String::new(),
            enrolled_at: Utc::now(),
            absence_after_secs: None,
        }
    }

    #[test]
    fn a_wristband_cannot_be_bound_to_two_elders() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        s.put_elder(&elder("e1", &["c3a1f0001101"]), true).unwrap();
        let err = s.put_elder(&elder("e2", &["C3:A1:F0:00:11:01"]), true).unwrap_err();
        assert!(matches!(err, StoreError::BandTaken { ref elder, .. } if elder == "e1"), "{err}");
        assert!(s.get_elder("e2").unwrap().is_none(), "nothing half-written");
        assert!(matches!(s.put_elder(&elder("e1", &[]), true), Err(StoreError::Exists { .. })));
        // Moving the band off e1 frees it.
        s.put_elder(&elder("e1", &[]), false).unwrap();
        s.put_elder(&elder("e2", &["c3a1f0001101"]), true).unwrap();
        assert_eq!(s.elder_for_band(&"c3a1f0001101".parse().unwrap()).unwrap().as_deref(), Some("e2"));
    }

    #[test]
    fn data_and_schema_version_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_elder(&elder("e1", &["c3a1f0001101"]), true).unwrap();
            s.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.list_elders().unwrap().len(), 1);
        s.put_legacy_secret("ack", "k").unwrap();
        assert_eq!(s.legacy_secret("ack").unwrap().as_deref(), Some("k"));
        s.forget_legacy_secret("ack").unwrap();
        assert_eq!(s.legacy_secret("ack").unwrap(), None);
    }

    #[test]
    fn templates_are_sealed_bound_to_their_person_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        s.set_person_keys(PersonKeys::load_or_create(&dir.path().join("person.keys")).unwrap());
        let e: Vec<f32> = (0..128).map(|i| i as f32 / 128.0).collect();
        assert!(matches!(s.add_template("R1", &e), Err(StoreError::NoTemplateKey)));
        let k1 = [7u8; 32];
        s.set_template_keys(TemplateKeys { current: k1, previous: None });
        s.add_template("R1", &e).unwrap();
        let raw = s.raw_templates().unwrap();
        let plain: Vec<u8> = e.iter().flat_map(|f| f.to_le_bytes()).collect();
        assert!(raw[0].starts_with(SEALED) && !raw[0].windows(16).any(|w| plain.windows(16).any(|p| p == w)), "no plaintext on disk");
        assert!(unseal(&k1, "R2", &raw[0]).is_none(), "bound to its person");
        assert!(unseal(&[8u8; 32], "R1", &raw[0]).is_none(), "useless without the key");
        // Rotation: the new key with the old one as previous, then re-seal.
        let k2 = [9u8; 32];
        s.set_template_keys(TemplateKeys { current: k2, previous: Some(k1) });
        assert_eq!(s.reseal_templates().unwrap(), 1);
        s.set_template_keys(TemplateKeys { current: k2, previous: None });
        assert_eq!(s.templates().unwrap()[0].1, e);
        s.set_template_keys(TemplateKeys { current: k1, previous: None });
        assert!(matches!(s.templates(), Err(StoreError::TemplateKey { .. })), "the old key no longer opens it");
    }

    #[test]
    fn schema_1_plain_templates_are_sealed_on_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let e: Vec<f32> = (0..128).map(|i| -(i as f32) / 100.0).collect();
        {
            // A store as schema 1 wrote it: version 1, raw f32 templates.
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("meta").unwrap().insert("schema_version", enc(&1u32)).unwrap();
            let raw: Vec<u8> = e.iter().flat_map(|f| f.to_le_bytes()).collect();
            db.open_tree("face_templates").unwrap().insert("R1\u{0}00000000000000000001", raw).unwrap();
            db.flush().unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        let keys = tempfile::tempdir().unwrap();
        s.set_person_keys(PersonKeys::load_or_create(&keys.path().join("person.keys")).unwrap());
        s.set_template_keys(TemplateKeys { current: [3u8; 32], previous: None });
        assert_eq!(s.reseal_templates().unwrap(), 1);
        assert_eq!(s.templates().unwrap(), vec![("R1".to_string(), e)]);
        assert!(s.raw_templates().unwrap()[0].starts_with(SEALED));
    }

    #[test]
    fn a_store_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.t().meta.insert("schema_version", enc(&(SCHEMA_VERSION + 1))).unwrap();
            s.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }

    #[test]
    fn a_removed_persons_residue_cannot_be_opened_once_their_key_is_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db")).unwrap();
        let kf = dir.path().join("person.keys");
        s.set_person_keys(PersonKeys::load_or_create(&kf).unwrap());
        s.set_template_keys(TemplateKeys { current: [5u8; 32], previous: None });
        let person = Person {
            id: "R7".into(),
            name: "王秀英".into(),
            kind: domain::gate::policy::PersonKind::Resident,
            unit: "9-1203".into(),
            elder: None,
            pin_hash: None,
            cards: vec![],
            qr_hash: None,
            valid_from: None,
            valid_until: None,
        };
        s.put_person(
            &PersonRecord { person, consent: None, id_masked: None, id_hash: None, host_unit: None, plate: None, created_at: chrono::Utc::now() },
            true,
        )
        .unwrap();
        s.put_vehicle(&Vehicle { plate: "沪A9Z123".into(), owner: "R7".into(), valid_until: None }).unwrap();
        s.add_template("R7", &[0.25; 128]).unwrap();
        s.flush().unwrap();
        // Nothing of theirs is in any tree in the clear, keys included.
        for needle in ["王秀英", "9-1203", "沪A9Z123"] {
            assert!(s.contains_bytes(needle.as_bytes()).unwrap().is_empty(), "{needle} in the clear");
        }
        assert_eq!(s.get_vehicle("沪A9Z123").unwrap().unwrap().owner, "R7");
        assert_eq!(s.get_person("R7").unwrap().unwrap().person.name, "王秀英");
        let raw_person = s.t().people.get("R7").unwrap().unwrap().to_vec();
        assert!(std::fs::read_to_string(&kf).unwrap().contains("R7"));
        s.remove_person("R7").unwrap();
        assert!(!std::fs::read_to_string(&kf).unwrap().contains("R7"), "the key is shredded");
        assert!(s.get_vehicle("沪A9Z123").unwrap().is_none(), "vehicles go with their owner");
        assert!(s.templates().unwrap().is_empty());
        // The old bytes, as sled may still hold them, open under no key left.
        assert!(s.open_person(b"R7", &raw_person).unwrap().is_none());
        let reloaded = PersonKeys::load_or_create(&kf).unwrap();
        assert!(reloaded.is_empty());
    }
}
