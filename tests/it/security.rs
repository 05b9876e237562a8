//! IP rules, rate limits and bans through the running gateway, with clients whose address
//! comes from `X-Forwarded-For` set by a trusted proxy (the test client on 127.0.0.1).

use std::time::Duration;

use serde_json::json;

use crate::support::*;

/// A GET from `client` (through the trusted proxy header) to `path`, with extra headers.
async fn get_as(s: &mut Sender, client: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = hyper::Request::get(path)
        .header("host", "localhost")
        .header("x-forwarded-for", client);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::from(s.send(req.body(full("")).unwrap()).await.unwrap()).await
}

const RULES: &str = r#"
[[routes]]
name = "private"
path_prefix = "/private"
upstream = "app"
ip_default = "deny"

[ip_rules]
default = "allow"

[[ip_rules.rules]]
name = "ten-deny"
action = "deny"
cidr = "10.0.0.0/8"
priority = 20

[[ip_rules.rules]]
name = "office-allow"
action = "allow"
cidr = "10.1.0.0/16"
priority = 10

[[ip_rules.rules]]
name = "doc-v6-deny"
action = "deny"
cidr = "2001:db8::/32"

[[ip_rules.rules]]
name = "admin-paths"
action = "deny"
cidr = "192.0.2.0/24"
path_prefixes = ["/admin"]
"#;

