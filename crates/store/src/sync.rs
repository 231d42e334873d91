//! Enrolment sync: the version of each record this box holds.

use super::*;

impl Store {
    /// The version of a synced record this box holds (0: none).
    pub fn sync_version(&self, kind: &str, id: &str) -> Result<u64> {
        Ok(self.t().meta.get(format!("syncv\u{0}{kind}\u{0}{id}"))?.map(|v| dec("meta", &v)).transpose()?.unwrap_or(0))
    }

    pub fn set_sync_version(&self, kind: &str, id: &str, v: u64) -> Result<()> {
        let _w = self.writing();
        self.t().meta.insert(format!("syncv\u{0}{kind}\u{0}{id}"), enc(&v))?;
        Ok(())
    }
}
