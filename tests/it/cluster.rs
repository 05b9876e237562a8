//! Several gateways sharing state through a real `redis-server` on loopback: a rate limit
//! counted once across instances, a ban, a login lock and a forced logout made on one
//! instance in force on the other within a second, and Redis killed and restarted empty
//! mid-load without a request failing or a ban being lost.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::*;

/// A `redis-server` on a free port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Further `redis-server` options.
    options: Vec<String>,
}

impl Redis {
    /// Starts one, or `None` (with the reason printed) where redis-server is missing.
    fn start() -> Option<Redis> {
        Redis::start_with(&[])
    }

    fn start_with(options: &[&str]) -> Option<Redis> {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            child: None,
            port: free_port(),
            dir,
            options: Vec::new(),
        };
        // `{port}` in an option: the port chosen (e.g. `--tls-port {port}` with `--port 0`).
        r.options = options
            .iter()
            .map(|o| o.replace("{port}", &r.port.to_string()))
            .collect();
        if !r.spawn() {
            eprintln!(
                "SKIPPED the cluster tests: redis-server is not installed (.ci/run installs it)"
            );
            return None;
        }
        Some(r)
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.options)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let Ok(child) = child else { return false };
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

const APP: &str = r#"
[[routes]]
name = "limited"
path_prefix = "/limited"
upstream = "app"

[[rate_limits]]
name = "shared"
key = "ip"
limits = [{ requests = 20, per = "1m", burst = 20 }]
routes = ["limited"]

[[apps]]
name = "shop"
routes = ["app"]
login = { path = "/login", user_field = "user", success_status = [302], success_location = "/home" }
logout = { path = "/logout" }

[apps.session]
cookie = "sid"
idle_timeout = "10m"
absolute_timeout = "1h"
max_per_user = 2
invalid = "reject"
# Behind a load balancer without sticky sessions: a session first seen here is adopted.
unknown = "adopt"

[apps.brute_force]
max_failures = 3
ip_max_failures = 50
stuffing_users = 50
window = "15m"
lock_for = "5m"
"#;

fn cluster_config(up: &Upstream, redis: &Redis, instance: &str, key_file: &str) -> String {
    trusted_config(
        up,
        &format!(
            "{APP}\n[sessions]\nkey_file = \"{key_file}\"\n\n[cluster]\nbackend = \"redis\"\nurl = \"{}\"\ninstance = \"{instance}\"\ntimeout = \"200ms\"\n",
            redis.url()
        ),
    )
}

/// One request through the plain listener of `gw` as client `ip`, on a new connection.
async fn send(
    gw: &TestGateway,
    method: &str,
    path: &str,
    ip: &str,
    cookie: Option<&str>,
    form: &str,
) -> Reply {
    let mut s = Sender::plain(gw.addr("http")).await;
    request_as(&mut s, method, path, ip, cookie, form).await
}

/// Three wrong passwords for `user` on `from` (limit three) lock it on `to` within a
/// second: even the right password is refused there.
async fn lock_spreads(from: &TestGateway, to: &TestGateway, user: &str) {
    for _ in 0..3 {
        let form = format!("user={user}&password=nope");
        let r = send(from, "POST", "/login", "198.51.100.30", None, &form).await;
        assert_eq!(r.status, 401);
    }
    within_a_second("lock on the other instance", || async {
        let form = format!("user={user}&password=secret");
        let r = send(to, "POST", "/login", "198.51.100.31", None, &form).await;
        r.status == 429 || r.status == 403 || r.status == 423
    })
    .await;
}

/// Bans `ip` for ten minutes through `gw`'s API.
async fn ban(gw: &TestGateway, ip: &str, reason: &str) {
    let body = serde_json::json!({"ip": ip, "duration": "10m", "reason": reason});
    let r = api(gw, "POST", "/api/v1/bans", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text());
}

