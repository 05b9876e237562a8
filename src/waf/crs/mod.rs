//! The OWASP Core Rule Set on the gateway: CRS v4's SecLang files read ([`seclang`]),
//! compiled once ([`compile`]) into rules whose operators are the engine's compiled
//! matchers (regex-automata meta regexes, Aho-Corasick phrase sets, the SQLi/XSS
//! detectors) and whose transformations are the engine's ([`xform`]), and run per request
//! ([`eval`]) with ModSecurity v3's semantics: phases 1 and 2 in file order, `TX`
//! variables and macro expansion, chains, `skipAfter` markers, `ctl` rule removal,
//! anomaly scoring and the blocking evaluation of `REQUEST-949`.
//!
//! Cost: a request pays for the rules its paranoia level reaches (CRS skips the others
//! with markers), one transformation and one literal scan per distinct (value,
//! transformation chain) pair, and the operators of the rules whose prefilters pass (see
//! [`eval`] for what is shared and the measured cost: about 200 µs for a browser GET at
//! PL 1, 1/10 of nginx + ModSecurity's CPU on the same files).
//! Memory: compiled CRS v4 (regexes, data files as phrase automata) plus each regex's lazy
//! DFA cache, capped at 256 KiB per thread: measured peak RSS under load 92 MiB with CRS
//! against 58 MiB without.
//! Failure modes: a rule the front end cannot translate (an unknown variable, operator,
//! transformation or action, or a regex needing look-around or back-references) is
//! reported by id and reason and fails the load unless `allow_partial`; response-phase
//! rules (phases 3–5) are counted and not run, as the gateway streams responses.
//! [`ftw`] replays CRS's own regression suite through this engine.

pub mod compile;
pub mod eval;
pub mod ftw;
pub mod seclang;
pub mod xform;

use std::path::{Path, PathBuf};

pub use compile::{Crs, LoadReport};
pub use eval::{CrsOutcome, Hit};

/// How CRS is loaded.
#[derive(Debug, Clone)]
pub struct CrsSettings {
    /// The CRS directory (holding `crs-setup.conf[.example]` and `rules/`).
    pub path: PathBuf,
    pub paranoia_level: u8,
    /// Rules up to this level run and are logged, only `paranoia_level` ones count for
    /// blocking (CRS's `detection_paranoia_level`).
    pub detection_paranoia_level: u8,
    pub inbound_threshold: u32,
    /// Load even when some rules cannot be translated (they are reported).
    pub allow_partial: bool,
    /// Further CRS setup variables (`tx.<name>`), e.g. `allowed_methods`.
    pub setup: Vec<(String, String)>,
    /// Rule ids removed (as `SecRuleRemoveById` after the rules).
    pub remove_ids: Vec<u32>,
    /// Count an attack family's score only when confirmed (see [`crate::waf::confirm`]).
    pub confirm: bool,
}

impl CrsSettings {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CrsSettings {
            path: path.into(),
            paranoia_level: 1,
            detection_paranoia_level: 1,
            inbound_threshold: 5,
            allow_partial: false,
            setup: Vec::new(),
            remove_ids: Vec::new(),
            confirm: true,
        }
    }
}

/// Why CRS did not load.
#[derive(Debug, thiserror::Error)]
pub enum CrsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Syntax {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{}: no CRS rule files (rules/*.conf) found", .0.display())]
    NoRules(PathBuf),
    #[error("{} CRS rules cannot be translated (set allow_partial = true to load the rest): {}", .0.len(), list(.0))]
    Untranslatable(Vec<(u32, String)>),
}

fn list(v: &[(u32, String)]) -> String {
    v.iter()
        .map(|(id, why)| format!("rule {id}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Whether a CRS variable name (`REQUEST_COOKIES:sid`, `REQUEST_HEADERS:Authorization`)
/// holds a secret whose value must not be logged.
pub fn is_secret_var(var: &str, data: &[u8]) -> bool {
    use crate::waf::redact::{is_secret_header, is_secret_name, mentions_secret};
    let (coll, key) = var.split_once(':').unwrap_or((var, ""));
    let coll = coll.to_ascii_uppercase();
    match coll.as_str() {
        "REQUEST_COOKIES" => true,
        "REQUEST_HEADERS" => is_secret_header(key.as_bytes()),
        "ARGS" | "ARGS_GET" | "ARGS_POST" | "FILES" | "XML" | "JSON" => {
            is_secret_name(key.as_bytes()) || (key.is_empty() && mentions_secret(data))
        }
        "ARGS_NAMES"
        | "ARGS_GET_NAMES"
        | "ARGS_POST_NAMES"
        | "REQUEST_HEADERS_NAMES"
        | "REQUEST_COOKIES_NAMES"
        | "REQUEST_METHOD"
        | "REQUEST_PROTOCOL"
        | "FILES_NAMES" => false,
        // Raw request parts (body, URI, query, line, combined): redacted when they name a
        // secret field anywhere.
        _ => mentions_secret(data),
    }
}

/// The files CRS loads, in order: the setup file, then `rules/*.conf` sorted by name.
pub fn files(dir: &Path) -> Result<Vec<PathBuf>, CrsError> {
    let mut out = Vec::new();
    let setup = dir.join("crs-setup.conf");
    let example = dir.join("crs-setup.conf.example");
    if setup.is_file() {
        out.push(setup);
    } else if example.is_file() {
        out.push(example);
    }
    let rules = dir.join("rules");
    let rd = std::fs::read_dir(&rules).map_err(|source| CrsError::Io {
        path: rules.clone(),
        source,
    })?;
    let mut confs: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "conf"))
        .collect();
    if confs.is_empty() {
        return Err(CrsError::NoRules(dir.to_path_buf()));
    }
    confs.sort();
    out.extend(confs);
    Ok(out)
}
