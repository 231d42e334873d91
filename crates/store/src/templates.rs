//! Face templates, sealed with ChaCha20-Poly1305 under keys kept outside the database.

use super::*;

/// Keys that seal face templates at rest (ChaCha20-Poly1305). They live in a
/// file outside the database, readable only by the service user, so a copy of
/// the database alone reveals no biometric data. During a rotation the
/// previous key still opens what it sealed.
#[derive(Clone)]
pub struct TemplateKeys {
    pub current: [u8; 32],
    pub previous: Option<[u8; 32]>,
}

pub(crate) const SEALED: &[u8; 4] = b"GWE1";

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
        let mut text = format!("{}\n", hex::encode(self.current));
        if let Some(p) = self.previous {
            text.push_str(&format!("{}\n", hex::encode(p)));
        }
        super::write_private(path, text.as_bytes())
    }
}

pub(crate) fn seal(key: &[u8; 32], person: &str, embedding: &[f32]) -> Vec<u8> {
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

pub(crate) fn unseal(key: &[u8; 32], person: &str, sealed: &[u8]) -> Option<Vec<f32>> {
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

impl Store {
    pub fn set_template_keys(&self, k: TemplateKeys) {
        *self.keys.write().expect("keys") = Some(k);
    }

    pub(crate) fn current_key(&self) -> Result<[u8; 32]> {
        self.keys.read().expect("keys").as_ref().map(|k| k.current).ok_or(StoreError::NoTemplateKey)
    }

    pub fn add_template(&self, person: &str, embedding: &[f32]) -> Result<()> {
        let tk = self.current_key()?;
        let pk = self.person_key(person, true)?.expect("created");
        let _w = self.writing();
        let key = self.template_key(person)?;
        self.t().templates.insert(key.as_bytes(), seal(&template_seal_key(&tk, &pk), person, embedding))?;
        Ok(())
    }

    /// The keys that may open a person's template, newest first: the
    /// template key mixed with the person's key (current, then previous
    /// template key), then the template key alone (sealed before
    /// crypto-shredding; `reseal_templates` upgrades those).
    fn opening_keys(&self, keys: &TemplateKeys, person: &str) -> Result<Vec<[u8; 32]>> {
        let pk = self.person_key(person, false)?;
        let mut v = Vec::new();
        for tk in std::iter::once(keys.current).chain(keys.previous) {
            if let Some(pk) = &pk {
                v.push(template_seal_key(&tk, pk));
            }
        }
        v.push(keys.current);
        v.extend(keys.previous);
        Ok(v)
    }

    /// Re-seal every template under the current key: templates from before
    /// encryption (schema 1) and templates sealed with the previous key.
    /// Returns how many were rewritten.
    pub fn reseal_templates(&self) -> Result<usize> {
        let _w = self.writing();
        let keys = self.keys.read().expect("keys").clone().ok_or(StoreError::NoTemplateKey)?;
        let mut n = 0;
        for kv in self.t().templates.iter() {
            let (k, v) = kv?;
            let ks = String::from_utf8_lossy(&k).to_string();
            let person = ks.split('\u{0}').next().unwrap_or_default().to_string();
            let pk = self.person_key(&person, true)?.expect("created");
            let target = template_seal_key(&keys.current, &pk);
            if unseal(&target, &person, &v).is_some() {
                continue;
            }
            let plain = match v.starts_with(SEALED) {
                true => {
                    self.opening_keys(&keys, &person)?.iter().find_map(|k| unseal(k, &person, &v)).ok_or(StoreError::TemplateKey { person: person.clone() })?
                }
                // Schema 1 stored raw little-endian f32.
                false => v.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            };
            self.t().templates.insert(k, seal(&target, &person, &plain))?;
            n += 1;
        }
        self.flush()?;
        Ok(n)
    }

    /// For tests: the stored bytes of every template, as an attacker with the disk sees them.
    #[doc(hidden)]
    pub fn raw_templates(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self.t().templates.iter().values().collect::<std::result::Result<Vec<_>, _>>()?.into_iter().map(|v| v.to_vec()).collect())
    }

    pub fn remove_templates(&self, person: &str) -> Result<usize> {
        let _w = self.writing();
        self.remove_templates_locked(person)
    }

    pub(crate) fn remove_templates_locked(&self, person: &str) -> Result<usize> {
        let prefix = format!("{person}\u{0}");
        let keys: Vec<_> = self.t().templates.scan_prefix(prefix.as_bytes()).keys().collect::<std::result::Result<_, _>>()?;
        for k in &keys {
            self.t().templates.remove(k)?;
        }
        Ok(keys.len())
    }

    /// Every (person, embedding), unsealed.
    pub fn templates(&self) -> Result<Vec<(String, Vec<f32>)>> {
        self.open_templates(self.t().templates.iter())
    }

    /// One person's templates, unsealed.
    pub fn templates_of(&self, person: &str) -> Result<Vec<Vec<f32>>> {
        let prefix = format!("{person}\u{0}");
        Ok(self.open_templates(self.t().templates.scan_prefix(prefix.as_bytes()))?.into_iter().map(|(_, e)| e).collect())
    }

    /// `person\0<id>`: one person's templates sort together.
    pub(crate) fn template_key(&self, person: &str) -> Result<String> {
        Ok(format!("{person}\u{0}{:020}", self.next_id()?))
    }

    pub(crate) fn open_templates(&self, it: sled::Iter) -> Result<Vec<(String, Vec<f32>)>> {
        let keys = self.keys.read().expect("keys").clone().ok_or(StoreError::NoTemplateKey)?;
        it.map(|kv| {
            let (k, v) = kv?;
            let person = String::from_utf8_lossy(&k).split('\u{0}').next().unwrap_or_default().to_string();
            let e = self.opening_keys(&keys, &person)?.iter().find_map(|k| unseal(k, &person, &v)).ok_or(StoreError::TemplateKey { person: person.clone() })?;
            Ok((person, e))
        })
        .collect()
    }

    /// How many templates each person has (no key needed).
    pub fn template_counts(&self) -> Result<std::collections::HashMap<String, usize>> {
        let mut m = std::collections::HashMap::new();
        for k in self.t().templates.iter().keys() {
            let k = k?;
            let person = String::from_utf8_lossy(&k).split('\u{0}').next().unwrap_or_default().to_string();
            *m.entry(person).or_insert(0) += 1;
        }
        Ok(m)
    }
}
