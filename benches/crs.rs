//! Criterion benches for the OWASP Core Rule Set on the compiled engine.
//! Run: `cargo bench --bench crs` (needs `../shared/crs`, CRS v4).
//!
//! - `crs/pl1/benign_get`: a browser-like GET (13 headers, cookies, 10 query arguments);
//! - `crs/pl1/json_post_2k`: the same headers with a 2 KiB JSON body;
//! - `crs/pl1/attack_get`: the GET with SQL injection in one argument (blocked);
//! - `crs/pl4/*`: the benign requests at paranoia level 4;
//! - `native_and_crs/pl1/json_post_2k`: the gateway's default rules plus CRS, as
//!   `Waf::inspect` runs them on the request path.
//!
//! `CRS_PROFILE=benign_get|json_post|load_get|load_json|form_64k|form_64k_tokens|multipart_1m
//! [CRS_PROFILE_N=n]` skips criterion and evaluates that request n times (default 2,000)
//! at PL 1 (`CRS_LONG_VALUE=n`: the regex sets answer values of at least n bytes; a
//! huge n turns them off), for `valgrind --tool=callgrind
//! --toggle-collect='gateway::waf::crs::eval::*evaluate'`. `load_get` and `load_json` are
//! the requests `benches/load.py` sends (`get-args`, `json-post`: wrk's two or three
//! headers), so their counts explain that script's CRS rows; `form_64k` (a 64 KiB form
//! with a long text, the worst shape found so far) and `multipart_1m` (a 1 MiB upload) are
//! its `form-64k` and `upload-1m`; `form_64k_tokens` (its long field a soup of attack
//! fragments) is the worst case for the regex sets, whose scans give up on it.

use std::path::{Path, PathBuf};

use criterion::{black_box, criterion_group, Criterion};
use gateway::waf::crs::{Crs, CrsSettings};
use gateway::waf::request::RequestParts;
use gateway::waf::{RoutePolicy, Settings, Waf};
use http::{HeaderMap, HeaderValue};

fn crs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/crs")
}

fn crs(pl: u8) -> Crs {
    let mut s = CrsSettings::new(crs_dir());
    s.paranoia_level = pl;
    s.detection_paranoia_level = pl;
    Crs::load(&s).expect("CRS loads")
}

fn headers(json: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in [
        ("host", "shop.example.com"),
        ("user-agent", "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"),
        ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
        ("accept-language", "en-GB,en;q=0.9,de;q=0.8"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://shop.example.com/products/shoes?color=red&size=42"),
        ("cookie", "session=3f7a9c1e5b2d4f6a8c0e1b3d5f7a9c1e; theme=dark; _ga=GA1.2.1234567890.1700000000; consent=analytics%3Dno%2Cads%3Dno"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("upgrade-insecure-requests", "1"),
        ("sec-ch-ua", "\"Chromium\";v=\"120\", \"Not?A_Brand\";v=\"24\""),
        ("sec-ch-ua-platform", "\"Windows\""),
    ] {
        h.insert(n, HeaderValue::from_static(v));
    }
    if json {
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("content-length", HeaderValue::from_static("2048"));
    }
    h
}

const TARGET: &str = "/products?page=2&per_page=25&sort=-created_at&category=shoes&q=blue+running+shoes&from=2024-01-01&to=2024-12-31&currency=EUR&lang=en-GB&ref=newsletter";

fn json_body(len: usize) -> Vec<u8> {
    let notes = [
        "Please gift-wrap; it's for my sister's birthday -- thanks!",
        "Leave at the door (side entrance), don't ring: baby sleeping.",
        "Size runs small? I'd go one up & keep the receipt.",
        "Deliver after 5 pm or on Saturday, 9-12 a.m.",
    ];
    let mut items = Vec::new();
    let mut i = 0;
    while serde_json::to_vec(&items).unwrap().len() < len - 120 {
        items.push(serde_json::json!({
            "sku": format!("SKU-{:05}", i * 7919 % 100_000),
            "name": "Trail runner, size 42 (blue/grey)",
            "qty": i % 3 + 1,
            "price": 89.95,
            "note": notes[i % notes.len()],
        }));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({"customer": {"name": "Anne-Marie O'Neil", "email": "anne@example.com"}, "items": items})).unwrap()
}

/// `benches/load.py`'s `get-args` request.
const LOAD_GET_TARGET: &str =
    "/api/v1/orders?page=2&sort=-created_at&status=shipped&q=blue+running+shoes&lang=en-GB";

/// `benches/load.py`'s `json-post` body: 14 order items (2.3 KiB).
fn load_json_body() -> Vec<u8> {
    let items: Vec<String> = (0..14)
        .map(|i| {
            format!(
                "{{\"sku\":\"SKU-{i:05}\",\"name\":\"Trail runner, size 42 (blue/grey)\",\"qty\":{},\
                 \"note\":\"Leave at the door (side entrance), don't ring: baby sleeping.\"}}",
                i % 3 + 1
            )
        })
        .collect();
    format!(
        "{{\"customer\":{{\"name\":\"Anne-Marie O'Neil\"}},\"items\":[{}]}}",
        items.join(",")
    )
    .into_bytes()
}

/// A 64 KiB form POST (`application/x-www-form-urlencoded`): a CMS article, 40 short
/// fields and a long text of prose with punctuation (the shape `benches/load.py`'s
/// `form-64k` sends).
fn form_64k_body() -> Vec<u8> {
    let prose = "The trail was wet after the rain, so we took the long way round (past the \
                 old mill & the bridge) -- it's 12.5 km, about 3 hours; bring water, a hat \
                 and 2 snacks per person! Questions? Ask at the desk: 9-17 h, Mon.-Sat. ";
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!("field_{i}=value+number+{i}&"));
    }
    body.push_str("title=Weekend+walks&tags=outdoor%2Cfamily%2Cspring&content=");
    let mut chunk = String::new();
    for b in prose.bytes() {
        match b {
            b' ' => chunk.push('+'),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => chunk.push(b as char),
            _ => chunk.push_str(&format!("%{b:02X}")),
        }
    }
    while body.len() + chunk.len() <= 64 * 1024 {
        body.push_str(&chunk);
    }
    body.into_bytes()
}

