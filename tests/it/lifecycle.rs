//! Reload and shutdown: reload under load with zero failed requests, a bad reload refused
//! while the old config keeps serving, SIGHUP, graceful drain on shutdown and SIGTERM.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::Response;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::ZERO).await;
    let cfg_a = base_config(&[a.url()], "");
    let gw = TestGateway::start(&cfg_a).await;
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let tls = gw.tls();
        let addr = gw.addr("https");
        clients.push(tokio::spawn(async move {
            let mut c = tls.sender(addr, i % 2 == 0).await;
            while !stop.load(Ordering::Relaxed) {
                let r = c.get("/").await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let cfg_b = base_config(&[b.url()], "");
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let next = if i % 2 == 0 { &cfg_b } else { &cfg_a };
        std::fs::write(gw.config_path(), next).unwrap();
        let r = admin(&gw, "POST", "/api/v1/reload", Some(TOKEN)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["generation"], i + 2);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "only {} requests",
        ok.load(Ordering::Relaxed)
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both configs served: a={} b={}",
        a.hits(),
        b.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_is_refused_and_the_old_config_keeps_serving() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let broken = base_config(&[up.url()], "").replace("upstream = \"app\"", "upstream = \"nope\"");
    std::fs::write(gw.config_path(), broken).unwrap();
    let r = admin(&gw, "POST", "/api/v1/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 422);
    let j = r.json();
    assert_eq!(j["reloaded"], false);
    assert_eq!(j["generation"], 1);
    assert_eq!(j["errors"][0]["key"], "routes[0].upstream");
    assert!(j["errors"][0]["line"].as_u64().unwrap() > 0);
    let mut c = gw.tls().h1(gw.addr("https")).await;
    assert_eq!(c.get("/").await.status, 200);
    let m = admin(&gw, "GET", "/metrics", None).await.text();
    assert!(
        m.contains("gateway_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests_and_stops_accepting() {
    let slow = upstream(|_r| async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Response::new(full("finished"))
    })
    .await;
    let gw = TestGateway::start(&base_config(&[slow.url()], "")).await;
    let addr = gw.addr("https");
    let tls = gw.tls();
    let mut c = tls.h2(addr).await;
    let in_flight = tokio::spawn(async move { c.get("/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let drained = gw.shutdown().await;
    assert!(drained);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reloads_on_sighup_and_drains_on_sigterm() {
    let a = named_upstream("a", Duration::ZERO).await;
    let b = named_upstream("b", Duration::from_millis(600)).await;
    let mut bin = BinaryGateway::start(|port| binary_config(&[a.url()], port, false)).await;
    let mut stderr = BinaryGateway::lines(bin.child.stderr.take().unwrap());
    let mut c = Sender::plain(bin.addr).await;
    assert_eq!(c.get("/").await.headers["x-server"], "a");

    std::fs::write(&bin.path, binary_config(&[b.url()], bin.port, false)).unwrap();
    bin.signal(libc::SIGHUP);
    let mut reloaded = false;
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(5), stderr.recv()).await {
        if line.contains("config reloaded") {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded);
    // A slow request in flight when SIGTERM arrives still completes.
    let in_flight = tokio::spawn(async move { c.get("/").await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    bin.signal(libc::SIGTERM);
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["x-server"], "b");
    let status = bin.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_replaced_on_reload_without_restart() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let old_ca = gw.dir.path().join("old-ca.crt");
    std::fs::copy(gw.ca(), &old_ca).unwrap();
    let old_client = TlsClient::new(&old_ca);
    let mut kept = old_client.h1(gw.addr("https")).await;
    assert_eq!(kept.get("/").await.status, 200);

    // Rotate: a new CA and leaf written over the configured files.
    let certs = gw.dir.path().join("certs");
    std::fs::remove_file(certs.join("localhost.crt")).unwrap();
    gateway::tls::dev_cert::generate(&certs.join("localhost.crt"), &certs.join("localhost.key"))
        .unwrap();
    let r = admin(&gw, "POST", "/api/v1/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // New handshakes get the new certificate: the old CA no longer verifies it...
    let tcp = tokio::net::TcpStream::connect(gw.addr("https"))
        .await
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_file_iter(&old_ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let res = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await;
    assert!(res.is_err(), "old certificate still served");
    // ...the new one does.
    let mut c = gw.tls().h2(gw.addr("https")).await;
    assert_eq!(c.get("/").await.status, 200);
    // And the connection opened before the rotation keeps working.
    assert_eq!(kept.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_is_one_json_line_per_request_without_secrets() {
    let up = echo_upstream().await;
    let mut bin = BinaryGateway::start(|port| binary_config(&[up.url()], port, true)).await;
    let mut stdout = BinaryGateway::lines(bin.child.stdout.take().unwrap());
    let mut c = Sender::plain(bin.addr).await;
    let req = hyper::Request::post("/login?token=query-secret")
        .header("host", "app.test")
        .header("cookie", "session=cookie-secret")
        .header("authorization", "Bearer auth-secret")
        .body(full("user=a&password=body-secret"))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    drop(c);
    bin.signal(libc::SIGTERM);
    bin.child.wait().unwrap();
    let mut lines = Vec::new();
    while let Some(line) = stdout.recv().await {
        lines.push(line);
    }
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    for secret in [
        "query-secret",
        "cookie-secret",
        "auth-secret",
        "body-secret",
    ] {
        assert!(!line.contains(secret), "{secret} logged: {line}");
    }
    let j: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(j["request_id"], rid);
    assert_eq!(j["method"], "POST");
    assert_eq!(j["host"], "app.test");
    assert_eq!(j["path"], "/login");
    assert_eq!(j["status"], 200);
    assert_eq!(j["client_ip"], "127.0.0.1");
    assert_eq!(j["bytes_in"], 27);
    assert!(j["bytes_out"].as_u64().unwrap() > 0);
    assert_eq!(j["route"], "app");
    assert_eq!(j["upstream"], up.url());
    assert!(j["total_ms"].as_f64().unwrap() >= j["upstream_ms"].as_f64().unwrap());
    assert_eq!(j["aborted"], false);
}
