//! Criterion benches for hot-path pieces that run on every request.
//! Run: `cargo bench --bench hot_path`.

use std::net::IpAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gateway::client_ip::{parse_net, TrustedProxies};
use gateway::proxy::headers::strip_hop_by_hop;
use http::HeaderMap;

fn bench(c: &mut Criterion) {
    let mut headers = HeaderMap::new();
    for (k, v) in [
        ("host", "example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        ),
        ("accept", "text/html,application/xhtml+xml"),
        ("accept-language", "en-GB,en;q=0.9"),
        ("accept-encoding", "gzip, deflate, br"),
        ("cookie", "session=abc123; theme=dark"),
        ("connection", "keep-alive"),
        ("x-forwarded-for", "198.51.100.7, 10.0.0.2"),
    ] {
        headers.insert(k, v.parse().unwrap());
    }
    c.bench_function("strip_hop_by_hop (8 headers)", |b| {
        b.iter_batched_ref(
            || headers.clone(),
            |h| strip_hop_by_hop(black_box(h), false),
            criterion::BatchSize::SmallInput,
        )
    });
    let trusted = TrustedProxies::new(vec![parse_net("10.0.0.0/8").unwrap()]);
    let peer: IpAddr = "10.0.0.1".parse().unwrap();
    c.bench_function("client_ip via trusted X-Forwarded-For", |b| {
        b.iter(|| trusted.client_ip(black_box(peer), black_box(&headers)))
    });
    c.bench_function("request_id::generate", |b| {
        b.iter(gateway::request_id::generate)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
