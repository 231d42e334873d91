//! Retention bookkeeping: purges of ended leaves and old entries, and when each purge last ran.

use super::*;

impl Store {
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
            self.t().meta.insert("entry_log_anchor", enc(&(c.seq, c.hash.clone())))?;
            self.t().entries.remove(c.seq.to_be_bytes())?;
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
                self.t().leaves.remove(l.id.to_be_bytes())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Record when a purge of `what` last ran (for the compliance report).
    pub fn mark_purge(&self, what: &str, at: Timestamp, removed: usize) -> Result<()> {
        let _w = self.writing();
        self.t().meta.insert(format!("purge:{what}"), enc(&(at, removed)))?;
        Ok(())
    }

    pub fn last_purges(&self) -> Result<Vec<(String, Timestamp, usize)>> {
        self.t()
            .meta
            .scan_prefix("purge:")
            .map(|kv| {
                let (k, v) = kv?;
                let (at, n): (Timestamp, usize) = dec("meta", &v)?;
                Ok((String::from_utf8_lossy(&k)["purge:".len()..].to_string(), at, n))
            })
            .collect()
    }
}
