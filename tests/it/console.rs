//! The operator console in a real browser: headless Chromium driven over WebDriver
//! (`chromedriver`, Debian's `chromium-driver`; `.ci/run` installs it) against the shipped
//! config. Sign-in, the overview against the API, live updates, an investigation resolved
//! with a note, a forced logout the demo app sees, an IP rule that refuses a request, and a
//! viewer who finds no write button and gets 403 from the API. A screenshot of each page is
//! written under `target/console-screenshots/`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper::Request;
use serde_json::{json, Value};

use crate::support::*;

/// `chromedriver` on a free port, killed on drop.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver runs (apt-get install chromium chromium-driver; .ci/run does)");
    let driver = Driver {
        child,
        port,
        _profile: tempfile::tempdir().unwrap(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({"args": [
            "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--window-size=1400,1100", "--no-first-run",
            format!("--user-data-dir={}", driver._profile.path().display()),
        ]}),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session");
    (driver, client)
}

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// The text of `css` once `ok` accepts it (the page renders asynchronously).
async fn text_when(c: &Client, css: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(t) = e.text().await {
                if ok(&t) {
                    return t;
                }
                last = t;
            }
        }
        assert!(Instant::now() < deadline, "{css}: still {last:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Goes to a page of the console and waits until it has rendered it.
async fn open(c: &Client, base: &str, page: &str, ready_css: &str) {
    c.goto(&format!("{base}/#{page}")).await.unwrap();
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(ready_css))
        .await
        .unwrap_or_else(|e| panic!("#{page}: no {ready_css}: {e}"));
}

async fn click(c: &Client, css: &str) {
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types `text` into the field `css`.
async fn fill(c: &Client, css: &str, text: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Picks the option `value` of the select `css`.
async fn choose(c: &Client, css: &str, value: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .select_by_value(value)
        .await
        .unwrap();
}

async fn sign_in(c: &Client, base: &str, token: &str) {
    c.goto(&format!("{base}/")).await.unwrap();
    let field = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    field.send_keys(token).await.unwrap();
    click(c, "#signin-button").await;
    text_when(c, "#stat-total", |t| !t.is_empty()).await;
}

/// A request to the demo app over the plain listener, with optional cookie and client
/// address (the test is the trusted proxy).
async fn app(gw: &TestGateway, method: &str, path: &str, cookie: &str, xff: &str) -> Reply {
    let mut s = Sender::plain(gw.addr("http")).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/x-www-form-urlencoded");
    if !cookie.is_empty() {
        req = req.header("cookie", cookie);
    }
    if !xff.is_empty() {
        req = req.header("x-forwarded-for", xff);
    }
    let body = if method == "POST" {
        "username=alice&password=demo"
    } else {
        ""
    };
    Reply::from(s.send(req.body(full(body)).unwrap()).await.unwrap()).await
}

async fn admin_json(gw: &TestGateway, token: &str, path: &str) -> Value {
    gw.gw().shared().events.flush().await.unwrap();
    let r = api_as(gw, token, "GET", path, None).await;
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_a_browser_shows_what_the_api_says_and_acts_with_the_callers_role() {
    let cfg = shipped_config_on_free_ports().replace(
        "trusted_proxies = []",
        "trusted_proxies = [\"127.0.0.1/32\"]",
    )
        + "\n[[admin.tokens]]\nname = \"vi\"\nrole = \"viewer\"\ntoken_file = \"data/vi.token\"\n";
    let gw = TestGateway::start(&cfg).await;
    let (admin_token, viewer) = (token_of(&gw, "data/admin"), token_of(&gw, "data/vi"));
    let base = format!("http://{}", gw.admin());

    // Traffic: two WAF blocks and a signed-in user of the demo app.
    for _ in 0..2 {
        let r = app(
            &gw,
            "GET",
            "/search?q=1%27%20OR%20%271%27=%271",
            "",
            "198.51.100.20",
        )
        .await;
        assert_eq!(r.status, 403);
    }
    let login = app(&gw, "POST", "/login", "", "").await;
    assert_eq!(login.status, 303);
    let cookie = cookie_pair(&login);
    assert_eq!(app(&gw, "GET", "/account", &cookie, "").await.status, 200);

    let (_driver, c) = browser().await;

    // A wrong token is refused on the page.
    c.goto(&format!("{base}/")).await.unwrap();
    let field = c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    field.send_keys("not-the-token-at-all").await.unwrap();
    click(&c, "#signin-button").await;
    text_when(&c, "#signin-error", |t| t.contains("wrong token")).await;

    // Overview: the numbers are the API's.
    sign_in(&c, &base, &admin_token).await;
    let stats = admin_json(&gw, &admin_token, "/api/v1/stats").await;
    let waf = stats["by_type"]["waf_blocked"].as_u64().unwrap();
    assert!(waf >= 1);
    text_when(&c, "#stat-waf", |t| t == waf.to_string()).await;
    let severe = stats["open_high_and_critical"]
        .as_u64()
        .unwrap()
        .to_string();
    text_when(&c, "#stat-open-severe", |t| t == severe).await;
    text_when(&c, "#top-ips", |t| t.contains("198.51.100.20")).await;
    assert_eq!(
        text_when(&c, "#who", |t| !t.is_empty()).await,
        "admin (admin)"
    );
    c.find(Locator::Css("#risk-chart")).await.unwrap();
    shot(&c, "overview").await;

    // Live: a new block shows up without reloading the page.
    let r = app(
        &gw,
        "GET",
        "/?x=%3Cscript%3Ealert(1)%3C/script%3E",
        "",
        "198.51.100.21",
    )
    .await;
    assert_eq!(r.status, 403);
    gw.gw().shared().events.flush().await.unwrap();
    let now = admin_json(&gw, &admin_token, "/api/v1/stats").await["by_type"]["waf_blocked"]
        .as_u64()
        .unwrap();
    assert!(now > waf);
    text_when(&c, "#stat-waf", |t| t == now.to_string()).await;
    // Stop live updates so the rest of the test acts on a page that stays put.
    click(&c, "#live").await;

    // Investigations: open a WAF block, assign it to me, investigate, resolve with a note.
    open(&c, &base, "investigations", "#event-count").await;
    shot(&c, "investigations").await;
    let events = admin_json(&gw, &admin_token, "/api/v1/events?type=waf_blocked").await;
    let id = events["items"][0]["id"].as_str().unwrap().to_string();
    open(&c, &base, &format!("event/{id}"), "#inv-apply").await;
    click(&c, "#assign-me").await;
    text_when(&c, "#inv-assignee", |t| t == "admin").await;
    choose(&c, "#inv-next", "investigating").await;
    click(&c, "#inv-apply").await;
    text_when(&c, "#inv-status", |t| t == "investigating").await;
    // Resolving without a note is refused, and the page says so.
    choose(&c, "#inv-next", "resolved").await;
    click(&c, "#inv-apply").await;
    text_when(&c, "#status", |t| t.contains("note")).await;
    choose(&c, "#inv-next", "resolved").await;
    fill(&c, "#inv-note", "our own scanner, ticket 42").await;
    click(&c, "#inv-apply").await;
    text_when(&c, "#inv-status", |t| t == "resolved").await;
    shot(&c, "investigation").await;
    let inv = admin_json(&gw, &admin_token, &format!("/api/v1/events/{id}")).await["investigation"]
        .clone();
    assert_eq!(inv["status"], "resolved");
    assert_eq!(inv["resolved_by"], "admin");
    assert_eq!(inv["assignee"], "admin");
    assert_eq!(inv["notes"][0]["text"], "our own scanner, ticket 42");

    // Sessions: force alice out; the demo app then sends her to its login page.
    let sessions = admin_json(&gw, &admin_token, "/api/v1/sessions?user=alice&active=true").await;
    let sid = sessions["items"][0]["id"].as_str().unwrap().to_string();
    open(&c, &base, "sessions", &format!("#logout-{sid}")).await;
    shot(&c, "sessions").await;
    click(&c, &format!("#logout-{sid}")).await;
    text_when(&c, "#sessions-active", |t| t == "0").await;
    let r = app(&gw, "GET", "/account", &cookie, "").await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert_eq!(r.headers["location"], "/login");

    // IP control: a deny rule added on the page refuses the next request from that address.
    assert_eq!(
        app(&gw, "GET", "/hello", "", "198.51.100.77").await.status,
        200
    );
    open(&c, &base, "ip", "#rule-add").await;
    fill(&c, "#rule-cidr", "198.51.100.64/26").await;
    fill(&c, "#rule-comment", "from the console test").await;
    click(&c, "#rule-add").await;
    text_when(&c, "main", |t| t.contains("198.51.100.64/26")).await;
    assert_eq!(
        app(&gw, "GET", "/hello", "", "198.51.100.77").await.status,
        403
    );
    // The tester on the page gives the same answer.
    fill(&c, "#test-ip", "198.51.100.77").await;
    click(&c, "#test-run").await;
    text_when(&c, "#test-result", |t| t.starts_with("deny")).await;
    shot(&c, "ip-control").await;

    // Performance: the minute still open is shown, with the API's numbers.
    open(&c, &base, "performance", "#perf-p50").await;
    let trends = admin_json(&gw, &admin_token, "/api/v1/perf/trends?route=app").await;
    // Every request so far is in a bucket, closed or still open (a minute may close
    // while the test runs).
    let seen: u64 = trends["routes"]["app"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert!(seen >= 5, "{trends}");
    c.find(Locator::Css("#latency-chart")).await.unwrap();
    shot(&c, "performance").await;
    open(&c, &base, "backups", "#backup-create").await;
    click(&c, "#backup-create").await;
    text_when(&c, "main", |t| t.contains("backup-")).await;
    shot(&c, "backups").await;

    // Sign out; the API no longer answers the browser's cookie.
    click(&c, "#signout").await;
    c.wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#signin-form"))
        .await
        .unwrap();

    // A viewer sees every page without a write button, and the API refuses their writes.
    sign_in(&c, &base, &viewer).await;
    assert_eq!(
        text_when(&c, "#who", |t| !t.is_empty()).await,
        "vi (viewer)"
    );
    for (page, ready, absent) in [
        ("ip", "#test-run", ["#rule-add", "#ban-add"]),
        (
            "backups",
            "#verify-result",
            ["#backup-create", "#backup-create"],
        ),
        (
            &*format!("event/{id}"),
            "#inv-status",
            ["#inv-apply", "#assign-me"],
        ),
    ] {
        open(&c, &base, page, ready).await;
        for css in absent {
            assert!(
                c.find(Locator::Css(css)).await.is_err(),
                "a viewer sees {css} on #{page}"
            );
        }
    }
    shot(&c, "viewer").await;
    let answer = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               fetch('/ui/session').then((r) => r.json()).then((s) =>
                 fetch('/api/v1/bans', {method: 'POST', headers: {'Content-Type': 'application/json',
                   'X-CSRF-Token': s.csrf}, body: JSON.stringify({ip: '192.0.2.9', duration: '1h', reason: 'x'})}))
               .then((r) => done(r.status), (e) => done(String(e)));"#,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(answer, json!(403));
    c.close().await.unwrap();
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_sets_a_strict_cookie_and_writes_need_the_csrf_token() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], OPERATOR_TOKENS)).await;
    let ana = token_of(&gw, "ana");
    let mut s = Sender::plain(gw.admin()).await;
    let post = |path: &str, body: &str, extra: &[(&str, &str)]| {
        let mut r = Request::post(path)
            .header("host", gw.admin().to_string())
            .header("content-type", "application/json");
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        r.body(full(body.to_string())).unwrap()
    };

    // The page itself is locked down.
    let page = Reply::from(
        s.send(
            Request::get("/")
                .header("host", "x")
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(page.headers["x-frame-options"], "DENY");
    assert!(!page.text().contains("<script>"), "no inline script");

    let r = Reply::from(
        s.send(post("/ui/login", &format!(r#"{{"token":"{ana}"}}"#), &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let set = r.headers["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(attr), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    assert_eq!(r.json()["role"], "operator");

    let ban = r#"{"ip":"192.0.2.44","duration":"1h","reason":"console"}"#;
    // The cookie alone reads, but does not write.
    let get = Request::get("/api/v1/whoami")
        .header("host", gw.admin().to_string())
        .header("cookie", &cookie)
        .body(full(""))
        .unwrap();
    let r = Reply::from(s.send(get).await.unwrap()).await;
    assert_eq!(r.json()["name"], "ana");
    for extra in [
        vec![("cookie", cookie.as_str())],
        vec![("cookie", cookie.as_str()), ("x-csrf-token", "0000")],
        vec![
            ("cookie", cookie.as_str()),
            ("x-csrf-token", csrf.as_str()),
            ("origin", "http://evil.example"),
        ],
    ] {
        let r = Reply::from(s.send(post("/api/v1/bans", ban, &extra)).await.unwrap()).await;
        assert_eq!(r.status, 403, "{extra:?}: {}", r.text());
    }
    assert!(gw.gw().shared().bans.active().is_empty());
    let r = Reply::from(
        s.send(post(
            "/api/v1/bans",
            ban,
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(events_of(&gw, "ip_banned").await[0]["details"]["by"], "ana");

    // After sign-out the cookie is worth nothing.
    let r = Reply::from(
        s.send(post(
            "/ui/logout",
            "",
            &[("cookie", &cookie), ("x-csrf-token", &csrf)],
        ))
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    let get = Request::get("/api/v1/whoami")
        .header("host", gw.admin().to_string())
        .header("cookie", &cookie)
        .body(full(""))
        .unwrap();
    assert_eq!(Reply::from(s.send(get).await.unwrap()).await.status, 401);

    // Ten wrong tokens from one address, and the address waits.
    for _ in 0..10 {
        let r = Reply::from(
            s.send(post(
                "/ui/login",
                r#"{"token":"wrong-wrong-wrong-wrong"}"#,
                &[],
            ))
            .await
            .unwrap(),
        )
        .await;
        assert_eq!(r.status, 401);
    }
    let r = Reply::from(
        s.send(post("/ui/login", &format!(r#"{{"token":"{ana}"}}"#), &[]))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 429);
    assert!(events_of(&gw, "admin_auth_failed").await.len() >= 10);
    gw.shutdown().await;
}