/// A 64 KiB form whose long field is a soup of attack fragments (SQL, shell, XSS,
/// template syntax, punctuation), shuffled deterministically: it passes nearly every gate
/// and keeps making new lazy-DFA states, the worst case for the regex sets.
fn form_64k_tokens_body() -> Vec<u8> {
    let tokens = [
        "select",
        "union",
        "<script>",
        "alert(",
        "';",
        "--",
        "/*",
        "*/",
        "../",
        "etc/passwd",
        "cmd.exe",
        "$(",
        "${",
        "eval(",
        "0x",
        "or 1=1",
        "&&",
        "||",
        "`",
        "%00",
        "\\x",
        "onerror=",
        "javascript:",
        "document.cookie",
        "system(",
        "exec",
        "from",
        "where",
        "sleep(",
        "benchmark(",
        "char(",
        "concat(",
        "{{",
        "}}",
        "<?php",
        "base64_decode",
        "wget ",
        "curl ",
        "/bin/sh",
        ";",
        "|",
        "\"",
        "'",
        "(",
        ")",
        " ",
        "\n",
        "a",
        "1",
    ];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut body = b"title=notes&content=".to_vec();
    while body.len() < 64 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        for b in tokens[(x % tokens.len() as u64) as usize].bytes() {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => body.push(b),
                _ => body.extend_from_slice(format!("%{b:02X}").as_bytes()),
            }
        }
    }
    body
}

/// A 1 MiB multipart upload: three text fields and a 1 MiB file of binary data
/// (`benches/load.py`'s `upload-1m`).
fn multipart_1m_body() -> Vec<u8> {
    let mut body = Vec::new();
    for (n, v) in [
        ("album", "Holiday 2024"),
        ("caption", "Sunset at the beach, day 3"),
        ("public", "1"),
    ] {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{n}\"\r\n\r\n{v}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"beach.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    // Pseudo-random bytes (xorshift), like compressed image data.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..(1 << 20) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        body.push(x as u8);
    }
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    body
}

const BOUNDARY: &str = "----gatewaybench7MA4YWxkTrZu0gW";

/// The headers wrk sends (with a body: its type and length).
fn load_headers(body: Option<(&str, usize)>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("127.0.0.1:19447"));
    if let Some((ctype, n)) = body {
        h.insert("content-type", HeaderValue::from_str(ctype).unwrap());
        h.insert("content-length", HeaderValue::from(n));
    }
    h
}

fn req<'a>(
    method: &'a str,
    target: &'a str,
    h: &'a HeaderMap,
    body: Option<&'a [u8]>,
) -> RequestParts<'a> {
    RequestParts {
        canonical: None,
        method,
        target,
        version: "HTTP/2.0",
        headers: h,
        body,
        client_ip: Some("203.0.113.7".parse().unwrap()),
    }
}