#[tokio::test]
async fn first_match_by_priority_ipv6_scopes_and_defaults_agree_with_the_test_endpoint() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&trusted_config(&up, RULES)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    let cases = [
        ("10.1.2.3", "/", 200, "office-allow"),
        ("10.2.0.1", "/", 403, "ten-deny"),
        ("2001:db8::5", "/", 403, "doc-v6-deny"),
        ("2001:db9::1", "/", 200, ""),
        ("192.0.2.1", "/admin/users", 403, "admin-paths"),
        ("192.0.2.1", "/public", 200, ""),
        ("8.8.8.8", "/private/x", 403, ""),
        ("10.1.2.3", "/private/x", 200, "office-allow"),
    ];
    for (ip, path, status, rule) in cases {
        let r = get_as(&mut s, ip, path, &[]).await;
        assert_eq!(r.status, status, "{ip} {path}");
        if status == 403 {
            assert_eq!(
                r.json()["request_id"],
                r.headers["x-request-id"].to_str().unwrap()
            );
        }
        let t = api(
            &gw,
            "POST",
            "/api/v1/ip-rules/test",
            Some(json!({"ip": ip, "host": "localhost", "path": path})),
        )
        .await;
        assert_eq!(t.status, 200, "{}", t.text());
        let t = t.json();
        let expected = if status == 200 { "allow" } else { "deny" };
        assert_eq!(t["decision"], expected, "{ip} {path}: {t}");
        let decided_rule = t["rule"]["id"].as_str().unwrap_or("");
        assert_eq!(decided_rule, rule, "{ip} {path}");
    }
    // Refused requests never reached the upstream: 4 of 8 got through.
    assert_eq!(up.hits(), 4);

    let blocked = events_of(&gw, "ip_blocked").await;
    assert_eq!(blocked.len(), 4);
    let by_ten = blocked
        .iter()
        .find(|e| e["client_ip"] == "10.2.0.1")
        .unwrap();
    assert_eq!(by_ten["rule_ids"][0], "ten-deny");
    assert_eq!(by_ten["risk"], "medium");

    let rules = api(&gw, "GET", "/api/v1/ip-rules", None).await.json();
    let ten = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "ten-deny")
        .unwrap()
        .clone();
    assert_eq!(ten["requests"], 1);
    assert_eq!(ten["source"], "config");
    let mut m = Sender::plain(gw.admin()).await;
    let metrics = m.get("/metrics").await.text();
    assert!(
        metrics.contains("gateway_ip_rule_requests_total{action=\"deny\",rule=\"ten-deny\"} 1"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = r#"
[[ip_rules.rules]]
name = "loopback-local"
action = "deny"
cidr = "127.0.0.1"
path_prefixes = ["/local"]

[[ip_rules.rules]]
name = "doc-net"
action = "deny"
cidr = "203.0.113.0/24"
"#;
    // No trusted proxies: the TCP peer (127.0.0.1) is the client, whatever the header says.
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(get_as(&mut s, "8.8.8.8", "/local", &[]).await.status, 403);
    assert_eq!(
        get_as(&mut s, "203.0.113.5", "/other", &[]).await.status,
        200
    );
    gw.shutdown().await;

    // Trusted: the header is believed.
    let gw = TestGateway::start(&trusted_config(&up, extra)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(get_as(&mut s, "8.8.8.8", "/local", &[]).await.status, 200);
    assert_eq!(
        get_as(&mut s, "203.0.113.5", "/other", &[]).await.status,
        403
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn api_rules_merge_with_config_rules_and_survive_a_restart() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&trusted_config(&up, RULES)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(get_as(&mut s, "198.51.100.7", "/", &[]).await.status, 200);

    let r = api(
        &gw,
        "POST",
        "/api/v1/ip-rules",
        Some(json!({"action": "deny", "cidr": "198.51.100.0/24", "comment": "scanner"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("api-"));
    assert_eq!(get_as(&mut s, "198.51.100.7", "/", &[]).await.status, 403);
    // An API rule at priority 15 sits between the config's 10 and 20.
    let r = api(
        &gw,
        "POST",
        "/api/v1/ip-rules",
        Some(json!({"action": "deny", "cidr": "10.1.9.0/24", "priority": 5})),
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(get_as(&mut s, "10.1.9.9", "/", &[]).await.status, 403);
    assert_eq!(get_as(&mut s, "10.1.8.9", "/", &[]).await.status, 200);
    // Each rule's count survives the rebuild that adding another rule causes.
    let listed = api(&gw, "GET", "/api/v1/ip-rules", None).await.json();
    let count = |rule: &str| {
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == rule)
            .map(|r| r["requests"].clone())
    };
    assert_eq!(count(&id), Some(json!(1)), "{listed}");

    // Invalid input is refused with the reason; config rules are not the API's to change.
    let r = api(
        &gw,
        "POST",
        "/api/v1/ip-rules",
        Some(json!({"action": "deny", "cidr": "10.0.0.1/8"})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("10.0.0.0/8"));
    let r = api(
        &gw,
        "PATCH",
        "/api/v1/ip-rules/ten-deny",
        Some(json!({"action": "allow"})),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(
        api(&gw, "DELETE", "/api/v1/ip-rules/nope", None)
            .await
            .status,
        404
    );

    let r = api(
        &gw,
        "PATCH",
        &format!("/api/v1/ip-rules/{id}"),
        Some(json!({"action": "allow"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get_as(&mut s, "198.51.100.7", "/", &[]).await.status, 200);
    assert_eq!(events_of(&gw, "ip_rule_created").await.len(), 2);
    assert_eq!(events_of(&gw, "ip_rule_modified").await.len(), 1);

    // Restart: the API rules are still there and still decide.
    drop(s);
    let gw = TestGateway::restart(gw.stop_keeping_files().await).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(get_as(&mut s, "10.1.9.9", "/", &[]).await.status, 403);
    let r = api(&gw, "DELETE", &format!("/api/v1/ip-rules/{id}"), None).await;
    assert_eq!(r.status, 200);
    let deleted = events_of(&gw, "ip_rule_deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["risk"], "high");
    // A reload keeps the API rules.
    assert_eq!(api(&gw, "POST", "/api/v1/reload", None).await.status, 200);
    assert_eq!(get_as(&mut s, "10.1.9.9", "/", &[]).await.status, 403);
    gw.shutdown().await;
}

const LIMITS: &str = r#"
[[routes]]
name = "api"
path_prefix = "/api"
upstream = "app"
rate_limits = ["per-key"]

[[rate_limits]]
name = "per-ip"
key = "ip"
limits = [{ requests = 5, per = "1m" }, { requests = 100, per = "1h" }]

[[rate_limits]]
name = "per-key"
key = "header:x-api-key"
limits = [{ requests = 2, per = "1m" }]
routes = ["api"]

[bans]
enabled = false
"#;

#[tokio::test]
async fn a_burst_gets_exactly_its_allowance_then_429_with_headers() {
    let up = named_upstream("a", Duration::ZERO).await;
    let gw = TestGateway::start(&trusted_config(&up, LIMITS)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    let mut statuses = Vec::new();
    let mut last = None;
    for _ in 0..8 {
        let r = get_as(&mut s, "192.0.2.50", "/", &[]).await;
        statuses.push(r.status);
        last = Some(r);
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    let r = last.unwrap();
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=12).contains(&retry), "{retry}");
    assert_eq!(
        r.headers["ratelimit-policy"],
        "\"per-ip-1m\";q=5;w=60, \"per-ip-1h\";q=100;w=3600"
    );
    assert_eq!(
        r.headers["ratelimit"].to_str().unwrap(),
        format!("\"per-ip-1m\";r=0;t={retry}")
    );
    assert_eq!(r.json()["status"], 429);
    // Another client is not affected.
    assert_eq!(get_as(&mut s, "192.0.2.51", "/", &[]).await.status, 200);
    // The /api route has its own policy, keyed by API key.
    for (key, want) in [("k1", 200), ("k1", 200), ("k1", 429), ("k2", 200)] {
        let r = get_as(&mut s, "192.0.2.50", "/api/x", &[("x-api-key", key)]).await;
        assert_eq!(r.status, want, "{key}");
    }
    // One sampled event per key, not one per refusal.
    let limited = events_of(&gw, "rate_limited").await;
    assert_eq!(limited.len(), 2, "{limited:?}");
    assert!(limited.iter().all(|e| e["risk"] == "medium"));
    // The API key itself is not stored.
    assert!(!limited.iter().any(|e| e.to_string().contains("k1")));
    gw.shutdown().await;
}

#[tokio::test]
async fn violations_ban_then_the_ban_expires_and_manual_bans_survive_restart() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = r#"
[[rate_limits]]
name = "tight"
limits = [{ requests = 1, per = "1h" }]

[bans]
threshold = 3
window = "1m"
duration = "2s"
"#;
    let gw = TestGateway::start(&trusted_config(&up, extra)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get_as(&mut s, "192.0.2.77", "/", &[]).await.status);
    }
    // One allowed, three 429s (the third is the third violation), then banned.
    assert_eq!(statuses, [200, 429, 429, 429, 403, 403]);
    let banned = events_of(&gw, "ip_banned").await;
    assert_eq!(banned.len(), 1);
    assert_eq!(banned[0]["client_ip"], "192.0.2.77");
    assert_eq!(banned[0]["risk"], "high");
    let list = api(&gw, "GET", "/api/v1/bans", None).await.json();
    assert_eq!(list["items"][0]["ip"], "192.0.2.77");
    assert_eq!(list["items"][0]["manual"], false);
    let t = api(
        &gw,
        "POST",
        "/api/v1/ip-rules/test",
        Some(json!({"ip": "192.0.2.77"})),
    )
    .await
    .json();
    assert_eq!(t["decided_by"], "ban");
    // Expiry: after 2 s the ban is gone (the rate limit still applies).
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(get_as(&mut s, "192.0.2.77", "/", &[]).await.status, 429);

    // A manual ban, kept across a restart, lifted through the API.
    let r = api(
        &gw,
        "POST",
        "/api/v1/bans",
        Some(json!({"ip": "2001:db8::66", "duration": "1h", "reason": "abuse report 4711"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(get_as(&mut s, "2001:db8::66", "/", &[]).await.status, 403);
    let bad = api(
        &gw,
        "POST",
        "/api/v1/bans",
        Some(json!({"ip": "1.2.3.4", "duration": "0s", "reason": "x"})),
    )
    .await;
    assert_eq!(bad.status, 422);
    drop(s);
    let gw = TestGateway::restart(gw.stop_keeping_files().await).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    assert_eq!(get_as(&mut s, "2001:db8::66", "/", &[]).await.status, 403);
    assert_eq!(
        api(&gw, "DELETE", "/api/v1/bans/2001:db8::66", None)
            .await
            .status,
        200
    );
    assert_eq!(get_as(&mut s, "2001:db8::66", "/", &[]).await.status, 200);
    assert_eq!(
        api(&gw, "DELETE", "/api/v1/bans/2001:db8::66", None)
            .await
            .status,
        404
    );
    assert_eq!(events_of(&gw, "ip_unbanned").await.len(), 1);
    gw.shutdown().await;
}

/// One million distinct client addresses (through the trusted-proxy header) against the
/// shipped three-window policy: the gateway's memory stays under the bound (3 × `max_keys` ×
/// 192 bytes for the buckets and the ban scores, plus 64 MiB for everything else), and at
/// least every tracked address gets its allowance (new addresses beyond `max_keys` share
/// one overflow bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_client_addresses_keep_memory_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CLIENTS: u32 = 1_000_000;
    const CONNS: u32 = 8;
    const MAX_KEYS: u64 = 100_000;
    let up = named_upstream("a", Duration::ZERO).await;
    let bg = BinaryGateway::start(|port| {
        binary_config(&[up.url()], port, false).replace(
            "[server]\n",
            "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
        ) + &format!(
            r#"
[[rate_limits]]
name = "per-ip"
limits = [{{ requests = 60, per = "1m" }}, {{ requests = 1000, per = "1h" }}, {{ requests = 10000, per = "1d" }}]
max_keys = {MAX_KEYS}
"#
        )
    })
    .await;
    let pid = bg.child.id();
    let before = rss_kib(&pid.to_string());
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CONNS {
        let addr = bg.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (mut rd, mut wr) = stream.split();
            let per_conn = CLIENTS / CONNS;
            let writer = async {
                let mut buf = Vec::with_capacity(64 * 1024);
                for i in 0..per_conn {
                    let n = c * per_conn + i;
                    // 10.x.y.z and, for every eighth, an IPv6 address: all distinct.
                    let ip = if n % 8 == 0 {
                        format!("2001:db8::{:x}:{:x}", n >> 16, n & 0xffff)
                    } else {
                        format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
                    };
                    buf.extend_from_slice(
                        format!("GET / HTTP/1.1\r\nhost: x\r\nx-forwarded-for: {ip}\r\n\r\n")
                            .as_bytes(),
                    );
                    if buf.len() > 60 * 1024 {
                        wr.write_all(&buf).await.unwrap();
                        buf.clear();
                    }
                }
                wr.write_all(&buf).await.unwrap();
            };
            let reader = async {
                let mut seen = 0u32;
                let mut ok = 0u32;
                let mut buf = vec![0u8; 256 * 1024];
                let mut carry = Vec::new();
                while seen < per_conn {
                    let n = rd.read(&mut buf).await.unwrap();
                    assert!(n > 0, "connection closed after {seen} responses");
                    carry.extend_from_slice(&buf[..n]);
                    let mut start = 0;
                    while let Some(pos) = find(&carry[start..], b"HTTP/1.1 ") {
                        let at = start + pos;
                        if carry.len() < at + 12 {
                            break;
                        }
                        seen += 1;
                        if &carry[at + 9..at + 12] == b"200" {
                            ok += 1;
                        }
                        start = at + 12;
                    }
                    carry.drain(..start);
                }
                ok
            };
            let (_, ok) = tokio::join!(writer, reader);
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let after = rss_kib(&pid.to_string());
    let mut m = Sender::plain(bg.addr).await;
    drop(m.get("/").await);
    eprintln!("{CLIENTS} clients in {elapsed:?}, {ok} allowed; RSS {before} KiB -> {after} KiB");
    // Every address was new and under its limit: all allowed (the overflow bucket, shared by
    // addresses beyond the cap, holds 60 a minute, so some of those may be refused).
    assert!(ok as u64 >= MAX_KEYS, "{ok} allowed");
    let bound_kib = 3 * MAX_KEYS * 64 * 3 / 1024 + 64 * 1024;
    assert!(
        after.saturating_sub(before) < bound_kib,
        "RSS grew {} KiB, bound {bound_kib} KiB",
        after - before
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn ipv6_clients_are_counted_by_prefix_and_shared_bucket_429s_do_not_ban() {
    let up = named_upstream("a", Duration::ZERO).await;
    let extra = r#"
[[rate_limits]]
name = "tight"
limits = [{ requests = 1, per = "1h" }]
max_keys = 3

[bans]
threshold = 2
window = "1m"
duration = "1m"
"#;
    let gw = TestGateway::start(&trusted_config(&up, extra)).await;
    let mut s = Sender::plain(gw.addr("http")).await;
    // Addresses in one /64 are one client: its allowance is spent by the first; the next
    // two (other addresses, same /64) are its violations, and the second bans the /64.
    assert_eq!(
        get_as(&mut s, "2001:db8:1:2::1", "/", &[]).await.status,
        200
    );
    assert_eq!(
        get_as(&mut s, "2001:db8:1:2::2", "/", &[]).await.status,
        429
    );
    assert_eq!(
        get_as(&mut s, "2001:db8:1:2:ffff::9", "/", &[])
            .await
            .status,
        429
    );
    assert_eq!(
        get_as(&mut s, "2001:db8:1:2::abcd", "/", &[]).await.status,
        403
    );
    // Another /64 is another client.
    assert_eq!(
        get_as(&mut s, "2001:db8:1:3::1", "/", &[]).await.status,
        200
    );
    let list = api(&gw, "GET", "/api/v1/bans", None).await.json();
    assert_eq!(list["items"][0]["ip"], "2001:db8:1:2::", "{list}");

    // The policy tracks 3 clients now (the /64s and one IPv4 below); beyond that, new
    // addresses share one overflow bucket. Its 429s are not their violations: nobody
    // is banned, however many arrive.
    assert_eq!(get_as(&mut s, "192.0.2.1", "/", &[]).await.status, 200);
    let mut statuses = Vec::new();
    for i in 10..30 {
        statuses.push(
            get_as(&mut s, &format!("192.0.2.{i}"), "/", &[])
                .await
                .status,
        );
    }
    assert_eq!(statuses[0], 200, "{statuses:?}");
    assert!(statuses[1..].iter().all(|&st| st == 429), "{statuses:?}");
    let bans = api(&gw, "GET", "/api/v1/bans", None).await.json();
    assert_eq!(bans["items"].as_array().unwrap().len(), 1, "{bans}");
    // A tracked client that empties its own bucket still earns its ban.
    assert_eq!(get_as(&mut s, "192.0.2.1", "/", &[]).await.status, 429);
    assert_eq!(get_as(&mut s, "192.0.2.1", "/", &[]).await.status, 429);
    assert_eq!(get_as(&mut s, "192.0.2.1", "/", &[]).await.status, 403);
}
