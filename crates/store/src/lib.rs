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
pub const SCHEMA_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store at {path}: {source}. Is another gatewarden running with this store? (sled is single-process)")]
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
    #[error("template key file {path}: {source}")]
    KeyFile { path: String, source: std::io::Error },
}

type Result<T> = std::result::Result<T, StoreError>;

/// One tree of a backup: its name and its raw records (never leaves this crate).
type TreeDump = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// Keys that seal face templates at rest (ChaCha20-Poly1305). They live in a
/// file outside the database, readable only by the service user, so a copy of
/// the database alone reveals no biometric data. During a rotation the
/// previous key still opens what it sealed.
#[derive(Clone)]
pub struct TemplateKeys {
    pub current: [u8; 32],
    pub previous: Option<[u8; 32]>,
}

const SEALED: &[u8; 4] = b"GWE1";

impl TemplateKeys {
    /// Read the key file ("current" hex, then optionally "previous" hex, one per
    /// line), or create it with a fresh key, mode 0600.
    pub fn load_or_create(path: &Path) -> std::io::Result<TemplateKeys> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let keys: Vec<[u8; 32]> = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| {
                        hex::decode(l.trim())
                            .ok()
                            .and_then(|b| <[u8; 32]>::try_from(b).ok())
                            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: not a 32-byte hex key", path.display())))
                    })
                    .collect::<std::io::Result<_>>()?;
                match keys.as_slice() {
                    [c] => Ok(TemplateKeys { current: *c, previous: None }),
                    [c, p] => Ok(TemplateKeys { current: *c, previous: Some(*p) }),
                    _ => Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: expected one or two keys", path.display()))),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = TemplateKeys { current: rand::random(), previous: None };
                k.save(path)?;
                Ok(k)
            }
            Err(e) => Err(e),
        }
    }

    /// Replace the key file atomically (write, fsync, rename), mode 0600.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        writeln!(f, "{}", hex::encode(self.current))?;
        if let Some(p) = self.previous {
            writeln!(f, "{}", hex::encode(p))?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }
}

fn seal(key: &[u8; 32], person: &str, embedding: &[f32]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.into());
    let nonce: [u8; 12] = rand::random();
    let plain: Vec<u8> = embedding.iter().flat_map(|f| f.to_le_bytes()).collect();
    // The person id is bound in as associated data: a template cannot be moved to someone else.
    let ct = cipher.encrypt(&nonce.into(), Payload { msg: &plain, aad: person.as_bytes() }).expect("encryption cannot fail");
    [SEALED.as_slice(), &nonce, &ct].concat()
}

/// A template sealed for another box (enrolment sync), under a transfer key.
pub fn seal_for_transfer(key: &[u8; 32], person: &str, embedding: &[f32]) -> Vec<u8> {
    seal(key, person, embedding)
}

pub fn open_transfer(key: &[u8; 32], person: &str, sealed: &[u8]) -> Option<Vec<f32>> {
    unseal(key, person, sealed)
}

fn unseal(key: &[u8; 32], person: &str, sealed: &[u8]) -> Option<Vec<f32>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let body = sealed.strip_prefix(SEALED.as_slice())?;
    if body.len() < 12 {
        return None;
    }
    let (nonce, ct) = body.split_at(12);
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.into());
    let plain = cipher.decrypt(nonce.into(), Payload { msg: ct, aad: person.as_bytes() }).ok()?;
    Some(plain.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

#[derive(Clone)]
pub struct Store {
    keys: Arc<RwLock<Option<TemplateKeys>>>,
    /// Writers share it; `backup` takes it exclusively, so a backup is one
    /// consistent point in time across all trees while the daemon runs.
    gate: Arc<RwLock<()>>,
    /// Ids below this were handed out before a restore (sled's id counter
    /// restarts in a restored database).
    id_floor: u64,
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
    /// The last history entry written per elder (time, place), to decide
    /// whether the next sighting is worth an entry (see `history_due`).
    history_last: Arc<std::sync::Mutex<std::collections::HashMap<String, (Timestamp, String)>>>,
    users: sled::Tree,
    audit: sled::Tree,
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

/// The sighting history records movements, not heartbeats: an entry when the
/// place changes (at most once a minute, so an elder between two gateways
/// does not flap into it) and otherwise one an hour. A stationary elder costs
/// 24 entries a day; 5,000 of them seen every second would otherwise cost
/// one write each per flush.
fn history_due(last: Option<&(Timestamp, String)>, l: &LastSeen) -> bool {
    match last {
        None => true,
        Some((at, place)) => {
            let gap = l.at - *at;
            gap >= chrono::Duration::hours(1) || (*place != l.place && gap >= chrono::Duration::minutes(1))
        }
    }
}

fn history_key(elder: &str, at: Timestamp) -> Vec<u8> {
    let mut k = format!("{elder}\u{0}").into_bytes();
    k.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    k
}

/// A console user. The password is an argon2id PHC string, never the password.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct User {
    pub name: String,
    /// "admin" or "staff".
    pub role: String,
    pub password_hash: String,
    pub created_at: Timestamp,
}

/// Who changed what, and when: one entry per admin write (API or console).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at: Timestamp,
    /// A console user's name, or "admin-token" for the CLI.
    pub actor: String,
    pub role: String,
    /// e.g. "POST /elders".
    pub action: String,
    /// What it touched, e.g. "elder E00012". For `forget`, a keyed hash of the
    /// id instead: the entry proves the erasure without naming the person.
    pub target: String,
    pub status: u16,
}

