//! Switchyard's configuration: the TOML schema with its defaults, duration parsing, and
//! validation that reports every problem at once. A [`Config`] that exists has been validated.
#![forbid(unsafe_code)]

mod admin;
mod duration;
mod redact;
mod schema;
mod validate;

pub use admin::{AdminConfig, WebhookConfig, WebhookFormat};
pub use duration::Duration;
pub use schema::*;
pub use validate::{ConfigError, ValidationErrors};

use std::path::Path;

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let raw: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(redact::parse_error(&e, text)))?;
        raw.validate().map_err(ConfigError::Invalid)?;
        Ok(raw)
    }

    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_toml(&text)
    }
}
