//! Rate limits: token buckets (governor's GCRA) keyed by client IP, by a request header
//! (an API key; hashed, never kept in clear), or by route; several windows composed on
//! one key (e.g. 60/minute, 1,000/hour, 10,000/day), each with a burst.
//!
//! A [`Policy`] is compiled from config; its windows' limiters come from the [`Registry`],
//! which keeps them across reloads (a reload must not hand every client a fresh bucket) as
//! long as the policy and window are unchanged. A request passes when every window has a
//! token; the first window without one decides the 429 and its `Retry-After`.
//!
//! Cost: one hash-map lookup and one compare-and-swap per window (no allocation).
//! Memory: at most `max_keys` tracked keys per window ([`store::BYTES_PER_KEY`] each); past
//! that, new keys share one overflow bucket. A sweeper drops keys whose bucket is full again
//! (indistinguishable from a new client), never a key that is still being throttled.

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

use store::CappedStore;

pub type Limiter = RateLimiter<u128, CappedStore, DefaultClock>;

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
}

/// A compiled rate-limit policy.
pub struct Policy {
    pub name: Arc<str>,
    key: KeySource,
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
}

impl Policy {
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
        for (i, w) in self.windows.iter().enumerate() {
            if let Err(not_until) = w.limiter.check_key(&key) {
                self.rejected.inc();
                let wait = not_until.wait_time_from(self.clock.now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(Rejection {
                    retry_after: secs.max(1),
                    key,
                    window: i,
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

/// The limiters in use, kept across reloads.
pub struct Registry {
    limiters: Mutex<HashMap<String, Arc<Limiter>>>,
    hasher: std::hash::RandomState,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            limiters: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl Registry {
    /// Builds a policy, reusing the limiters of an unchanged policy and window.
    pub fn policy(
        &self,
        name: &str,
        key: KeySource,
        windows: &[WindowSpec],
        max_keys: usize,
        rejected: IntCounter,
    ) -> Policy {
        let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let key_id = match &key {
            KeySource::Ip => "ip".to_string(),
            KeySource::Route => "route".to_string(),
            KeySource::Header(h) => format!("header:{h}"),
        };
        let mut built = Vec::new();
        let mut policy_items = Vec::new();
        for w in windows {
            let label = format!(
                "{name}-{}",
                humantime::format_duration(w.per)
                    .to_string()
                    .replace(' ', "")
            );
            let id = format!(
                "{name}|{key_id}|{}|{:?}|{}|{max_keys}",
                w.requests, w.per, w.burst
            );
            let limiter = map
                .entry(id)
                .or_insert_with(|| {
                    let per_token = w.per / w.requests.max(1);
                    let quota = Quota::with_period(per_token.max(Duration::from_nanos(1)))
                        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                        .allow_burst(NonZeroU32::new(w.burst).unwrap_or(NonZeroU32::MIN));
                    Arc::new(RateLimiter::new(
                        quota,
                        CappedStore::new(max_keys),
                        DefaultClock::default(),
                    ))
                })
                .clone();
            policy_items.push(format!(
                "\"{label}\";q={};w={}",
                w.requests,
                w.per.as_secs().max(1)
            ));
            built.push(Window { label, limiter });
        }
        let policy_header = HeaderValue::from_str(&policy_items.join(", "))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        Policy {
            name: name.into(),
            key,
            windows: built,
            policy_header,
            hasher: self.hasher.clone(),
            clock: DefaultClock::default(),
            rejected,
        }
    }

    /// Drops keys whose buckets are full again and limiters no policy uses; returns the
    /// number of keys still tracked.
    pub fn sweep(&self) -> usize {
        let limiters: Vec<Arc<Limiter>> = {
            let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, l| Arc::strong_count(l) > 1);
            map.values().cloned().collect()
        };
        let mut total = 0;
        for l in limiters {
            l.retain_recent();
            l.shrink_to_fit();
            total += l.len();
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
        assert!(p.check(1).is_err());
        assert!(p.check(2).is_ok());
        // Keys 3, 4, 5 share the overflow bucket: two tokens between them.
        assert!(p.check(3).is_ok());
        assert!(p.check(4).is_ok());
        assert!(p.check(5).is_err());
        // The throttled key stays throttled through a sweep.
        reg.sweep();
        assert!(p.check(1).is_err());
        // A reload with the same policy keeps the state.
        let again = reg.policy("p", KeySource::Ip, &w, 2, counter());
        assert!(again.check(1).is_err());
    }
}
