//! Enrolment sync: the version of each record this box holds.

use super::*;

impl Store {
    /// The version of a synced record this box holds (0: none).
    /// The version of a record this box holds within a source epoch (0: none).
    pub fn sync_version(&self, epoch: u64, kind: &str, id: &str) -> Result<u64> {
        Ok(self.t().meta.get(self.sync_key(epoch, kind, id)?)?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    pub fn set_sync_version(&self, epoch: u64, kind: &str, id: &str, v: u64) -> Result<()> {
        let k = self.sync_key(epoch, kind, id)?;
        let _w = self.writing();
        self.t().meta.insert(k, enc(&v))?;
        Ok(())
    }

    /// A plate is never a key in the clear (see `shred`).
    fn sync_key(&self, epoch: u64, kind: &str, id: &str) -> Result<Vec<u8>> {
        let id = if kind == "vehicle" { self.vehicle_index(id)? } else { id.as_bytes().to_vec() };
        Ok([format!("syncv\u{0}{epoch}\u{0}{kind}\u{0}").as_bytes(), &id].concat())
    }

    /// The enrolment epoch: on the source, its own; on a replica, the newest seen.
    pub fn sync_epoch(&self) -> Result<u64> {
        Ok(self.t().meta.get("sync_epoch")?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    pub fn set_sync_epoch(&self, epoch: u64) -> Result<()> {
        {
            let _w = self.writing();
            self.t().meta.insert("sync_epoch", enc(&epoch))?;
        }
        self.flush()
    }

    /// The site day whose morning watch list went out last (`YYYY-MM-DD`).
    pub fn watch_list_sent(&self) -> Result<Option<String>> {
        self.t().meta.get("watch_list_day")?.map(|v| dec("meta", &v)).transpose()
    }

    pub fn set_watch_list_sent(&self, day: &str) -> Result<()> {
        {
            let _w = self.writing();
            self.t().meta.insert("watch_list_day", enc(&day.to_string()))?;
        }
        self.flush()
    }
}
