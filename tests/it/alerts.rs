//! Alert webhooks against a receiver on 127.0.0.1: signed deliveries of the events a
//! webhook asks for, retries with backoff, a bounded queue that drops (and counts) instead
//! of slowing anything down, and config errors named by key.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::{Response, StatusCode};
use sha2::Sha256;

use crate::support::*;

/// What the receiver saw: each request's headers and body, in order.
type Seen = Arc<Mutex<Vec<(http::HeaderMap, Bytes)>>>;

/// A webhook receiver that answers 503 to its first `failures` requests, then 200, each
/// after `delay`.
async fn receiver(failures: usize, delay: Duration) -> (Upstream, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let up = upstream(move |req: hyper::Request<hyper::body::Incoming>| {
        let s = s.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            let n = {
                let mut v = s.lock().unwrap();
                v.push((parts.headers, body));
                v.len()
            };
            tokio::time::sleep(delay).await;
            let status = if n <= failures {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Response::builder().status(status).body(full("")).unwrap()
        }
    })
    .await;
    (up, seen)
}

fn webhook(url: &str, extra: &str) -> String {
    format!(
        "\n[[alerts.webhooks]]\nname = \"ops\"\nurl = \"{url}/hook?team=sec\"\nsecret_file = \"hook.secret\"\nbackoff = \"50ms\"\n{extra}\n"
    )
}

