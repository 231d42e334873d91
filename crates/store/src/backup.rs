//! Backup and restore: a consistent, checksummed copy of every tree, taken
//! while writers pause, and a restore that swaps the new store in.

use super::*;

//
// A backup file is one JSON header line, then length-prefixed records, then a
// SHA-256 of everything before it, so a truncated or damaged file is refused
// before anything is touched:
//   b"GWBACKUP\n" {header json}\n ( b'T' name | b'R' key value )* b'E' sha256
// with every name, key and value as u32-LE length + bytes.

pub(crate) const BACKUP_MAGIC: &[u8] = b"GWBACKUP\n";

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

pub(crate) fn put_chunk(out: &mut Vec<u8>, b: &[u8]) {
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
        for name in self.t().db.tree_names() {
            let tree = self.t().db.open_tree(&name).map_err(StoreError::from)?;
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

    pub(crate) fn read_backup(bytes: &[u8]) -> std::result::Result<(BackupHeader, Vec<TreeDump>), BackupError> {
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
