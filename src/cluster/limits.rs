//! Rate limits counted once across every instance: GCRA evaluated in Redis by one Lua
//! script over all of a policy's windows (one round trip, atomic), with the time taken
//! from Redis (`TIME`), so instances' clocks do not matter.
//!
//! **Reservations.** A script call may take up to `n` tokens at once (as many as every
//! window has, at most `n`); the instance keeps the extra ones for one second and spends
//! them on the next requests of the same key without asking Redis. `n` is a tenth of the
//! policy's smallest burst, capped by `reserve_max` (default 100; a burst under 20 asks for
//! one token per request and is exact). The approximation, stated: the total admitted across the
//! cluster never exceeds the limit; tokens an instance reserved but did not use within a
//! second are lost, so a key may be refused up to `(n − 1) × instances` requests early.
//! A refusal is remembered until its `Retry-After`, so a throttled client costs no round
//! trips either.
//!
//! Keys: `<prefix>:rl:{<policy>|<key>}:<window>` (one hash slot per client for Redis
//! Cluster), expiring when the bucket is full again. A header key (an API key) is stored
//! as its SHA-256, never in clear.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use super::Cluster;
use crate::rate_limit::{KeySource, Policy};

/// GCRA over every window; grants up to ARGV[1] tokens. Per window i: ARGV[2i] = µs per
/// token, ARGV[2i+1] = burst. Returns {granted, wait µs, window} (wait/window when 0).
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local grant = tonumber(ARGV[1])
local tats = {}
local wait, worst = 0, 0
for i = 1, #KEYS do
  local T = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tats[i] = tat
  local avail = math.floor((now + burst * T - tat) / T)
  if avail < grant then grant = avail end
  if avail < 1 then
    local w = tat + T - burst * T - now
    if w > wait then wait = w; worst = i - 1 end
  end
end
if grant < 1 then return {0, wait, worst} end
for i = 1, #KEYS do
  local T = tonumber(ARGV[2 * i])
  local new = tats[i] + grant * T
  redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000) + 1000)
end
return {grant, 0, 0}
"#;

/// How long reserved tokens stay usable locally.
const GRANT_TTL: Duration = Duration::from_secs(1);
/// Local reservations tracked at most (past it, expired ones are dropped first).
const MAX_GRANTS: usize = 100_000;

/// A verdict from the shared buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny {
        retry_after: u64,
        window: usize,
    },
    /// Redis could not decide and `rate_limits_when_down = "refuse"`.
    Unavailable,
}

#[derive(Clone, Copy)]
enum Local {
    Tokens { left: u32, until: Instant },
    Denied { until: Instant, window: usize },
}

/// The shared buckets' script and this instance's reservations.
pub struct SharedLimits {
    prefix: String,
    reserve_max: u32,
    script: redis::Script,
    local: DashMap<String, Local>,
}

impl SharedLimits {
    pub fn new(prefix: &str, reserve_max: u32) -> SharedLimits {
        SharedLimits {
            prefix: prefix.to_string(),
            reserve_max,
            script: redis::Script::new(SCRIPT),
            local: DashMap::new(),
        }
    }

    /// The bucket id for a request, `<policy>|<key>` (the same on every instance).
    pub fn key(policy: &Policy, ip: IpAddr, headers: &HeaderMap) -> String {
        use std::fmt::Write;
        let mut id = String::with_capacity(policy.name.len() + 48);
        id.push_str(&policy.name);
        id.push('|');
        match policy.key_source() {
            KeySource::Route => id.push_str("route"),
            KeySource::Header(h) if headers.contains_key(h) => {
                let v = headers.get(h).map_or(&[][..], |v| v.as_bytes());
                id.push_str(&crate::secrets::hex(&Sha256::digest(v)[..16]));
            }
            KeySource::Ip | KeySource::Header(_) => {
                let _ = write!(id, "{ip}");
            }
        }
        id
    }

    /// Tokens asked for per round trip for `policy`.
    fn batch(&self, policy: &Policy) -> u32 {
        let smallest = policy.windows().map(|w| w.burst).min().unwrap_or(1);
        (smallest / 10).clamp(1, self.reserve_max)
    }

    /// The shared verdict for one request of bucket `id` (see [`SharedLimits::key`]), or
    /// `None` when Redis could not be asked in time (the caller decides locally).
    pub async fn check(&self, cluster: &Cluster, policy: &Policy, id: &str) -> Option<Decision> {
        let now = Instant::now();
        if let Some(mut l) = self.local.get_mut(id) {
            match *l {
                Local::Tokens { left, until } if left > 0 && until > now => {
                    *l = Local::Tokens {
                        left: left - 1,
                        until,
                    };
                    return Some(Decision::Allow);
                }
                Local::Denied { until, window } if until > now => {
                    let wait = until - now;
                    return Some(Decision::Deny {
                        retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                        window,
                    });
                }
                _ => {}
            }
        }
        let n = self.batch(policy);
        let mut inv = self.script.prepare_invoke();
        for (i, _) in policy.windows().enumerate() {
            inv.key(format!("{}:rl:{{{id}}}:{i}", self.prefix));
        }
        inv.arg(n);
        for w in policy.windows() {
            let per_token = (w.per.as_micros() / u128::from(w.requests.max(1))).max(1) as u64;
            inv.arg(per_token).arg(w.burst.max(1));
        }
        let (granted, wait_us, window): (u32, u64, usize) = cluster
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        if self.local.len() >= MAX_GRANTS {
            let now = Instant::now();
            self.local.retain(|_, l| match *l {
                Local::Tokens { until, .. } | Local::Denied { until, .. } => until > now,
            });
        }
        let now = Instant::now();
        if granted == 0 {
            let wait = Duration::from_micros(wait_us.max(1));
            self.local.insert(
                id.to_string(),
                Local::Denied {
                    until: now + wait,
                    window,
                },
            );
            return Some(Decision::Deny {
                retry_after: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
                window,
            });
        }
        if granted > 1 {
            self.local.insert(
                id.to_string(),
                Local::Tokens {
                    left: granted - 1,
                    until: now + GRANT_TTL,
                },
            );
        } else {
            self.local.remove(id);
        }
        Some(Decision::Allow)
    }

    /// Forgets expired reservations and refusals.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.local.retain(|_, l| match *l {
            Local::Tokens { until, .. } | Local::Denied { until, .. } => until > now,
        });
    }
}
