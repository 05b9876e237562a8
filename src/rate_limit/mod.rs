//! Rate limits: token buckets (governor's GCRA) keyed by client IP, by a request header
//! (an API key; hashed, never kept in clear), or by route; several windows composed on
//! one key (e.g. 60/minute, 1,000/hour, 10,000/day), each with a burst.
//!
//! A [`Policy`] is compiled from config; its windows' limiters come from the [`Registry`],
//! which keeps them across reloads (a reload must not hand every client a fresh bucket) as
//! long as the policy and window are unchanged. A request passes when every window has a
//! token; the first window without one decides the 429 and its `Retry-After`.
//!
//! Cost: one hash-map lookup per policy, then governor's check (a clock read and a
//! compare-and-swap) per window; no allocation. Memory: at most `max_keys` tracked keys per
//! policy ([`store::BYTES_PER_KEY`] each); past that, new keys share one overflow bucket. A
//! sweeper drops keys whose buckets are all full again (indistinguishable from a new
//! client), never a key that is still being throttled.

pub mod store;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;

use std::sync::atomic::{AtomicU64, Ordering};

use store::{Entries, Slot, SlotStore};

pub use store::MAX_WINDOWS;

/// One window's limiter: governor's GCRA over the policy's shared entries.
pub type Limiter = RateLimiter<Slot, SlotStore, DefaultClock>;

/// What a policy counts requests by.
#[derive(Debug, Clone)]
pub enum KeySource {
    Ip,
    /// A request header's value (hashed); requests without it are counted by IP.
    Header(HeaderName),
    /// One bucket for the whole route.
    Route,
}

impl KeySource {
    pub fn parse(s: &str) -> Result<KeySource, String> {
        match s {
            "ip" => Ok(KeySource::Ip),
            "route" => Ok(KeySource::Route),
            _ => match s.strip_prefix("header:") {
                Some(h) => HeaderName::from_bytes(h.trim().as_bytes())
                    .map(KeySource::Header)
                    .map_err(|_| format!("`{h}` is not a header name")),
                None => Err(format!(
                    "`{s}` is not a key: use \"ip\", \"route\" or \"header:<name>\" (\"user\" comes with session protection)"
                )),
            },
        }
    }
}

/// One window of a policy: `requests` per `per`, up to `burst` at once.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowSpec {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

struct Window {
    /// `"<policy>-<window>"`, as named in the `RateLimit` header fields.
    label: String,
    limiter: Arc<Limiter>,
    spec: WindowSpec,
}

/// A policy's buckets and limiters, kept by the registry across reloads.
struct PolicyState {
    entries: Entries,
    limiters: Vec<(Arc<Limiter>, Arc<AtomicU64>)>,
}

/// A compiled rate-limit policy.
pub struct Policy {
    pub name: Arc<str>,
    key: KeySource,
    state: Arc<PolicyState>,
    windows: Vec<Window>,
    /// `RateLimit-Policy` field value, built once.
    policy_header: HeaderValue,
    hasher: std::hash::RandomState,
    clock: DefaultClock,
    rejected: IntCounter,
}

/// A request over a limit.
pub struct Rejection {
    /// Whole seconds until the window has a token again (at least 1).
    pub retry_after: u64,
    /// The key that was over (an IP as IPv6-mapped bits, a header hash, or 0 for a route).
    pub key: u128,
    window: usize,
    /// The key shared the overflow bucket (the policy tracks `max_keys` already): the
    /// client is not the one that emptied it, so this is no violation towards a ban.
    pub shared_bucket: bool,
}

impl Rejection {
    /// A refusal decided elsewhere (the cluster's shared buckets) by `window`.
    pub fn new(retry_after: u64, key: u128, window: usize) -> Rejection {
        Rejection {
            retry_after: retry_after.max(1),
            key,
            window,
            shared_bucket: false,
        }
    }
}

impl Policy {
    /// The windows, in order.
    pub fn windows(&self) -> impl Iterator<Item = &WindowSpec> {
        self.windows.iter().map(|w| &w.spec)
    }

    /// The bucket key for a request.
    pub fn key(&self, ip: IpAddr, headers: &HeaderMap) -> u128 {
        match &self.key {
            KeySource::Ip => ip_bits(ip),
            KeySource::Route => 0,
            KeySource::Header(h) => match headers.get(h) {
                Some(v) => (1u128 << 127) | self.hasher.hash_one(v.as_bytes()) as u128,
                None => ip_bits(ip),
            },
        }
    }

