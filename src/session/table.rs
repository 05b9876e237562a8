//! The session table: every tracked session by id, with a per-user index for the
//! concurrent-session limit and forced logout.
//!
//! The request path does one sharded-map lookup with the shard's write lock held only for
//! the few field updates of [`SessionTable::validate`] (no await, no allocation unless the
//! User-Agent changed). Ended sessions stay in memory for [`ENDED_KEPT`] so a replayed
//! cookie is answered as revoked or expired rather than unknown, then only in the store.
//! Lock order: the user index before a table shard, never the reverse.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::policy::{AppPolicy, OnLimit};
use crate::events::model::{opt_time_field, time_field};

/// How long an ended session is kept in memory.
pub const ENDED_KEPT_MICROS: u64 = 24 * 3600 * 1_000_000;
/// The longest User-Agent kept with a session (longer ones are compared by this prefix).
pub const MAX_USER_AGENT: usize = 256;

/// A session's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Active,
    /// Ended normally: timeout, logout, replaced by a new cookie.
    Closed,
    /// Ended by the gateway or an operator.
    Revoked,
}

/// One session, as kept and stored. The id is the keyed hash of the cookie value (or the
/// random id of a signed cookie); the cookie itself is never kept.
///
/// `repr(C)` with the fields a request reads first: with 100,000 sessions the record is
/// usually not in cache, and keeping what [`SessionTable::validate`] touches within the
/// first 48 bytes (64 with the map's key) saves a memory access per request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[repr(C)]
pub struct Session {
    #[serde(with = "time_field")]
    pub created: u64,
    #[serde(with = "time_field")]
    pub last_activity: u64,
    /// Hash of `user_agent` as received, compared on each request instead of the text;
    /// recomputed from the text when loaded.
    #[serde(skip)]
    pub user_agent_hash: u64,
    #[serde(default)]
    pub ip_changes: u16,
    #[serde(default)]
    pub user_agent_changes: u16,
    pub client_ip: IpAddr,
    pub state: State,
    #[serde(default)]
    pub suspicious: bool,
    /// Changed since last written to the store.
    #[serde(skip)]
    pub dirty: bool,
    pub app: Arc<str>,
    #[serde(default)]
    pub user: Option<Arc<str>>,
    pub first_ip: IpAddr,
    #[serde(default)]
    pub user_agent: String,
    #[serde(
        default,
        with = "opt_time_field",
        skip_serializing_if = "Option::is_none"
    )]
    pub ended: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// Also the map's key: kept out of the first cache line.
    #[serde(with = "hex_id")]
    pub id: u128,
}

impl Session {
    pub fn new(
        id: u128,
        app: &AppPolicy,
        user: Option<Arc<str>>,
        ip: IpAddr,
        ua: &[u8],
        now: u64,
    ) -> Session {
        Session {
            id,
            app: app.name.clone(),
            user,
            created: now,
            last_activity: now,
            client_ip: ip,
            first_ip: ip,
            user_agent: user_agent(ua),
            user_agent_hash: user_agent_hash(ua),
            ip_changes: 0,
            user_agent_changes: 0,
            suspicious: false,
            state: State::Active,
            ended: None,
            end_reason: None,
            dirty: true,
        }
    }

    pub fn active(&self) -> bool {
        self.state == State::Active
    }

    fn end(&mut self, state: State, reason: &str, now: u64) {
        self.state = state;
        self.ended = Some(now);
        self.end_reason = Some(reason.to_string());
        self.dirty = true;
    }
}

/// The User-Agent as kept: its first [`MAX_USER_AGENT`] bytes, as text.
pub fn user_agent(ua: &[u8]) -> String {
    let cut = &ua[..ua.len().min(MAX_USER_AGENT)];
    String::from_utf8_lossy(cut).into_owned()
}

/// The hash a session's User-Agent is compared by (of the bytes [`user_agent`] keeps; a
/// fixed seed, so equal after a restart for any UTF-8 User-Agent).
pub fn user_agent_hash(ua: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    const SEED: u64 = 0x5e55_10a6_e47a_9e17;
    foldhash::fast::FixedState::with_seed(SEED).hash_one(&ua[..ua.len().min(MAX_USER_AGENT)])
}

