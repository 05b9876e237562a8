//! The admin port: open health and metrics, a token-protected API, no API without a token.

use crate::support::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_the_bearer_token() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    assert_eq!(admin(&gw, "GET", "/healthz", None).await.status, 200);
    assert_eq!(admin(&gw, "GET", "/readyz", None).await.status, 200);
    let r = admin(&gw, "GET", "/api/v1/status", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    assert_eq!(
        admin(
            &gw,
            "GET",
            "/api/v1/status",
            Some("wrong-token-wrong-token")
        )
        .await
        .status,
        401
    );
    assert_eq!(
        admin(&gw, "POST", "/api/v1/reload", Some("x")).await.status,
        401
    );
    let r = admin(&gw, "GET", "/api/v1/status", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["generation"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_does_not_run() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(&format!("token = \"{TOKEN}\"\n"), "");
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(admin(&gw, "GET", "/healthz", None).await.status, 200);
    for t in [None, Some(""), Some("anything")] {
        assert_eq!(admin(&gw, "POST", "/api/v1/reload", t).await.status, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_by_route_and_status_without_ips_or_paths() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for i in 0..3 {
        assert_eq!(c.get(&format!("/secret-path-{i}")).await.status, 200);
    }
    let r = admin(&gw, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let m = r.text();
    assert!(
        m.contains("gateway_requests_total{route=\"app\",status=\"2xx\"} 3"),
        "{m}"
    );
    assert!(m.contains("gateway_request_duration_seconds_bucket"), "{m}");
    assert!(
        m.contains("gateway_connections_active{listener=\"http\"} 1"),
        "{m}"
    );
    assert!(
        !m.contains("127.0.0.1") && !m.contains("secret-path"),
        "high-cardinality label leaked"
    );
    // Every sample line is `name{labels} value` with a gateway_ prefix.
    for line in m.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.starts_with("gateway_"), "{line}");
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool() {
    let Ok(out) = std::process::Command::new("promtool")
        .arg("--version")
        .output()
    else {
        // CI installs promtool (.ci/run); a developer machine may not have it.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool must be installed in CI"
        );
        eprintln!("promtool not installed: skipping the exposition format check");
        return;
    };
    assert!(out.status.success());
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 200);
    let text = admin(&gw, "GET", "/metrics", None).await.text();
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_metrics_and_health_only_and_gateway_health_asks_it() {
    let up = echo_upstream().await;
    let port = free_port();
    let cfg = base_config(&[up.url()], "").replace(
        "[admin]\n",
        &format!("[admin]\nmetrics_bind = \"127.0.0.1:{port}\"\n"),
    );
    let gw = TestGateway::start(&cfg).await;
    assert_eq!(gw.gw().metrics_addr().map(|a| a.port()), Some(port));
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 200);

    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let metrics = get("/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(metrics.contains("gateway_requests_total"), "{metrics}");
    assert!(get("/readyz").await.starts_with("HTTP/1.1 200"));
    assert!(get("/healthz").await.starts_with("HTTP/1.1 200"));
    // The API is not on this listener, token or not.
    for path in ["/api/v1/status", "/api/v1/events", "/openapi.json"] {
        let r = get(path).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }

    let health = |path: std::path::PathBuf| {
        std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["health", "--timeout", "2", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let out = tokio::task::spawn_blocking({
        let p = gw.config_path();
        move || health(p)
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));

    let dir = gw.stop_keeping_files().await;
    let out = tokio::task::spawn_blocking({
        let p = dir.path().join("gateway.toml");
        move || health(p)
    })
    .await
    .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a stopped gateway is not healthy"
    );
    let missing = health(dir.path().join("nope.toml"));
    assert_eq!(missing.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_may_do_what_its_role_allows_and_acts_under_its_name() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], OPERATOR_TOKENS)).await;
    let (ana, vi) = (token_of(&gw, "ana"), token_of(&gw, "vi"));
    assert!(ana.len() >= 32 && ana != vi);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(gw.dir.path().join("vi.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "token files are private: {mode:o}");
    }
    for (t, name, role) in [
        (TOKEN, "admin", "admin"),
        (&ana, "ana", "operator"),
        (&vi, "vi", "viewer"),
    ] {
        let r = api_as(&gw, t, "GET", "/api/v1/whoami", None).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"name": name, "role": role}));
    }

    // A viewer reads and may use the rule tester; every change is 403.
    for path in [
        "/api/v1/events",
        "/api/v1/sessions",
        "/api/v1/bans",
        "/api/v1/ip-rules",
        "/api/v1/backups",
    ] {
        assert_eq!(
            api_as(&gw, &vi, "GET", path, None).await.status,
            200,
            "{path}"
        );
    }
    let r = api_as(
        &gw,
        &vi,
        "POST",
        "/api/v1/ip-rules/test",
        Some(json!({"ip": "192.0.2.1", "host": "localhost", "path": "/"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ban = json!({"ip": "192.0.2.7", "duration": "1h", "reason": "scanner"});
    let r = api_as(&gw, &vi, "POST", "/api/v1/bans", Some(ban.clone())).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("viewer"), "{}", r.text());
    for (m, p) in [
        ("POST", "/api/v1/reload"),
        ("DELETE", "/api/v1/users/x/lock"),
        ("POST", "/api/v1/backups"),
    ] {
        assert_eq!(api_as(&gw, &vi, m, p, None).await.status, 403, "{m} {p}");
    }
    assert!(
        gw.gw().shared().bans.active().is_empty(),
        "a refused call changed nothing"
    );

    // An operator bans and lifts under their own name, but may not reload or back up.
    let r = api_as(&gw, &ana, "POST", "/api/v1/bans", Some(ban)).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = api_as(&gw, &ana, "DELETE", "/api/v1/bans/192.0.2.7", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (m, p) in [
        ("POST", "/api/v1/reload"),
        ("POST", "/api/v1/backups"),
        ("POST", "/api/v1/archive/run"),
    ] {
        assert_eq!(api_as(&gw, &ana, m, p, None).await.status, 403, "{m} {p}");
    }
    assert_eq!(api(&gw, "POST", "/api/v1/reload", None).await.status, 200);

    let banned = events_of(&gw, "ip_banned").await;
    assert_eq!(banned[0]["details"]["by"], "ana");
    assert_eq!(
        events_of(&gw, "ip_unbanned").await[0]["details"]["by"],
        "ana"
    );
    let refused = events_of(&gw, "admin_forbidden").await;
    assert_eq!(refused.len(), 7, "{refused:?}");
    assert!(refused.iter().any(|e| e["details"]["by"] == "vi"));
    assert!(refused.iter().any(|e| e["details"]["by"] == "ana"));
    // No event holds a token.
    let all = api(&gw, "GET", "/api/v1/events/export", None).await.text();
    for t in [TOKEN, &ana, &vi] {
        assert!(!all.contains(t), "a token leaked into events");
    }
}

#[test]
fn named_tokens_are_checked_when_the_config_is() {
    let errs = config_errors(&base_config(
        &["http://127.0.0.1:9".into()],
        r#"
[[admin.tokens]]
name = "admin"
role = "operator"
token_file = "a.token"

[[admin.tokens]]
name = "bad name"
role = "viewer"
token_env = "X"

[[admin.tokens]]
name = "both"
role = "viewer"
token_env = "X"
token_file = "b.token"
"#,
    ));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "admin.tokens[0].name",
            "admin.tokens[1].name",
            "admin.tokens[2]"
        ],
        "{errs:?}"
    );
    let errs = config_errors(&base_config(
        &[],
        "[[admin.tokens]]\nname = \"x\"\nrole = \"root\"\ntoken_env = \"X\"\n",
    ));
    assert!(errs[0].message.contains("viewer"), "{errs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_an_unset_variable_stops_the_start_with_its_name() {
    let up = echo_upstream().await;
    let cfg = base_config(
        &[up.url()],
        "[[admin.tokens]]\nname = \"ci\"\nrole = \"viewer\"\ntoken_env = \"GATEWAY_TEST_TOKEN_NEVER_SET\"\n",
    );
    let err = TestGateway::try_start(&cfg).await.err().expect("refused");
    assert_eq!(err.exit_code(), 2);
    assert!(
        err.to_string().contains("GATEWAY_TEST_TOKEN_NEVER_SET"),
        "{err}"
    );
}
