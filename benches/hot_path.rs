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

    // Phase 1's canonical view: a typical target that is canonical already (the common
    // case: scanned, not copied), one that needs rewriting, and a Host header.
    use gateway::canonical::{canonical_host, canonical_path, Escapes};
    for (name, path) in [
        (
            "canonical_path (canonical, 38 bytes)",
            "/api/v1/customers/12345/orders/recent",
        ),
        (
            "canonical_path (rewritten)",
            "/api/v1/%63ustomers//12345/./orders/../orders/recent",
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| canonical_path(black_box(path), Escapes::Reject).map(|p| p.len()))
        });
    }
    c.bench_function("canonical_host (canonical)", |b| {
        b.iter(|| canonical_host(black_box("www.example.com:8443"), true).map(|h| h.len()))
    });
    c.bench_function("canonical_host (rewritten)", |b| {
        b.iter(|| canonical_host(black_box("WWW.Example.com.:443"), true).map(|h| h.len()))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
