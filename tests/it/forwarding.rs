//! Forwarding through the gateway to a real upstream: TLS with HTTP/1.1 and HTTP/2, the
//! forwarding headers, trusted proxies, PROXY protocol, WebSocket-style upgrades, big
//! streamed bodies, the shipped config.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_h1_and_h2_reach_the_upstream_with_forwarding_headers() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let tls = gw.tls();
    for h2 in [false, true] {
        let mut c = tls.sender(gw.addr("https"), h2).await;
        let r = c.get("/some/path?q=1").await;
        assert_eq!(r.status, 200, "h2={h2}: {}", r.text());
        let echo = r.json();
        assert_eq!(echo["uri"], "/some/path?q=1");
        assert_eq!(
            echoed_header(&echo, "x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            echoed_header(&echo, "x-forwarded-proto").as_deref(),
            Some("https")
        );
        assert_eq!(
            echoed_header(&echo, "x-forwarded-host").as_deref(),
            Some("localhost")
        );
        assert_eq!(echoed_header(&echo, "host").as_deref(), Some("localhost"));
        let rid = echoed_header(&echo, "x-request-id").expect("request id sent upstream");
        assert_eq!(rid.len(), 16);
        assert_eq!(
            r.headers["x-request-id"].to_str().unwrap(),
            rid,
            "same id back to the client"
        );
    }
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_serves_many_requests() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let mut c = gw.tls().h1(gw.addr("https")).await;
    for _ in 0..50 {
        assert_eq!(c.get("/").await.status, 200);
    }
    let mut c = gw.tls().h2(gw.addr("https")).await;
    for _ in 0..50 {
        assert_eq!(c.get("/").await.status, 200);
    }
    assert_eq!(up.hits(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_forwarding_headers_from_untrusted_peers_are_replaced() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "chosen-by-attacker")
        .body(full(""))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    let echo = r.json();
    assert_eq!(echoed_headers(&echo, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_ne!(
        echoed_header(&echo, "x-request-id").as_deref(),
        Some("chosen-by-attacker")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_proxy_chain_is_extended_and_its_request_id_kept() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "access_log = false",
        "access_log = false\ntrusted_proxies = [\"127.0.0.0/8\"]",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-request-id", "lb-1234")
        .body(full(""))
        .unwrap();
    let echo = Reply::from(c.send(req).await.unwrap()).await.json();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for").as_deref(),
        Some("198.51.100.7, 127.0.0.1")
    );
    assert_eq!(
        echoed_header(&echo, "x-request-id").as_deref(),
        Some("lb-1234")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_set_the_client_address() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "name = \"http\"\nbind = \"127.0.0.1:0\"",
        "name = \"http\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true",
    );
    let gw = TestGateway::start(&cfg).await;
    // v1
    let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 40000 8080\r\n")
        .await
        .unwrap();
    let mut c = Sender::h1(s).await;
    let echo = c.get("/").await.json();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    // v2, IPv6
    let mut hdr = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    hdr.extend_from_slice(&[0x21, 0x21, 0, 36]);
    hdr.extend_from_slice(
        &"2001:db8::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    hdr.extend_from_slice(&[0u8; 16]);
    hdr.extend_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
    let mut s = TcpStream::connect(gw.addr("http")).await.unwrap();
    s.write_all(&hdr).await.unwrap();
    let mut c = Sender::h1(s).await;
    let echo = c.get("/").await.json();
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for").as_deref(),
        Some("2001:db8::9")
    );
    // No header on a PROXY listener: refused before any HTTP is served.
    let (out, closed) = raw_exchange(
        gw.addr("http"),
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(closed && out.is_empty(), "got {out:?}");
    assert_eq!(up.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_is_tunnelled_both_ways() {
    // An upstream that accepts an upgrade and then echoes bytes upper-cased.
    let up = upstream(|mut req: Request<hyper::body::Incoming>| async move {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else { return };
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                let up: Vec<u8> = buf[..n].to_ascii_uppercase();
                if io.write_all(&up).await.is_err() {
                    break;
                }
            }
        });
        Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "shout")
            .body(full(""))
            .unwrap()
    })
    .await;
    // Only configured upgrade protocols are tunnelled.
    let extra = "\n[requests]\nupgrades = [\"websocket\", \"shout\"]\n";
    let gw = TestGateway::start(&base_config(&[up.url()], extra)).await;
    let mut s = gw.tls().connect(gw.addr("https"), "localhost", false).await;
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: shout\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: shout"), "{head}");
    for msg in [&b"hello"[..], b"again"] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg.to_ascii_uppercase());
    }
    // A reload leaves the open tunnel alone.
    let r = admin(&gw, "POST", "/api/v1/reload", Some(TOKEN)).await;
    assert_eq!(r.status, 200);
    s.write_all(b"after reload").await.unwrap();
    let mut got = vec![0u8; 12];
    s.read_exact(&mut got).await.unwrap();
    assert_eq!(got, b"AFTER RELOAD");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_bodies_stream_both_ways_without_buffering() {
    const SIZE: usize = 1024 * 1024 * 1024;
    // Upstream: counts the uploaded bytes, then streams SIZE bytes back.
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let mut body = req.into_body();
        let mut n = 0usize;
        while let Some(f) = body.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                n += d.len();
            }
        }
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        let stream = futures_util::stream::iter(
            (0..SIZE >> 20).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
        );
        Response::builder()
            .header("x-uploaded", n.to_string())
            .body(BodyExt::boxed(StreamBody::new(stream)))
            .unwrap()
    })
    .await;
    let extra = "";
    let cfg = base_config(&[up.url()], extra)
        .replace(
            "path_prefix = \"/\"",
            "path_prefix = \"/\"\nmax_body_bytes = 1073741824",
        )
        .replace("response_timeout = \"2s\"", "response_timeout = \"60s\"");
    let gw = TestGateway::start(&cfg).await;
    let rss_before = rss_kib("self");
    let mut c = gw.tls().h1(gw.addr("https")).await;
    let chunk = Bytes::from(vec![b'y'; 1 << 20]);
    let stream = futures_util::stream::iter(
        (0..SIZE >> 20).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
    );
    let req = Request::post("/upload")
        .header("host", "localhost")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let resp = c.send(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-uploaded"], SIZE.to_string().as_str());
    let mut body = resp.into_body();
    let mut got = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            got += d.len();
        }
    }
    assert_eq!(got, SIZE);
    let grew = rss_kib("self").saturating_sub(rss_before);
    // 2 GiB moved in total. Buffering either body would grow the process by 1 GiB or
    // more; the bound leaves room for tests running beside this one in the same process.
    assert!(grew < 160 * 1024, "RSS grew by {grew} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let tls = gw.tls();
    let kinds = {
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let mut s = tls.connect(gw.addr("https"), "localhost", false).await;
            kinds.push(s.get_ref().1.handshake_kind());
            // A request and its answer: the tickets come after the handshake.
            s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.ok();
            assert!(
                out.starts_with(b"HTTP/1.1 200"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        kinds
    };
    assert_eq!(
        kinds,
        [
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_for_the_name() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // A second certificate for other.test, signed by its own CA.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["other.test".into()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path().join("other.crt"), leaf.pem()).unwrap();
    std::fs::write(dir.path().join("other.key"), key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("other-ca.crt"), ca.pem()).unwrap();
    let extra = format!(
        "\n[[tls.certificates]]\ncert = \"{0}/other.crt\"\nkey = \"{0}/other.key\"\nserver_names = [\"other.test\"]\n",
        dir.path().display()
    );
    // tls.certificates must stay one array: insert the second entry after the first.
    let cfg = base_config(&[up.url()], "").replace(
        "key = \"certs/localhost.key\"\n",
        &format!("key = \"certs/localhost.key\"\n{extra}"),
    );
    let gw = TestGateway::start(&cfg).await;
    // localhost gets the dev certificate (verified against the dev CA).
    let mut c = gw.tls().h1(gw.addr("https")).await;
    assert_eq!(c.get("/").await.status, 200);
    // other.test gets its own certificate (verified against its CA).
    let other = TlsClient::new(&dir.path().join("other-ca.crt"));
    let s = other.connect(gw.addr("https"), "other.test", false).await;
    let mut c = Sender::h1(s).await;
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_config_is_valid_and_serves_the_demo_upstream() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.toml");
    gateway::check_config(&shipped).expect("shipped gateway.toml is valid");
    let gw = TestGateway::start(&shipped_config_on_free_ports()).await;
    assert!(gw.ca().exists(), "development CA generated");
    let token = std::fs::read_to_string(gw.dir.path().join("data/admin.token")).unwrap();
    assert_eq!(token.trim().len(), 64, "random admin token generated");
    let mut c = gw.tls().h2(gw.addr("https")).await;
    let r = c.get("/hello?name=world").await;
    assert_eq!(r.status, 200);
    let echo = r.json();
    assert_eq!(echo["upstream"], "builtin:echo");
    assert_eq!(echo["path"], "/hello");
    assert_eq!(echo["query"], "name=world");
    assert_eq!(echo["method"], "GET");
    // The WAF is on with the default rules.
    let r = c.get("/search?q=1%27%20OR%20%271%27=%271").await;
    assert_eq!(r.status, 403);
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 200);
    let r = admin(&gw, "GET", "/api/v1/status", Some(token.trim())).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_on_a_plain_listener_when_enabled() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "name = \"http\"\nbind = \"127.0.0.1:0\"",
        "name = \"http\"\nbind = \"127.0.0.1:0\"\nh2c = true",
    );
    let gw = TestGateway::start(&cfg).await;
    let tcp = TcpStream::connect(gw.addr("http")).await.unwrap();
    let mut c = Sender::h2(tcp).await;
    let req = Request::get(format!("http://localhost:{}/h2c", gw.addr("http").port()))
        .body(full(""))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["uri"], "/h2c");
    // HTTP/1.1 still works on the same listener.
    let mut c = Sender::plain(gw.addr("http")).await;
    assert_eq!(c.get("/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_proxy_protocol_the_per_address_cap_counts_the_client_not_the_balancer() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "name = \"http\"\nbind = \"127.0.0.1:0\"",
        "name = \"http\"\nbind = \"127.0.0.1:0\"\nproxy_protocol = true\nmax_connections_per_ip = 1",
    );
    let gw = TestGateway::start(&cfg).await;
    let via = |client: &'static str| {
        let addr = gw.addr("http");
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("PROXY TCP4 {client} 127.0.0.1 40000 8080\r\n").as_bytes())
                .await
                .unwrap();
            s
        }
    };
    // Two clients through the same balancer address: one connection each is fine.
    let mut a = Sender::h1(via("203.0.113.7").await).await;
    let mut b = Sender::h1(via("203.0.113.8").await).await;
    assert_eq!(a.get("/").await.status, 200);
    assert_eq!(b.get("/").await.status, 200);
    // A second connection of the same client is closed.
    let mut again = via("203.0.113.7").await;
    again
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .ok();
    let (out, closed) = read_until_close(&mut again, Duration::from_secs(3)).await;
    assert!(
        closed && out.is_empty(),
        "second connection of one client served: {out}"
    );
    assert_eq!(a.get("/").await.status, 200);
}
