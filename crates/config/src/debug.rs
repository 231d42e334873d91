//! The `[debug]` section: test and demo aids.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    /// Lets `POST /api/v1/debug/clock` move the daemon's clock forward.
    /// For tests and demos only; never enable on a real gate.
    #[serde(default)]
    pub manual_clock: bool,
}
