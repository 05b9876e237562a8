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

const H2_PREFACE_AND_SETTINGS: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Keeps an HTTP/2 connection busy with PINGs every 300 ms (each answered by the gateway,
/// so bytes move both ways) until the gateway closes it: how long that took, or `None`
/// after `give_up`.
async fn ping_until_closed<S>(s: S, give_up: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let (mut r, mut w) = tokio::io::split(s);
    let started = Instant::now();
    let reader = async {
        let mut buf = [0u8; 4096];
        while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    };
    let pinger = async {
        let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping";
        while w.write_all(ping).await.is_ok() && w.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    tokio::select! {
        _ = reader => Some(started.elapsed()),
        _ = pinger => Some(started.elapsed()),
        _ = tokio::time::sleep(give_up) => None,
    }
}

/// Sends `GET /` on stream 1 and reads frames until that stream ends.
async fn h2_get<S>(s: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    // HPACK: :method GET, :scheme https, :path / (static table), :authority localhost.
    let block = b"\x82\x87\x84\x41\x09localhost";
    let mut frame = vec![0, 0, block.len() as u8, 0x01, 0x05, 0, 0, 0, 1];
    frame.extend_from_slice(block);
    s.write_all(&frame).await.unwrap();
    s.flush().await.unwrap();
    loop {
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.expect("response frames");
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        s.read_exact(&mut payload).await.unwrap();
        let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        if stream == 1 && head[4] & 0x01 != 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_frames_without_requests_do_not_hold_a_connection() {
    let up = echo_upstream().await;
    // Head deadline 1 s, idle 3 s.
    let cfg = base_config(&[up.url()], "")
        + "\n[timeouts]\ntls_handshake = \"1s\"\nheader_read = \"1s\"\nidle = \"3s\"\n";
    let gw = TestGateway::start(&cfg).await;

    // PINGs after the preface, no request: the first request's head deadline closes it.
    let mut s = gw.tls().connect(gw.addr("https"), "localhost", true).await;
    s.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    let closed = ping_until_closed(s, Duration::from_secs(8)).await;
    assert!(
        closed.is_some_and(|t| t < Duration::from_millis(2500)),
        "no request, PINGs only: closed after {closed:?}"
    );

    // After a request, PINGs do not keep it open past the idle timeout either; and the
    // request head deadline does not apply to an HTTP/2 connection that already carried
    // a request (it is idle, not slow).
    let mut s = gw.tls().connect(gw.addr("https"), "localhost", true).await;
    s.write_all(H2_PREFACE_AND_SETTINGS).await.unwrap();
    h2_get(&mut s).await;
    let closed = ping_until_closed(s, Duration::from_secs(10)).await;
    assert!(
        closed.is_some_and(|t| t >= Duration::from_millis(2400) && t < Duration::from_secs(5)),
        "one request, then PINGs: closed after {closed:?} (idle 3 s)"
    );
    assert_eq!(up.hits(), 1);
}
