//! Criterion benches for the WAF engine with the shipped default rules.
//! Run: `cargo bench --bench waf` (or a group: `cargo bench --bench waf -- benign`).
//!
//! - `benign/<strategy>`: a typical benign request (about 800 B of headers, 10 query
//!   arguments, a 2 KiB JSON body), per regex-matching strategy;
//! - `attack/<strategy>`: the same with SQL injection in one query argument;
//! - `body_scan/<kind>`: throughput over a 64 KiB body (unparsed text, and JSON);
//! - `load_shapes/<name>`: the exact requests of `benches/load.py`'s `get-args` and
//!   `json-post` scenarios (wrk sends only `Host` and, for the POST, `Content-Type`), so
//!   the engine's share of the proxy's CPU per request can be read off directly; the
//!   `*_varied` ones change the search term, page and JSON text in every request (as the
//!   load script's `*-varied` scenarios do), so values remembered as clean
//!   ([`gateway::waf::memo`]) help only where real traffic repeats too;
//! - `scaling/<strategy>/<n>`: the benign request with n extra regex rules (each with its
//!   own literals, one in ten without a usable literal), n = 0, 200, 400.
//!
//! `WAF_PROFILE=get_args` (or `json_post`) skips criterion and inspects that shape in a
//! loop, for callgrind: `valgrind --tool=callgrind target/release/deps/waf-* `.

use std::path::{Path, PathBuf};

use criterion::{black_box, criterion_group, BenchmarkId, Criterion, Throughput};
use gateway::waf::engine::{Engine, Strategy};
use gateway::waf::request::RequestParts;
use gateway::waf::rule::{self, Loader};
use gateway::waf::{RoutePolicy, Settings, Waf};
use http::{HeaderMap, HeaderValue};

const STRATEGIES: [(Strategy, &str); 4] = [
    (Strategy::Prefilter, "prefilter"),
    (Strategy::Hybrid, "hybrid"),
    (Strategy::Set, "set"),
    (Strategy::PerRule, "per_rule"),
];

