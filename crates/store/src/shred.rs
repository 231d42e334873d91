//! Crypto-shredding. sled never overwrites in place: a removed record stays
//! in its segment files until they are reused, so deleting is not
//! forgetting. Each person's record, face templates, vehicles and the
//! reasons of their entry-log records are therefore sealed
//! (ChaCha20-Poly1305) under a key of their own, kept in a key file outside
//! sled (`PersonKeys`, rewritten atomically). `remove_person` deletes the key
//! once the removal is durable: what is left on disk can no longer be read,
//! in the store and in every backup taken before.
//!
//! Vehicles are found by a keyed hash of the plate (the index key in the same
//! file), so no plate is a key in the clear either.

use super::*;
use std::collections::BTreeMap;
use std::path::PathBuf;

const SEALED_P: &[u8; 4] = b"GWP1";
/// Prefix of an entry-log reason sealed under its person's key.
const SEALED_REASON: &str = "sealed:";

/// The per-person keys and the vehicle index key, and the file they live in.
pub struct PersonKeys {
    path: PathBuf,
    index: [u8; 32],
    keys: BTreeMap<String, [u8; 32]>,
}

#[derive(Serialize, serde::Deserialize)]
struct KeyFile {
    index: String,
    people: BTreeMap<String, String>,
}

fn key32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok().and_then(|b| <[u8; 32]>::try_from(b).ok())
}

impl PersonKeys {
    /// Read the key file, or create it (mode 0600) with a fresh index key.
    pub fn load_or_create(path: &Path) -> std::io::Result<PersonKeys> {
        let bad = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {why}", path.display()));
        match std::fs::read(path) {
            Ok(bytes) => {
                let f: KeyFile = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                let index = key32(&f.index).ok_or_else(|| bad("index is not a 32-byte hex key".into()))?;
                let keys = f
                    .people
                    .iter()
                    .map(|(id, k)| key32(k).map(|k| (id.clone(), k)).ok_or_else(|| bad(format!("the key of {id:?} is not 32 hex bytes"))))
                    .collect::<std::io::Result<_>>()?;
                Ok(PersonKeys { path: path.to_owned(), index, keys })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k = PersonKeys { path: path.to_owned(), index: rand::random(), keys: BTreeMap::new() };
                k.save()?;
                Ok(k)
            }
            Err(e) => Err(e),
        }
    }

    fn save(&self) -> std::io::Result<()> {
        let f = KeyFile { index: hex::encode(self.index), people: self.keys.iter().map(|(id, k)| (id.clone(), hex::encode(k))).collect() };
        write_private(&self.path, &serde_json::to_vec_pretty(&f).expect("serializes"))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn seal_bytes(key: &[u8; 32], aad: &str, plain: &[u8]) -> Vec<u8> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::ChaCha20Poly1305::new(key.into());
    let nonce: [u8; 12] = rand::random();
    let ct = cipher.encrypt(&nonce.into(), Payload { msg: plain, aad: aad.as_bytes() }).expect("encryption cannot fail");
    [SEALED_P.as_slice(), &nonce, &ct].concat()
}

fn open_bytes(key: &[u8; 32], aad: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let body = sealed.strip_prefix(SEALED_P.as_slice())?;
    if body.len() < 12 {
        return None;
    }
    let (nonce, ct) = body.split_at(12);
    chacha20poly1305::ChaCha20Poly1305::new(key.into()).decrypt(nonce.into(), Payload { msg: ct, aad: aad.as_bytes() }).ok()
}

/// Seal a file's bytes (an unknown-face snapshot) under a key file's secret,
/// bound to the file's name: a sealed file cannot be passed off as another.
pub fn seal_blob(secret: &[u8], name: &str, plain: &[u8]) -> Vec<u8> {
    seal_bytes(&blob_key(secret), name, plain)
}

/// Open what `seal_blob` sealed under this name; None for another key or name.
pub fn open_blob(secret: &[u8], name: &str, sealed: &[u8]) -> Option<Vec<u8>> {
    open_bytes(&blob_key(secret), name, sealed)
}

fn blob_key(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new().chain_update(b"gatewarden blob v1").chain_update(secret).finalize().into()
}

/// The key that seals one person's face templates: both the template key
/// (rotated for the whole site) and the person's own key (shredded on forget).
pub(crate) fn template_seal_key(template_key: &[u8; 32], person_key: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new().chain_update(b"gatewarden template v1").chain_update(template_key).chain_update(person_key).finalize().into()
}

impl Store {
    pub fn set_person_keys(&self, k: PersonKeys) {
        *self.person_keys.lock().unwrap_or_else(|e| e.into_inner()) = Some(k);
    }

