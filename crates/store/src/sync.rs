//! Enrolment sync: the version of each record this box holds.

use super::*;

impl Store {
    /// The version of a synced record this box holds (0: none).
    pub fn sync_version(&self, kind: &str, id: &str) -> Result<u64> {
        Ok(self.t().meta.get(self.sync_key(kind, id)?)?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    pub fn set_sync_version(&self, kind: &str, id: &str, v: u64) -> Result<()> {
        let k = self.sync_key(kind, id)?;
        let _w = self.writing();
        self.t().meta.insert(k, enc(&v))?;
        Ok(())
    }

    /// A plate is never a key in the clear (see `shred`).
    fn sync_key(&self, kind: &str, id: &str) -> Result<Vec<u8>> {
        let id = if kind == "vehicle" { self.vehicle_index(id)? } else { id.as_bytes().to_vec() };
        Ok([format!("syncv\u{0}{kind}\u{0}").as_bytes(), &id].concat())
    }
}
