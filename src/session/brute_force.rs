//! Failed-login counting: per user name and per client address in a sliding window, plus
//! the distinct user names failing from one address (credential stuffing), and user-name
//! locks.
//!
//! Only login outcomes reach this module (rare next to requests), so plain mutexes over
//! maps are enough; each map holds at most [`MAX_KEYS`] keys (stale windows are dropped
//! first, then the oldest half). A lock check on a login request is one atomic load when
//! nobody is locked.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::policy::BruteForcePolicy;

/// Most keys per map.
pub const MAX_KEYS: usize = 100_000;

type UserKey = (Arc<str>, Box<str>);

#[derive(Default)]
struct AddressWindow {
    failures: Vec<u64>,
    /// (user-name hash, time) of distinct failing user names.
    users: Vec<(u64, u64)>,
}

/// What one failed login added up to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Failures of this user name within the window (0 when the name is unknown).
    pub user_failures: u32,
    pub ip_failures: u32,
    pub distinct_users: u32,
    /// The user name reached `max_failures`.
    pub user_detected: bool,
    /// The address reached `ip_max_failures`.
    pub ip_detected: bool,
    /// The address reached `stuffing_users` distinct names.
    pub stuffing_detected: bool,
    /// The user name is now locked until this time (Unix µs).
    pub locked_until: Option<u64>,
}

impl Failure {
    pub fn detected(&self) -> bool {
        self.user_detected || self.ip_detected || self.stuffing_detected
    }
}

/// Failure windows and locks for every app.
#[derive(Default)]
pub struct BruteForce {
    users: Mutex<HashMap<UserKey, Vec<u64>>>,
    addresses: Mutex<HashMap<(Arc<str>, IpAddr), AddressWindow>>,
    locks: Mutex<HashMap<UserKey, u64>>,
    locked_hint: AtomicUsize,
}

/// The key a user name is counted under: trimmed and lower-cased, so `Alice` and `alice `
/// share a window.
pub fn normalise(user: &str) -> Box<str> {
    user.trim().to_lowercase().into_boxed_str()
}

impl BruteForce {
    /// Counts a failed login.
    pub fn failure(
        &self,
        p: &BruteForcePolicy,
        app: &Arc<str>,
        user: Option<&str>,
        ip: IpAddr,
        now: u64,
    ) -> Failure {
        let mut out = Failure::default();
        if !p.enabled {
            return out;
        }
        let since = now.saturating_sub(p.window_micros);
        let user = user.map(normalise);
        if let Some(u) = &user {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            bound(&mut users, since, |w| w.last().copied().unwrap_or(0));
            let w = users.entry((app.clone(), u.clone())).or_default();
            w.retain(|t| *t > since);
            w.push(now);
            out.user_failures = w.len() as u32;
            if out.user_failures >= p.max_failures {
                out.user_detected = true;
                w.clear();
            }
        }
        {
            let mut addrs = self.addresses.lock().unwrap_or_else(|e| e.into_inner());
            bound(&mut addrs, since, |w| {
                w.failures.last().copied().unwrap_or(0)
            });
            let w = addrs.entry((app.clone(), ip)).or_default();
            w.failures.retain(|t| *t > since);
            w.users.retain(|(_, t)| *t > since);
            w.failures.push(now);
            out.ip_failures = w.failures.len() as u32;
            if let Some(u) = &user {
                let h = foldhash::fast::FixedState::with_seed(7).hash_one(u);
                match w.users.iter_mut().find(|(x, _)| *x == h) {
                    Some(e) => e.1 = now,
                    None => w.users.push((h, now)),
                }
            }
            out.distinct_users = w.users.len() as u32;
            if out.ip_failures >= p.ip_max_failures {
                out.ip_detected = true;
                w.failures.clear();
            }
            if out.distinct_users >= p.stuffing_users && out.distinct_users >= 2 {
                out.stuffing_detected = true;
                w.users.clear();
            }
        }
        if out.user_detected && p.lock_micros > 0 {
            if let Some(u) = user {
                let until = now + p.lock_micros;
                let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
                if locks.len() >= MAX_KEYS {
                    locks.retain(|_, t| *t > now);
                }
                locks.insert((app.clone(), u), until);
                self.locked_hint.store(locks.len(), Ordering::Relaxed);
                out.locked_until = Some(until);
            }
        }
        out
    }

    /// A successful login clears the user name's failures.
    pub fn success(&self, app: &Arc<str>, user: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users.remove(&(app.clone(), normalise(user)));
    }