    fn with_keys<T>(&self, f: impl FnOnce(&mut PersonKeys) -> Result<T>) -> Result<T> {
        let mut g = self.person_keys.lock().unwrap_or_else(|e| e.into_inner());
        f(g.as_mut().ok_or(StoreError::NoPersonKeys)?)
    }

    /// A person's key; made (and durable in the key file) first if `create`.
    pub(crate) fn person_key(&self, id: &str, create: bool) -> Result<Option<[u8; 32]>> {
        self.person_keys_for(&[id], create).map(|v| v.into_iter().next().flatten())
    }

    /// Several at once: one key-file rewrite for a whole roster.
    pub(crate) fn person_keys_for(&self, ids: &[&str], create: bool) -> Result<Vec<Option<[u8; 32]>>> {
        self.with_keys(|k| {
            let mut made = false;
            let out = ids
                .iter()
                .map(|id| match k.keys.get(*id) {
                    Some(key) => Some(*key),
                    None if create => {
                        made = true;
                        let key: [u8; 32] = rand::random();
                        k.keys.insert(id.to_string(), key);
                        Some(key)
                    }
                    None => None,
                })
                .collect();
            if made {
                k.save().map_err(|source| StoreError::KeyFile { path: k.path.display().to_string(), source })?;
            }
            Ok(out)
        })
    }

    /// Delete a person's key: call only once their removal is durable.
    fn shred_key(&self, id: &str) -> Result<()> {
        self.with_keys(|k| {
            if k.keys.remove(id).is_some() {
                k.save().map_err(|source| StoreError::KeyFile { path: k.path.display().to_string(), source })?;
            }
            Ok(())
        })
    }

    /// A person record as stored: sealed under their key (made if new).
    pub(crate) fn seal_person(&self, r: &PersonRecord, key: &[u8; 32]) -> Vec<u8> {
        seal_bytes(key, &format!("person:{}", r.person.id), &enc(r))
    }

    pub(crate) fn open_person(&self, id: &[u8], v: &[u8]) -> Result<Option<PersonRecord>> {
        if !v.starts_with(SEALED_P) {
            // Stored before crypto-shredding (`seal_personal_data` reseals it).
            return dec("people", v).map(Some);
        }
        let id = String::from_utf8_lossy(id).to_string();
        let Some(key) = self.person_key(&id, false)? else {
            // Shredded: the record is gone for good.
            return Ok(None);
        };
        let plain = open_bytes(&key, &format!("person:{id}"), v).ok_or(StoreError::PersonKey { person: id.clone() })?;
        dec("people", &plain).map(Some)
    }

    /// Where a plate's record lives: a keyed hash, never the plate itself.
    pub(crate) fn vehicle_index(&self, plate: &str) -> Result<Vec<u8>> {
        use hmac::Mac;
        self.with_keys(|k| {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&k.index).expect("any key length");
            m.update(plate.as_bytes());
            Ok(format!("v1:{}", hex::encode(m.finalize().into_bytes())).into_bytes())
        })
    }

    /// `owner \0 sealed(vehicle)`: the owner's key opens it.
    pub(crate) fn seal_vehicle(&self, v: &Vehicle) -> Result<Vec<u8>> {
        let key = self.person_key(&v.owner, true)?.expect("created");
        Ok([v.owner.as_bytes(), b"\0", &seal_bytes(&key, &format!("vehicle:{}", v.owner), &enc(v))].concat())
    }

    pub(crate) fn open_vehicle(&self, v: &[u8]) -> Result<Option<Vehicle>> {
        let Some(nul) = v.iter().position(|b| *b == 0) else {
            return dec("vehicles", v).map(Some);
        };
        let owner = String::from_utf8_lossy(&v[..nul]).to_string();
        let Some(key) = self.person_key(&owner, false)? else { return Ok(None) };
        let plain = open_bytes(&key, &format!("vehicle:{owner}"), &v[nul + 1..]).ok_or(StoreError::PersonKey { person: owner })?;
        dec("vehicles", &plain).map(Some)
    }

