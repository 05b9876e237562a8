//! Criterion benches for the IP-rule and rate-limit phases.
//! Run: `cargo bench --bench security`.

use std::net::IpAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gateway::ip_rules::{Action, Defaults, IpRuleSet, RequestView, RuleSpec};
use gateway::rate_limit::{KeySource, Registry, WindowSpec};
use http::HeaderMap;
use prometheus::{IntCounter, IntCounterVec, Opts};

/// A deterministic pseudo-random sequence.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
}

fn rules(n: usize) -> Vec<RuleSpec> {
    let mut rng = Lcg(7);
    (0..n)
        .map(|i| {
            let len = [16u8, 20, 24, 28, 32][i % 5];
            let addr = rng.next() & (u32::MAX << (32 - len));
            RuleSpec {
                id: format!("r{i}"),
                action: if i % 3 == 0 {
                    Action::Allow
                } else {
                    Action::Deny
                },
                cidr: format!("{}/{len}", std::net::Ipv4Addr::from(addr)),
                priority: None,
                hosts: vec![],
                routes: vec![],
                path_prefixes: vec![],
                comment: None,
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let counters = IntCounterVec::new(Opts::new("b", "b"), &["rule", "action"]).unwrap();
    let mut specs = rules(100_000);
    specs.sort_by(|a, b| a.cidr.cmp(&b.cidr));
    specs.dedup_by(|a, b| a.cidr == b.cidr);
    let set = IpRuleSet::build(&specs, &[], Defaults::default(), vec![], false, &counters).unwrap();
    let mut rng = Lcg(99);
    let ips: Vec<IpAddr> = (0..4096)
        .map(|_| IpAddr::from(rng.next().to_be_bytes()))
        .collect();
    let mut i = 0;
    c.bench_function(
        &format!("ip decision ({} CIDR rules)", set.rules().len()),
        |b| {
            b.iter(|| {
                i = (i + 1) & 4095;
                let d = set.decide(&RequestView {
                    ip: ips[i],
                    host: "example.com",
                    route: Some("app"),
                    listener: "https",
                    path: "/index.html",
                });
                black_box(d.action)
            })
        },
    );

    let registry = Registry::default();
    let big = 1_000_000_000;
    let policy = registry.policy(
        "per-ip",
        KeySource::Ip,
        &[
            WindowSpec {
                requests: big,
                per: Duration::from_secs(60),
                burst: big,
            },
            WindowSpec {
                requests: big,
                per: Duration::from_secs(3600),
                burst: big,
            },
            WindowSpec {
                requests: big,
                per: Duration::from_secs(86400),
                burst: big,
            },
        ],
        200_000,
        IntCounter::new("r", "r").unwrap(),
    );
    let headers = HeaderMap::new();
    let mut j = 0;
    c.bench_function("rate-limit check (3 windows, 4096 keys)", |b| {
        b.iter(|| {
            j = (j + 1) & 4095;
            let key = policy.key(ips[j], &headers);
            black_box(policy.check(key).is_ok())
        })
    });
}

/// For comparison: governor's own DashMap-backed keyed limiter, one window.
/// Phase 5's per-request work for a session cookie, with 100,000 active sessions: find
/// the cookie among others, derive the session id (keyed hash, or signature check in
/// signed mode), validate (lookup, timeouts, address and User-Agent comparison,
/// last-activity update). Each iteration presents a random one of the 100,000 sessions (so
/// its record is cold, as with real traffic) in a `Cookie` header built just before, in
/// batches of 16 outside the timing (hot, as hyper has just parsed it).
/// `BENCH_SESSIONS=1000` measures the same with every record in cache.
fn sessions(c: &mut Criterion) {
    use criterion::BatchSize;
    use gateway::session::table::Session;
    use gateway::session::{cookies, Sessions};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    std::fs::write(
        &path,
        r#"
[[listeners]]
name = "http"
bind = "127.0.0.1:0"
[[upstreams]]
name = "app"
servers = ["builtin:echo"]
[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
[[routes]]
name = "other"
path_prefix = "/other/"
upstream = "app"
[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user" }
[apps.session]
cookie = "sid"
[[apps]]
name = "signed"
routes = ["other"]
login = { path = "/other/login", user_field = "user" }
[apps.session]
mode = "signed"
keys = [{ id = "k1", secret = "bench-signing-key-of-32-bytes-at-least" }]
"#,
    )
    .unwrap();
    let rt = gateway::compile_config(&path).unwrap();
    let ip: IpAddr = "198.51.100.7".parse().unwrap();
    let ua = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    let n: usize = std::env::var("BENCH_SESSIONS").map_or(100_000, |v| v.parse().unwrap());
    let mut rng = Lcg(7);
    let header = |name: &str, value: &str| {
        let mut h = HeaderMap::new();
        let v = format!("theme=dark; {name}={value}; lang=en-GB");
        h.insert("cookie", v.parse().unwrap());
        h
    };

    // The application's own cookie.
    let app = rt.app("shop").unwrap();
    let sessions = Sessions::new(b"bench-session-key-of-32-bytes-at-least");
    let now = sessions.clock.now();
    let values: Vec<String> = (0..n)
        .map(|_| {
            let w = [rng.next(), rng.next(), rng.next(), rng.next()];
            format!("{:08x}{:08x}{:08x}{:08x}", w[0], w[1], w[2], w[3])
        })
        .collect();
    for (i, v) in values.iter().enumerate() {
        let id = sessions.id_for(app, v.as_bytes());
        let s = Session::new(id, app, Some(format!("user{i}").into()), ip, ua, now);
        sessions.table.register(app, s, usize::MAX);
    }
    assert_eq!(sessions.table.len(), n);
    c.bench_function(
        &format!("session check, app cookie ({n} active sessions)"),
        |b| {
            b.iter_batched_ref(
                || header("sid", &values[rng.next() as usize % n]),
                |h| {
                    let value = cookies::session_cookie(h, "sid").unwrap().unwrap();
                    let id = sessions.id_for(app, value);
                    black_box(sessions.table.validate(app, id, ip, ua, now))
                },
                BatchSize::NumIterations(16),
            )
        },
    );

    // Gateway-issued signed cookies: signature first, then the revocation check.
    let signed = rt.app("signed").unwrap();
    let issued = Sessions::new(b"unused");
    let cookies_signed: Vec<String> = (0..n)
        .map(|i| {
            let id = Sessions::new_id();
            let s = Session::new(id, signed, Some(format!("user{i}").into()), ip, ua, now);
            issued.table.register(signed, s, usize::MAX);
            signed.keys.sign(id).unwrap()
        })
        .collect();
    c.bench_function(
        &format!("session check, signed cookie ({n} active sessions)"),
        |b| {
            b.iter_batched_ref(
                || {
                    header(
                        "__Host-gw_session",
                        &cookies_signed[rng.next() as usize % n],
                    )
                },
                |h| {
                    let value = cookies::session_cookie(h, "__Host-gw_session")
                        .unwrap()
                        .unwrap();
                    let id = signed.keys.verify(value).unwrap();
                    black_box(issued.table.validate(signed, id, ip, ua, now))
                },
                BatchSize::NumIterations(16),
            )
        },
    );
}

fn reference(c: &mut Criterion) {
    use governor::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    let l: governor::DefaultKeyedRateLimiter<u128> =
        RateLimiter::keyed(Quota::per_hour(NonZeroU32::new(1_000_000_000).unwrap()));
    let mut j = 0u128;
    c.bench_function("reference: governor default keyed limiter, 1 window", |b| {
        b.iter(|| {
            j = (j + 1) & 4095;
            black_box(l.check_key(&j).is_ok())
        })
    });
}

criterion_group!(benches, bench, sessions, reference);
criterion_main!(benches);
