//! Console users (argon2id hashes) and the audit log of admin writes.

use super::*;

/// A console user. The password is an argon2id PHC string, never the password.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct User {
    pub name: String,
    /// "admin" or "staff".
    pub role: String,
    pub password_hash: String,
    pub created_at: Timestamp,
}

/// Who changed what, and when: one entry per admin write (API or console).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub id: u64,
    pub at: Timestamp,
    /// A console user's name, or "admin-token" for the CLI.
    pub actor: String,
    pub role: String,
    /// e.g. "POST /elders".
    pub action: String,
    /// What it touched, e.g. "elder E00012". For `forget`, a keyed hash of the
    /// id instead: the entry proves the erasure without naming the person.
    pub target: String,
    pub status: u16,
}

impl Store {
    pub fn put_user(&self, u: &User) -> Result<()> {
        let _w = self.writing();
        self.t().users.insert(u.name.as_bytes(), enc(u))?;
        Ok(())
    }

    pub fn get_user(&self, name: &str) -> Result<Option<User>> {
        self.t().users.get(name.as_bytes())?.map(|v| dec("users", &v)).transpose()
    }

    pub fn list_users(&self) -> Result<Vec<User>> {
        all(&self.t().users, "users")
    }

    pub fn remove_user(&self, name: &str) -> Result<User> {
        let _w = self.writing();
        let u = self.get_user(name)?.ok_or_else(|| StoreError::NotFound { what: "user", id: name.into() })?;
        self.t().users.remove(name.as_bytes())?;
        Ok(u)
    }

    /// Append to the audit log of admin writes (fsynced: it is evidence).
    pub fn append_audit(&self, e: &mut AuditEntry) -> Result<()> {
        e.id = self.next_id()?;
        let _w = self.writing();
        self.t().audit.insert(e.id.to_be_bytes(), enc(e))?;
        self.t().db.flush()?;
        Ok(())
    }

    /// Newest first.
    pub fn list_audit(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.t().audit.iter().values().rev().take(limit).map(|v| dec("audit_log", &v?)).collect()
    }

    pub fn purge_audit(&self, before: Timestamp) -> Result<usize> {
        let _w = self.writing();
        let mut n = 0;
        for kv in self.t().audit.iter() {
            let (k, v) = kv?;
            let e: AuditEntry = dec("audit_log", &v)?;
            if e.at >= before {
                break;
            }
            self.t().audit.remove(k)?;
            n += 1;
        }
        Ok(n)
    }
}
