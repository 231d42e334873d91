//! Damage detection. sled recovers a damaged log by stopping at the first bad
//! segment, so a flipped byte can silently roll the store back or empty it.
//! Every write bumps a generation counter in `meta` first; a manifest file
//! beside the trees (outside sled) records the generation, the store's
//! identity, and the count and SHA-256 of every critical tree, at each clean
//! stop and periodically. At start-up the store must not be older than its
//! manifest, and when nothing was written since, it must match it exactly.

use super::*;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Trees whose every record someone was told about: enrolment, credentials,
/// staff and console users. (Alerts, the outbox and the entry log change
/// every second; the generation check covers them against roll-back.)
const CRITICAL: [&str; 9] = ["elders", "bands", "staff", "ladders", "leaves", "people", "vehicles", "face_templates", "users"];

/// The manifest's file name, inside the store's directory (sled ignores it,
/// and a restore, which swaps whole directories, starts without one).
pub const MANIFEST: &str = "gatewarden-integrity.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSum {
    pub count: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub store_id: String,
    pub generation: u64,
    /// Unix seconds.
    pub written_at: i64,
    /// Written by a clean stop (else periodically while running).
    pub clean: bool,
    pub trees: BTreeMap<String, TreeSum>,
}

/// What `check_integrity` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Integrity {
    /// No manifest yet (a new store, or one just restored).
    Unrecorded,
    /// Matches its manifest exactly (nothing was written since).
    Exact,
    /// Written since its manifest, and not rolled back.
    Newer { writes_since: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum Damage {
    #[error(
        "the store's identity is {found:?} but its manifest names {expected:?}: this is not the store that was running here (an empty or replaced database)"
    )]
    Identity { expected: String, found: String },
    #[error("the store went back in time: generation {found} is older than the {expected} recorded in its manifest (records written since were lost)")]
    RolledBack { expected: u64, found: u64 },
    #[error("tree {tree}: {found_count} records (sha256 {found_sha}) but the manifest recorded {expected_count} ({expected_sha})")]
    Tree { tree: String, expected_count: u64, found_count: u64, expected_sha: String, found_sha: String },
    #[error("the manifest {path} is unreadable: {reason}")]
    Manifest { path: String, reason: String },
}

impl Store {
    /// The directory sled lives in (the manifest sits there too).
    fn manifest_path(&self) -> std::path::PathBuf {
        self.path.join(MANIFEST)
    }

    /// Count one more write, before it happens (see the module comment).
    pub(crate) fn bump_generation(&self) {
        // An error here surfaces on the write that follows.
        let _ = self.t().meta.update_and_fetch("generation", |v| {
            let n = v.and_then(|b| <[u8; 8]>::try_from(b).ok()).map_or(0, u64::from_be_bytes);
            Some((n + 1).to_be_bytes().to_vec())
        });
    }

    pub fn generation(&self) -> Result<u64> {
        Ok(self.t().meta.get("generation")?.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok()).map_or(0, u64::from_be_bytes))
    }

    /// This store's identity, made when it was created.
    pub fn store_id(&self) -> Result<String> {
        if let Some(v) = self.t().meta.get("store_id")? {
            return dec("meta", &v);
        }
        let id = {
            use rand::Rng;
            hex::encode(rand::thread_rng().gen::<[u8; 16]>())
        };
        self.t().meta.insert("store_id", enc(&id))?;
        Ok(id)
    }

    fn tree_sums(&self) -> Result<BTreeMap<String, TreeSum>> {
        use sha2::Digest;
        let mut out = BTreeMap::new();
        for name in CRITICAL {
            let tree = self.t().db.open_tree(name)?;
            let mut h = sha2::Sha256::new();
            let mut count = 0;
            for kv in tree.iter() {
                let (k, v) = kv?;
                h.update((k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update((v.len() as u64).to_be_bytes());
                h.update(&v);
                count += 1;
            }
            out.insert(name.to_string(), TreeSum { count, sha256: hex::encode(h.finalize()) });
        }
        Ok(out)
    }

    fn read_manifest(&self) -> std::result::Result<Option<Manifest>, Damage> {
        let path = self.manifest_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Damage::Manifest { path: path.display().to_string(), reason: e.to_string() }),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| Damage::Manifest { path: path.display().to_string(), reason: e.to_string() })
    }

    /// Compare the store with its manifest. Reads every critical record.
    pub fn check_integrity(&self) -> Result<std::result::Result<Integrity, Damage>> {
        let m = match self.read_manifest() {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(Ok(Integrity::Unrecorded)),
            Err(d) => return Ok(Err(d)),
        };
        // Read, never create: a store without an identity did not write this manifest.
        let found_id = self.t().meta.get("store_id")?.map(|v| dec::<String>("meta", &v)).transpose()?.unwrap_or_default();
        if found_id != m.store_id {
            return Ok(Err(Damage::Identity { expected: m.store_id, found: found_id }));
        }
        let g = self.generation()?;
        if g < m.generation {
            return Ok(Err(Damage::RolledBack { expected: m.generation, found: g }));
        }
        if g > m.generation {
            return Ok(Ok(Integrity::Newer { writes_since: g - m.generation }));
        }
        let sums = self.tree_sums()?;
        for (tree, want) in &m.trees {
            let got = sums.get(tree).cloned().unwrap_or(TreeSum { count: 0, sha256: String::new() });
            if &got != want {
                return Ok(Err(Damage::Tree {
                    tree: tree.clone(),
                    expected_count: want.count,
                    found_count: got.count,
                    expected_sha: want.sha256.clone(),
                    found_sha: got.sha256,
                }));
            }
        }
        Ok(Ok(Integrity::Exact))
    }

    /// Flush, then record the manifest (written to a temporary file, fsynced,
    /// renamed): at a clean stop, after a start-up check that found it newer or unrecorded, and periodically.
    pub fn write_manifest(&self, now: i64, clean: bool) -> Result<Manifest> {
        let store_id = self.store_id()?;
        // Writers wait, and the flush happens under the gate: the manifest must
        // never name a generation that a kill -9 could still take back.
        let _frozen = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.t().db.flush()?;
        let m = Manifest { store_id, generation: self.generation()?, written_at: now, clean, trees: self.tree_sums()? };
        let path = self.manifest_path();
        write_private(&path, &serde_json::to_vec_pretty(&m).expect("manifest serializes"))
            .map_err(|source| StoreError::ManifestIo { path: path.display().to_string(), source })?;
        Ok(m)
    }

    /// Records per tree, for `store check`.
    pub fn tree_counts(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        for name in self.t().db.tree_names() {
            let tree = self.t().db.open_tree(&name)?;
            let mut n = 0;
            for kv in tree.iter() {
                kv?;
                n += 1;
            }
            out.push((String::from_utf8_lossy(&name).into_owned(), n));
        }
        Ok(out)
    }
}
