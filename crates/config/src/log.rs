//! The `[log]` section: level and format.

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. "info" or "gatewarden=debug,info". RUST_LOG overrides it.
    #[serde(default = "LogConfig::default_level")]
    pub level: String,
}
impl LogConfig {
    fn default_level() -> String {
        "info".into()
    }
}
impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: Self::default_level() }
    }
}