/// Why a presented session is not valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    Unknown,
    IdleTimeout,
    AbsoluteTimeout,
    /// Revoked (by an operator, eviction, suspicion), with the reason.
    Revoked(String),
    /// Closed earlier (logout, replaced, timeout), with the reason.
    Ended(String),
    /// Revoked just now because it became suspicious.
    Suspicious,
}

impl Invalid {
    pub fn reason(&self) -> &str {
        match self {
            Invalid::Unknown => "unknown session",
            Invalid::IdleTimeout => "idle timeout",
            Invalid::AbsoluteTimeout => "absolute lifetime reached",
            Invalid::Revoked(r) | Invalid::Ended(r) => r,
            Invalid::Suspicious => "revoked as suspicious",
        }
    }

    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Invalid::Unknown => "unknown",
            Invalid::IdleTimeout => "idle_timeout",
            Invalid::AbsoluteTimeout => "absolute_timeout",
            Invalid::Revoked(_) => "revoked",
            Invalid::Ended(_) => "ended",
            Invalid::Suspicious => "suspicious",
        }
    }
}

/// The outcome of checking a presented session.
#[derive(Debug)]
pub enum Checked {
    Valid {
        /// The session's user, only when the app forwards it in a header.
        user: Option<Arc<str>>,
        /// It crossed the change threshold on this request (a snapshot for the event).
        became_suspicious: Option<Box<Session>>,
    },
    Invalid {
        reason: Invalid,
        /// The session, when known (for the event).
        session: Option<Box<Session>>,
    },
}

/// What registering a session did.
#[derive(Debug, Default)]
pub struct Registered {
    pub created: bool,
    /// Refused by the concurrent-session limit (`reject_new`).
    pub refused: bool,
    /// Not tracked: the table is full.
    pub untracked: bool,
    /// Sessions revoked to make room (`evict_oldest`).
    pub evicted: Vec<Session>,
}

type UserKey = (Arc<str>, Arc<str>);

/// All sessions.
#[derive(Default)]
pub struct SessionTable {
    map: DashMap<u128, Session, foldhash::fast::RandomState>,
    by_user: Mutex<HashMap<UserKey, Vec<u128>>>,
}

impl SessionTable {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get(&self, id: u128) -> Option<Session> {
        self.map.get(&id).map(|s| s.clone())
    }

    /// Checks the session presented on a request and records the activity.
    pub fn validate(&self, app: &AppPolicy, id: u128, ip: IpAddr, ua: &[u8], now: u64) -> Checked {
        let Some(mut s) = self.map.get_mut(&id) else {
            return Checked::Invalid {
                reason: Invalid::Unknown,
                session: None,
            };
        };
        let reason = match s.state {
            State::Active if now.saturating_sub(s.last_activity) > app.idle_micros => {
                s.end(State::Closed, "idle timeout", now);
                Some(Invalid::IdleTimeout)
            }
            State::Active if now.saturating_sub(s.created) > app.absolute_micros => {
                s.end(State::Closed, "absolute lifetime reached", now);
                Some(Invalid::AbsoluteTimeout)
            }
            State::Active => None,
            State::Revoked => Some(Invalid::Revoked(s.end_reason.clone().unwrap_or_default())),
            State::Closed => Some(Invalid::Ended(s.end_reason.clone().unwrap_or_default())),
        };
        if let Some(reason) = reason {
            let snapshot = Box::new(s.clone());
            drop(s);
            if matches!(reason, Invalid::IdleTimeout | Invalid::AbsoluteTimeout) {
                self.unindex(&snapshot);
            }
            return Checked::Invalid {
                reason,
                session: Some(snapshot),
            };
        }
        let mut changed = false;
        if s.client_ip != ip {
            s.client_ip = ip;
            s.ip_changes = s.ip_changes.saturating_add(1);
            changed = true;
        }
        if app.user_agent_counts {
            let hash = user_agent_hash(ua);
            if s.user_agent_hash != hash {
                s.user_agent = user_agent(ua);
                s.user_agent_hash = hash;
                s.user_agent_changes = s.user_agent_changes.saturating_add(1);
                changed = true;
            }
        }
        let mut became_suspicious = None;
        if changed
            && app.change_threshold > 0
            && !s.suspicious
            && u32::from(s.ip_changes) + u32::from(s.user_agent_changes) >= app.change_threshold
        {
            s.suspicious = true;
            if app.revoke_suspicious {
                s.end(State::Revoked, "revoked as suspicious", now);
                let snapshot = Box::new(s.clone());
                drop(s);
                self.unindex(&snapshot);
                return Checked::Invalid {
                    reason: Invalid::Suspicious,
                    session: Some(snapshot),
                };
            }
            became_suspicious = Some(Box::new(s.clone()));
        }
        s.last_activity = now;
        s.dirty = true;
        Checked::Valid {
            // Only when the app forwards it: cloning the `Arc` touches another cache line.
            user: app.user_header.as_ref().and(s.user.clone()),
            became_suspicious,
        }
    }

