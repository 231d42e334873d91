//! The `[console]` section: web console logins and sessions.

use crate::Dur;
use serde::Deserialize;

/// The web console at `/console/` (same listener as the API).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    #[serde(default = "ConsoleConfig::default_session_ttl")]
    pub session_ttl: Dur,
    /// Failed logins (per user name, and per client address) within
    /// `login_window` before further attempts are refused for the window.
    #[serde(default = "ConsoleConfig::default_login_max_failures")]
    pub login_max_failures: usize,
    #[serde(default = "ConsoleConfig::default_login_window")]
    pub login_window: Dur,
    /// How long the audit log of admin writes is kept.
    #[serde(default = "ConsoleConfig::default_audit_retention")]
    pub audit_retention: Dur,
}

impl ConsoleConfig {
    fn default_session_ttl() -> Dur {
        Dur::secs(12 * 3600)
    }
    fn default_login_max_failures() -> usize {
        5
    }
    fn default_login_window() -> Dur {
        Dur::secs(15 * 60)
    }
    fn default_audit_retention() -> Dur {
        Dur::secs(3 * 365 * 86400)
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        toml::from_str("").expect("console defaults")
    }
}