/// The value of `gateway_alerts_<what>_total{webhook="ops"}` on /metrics.
async fn alert_metric(gw: &TestGateway, what: &str) -> u64 {
    let text = admin(gw, "GET", "/metrics", None).await.text();
    let prefix = format!("gateway_alerts_{what}_total{{webhook=\"ops\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits (up to ten seconds) until the metric reads `value`.
async fn metric_becomes(gw: &TestGateway, what: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = alert_metric(gw, what).await;
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_events_are_signed_and_retried_until_the_receiver_takes_them() {
    let up = echo_upstream().await;
    let (rx, seen) = receiver(2, Duration::ZERO).await;
    let gw = TestGateway::start(&base_config(&[up.url()], &webhook(&rx.url(), ""))).await;
    let secret = std::fs::read_to_string(gw.dir.path().join("hook.secret")).unwrap();
    let secret = secret.trim();
    assert!(secret.len() >= 32, "a random secret was created");

    // Four failed admin logins are medium (not sent); the fifth is critical.
    fail_logins(&gw, 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        seen.lock().unwrap().is_empty(),
        "medium events are not alerts"
    );
    fail_logins(&gw, 1).await;
    eventually("three attempts (two 503s, then 200)", || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let deliveries = seen.lock().unwrap().clone();
    let (h, body) = &deliveries[2];
    let payload: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(payload["webhook"], "ops");
    assert_eq!(payload["event"]["type"], "admin_auth_failed");
    assert_eq!(payload["event"]["risk"], "critical");
    assert_eq!(h["x-gateway-event"], "admin_auth_failed");
    assert_eq!(
        h["x-gateway-delivery"].to_str().unwrap(),
        payload["event"]["id"].as_str().unwrap()
    );
    assert_eq!(h["content-type"], "application/json");
    // The receiver checks the signature over "<timestamp>.<body>" with the shared secret.
    let ts = h["x-gateway-timestamp"].to_str().unwrap();
    let ts_secs: u64 = ts.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(ts_secs) < 60);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    let expect: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        h["x-gateway-signature"].to_str().unwrap(),
        format!("sha256={expect}")
    );
    // A tampered body would not verify.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&body[..body.len() - 1]);
    assert_ne!(
        h["x-gateway-signature"].to_str().unwrap(),
        format!("sha256={:x}", mac.finalize().into_bytes())
    );
    // Every attempt carried the same event; nothing in it is a secret.
    assert!(deliveries.iter().all(|(_, b)| b == body));
    assert!(!String::from_utf8_lossy(body).contains(TOKEN));

    metric_becomes(&gw, "sent", 1).await;
    assert_eq!(alert_metric(&gw, "retries").await, 2);
    assert_eq!(alert_metric(&gw, "dropped").await, 0);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_fills_a_bounded_queue_and_alerts_are_dropped_not_waited_for() {
    let up = echo_upstream().await;
    let (rx, seen) = receiver(0, Duration::from_millis(700)).await;
    let gw = TestGateway::start(&base_config(
        &[up.url()],
        &webhook(&rx.url(), "queue = 2\nmin_risk = \"medium\""),
    ))
    .await;
    // Twenty medium-or-worse events in a burst: one in flight, two queued, the rest dropped.
    let started = Instant::now();
    fail_logins(&gw, 20).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the API did not wait for the webhook"
    );
    let dropped = alert_metric(&gw, "dropped").await;
    assert!(dropped >= 14, "dropped {dropped}");
    // The ones that fit are delivered.
    eventually("the queued alerts are delivered", || {
        seen.lock().unwrap().len() as u64 + dropped >= 20
    })
    .await;
    assert_eq!(seen.lock().unwrap().len() as u64 + dropped, 20);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_refuses_is_not_retried() {
    let up = echo_upstream().await;
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let s = seen.clone();
    let rx = upstream(move |_req| {
        let s = s.clone();
        async move {
            s.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Response::builder()
                .status(StatusCode::UNAUTHORIZED)
                .body(full(""))
                .unwrap()
        }
    })
    .await;
    let gw = TestGateway::start(&base_config(&[up.url()], &webhook(&rx.url(), ""))).await;
    fail_logins(&gw, 5).await;
    eventually("one attempt", || {
        seen.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    metric_becomes(&gw, "failed", 1).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(alert_metric(&gw, "retries").await, 0);
    gw.shutdown().await;
}

#[test]
fn webhook_config_errors_are_named_by_key() {
    let errs = config_errors(&base_config(
        &["http://127.0.0.1:9".into()],
        r#"
[[alerts.webhooks]]
name = "a"
url = "ftp://example.com/x"
secret_env = "X"
min_risk = "severe"
types = ["waf_blocked", "no_such_event"]

[[alerts.webhooks]]
name = "b"
url = "https://example.com/x"
queue = 0
"#,
    ));
    let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "alerts.webhooks[0].url",
            "alerts.webhooks[0].min_risk",
            "alerts.webhooks[0].types[1]",
            "alerts.webhooks[1]",
            "alerts.webhooks[1].queue",
        ],
        "{errs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_webhooks_verify_the_receiver_against_ca_file() {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let certs = tempfile::tempdir().unwrap();
    let (crt, key) = (certs.path().join("hook.crt"), certs.path().join("hook.key"));
    let ca = gateway::tls::dev_cert::generate(&crt, &key).unwrap();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, s) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.unwrap().to_bytes();
                            s.lock().unwrap().push((parts.headers, body));
                            Ok::<_, std::convert::Infallible>(Response::new(full("")))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    let up = echo_upstream().await;
    let url = format!("https://127.0.0.1:{port}");
    let ca_line = format!("ca_file = \"{}\"", ca.display());
    let gw = TestGateway::start(&base_config(&[up.url()], &webhook(&url, &ca_line))).await;
    fail_logins(&gw, 5).await;
    eventually("delivered over TLS", || seen.lock().unwrap().len() == 1).await;
    metric_becomes(&gw, "sent", 1).await;
    gw.shutdown().await;

    // Without the CA the receiver's certificate is not trusted: nothing is delivered.
    let gw = TestGateway::start(&base_config(&[up.url()], &webhook(&url, "max_retries = 0"))).await;
    fail_logins(&gw, 5).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while alert_metric(&gw, "failed").await == 0 {
        assert!(
            Instant::now() < deadline,
            "the untrusted delivery did not fail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert_eq!(alert_metric(&gw, "sent").await, 0);
    gw.shutdown().await;
}