    /// When the user name is locked, until when (Unix µs).
    pub fn locked(&self, app: &Arc<str>, user: &str, now: u64) -> Option<u64> {
        if self.locked_hint.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .get(&(app.clone(), normalise(user)))
            .copied()
            .filter(|t| *t > now)
    }

    /// Puts in force a lock decided elsewhere (another instance of the cluster); returns
    /// false when the user name was already locked at least that long.
    pub fn apply_lock(&self, app: &Arc<str>, user: &str, until: u64) -> bool {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let e = locks.entry((app.clone(), normalise(user))).or_insert(0);
        if *e >= until {
            return false;
        }
        *e = until;
        self.locked_hint.store(locks.len(), Ordering::Relaxed);
        true
    }

    /// Unlocks a user name in every app; returns whether it was locked.
    pub fn unlock(&self, user: &str) -> bool {
        let key = normalise(user);
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        let before = locks.len();
        locks.retain(|(_, u), _| *u != key);
        self.locked_hint.store(locks.len(), Ordering::Relaxed);
        locks.len() != before
    }

    /// Locked user names right now: (app, user, until).
    pub fn locks(&self, now: u64) -> Vec<(Arc<str>, String, u64)> {
        let locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        locks
            .iter()
            .filter(|(_, t)| **t > now)
            .map(|((a, u), t)| (a.clone(), u.to_string(), *t))
            .collect()
    }

    /// Drops expired locks and windows older than `window` µs.
    pub fn sweep(&self, now: u64, window: u64) {
        let since = now.saturating_sub(window);
        {
            let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            locks.retain(|_, t| *t > now);
            self.locked_hint.store(locks.len(), Ordering::Relaxed);
        }
        self.users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| w.last().is_some_and(|t| *t > since));
        self.addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, w| w.failures.last().is_some_and(|t| *t > since) || !w.users.is_empty());
    }
}

/// Keeps a map under [`MAX_KEYS`]: drops windows whose last failure is before `since`, then
/// the older half.
fn bound<K: Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    since: u64,
    last: impl Fn(&V) -> u64,
) {
    if map.len() < MAX_KEYS {
        return;
    }
    map.retain(|_, v| last(v) > since);
    if map.len() >= MAX_KEYS {
        let mut times: Vec<u64> = map.values().map(&last).collect();
        times.sort_unstable();
        let cut = times[times.len() / 2];
        map.retain(|_, v| last(v) > cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BruteForcePolicy {
        BruteForcePolicy {
            enabled: true,
            max_failures: 3,
            ip_max_failures: 5,
            stuffing_users: 3,
            window_micros: 60_000_000,
            lock_micros: 120_000_000,
            ban_ip: true,
        }
    }

    #[test]
    fn counts_per_user_per_address_and_distinct_users_in_a_sliding_window() {
        let bf = BruteForce::default();
        let p = policy();
        let app: Arc<str> = "app".into();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t = 1_000_000_000u64;
        // Two failures, then the first leaves the window: the third is only the second.
        bf.failure(&p, &app, Some("alice"), a, t);
        bf.failure(&p, &app, Some("Alice "), b, t + 30_000_000);
        let f = bf.failure(&p, &app, Some("alice"), a, t + 61_000_000);
        assert_eq!(f.user_failures, 2);
        assert!(!f.detected());
        let f = bf.failure(&p, &app, Some("alice"), b, t + 62_000_000);
        assert!(f.user_detected);
        assert_eq!(f.locked_until, Some(t + 62_000_000 + 120_000_000));
        assert!(bf.locked(&app, "ALICE", t + 63_000_000).is_some());
        assert!(bf.locked(&app, "alice", t + 183_000_000).is_none());
        assert!(bf.unlock("alice"));

        // Three distinct names from one address: stuffing, before the per-address count.
        let c: IpAddr = "198.51.100.7".parse().unwrap();
        bf.failure(&p, &app, Some("u1"), c, t);
        bf.failure(&p, &app, Some("u2"), c, t);
        let f = bf.failure(&p, &app, Some("u3"), c, t);
        assert!(f.stuffing_detected && !f.ip_detected && !f.user_detected);
        // The same name again and again from one address: the per-address count.
        let d: IpAddr = "198.51.100.8".parse().unwrap();
        for i in 0..4 {
            assert!(!bf.failure(&p, &app, None, d, t + i).detected());
        }
        assert!(bf.failure(&p, &app, None, d, t + 5).ip_detected);

        // A success clears the user's window.
        bf.failure(&p, &app, Some("bob"), a, t);
        bf.failure(&p, &app, Some("bob"), a, t);
        bf.success(&app, "bob");
        assert_eq!(bf.failure(&p, &app, Some("bob"), a, t).user_failures, 1);
    }
}
