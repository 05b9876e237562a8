//! Session protection and brute-force login defence for the applications behind the
//! gateway (`[[apps]]`).
//!
//! The gateway learns sessions from the application's own cookie (or issues a signed
//! `__Host-` cookie itself, [`signed`]) and its login endpoint ([`login`]), validates them on
//! every request ([`table`]) and lets the operator see and end them (admin API). Session
//! ids are a keyed hash (HMAC-SHA256, first 128 bits, key in `[sessions] key_file`) of the
//! app name and cookie value: the raw cookie is never kept, logged or stored.
//!
//! Cost on the request path for a request carrying a session cookie: finding the cookie
//! (a scan of the `Cookie` header), one HMAC over it, one sharded-map lookup and a few
//! field updates under that shard's lock; no allocation and no I/O. Last-activity times
//! reach the store in batches every `persist_every`; new, ended and suspicious sessions at
//! once. Failed logins are counted in [`brute_force`].
//!
//! Time comes from [`Clock`], which tests can move forward.

pub mod brute_force;
pub mod cookies;
pub mod login;
pub mod phase;
pub mod policy;
pub mod signed;
pub mod store;
pub mod table;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub use policy::{AppPolicy, InvalidAction, Mode, OnLimit, Unknown};
pub use table::{Session, SessionTable, State};

use crate::events::model::now_micros;

/// `[sessions]`, compiled.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub key_file: PathBuf,
    pub cleanup_every: Duration,
    pub persist_every: Duration,
    pub retention: Duration,
    pub max_sessions: usize,
}

/// Wall-clock time in Unix microseconds, with an offset tests can advance.
#[derive(Default)]
pub struct Clock {
    offset: AtomicU64,
}

impl Clock {
    pub fn now(&self) -> u64 {
        now_micros() + self.offset.load(Ordering::Relaxed)
    }

    /// Moves this clock forward (tests: timeouts and lock expiry without waiting).
    pub fn advance(&self, by: Duration) {
        self.offset
            .fetch_add(by.as_micros() as u64, Ordering::Relaxed);
    }
}

/// Everything the session phases keep between requests.
pub struct Sessions {
    pub table: SessionTable,
    pub brute_force: brute_force::BruteForce,
    pub clock: Clock,
    cookie_key: Hmac<Sha256>,
}

impl Sessions {
    /// Sessions whose cookie hashes are keyed with `secret`.
    pub fn new(secret: &[u8]) -> Sessions {
        Sessions {
            table: SessionTable::default(),
            brute_force: Default::default(),
            clock: Clock::default(),
            cookie_key: Hmac::new_from_slice(secret).expect("HMAC takes any key length"),
        }
    }

    /// The session id for an application's cookie value.
    pub fn id_for(&self, app: &AppPolicy, cookie: &[u8]) -> u128 {
        let mut m = self.cookie_key.clone();
        m.update(app.name.as_bytes());
        m.update(&[0]);
        m.update(cookie);
        let out = m.finalize().into_bytes();
        let mut b = [0u8; 16];
        b.copy_from_slice(&out[..16]);
        u128::from_be_bytes(b)
    }

    /// A fresh random session id (signed mode).
    pub fn new_id() -> u128 {
        let mut b = [0u8; 16];
        crate::secrets::fill_random(&mut b);
        u128::from_be_bytes(b)
    }
}

/// The `[sessions]` section, validated, with the key file resolved under `server.data_dir`.
pub fn compile_settings(
    cfg: &crate::config::LoadedConfig,
    errs: &mut crate::config::ConfigErrors,
) -> SessionSettings {
    use crate::config::KeyPath;
    let raw = &cfg.raw;
    let s = &raw.sessions;
    let at = KeyPath::root().key("sessions");
    for (key, d) in [
        ("cleanup_every", s.cleanup_every),
        ("persist_every", s.persist_every),
        ("retention", s.retention),
    ] {
        if d < Duration::from_secs(1) {
            errs.push(cfg.error(&at.key(key), "must be at least 1s"));
        }
    }
    if s.max_sessions == 0 {
        errs.push(cfg.error(&at.key("max_sessions"), "must be at least 1"));
    }
    SessionSettings {
        key_file: cfg.resolve(&raw.server.data_dir).join(&s.key_file),
        cleanup_every: s.cleanup_every.max(Duration::from_secs(1)),
        persist_every: s.persist_every.max(Duration::from_secs(1)),
        retention: s.retention,
        max_sessions: s.max_sessions.max(1),
    }
}