    /// An entry's reason as stored: sealed when it names a known person
    /// (a reason can carry a plate).
    pub(crate) fn seal_reason(&self, e: &Entry) -> Result<Entry> {
        let Some(p) = e.person.as_ref().filter(|_| !e.reason.starts_with(SEALED_REASON)) else { return Ok(e.clone()) };
        let Some(key) = self.person_key(p, false)? else { return Ok(e.clone()) };
        let mut e = e.clone();
        e.reason = format!("{SEALED_REASON}{}", hex::encode(seal_bytes(&key, &format!("entry:{p}"), e.reason.as_bytes())));
        Ok(e)
    }

    /// An entry for display: its reason opened ("(forgotten)" once shredded).
    pub fn open_reason(&self, mut c: Chained) -> Chained {
        if let (Some(hexed), Some(p)) = (c.entry.reason.strip_prefix(SEALED_REASON), &c.entry.person) {
            let opened = self.person_key(p, false).ok().flatten().and_then(|k| open_bytes(&k, &format!("entry:{p}"), &hex::decode(hexed).ok()?));
            c.entry.reason = opened.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|| "(forgotten)".into());
        }
        c
    }

    /// Whether any person record is sealed (then its key file must exist).
    pub fn has_sealed_people(&self) -> Result<bool> {
        for v in self.t().people.iter().values() {
            if v?.starts_with(SEALED_P) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Once the person's removal is durable, shred their key.
    pub(crate) fn forget_after_flush(&self, id: &str) -> Result<()> {
        self.flush()?;
        self.shred_key(id)
    }

    /// At start-up: seal records written before crypto-shredding, and drop
    /// keys whose person is gone (a crash between removal and shredding).
    /// Returns (records sealed, keys dropped).
    pub fn seal_personal_data(&self) -> Result<(usize, usize)> {
        let mut sealed = 0;
        {
            let _w = self.writing();
            for kv in self.t().people.iter() {
                let (k, v) = kv?;
                if v.starts_with(SEALED_P) {
                    continue;
                }
                let r: PersonRecord = dec("people", &v)?;
                let key = self.person_key(&r.person.id, true)?.expect("created");
                self.t().people.insert(k, self.seal_person(&r, &key))?;
                sealed += 1;
            }
            for kv in self.t().vehicles.iter() {
                let (k, v) = kv?;
                if k.starts_with(b"v1:") {
                    continue;
                }
                let veh: Vehicle = dec("vehicles", &v)?;
                self.t().vehicles.insert(self.vehicle_index(&veh.plate)?, self.seal_vehicle(&veh)?)?;
                self.t().vehicles.remove(k)?;
                sealed += 1;
            }
            let reasons: Vec<Chained> = all::<Chained>(&self.t().entries, "entry_log")?
                .into_iter()
                .filter(|c| c.entry.person.is_some() && !c.entry.reason.starts_with(SEALED_REASON))
                .collect();
            if !reasons.is_empty() {
                // The chain covers the stored form: re-chain from the first one sealed.
                drop(_w);
                let first = reasons[0].seq;
                sealed += self.rechain_from(first, |s, e| if e.person.is_some() { s.seal_reason(e) } else { Ok(e.clone()) })?;
            }
        }
        if sealed > 0 {
            self.flush()?;
        }
        let present: std::collections::HashSet<String> =
            self.t().people.iter().keys().filter_map(|k| k.ok()).map(|k| String::from_utf8_lossy(&k).into_owned()).collect();
        let owners: std::collections::HashSet<String> = self
            .t()
            .vehicles
            .iter()
            .values()
            .filter_map(|v| v.ok())
            .filter_map(|v| v.iter().position(|b| *b == 0).map(|n| String::from_utf8_lossy(&v[..n]).into_owned()))
            .collect();
        let dropped = self.with_keys(|k| {
            let before = k.keys.len();
            k.keys.retain(|id, _| present.contains(id) || owners.contains(id));
            let n = before - k.keys.len();
            if n > 0 {
                k.save().map_err(|source| StoreError::KeyFile { path: k.path.display().to_string(), source })?;
            }
            Ok(n)
        })?;
        Ok((sealed, dropped))
    }
}
