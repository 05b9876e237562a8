//! Sessions and brute-force defence in front of a real app with its own login
//! ([`login_app`]), driven by a cookie-keeping client whose address comes from
//! `X-Forwarded-For` set by a trusted proxy (the test itself, on 127.0.0.1).

use std::collections::BTreeMap;
use std::time::Duration;

use hyper::Request;
use serde_json::Value;

use crate::support::*;

/// A browser: keeps cookies from `Set-Cookie`, sends them back, and presents a client
/// address (through the trusted proxy header) and a User-Agent that a test can change.
struct Browser {
    sender: Sender,
    h2: bool,
    jar: BTreeMap<String, String>,
    ip: String,
    ua: String,
}

impl Browser {
    async fn plain(gw: &TestGateway, ip: &str) -> Browser {
        Browser {
            sender: Sender::plain(gw.addr("http")).await,
            h2: false,
            jar: BTreeMap::new(),
            ip: ip.to_string(),
            ua: "test-browser/1.0".to_string(),
        }
    }

    async fn tls(gw: &TestGateway, ip: &str) -> Browser {
        Browser {
            sender: gw.tls().h2(gw.addr("https")).await,
            h2: true,
            ..Browser::plain(gw, ip).await
        }
    }

    /// The same browser (cookies kept) talking to another gateway process.
    async fn reconnect(&mut self, gw: &TestGateway) {
        self.sender = Sender::plain(gw.addr("http")).await;
    }

    async fn request(&mut self, method: &str, path: &str, form: &str) -> Reply {
        let mut req = if self.h2 {
            Request::builder().uri(format!("https://localhost{path}"))
        } else {
            Request::builder().uri(path).header("host", "localhost")
        }
        .method(method)
        .header("x-forwarded-for", &self.ip)
        .header("user-agent", &self.ua);
        if !self.jar.is_empty() {
            let cookies: Vec<String> = self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect();
            req = req.header("cookie", cookies.join("; "));
        }
        if !form.is_empty() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        let reply = Reply::from(
            self.sender
                .send(req.body(full(form.to_string())).unwrap())
                .await
                .unwrap(),
        )
        .await;
        for h in reply.headers.get_all("set-cookie") {
            let h = h.to_str().unwrap();
            let pair = h.split(';').next().unwrap();
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || h.contains("Max-Age=0") {
                self.jar.remove(name.trim());
            } else {
                self.jar.insert(name.trim().to_string(), value.to_string());
            }
        }
        reply
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.request("GET", path, "").await
    }

    async fn login(&mut self, path: &str, user: &str, password: &str) -> Reply {
        self.request("POST", path, &format!("user={user}&password={password}"))
            .await
    }
}

fn advance(gw: &TestGateway, by: Duration) {
    gw.gw().shared().sessions.clock.advance(by);
}

