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

criterion_group!(benches, bench, reference);
criterion_main!(benches);
