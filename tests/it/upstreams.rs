//! Upstream failures and pools: 502 on connect failure and malformed responses, 504 on
//! slow upstreams, 101 without an upgrade request, round robin, passive ejection and
//! retries, active health checks.

use std::time::Duration;

use hyper::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", l.local_addr().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_is_504_and_refused_connect_is_502() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        Response::new(full("late"))
    })
    .await;
    let gw = TestGateway::start(&base_config(&[slow.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let started = std::time::Instant::now();
    let r = c.get("/").await;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "response_timeout is 2s"
    );

    let gw = TestGateway::start(&base_config(&[dead_url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 502);
}

/// An upstream speaking raw bytes: answers every connection with `reply`.
async fn raw_upstream(reply: &'static [u8]) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(reply).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_response_is_502() {
    let url = raw_upstream(b"HTTP/1.1 2OO NOT OK\r\nnonsense\r\n\r\n").await;
    let gw = TestGateway::start(&base_config(&[url], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 502);
    // The gateway still serves the next request on the same client connection.
    assert_eq!(c.get("/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrequested_switching_protocols_is_502() {
    let url = raw_upstream(
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: evil\r\n\r\n",
    )
    .await;
    let gw = TestGateway::start(&base_config(&[url], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_and_retries_skip_a_dead_server() {
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[a.url(), b.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for _ in 0..10 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!((a.hits(), b.hits()), (5, 5));

    // One dead server: idempotent requests are retried on the live one, none fail, and the
    // dead one is ejected after max_fails (3) connect failures.
    let live = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[dead_url(), live.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for _ in 0..20 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(live.hits(), 20);
    let m = admin(&gw, "GET", "/metrics", None).await.text();
    let connect_errors: u32 = m
        .lines()
        .find(|l| l.starts_with("gateway_upstream_errors_total{kind=\"connect\",upstream=\"app\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert_eq!(
        connect_errors, 3,
        "ejected after 3 failures, not tried again within eject_for"
    );

    // A POST with a body is never retried: it fails when it lands on the dead server.
    let gw = TestGateway::start(&base_config(&[dead_url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let req = hyper::Request::post("/")
        .header("host", "x")
        .body(full("data"))
        .unwrap();
    assert_eq!(Reply::from(c.send(req).await.unwrap()).await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_failing_server_out_and_back() {
    let healthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let h = healthy.clone();
    let flaky = upstream(move |req| {
        let h = h.clone();
        async move {
            let ok = h.load(std::sync::atomic::Ordering::SeqCst);
            let status = if req.uri().path() == "/health" && !ok {
                503
            } else {
                200
            };
            Response::builder()
                .status(status)
                .header("x-server", "flaky")
                .body(full(""))
                .unwrap()
        }
    })
    .await;
    let steady = named_upstream("steady", Duration::ZERO).await;
    let extra = "";
    let cfg = base_config(&[flaky.url(), steady.url()], extra).replace(
        "response_timeout = \"2s\"",
        "response_timeout = \"2s\"\n[upstreams.health_check]\npath = \"/health\"\ninterval = \"100ms\"\ntimeout = \"1s\"\nhealthy_threshold = 2\nunhealthy_threshold = 2",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    healthy.store(false, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    for _ in 0..6 {
        let r = c.get("/").await;
        assert_eq!(r.headers["x-server"], "steady");
    }
    let status = admin(&gw, "GET", "/api/v1/status", Some(TOKEN))
        .await
        .json();
    assert_eq!(status["upstreams"][0]["servers"][0]["healthy"], false);
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut seen_flaky = false;
    for _ in 0..6 {
        seen_flaky |= c.get("/").await.headers["x-server"] == "flaky";
    }
    assert!(seen_flaky, "recovered server back in rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_server() {
    let slow = named_upstream("slow", Duration::from_millis(1500)).await;
    let fast = named_upstream("fast", Duration::ZERO).await;
    let cfg = base_config(&[slow.url(), fast.url()], "").replace(
        "connect_timeout = \"1s\"",
        "connect_timeout = \"1s\"\nbalance = \"least_connections\"",
    );
    let gw = TestGateway::start(&cfg).await;
    // Occupy the slow server (round robin would send every other request to it).
    let addr = gw.addr("http");
    let busy = tokio::spawn(async move { Sender::plain(addr).await.get("/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    for _ in 0..6 {
        assert_eq!(c.get("/").await.headers["x-server"], "fast");
    }
    assert_eq!(busy.await.unwrap().headers["x-server"], "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_server_in_rotation_is_503_and_exhausted_retries_are_502() {
    let sick = upstream(|req| async move {
        let status = if req.uri().path() == "/health" {
            500
        } else {
            200
        };
        Response::builder().status(status).body(full("")).unwrap()
    })
    .await;
    let cfg = base_config(&[sick.url()], "").replace(
        "response_timeout = \"2s\"",
        "response_timeout = \"2s\"\n[upstreams.health_check]\npath = \"/health\"\ninterval = \"100ms\"\nunhealthy_threshold = 1",
    );
    let gw = TestGateway::start(&cfg).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no healthy upstream");

    // Both servers refuse: the retry finds nothing left to try and answers 502.
    let gw = TestGateway::start(&base_config(&[dead_url(), dead_url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_timeout_is_502_not_504() {
    // A listener whose accept queue is full and never drained: further SYNs go unanswered,
    // so a connect hangs until the gateway's connect_timeout (1s; response_timeout is 2s).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = sock.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let gw = TestGateway::start(&base_config(&[format!("http://{addr}")], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let started = std::time::Instant::now();
    let r = c.get("/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(1900),
        "{took:?}"
    );
    drop(listener);
}