    /// Takes one token from every window, or says which window is empty.
    pub fn check(&self, key: u128) -> Result<(), Rejection> {
        let mut slot = self.state.entries.slot(key);
        for (i, w) in self.windows.iter().enumerate() {
            slot.window = i;
            if let Err(not_until) = w.limiter.check_key(&slot) {
                self.rejected.inc();
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Rejection {
                    retry_after: secs.max(1),
                    key,
                    window: i,
                    shared_bucket: slot.is_overflow(&self.state.entries),
                });
            }
        }
        Ok(())
    }

    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` for a 429.
    pub fn headers(&self, r: &Rejection) -> [(HeaderName, HeaderValue); 3] {
        let label = &self.windows[r.window].label;
        let ratelimit = HeaderValue::from_str(&format!("\"{label}\";r=0;t={}", r.retry_after))
            .unwrap_or_else(|_| HeaderValue::from_static("r=0"));
        [
            (http::header::RETRY_AFTER, HeaderValue::from(r.retry_after)),
            (
                HeaderName::from_static("ratelimit-policy"),
                self.policy_header.clone(),
            ),
            (HeaderName::from_static("ratelimit"), ratelimit),
        ]
    }

    pub fn key_source(&self) -> &KeySource {
        &self.key
    }
}

/// An IP address as bucket key bits (IPv4 as IPv4-mapped IPv6).
pub fn ip_bits(ip: IpAddr) -> u128 {
    crate::events::store::ip_key(ip)
}

/// The policies' buckets, kept across reloads.
pub struct Registry {
    policies: Mutex<HashMap<String, Arc<PolicyState>>>,
    hasher: std::hash::RandomState,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            policies: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl Registry {
    /// Builds a policy, reusing the buckets of an unchanged policy (same name, key, windows
    /// and `max_keys`). At most [`MAX_WINDOWS`] windows are used.
    pub fn policy(
        &self,
        name: &str,
        key: KeySource,
        windows: &[WindowSpec],
        max_keys: usize,
        rejected: IntCounter,
    ) -> Policy {
        let windows = &windows[..windows.len().min(MAX_WINDOWS)];
        let key_id = match &key {
            KeySource::Ip => "ip".to_string(),
            KeySource::Route => "route".to_string(),
            KeySource::Header(h) => format!("header:{h}"),
        };
        let id = format!("{name}|{key_id}|{windows:?}|{max_keys}");
        let state = {
            let mut map = self.policies.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(id)
                .or_insert_with(|| {
                    let limiters = windows
                        .iter()
                        .map(|w| {
                            let per_token = w.per / w.requests.max(1);
                            let quota = Quota::with_period(per_token.max(Duration::from_nanos(1)))
                                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                                .allow_burst(NonZeroU32::new(w.burst).unwrap_or(NonZeroU32::MIN));
                            let drop_below = Arc::new(AtomicU64::new(0));
                            let limiter = RateLimiter::new(
                                quota,
                                SlotStore::new(drop_below.clone()),
                                DefaultClock::default(),
                            );
                            (Arc::new(limiter), drop_below)
                        })
                        .collect();
                    Arc::new(PolicyState {
                        entries: Entries::new(max_keys),
                        limiters,
                    })
                })
                .clone()
        };
        let mut built = Vec::new();
        let mut policy_items = Vec::new();
        for (w, (limiter, _)) in windows.iter().zip(&state.limiters) {
            let label = format!(
                "{name}-{}",
                humantime::format_duration(w.per)
                    .to_string()
                    .replace(' ', "")
            );
            policy_items.push(format!(
                "\"{label}\";q={};w={}",
                w.requests,
                w.per.as_secs().max(1)
            ));
            built.push(Window {
                label,
                limiter: limiter.clone(),
                spec: w.clone(),
            });
        }
        let policy_header = HeaderValue::from_str(&policy_items.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Policy {
            name: name.into(),
            key,
            state,
            windows: built,
            policy_header,
            hasher: self.hasher.clone(),
            clock: DefaultClock::default(),
            rejected,
        }
    }

    /// Drops keys whose buckets are all full again, and policies no config uses; returns
    /// the number of keys still tracked.
    pub fn sweep(&self) -> usize {
        let states: Vec<Arc<PolicyState>> = {
            let mut map = self.policies.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, s| Arc::strong_count(s) > 1);
            map.values().cloned().collect()
        };
        let mut total = 0;
        for s in states {
            let below: Vec<u64> = s
                .limiters
                .iter()
                .map(|(l, drop_below)| {
                    l.retain_recent();
                    drop_below.load(Ordering::Relaxed)
                })
                .collect();
            total += s.entries.sweep(&below);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap()
    }

    #[test]
    fn burst_then_reject_with_retry_after() {
        let reg = Registry::default();
        let p = reg.policy(
            "p",
            KeySource::Ip,
            &[WindowSpec {
                requests: 5,
                per: Duration::from_secs(60),
                burst: 5,
            }],
            1000,
            counter(),
        );
        let k = p.key("192.0.2.1".parse().unwrap(), &HeaderMap::new());
        for _ in 0..5 {
            assert!(p.check(k).is_ok());
        }
        let r = p.check(k).err().unwrap();
        assert!((1..=12).contains(&r.retry_after), "{}", r.retry_after);
        let h = p.headers(&r);
        assert_eq!(h[1].1, "\"p-1m\";q=5;w=60");
        // Another key is unaffected.
        let k2 = p.key("192.0.2.2".parse().unwrap(), &HeaderMap::new());
        assert!(p.check(k2).is_ok());
    }

    #[test]
    fn beyond_the_cap_new_keys_share_one_bucket_and_tracked_keys_keep_theirs() {
        let reg = Registry::default();
        let w = [WindowSpec {
            requests: 2,
            per: Duration::from_secs(3600),
            burst: 2,
        }];
        let p = reg.policy("p", KeySource::Ip, &w, 2, counter());
        assert!(p.check(1).is_ok());
        assert!(p.check(1).is_ok());
        // Its own bucket: a violation.
        assert!(!p.check(1).unwrap_err().shared_bucket);
        assert!(p.check(2).is_ok());
        // Keys 3, 4, 5 share the overflow bucket: two tokens between them (the cap of 2 is
        // reached by keys 1 and 2).
        assert!(p.check(3).is_ok());
        assert!(p.check(4).is_ok());
        // The shared bucket: not this client's doing.
        assert!(p.check(5).unwrap_err().shared_bucket);
        // The throttled key stays throttled through a sweep.
        reg.sweep();
        assert!(p.check(1).is_err());
        // A reload with the same policy keeps the state.
        let again = reg.policy("p", KeySource::Ip, &w, 2, counter());
        assert!(again.check(1).is_err());
    }
}
