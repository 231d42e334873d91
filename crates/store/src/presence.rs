//! Presence: last-seen (written behind), the bounded sighting history, unknown bands and gateways.

use super::*;

/// The sighting history records movements, not heartbeats: an entry when the
/// place changes (at most once a minute, so an elder between two gateways
/// does not flap into it) and otherwise one an hour. A stationary elder costs
/// 24 entries a day; 5,000 of them seen every second would otherwise cost
/// one write each per flush.
pub(crate) fn history_due(last: Option<&(Timestamp, String)>, l: &LastSeen) -> bool {
    match last {
        None => true,
        Some((at, place)) => {
            let gap = l.at - *at;
            gap >= chrono::Duration::hours(1) || (*place != l.place && gap >= chrono::Duration::minutes(1))
        }
    }
}

pub(crate) fn history_key(elder: &str, at: Timestamp) -> Vec<u8> {
    let mut k = format!("{elder}\u{0}").into_bytes();
    k.extend_from_slice(&at.timestamp_millis().to_be_bytes());
    k
}

impl Store {
    /// Last-seen for each elder, and (when `history` is on) their movements
    /// into the bounded sighting history.
    pub fn put_last_seen_batch(&self, items: &[(String, LastSeen)], history: bool) -> Result<()> {
        let _w = self.writing();
        let mut b = sled::Batch::default();
        let mut h = sled::Batch::default();
        let mut last = self.history_last.lock().unwrap_or_else(|e| e.into_inner());
        for (id, l) in items {
            b.insert(id.as_bytes(), enc(l));
            if history && history_due(last.get(id), l) {
                last.insert(id.clone(), (l.at, l.place.clone()));
                h.insert(history_key(id, l.at), enc(l));
            }
        }
        drop(last);
        self.t().last_seen.apply_batch(b)?;
        // The bounded whereabouts window (PIPL Art. 28): purged by `purge_history`.
        self.t().history.apply_batch(h)?;
        Ok(())
    }

    /// An elder's recent movements (see `history_due`), oldest first.
    pub fn history(&self, elder: &str) -> Result<Vec<LastSeen>> {
        self.t().history.scan_prefix(format!("{elder}\u{0}").as_bytes()).values().map(|v| dec("sighting_history", &v?)).collect()
    }

    /// Drop history older than `before`, and beyond `max_per_elder` per elder.
    pub fn purge_history(&self, before: Timestamp, max_per_elder: usize) -> Result<usize> {
        let _w = self.writing();
        let mut doomed = Vec::new();
        let mut per: std::collections::HashMap<Vec<u8>, Vec<(sled::IVec, Timestamp)>> = Default::default();
        for kv in self.t().history.iter() {
            let (k, v) = kv?;
            let l: LastSeen = dec("sighting_history", &v)?;
            let elder = k.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            if l.at < before {
                doomed.push(k);
            } else {
                per.entry(elder).or_default().push((k, l.at));
            }
        }
        for (_, mut v) in per {
            if v.len() > max_per_elder {
                v.sort_by_key(|(_, at)| *at);
                let extra = v.len() - max_per_elder;
                doomed.extend(v.into_iter().take(extra).map(|(k, _)| k));
            }
        }
        for k in &doomed {
            self.t().history.remove(k)?;
        }
        Ok(doomed.len())
    }

    pub(crate) fn remove_history_locked(&self, elder: &str) -> Result<usize> {
        self.history_last.lock().unwrap_or_else(|e| e.into_inner()).remove(elder);
        let keys: Vec<_> = self.t().history.scan_prefix(format!("{elder}\u{0}").as_bytes()).keys().collect::<std::result::Result<_, _>>()?;
        for k in &keys {
            self.t().history.remove(k)?;
        }
        Ok(keys.len())
    }

    pub fn get_last_seen(&self, id: &str) -> Result<Option<LastSeen>> {
        self.t().last_seen.get(id.as_bytes())?.map(|v| dec("last_seen", &v)).transpose()
    }

    pub fn put_unknown_batch(&self, changed: &[UnknownBand], removed: &[BandId]) -> Result<()> {
        let _w = self.writing();
        let mut b = sled::Batch::default();
        for u in changed {
            b.insert(band_key(&u.band), enc(u));
        }
        for r in removed {
            b.remove(band_key(r));
        }
        self.t().unknown.apply_batch(b)?;
        Ok(())
    }

    pub fn list_unknown(&self) -> Result<Vec<UnknownBand>> {
        all(&self.t().unknown, "unknown_bands")
    }

    pub fn put_gateways(&self, items: &[(String, Timestamp)]) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let _w = self.writing();
        let mut b = sled::Batch::default();
        for (name, at) in items {
            b.insert(name.as_bytes(), enc(at));
        }
        self.t().gateways.apply_batch(b)?;
        Ok(())
    }

    pub fn list_gateways(&self) -> Result<Vec<(String, Timestamp)>> {
        self.t()
            .gateways
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k).to_string(), dec("gateways", &v)?))
            })
            .collect()
    }
}
