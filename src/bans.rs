//! Automatic and manual bans of client addresses.
//!
//! Violations (rate-limit rejections, WAF blocks, failed logins), each weighted in config,
//! add to a per-address score in a sliding window; reaching the threshold bans the address
//! for `duration`, multiplied by `multiplier` for each earlier ban still remembered (up to
//! `max_duration`). A banned address gets 403 before any other phase. Bans are kept in
//! memory (checked on every request: one atomic load when there are none, else one map
//! lookup) and in the event store (table `bans`), so they survive restarts and expire on
//! time. Expired bans are remembered for [`HISTORY`] to recognise repeat offenders.
//!
//! Memory: violation scores for at most [`MAX_TRACKED`] addresses (oldest windows are
//! dropped first); ban records for every address banned within [`HISTORY`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::events::model::{format_time, now_micros};
use crate::events::schema::BANS;
use crate::events::store::{ip_key, Store, StoreError, StoreWriter};

/// How long an expired ban is remembered for repeat-offender durations.
pub const HISTORY: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most addresses with a violation score at once.
pub const MAX_TRACKED: usize = 100_000;

/// What counts towards a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    RateLimited,
    WafBlocked,
    LoginFailed,
}

/// `[bans]`, compiled.
#[derive(Debug, Clone)]
pub struct BanSettings {
    pub enabled: bool,
    pub threshold: u32,
    pub window: Duration,
    pub duration: Duration,
    pub max_duration: Duration,
    pub multiplier: f64,
    pub weight_rate_limited: u32,
    pub weight_waf_blocked: u32,
    pub weight_login_failed: u32,
}

impl BanSettings {
    fn weight(&self, v: Violation) -> u32 {
        match v {
            Violation::RateLimited => self.weight_rate_limited,
            Violation::WafBlocked => self.weight_waf_blocked,
            Violation::LoginFailed => self.weight_login_failed,
        }
    }

    /// The duration of an address's `offense`-th ban (1-based).
    pub fn duration_for(&self, offense: u32) -> Duration {
        let factor = self
            .multiplier
            .max(1.0)
            .powi(offense.saturating_sub(1).min(30) as i32);
        self.duration.mul_f64(factor).min(self.max_duration)
    }
}

/// One ban, as stored and shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ban {
    pub ip: IpAddr,
    /// Unix microseconds.
    #[serde(with = "crate::events::model::time_field")]
    pub since: u64,
    #[serde(with = "crate::events::model::time_field")]
    pub until: u64,
    pub reason: String,
    /// How many times this address has been banned within the history window.
    pub offenses: u32,
    pub manual: bool,
    /// In a cluster: the instance that decided the ban.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

impl Ban {
    pub fn active(&self, now: u64) -> bool {
        self.until > now
    }
}

/// The ban list and violation scores.
pub struct Bans {
    records: DashMap<IpAddr, Ban>,
    /// Records whose ban may still be active (a fast "nobody is banned" check).
    active_hint: AtomicUsize,
    scores: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// This instance's name in a cluster, written into the bans it decides.
    instance: std::sync::OnceLock<String>,
}

impl Default for Bans {
    fn default() -> Self {
        Bans {
            records: DashMap::new(),
            active_hint: AtomicUsize::new(0),
            scores: Mutex::new(HashMap::new()),
            instance: std::sync::OnceLock::new(),
        }
    }
}

impl Bans {
    /// Loads the stored bans (at start).
    pub fn load(store: &Store) -> Result<Bans, StoreError> {
        let bans = Bans::default();
        let tx = store.begin_read()?;
        let Some(table) = crate::events::store::open_if_exists(&tx, BANS)? else {
            return Ok(bans);
        };
        let now = now_micros();
        for row in table.iter()? {
            let (_, v) = row?;
            if let Ok(b) = serde_json::from_slice::<Ban>(v.value()) {
                if b.active(now) {
                    bans.active_hint.fetch_add(1, Ordering::Relaxed);
                }
                bans.records.insert(b.ip, b);
            }
        }
        Ok(bans)
    }

    /// The active ban on `ip`, if any.
    pub fn check(&self, ip: IpAddr) -> Option<Ban> {
        if self.active_hint.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let b = self.records.get(&ip)?;
        b.active(now_micros()).then(|| b.clone())
    }

    /// Counts a violation; returns the new ban when it crosses the threshold.
    pub fn violation(&self, s: &BanSettings, ip: IpAddr, v: Violation) -> Option<Ban> {
        if !s.enabled || s.weight(v) == 0 {
            return None;
        }
        let now = Instant::now();
        let score = {
            let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
            if scores.len() >= MAX_TRACKED && !scores.contains_key(&ip) {
                scores.retain(|_, (_, start)| now.duration_since(*start) < s.window);
                if scores.len() >= MAX_TRACKED {
                    // Forget the oldest half rather than stop counting.
                    let mut starts: Vec<Instant> = scores.values().map(|(_, t)| *t).collect();
                    starts.sort_unstable();
                    let cut = starts[starts.len() / 2];
                    scores.retain(|_, (_, t)| *t > cut);
                }
            }
            let e = scores.entry(ip).or_insert((0, now));
            if now.duration_since(e.1) >= s.window {
                *e = (0, now);
            }
            e.0 = e.0.saturating_add(s.weight(v));
            let score = e.0;
            if score >= s.threshold {
                scores.remove(&ip);
            }
            score
        };
        if score < s.threshold {
            return None;
        }
        if self.check(ip).is_some() {
            return None;
        }
        let reason = format!(
            "violation score {score} reached {} within {}",
            s.threshold,
            humantime::format_duration(s.window)
        );
        Some(self.ban(s, ip, None, reason, false))
    }