/// Waits up to a second for `cond` (polled every 20 ms); returns how long it took.
async fn within_a_second<F, Fut>(what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: not within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connected(gw: &TestGateway) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = api(gw, "GET", "/api/v1/cluster", None).await.json();
        if c["connected"] == true {
            return;
        }
        assert!(Instant::now() < deadline, "never connected: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_limits_bans_locks_and_revocations_through_redis() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = login_app().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("session.key");
    let key_file = key_file.to_str().unwrap();
    let a = TestGateway::start(&cluster_config(&up, &redis, "gw-a", key_file)).await;
    let b = TestGateway::start(&cluster_config(&up, &redis, "gw-b", key_file)).await;
    connected(&a).await;
    connected(&b).await;
    let view = api(&a, "GET", "/api/v1/cluster", None).await.json();
    assert_eq!(view["instance"], "gw-a");
    let names: Vec<&str> = view["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"gw-a") && names.contains(&"gw-b"), "{view}");

    // One 20/minute budget for the pair: 60 requests alternating between them, 20 pass.
    let mut allowed = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = send(gw, "GET", "/limited/x", "198.51.100.20", None, "").await;
        match r.status {
            200 => allowed += 1,
            429 => assert!(r.headers.contains_key("retry-after")),
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert!(
        (20..=21).contains(&allowed),
        "{allowed} allowed across both instances"
    );

    // A ban made on A is in force on B within a second; lifted on B, on A.
    ban(&a, "203.0.113.9", "test").await;
    within_a_second("ban on B", || async {
        send(&b, "GET", "/x", "203.0.113.9", None, "").await.status == 403
    })
    .await;
    // B's list names the instance that decided it.
    let listed = api(&b, "GET", "/api/v1/bans", None).await.json();
    let listed_ban = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["ip"] == "203.0.113.9")
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(listed_ban["instance"], "gw-a", "{listed_ban}");
    assert_eq!(
        api(&b, "DELETE", "/api/v1/bans/203.0.113.9", None)
            .await
            .status,
        200
    );
    within_a_second("unban on A", || async {
        send(&a, "GET", "/x", "203.0.113.9", None, "").await.status == 200
    })
    .await;

    // A login lock from failures on A holds on B.
    lock_spreads(&a, &b, "carol").await;
    let locks = api(&b, "GET", "/api/v1/login-locks", None).await.json();
    assert_eq!(locks["items"][0]["user"], "carol", "{locks}");

    // Guesses spread over both instances (2 on A, 1 on B, from different addresses) are
    // counted once: the user is locked on both, and B records the detection.
    for (gw, ip) in [
        (&a, "198.51.100.32"),
        (&a, "198.51.100.33"),
        (&b, "198.51.100.34"),
    ] {
        let r = send(gw, "POST", "/login", ip, None, "user=erin&password=nope").await;
        assert_eq!(r.status, 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in [&a, &b] {
        within_a_second("shared-count lock", || async {
            let locks = api(gw, "GET", "/api/v1/login-locks", None).await.json();
            locks["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["user"] == "erin")
        })
        .await;
    }
    let detected = events_of(&b, "brute_force_detected").await;
    let across = detected
        .iter()
        .find(|e| e["user"] == "erin")
        .unwrap_or_else(|| panic!("{detected:?}"));
    assert_eq!(across["details"]["across_instances"], "true");
    assert_eq!(across["details"]["instance"], "gw-b");

    // A session created on A, revoked on A, is refused on B within a second.
    let r = send(
        &a,
        "POST",
        "/login",
        "198.51.100.40",
        None,
        "user=dave&password=secret",
    )
    .await;
    assert_eq!(r.status, 302, "{}", r.text());
    let cookie = cookie_pair(&r);
    assert_eq!(
        send(&a, "GET", "/home", "198.51.100.40", Some(&cookie), "")
            .await
            .status,
        200
    );
    // B adopts it (it never saw the login) and serves it until the revocation.
    assert_eq!(
        send(&b, "GET", "/home", "198.51.100.40", Some(&cookie), "")
            .await
            .status,
        200
    );
    flush(&a).await;
    let listed = api(&a, "GET", "/api/v1/sessions?user=dave", None)
        .await
        .json();
    let id = listed["items"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        api(&a, "DELETE", &format!("/api/v1/sessions/{id}"), None)
            .await
            .status,
        200
    );
    within_a_second("revocation on B", || async {
        send(&b, "GET", "/home", "198.51.100.40", Some(&cookie), "")
            .await
            .status
            == 401
    })
    .await;

    // Two sessions per user across the pair: frank's third login (on A, which itself
    // holds two of them) evicts his oldest session on every instance.
    let mut cookies = Vec::new();
    for gw in [&a, &b, &a] {
        let r = send(
            gw,
            "POST",
            "/login",
            "198.51.100.60",
            None,
            "user=frank&password=secret",
        )
        .await;
        assert_eq!(r.status, 302, "{}", r.text());
        let c = cookie_pair(&r);
        cookies.push(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for gw in [&b, &a] {
        within_a_second("oldest session evicted", || async {
            send(gw, "GET", "/home", "198.51.100.60", Some(&cookies[0]), "")
                .await
                .status
                == 401
        })
        .await;
    }
    assert_eq!(
        send(&b, "GET", "/home", "198.51.100.60", Some(&cookies[1]), "")
            .await
            .status,
        200
    );
    assert_eq!(
        send(&a, "GET", "/home", "198.51.100.60", Some(&cookies[2]), "")
            .await
            .status,
        200
    );

    // A ban made while both are connected, then Redis is killed: every request is still
    // served (on local state), within the timeout, and the ban holds everywhere.
    ban(&a, "203.0.113.10", "before the outage").await;
    within_a_second("second ban on B", || async {
        send(&b, "GET", "/x", "203.0.113.10", None, "").await.status == 403
    })
    .await;
    redis.kill();
    let mut worst = Duration::ZERO;
    for i in 0..40 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let t = Instant::now();
        let r = send(gw, "GET", "/x", "198.51.100.50", None, "").await;
        worst = worst.max(t.elapsed());
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(
            send(gw, "GET", "/x", "203.0.113.10", None, "").await.status,
            403
        );
    }
    assert!(worst < Duration::from_secs(1), "a request waited {worst:?}");
    // Limited routes are decided locally meanwhile.
    assert_eq!(
        send(&a, "GET", "/limited/y", "198.51.100.51", None, "")
            .await
            .status,
        200
    );
    // Each instance notices within its heartbeat (a second).
    for gw in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(3);
        while api(gw, "GET", "/api/v1/cluster", None).await.json()["connected"] == true {
            assert!(Instant::now() < deadline, "the outage went unnoticed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let ready = Sender::plain(a.admin()).await.get("/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.text().contains("cluster degraded"),
        "{}",
        ready.text()
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let degraded = loop {
        let d = events_of(&a, "cluster_degraded").await;
        if !d.is_empty() {
            break d;
        }
        assert!(Instant::now() < deadline, "no cluster_degraded event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(degraded[0]["risk"], "high");
    // A ban made during the outage, on B only.
    ban(&b, "203.0.113.11", "during the outage").await;

    // Redis comes back empty: the instances push what they know, and A learns B's ban.
    assert!(redis.spawn());
    connected(&a).await;
    connected(&b).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = redis.conn().await;
        let bans: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg("{gateway}:bans")
            .query_async(&mut c)
            .await
            .unwrap();
        if bans.contains_key("203.0.113.10") && bans.contains_key("203.0.113.11") {
            break;
        }
        assert!(Instant::now() < deadline, "bans not pushed back: {bans:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    within_a_second("outage ban on A", || async {
        send(&a, "GET", "/x", "203.0.113.11", None, "").await.status == 403
    })
    .await;
    assert!(!events_of(&b, "cluster_restored").await.is_empty());
    let banned = events_of(&a, "ip_banned").await;
    assert!(banned
        .iter()
        .all(|e| e["details"]["by"].is_string() || e["details"]["instance"].is_string()));
    a.shutdown().await;
    b.shutdown().await;
}

/// Three `redis-server`s forming a Redis Cluster (slots split in three), or `None` where
/// redis-server is missing.
async fn redis_cluster() -> Option<Vec<Redis>> {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(Redis::start_with(&[
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ])?);
    }
    let ranges = [(0, 5460), (5461, 10922), (10923, 16383)];
    for (node, (from, to)) in nodes.iter().zip(ranges) {
        let mut c = node.conn().await;
        redis::cmd("CLUSTER")
            .arg("ADDSLOTSRANGE")
            .arg(from)
            .arg(to)
            .query_async::<()>(&mut c)
            .await
            .unwrap();
    }
    let mut first = nodes[0].conn().await;
    for n in &nodes[1..] {
        redis::cmd("CLUSTER")
            .arg("MEET")
            .arg("127.0.0.1")
            .arg(n.port)
            .query_async::<()>(&mut first)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        let mut c = n.conn().await;
        loop {
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async(&mut c)
                .await
                .unwrap();
            if info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not form: {info}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Some(nodes)
}

/// The keys a Redis Cluster node holds.
async fn keys_on(node: &Redis) -> Vec<String> {
    let mut c = node.conn().await;
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_state_through_a_redis_cluster() {
    let Some(nodes) = redis_cluster().await else {
        return;
    };
    let up = login_app().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("session.key");
    let config = |instance: &str| {
        // Two of the three nodes named: the client learns the third from them.
        trusted_config(
            &up,
            &format!(
                "{APP}\n[sessions]\nkey_file = \"{}\"\n\n[cluster]\nbackend = \"redis\"\nnodes = [\"{}\", \"{}\"]\ninstance = \"{instance}\"\ntimeout = \"200ms\"\n",
                key_file.display(),
                nodes[0].url(),
                nodes[1].url()
            ),
        )
    };
    let a = TestGateway::start(&config("gw-a")).await;
    let b = TestGateway::start(&config("gw-b")).await;
    connected(&a).await;
    connected(&b).await;
    let view = api(&b, "GET", "/api/v1/cluster", None).await.json();
    assert_eq!(
        view["instances"].as_array().map(Vec::len),
        Some(2),
        "{view}"
    );
    assert_eq!(view["redis_cluster"], true, "{view}");

    // One budget for the pair, whichever node owns the bucket's slot.
    let mut allowed = 0;
    for i in 0..60 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = send(gw, "GET", "/limited/x", "198.51.100.20", None, "").await;
        match r.status {
            200 => allowed += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.text()),
        }
    }
    assert!(
        (20..=21).contains(&allowed),
        "{allowed} allowed across both instances"
    );
    // Buckets of many clients spread over the nodes (slots by client), the third included.
    for i in 0..30 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let r = send(
            gw,
            "GET",
            "/limited/x",
            &format!("198.51.100.{}", 100 + i),
            None,
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    for n in &nodes {
        let held = keys_on(n).await;
        assert!(
            held.iter().any(|k| k.starts_with("gateway:rl:")),
            "node {} holds no bucket: {held:?}",
            n.port
        );
    }

    // A ban made on A is in force on B within a second, and recorded in the cluster.
    ban(&a, "203.0.113.9", "test").await;
    within_a_second("ban on B", || async {
        send(&b, "GET", "/x", "203.0.113.9", None, "").await.status == 403
    })
    .await;
    let mut recorded = false;
    for n in &nodes {
        recorded |= keys_on(n).await.iter().any(|k| k == "{gateway}:bans");
    }
    assert!(recorded, "no node holds {{gateway}}:bans");
    // A login lock too.
    lock_spreads(&a, &b, "carol").await;
    a.shutdown().await;
    b.shutdown().await;
}

/// `reject_new` across instances: a user at the limit on A cannot log in on B, and can
/// once A's session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_new_counts_a_users_sessions_across_instances() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let up = login_app().await;
    let keys = tempfile::tempdir().unwrap();
    let key_file = keys.path().join("session.key");
    let app = APP
        .replace(
            "max_per_user = 2",
            "max_per_user = 1\non_limit = \"reject_new\"",
        )
        .replace("unknown = \"adopt\"", "unknown = \"reject\"");
    let config = |instance: &str| {
        trusted_config(
            &up,
            &format!(
                "{app}\n[sessions]\nkey_file = \"{}\"\n\n[cluster]\nbackend = \"redis\"\nurl = \"{}\"\ninstance = \"{instance}\"\ntimeout = \"200ms\"\n",
                key_file.display(),
                redis.url()
            ),
        )
    };
    let a = TestGateway::start(&config("gw-a")).await;
    let b = TestGateway::start(&config("gw-b")).await;
    connected(&a).await;
    connected(&b).await;
    let login = |gw| {
        send(
            gw,
            "POST",
            "/login",
            "198.51.100.50",
            None,
            "user=frank&password=secret",
        )
    };
    let r = login(&a).await;
    assert_eq!(r.status, 302, "{}", r.text());
    let cookie = cookie_pair(&r);
    // The second session, on the other instance: refused, and no cookie leaks.
    let r = login(&b).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(!r.headers.contains_key("set-cookie"), "{:?}", r.headers);
    // Logging out on A frees the place: B admits the next login.
    let r = send(&a, "POST", "/logout", "198.51.100.50", Some(&cookie), "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mut admitted = false;
    for _ in 0..50 {
        let r = login(&b).await;
        if r.status == 302 {
            admitted = true;
            break;
        }
        assert_eq!(r.status, 403, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admitted, "the logout on A never freed the place on B");
    // Now A refuses a second one.
    assert_eq!(login(&a).await.status, 403);
    a.shutdown().await;
    b.shutdown().await;
}

/// Failed logins from one address, and the user names it tries, are counted across the
/// instances: spread over both so that neither alone reaches the limit, the address is
/// still detected and banned on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_brute_force_and_stuffing_are_counted_across_instances() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let up = login_app().await;
    let app = APP
        .replace("max_failures = 3", "max_failures = 20")
        .replace("ip_max_failures = 50", "ip_max_failures = 4")
        .replace("stuffing_users = 50", "stuffing_users = 3");
    let config = |instance: &str| {
        trusted_config(
            &up,
            &format!(
                "{app}\n[cluster]\nbackend = \"redis\"\nurl = \"{}\"\ninstance = \"{instance}\"\ntimeout = \"200ms\"\n",
                redis.url()
            ),
        )
    };
    let a = TestGateway::start(&config("gw-a")).await;
    let b = TestGateway::start(&config("gw-b")).await;
    connected(&a).await;
    connected(&b).await;
    let fail = |gw, ip, user: &str| {
        let form = format!("user={user}&password=nope");
        async move { send(gw, "POST", "/login", ip, None, &form).await.status }
    };
    // Four failures for one name from one address, two per instance.
    for gw in [&a, &b, &a, &b] {
        assert_eq!(fail(gw, "198.51.100.60", "gina").await, 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in [&a, &b] {
        within_a_second("address banned", || async {
            send(gw, "GET", "/x", "198.51.100.60", None, "")
                .await
                .status
                == 403
        })
        .await;
    }
    // Three names from another address (two on A, one on B): credential stuffing.
    for (gw, user) in [(&a, "u1"), (&b, "u2"), (&a, "u3")] {
        assert_eq!(fail(gw, "198.51.100.61", user).await, 401);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for gw in [&a, &b] {
        within_a_second("stuffing address banned", || async {
            send(gw, "GET", "/x", "198.51.100.61", None, "")
                .await
                .status
                == 403
        })
        .await;
    }
    // Each detection recorded once, by the instance whose failure crossed the limit.
    let mut kinds = Vec::new();
    for gw in [&a, &b] {
        for e in events_of(gw, "brute_force_detected").await {
            assert_eq!(e["details"]["across_instances"], "true", "{e}");
            kinds.push((
                e["details"]["kind"].as_str().unwrap().to_string(),
                e["details"]["instance"].as_str().unwrap().to_string(),
            ));
        }
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("address".to_string(), "gw-b".to_string()),
            ("credential_stuffing".to_string(), "gw-a".to_string())
        ]
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// The failure policy is the operator's: `rate_limits_when_down = "refuse"` fails closed
/// (503 under a shared policy, other routes served) and `ready_when_down = false` takes
/// the instance out of its load balancer while Redis is unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_policy_can_fail_closed_and_unready() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let up = login_app().await;
    let gw = TestGateway::start(&trusted_config(
        &up,
        &format!(
            "{APP}\n[cluster]\nbackend = \"redis\"\nurl = \"{}\"\ninstance = \"gw\"\ntimeout = \"200ms\"\nrate_limits_when_down = \"refuse\"\nready_when_down = false\n",
            redis.url()
        ),
    ))
    .await;
    connected(&gw).await;
    let ready = || async { api(&gw, "GET", "/readyz", None).await.status };
    assert_eq!(ready().await, 200);
    let limited = || send(&gw, "GET", "/limited/x", "198.51.100.70", None, "");
    assert_eq!(limited().await.status, 200);
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ready().await != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 200 without redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = limited().await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.headers["retry-after"], "1");
    // A route under no shared policy is served as before.
    assert_eq!(
        send(&gw, "GET", "/x", "198.51.100.70", None, "")
            .await
            .status,
        200
    );
    assert!(redis.spawn());
    connected(&gw).await;
    assert_eq!(ready().await, 200);
    assert_eq!(limited().await.status, 200);
    gw.shutdown().await;
}

/// `rediss://` with a password and a private CA: connected when `ca_file` names the CA,
/// never without it (the server's certificate is verified).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_a_password_and_a_private_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let path = |f: &str| certs.path().join(f).display().to_string();
    std::fs::write(path("redis.crt"), leaf.pem()).unwrap();
    std::fs::write(path("redis.key"), key.serialize_pem()).unwrap();
    std::fs::write(path("ca.crt"), ca.pem()).unwrap();
    std::fs::write(path("password"), "s3cret-redis-password\n").unwrap();
    let (crt, key, ca_file) = (path("redis.crt"), path("redis.key"), path("ca.crt"));
    let Some(redis) = Redis::start_with(&[
        "--port",
        "0",
        "--tls-port",
        "{port}",
        "--tls-cert-file",
        &crt,
        "--tls-key-file",
        &key,
        "--tls-ca-cert-file",
        &ca_file,
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret-redis-password",
    ]) else {
        return;
    };
    let config = |ca: &str| {
        base_config(
            &["builtin:echo".into()],
            &format!(
                "\n[cluster]\nbackend = \"redis\"\nurl = \"rediss://localhost:{}\"\npassword_file = \"{}\"\ninstance = \"gw\"\n{ca}",
                redis.port,
                path("password")
            ),
        )
    };
    let gw = TestGateway::start(&config(&format!("ca_file = \"{ca_file}\"\n"))).await;
    connected(&gw).await;
    gw.shutdown().await;
    // The same server without the CA: the certificate is not trusted, no connection.
    let gw = TestGateway::start(&config("")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let view = api(&gw, "GET", "/api/v1/cluster", None).await.json();
    assert_eq!(view["connected"], false, "{view}");
    gw.shutdown().await;
}

/// A Redis host name resolving outside `[network] egress_allow` is never connected to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_host_names_resolve_through_egress_allow() {
    let Some(redis) = Redis::start() else {
        return;
    };
    let cfg = |allow: &str| {
        base_config(
            &["builtin:echo".into()],
            &format!(
                "\n[network]\negress_allow = [\"{allow}\"]\n\n[cluster]\nbackend = \"redis\"\nurl = \"redis://localhost:{}\"\ninstance = \"gw\"\n",
                redis.port
            ),
        )
    };
    // localhost is 127.0.0.1: allowed, it connects; outside the allowed network, never.
    let allowed = TestGateway::start(&cfg("127.0.0.0/8")).await;
    connected(&allowed).await;
    allowed.shutdown().await;
    let refused = TestGateway::start(&cfg("10.0.0.0/8")).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let view = api(&refused, "GET", "/api/v1/cluster", None).await.json();
    assert_eq!(view["connected"], false, "{view}");
    assert!(!events_of(&refused, "cluster_degraded").await.is_empty());
    refused.shutdown().await;
}

#[test]
fn cluster_config_mistakes_are_named() {
    let bad = |extra: &str| config_errors(&base_config(&["http://127.0.0.1:1".into()], extra));
    let e = bad("\n[cluster]\nbackend = \"etcd\"\nurl = \"redis://127.0.0.1:6379\"\n");
    assert_eq!(e[0].key, "cluster.backend", "{e:?}");
    let e = bad("\n[cluster]\nbackend = \"redis\"\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n");
    assert_eq!(e[0].key, "cluster.url", "{e:?}");
    assert!(!e[0].message.contains("hunter2"), "{e:?}");
    let e = bad("\n[cluster]\nbackend = \"redis\"\nurl = \"http://127.0.0.1:6379\"\n");
    assert_eq!(e[0].key, "cluster.url", "{e:?}");
    let e = bad(
        "\n[network]\negress_allow = [\"10.0.0.0/8\"]\n\n[cluster]\nbackend = \"redis\"\nurl = \"redis://192.0.2.1:6379\"\n",
    );
    assert!(
        e.iter()
            .any(|e| e.key == "cluster.url" && e.message.contains("egress_allow")),
        "{e:?}"
    );
    let e = bad(
        "\n[cluster]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\ninstance = \"a b\"\n",
    );
    assert_eq!(e[0].key, "cluster.instance", "{e:?}");
    let e = bad("\n[cluster]\nbackend = \"redis\"\n");
    assert_eq!(e[0].key, "cluster.url", "{e:?}");
    let e = bad(
        "\n[cluster]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nnodes = [\"redis://127.0.0.1:7000\"]\n",
    );
    assert_eq!(e[0].key, "cluster.nodes", "{e:?}");
    let e = bad(
        "\n[cluster]\nbackend = \"redis\"\nnodes = [\"redis://127.0.0.1:7000\", \"redis://:pw@127.0.0.1:7001\", \"redis://127.0.0.1:7002/3\"]\n",
    );
    let named: Vec<&str> = e.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(named, ["cluster.nodes[1]", "cluster.nodes[2]"], "{e:?}");
    let e = bad(
        "\n[cluster]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nca_file = \"ca.crt\"\n",
    );
    assert_eq!(e[0].key, "cluster.ca_file", "{e:?}");
}