    /// Registers a session the application (or the gateway) just created, enforcing the
    /// concurrent-session limit for its user. An existing active session with this id gets
    /// the user when it had none (a login on an anonymous session).
    pub fn register(
        &self,
        app: &AppPolicy,
        mut session: Session,
        max_sessions: usize,
    ) -> Registered {
        let mut out = Registered::default();
        let id = session.id;
        let existing_user = match self.map.get(&id) {
            Some(s) if s.active() => Some(s.user.clone()),
            _ => None,
        };
        if let Some(existing) = &existing_user {
            if existing.is_some() || session.user.is_none() {
                return out;
            }
        } else if self.map.len() >= max_sessions {
            out.untracked = true;
            return out;
        }
        if let Some(user) = session.user.clone() {
            let mut index = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
            let ids = index.entry((app.name.clone(), user)).or_default();
            ids.retain(|i| *i != id && self.map.get(i).is_some_and(|s| s.active()));
            if app.max_per_user > 0 && ids.len() >= app.max_per_user {
                match app.on_limit {
                    OnLimit::RejectNew => {
                        out.refused = true;
                        return out;
                    }
                    OnLimit::EvictOldest => {
                        let mut by_age: Vec<(u64, u128)> = ids
                            .iter()
                            .filter_map(|i| self.map.get(i).map(|s| (s.created, *i)))
                            .collect();
                        by_age.sort_unstable();
                        let excess = ids.len() + 1 - app.max_per_user;
                        for (_, old) in by_age.into_iter().take(excess) {
                            if let Some(mut s) = self.map.get_mut(&old) {
                                s.end(
                                    State::Revoked,
                                    "evicted: concurrent session limit",
                                    session.created,
                                );
                                out.evicted.push(s.clone());
                            }
                            ids.retain(|i| *i != old);
                        }
                    }
                }
            }
            ids.push(id);
        }
        match self.map.get_mut(&id) {
            Some(mut s) if existing_user.is_some() => {
                s.user = session.user.take();
                s.dirty = true;
            }
            _ => {
                self.map.insert(id, session);
                out.created = true;
            }
        }
        out
    }

    /// Ends an active session; returns it as ended.
    pub fn end(&self, id: u128, state: State, reason: &str, now: u64) -> Option<Session> {
        let snapshot = {
            let mut s = self.map.get_mut(&id)?;
            if !s.active() {
                return None;
            }
            s.end(state, reason, now);
            s.clone()
        };
        self.unindex(&snapshot);
        Some(snapshot)
    }

    /// Ends session `id` as revoked because another instance of the cluster revoked it.
    /// A session this instance never saw is remembered as revoked, so its cookie is
    /// refused here too instead of being adopted. Returns the session when one ended.
    pub fn revoke_elsewhere(
        &self,
        app: &crate::session::AppPolicy,
        id: u128,
        reason: &str,
        now: u64,
    ) -> Option<Session> {
        if self.map.contains_key(&id) {
            return self.end(id, State::Revoked, reason, now);
        }
        let mut s = Session::new(id, app, None, IpAddr::from([0, 0, 0, 0]), b"", now);
        s.end(State::Revoked, reason, now);
        self.map.entry(id).or_insert(s);
        None
    }