fn rule_files() -> Vec<PathBuf> {
    rule::expand(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/*.toml")).unwrap()
}

/// The default rules plus `extra` synthetic regex rules.
fn waf(strategy: Strategy, extra: usize) -> Waf {
    let mut loader = Loader::default();
    for f in rule_files() {
        loader.add(&f, std::fs::read_to_string(&f).unwrap());
    }
    let mut text = String::new();
    let words = [
        "exec", "load", "call", "open", "read", "send", "eval", "scan",
    ];
    for i in 0..extra {
        let w = words[i % words.len()];
        let pattern = if i % 10 == 9 {
            // No literal of three bytes or more: runs on every value (or in the set).
            format!(r"[<>|]\s*[a-z]{{2}}{}\d+\s*[({{]", i % 7)
        } else {
            format!(r"\b(?:x{i}{w}|{w}q{i}z)\s*\(\s*['\x22]?[a-z0-9_]+")
        };
        text.push_str(&format!(
            "[[rules]]\nid = {}\nmsg = \"synthetic {i}\"\ntargets = [\"args\", \"args_names\", \"cookies\", \"headers:user-agent\", \"headers:referer\"]\ntransforms = [\"url_decode_uni\", \"html_entity_decode\", \"lowercase\"]\nmatch = {{ regex = '''{pattern}''' }}\n\n",
            100_000 + i
        ));
    }
    loader.add(Path::new("synthetic.toml"), text);
    let rules = loader.finish().unwrap();
    let settings = Settings::default();
    let engine = Engine::compile(&rules, settings.paranoia_level, strategy);
    Waf::new(engine, settings, vec![])
}

fn headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
        ("accept", "application/json, text/plain, */*"),
        ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://shop.example.com/products/shoes?color=red&size=42"),
        ("content-type", "application/json"),
        ("origin", "https://shop.example.com"),
        ("cookie", "session=3f7a9c1e5b2d4f6a8c0e1b3d5f7a9c1e; theme=dark; _ga=GA1.2.1234567890.1700000000; consent=analytics%3Dno%2Cads%3Dno"),
        ("x-requested-with", "XMLHttpRequest"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "cors"),
        ("sec-ch-ua", "\"Chromium\";v=\"120\", \"Not?A_Brand\";v=\"24\""),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    h
}

const TARGET: &str = "/api/v1/orders?page=2&per_page=25&sort=-created_at&status=shipped&q=blue+running+shoes&from=2024-01-01&to=2024-12-31&currency=EUR&lang=en-GB&ref=newsletter";

/// Real-looking comment text, varied so that no value repeats within a request.
const NOTES: [&str; 8] = [
    "Please gift-wrap; it's for my sister's birthday -- thanks!",
    "Leave at the door (side entrance), don't ring: baby sleeping.",
    "Size runs small? I'd go one up & keep the receipt.",
    "Bought these for the \"Union Street\" 10k run; select the blue pair.",
    "Deliver after 5 pm or on Saturday, 9-12 a.m.",
    "C'est un cadeau. Merci beaucoup!",
    "If out of stock, send the grey/red ones instead (same size).",
    "Order #4471 was missing one item; please add it here.",
];

fn json_body(len: usize) -> Vec<u8> {
    let mut items = Vec::new();
    let mut i = 0;
    while serde_json::to_vec(&items).unwrap().len() < len {
        items.push(serde_json::json!({
            "sku": format!("SKU-{:05}", i * 7919 % 100_000),
            "name": "Trail runner, size 42 (blue/grey)",
            "qty": i % 3 + 1,
            "price": 89.95,
            "note": NOTES[i % NOTES.len()],
        }));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({"customer": {"name": "Anne-Marie O'Neil", "email": "anne@example.com"}, "items": items})).unwrap()
}

fn prose(len: usize) -> Vec<u8> {
    let words = "the quick brown fox jumps over a lazy dog while we're selecting union reps from our group; call me at 555-1234 or email me (not on weekends) & see the docs at https://example.com/docs?page=2 -- thanks! ";
    words.bytes().cycle().take(len).collect()
}

/// The requests `benches/load.py` sends in `get-args` and `json-post`.
fn load_shapes() -> (&'static str, HeaderMap, HeaderMap, Vec<u8>) {
    let mut get_h = HeaderMap::new();
    get_h.insert("host", HeaderValue::from_static("127.0.0.1:19450"));
    let mut post_h = get_h.clone();
    post_h.insert("content-type", HeaderValue::from_static("application/json"));
    let items: Vec<String> = (0..14)
        .map(|i| {
            format!(
                r#"{{"sku":"SKU-{i:05}","name":"Trail runner, size 42 (blue/grey)","qty":{},"note":"Leave at the door (side entrance), don't ring: baby sleeping."}}"#,
                i % 3 + 1
            )
        })
        .collect();
    let body = format!(
        r#"{{"customer":{{"name":"Anne-Marie O'Neil"}},"items":[{}]}}"#,
        items.join(",")
    );
    (
        "/api/v1/orders?page=2&sort=-created_at&status=shipped&q=blue+running+shoes&lang=en-GB",
        get_h,
        post_h,
        body.into_bytes(),
    )
}

/// Words for the varied shapes (the load script's `*-varied` scenarios use the same list).
const WORDS: [&str; 48] = [
    "blue",
    "running",
    "shoes",
    "trail",
    "red",
    "jacket",
    "rain",
    "winter",
    "kids",
    "size",
    "wool",
    "socks",
    "leather",
    "boots",
    "black",
    "white",
    "summer",
    "dress",
    "linen",
    "shirt",
    "slim",
    "fit",
    "jeans",
    "waterproof",
    "hiking",
    "lightweight",
    "men's",
    "women's",
    "sale",
    "new",
    "green",
    "cotton",
    "hat",
    "scarf",
    "gloves",
    "warm",
    "soft",
    "sport",
    "bag",
    "small",
    "large",
    "leave",
    "door",
    "ring",
    "please",
    "side",
    "gift",
    "wrap",
];

/// `n` variants of the load shapes, each with its own search term, page and JSON text
/// (a fixed pseudo-random sequence): the engine cannot reuse values it found clean in an
/// earlier request, except those that do repeat (headers, names, common values).
fn varied_shapes(n: usize) -> (Vec<String>, Vec<Vec<u8>>) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move |m: usize| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % m as u64) as usize
    };
    let mut targets = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..n {
        let mut words = |k: usize, sep: &str| {
            (0..k)
                .map(|_| WORDS[next(WORDS.len())])
                .collect::<Vec<_>>()
                .join(sep)
        };
        let q = words(3, "+");
        targets.push(format!(
            "/api/v1/orders?page={}&sort=-created_at&status=shipped&q={q}&lang=en-GB",
            1 + q.len() * 7 % 400
        ));
        let items: Vec<String> = (0..14)
            .map(|i| {
                let name = words(3, " ");
                let note = format!(
                    "{}, {} ({}): {}.",
                    words(4, " "),
                    words(3, " "),
                    words(2, " "),
                    words(3, " ")
                );
                format!(
                    r#"{{"sku":"SKU-{:05}","name":"{name}","qty":{},"note":"{note}"}}"#,
                    name.len() * 131 + i,
                    i % 3 + 1
                )
            })
            .collect();
        bodies.push(
            format!(
                r#"{{"customer":{{"name":"{}"}},"items":[{}]}}"#,
                words(2, " "),
                items.join(",")
            )
            .into_bytes(),
        );
    }
    (targets, bodies)
}

fn inspect(waf: &Waf, target: &str, h: &HeaderMap, body: &[u8]) -> u32 {
    let v = waf.inspect(
        &RequestParts {
            canonical: None,
            client_ip: None,
            method: "POST",
            target,
            version: "HTTP/1.1",
            headers: h,
            body: Some(body),
        },
        &RoutePolicy::default(),
        false,
    );
    v.score
}