fn band_key(b: &BandId) -> Vec<u8> {
    b.to_string().into_bytes()
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            // sled's default page cache is 1 GiB; a gateway box has far less to spare
            // and the working set (a few thousand elders) is tiny.
            .cache_capacity(8 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open { path: path.display().to_string(), source })?;
        let t = |n: &str| db.open_tree(n);
        let s = Store {
            keys: Arc::new(RwLock::new(None)),
            gate: Arc::new(RwLock::new(())),
            id_floor: 0,
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
            history_last: Default::default(),
            users: t("users")?,
            audit: t("audit_log")?,
            db,
        };
        s.migrate()?;
        let id_floor = s.meta.get("id_floor")?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0);
        Ok(Store { id_floor, ..s })
    }

    fn migrate(&self) -> Result<()> {
        let found = match self.meta.get("schema_version")? {
            None => {
                self.meta.insert("schema_version", enc(&SCHEMA_VERSION))?;
                return Ok(());
            }
            Some(v) => dec::<u32>("meta", &v)?,
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        // Future migrations go here, one step per version: `if found < 2 { … }`.
        if found < SCHEMA_VERSION {
            self.meta.insert("schema_version", enc(&SCHEMA_VERSION))?;
        }
        Ok(())
    }

    pub fn schema_version(&self) -> Result<u32> {
        Ok(self.meta.get("schema_version")?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    fn writing(&self) -> std::sync::RwLockReadGuard<'_, ()> {
        self.gate.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Make everything written so far durable (fsync).
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub fn is_healthy(&self) -> bool {
        self.meta.get("schema_version").is_ok()
    }

    /// A fresh id, monotonic across restarts.
    pub fn next_id(&self) -> Result<u64> {
        Ok(self.db.generate_id()? + 1 + self.id_floor)
    }

    /// A named secret (e.g. the ack-link key), created on first use.
    pub fn secret(&self, name: &str) -> Result<String> {
        let _w = self.writing();
        let key = format!("secret:{name}");
        if let Some(v) = self.meta.get(&key)? {
            return dec("meta", &v);
        }
        let s: String = {
            use rand::Rng;
            let bytes: [u8; 32] = rand::thread_rng().gen();
            hex::encode(bytes)
        };
        match self.meta.compare_and_swap(&key, None as Option<&[u8]>, Some(enc(&s)))? {
            Ok(()) => Ok(s),
            Err(cur) => dec("meta", &cur.current.expect("set by the racing writer")),
        }
    }

    // ---- elders and their wristbands ----

    /// Insert or replace an elder, keeping the wristband index unique. Refuses
    /// a band that belongs to someone else.
    pub fn put_elder(&self, e: &Elder, must_be_new: bool) -> Result<()> {
        let _w = self.writing();
        let r = (&self.elders, &self.bands).transaction(|(elders, bands)| {
            let old: Option<Elder> = match elders.get(e.id.as_bytes())? {
                Some(v) if must_be_new => {
                    let _ = v;
                    return Err(ConflictableTransactionError::Abort(StoreError::Exists { what: "elder", id: e.id.clone() }));
                }
                Some(v) => Some(dec("elders", &v).map_err(ConflictableTransactionError::Abort)?),
                None => None,
            };
            for b in &e.bands {
                if let Some(owner) = bands.get(band_key(b))? {
                    let owner = String::from_utf8_lossy(&owner).to_string();
                    if owner != e.id {
                        return Err(ConflictableTransactionError::Abort(StoreError::BandTaken { band: b.to_string(), elder: owner }));
                    }
                }
            }
            if let Some(old) = old {
                for b in old.bands.iter().filter(|b| !e.bands.contains(b)) {
                    bands.remove(band_key(b))?;
                }
            }
            for b in &e.bands {
                bands.insert(band_key(b), e.id.as_bytes())?;
            }
            elders.insert(e.id.as_bytes(), enc(e))?;
            Ok(())
        });
        r.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        for b in &e.bands {
            self.unknown.remove(band_key(b))?;
        }
        Ok(())
    }

    pub fn get_elder(&self, id: &str) -> Result<Option<Elder>> {
        self.elders.get(id.as_bytes())?.map(|v| dec("elders", &v)).transpose()
    }

    pub fn list_elders(&self) -> Result<Vec<Elder>> {
        all(&self.elders, "elders")
    }

    pub fn elder_for_band(&self, b: &BandId) -> Result<Option<String>> {
        Ok(self.bands.get(band_key(b))?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Remove an elder with their bands, last-seen record and leaves.
    pub fn remove_elder(&self, id: &str) -> Result<Elder> {
        let _w = self.writing();
        let e = self.get_elder(id)?.ok_or_else(|| StoreError::NotFound { what: "elder", id: id.into() })?;
        for b in &e.bands {
            self.bands.remove(band_key(b))?;
        }
        self.last_seen.remove(id.as_bytes())?;
        self.remove_history_locked(id)?;
        for l in self.list_leaves(Some(id))? {
            self.leaves.remove(l.id.to_be_bytes())?;
        }
        self.elders.remove(id.as_bytes())?;
        Ok(e)
    }

    // ---- presence ----

    /// Last-seen for each elder, and (when `history` is on) their movements
    /// into the bounded sighting history.
    pub fn put_last_seen_batch(&self, items: &[(String, LastSeen)], history: bool) -> Result<()> {
        let _w = self.writing();
        let mut b = sled::Batch::default();
        let mut h = sled::Batch::default();
        let mut last = self.history_last.lock().unwrap_or_else(|e| e.into_inner());
        for (id, l) in items {
            b.insert(id.as_bytes(), enc(l));
            if history && history_due(last.get(id), l) {
                last.insert(id.clone(), (l.at, l.place.clone()));
                h.insert(history_key(id, l.at), enc(l));
            }
        }
        drop(last);
        self.last_seen.apply_batch(b)?;
        // The bounded whereabouts window (PIPL Art. 28): purged by `purge_history`.
        self.history.apply_batch(h)?;
        Ok(())
    }

    /// An elder's recent movements (see `history_due`), oldest first.
    pub fn history(&self, elder: &str) -> Result<Vec<LastSeen>> {
        self.history.scan_prefix(format!("{elder}\u{0}").as_bytes()).values().map(|v| dec("sighting_history", &v?)).collect()
    }

    /// Drop history older than `before`, and beyond `max_per_elder` per elder.
    pub fn purge_history(&self, before: Timestamp, max_per_elder: usize) -> Result<usize> {
        let _w = self.writing();
        let mut doomed = Vec::new();
        let mut per: std::collections::HashMap<Vec<u8>, Vec<(sled::IVec, Timestamp)>> = Default::default();
        for kv in self.history.iter() {
            let (k, v) = kv?;
            let l: LastSeen = dec("sighting_history", &v)?;
            let elder = k.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            if l.at < before {
                doomed.push(k);
            } else {
                per.entry(elder).or_default().push((k, l.at));
            }
        }
        for (_, mut v) in per {
            if v.len() > max_per_elder {
                v.sort_by_key(|(_, at)| *at);
                let extra = v.len() - max_per_elder;
                doomed.extend(v.into_iter().take(extra).map(|(k, _)| k));
            }
        }
        for k in &doomed {
            self.history.remove(k)?;
        }
        Ok(doomed.len())
    }

    fn remove_history_locked(&self, elder: &str) -> Result<usize> {
        self.history_last.lock().unwrap_or_else(|e| e.into_inner()).remove(elder);
        let keys: Vec<_> = self.history.scan_prefix(format!("{elder}\u{0}").as_bytes()).keys().collect::<std::result::Result<_, _>>()?;
        for k in &keys {
            self.history.remove(k)?;
        }
        Ok(keys.len())
    }

    // ---- console users and the audit log ----

    pub fn put_user(&self, u: &User) -> Result<()> {
        let _w = self.writing();
        self.users.insert(u.name.as_bytes(), enc(u))?;
        Ok(())
    }

    pub fn get_user(&self, name: &str) -> Result<Option<User>> {
        self.users.get(name.as_bytes())?.map(|v| dec("users", &v)).transpose()
    }

    pub fn list_users(&self) -> Result<Vec<User>> {
        all(&self.users, "users")
    }

    pub fn remove_user(&self, name: &str) -> Result<User> {
        let _w = self.writing();
        let u = self.get_user(name)?.ok_or_else(|| StoreError::NotFound { what: "user", id: name.into() })?;
        self.users.remove(name.as_bytes())?;
        Ok(u)
    }

    /// Append to the audit log of admin writes (fsynced: it is evidence).
    pub fn append_audit(&self, e: &mut AuditEntry) -> Result<()> {
        e.id = self.next_id()?;
        let _w = self.writing();
        self.audit.insert(e.id.to_be_bytes(), enc(e))?;
        self.db.flush()?;
        Ok(())
    }

    /// Newest first.
    pub fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.audit.iter().values().rev().take(limit).map(|v| dec("audit_log", &v?)).collect()
    }

    pub fn purge_audit(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for kv in self.audit.iter() {
            let (k, v) = kv?;
            let e: AuditEntry = dec("audit_log", &v)?;
            if e.at >= before {
                break;
            }
            self.audit.remove(k)?;
            n += 1;
        }
        Ok(n)
    }

    pub fn get_last_seen(&self, id: &str) -> Result<Option<LastSeen>> {
        self.last_seen.get(id.as_bytes())?.map(|v| dec("last_seen", &v)).transpose()
    }

    pub fn put_unknown_batch(&self, changed: &[UnknownBand], removed: &[BandId]) -> Result<()> {
        let _w = self.writing();
        let mut b = sled::Batch::default();
        for u in changed {
            b.insert(band_key(&u.band), enc(u));
        }
        for r in removed {
            b.remove(band_key(r));
        }
        self.unknown.apply_batch(b)?;
        Ok(())
    }

    pub fn list_unknown(&self) -> Result<Vec<UnknownBand>> {
        all(&self.unknown, "unknown_bands")
    }

    pub fn put_gateways(&self, items: &[(String, Timestamp)]) -> Result<()> {
        let _w = self.writing();
        let mut b = sled::Batch::default();
        for (name, at) in items {
            b.insert(name.as_bytes(), enc(at));
        }
        self.gateways.apply_batch(b)?;
        Ok(())
    }

    pub fn list_gateways(&self) -> Result<Vec<(String, Timestamp)>> {
        self.gateways
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).to_string(), dec("gateways", &v)?))
            })
            .collect()
    }

    // ---- leaves ----

    pub fn put_leave(&self, l: &Leave) -> Result<()> {
        let _w = self.writing();
        self.leaves.insert(l.id.to_be_bytes(), enc(l))?;
        Ok(())
    }

    pub fn list_leaves(&self, elder: Option<&str>) -> Result<Vec<Leave>> {
        Ok(all::<Leave>(&self.leaves, "leaves")?.into_iter().filter(|l| elder.is_none_or(|e| l.elder == e)).collect())
    }

    pub fn remove_leave(&self, id: u64) -> Result<Leave> {
        let _w = self.writing();
        let v = self.leaves.remove(id.to_be_bytes())?.ok_or_else(|| StoreError::NotFound { what: "leave", id: id.to_string() })?;
        dec("leaves", &v)
    }

    // ---- staff and escalation ladders ----

    pub fn put_staff(&self, s: &Staff) -> Result<()> {
        let _w = self.writing();
        self.staff.insert(s.id.as_bytes(), enc(s))?;
        Ok(())
    }

    pub fn get_staff(&self, id: &str) -> Result<Option<Staff>> {
        self.staff.get(id.as_bytes())?.map(|v| dec("staff", &v)).transpose()
    }

    pub fn list_staff(&self) -> Result<Vec<Staff>> {
        all(&self.staff, "staff")
    }

    pub fn remove_staff(&self, id: &str) -> Result<Staff> {
        let _w = self.writing();
        let v = self.staff.remove(id.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: "staff member", id: id.into() })?;
        dec("staff", &v)
    }

    pub fn put_ladder(&self, grid: &str, levels: &[Level]) -> Result<()> {
        let _w = self.writing();
        self.ladders.insert(grid.as_bytes(), enc(&levels))?;
        Ok(())
    }

    pub fn get_ladder(&self, grid: &str) -> Result<Option<Vec<Level>>> {
        self.ladders.get(grid.as_bytes())?.map(|v| dec("ladders", &v)).transpose()
    }

    pub fn list_ladders(&self) -> Result<Vec<(String, Vec<Level>)>> {
        self.ladders
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).to_string(), dec("ladders", &v)?))
            })
            .collect()
    }

    pub fn remove_ladder(&self, grid: &str) -> Result<()> {
        let _w = self.writing();
        self.ladders.remove(grid.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: "ladder for grid", id: grid.into() })?;
        Ok(())
    }

    // ---- alerts and the outbox ----

    /// Persist alert changes and enqueue their notifications atomically, then
    /// fsync: a notification is durable before any attempt to send it.
    pub fn commit_alerts(&self, alerts: &[Alert], notifications: &mut [Notification]) -> Result<()> {
        let _w = self.writing();
        for n in notifications.iter_mut() {
            n.id = self.next_id()?;
        }
        (&self.alerts, &self.outbox)
            .transaction(|(at, ot)| {
                for a in alerts {
                    at.insert(&a.id.to_be_bytes(), enc(a))?;
                }
                for n in notifications.iter() {
                    ot.insert(&n.id.to_be_bytes(), enc(n))?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => unreachable!("no aborts"),
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.flush()
    }

    pub fn get_alert(&self, id: AlertId) -> Result<Option<Alert>> {
        self.alerts.get(id.to_be_bytes())?.map(|v| dec("alerts", &v)).transpose()
    }

    /// Alerts, newest first.
    pub fn list_alerts(&self) -> Result<Vec<Alert>> {
        let mut v: Vec<Alert> = all(&self.alerts, "alerts")?;
        v.reverse();
        Ok(v)
    }

    /// Notifications not yet delivered (pending, and failed permanently), oldest first.
    pub fn outbox(&self) -> Result<Vec<Notification>> {
        all(&self.outbox, "outbox")
    }

    pub fn outbox_for_channel(&self, channel: &str) -> Result<Vec<Notification>> {
        Ok(self.outbox()?.into_iter().filter(|n| n.channel == channel).collect())
    }

    /// Record the outcome of an attempt. A delivered notification moves to the
    /// delivery log; anything else stays in the outbox.
    pub fn update_notification(&self, n: &Notification) -> Result<()> {
        let _w = self.writing();
        let key = n.id.to_be_bytes();
        if n.delivery == Delivery::Delivered {
            (&self.outbox, &self.deliveries)
                .transaction(|(o, d)| {
                    o.remove(&key)?;
                    d.insert(&key, enc(n))?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(()) => unreachable!("no aborts"),
                    TransactionError::Storage(e) => StoreError::Sled(e),
                })?;
        } else {
            self.outbox.insert(key, enc(n))?;
        }
        Ok(())
    }

    /// Put a permanently failed notification back in the queue (after fixing the channel).
    pub fn retry_notification(&self, id: u64, now: Timestamp) -> Result<Notification> {
        let _w = self.writing();
        let v = self.outbox.get(id.to_be_bytes())?.ok_or_else(|| StoreError::NotFound { what: "notification", id: id.to_string() })?;
        let mut n: Notification = dec("outbox", &v)?;
        n.delivery = Delivery::Pending;
        n.next_attempt_at = now;
        self.outbox.insert(id.to_be_bytes(), enc(&n))?;
        Ok(n)
    }

    /// Drop delivered notifications older than `before`; returns how many.
    pub fn purge_deliveries(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for kv in self.deliveries.iter() {
            let (k, v) = kv?;
            let d: Notification = dec("deliveries", &v)?;
            if d.delivered_at.is_some_and(|t| t < before) {
                self.deliveries.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// A person's record for gate access, with what the law asks us to keep.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PersonRecord {
    pub person: Person,
    /// Who consented, when, how and to which purpose (PIPL; 2025 Measures).
    #[serde(default)]
    pub consent: Option<Consent>,
    /// Visitors: "1101**********002X" and HMAC of the number, never the number.
    #[serde(default)]
    pub id_masked: Option<String>,
    #[serde(default)]
    pub id_hash: Option<String>,
    #[serde(default)]
    pub host_unit: Option<String>,
    #[serde(default)]
    pub plate: Option<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consent {
    pub by: String,
    pub at: Timestamp,
    /// "paper form", "app", …
    pub how: String,
    pub purpose: String,
}

impl Store {
    // ---- gate access: people, face templates, the entry log ----

    /// Insert or replace; refuses a PIN, card or QR already used by someone else.
    pub fn put_person(&self, r: &PersonRecord, must_be_new: bool) -> Result<()> {
        let _w = self.writing();
        let p = &r.person;
        if must_be_new && self.people.contains_key(p.id.as_bytes())? {
            return Err(StoreError::Exists { what: "person", id: p.id.clone() });
        }
        for other in self.list_people()?.iter().filter(|o| o.person.id != p.id) {
            let o = &other.person;
            let clash = (p.pin_hash.is_some() && p.pin_hash == o.pin_hash)
                || p.cards.iter().any(|c| o.cards.contains(c))
                || (p.qr_hash.is_some() && p.qr_hash == o.qr_hash);
            if clash {
                return Err(StoreError::Exists { what: "credential (PIN, card or QR) of person", id: o.id.clone() });
            }
        }
        self.people.insert(p.id.as_bytes(), enc(r))?;
        Ok(())
    }

    /// A whole roster file in one transaction: every person (with templates),
    /// elder (with the band index) and vehicle, or none of them.
    pub fn import_roster(&self, people: &[(PersonRecord, Vec<Vec<f32>>)], elders: &[Elder], vehicles: &[Vehicle]) -> Result<()> {
        let key = if people.iter().any(|(_, t)| !t.is_empty()) { Some(self.current_key()?) } else { None };
        // Ids before the transaction (a retried closure must not take new ones).
        let mut sealed = Vec::new();
        for (r, ts) in people {
            for e in ts {
                let k = self.template_key(&r.person.id)?;
                sealed.push((k, seal(key.as_ref().expect("a key when templates exist"), &r.person.id, e)));
            }
        }
        let _w = self.writing();
        let res = (&self.people, &self.templates, &self.elders, &self.bands, &self.vehicles).transaction(|(pt, tt, et, bt, vt)| {
            for (r, _) in people {
                pt.insert(r.person.id.as_bytes(), enc(r))?;
            }
            for (k, v) in &sealed {
                tt.insert(k.as_bytes(), v.as_slice())?;
            }
            for e in elders {
                if let Some(old) = et.get(e.id.as_bytes())? {
                    let old: Elder = dec("elders", &old).map_err(ConflictableTransactionError::Abort)?;
                    for b in &old.bands {
                        bt.remove(band_key(b))?;
                    }
                }
                for b in &e.bands {
                    if let Some(owner) = bt.get(band_key(b))? {
                        let owner = String::from_utf8_lossy(&owner).to_string();
                        if owner != e.id {
                            return Err(ConflictableTransactionError::Abort(StoreError::BandTaken { band: b.to_string(), elder: owner }));
                        }
                    }
                    bt.insert(band_key(b), e.id.as_bytes())?;
                }
                et.insert(e.id.as_bytes(), enc(e))?;
            }
            for v in vehicles {
                vt.insert(v.plate.as_bytes(), enc(v))?;
            }
            Ok(())
        });
        res.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    pub fn get_person(&self, id: &str) -> Result<Option<PersonRecord>> {
        self.people.get(id.as_bytes())?.map(|v| dec("people", &v)).transpose()
    }

    pub fn list_people(&self) -> Result<Vec<PersonRecord>> {
        all(&self.people, "people")
    }

    /// Remove a person and every face template of theirs.
    pub fn remove_person(&self, id: &str) -> Result<PersonRecord> {
        let _w = self.writing();
        let r = self.get_person(id)?.ok_or_else(|| StoreError::NotFound { what: "person", id: id.into() })?;
        self.remove_templates_locked(id)?;
        self.people.remove(id.as_bytes())?;
        Ok(r)
    }

    pub fn put_vehicle(&self, v: &Vehicle) -> Result<()> {
        let _w = self.writing();
        if let Some(old) = self.get_vehicle(&v.plate)? {
            if old.owner != v.owner {
                return Err(StoreError::Exists { what: "vehicle (owned by someone else)", id: v.plate.clone() });
            }
        }
        self.vehicles.insert(v.plate.as_bytes(), enc(v))?;
        Ok(())
    }

    pub fn get_vehicle(&self, plate: &str) -> Result<Option<Vehicle>> {
        self.vehicles.get(plate.as_bytes())?.map(|v| dec("vehicles", &v)).transpose()
    }

    pub fn list_vehicles(&self) -> Result<Vec<Vehicle>> {
        all(&self.vehicles, "vehicles")
    }

    pub fn remove_vehicle(&self, plate: &str) -> Result<Vehicle> {
        let _w = self.writing();
        let v = self.vehicles.remove(plate.as_bytes())?.ok_or_else(|| StoreError::NotFound { what: "vehicle", id: plate.into() })?;
        dec("vehicles", &v)
    }

    pub fn set_template_keys(&self, k: TemplateKeys) {
        *self.keys.write().expect("keys") = Some(k);
    }

    fn current_key(&self) -> Result<[u8; 32]> {
        self.keys.read().expect("keys").as_ref().map(|k| k.current).ok_or(StoreError::NoTemplateKey)
    }

    pub fn add_template(&self, person: &str, embedding: &[f32]) -> Result<()> {
        let _w = self.writing();
        let key = self.template_key(person)?;
        self.templates.insert(key.as_bytes(), seal(&self.current_key()?, person, embedding))?;
        Ok(())
    }

    /// Re-seal every template under the current key: templates from before
    /// encryption (schema 1) and templates sealed with the previous key.
    /// Returns how many were rewritten.
    pub fn reseal_templates(&self) -> Result<usize> {
        let _w = self.writing();
        let keys = self.keys.read().expect("keys").clone().ok_or(StoreError::NoTemplateKey)?;
        let mut n = 0;
        for kv in self.templates.iter() {
            let (k, v) = kv?;
            let ks = String::from_utf8_lossy(&k).to_string();
            let person = ks.split('\u{0}').next().unwrap_or_default().to_string();
            if unseal(&keys.current, &person, &v).is_some() {
                continue;
            }
            let plain = match v.starts_with(SEALED) {
                true => keys.previous.and_then(|p| unseal(&p, &person, &v)).ok_or(StoreError::TemplateKey { person: person.clone() })?,
                // Schema 1 stored raw little-endian f32.
                false => v.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            };
            self.templates.insert(k, seal(&keys.current, &person, &plain))?;
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }

    /// For tests: the stored bytes of every template, as an attacker with the disk sees them.
    #[doc(hidden)]
    pub fn raw_templates(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self.templates.iter().values().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().map(|v| v.to_vec()).collect())
    }

    pub fn remove_templates(&self, person: &str) -> Result<usize> {
        let _w = self.writing();
        self.remove_templates_locked(person)
    }

    fn remove_templates_locked(&self, person: &str) -> Result<usize> {
        let prefix = format!("{person}\u{0}");
        let keys: Vec<_> = self.templates.scan_prefix(prefix.as_bytes()).keys().collect::<std::result::Result<_, _>>()?;
        for k in &keys {
            self.templates.remove(k)?;
        }
        Ok(keys.len())
    }

    /// Every (person, embedding), unsealed.
    pub fn templates(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.open_templates(self.templates.iter())
    }

    /// One person's templates, unsealed.
    pub fn templates_of(&self, person: &str) -> Result<Vec<Vec<f32>>> {
        let prefix = format!("{person}\u{0}");
        Ok(self.open_templates(self.templates.scan_prefix(prefix.as_bytes()))?.into_iter().map(|(_, e)| e).collect())
    }

    /// `person\0<id>`: one person's templates sort together.
    fn template_key(&self, person: &str) -> Result<String> {
        Ok(format!("{person}\u{0}{:020}", self.next_id()?))
    }

    fn open_templates(&self, it: sled::Iter) -> Result<Vec<(String, Vec<f32>)>> {
        let keys = self.keys.read().expect("keys").clone().ok_or(StoreError::NoTemplateKey)?;
        it.map(|kv| {
            let (k, v) = kv?;
            let person = String::from_utf8_lossy(&k).split('\u{0}').next().unwrap_or_default().to_string();
            let e = unseal(&keys.current, &person, &v)
                .or_else(|| keys.previous.and_then(|p| unseal(&p, &person, &v)))
                .ok_or(StoreError::TemplateKey { person: person.clone() })?;
            Ok((person, e))
        })
        .collect()
    }

    /// Replace a person and all their templates (enrolment sync).
    pub fn replace_person(&self, r: &PersonRecord, templates: &[Vec<f32>]) -> Result<()> {
        let key = self.current_key()?;
        let _w = self.writing();
        self.remove_templates_locked(&r.person.id)?;
        self.people.insert(r.person.id.as_bytes(), enc(r))?;
        for e in templates {
            let k = self.template_key(&r.person.id)?;
            self.templates.insert(k.as_bytes(), seal(&key, &r.person.id, e))?;
        }
        Ok(())
    }

    /// The version of a synced record this box holds (0: none).
    pub fn sync_version(&self, kind: &str, id: &str) -> Result<u64> {
        Ok(self.meta.get(format!("syncv\u{0}{kind}\u{0}{id}"))?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    pub fn set_sync_version(&self, kind: &str, id: &str, v: u64) -> Result<()> {
        let _w = self.writing();
        self.meta.insert(format!("syncv\u{0}{kind}\u{0}{id}"), enc(&v))?;
        Ok(())
    }

    /// How many templates each person has (no key needed).
    pub fn template_counts(&self) -> Result<std::collections::HashMap<String, usize>> {
        let mut m = std::collections::HashMap::new();
        for k in self.templates.iter().keys() {
            let k = k?;
            let person = String::from_utf8_lossy(&k).split('\u{0}').next().unwrap_or_default().to_string();
            *m.entry(person).or_insert(0) += 1;
        }
        Ok(m)
    }

    /// Append a decision to the hash chain (atomically with the head).
    pub fn append_entry(&self, e: &Entry) -> Result<Chained> {
        let _w = self.writing();
        let r = (&self.entries, &self.meta).transaction(|(ent, meta)| {
            let (seq, prev) = match meta.get("entry_log_head")? {
                Some(v) => {
                    let (s, h): (u64, String) = dec("meta", &v).map_err(ConflictableTransactionError::Abort)?;
                    (s + 1, h)
                }
                None => (1, entry_log::GENESIS.to_string()),
            };
            let hash = entry_log::hash(seq, &prev, e);
            let c = Chained { seq, prev, hash: hash.clone(), entry: e.clone() };
            ent.insert(&seq.to_be_bytes(), enc(&c))?;
            meta.insert("entry_log_head", enc(&(seq, hash)))?;
            Ok(c)
        });
        r.map_err(|e| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })
    }

    /// `forget`: replace a person's id in the entry log by `replacement` and
    /// re-chain from the first changed record, in one transaction, so the log
    /// keeps verifying and keeps no trace of who it was. Returns how many
    /// records named the person.
    pub fn erase_from_entries(&self, person: &str, replacement: &str) -> Result<usize> {
        let _w = self.writing();
        let all: Vec<Chained> = all(&self.entries, "entry_log")?;
        let Some(first) = all.iter().position(|c| c.entry.person.as_deref() == Some(person)) else { return Ok(0) };
        let mut prev =
            if first == 0 { self.entry_anchor()?.map(|(_, h)| h).unwrap_or_else(|| entry_log::GENESIS.to_string()) } else { all[first - 1].hash.clone() };
        let mut n = 0;
        let mut rewritten = Vec::with_capacity(all.len() - first);
        for c in &all[first..] {
            let mut e = c.entry.clone();
            if e.person.as_deref() == Some(person) {
                e.person = Some(replacement.to_string());
                n += 1;
            }
            let hash = entry_log::hash(c.seq, &prev, &e);
            rewritten.push(Chained { seq: c.seq, prev: prev.clone(), hash: hash.clone(), entry: e });
            prev = hash;
        }
        let head = rewritten.last().map(|c| (c.seq, c.hash.clone()));
        let r = (&self.entries, &self.meta).transaction(|(ent, meta)| {
            for c in &rewritten {
                ent.insert(&c.seq.to_be_bytes(), enc(c))?;
            }
            if let Some(h) = &head {
                meta.insert("entry_log_head", enc(h))?;
            }
            Ok(())
        });
        r.map_err(|e: TransactionError<StoreError>| match e {
            TransactionError::Abort(e) => e,
            TransactionError::Storage(e) => StoreError::Sled(e),
        })?;
        Ok(n)
    }

    /// For tests and `forget` checks: does any key or value in any tree
    /// contain these bytes?
    #[doc(hidden)]
    pub fn contains_bytes(&self, needle: &[u8]) -> Result<Vec<String>> {
        let mut hits = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
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

    pub fn entries(&self) -> Result<Vec<Chained>> {
        all(&self.entries, "entry_log")
    }

    /// The (seq, hash) of the last record removed by the retention purge.
    pub fn entry_anchor(&self) -> Result<Option<(u64, String)>> {
        self.meta.get("entry_log_anchor")?.map(|v| dec("meta", &v)).transpose()
    }

    /// Drop entry-log records older than `before`, oldest first, moving the
    /// anchor forward so the rest of the chain still verifies. Returns how many.
    pub fn purge_entries(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for c in self.entries()? {
            if c.entry.at >= before {
                break;
            }
            // Anchor first: a crash between the two leaves an anchor past a
            // record that still exists, which verify tolerates by skipping.
            self.meta.insert("entry_log_anchor", enc(&(c.seq, c.hash.clone())))?;
            self.entries.remove(c.seq.to_be_bytes())?;
            n += 1;
        }
        if n > 0 {
            self.flush()?;
        }
        Ok(n)
    }

    /// Drop leaves that ended before `before`. Returns how many.
    pub fn purge_leaves(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for l in self.list_leaves(None)? {
            if l.until < before {
                self.leaves.remove(l.id.to_be_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Record when a purge of `what` last ran (for the compliance report).
    pub fn mark_purge(&self, what: &str, at: Timestamp, removed: usize) -> Result<()> {
        let _w = self.writing();
        self.meta.insert(format!("purge:{what}"), enc(&(at, removed)))?;
        Ok(())
    }

    pub fn last_purges(&self) -> Result<Vec<(String, Timestamp, usize)>> {
        self.meta
            .scan_prefix("purge:")
            .map(|kv| {
                let (k, v) = kv?;
                let (at, n): (Timestamp, usize) = dec("meta", &v)?;
                Ok((String::from_utf8_lossy(&k)["purge:".len()..].to_string(), at, n))
            })
            .collect()
    }

    pub fn entry_head(&self) -> Result<Option<(u64, String)>> {
        self.meta.get("entry_log_head")?.map(|v| dec("meta", &v)).transpose()
    }

    /// For tests of `log verify` only: overwrite a stored record as an attacker would.
    #[doc(hidden)]
    pub fn tamper_entry(&self, c: &Chained) -> Result<()> {
        let _w = self.writing();
        self.entries.insert(c.seq.to_be_bytes(), enc(c))?;
        Ok(())
    }
}

// ---- backup and restore ----
//
// A backup file is one JSON header line, then length-prefixed records, then a
// SHA-256 of everything before it, so a truncated or damaged file is refused
// before anything is touched:
//   b"GWBACKUP\n" {header json}\n ( b'T' name | b'R' key value )* b'E' sha256
// with every name, key and value as u32-LE length + bytes.

const BACKUP_MAGIC: &[u8] = b"GWBACKUP\n";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct BackupHeader {
    pub format: u32,
    pub schema: u32,
    /// Unix seconds, from the daemon's clock.
    pub created: i64,
    /// Ids handed out so far; the restored store continues above it.
    pub next_id: u64,
    /// Fingerprint of the template key the face templates are sealed with
    /// (the key itself is never in a backup).
    pub key_fingerprint: Option<String>,
    pub trees: usize,
    pub records: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("backup i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a gatewarden backup (bad magic)")]
    NotABackup,
    #[error("the backup is damaged or truncated: {0}")]
    Damaged(&'static str),
    #[error("the backup was made by a newer gatewarden (schema {0}); upgrade first")]
    TooNew(u32),
    #[error("the store at {0} is in use — stop the daemon first (systemctl stop gatewarden)")]
    InUse(String),
}

/// The fingerprint of a template key as shown in backups and `keys` output.
pub fn key_fingerprint(key: &[u8; 32]) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::new().chain_update(b"gatewarden key fingerprint\0").chain_update(key).finalize()[..8])
}

fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Store {
    /// Write a consistent snapshot of every tree to `out`. Writers wait while
    /// it runs (about 0.3 s for 126k records on the benchmark VM, see
    /// BENCHMARKS.md); readers don't.
    pub fn backup(&self, created: i64, out: &mut dyn std::io::Write) -> std::result::Result<BackupHeader, BackupError> {
        use sha2::Digest;
        let _frozen = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut body = Vec::new();
        let (mut trees, mut records) = (0usize, 0u64);
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name).map_err(StoreError::from)?;
            body.push(b'T');
            put_chunk(&mut body, &name);
            trees += 1;
            for kv in tree.iter() {
                let (k, v) = kv.map_err(StoreError::from)?;
                body.push(b'R');
                put_chunk(&mut body, &k);
                put_chunk(&mut body, &v);
                records += 1;
            }
        }
        let key_fp = self.keys.read().expect("keys").as_ref().map(|k| key_fingerprint(&k.current));
        let header = BackupHeader { format: 1, schema: self.schema_version()?, created, next_id: self.next_id()?, key_fingerprint: key_fp, trees, records };
        let mut file = BACKUP_MAGIC.to_vec();
        file.extend_from_slice(&serde_json::to_vec(&header).expect("header serializes"));
        file.push(b'\n');
        file.extend_from_slice(&body);
        file.push(b'E');
        let digest = sha2::Sha256::digest(&file);
        file.extend_from_slice(&digest);
        out.write_all(&file)?;
        Ok(header)
    }

    /// Check a backup file without touching any store.
    /// Check a backup file whole (checksum, header) and read its header.
    pub fn verify_backup(bytes: &[u8]) -> std::result::Result<BackupHeader, BackupError> {
        Self::read_backup(bytes).map(|(h, _)| h)
    }

    fn read_backup(bytes: &[u8]) -> std::result::Result<(BackupHeader, Vec<TreeDump>), BackupError> {
        use sha2::Digest;
        if !bytes.starts_with(BACKUP_MAGIC) {
            return Err(BackupError::NotABackup);
        }
        if bytes.len() < BACKUP_MAGIC.len() + 33 {
            return Err(BackupError::Damaged("too short"));
        }
        let (content, digest) = bytes.split_at(bytes.len() - 32);
        if sha2::Sha256::digest(content).as_slice() != digest || content.last() != Some(&b'E') {
            return Err(BackupError::Damaged("checksum mismatch"));
        }
        let rest = &content[BACKUP_MAGIC.len()..content.len() - 1];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(BackupError::Damaged("no header"))?;
        let header: BackupHeader = serde_json::from_slice(&rest[..nl]).map_err(|_| BackupError::Damaged("unreadable header"))?;
        if header.schema > SCHEMA_VERSION {
            return Err(BackupError::TooNew(header.schema));
        }
        let mut body = &rest[nl + 1..];
        let take = |body: &mut &[u8]| -> std::result::Result<Vec<u8>, BackupError> {
            if body.len() < 4 {
                return Err(BackupError::Damaged("truncated record"));
            }
            let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]) as usize;
            if body.len() < 4 + n {
                return Err(BackupError::Damaged("truncated record"));
            }
            let v = body[4..4 + n].to_vec();
            *body = &body[4 + n..];
            Ok(v)
        };
        let mut trees: Vec<TreeDump> = Vec::new();
        while let Some((&tag, tail)) = body.split_first() {
            body = tail;
            match tag {
                b'T' => trees.push((take(&mut body)?, Vec::new())),
                b'R' => {
                    let k = take(&mut body)?;
                    let v = take(&mut body)?;
                    trees.last_mut().ok_or(BackupError::Damaged("record before tree"))?.1.push((k, v));
                }
                _ => return Err(BackupError::Damaged("unknown record tag")),
            }
        }
        let n: u64 = trees.iter().map(|t| t.1.len() as u64).sum();
        if n != header.records || trees.len() != header.trees {
            return Err(BackupError::Damaged("record count differs from the header"));
        }
        Ok((header, trees))
    }

    /// Replace the store at `path` with the backup's content. The daemon must
    /// be stopped. The new store is built beside the old one and swapped in
    /// with renames, so a crash at any point leaves either the old store or
    /// the restored one; the old store is kept as `<path>.pre-restore-<time>`.
    pub fn restore(bytes: &[u8], path: &Path, now: i64) -> std::result::Result<(BackupHeader, Option<std::path::PathBuf>), BackupError> {
        let (header, trees) = Store::read_backup(bytes)?;
        if path.exists() {
            // sled holds an exclusive lock while a daemon has the store open.
            match sled::Config::new().path(path).open() {
                Ok(db) => drop(db),
                Err(_) => return Err(BackupError::InUse(path.display().to_string())),
            }
        }
        let staging = path.with_extension("restoring");
        if staging.exists() {
            std::fs::remove_dir_all(&staging)?;
        }
        {
            let db = sled::Config::new().path(&staging).open().map_err(|source| StoreError::Open { path: staging.display().to_string(), source })?;
            for (name, records) in &trees {
                let tree = db.open_tree(name).map_err(StoreError::from)?;
                let mut batch = sled::Batch::default();
                for (k, v) in records {
                    batch.insert(k.as_slice(), v.as_slice());
                }
                tree.apply_batch(batch).map_err(StoreError::from)?;
            }
            db.open_tree("meta").map_err(StoreError::from)?.insert("id_floor", enc(&header.next_id)).map_err(StoreError::from)?;
            db.flush().map_err(StoreError::from)?;
        }
        let kept = if path.exists() {
            let old = path.with_extension(format!("pre-restore-{now}"));
            std::fs::rename(path, &old)?;
            Some(old)
        } else {
            None
        };
        std::fs::rename(&staging, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
        }
        Ok((header, kept))
    }
}

/// Seal every face template under a fresh key. The key file holds the new key
/// and the old one until every template is re-sealed, so a crash at any point
/// leaves each template openable.
pub fn rotate_template_key(path: &Path, store: &Store) -> Result<usize> {
    let key_err = |source| StoreError::KeyFile { path: path.display().to_string(), source };
    let old = TemplateKeys::load_or_create(path).map_err(key_err)?;
    let both = TemplateKeys { current: rand::random(), previous: Some(old.current) };
    both.save(path).map_err(key_err)?;
    store.set_template_keys(both.clone());
    let n = store.reseal_templates()?;
    let new = TemplateKeys { current: both.current, previous: None };
    new.save(path).map_err(key_err)?;
    store.set_template_keys(new);
    tracing::info!(resealed = n, "template key rotated");
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let a = s.secret("ack").unwrap();
        assert_eq!(s.secret("ack").unwrap(), a);
    }

    #[test]
    fn templates_are_sealed_bound_to_their_person_and_survive_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
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
            s.meta.insert("schema_version", enc(&(SCHEMA_VERSION + 1))).unwrap();
            s.flush().unwrap();
        }
        let err = Store::open(dir.path()).err().expect("refused");
        assert!(matches!(err, StoreError::TooNew { .. }), "{err}");
    }
}
