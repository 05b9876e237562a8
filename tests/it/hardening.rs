//! The hardening list: hop-by-hop headers never cross, ambiguous framing and Host are
//! refused, size limits answer 431/414/413, errors carry the request id and no internals.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let req = b"POST / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive, X-Private\r\nX-Private: secret\r\n\
Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nTrailer: X-T\r\nUpgrade: h2c\r\n\
Content-Length: 5\r\nX-Kept: yes\r\n\r\nhello";
    let (out, _) = raw_exchange(gw.addr("http"), req, Duration::from_millis(1500)).await;
    let body = &out[out.find("\r\n\r\n").expect("a response") + 4..];
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    for h in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(
            echoed_header(&echo, h).is_none(),
            "{h} was forwarded: {echo}"
        );
    }
    assert_eq!(echoed_header(&echo, "x-kept").as_deref(), Some("yes"));
    // The body arrives, framed by hyper from the body it streams.
    assert_eq!(echo["body_len"], 5);
    assert_eq!(echoed_header(&echo, "content-length").as_deref(), Some("5"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_response_headers_are_not_returned() {
    let up = upstream(|_req| async {
        Response::builder()
            .header("connection", "X-Upstream-Private")
            .header("x-upstream-private", "secret")
            .header("keep-alive", "timeout=99")
            .header("proxy-connection", "keep-alive")
            .header("trailer", "x-t")
            .header("upgrade", "foo")
            .header("x-kept", "yes")
            .body(full("body"))
            .unwrap()
    })
    .await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    for h2 in [false, true] {
        let mut c = gw.tls().sender(gw.addr("https"), h2).await;
        let r = c.get("/").await;
        assert_eq!(r.status, 200);
        for h in [
            "x-upstream-private",
            "keep-alive",
            "proxy-connection",
            "trailer",
            "upgrade",
        ] {
            assert!(!r.headers.contains_key(h), "{h} returned (h2={h2})");
        }
        assert_eq!(r.headers["x-kept"], "yes");
        assert_eq!(r.text(), "body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_hosts_are_refused_before_the_upstream() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    let wait = Duration::from_millis(1500);
    let (out, _) = raw_exchange(
        gw.addr("http"),
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        wait,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(out.contains("x-request-id"), "{out}");
    let (out, _) = raw_exchange(gw.addr("http"), b"GET / HTTP/1.1\r\n\r\n", wait).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    // HTTP/1.0 without Host is legal.
    let (out, _) = raw_exchange(gw.addr("http"), b"GET / HTTP/1.0\r\n\r\n", wait).await;
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_not_smuggled() {
    let up = echo_upstream().await;
    let gw = TestGateway::start(&base_config(&[up.url()], "")).await;
    // The classic CL.TE smuggling attempt: whatever follows must never be read as a second
    // request on this connection.
    let req = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let (out, closed) = raw_exchange(gw.addr("http"), req, Duration::from_secs(3)).await;
    assert!(closed, "connection must be closed after answering: {out}");
    assert_eq!(
        out.matches("HTTP/1.1").count(),
        1,
        "exactly one response: {out}"
    );
    assert!(!out.contains("/smuggled"), "{out}");
    // Whatever the single response was, the upstream never saw a Content-Length from the client.
    if up.hits() == 1 {
        let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
        let echo: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
        assert_ne!(echoed_header(&echo, "content-length").as_deref(), Some("4"));
    }
    assert!(up.hits() <= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limits_answer_431_414_and_413_with_request_id() {
    let up = echo_upstream().await;
    let cfg = base_config(&[up.url()], "").replace(
        "path_prefix = \"/\"",
        "path_prefix = \"/\"\nmax_body_bytes = 1000",
    )
        + "\n[limits]\nmax_header_count = 20\nmax_header_bytes = 2000\nmax_uri_bytes = 500\n";
    let gw = TestGateway::start(&cfg).await;
    let mut c = gw.tls().h1(gw.addr("https")).await;

    let mut req = Request::get("/").header("host", "localhost");
    for i in 0..25 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let r = Reply::from(c.send(req.body(full("")).unwrap()).await.unwrap()).await;
    assert_eq!(r.status, 431);
    assert_eq!(
        r.json()["request_id"],
        r.headers["x-request-id"].to_str().unwrap()
    );

    let req = Request::get("/")
        .header("host", "localhost")
        .header("x-big", "a".repeat(2500));
    let r = Reply::from(c.send(req.body(full("")).unwrap()).await.unwrap()).await;
    assert_eq!(r.status, 431);

    let r = c.get(&format!("/{}", "a".repeat(600))).await;
    assert_eq!(r.status, 414);

    // Declared length over the limit: refused before anything is forwarded.
    let req = Request::post("/")
        .header("host", "localhost")
        .body(full(vec![b'x'; 1001]))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 413);
    assert_eq!(up.hits(), 0);

    // Undeclared (chunked) length over the limit: cut off as it streams.
    let mut c = gw.tls().h1(gw.addr("https")).await;
    let chunk = Bytes::from(vec![b'x'; 400]);
    let stream = futures_util::stream::iter(
        (0..5).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
    );
    let req = Request::post("/")
        .header("host", "localhost")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // At the limit passes.
    let mut c = gw.tls().h1(gw.addr("https")).await;
    let req = Request::post("/")
        .header("host", "localhost")
        .body(full(vec![b'x'; 1000]))
        .unwrap();
    let r = Reply::from(c.send(req).await.unwrap()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_request_id_and_no_internals() {
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let gw = TestGateway::start(&base_config(&[format!("http://{dead_addr}")], "")).await;
    let mut c = Sender::plain(gw.addr("http")).await;
    let r = c.get("/").await;
    assert_eq!(r.status, 502);
    let j = r.json();
    assert_eq!(j["request_id"], r.headers["x-request-id"].to_str().unwrap());
    assert!(
        !r.text().contains(&dead_addr.port().to_string()),
        "leaks the upstream: {}",
        r.text()
    );
    assert!(
        !r.text().to_lowercase().contains("refused"),
        "leaks the error: {}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hsts_is_sent_over_tls_only_and_an_upstreams_own_value_is_kept() {
    let up = upstream(|req: Request<hyper::body::Incoming>| async move {
        let mut r = Response::builder();
        if req.uri().path() == "/own" {
            r = r.header("strict-transport-security", "max-age=5");
        }
        r.body(full("ok")).unwrap()
    })
    .await;
    let cfg = base_config(&[up.url()], "").replace(
        "dev_self_signed = true",
        "dev_self_signed = true\nhsts = \"max-age=31536000; includeSubDomains\"",
    );
    let gw = TestGateway::start(&cfg).await;
    let mut tls = gw.tls().h1(gw.addr("https")).await;
    let r = tls.get("/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert_eq!(
        tls.get("/own").await.headers["strict-transport-security"],
        "max-age=5"
    );
    // The gateway's own answers carry it too (a refused request: bad Host).
    let bad = Request::get("/x")
        .header("host", "bad host")
        .body(full(""))
        .unwrap();
    let r = Reply::from(tls.send(bad).await.unwrap()).await;
    assert_eq!(r.status, 400);
    assert!(r.headers.contains_key("strict-transport-security"));
    // Never on plain HTTP (it would be ignored, and says nothing true there).
    let mut plain = Sender::plain(gw.addr("http")).await;
    assert!(!plain
        .get("/x")
        .await
        .headers
        .contains_key("strict-transport-security"));
    gw.shutdown().await;

    let errs = config_errors(&base_config(&[up.url()], "").replace(
        "dev_self_signed = true",
        "dev_self_signed = true\nhsts = \"includeSubDomains\"",
    ));
    assert_eq!(errs[0].key, "tls.hsts", "{errs:?}");
}