    /// The user of a session, if it has one.
    pub fn user_of(&self, id: u128) -> Option<Arc<str>> {
        self.map.get(&id).and_then(|s| s.user.clone())
    }

    /// Active session ids of `user` in any app.
    pub fn of_user(&self, user: &str) -> Vec<u128> {
        let index = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        index
            .iter()
            .filter(|((_, u), _)| &**u == user)
            .flat_map(|(_, ids)| ids.iter().copied())
            .collect()
    }

    fn unindex(&self, s: &Session) {
        if let Some(user) = &s.user {
            let mut index = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
            let key = (s.app.clone(), user.clone());
            if let Some(ids) = index.get_mut(&key) {
                ids.retain(|i| *i != s.id);
                if ids.is_empty() {
                    index.remove(&key);
                }
            }
        }
    }

    /// Every session matching `keep`, cloned.
    pub fn collect(&self, mut keep: impl FnMut(&Session) -> bool) -> Vec<Session> {
        self.map
            .iter()
            .filter(|s| keep(s))
            .map(|s| s.clone())
            .collect()
    }

    /// Sessions changed since the last call, marked clean.
    pub fn take_dirty(&self) -> Vec<Session> {
        let mut out = Vec::new();
        for mut s in self.map.iter_mut() {
            if s.dirty {
                s.dirty = false;
                out.push(s.clone());
            }
        }
        out
    }

    /// Puts stored sessions back (at start).
    pub fn restore(&self, sessions: Vec<Session>) {
        let mut index = self.by_user.lock().unwrap_or_else(|p| p.into_inner());
        for mut s in sessions {
            s.dirty = false;
            s.user_agent_hash = user_agent_hash(s.user_agent.as_bytes());
            if s.active() {
                if let Some(u) = &s.user {
                    index
                        .entry((s.app.clone(), u.clone()))
                        .or_default()
                        .push(s.id);
                }
            }
            self.map.insert(s.id, s);
        }
    }

    /// Closes expired sessions (returned, for events) and forgets sessions ended more than
    /// [`ENDED_KEPT_MICROS`] ago. `policy` finds a session's app; a session whose app is
    /// gone is closed.
    pub fn sweep<'a>(
        &self,
        now: u64,
        policy: impl Fn(&str) -> Option<&'a AppPolicy>,
    ) -> Vec<Session> {
        let mut expired = Vec::new();
        self.map.retain(|_, s| {
            if s.active() {
                let reason = match policy(&s.app) {
                    None => Some("application removed from config"),
                    Some(p) if now.saturating_sub(s.last_activity) > p.idle_micros => {
                        Some("idle timeout")
                    }
                    Some(p) if now.saturating_sub(s.created) > p.absolute_micros => {
                        Some("absolute lifetime reached")
                    }
                    Some(_) => None,
                };
                if let Some(r) = reason {
                    s.end(State::Closed, r, now);
                    expired.push(s.clone());
                }
                true
            } else {
                // Kept until written (dirty) and for a day after it ended.
                s.dirty
                    || s.ended
                        .is_some_and(|e| now.saturating_sub(e) < ENDED_KEPT_MICROS)
            }
        });
        for s in &expired {
            self.unindex(s);
        }
        expired
    }

    /// Active and suspicious counts, and active sessions per user.
    pub fn stats(&self) -> (usize, usize, HashMap<Arc<str>, usize>) {
        let mut active = 0;
        let mut suspicious = 0;
        let mut per_user: HashMap<Arc<str>, usize> = HashMap::new();
        for s in self.map.iter() {
            if s.active() {
                active += 1;
                if let Some(u) = &s.user {
                    *per_user.entry(u.clone()).or_default() += 1;
                }
            }
            if s.suspicious && s.active() {
                suspicious += 1;
            }
        }
        (active, suspicious, per_user)
    }
}

/// Session ids as 32 hex digits.
pub mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{id:032x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom("not a session id"))
    }

    pub fn parse(s: &str) -> Option<u128> {
        if s.len() != 32 {
            return None;
        }
        u128::from_str_radix(s, 16).ok()
    }
}
