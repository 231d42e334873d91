//! Elders and their wristbands (a unique band → elder index), and leaves.

use super::*;

pub(crate) fn band_key(b: &BandId) -> Vec<u8> {
    b.to_string().into_bytes()
}

impl Store {
    /// Insert or replace an elder, keeping the wristband index unique. Refuses
    /// a band that belongs to someone else.
    pub fn put_elder(&self, e: &Elder, must_be_new: bool) -> Result<()> {
        let _w = self.writing();
        let r = (&self.t().elders, &self.t().bands).transaction(|(elders, bands)| {
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
            self.t().unknown.remove(band_key(b))?;
        }
        Ok(())
    }

    pub fn get_elder(&self, id: &str) -> Result<Option<Elder>> {
        self.t().elders.get(id.as_bytes())?.map(|v| dec("elders", &v)).transpose()
    }

    pub fn list_elders(&self) -> Result<Vec<Elder>> {
        all(&self.t().elders, "elders")
    }

    pub fn elder_for_band(&self, b: &BandId) -> Result<Option<String>> {
        Ok(self.t().bands.get(band_key(b))?.map(|v| String::from_utf8_lossy(&v).to_string()))
    }

    /// Remove an elder with their bands, last-seen record and leaves.
    pub fn remove_elder(&self, id: &str) -> Result<Elder> {
        let _w = self.writing();
        let e = self.get_elder(id)?.ok_or_else(|| StoreError::NotFound { what: "elder", id: id.into() })?;
        for b in &e.bands {
            self.t().bands.remove(band_key(b))?;
        }
        self.t().last_seen.remove(id.as_bytes())?;
        self.remove_history_locked(id)?;
        for l in self.list_leaves(Some(id))? {
            self.t().leaves.remove(l.id.to_be_bytes())?;
        }
        self.t().elders.remove(id.as_bytes())?;
        Ok(e)
    }

    pub fn put_leave(&self, l: &Leave) -> Result<()> {
        let _w = self.writing();
        self.t().leaves.insert(l.id.to_be_bytes(), enc(l))?;
        Ok(())
    }

    pub fn list_leaves(&self, elder: Option<&str>) -> Result<Vec<Leave>> {
        Ok(all::<Leave>(&self.t().leaves, "leaves")?.into_iter().filter(|l| elder.is_none_or(|e| l.elder == e)).collect())
    }

    pub fn remove_leave(&self, id: u64) -> Result<Leave> {
        let _w = self.writing();
        let v = self.t().leaves.remove(id.to_be_bytes())?.ok_or_else(|| StoreError::NotFound { what: "leave", id: id.to_string() })?;
        dec("leaves", &v)
    }
}