async fn sessions(gw: &TestGateway, query: &str) -> Vec<Value> {
    gw.gw().shared().events.flush().await.unwrap();
    let r = api(gw, "GET", &format!("/api/v1/sessions{query}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

/// The session listed for a client address.
async fn session_of(gw: &TestGateway, ip: &str) -> Value {
    sessions(gw, "?active=true")
        .await
        .into_iter()
        .find(|s| s["client_ip"] == ip)
        .unwrap_or_else(|| panic!("no active session from {ip}"))
}

/// Asserts a refusal that also clears the cookie.
fn assert_refused(r: &Reply, cookie: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert!(r.json()["error"].is_string());
    let cleared = r
        .headers
        .get_all("set-cookie")
        .iter()
        .any(|h| h.to_str().unwrap().starts_with(&format!("{cookie}=;")));
    assert!(cleared, "no clearing Set-Cookie: {:?}", r.headers);
}

/// One app in front of the whole site, with a small per-user limit and fast brute force.
const SHOP: &str = r#"
[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user", success_status = [302], success_location = "/home" }
logout = { path = "/logout" }

[apps.session]
cookie = "sid"
idle_timeout = "10m"
absolute_timeout = "1h"
max_per_user = 5
invalid = "reject"

[apps.brute_force]
max_failures = 3
ip_max_failures = 20
stuffing_users = 20
window = "15m"
lock_for = "5m"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_learned_at_login_is_checked_on_every_request_and_times_out() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;
    let mut b = Browser::plain(&gw, "198.51.100.10").await;

    assert_eq!(b.login("/login", "alice", "secret").await.status, 302);
    let cookie = b.jar["sid"].clone();
    let page = b.get("/home").await;
    assert_eq!(page.status, 200);
    assert_eq!(page.json()["cookie"], format!("sid={cookie}"));

    let listed = sessions(&gw, "?user=alice").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "active");
    assert_eq!(listed[0]["client_ip"], "198.51.100.10");
    assert_eq!(listed[0]["user_agent"], "test-browser/1.0");
    assert_eq!(listed[0]["id"].as_str().unwrap().len(), 32);
    let created = events_of(&gw, "session_created").await;
    assert_eq!(created.len(), 1);
    // The cookie value itself is kept nowhere the operator reads.
    for text in [
        Value::from(listed).to_string(),
        Value::from(created).to_string(),
    ] {
        assert!(!text.contains(&cookie), "raw cookie leaked: {text}");
    }

    // Idle timeout: refused before the app, with the cookie cleared.
    let hits = up.hits();
    advance(&gw, Duration::from_secs(11 * 60));
    let r = b.get("/home").await;
    assert_refused(&r, "sid");
    assert_eq!(up.hits(), hits, "an expired session reached the app");
    assert!(!b.jar.contains_key("sid"));
    let timeouts = events_of(&gw, "session_timeout").await;
    assert_eq!(timeouts.len(), 1);
    assert_eq!(timeouts[0]["user"], "alice");
    assert_eq!(timeouts[0]["details"]["reason"], "idle timeout");

    // A cookie the gateway never saw created.
    b.jar.insert("sid".into(), "s999-forged".into());
    assert_refused(&b.get("/home").await, "sid");
    assert_eq!(up.hits(), hits);

    // Absolute lifetime: active every 9 minutes (never idle), refused past the hour.
    assert_eq!(b.login("/login", "alice", "secret").await.status, 302);
    let mut refused_after = None;
    for step in 1..=8 {
        advance(&gw, Duration::from_secs(9 * 60));
        let r = b.get("/home").await;
        if r.status == 401 {
            refused_after = Some(step);
            break;
        }
        assert_eq!(r.status, 200, "step {step}");
    }
    assert_eq!(
        refused_after,
        Some(7),
        "refused after 63 minutes, not before"
    );
    let timeouts = events_of(&gw, "session_timeout").await;
    assert_eq!(timeouts.len(), 2);
    assert_eq!(
        timeouts[0]["details"]["reason"],
        "absolute lifetime reached"
    );

    // Housekeeping closes what nobody presents again.
    assert_eq!(b.login("/login", "alice", "secret").await.status, 302);
    advance(&gw, Duration::from_secs(11 * 60));
    gateway::app::session_pass(gw.gw().shared(), true);
    let closed = events_of(&gw, "session_closed").await;
    assert!(
        closed
            .iter()
            .any(|e| e["details"]["reason"] == "idle timeout"),
        "{closed:?}"
    );
    let stats = api(&gw, "GET", "/api/v1/sessions/stats", None).await.json();
    assert_eq!(stats["active"], 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_session_limit_evicts_the_oldest_or_rejects_the_new_one() {
    let up = login_app().await;
    let cfg = trusted_config(
        &up,
        r#"
[[routes]]
name = "evict"
path_prefix = "/e/"
upstream = "app"

[[routes]]
name = "reject"
path_prefix = "/r/"
upstream = "app"

[[apps]]
name = "evicting"
routes = ["evict"]
login = { path = "/e/login", user_field = "user" }
[apps.session]
cookie = "sid"
max_per_user = 2
on_limit = "evict_oldest"

[[apps]]
name = "rejecting"
routes = ["reject"]
login = { path = "/r/login", user_field = "user" }
[apps.session]
cookie = "sid"
max_per_user = 2
on_limit = "reject_new"
"#,
    );
    let gw = TestGateway::start(&cfg).await;

    let mut e = Vec::new();
    for i in 1..=3 {
        let mut b = Browser::plain(&gw, &format!("198.51.100.{i}")).await;
        assert_eq!(b.login("/e/login", "bob", "secret").await.status, 302);
        e.push(b);
    }
    assert_refused(&e[0].get("/e/home").await, "sid");
    assert_eq!(e[1].get("/e/home").await.status, 200);
    assert_eq!(e[2].get("/e/home").await.status, 200);
    let revoked = events_of(&gw, "session_revoked").await;
    assert!(
        revoked
            .iter()
            .any(|ev| ev["message"].as_str().unwrap().contains("evicted")),
        "{revoked:?}"
    );

    let mut r = Vec::new();
    for i in 1..=3 {
        r.push(Browser::plain(&gw, &format!("198.51.100.{}", 10 + i)).await);
    }
    assert_eq!(r[0].login("/r/login", "bob", "secret").await.status, 302);
    assert_eq!(r[1].login("/r/login", "bob", "secret").await.status, 302);
    let third = r[2].login("/r/login", "bob", "secret").await;
    assert_eq!(third.status, 403, "{}", third.text());
    assert!(
        !r[2].jar.contains_key("sid"),
        "the refused session's cookie reached the client"
    );
    assert_eq!(r[0].get("/r/home").await.status, 200);
    assert_eq!(r[1].get("/r/home").await.status, 200);
    let limited = events_of(&gw, "session_limit_reached").await;
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0]["user"], "bob");

    let stats = api(&gw, "GET", "/api/v1/sessions/stats", None).await.json();
    assert_eq!(stats["active"], 4);
    assert_eq!(stats["per_user"][0]["user"], "bob");
    assert_eq!(stats["per_user"][0]["active"], 4);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_and_user_agent_changes_make_a_session_suspicious() {
    let up = login_app().await;
    let cfg = trusted_config(
        &up,
        r#"
[[routes]]
name = "strict"
path_prefix = "/strict/"
upstream = "app"

[[apps]]
name = "watching"
routes = ["app"]
login = { path = "/login", user_field = "user" }
[apps.session]
cookie = "sid"
ip_change_threshold = 2

[[apps]]
name = "strict"
routes = ["strict"]
login = { path = "/strict/login", user_field = "user" }
[apps.session]
cookie = "sid"
ip_change_threshold = 2
user_agent_change_counts = true
revoke_suspicious = true
"#,
    );
    let gw = TestGateway::start(&cfg).await;

    // Two address changes: suspicious (critical event), still served.
    let mut b = Browser::plain(&gw, "198.51.100.1").await;
    assert_eq!(b.login("/login", "carol", "secret").await.status, 302);
    b.ip = "198.51.100.2".into();
    assert_eq!(b.get("/home").await.status, 200);
    assert!(events_of(&gw, "session_suspicious").await.is_empty());
    b.ip = "203.0.113.3".into();
    assert_eq!(b.get("/home").await.status, 200);
    let suspicious = events_of(&gw, "session_suspicious").await;
    assert_eq!(suspicious.len(), 1);
    assert_eq!(suspicious[0]["risk"], "critical");
    assert_eq!(suspicious[0]["user"], "carol");
    assert_eq!(suspicious[0]["details"]["first_ip"], "198.51.100.1");
    let listed = sessions(&gw, "?suspicious=true").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["ip_changes"], 2);
    assert_eq!(listed[0]["client_ip"], "203.0.113.3");
    assert_eq!(b.get("/home").await.status, 200);

    // User-Agent changes count too; this app revokes at once.
    let mut s = Browser::plain(&gw, "198.51.100.9").await;
    assert_eq!(s.login("/strict/login", "dan", "secret").await.status, 302);
    s.ua = "other-browser/2".into();
    assert_eq!(s.get("/strict/home").await.status, 200);
    s.ua = "third-browser/3".into();
    assert_refused(&s.get("/strict/home").await, "sid");
    let suspicious = events_of(&gw, "session_suspicious").await;
    assert_eq!(suspicious.len(), 2);
    assert_eq!(suspicious[0]["user"], "dan");
    assert_eq!(suspicious[0]["details"]["user_agent_changes"], "2");
    let dan = sessions(&gw, "?user=dan").await;
    assert_eq!(dan[0]["state"], "revoked");
    assert_eq!(dan[0]["suspicious"], true);

    // Suspicious records outlive cleanup, even past retention.
    advance(&gw, Duration::from_secs(400 * 24 * 3600));
    gateway::app::session_pass(gw.gw().shared(), true);
    assert_eq!(sessions(&gw, "?suspicious=true").await.len(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_logout_by_id_and_by_user_refuses_the_next_request() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;
    let mut a1 = Browser::plain(&gw, "198.51.100.1").await;
    let mut a2 = Browser::plain(&gw, "198.51.100.2").await;
    let mut bob = Browser::plain(&gw, "198.51.100.3").await;
    for (b, user) in [(&mut a1, "alice"), (&mut a2, "alice"), (&mut bob, "bob")] {
        assert_eq!(b.login("/login", user, "secret").await.status, 302);
        assert_eq!(b.get("/home").await.status, 200);
    }
    assert_eq!(sessions(&gw, "?user=alice").await.len(), 2);

    let id = session_of(&gw, "198.51.100.1").await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = api(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["revoked"]["state"], "revoked");
    let hits = up.hits();
    assert_refused(&a1.get("/home").await, "sid");
    assert_eq!(up.hits(), hits);
    assert_eq!(a2.get("/home").await.status, 200);
    let one = api(&gw, "GET", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(one.json()["end_reason"], "revoked by an operator");
    let again = api(&gw, "DELETE", &format!("/api/v1/sessions/{id}"), None).await;
    assert_eq!(again.status, 409);
    let bad = api(&gw, "DELETE", "/api/v1/sessions/not-an-id", None).await;
    assert_eq!(bad.status, 400);
    let none = api(&gw, "GET", &format!("/api/v1/sessions/{:032x}", 7), None).await;
    assert_eq!(none.status, 404);

    let r = api(&gw, "DELETE", "/api/v1/users/alice/sessions", None).await;
    assert_eq!(r.json()["revoked"], 1);
    assert_refused(&a2.get("/home").await, "sid");
    assert_eq!(bob.get("/home").await.status, 200);
    let revoked = events_of(&gw, "session_revoked").await;
    let by_operator = revoked
        .iter()
        .filter(|e| e["details"]["manual"] == "true")
        .count();
    assert_eq!(by_operator, 2, "{revoked:?}");

    // The app's own logout ends the session too: the old cookie, replayed, is refused.
    let old = bob.jar["sid"].clone();
    assert_eq!(bob.request("POST", "/logout", "").await.status, 200);
    assert!(!bob.jar.contains_key("sid"));
    bob.jar.insert("sid".into(), old);
    assert_refused(&bob.get("/home").await, "sid");
    let stats = api(&gw, "GET", "/api/v1/sessions/stats", None).await.json();
    assert_eq!(stats["active"], 0);
    gw.shutdown().await;
}

const SIGNED: &str = r#"
[[apps]]
name = "signed"
routes = ["app"]
login = { path = "/login", user_field = "user" }
logout = { path = "/logout" }

[apps.session]
mode = "signed"
user_header = "x-user"
keys = [KEYS]
"#;
const K1: &str = r#"{ id = "k1", secret = "first-secret-of-at-least-32-bytes-long" }"#;
const K2: &str = r#"{ id = "k2", secret = "second-secret-of-at-least-32-bytes-long" }"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_cookie_mode_issues_checks_and_rotates_keys() {
    let up = login_app().await;
    let config = |keys: &str| trusted_config(&up, &SIGNED.replace("KEYS", keys));
    let gw = TestGateway::start(&config(K1)).await;
    let mut b = Browser::tls(&gw, "198.51.100.1").await;

    assert_eq!(b.login("/login", "alice", "secret").await.status, 302);
    let cookie = b.jar["__Host-gw_session"].clone();
    assert!(cookie.starts_with("k1."), "{cookie}");
    let page = b.get("/home").await;
    assert_eq!(page.status, 200);
    let seen = page.json();
    assert_eq!(seen["x-user"], "alice");
    let upstream_cookies = seen["cookie"].as_str().unwrap_or("");
    assert!(
        !upstream_cookies.contains("__Host-gw_session"),
        "{upstream_cookies}"
    );

    // A client cannot claim a user by sending the header itself.
    let mut nobody = Browser::tls(&gw, "198.51.100.2").await;
    let r = nobody
        .sender
        .send(
            Request::get("https://localhost/home")
                .header("x-forwarded-for", "198.51.100.2")
                .header("x-user", "admin")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(Reply::from(r).await.json()["x-user"], Value::Null);

    // One flipped hex digit in the signature.
    let mut tampered = cookie.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    nobody.jar.insert("__Host-gw_session".into(), tampered);
    let hits = up.hits();
    assert_refused(&nobody.get("/home").await, "__Host-gw_session");
    assert_eq!(up.hits(), hits);
    let revoked = events_of(&gw, "session_revoked").await;
    assert!(
        revoked[0]["message"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{revoked:?}"
    );

    // Rotation: k2 signs, k1 still verifies; then k1 is retired.
    let reload = |keys: String| {
        std::fs::write(gw.config_path(), config(&keys)).unwrap();
        api(&gw, "POST", "/api/v1/reload", None)
    };
    assert_eq!(reload(format!("{K2}, {K1}")).await.status, 200);
    assert_eq!(b.get("/home").await.status, 200);
    let mut b2 = Browser::tls(&gw, "198.51.100.3").await;
    assert_eq!(b2.login("/login", "bob", "secret").await.status, 302);
    assert!(b2.jar["__Host-gw_session"].starts_with("k2."));
    assert_eq!(reload(K2.to_string()).await.status, 200);
    assert_refused(&b.get("/home").await, "__Host-gw_session");
    assert_eq!(b2.get("/home").await.json()["x-user"], "bob");

    // Logout clears the gateway's cookie and ends the session.
    let old = b2.jar["__Host-gw_session"].clone();
    assert_eq!(b2.request("POST", "/logout", "").await.status, 200);
    assert!(!b2.jar.contains_key("__Host-gw_session"));
    b2.jar.insert("__Host-gw_session".into(), old);
    assert_refused(&b2.get("/home").await, "__Host-gw_session");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_restart() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;
    let mut alice = Browser::plain(&gw, "198.51.100.1").await;
    let mut bob = Browser::plain(&gw, "198.51.100.2").await;
    assert_eq!(alice.login("/login", "alice", "secret").await.status, 302);
    assert_eq!(bob.login("/login", "bob", "secret").await.status, 302);
    let r = api(&gw, "DELETE", "/api/v1/users/bob/sessions", None).await;
    assert_eq!(r.json()["revoked"], 1);

    let dir = gw.stop_keeping_files().await;
    let gw = TestGateway::restart(dir).await;
    alice.reconnect(&gw).await;
    bob.reconnect(&gw).await;
    assert_eq!(alice.get("/home").await.status, 200);
    assert_refused(&bob.get("/home").await, "sid");
    let listed = sessions(&gw, "?user=alice").await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["state"], "active");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_user_name_until_the_lock_expires() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;

    // Three failures for one name, from three addresses.
    for i in 1..=3 {
        let mut b = Browser::plain(&gw, &format!("198.51.100.{i}")).await;
        assert_eq!(b.login("/login", "carol", "guess").await.status, 401);
    }
    let failed = events_of(&gw, "login_failed").await;
    assert_eq!(failed.len(), 3);
    assert!(failed.iter().all(|e| e["user"] == "carol"));
    let detected = events_of(&gw, "brute_force_detected").await;
    assert_eq!(detected.len(), 1);
    assert_eq!(detected[0]["risk"], "critical");
    assert_eq!(detected[0]["details"]["kind"], "user");

    // Locked: even the right password is answered 429 without reaching the app.
    let mut b = Browser::plain(&gw, "198.51.100.9").await;
    let hits = up.hits();
    let r = b.login("/login", "carol", "secret").await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=300).contains(&retry), "{retry}");
    assert_eq!(up.hits(), hits);
    let locks = api(&gw, "GET", "/api/v1/login-locks", None).await.json();
    assert_eq!(locks["items"][0]["user"], "carol");
    // Other users are not affected.
    assert_eq!(b.login("/login", "erin", "secret").await.status, 302);

    advance(&gw, Duration::from_secs(6 * 60));
    assert_eq!(b.login("/login", "carol", "secret").await.status, 302);
    let locks = api(&gw, "GET", "/api/v1/login-locks", None).await.json();
    assert_eq!(locks["count"], 0);

    // An operator can lift a lock early. (The address of the detecting failure is banned.)
    let mut guesser = Browser::plain(&gw, "203.0.113.77").await;
    for _ in 0..3 {
        assert_eq!(guesser.login("/login", "dave", "nope").await.status, 401);
    }
    assert_eq!(guesser.get("/home").await.status, 403);
    assert_eq!(b.login("/login", "dave", "secret").await.status, 429);
    let r = api(&gw, "DELETE", "/api/v1/users/dave/lock", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(b.login("/login", "dave", "secret").await.status, 302);
    let r = api(&gw, "DELETE", "/api/v1/users/dave/lock", None).await;
    assert_eq!(r.status, 404);
    assert_eq!(events_of(&gw, "login_unlocked").await.len(), 1);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_one_address_ban_it_and_stuffing_is_detected() {
    let up = login_app().await;
    let cfg = trusted_config(
        &up,
        r#"
[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user" }
[apps.session]
cookie = "sid"
[apps.brute_force]
max_failures = 50
ip_max_failures = 4
stuffing_users = 3
"#,
    );
    let gw = TestGateway::start(&cfg).await;

    // Many names from one address: credential stuffing, and the address is banned.
    let mut s = Browser::plain(&gw, "203.0.113.50").await;
    for user in ["u1", "u2", "u3"] {
        assert_eq!(s.login("/login", user, "password1").await.status, 401);
    }
    assert_eq!(s.get("/home").await.status, 403);

    // One name, many tries from one address.
    let mut g = Browser::plain(&gw, "203.0.113.60").await;
    for _ in 0..4 {
        assert_eq!(g.login("/login", "victim", "guess").await.status, 401);
    }
    assert_eq!(g.get("/home").await.status, 403);
    assert_eq!(g.login("/login", "victim", "secret").await.status, 403);

    // Everyone else is served.
    let mut ok = Browser::plain(&gw, "198.51.100.1").await;
    assert_eq!(ok.login("/login", "victim", "secret").await.status, 302);

    let detected = events_of(&gw, "brute_force_detected").await;
    let kinds: Vec<&str> = detected
        .iter()
        .map(|e| e["details"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["address", "credential_stuffing"]);
    let bans = api(&gw, "GET", "/api/v1/bans", None).await.json();
    let banned: Vec<&str> = bans["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap())
        .collect();
    assert!(banned.contains(&"203.0.113.50") && banned.contains(&"203.0.113.60"));
    assert_eq!(events_of(&gw, "ip_banned").await.len(), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_protects_the_demo_apps_sessions_and_logins() {
    let gw = TestGateway::start(&shipped_config_on_free_ports()).await;
    let mut b = Browser::tls(&gw, "ignored: no trusted proxy").await;

    let r = b.get("/account").await;
    assert_eq!(r.status, 303);
    assert_eq!(r.headers["location"], "/login");
    // However the path is spelled (HTTP/2 sends `:path` as given).
    for spelling in [
        "/%61ccount",
        "/acc%6funt",
        "//account",
        "/./account",
        "/x/../account",
    ] {
        let r = b.get(spelling).await;
        assert_eq!(r.status, 303, "{spelling}");
    }
    assert!(b.get("/login").await.text().contains("<form"));
    let r = b
        .request("POST", "/login", "username=alice&password=demo")
        .await;
    assert_eq!(r.status, 303);
    assert!(b.jar.contains_key("demo_session"));
    let r = b.get("/account").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["upstream"], "builtin:echo");

    let mut attacker = Browser::tls(&gw, "ignored").await;
    for _ in 0..5 {
        let r = attacker
            .request("POST", "/login", "username=alice&password=guess")
            .await;
        assert_eq!(r.status, 401);
    }
    let r = attacker
        .request("POST", "/login", "username=alice&password=demo")
        .await;
    assert_eq!(r.status, 429, "the user name is locked");
    // The signed-in session is not affected by the lock.
    assert_eq!(b.get("/account").await.status, 200);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_session_cookies_and_login_fields_are_refused() {
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(&up, SHOP)).await;
    let mut b = Browser::plain(&gw, "198.51.100.40").await;
    assert_eq!(b.login("/login", "alice", "secret").await.status, 302);
    let sid = b.jar["sid"].clone();
    assert_eq!(b.get("/home").await.status, 200);

    // The valid cookie plus a second one of the same name (in one header or two): which
    // one the app uses is a guess, so neither is taken.
    for headers in [
        vec![format!("sid={sid}; sid=forged")],
        vec![format!("sid=forged; sid={sid}")],
        vec![format!("sid={sid}"), "sid=forged".to_string()],
    ] {
        let mut req = Request::get("/home")
            .header("host", "localhost")
            .header("x-forwarded-for", "198.51.100.40");
        for h in &headers {
            req = req.header("cookie", h);
        }
        let r = Reply::from(b.sender.send(req.body(full("")).unwrap()).await.unwrap()).await;
        assert_refused(&r, "sid");
    }
    // The session itself is still good.
    assert_eq!(b.get("/home").await.status, 200);
    let before = up.hits();
    let events = events_of(&gw, "session_revoked").await;
    assert!(
        events.iter().any(|e| e["message"]
            .as_str()
            .unwrap()
            .contains("more than one session cookie")),
        "{events:?}"
    );

    // A login whose user field is missing, repeated or unreadable: 400 without the app,
    // and a failed login for the address.
    let mut m = Browser::plain(&gw, "198.51.100.41").await;
    for form in [
        "password=x",
        "user=alice&user=bob&password=x",
        "user=&password=x",
    ] {
        let r = m.request("POST", "/login", form).await;
        assert_eq!(r.status, 400, "{form}: {}", r.text());
    }
    let req = Request::post("/login")
        .header("host", "localhost")
        .header("x-forwarded-for", "198.51.100.41")
        .header("content-type", "application/json")
        .body(full("{\"user\": "))
        .unwrap();
    let r = Reply::from(m.sender.send(req).await.unwrap()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(up.hits(), before, "refused logins reached the app");
    let failed = events_of(&gw, "login_failed").await;
    let from_m: Vec<_> = failed
        .iter()
        .filter(|e| e["client_ip"] == "198.51.100.41")
        .collect();
    assert_eq!(from_m.len(), 4, "{failed:?}");
    assert!(from_m
        .iter()
        .any(|e| e["message"].as_str().unwrap().contains("more than once")));
}
