//! Alert episodes and the outbox: committed together, fsynced before any send.

use super::*;

impl Store {
    /// Persist alert changes and enqueue their notifications atomically, then
    /// fsync: a notification is durable before any attempt to send it.
    pub fn commit_alerts(&self, alerts: &[Alert], notifications: &mut [Notification]) -> Result<()> {
        let _w = self.writing();
        for n in notifications.iter_mut() {
            n.id = self.next_id()?;
        }
        (&self.t().alerts, &self.t().outbox)
            .transaction(|(at, ot)| {
                for a in alerts {
                    at.insert(&a.id.to_be_bytes(), enc(a))?;
                }
                for n in notifications.iter() {
                    ot.insert(&n.id.to_be_bytes(), enc(n))?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(()) => unreachable!("no aborts"),
                TransactionError::Storage(e) => StoreError::Sled(e),
            })?;
        self.flush()
    }

    pub fn get_alert(&self, id: AlertId) -> Result<Option<Alert>> {
        self.t().alerts.get(id.to_be_bytes())?.map(|v| dec("alerts", &v)).transpose()
    }

    /// Alerts, newest first.
    pub fn list_alerts(&self) -> Result<Vec<Alert>> {
        let mut v: Vec<Alert> = all(&self.t().alerts, "alerts")?;
        v.reverse();
        Ok(v)
    }

    /// Notifications not yet delivered (pending, and failed permanently), oldest first.
    pub fn outbox(&self) -> Result<Vec<Notification>> {
        all(&self.t().outbox, "outbox")
    }

    pub fn outbox_for_channel(&self, channel: &str) -> Result<Vec<Notification>> {
        Ok(self.outbox()?.into_iter().filter(|n| n.channel == channel).collect())
    }

    /// Record the outcome of an attempt. A delivered notification moves to the
    /// delivery log; anything else stays in the outbox.
    pub fn update_notification(&self, n: &Notification) -> Result<()> {
        let _w = self.writing();
        let key = n.id.to_be_bytes();
        if n.delivery == Delivery::Delivered {
            (&self.t().outbox, &self.t().deliveries)
                .transaction(|(o, d)| {
                    o.remove(&key)?;
                    d.insert(&key, enc(n))?;
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(()) => unreachable!("no aborts"),
                    TransactionError::Storage(e) => StoreError::Sled(e),
                })?;
        } else {
            self.t().outbox.insert(key, enc(n))?;
        }
        Ok(())
    }

    /// Put a permanently failed notification back in the queue (after fixing the channel).
    pub fn retry_notification(&self, id: u64, now: Timestamp) -> Result<Notification> {
        let _w = self.writing();
        let v = self.t().outbox.get(id.to_be_bytes())?.ok_or_else(|| StoreError::NotFound { what: "notification", id: id.to_string() })?;
        let mut n: Notification = dec("outbox", &v)?;
        n.delivery = Delivery::Pending;
        n.next_attempt_at = now;
        self.t().outbox.insert(id.to_be_bytes(), enc(&n))?;
        Ok(n)
    }

    /// Drop delivered notifications older than `before`; returns how many.
    pub fn purge_deliveries(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for kv in self.t().deliveries.iter() {
            let (k, v) = kv?;
            let d: Notification = dec("deliveries", &v)?;
            if d.delivered_at.is_some_and(|t| t < before) {
                self.t().deliveries.remove(k)?;
                n += 1;
            }
        }
        Ok(n)
    }
}