    /// Bans `ip` (for `duration`, or the repeat-offender duration when `None`).
    pub fn ban(
        &self,
        s: &BanSettings,
        ip: IpAddr,
        duration: Option<Duration>,
        reason: String,
        manual: bool,
    ) -> Ban {
        let now = now_micros();
        let offenses = self
            .records
            .get(&ip)
            .filter(|b| b.until + HISTORY.as_micros() as u64 > now)
            .map_or(1, |b| b.offenses + 1);
        let d = duration.unwrap_or_else(|| s.duration_for(offenses));
        let ban = Ban {
            ip,
            since: now,
            until: now + d.as_micros() as u64,
            reason,
            offenses,
            manual,
            instance: self.instance.get().cloned(),
        };
        let was_active = self
            .records
            .insert(ip, ban.clone())
            .is_some_and(|b| b.active(now));
        if !was_active {
            self.active_hint.fetch_add(1, Ordering::Relaxed);
        }
        ban
    }

    /// Names the bans this instance decides (in a cluster); set once at start.
    pub fn set_instance(&self, name: &str) {
        let _ = self.instance.set(name.to_string());
    }

    /// Puts in force a ban decided elsewhere (another instance of the cluster), as it is;
    /// returns false when an equal or longer ban on the address is already known.
    pub fn apply(&self, ban: Ban) -> bool {
        let now = now_micros();
        if self
            .records
            .get(&ban.ip)
            .is_some_and(|b| b.until >= ban.until && b.since >= ban.since)
        {
            return false;
        }
        let active = ban.active(now);
        let was_active = self
            .records
            .insert(ban.ip, ban)
            .is_some_and(|b| b.active(now));
        if active && !was_active {
            self.active_hint.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Lifts a ban (the record is forgotten too). Returns it when there was one.
    pub fn unban(&self, ip: IpAddr) -> Option<Ban> {
        let (_, b) = self.records.remove(&ip)?;
        if b.active(now_micros()) {
            let _ = self
                .active_hint
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
        }
        Some(b)
    }

    /// Every active ban, soonest to expire first.
    pub fn active(&self) -> Vec<Ban> {
        let now = now_micros();
        let mut v: Vec<Ban> = self
            .records
            .iter()
            .filter(|b| b.active(now))
            .map(|b| b.clone())
            .collect();
        v.sort_by_key(|b| b.until);
        v
    }

    /// Recounts active bans and forgets records past their history; returns the forgotten
    /// addresses (to delete from the store).
    pub fn sweep(&self) -> Vec<IpAddr> {
        let now = now_micros();
        let history = HISTORY.as_micros() as u64;
        let mut forgotten = Vec::new();
        self.records.retain(|ip, b| {
            let keep = b.until + history > now;
            if !keep {
                forgotten.push(*ip);
            }
            keep
        });
        let active = self.records.iter().filter(|b| b.active(now)).count();
        self.active_hint.store(active, Ordering::Relaxed);
        forgotten
    }
}

/// Stores a ban (writer thread).
pub fn save(store: &StoreWriter, ban: &Ban) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(ban).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let tx = store.begin_write()?;
    tx.open_table(BANS)?
        .insert(ip_key(ban.ip), bytes.as_slice())?;
    tx.commit()?;
    Ok(())
}

/// Deletes stored bans (writer thread).
pub fn remove(store: &StoreWriter, ips: &[IpAddr]) -> Result<(), StoreError> {
    let tx = store.begin_write()?;
    {
        let mut t = tx.open_table(BANS)?;
        for ip in ips {
            t.remove(ip_key(*ip))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// A human summary for events: "until 2026-12-02T10:00:00.000Z".
pub fn until_text(ban: &Ban) -> String {
    format!("until {}", format_time(ban.until))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BanSettings {
        BanSettings {
            enabled: true,
            threshold: 3,
            window: Duration::from_secs(60),
            duration: Duration::from_secs(60),
            max_duration: Duration::from_secs(300),
            multiplier: 2.0,
            weight_rate_limited: 1,
            weight_waf_blocked: 3,
            weight_login_failed: 1,
        }
    }

    #[test]
    fn threshold_bans_and_repeat_offenders_wait_longer() {
        let s = settings();
        let bans = Bans::default();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(bans.check(ip).is_none());
        assert!(bans.violation(&s, ip, Violation::RateLimited).is_none());
        assert!(bans.violation(&s, ip, Violation::RateLimited).is_none());
        let b = bans.violation(&s, ip, Violation::RateLimited).unwrap();
        assert_eq!(b.offenses, 1);
        assert!(bans.check(ip).is_some());
        // Second ban of the same address: twice as long; capped at max_duration.
        bans.unban(ip);
        let b1 = bans.ban(&s, ip, None, "x".into(), false);
        assert_eq!(b1.offenses, 1);
        let b2 = bans.ban(&s, ip, None, "x".into(), false);
        assert_eq!(b2.offenses, 2);
        assert_eq!(b2.until - b2.since, 120_000_000);
        assert_eq!(s.duration_for(10), Duration::from_secs(300));
        // One WAF block weighs three.
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert!(bans.violation(&s, other, Violation::WafBlocked).is_some());
    }
}
