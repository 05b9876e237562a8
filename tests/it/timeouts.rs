//! Silent and slow clients are closed: thousands of connections that never send a byte
//! (TLS and plain), a request head that never completes, idle HTTP/2; and the per-listener
//! connection limit.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::*;

/// A request head that is never finished.
const SLOW_HEAD: &[u8] =
    b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn short_timeouts(cfg: String) -> String {
    cfg + "\n[timeouts]\ntls_handshake = \"1s\"\nheader_read = \"1s\"\nidle = \"1s\"\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_connections_are_closed() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&short_timeouts(base_config(&[up.url()], ""))).await;
    const N: usize = 1500;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(2 * N);
    for listener in ["https", "http"] {
        let addr = gw.addr(listener);
        for _ in 0..N {
            conns.push(TcpStream::connect(addr).await.unwrap());
        }
    }
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move { read_until_close(&mut s, Duration::from_secs(10)).await.1 })
        })
        .collect();
    let mut closed = 0;
    for t in tasks {
        if t.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(
        closed,
        2 * N,
        "every silent connection closed by the gateway"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    // And the gateway still serves.
    let mut c = gw.tls().h1(gw.addr("https")).await;
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_on_plain_and_tls() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&short_timeouts(base_config(&[up.url()], ""))).await;
    // Slowloris: a byte every 300 ms keeps each connection busy but the head never completes.
    let mut plain = TcpStream::connect(gw.addr("http")).await.unwrap();
    let mut tls = gw.tls().connect(gw.addr("https"), "localhost", false).await;
    let started = Instant::now();
    let every = Duration::from_millis(300);
    let give_up = Duration::from_secs(6);
    let (plain_closed, tls_closed) = tokio::join!(
        trickle(&mut plain, SLOW_HEAD, every, give_up),
        trickle(&mut tls, SLOW_HEAD, every, give_up),
    );
    assert!(
        plain_closed && tls_closed,
        "plain closed: {plain_closed}, TLS closed: {tls_closed}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(up.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_but_slow_upstreams_do_not_cut_clients() {
    let slow = upstream(|_req| async {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        hyper::Response::new(full("slow but fine"))
    })
    .await;
    let cfg = short_timeouts(base_config(&[slow.url()], ""));
    let gw = TestGateway::start(&cfg).await;
    // A request that waits 1.8 s upstream survives an idle timeout of 1 s.
    for h2 in [false, true] {
        let mut c = gw.tls().sender(gw.addr("https"), h2).await;
        let r = c.get("/").await;
        assert_eq!(r.status, 200, "h2={h2}");
        assert_eq!(r.text(), "slow but fine");
    }
    // An idle TLS connection (h2 after its preface, h1 after a request) is closed.
    let mut s = gw.tls().connect(gw.addr("https"), "localhost", true).await;
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("idle HTTP/2 connection not closed"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_listener_limit_are_closed() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "name = \"http\"\nbind = \"127.0.0.1:0\"",
        "name = \"http\"\nbind = \"127.0.0.1:0\"\nmax_connections = 2",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut a = Sender::plain(gw.addr("http")).await;
    let mut b = Sender::plain(gw.addr("http")).await;
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    let mut third = TcpStream::connect(gw.addr("http")).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let (out, closed) = read_until_close(&mut third, Duration::from_secs(3)).await;
    assert!(closed && out.is_empty(), "third connection served: {out}");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 200, "a freed slot is usable again");
    assert_eq!(b.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_requests_spaced_near_the_head_timeout_are_not_cut() {
    let up = echo_upstream().await;
    // Head deadline 1s, idle 3s: requests 0.8s apart on one connection must all succeed,
    // although the connection lives far longer than one head deadline.
    let cfg = base_config(&[up.url()], "")
        + "\n[timeouts]\ntls_handshake = \"1s\"\nheader_read = \"1s\"\nidle = \"3s\"\n";
    let gw = TestGateway::start(&cfg).await;
    let mut c = gw.tls().h1(gw.addr("https")).await;
    for _ in 0..5 {
        assert_eq!(c.get("/").await.status, 200);
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    assert_eq!(up.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_at_most_its_share_of_connections_unless_it_is_a_trusted_proxy() {
    let up = echo_upstream().await;
    let capped = "name = \"http\"\nbind = \"127.0.0.1:0\"\nmax_connections_per_ip = 2";
    let cfg =
        base_config(&[up.url()], "").replace("name = \"http\"\nbind = \"127.0.0.1:0\"", capped);
    let gw = TestGateway::start(&cfg).await;
    let mut a = Sender::plain(gw.addr("http")).await;
    let mut b = Sender::plain(gw.addr("http")).await;
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    let mut third = TcpStream::connect(gw.addr("http")).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let (out, closed) = read_until_close(&mut third, Duration::from_secs(3)).await;
    assert!(
        closed && out.is_empty(),
        "third connection from one address served: {out}"
    );
    // The TLS listener of the same gateway has its own share.
    let mut t = gw.tls().h1(gw.addr("https")).await;
    assert_eq!(t.get("/").await.status, 200);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(
        c.get("/").await.status,
        200,
        "a closed connection gives its place back"
    );
    let metrics = admin(&gw, "GET", "/metrics", None).await.text();
    assert!(
        metrics.contains("gateway_connections_rejected_per_address_total{listener=\"http\"} 1"),
        "{metrics}"
    );
    drop((b, c, t));

    // A trusted proxy carries many clients: no cap for it.
    let cfg = base_config(&[up.url()], "")
        .replace("name = \"http\"\nbind = \"127.0.0.1:0\"", capped)
        .replace(
            "access_log = false",
            "access_log = false\ntrusted_proxies = [\"127.0.0.0/8\"]",
        );
    let gw = TestGateway::start(&cfg).await;
    let mut conns = Vec::new();
    for _ in 0..4 {
        let mut s = Sender::plain(gw.addr("http")).await;
        assert_eq!(s.get("/").await.status, 200);
        conns.push(s);
    }
}
