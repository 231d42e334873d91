//! The hash-chained entry log (its head is in `meta`).

use super::*;

impl Store {
    /// Append a decision to the hash chain (atomically with the head). The
    /// chain covers the stored form, whose reason is sealed under the
    /// person's key (`shred`); the returned record is that stored form.
    pub fn append_entry(&self, e: &Entry) -> Result<Chained> {
        let e = &self.seal_reason(e)?;
        let key = self.entry_key()?;
        let _w = self.writing();
        let r = (&self.t().entries, &self.t().meta).transaction(|(ent, meta)| {
            let (seq, prev) = match meta.get("entry_log_head")? {
                Some(v) => {
                    let (s, h): (u64, String) = dec("meta", &v).map_err(ConflictableTransactionError::Abort)?;
                    (s + 1, h)
                }
                None => (1, entry_log::GENESIS.to_string()),
            };
            let hash = entry_log::hash(&key, seq, &prev, e);
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
        let Some(first) = all::<Chained>(&self.t().entries, "entry_log")?.into_iter().find(|c| c.entry.person.as_deref() == Some(person)).map(|c| c.seq) else {
            return Ok(0);
        };
        let n = std::cell::Cell::new(0);
        self.rechain_from(first, |_, e| {
            let mut e = e.clone();
            if e.person.as_deref() == Some(person) {
                e.person = Some(replacement.to_string());
                // The reason may name a plate: it goes too.
                e.reason = "(forgotten)".into();
                n.set(n.get() + 1);
            }
            Ok(e)
        })?;
        Ok(n.get())
    }

    /// Rewrite every record from `first` on through `f` and re-chain them, in
    /// one transaction with the head, so the log keeps verifying. Returns how
    /// many records were rewritten.
    pub(crate) fn rechain_from(&self, first: u64, f: impl Fn(&Store, &Entry) -> Result<Entry>) -> Result<usize> {
        let key = self.entry_key()?;
        let all: Vec<Chained> = all(&self.t().entries, "entry_log")?;
        let Some(first) = all.iter().position(|c| c.seq >= first) else { return Ok(0) };
        let mut prev =
            if first == 0 { self.entry_anchor()?.map(|(_, h)| h).unwrap_or_else(|| entry_log::GENESIS.to_string()) } else { all[first - 1].hash.clone() };
        let mut rewritten = Vec::with_capacity(all.len() - first);
        for c in &all[first..] {
            let e = f(self, &c.entry)?;
            let hash = entry_log::hash(&key, c.seq, &prev, &e);
            rewritten.push(Chained { seq: c.seq, prev: prev.clone(), hash: hash.clone(), entry: e });
            prev = hash;
        }
        let head = rewritten.last().map(|c| (c.seq, c.hash.clone()));
        let _w = self.writing();
        let r = (&self.t().entries, &self.t().meta).transaction(|(ent, meta)| {
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
        Ok(rewritten.len())
    }

    /// The key the chain is computed with (`entry.key`, outside the store).
    pub fn set_entry_key(&self, key: Vec<u8>) {
        *self.entry_key.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    fn entry_key(&self) -> Result<Vec<u8>> {
        self.entry_key.read().unwrap_or_else(|e| e.into_inner()).clone().ok_or(StoreError::NoEntryKey)
    }

    /// Whether the chain is keyed (then its key file must exist).
    pub fn entry_log_keyed(&self) -> Result<bool> {
        Ok(self.t().meta.get("entry_log_keyed")?.is_some())
    }

    /// At start-up, once: re-chain a log from before keyed chains under the
    /// key. Returns how many records were re-chained.
    pub fn key_entry_log(&self) -> Result<usize> {
        if self.entry_log_keyed()? {
            return Ok(0);
        }
        let n = self.rechain_from(1, |_, e| Ok(e.clone()))?;
        {
            let _w = self.writing();
            self.t().meta.insert("entry_log_keyed", enc(&true))?;
        }
        self.flush()?;
        Ok(n)
    }

    /// Check the whole chain, from the purge anchor to the head, under the key.
    pub fn verify_entries(&self) -> Result<std::result::Result<u64, entry_log::ChainError>> {
        let key = self.entry_key()?;
        let head = self.entry_head()?;
        let anchor = self.entry_anchor()?;
        // A crash mid-purge can leave the anchor past a record still present: skip those.
        let entries: Vec<Chained> = self.entries()?.into_iter().filter(|c| anchor.as_ref().is_none_or(|(a, _)| c.seq > *a)).collect();
        Ok(entry_log::verify(&key, &entries, head.as_ref().map(|(s, h)| (*s, h.as_str())), anchor.as_ref().map(|(s, h)| (*s, h.as_str()))))
    }

    pub fn entries(&self) -> Result<Vec<Chained>> {
        all(&self.t().entries, "entry_log")
    }

    /// The (seq, hash) of the last record removed by the retention purge.
    pub fn entry_anchor(&self) -> Result<Option<(u64, String)>> {
        self.t().meta.get("entry_log_anchor")?.map(|v| dec("meta", &v)).transpose()
    }

    pub fn entry_head(&self) -> Result<Option<(u64, String)>> {
        self.t().meta.get("entry_log_head")?.map(|v| dec("meta", &v)).transpose()
    }

    /// For tests of `log verify` only: overwrite a stored record as an attacker would.
    #[doc(hidden)]
    pub fn tamper_entry(&self, c: &Chained) -> Result<()> {
        let _w = self.writing();
        self.t().entries.insert(c.seq.to_be_bytes(), enc(c))?;
        Ok(())
    }
}
