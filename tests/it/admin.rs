//! The admin port: open health and metrics, a token-protected API, no API without a token.

use crate::support::*;

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
