//! Session protection and brute-force login defence for the applications behind the
//! gateway (`[[apps]]`).
//!
//! The gateway learns sessions from the application's own cookie (or issues a signed
//! `__Host-` cookie itself, [`signed`]) and its login endpoint ([`login`]), validates them on
//! every request ([`table`]) and lets the operator see and end them (admin API). Session
//! ids are a keyed hash (SipHash-1-3 with 128-bit output, as Rust's own `HashMap` uses, a PRF keyed by 128 bits derived
//! from `[sessions] key_file`) of the app name and cookie value: the raw cookie is never
//! kept, logged or stored, and without the key a stored id reveals nothing about it.
//! SipHash rather than HMAC-SHA256 because it costs ~25 ns here against ~195 ns (two
//! SHA-256 blocks) and the id is never shown to the client, so nothing is gained by a MAC.
//!
//! Cost on the request path for a request carrying a session cookie: finding the cookie
//! (a scan of the `Cookie` header), one SipHash over it, one sharded-map lookup and a few
//! field updates under that shard's lock; no allocation and no I/O. Measured with 100,000
//! active sessions: see `benches/security.rs`. Last-activity times
//! reach the store in batches every `persist_every`; new, ended and suspicious sessions at
//! once. Failed logins are counted in [`brute_force`].
//!
//! Time comes from [`Clock`], which tests can move forward. The request and response
//! phases that use all this are in [`crate::pipeline::session`].

pub mod brute_force;
pub mod cookies;
pub mod login;
pub mod policy;
pub mod signed;
pub mod store;
pub mod table;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher13};

pub use policy::{AppPolicy, InvalidAction, Mode, OnLimit, Unknown};
pub use table::{Session, SessionTable, State};

use crate::events::model::now_micros;

/// `[sessions]`, compiled.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    pub key_file: PathBuf,
    /// When expired sessions are closed.
    pub cleanup: crate::schedule::Schedule,
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
    /// SipHash keys for session ids.
    cookie_key: (u64, u64),
}

impl Sessions {
    /// Sessions whose cookie hashes are keyed with `secret`.
    pub fn new(secret: &[u8]) -> Sessions {
        Sessions {
            table: SessionTable::default(),
            brute_force: Default::default(),
            clock: Clock::default(),
            cookie_key: {
                let d = Sha256::new_with_prefix(b"gateway session id key\0")
                    .chain_update(secret)
                    .finalize();
                let half =
                    |i: usize| u64::from_le_bytes(d[i..i + 8].try_into().unwrap_or_default());
                (half(0), half(8))
            },
        }
    }

    /// The session id for an application's cookie value.
    pub fn id_for(&self, app: &AppPolicy, cookie: &[u8]) -> u128 {
        use std::hash::Hasher;
        let mut h = SipHasher13::new_with_keys(self.cookie_key.0, self.cookie_key.1);
        h.write(app.name.as_bytes());
        h.write_u8(0);
        h.write(cookie);
        h.finish128().as_u128()
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
    let cleanup = crate::schedule::compile(
        cfg,
        errs,
        crate::schedule::ScheduleKeys {
            at: at.clone(),
            every_key: "cleanup_every",
            every: s.cleanup_every,
            schedule_key: "cleanup_schedule",
            schedule: s.cleanup_schedule.as_deref(),
            time_zone_key: "cleanup_time_zone",
            time_zone: s.cleanup_time_zone.as_deref(),
            default_every: Some(crate::config::default_session_cleanup()),
            min_every: Duration::from_secs(1),
        },
    )
    .unwrap_or(crate::schedule::Schedule::Every(
        crate::config::default_session_cleanup(),
    ));
    for (key, d) in [
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
        cleanup,
        persist_every: s.persist_every.max(Duration::from_secs(1)),
        retention: s.retention,
        max_sessions: s.max_sessions.max(1),
    }
}

/// Writes sessions to the store without waiting (the event writer thread owns it).
pub fn persist(events: &crate::events::Events, sessions: Vec<Session>) {
    if sessions.is_empty() {
        return;
    }
    events.write_detached(move |store| {
        if let Err(e) = store::save(store, &sessions) {
            tracing::error!(error = %e, "storing sessions failed");
        }
    });
}

/// Adds a session's user and id to an event.
pub fn with_session(mut e: crate::events::AuditEvent, s: &Session) -> crate::events::AuditEvent {
    e.user = s.user.as_deref().map(str::to_string);
    e.session = Some(format!("{:032x}", s.id));
    e
}

/// An event about a session outside any request (admin API, housekeeping).
pub fn session_event(
    kind: crate::events::EventType,
    message: impl Into<String>,
    s: &Session,
) -> crate::events::AuditEvent {
    with_session(
        crate::events::AuditEvent::new(kind, message)
            .ip(s.client_ip)
            .detail("app", &*s.app),
        s,
    )
}