fn bench(c: &mut Criterion) {
    let get_h = headers(false);
    let post_h = headers(true);
    let body = json_body(2048);
    eprintln!("JSON body: {} B", body.len());
    let attack = TARGET.replace("q=blue+running+shoes", "q=1%27+OR+%271%27%3D%271");
    let mut g = c.benchmark_group("crs");
    for pl in [1u8, 4] {
        let crs = crs(pl);
        let get = req("GET", TARGET, &get_h, None);
        let post = req("POST", "/api/orders", &post_h, Some(&body));
        if pl == 1 {
            let out = crs.evaluate(&get, true, &[]);
            assert!(
                out.hits.is_empty() && out.deny.is_none(),
                "benign GET: {:?}",
                out.hits
            );
            let out = crs.evaluate(&post, true, &[]);
            assert!(
                out.hits.is_empty() && out.deny.is_none(),
                "benign POST: {:?}",
                out.hits
            );
            let a = req("GET", &attack, &get_h, None);
            assert!(
                crs.evaluate(&a, true, &[]).deny.is_some(),
                "attack is denied"
            );
            g.bench_function("pl1/attack_get", |b| {
                b.iter(|| crs.evaluate(black_box(&a), true, &[]).inbound_score)
            });
        }
        g.bench_function(format!("pl{pl}/benign_get"), |b| {
            b.iter(|| crs.evaluate(black_box(&get), true, &[]).inbound_score)
        });
        g.bench_function(format!("pl{pl}/json_post_2k"), |b| {
            b.iter(|| crs.evaluate(black_box(&post), true, &[]).inbound_score)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("native_and_crs");
    let files =
        gateway::waf::rule::expand(&Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/*.toml"))
            .unwrap();
    let mut waf =
        Waf::from_files(&files, Settings::default(), gateway::waf::config::STRATEGY).unwrap();
    waf.crs = Some(std::sync::Arc::new(crs(1)));
    let post = req("POST", "/api/orders", &post_h, Some(&body));
    let policy = RoutePolicy::default();
    assert!(!waf.inspect(&post, &policy, false).blocked);
    g.bench_function("pl1/json_post_2k", |b| {
        b.iter(|| waf.inspect(black_box(&post), &policy, false).score)
    });
    g.finish();
}

/// The `CRS_PROFILE` loop (see the module docs).
fn profile(shape: &str) {
    let mut crs = crs(1);
    if let Some(n) = std::env::var("CRS_LONG_VALUE")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        crs.long_value = n;
    }
    let (get_h, post_h, body) = (headers(false), headers(true), json_body(2048));
    let load_body = load_json_body();
    let load_get_h = load_headers(None);
    let load_post_h = load_headers(Some(("application/json", load_body.len())));
    let (form, upload) = (form_64k_body(), multipart_1m_body());
    let tokens = form_64k_tokens_body();
    let tokens_h = load_headers(Some(("application/x-www-form-urlencoded", tokens.len())));
    let form_h = load_headers(Some(("application/x-www-form-urlencoded", form.len())));
    let upload_ctype = format!("multipart/form-data; boundary={BOUNDARY}");
    let upload_h = load_headers(Some((&upload_ctype, upload.len())));
    let r = match shape {
        "benign_get" => req("GET", TARGET, &get_h, None),
        "json_post" => req("POST", "/api/orders", &post_h, Some(&body)),
        "load_get" => RequestParts {
            version: "HTTP/1.1",
            ..req("GET", LOAD_GET_TARGET, &load_get_h, None)
        },
        "load_json" => RequestParts {
            version: "HTTP/1.1",
            ..req("POST", "/api/v1/orders", &load_post_h, Some(&load_body))
        },
        "form_64k" => RequestParts {
            version: "HTTP/1.1",
            ..req("POST", "/cms/articles", &form_h, Some(&form))
        },
        "form_64k_tokens" => RequestParts {
            version: "HTTP/1.1",
            ..req("POST", "/cms/notes", &tokens_h, Some(&tokens))
        },
        "multipart_1m" => RequestParts {
            version: "HTTP/1.1",
            ..req("POST", "/photos/upload", &upload_h, Some(&upload))
        },
        other => panic!(
            "unknown shape {other}: benign_get, json_post, load_get, load_json, form_64k, \
             form_64k_tokens, multipart_1m"
        ),
    };
    let n: usize = std::env::var("CRS_PROFILE_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000);
    let first = crs.evaluate(&r, true, &[]);
    eprintln!(
        "{shape}: {} B of body, hits {:?}",
        r.body.map_or(0, <[u8]>::len),
        first.ids().collect::<Vec<_>>()
    );
    let mut score = 0;
    for _ in 0..n {
        score += crs.evaluate(black_box(&r), true, &[]).inbound_score;
    }
    eprintln!("{n} evaluations of {shape}, total score {score}");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
fn main() {
    if let Ok(shape) = std::env::var("CRS_PROFILE") {
        return profile(&shape);
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
