//! One request, one meaning: each spelling of a target is decided on (route, IP-rule
//! scope, session requirement) in its canonical form, and the upstream receives that form;
//! spellings servers disagree on are refused. HTTP/1.1 (raw bytes, as sent) and HTTP/2.

use std::time::Duration;

use crate::support::*;

const EXTRA: &str = r#"
[[routes]]
name = "admin-area"
path_prefix = "/admin"
upstream = "app"
ip_default = "deny"

[[routes]]
name = "files"
path_prefix = "/files/"
upstream = "app"
path_escapes = "keep"

[[routes]]
name = "legacy"
path_prefix = "/legacy/"
upstream = "app"
forward_target = "original"

[[routes]]
name = "shop"
path_prefix = "/Shop/"
upstream = "app"
case_insensitive = true

[[ip_rules.rules]]
name = "no-shop-admin"
action = "deny"
cidr = "0.0.0.0/0"
path_prefixes = ["/shop/admin"]

[[ip_rules.rules]]
name = "no-private"
action = "deny"
cidr = "0.0.0.0/0"
path_prefixes = ["/private"]

[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user" }

[apps.session]
cookie = "sid"
invalid = "reject"
require_paths = ["/account"]
"#;

/// `(target as sent, status, what the upstream receives when forwarded)`.
const TABLE: &[(&str, u16, &str)] = &[
    // The session requirement on /account, however it is spelled.
    ("/account", 401, ""),
    ("/%61ccount", 401, ""),
    ("/acc%6Funt", 401, ""),
    ("/acc%6funt", 401, ""),
    ("//account", 401, ""),
    ("/./account", 401, ""),
    ("/x/../account", 401, ""),
    ("/x/%2E%2e/account", 401, ""),
    // Servlet containers drop `;parameters` from segments: decided without them.
    ("/account;jsessionid=1", 401, ""),
    ("/;x/account", 401, ""),
    // Route choice: the admin area denies by IP default.
    ("/admin", 403, ""),
    ("/%61dmin/x", 403, ""),
    ("//admin/x", 403, ""),
    ("/public/../admin/", 403, ""),
    ("/admin;x/panel", 403, ""),
    // IP rule scoped to a path.
    ("/private/x", 403, ""),
    ("/%70rivate/x", 403, ""),
    ("/p/.././private", 403, ""),
    // Refused: servers disagree on these.
    ("/x/..;/admin", 400, ""),
    ("/x/..%3B/admin", 400, ""),
    ("/a%2Fb", 400, ""),
    ("/a%2fb", 400, ""),
    ("/a%5Cb", 400, ""),
    ("/a%00b", 400, ""),
    ("/a%zz", 400, ""),
    ("/a%4", 400, ""),
    ("/%C0%AF", 400, ""),
    ("/caf%E9", 400, ""),
    ("/../etc/passwd", 400, ""),
    ("/a/../../etc/passwd", 400, ""),
    // Forwarded in canonical form.
    ("/hello", 200, "/hello"),
    (
        "/he%6Clo//world/./x?q=%41&r=..%2F",
        200,
        "/hello/world/x?q=%41&r=..%2F",
    ),
    ("/caf%c3%a9", 200, "/caf%C3%A9"),
    ("/a%3bb", 200, "/a%3Bb"),
    ("/~user/%7Eother", 200, "/~user/~other"),
    ("/hello;v=1/x?q=1", 200, "/hello;v=1/x?q=1"),
    // A route that keeps encoded slashes; one that forwards the original bytes.
    ("/files/a%2fb/./c", 200, "/files/a%2Fb/c"),
    ("/legacy/./x%41", 200, "/legacy/./x%41"),
    // A case-insensitive route: decided on the lower-cased path, forwarded with its case.
    ("/SHOP/Admin/x", 403, ""),
    ("/shop/%41DMIN", 403, ""),
    ("/Shop/Items/AbC", 200, "/Shop/Items/AbC"),
    ("/sHoP/./Items/AbC?Q=1", 200, "/sHoP/Items/AbC?Q=1"),
];

async fn h1(gw: &TestGateway, target: &str, headers: &str) -> (u16, String) {
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
    let (out, _) = raw_exchange(gw.addr("http"), req.as_bytes(), Duration::from_secs(3)).await;
    let status = out
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no response to {target}: {out:?}"));
    let body = out
        .find("\r\n\r\n")
        .map(|i| out[i + 4..].to_string())
        .unwrap_or_default();
    (status, body)
}

fn upstream_target(body: &str) -> String {
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    let uri = echo["uri"].as_str().unwrap();
    // The echo upstream prints the absolute URI the pool sent to.
    match uri.find("://") {
        Some(i) => uri[i + 3..]
            .find('/')
            .map_or("/".into(), |p| uri[i + 3 + p..].to_string()),
        None => uri.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_is_decided_and_forwarded_in_canonical_form_h1() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], EXTRA)).await;
    for &(target, status, forwarded) in TABLE {
        let (got, body) = h1(&gw, target, "").await;
        assert_eq!(got, status, "HTTP/1.1 {target}: {body}");
        if status == 200 {
            assert_eq!(upstream_target(&body), forwarded, "HTTP/1.1 {target}");
        }
    }
    // Refused requests never reached the upstream: only the 200s did.
    let forwarded = TABLE.iter().filter(|t| t.1 == 200).count();
    assert_eq!(up.hits(), forwarded);
    // Events name the canonical path (they are sampled per address: the first is kept).
    let blocked = events_of(&gw, "ip_blocked").await;
    assert!(!blocked.is_empty());
    for e in &blocked {
        let path = e["path"].as_str().unwrap();
        assert!(
            [
                "/admin",
                "/admin/x",
                "/admin/",
                "/private/x",
                "/private",
                "/shop/admin/x"
            ]
            .contains(&path),
            "{e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_spelling_is_decided_and_forwarded_in_canonical_form_h2() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], EXTRA)).await;
    let tls = gw.tls();
    for &(target, status, forwarded) in TABLE {
        // A fresh connection each time: a 400 may close it.
        let mut c = tls.h2(gw.addr("https")).await;
        let req = http::Request::get(format!("https://localhost{target}"))
            .body(full(""))
            .unwrap();
        let r = Reply::from(c.send(req).await.unwrap()).await;
        assert_eq!(r.status, status, "HTTP/2 {target}: {}", r.text());
        if status == 200 {
            assert_eq!(upstream_target(&r.text()), forwarded, "HTTP/2 {target}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_canonical_and_ambiguous_ones_refused() {
    let up = echo_upstream().await;
    let extra = r#"
[[routes]]
name = "shop"
host = "shop.example"
path_prefix = "/"
upstream = "app"
ip_default = "deny"
"#;
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    let raw = |req: String| {
        let addr = gw.addr("http");
        async move {
            let (out, _) = raw_exchange(addr, req.as_bytes(), Duration::from_secs(3)).await;
            out.get(9..12).unwrap_or("").to_string()
        }
    };
    // Every spelling of the host reaches the host's route (which denies).
    for host in [
        "shop.example",
        "SHOP.Example",
        "shop.example.",
        "shop.example:80",
    ] {
        let s = raw(format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(s, "403", "Host: {host}");
    }
    // Another host is another route.
    let s = raw("GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".into()).await;
    assert_eq!(s, "200");
    for (host, why) in [
        ("user@shop.example", "user information"),
        ("shop..example", "empty label"),
        ("shop.example:99999", "port"),
        ("shop.example:x", "port"),
        ("shop example", "space"),
    ] {
        let s = raw(format!(
            "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(s, "400", "Host: {host} ({why})");
    }
    // An absolute-form target names the authority: it must agree with Host.
    let s = raw(
        "GET http://other.example/ HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(s, "400");
    let s = raw(
        "GET http://SHOP.example/x HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n"
            .into(),
    )
    .await;
    assert_eq!(s, "403");
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_from_untrusted_peers_are_dropped() {
    let up = echo_upstream().await;
    let headers = "X-Real-IP: 1.2.3.4\r\nForwarded: for=1.2.3.4\r\nTrue-Client-IP: 1.2.3.4\r\n\
X-Original-URL: /admin\r\nX-Rewrite-URL: /admin\r\nX-Forwarded-Prefix: /admin\r\n\
X-Forwarded-Port: 443\r\nX_User: admin\r\nX-Kept: yes\r\n";
    let dropped = [
        "x-real-ip",
        "forwarded",
        "true-client-ip",
        "x-original-url",
        "x-rewrite-url",
        "x-forwarded-prefix",
        "x-forwarded-port",
        "x_user",
    ];
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let (status, body) = h1(&gw, "/", headers).await;
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    for h in dropped {
        assert!(echoed_header(&echo, h).is_none(), "{h} forwarded: {echo}");
    }
    assert_eq!(echoed_header(&echo, "x-kept").as_deref(), Some("yes"));
    drop(gw);

    // From a trusted proxy they pass.
    let gw = TestGateway::start(&trusted_config(&up, "")).await;
    let (_, body) = h1(&gw, "/", headers).await;
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    for h in dropped {
        assert!(echoed_header(&echo, h).is_some(), "{h} dropped: {echo}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_configured_upgrades_are_tunnelled() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    for (proto, forwarded) in [("h2c", false), ("websocket", true), ("WebSocket", true)] {
        let (status, body) = h1(
            &gw,
            "/",
            &format!("Upgrade: {proto}\r\nConnection: Upgrade\r\n"),
        )
        .await;
        assert_eq!(status, 200, "{proto}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            echoed_header(&echo, "upgrade").is_some(),
            forwarded,
            "{proto}: {echo}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_the_inspection_cannot_read_are_refused() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let post = |headers: &'static str| {
        let addr = gw.addr("http");
        async move {
            let req = format!(
                "POST /form HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: 3\r\nConnection: close\r\n\r\na=b"
            );
            let (out, _) = raw_exchange(addr, req.as_bytes(), Duration::from_secs(3)).await;
            out.get(9..12).unwrap_or("").to_string()
        }
    };
    let form = "Content-Type: application/x-www-form-urlencoded\r\n";
    assert_eq!(post("Content-Encoding: gzip\r\n").await, "415");
    assert_eq!(post("Content-Encoding: identity\r\n").await, "200");
    assert_eq!(
        post("Content-Type: application/x-www-form-urlencoded; charset=utf-7\r\n").await,
        "415"
    );
    assert_eq!(
        post("Content-Type: application/json; charset=\"IBM037\"\r\n").await,
        "415"
    );
    assert_eq!(
        post("Content-Type: application/x-www-form-urlencoded; charset=UTF-8\r\n").await,
        "200"
    );
    assert_eq!(
        post("Content-Type: text/plain; charset=utf-7\r\n").await,
        "200"
    );
    let twice =
        "Content-Type: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n";
    assert_eq!(post(twice).await, "400");
    assert_eq!(post(form).await, "200");
    assert_eq!(up.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_are_decoded_for_inspection_when_configured() {
    use std::io::Write;
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let up = echo_upstream().await;
    let extra = format!(
        "\n[bans]\nenabled = false\n\n[requests]\ncontent_encoding = \"decode\"\nmax_decompression_ratio = 50\n\n[waf]\nrules = [\"{}/rules/*.toml\"]\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let gw = TestGateway::start(&base_config(&[up.url()], &extra)).await;
    let post = |coding: &'static str, body: Vec<u8>| {
        let addr = gw.addr("http");
        async move {
            let mut c = Sender::plain(addr).await;
            let req = http::Request::post("/search")
                .header("host", "localhost")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("content-encoding", coding)
                .body(full(body))
                .unwrap();
            Reply::from(c.send(req).await.unwrap()).await
        }
    };
    // An attack the rules only see once the body is decoded.
    let attack = gzip(b"q=1%27%20UNION%20SELECT%20password%20FROM%20users--");
    assert_eq!(post("gzip", attack).await.status, 403);
    // A benign compressed form reaches the app as sent (still compressed).
    let benign = gzip(b"q=blue+running+shoes&page=2");
    let r = post("gzip", benign.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let echo = r.json();
    assert_eq!(echo["body_len"], benign.len());
    assert_eq!(
        echoed_header(&echo, "content-encoding").as_deref(),
        Some("gzip")
    );
    // A bomb, a body that does not decode, and a coding that cannot be decoded.
    let bomb = gzip(&vec![b'a'; 100_000]);
    assert_eq!(post("gzip", bomb).await.status, 413);
    assert_eq!(post("gzip", b"not gzip".to_vec()).await.status, 400);
    assert_eq!(post("br", b"x".to_vec()).await.status, 415);
    assert_eq!(post("gzip, gzip", gzip(&gzip(b"q=1"))).await.status, 415);
    assert_eq!(up.hits(), 1);
}
