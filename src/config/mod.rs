//! Configuration: the raw `gateway.toml` as serde reads it, and loading it from disk.
//!
//! Loading is two steps. [`load`] reads the file and deserializes it into [`RawConfig`]
//! (`deny_unknown_fields` everywhere, so a typo is an error, not a silent default).
//! [`crate::runtime::Runtime::compile`] then validates it and builds the immutable
//! structures the request path reads, collecting every error at once. Every error carries
//! the file, line, column and key it is about (see [`ConfigError`]).
//!
//! Relative paths in the file (certificates, data directory) are resolved against the
//! directory that holds the config file, so the gateway behaves the same from any cwd.

mod error;
mod locate;
mod raw;
mod redact;

pub use error::{ConfigError, ConfigErrors};
pub use locate::{KeyPath, Locator};
pub use raw::*;
pub use redact::{redact_secrets, REDACTED};

use std::path::{Path, PathBuf};

/// A config file read from disk: the raw values plus what is needed to point at lines.
#[derive(Debug)]
pub struct LoadedConfig {
    pub raw: RawConfig,
    /// The file it was read from.
    pub path: PathBuf,
    pub locator: Locator,
    /// The directory relative paths are resolved against.
    pub base_dir: PathBuf,
}

impl LoadedConfig {
    /// Resolves a path from the config file against the config file's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// An error about the value at `path`.
    pub fn error(&self, path: &KeyPath, message: impl Into<String>) -> ConfigError {
        self.locator.error(path, message)
    }
}

/// Reads and deserializes a config file. Syntax and type errors come back located.
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::from(ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {e}"),
        })
    })?;
    load_str(path, text)
}

/// Deserializes config text as if it had been read from `path`.
pub fn load_str(path: &Path, text: String) -> Result<LoadedConfig, ConfigErrors> {
    let locator = Locator::new(path.to_path_buf(), text);
    let raw: RawConfig = match toml::from_str(locator.text()) {
        Ok(raw) => raw,
        Err(e) => return Err(locator.from_toml_error(&e).into()),
    };
    let base_dir = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                p.to_path_buf()
            }
        })
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedConfig {
        raw,
        path: path.to_path_buf(),
        locator,
        base_dir,
    })
}