fn bench(c: &mut Criterion) {
    let h = headers();
    let body = json_body(2048);
    let attack = TARGET.replace("q=blue+running+shoes", "q=1%27+OR+%271%27%3D%271");
    let header_bytes: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
    eprintln!(
        "benign request: {} B of headers, {} query args, {} B JSON body",
        header_bytes + TARGET.len(),
        TARGET.matches('&').count() + 1,
        body.len()
    );

    let mut g = c.benchmark_group("benign");
    for (s, name) in STRATEGIES {
        let w = waf(s, 0);
        assert_eq!(inspect(&w, TARGET, &h, &body), 0, "benign request scores 0");
        g.bench_function(name, |b| {
            b.iter(|| inspect(&w, black_box(TARGET), &h, &body))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("attack");
    for (s, name) in STRATEGIES {
        let w = waf(s, 0);
        assert!(inspect(&w, &attack, &h, &body) >= 5);
        g.bench_function(name, |b| {
            b.iter(|| inspect(&w, black_box(&attack), &h, &body))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("body_scan");
    let w = waf(Strategy::Prefilter, 0);
    let text = prose(64 * 1024);
    let json = json_body(64 * 1024);
    let mut th = HeaderMap::new();
    th.insert("host", HeaderValue::from_static("x"));
    th.insert("content-type", HeaderValue::from_static("text/plain"));
    let mut jh = th.clone();
    jh.insert("content-type", HeaderValue::from_static("application/json"));
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("text_64k", |b| {
        b.iter(|| inspect(&w, "/upload", &th, black_box(&text)))
    });
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("json_64k", |b| {
        b.iter(|| inspect(&w, "/upload", &jh, black_box(&json)))
    });
    g.finish();

    let mut g = c.benchmark_group("load_shapes");
    let w = waf(Strategy::Prefilter, 0);
    let (get_target, get_h, post_h, post_body) = load_shapes();
    assert_eq!(inspect(&w, get_target, &get_h, b""), 0);
    assert_eq!(inspect(&w, "/api/v1/orders", &post_h, &post_body), 0);
    g.bench_function("get_args", |b| {
        b.iter(|| inspect(&w, black_box(get_target), &get_h, b""))
    });
    g.bench_function("json_post", |b| {
        b.iter(|| inspect(&w, "/api/v1/orders", &post_h, black_box(&post_body)))
    });
    let (targets, bodies) = varied_shapes(VARIANTS);
    assert!(targets.iter().all(|t| inspect(&w, t, &get_h, b"") == 0));
    assert!(bodies
        .iter()
        .all(|b| inspect(&w, "/api/v1/orders", &post_h, b) == 0));
    let mut i = 0;
    g.bench_function("get_args_varied", |b| {
        b.iter(|| {
            i = (i + 1) % VARIANTS;
            inspect(&w, black_box(&targets[i]), &get_h, b"")
        })
    });
    g.bench_function("json_post_varied", |b| {
        b.iter(|| {
            i = (i + 1) % VARIANTS;
            inspect(&w, "/api/v1/orders", &post_h, black_box(&bodies[i]))
        })
    });
    g.finish();

    let mut g = c.benchmark_group("scaling");
    for (s, name) in STRATEGIES {
        for n in [0usize, 200, 400] {
            let w = waf(s, n);
            assert_eq!(inspect(&w, TARGET, &h, &body), 0);
            g.bench_with_input(BenchmarkId::new(name, n), &n, |b, _| {
                b.iter(|| inspect(&w, black_box(TARGET), &h, &body))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
/// Variants of the varied shapes, cycled through.
const VARIANTS: usize = 4096;

/// `WAF_PROFILE=get_args|json_post[_varied] [WAF_PROFILE_N=n]`: inspects that load shape n times
/// (default 10,000) without criterion, to run under `valgrind --tool=callgrind` or `perf`.
fn profile(shape: &str) {
    let w = waf(Strategy::Prefilter, 0);
    let (get_target, get_h, post_h, post_body) = load_shapes();
    let (targets, bodies) = varied_shapes(VARIANTS);
    let n: usize = std::env::var("WAF_PROFILE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let mut score = 0;
    for i in 0..n {
        let v = i % VARIANTS;
        score += match shape {
            "get_args_varied" => inspect(&w, black_box(&targets[v]), &get_h, b""),
            "json_post_varied" => inspect(&w, "/api/v1/orders", &post_h, black_box(&bodies[v])),
            "get_args" => inspect(&w, black_box(get_target), &get_h, b""),
            "json_post" => inspect(&w, "/api/v1/orders", &post_h, black_box(&post_body)),
            other => panic!("unknown shape {other}: get_args, json_post, …_varied"),
        };
    }
    eprintln!("{n} inspections of {shape}, total score {score}");
}

fn main() {
    if let Ok(shape) = std::env::var("WAF_PROFILE") {
        return profile(&shape);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
