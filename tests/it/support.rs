//! Shared test support: a real upstream (hyper on 127.0.0.1:0), the gateway started from a
//! config written to a temp dir, and real clients (rustls + hyper HTTP/1.1 and HTTP/2, and
//! raw TCP for what well-behaved clients cannot send).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gateway::Gateway;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

pub fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A running upstream and how many requests it has seen.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Starts an HTTP/1.1 upstream (with upgrades) that answers with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = Response<BoxBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            let hits = h.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

/// A small app with its own login, as a legacy app behind the gateway would have:
/// `POST …/login` with form fields `user` and `password`: password `secret` answers 302 to
/// `/home` with a new `sid` cookie, anything else 401. `POST …/logout` clears `sid`.
/// Any other request: 200 with JSON of the `cookie` and `x-user` headers it received.
pub async fn login_app() -> Upstream {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    upstream(|req: Request<Incoming>| async move {
        let post = req.method() == hyper::Method::POST;
        let path = req.uri().path().to_string();
        let seen = |name: &str| {
            req.headers()
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let page = serde_json::json!({
            "path": path,
            "cookie": seen("cookie"),
            "x-user": seen("x-user"),
        });
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let answer = |status: u16| Response::builder().status(status);
        if post && path.ends_with("/login") {
            let password = form_urlencoded::parse(&body)
                .find(|(k, _)| k == "password")
                .map(|(_, v)| v.into_owned());
            if password.as_deref() != Some("secret") {
                return answer(401).body(full("wrong password")).unwrap();
            }
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            return answer(302)
                .header("location", "/home")
                .header(
                    "set-cookie",
                    format!("sid=s{n}-{:08x}; Path=/; HttpOnly", std::process::id()),
                )
                .body(full(""))
                .unwrap();
        }
        if post && path.ends_with("/logout") {
            return answer(200)
                .header("set-cookie", "sid=; Path=/; Max-Age=0")
                .body(full("bye"))
                .unwrap();
        }
        answer(200).body(full(page.to_string())).unwrap()
    })
    .await
}

/// An upstream that answers every request, after `delay`, with an empty 200 carrying
/// `x-server: name` (to see which server a request reached).
pub async fn named_upstream(name: &'static str, delay: Duration) -> Upstream {
    upstream(move |_req| async move {
        tokio::time::sleep(delay).await;
        Response::builder()
            .header("x-server", name)
            .body(full(""))
            .unwrap()
    })
    .await
}

/// An upstream that answers with a JSON echo of the request head and the body length.
pub async fn echo_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let (parts, body) = req.into_parts();
        let len = body
            .collect()
            .await
            .map(|c| c.to_bytes().len())
            .unwrap_or(usize::MAX);
        let headers: Vec<(String, String)> = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into(),
                )
            })
            .collect();
        let doc = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body_len": len,
        });
        Response::new(full(doc.to_string()))
    })
    .await
}

/// A gateway running from a config written to a temp dir.
pub struct TestGateway {
    pub gw: Option<Gateway>,
    pub dir: tempfile::TempDir,
}

pub const TOKEN: &str = "test-admin-token-0123456789";

/// A config with one TLS listener ("https"), one plain ("http"), admin on port 0, and one
/// pool "app" with `servers`. `extra` is appended (more pools, routes, sections).
pub fn base_config(servers: &[String], extra: &str) -> String {
    let servers = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[server]
shutdown_grace = "5s"
access_log = false

[admin]
bind = "127.0.0.1:0"
token = "{TOKEN}"

[tls]
dev_self_signed = true

[[tls.certificates]]
cert = "certs/localhost.crt"
key = "certs/localhost.key"

[[listeners]]
name = "https"
bind = "127.0.0.1:0"
tls = true

[[listeners]]
name = "http"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
servers = [{servers}]
connect_timeout = "1s"
response_timeout = "2s"

[[routes]]
name = "app"
path_prefix = "/"
upstream = "app"
{extra}
"#
    )
}

impl TestGateway {
    pub async fn start(config: &str) -> TestGateway {
        Self::try_start(config).await.expect("gateway starts")
    }

    pub async fn try_start(config: &str) -> Result<TestGateway, gateway::StartError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gateway.toml"), config).unwrap();
        let gw = Gateway::start(&dir.path().join("gateway.toml")).await?;
        Ok(TestGateway { gw: Some(gw), dir })
    }

    pub fn gw(&self) -> &Gateway {
        self.gw.as_ref().unwrap()
    }
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.gw().listener_addr(listener).unwrap()
    }
    pub fn admin(&self) -> SocketAddr {
        self.gw().admin_addr().unwrap()
    }
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("gateway.toml")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/dev-ca.crt")
    }
    /// A TLS client trusting this gateway's development CA.
    pub fn tls(&self) -> TlsClient {
        TlsClient::new(&self.ca())
    }
    pub async fn shutdown(mut self) -> bool {
        self.gw.take().unwrap().shutdown().await
    }
    /// Shuts down gracefully and hands back the directory (config, data), still on disk.
    pub async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        assert!(self.gw.take().unwrap().shutdown().await);
        self.dir
    }
    /// Starts a gateway again on the files of a stopped one.
    pub async fn restart(dir: tempfile::TempDir) -> TestGateway {
        let gw = Gateway::start(&dir.path().join("gateway.toml"))
            .await
            .unwrap();
        TestGateway { gw: Some(gw), dir }
    }
}

pub struct TlsClient {
    config_h1: Arc<rustls::ClientConfig>,
    config_h2: Arc<rustls::ClientConfig>,
}

impl TlsClient {
    pub fn new(ca: &Path) -> TlsClient {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let make = |alpn: &[u8]| {
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let mut c = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(c)
        };
        TlsClient {
            config_h1: make(b"http/1.1"),
            config_h2: make(b"h2"),
        }
    }

    pub async fn connect(
        &self,
        addr: SocketAddr,
        name: &str,
        h2: bool,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let cfg = if h2 { &self.config_h2 } else { &self.config_h1 };
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(cfg.clone())
            .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// An HTTP/2 (`h2`) or HTTP/1.1 sender over a fresh TLS connection to `localhost`.
    pub async fn sender(&self, addr: SocketAddr, h2: bool) -> Sender {
        if h2 {
            self.h2(addr).await
        } else {
            self.h1(addr).await
        }
    }

    /// An HTTP/1.1 sender over a fresh TLS connection to `localhost`.
    pub async fn h1(&self, addr: SocketAddr) -> Sender {
        let io = self.connect(addr, "localhost", false).await;
        assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        Sender::h1(io).await
    }

    /// An HTTP/2 sender over a fresh TLS connection to `localhost`.
    pub async fn h2(&self, addr: SocketAddr) -> Sender {
        let io = self.connect(addr, "localhost", true).await;
        assert_eq!(io.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        Sender::h2(io).await
    }
}

pub enum Sender {
    H1(hyper::client::conn::http1::SendRequest<BoxBody>),
    H2(hyper::client::conn::http2::SendRequest<BoxBody>),
}

impl Sender {
    pub async fn h1<T>(io: T) -> Sender
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        Sender::H1(send)
    }

    pub async fn h2<T>(io: T) -> Sender
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        Sender::H2(send)
    }

    /// Plain HTTP/1.1 to a listener.
    pub async fn plain(addr: SocketAddr) -> Sender {
        Sender::h1(TcpStream::connect(addr).await.unwrap()).await
    }

    pub async fn send(&mut self, req: Request<BoxBody>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await
            }
        }
    }

    /// GET `path` with Host `localhost`; returns status, headers and body.
    pub async fn get(&mut self, path: &str) -> Reply {
        let req = match self {
            Sender::H1(_) => Request::get(path).header("host", "localhost"),
            Sender::H2(_) => Request::get(format!("https://localhost{path}")),
        }
        .body(full(""))
        .unwrap();
        Reply::from(self.send(req).await.unwrap()).await
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub async fn from(resp: Response<Incoming>) -> Reply {
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The value of header `name` as the echo upstream received it (first one), if any.
pub fn echoed_header(echo: &serde_json::Value, name: &str) -> Option<String> {
    echoed_headers(echo, name).into_iter().next()
}

pub fn echoed_headers(echo: &serde_json::Value, name: &str) -> Vec<String> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0].as_str().unwrap().eq_ignore_ascii_case(name))
        .map(|p| p[1].as_str().unwrap().to_string())
        .collect()
}

/// Writes raw bytes and reads until the peer closes or `wait` passes.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_until_close(&mut s, wait).await
}

/// Reads until EOF (returns true) or until `wait` passes (false).
pub async fn read_until_close(s: &mut TcpStream, wait: Duration) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into(), true),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&out).into(), false),
        }
    }
}

/// `name=value` of the response's (first) `Set-Cookie`, to send back in a `Cookie` header.
pub fn cookie_pair(r: &Reply) -> String {
    r.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

/// The base config with 127.0.0.1 as a trusted proxy, plus `extra`.
pub fn trusted_config(up: &Upstream, extra: &str) -> String {
    base_config(&[up.url()], extra).replace(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1/32\"]\n",
    )
}

/// Waits until every event emitted so far is committed.
pub async fn flush(gw: &TestGateway) {
    gw.gw().shared().events.flush().await.unwrap();
}

/// `n` admin requests with a wrong token, each an `admin_auth_failed` event, committed.
pub async fn fail_logins(gw: &TestGateway, n: usize) {
    for _ in 0..n {
        let r = admin(gw, "GET", "/api/v1/status", Some("wrong-token-wrong-token")).await;
        assert_eq!(r.status, 401);
    }
    flush(gw).await;
}

/// The audit events of type `kind` (newest first), after flushing the event queue.
pub async fn events_of(gw: &TestGateway, kind: &str) -> Vec<serde_json::Value> {
    gw.gw().shared().events.flush().await.unwrap();
    let r = api(gw, "GET", &format!("/api/v1/events?type={kind}"), None).await;
    assert_eq!(r.status, 200);
    r.json()["items"].as_array().unwrap().clone()
}

/// Named admin tokens for `base_config`'s `extra`: `ana` and `bo` (operators) and `vi`
/// (viewer), each in a file beside the config, created at start (see [`token_of`]).
pub const OPERATOR_TOKENS: &str = r#"
[[admin.tokens]]
name = "ana"
role = "operator"
token_file = "ana.token"

[[admin.tokens]]
name = "bo"
role = "operator"
token_file = "bo.token"

[[admin.tokens]]
name = "vi"
role = "viewer"
token_file = "vi.token"
"#;

/// The token the gateway created in `<name>.token` beside the config (`OPERATOR_TOKENS`'
/// `ana`, or `data/admin` for the shipped config's admin token).
pub fn token_of(gw: &TestGateway, name: &str) -> String {
    std::fs::read_to_string(gw.dir.path().join(format!("{name}.token")))
        .unwrap()
        .trim()
        .to_string()
}

/// An admin API call with the test token and an optional JSON body.
pub async fn api(
    gw: &TestGateway,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    api_as(gw, TOKEN, method, path, body).await
}

/// An admin API call with `token` and an optional JSON body.
pub async fn api_as(
    gw: &TestGateway,
    token: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Reply {
    let mut s = Sender::plain(gw.admin()).await;
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(full(body.map(|b| b.to_string()).unwrap_or_default()))
        .unwrap();
    Reply::from(s.send(req).await.unwrap()).await
}

/// An admin API call with the test token.
pub async fn admin(gw: &TestGateway, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut s = Sender::plain(gw.admin()).await;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    Reply::from(s.send(req.body(full("")).unwrap()).await.unwrap()).await
}

/// The `gateway` binary running as a child process, from a config in a temp dir with one
/// plain listener ("http") on a free port and no admin port.
pub struct BinaryGateway {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub path: PathBuf,
    pub port: u16,
    _dir: tempfile::TempDir,
}

/// The errors `gateway check` finds in config `text` (written as `bad.toml`); panics if
/// the config is valid.
pub fn config_errors(text: &str) -> Vec<gateway::config::ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    gateway::check_config(&path)
        .expect_err("the config should be refused")
        .0
}

/// `base_config` reduced to what the binary tests need: the plain listener on `port`.
pub fn binary_config(servers: &[String], port: u16, access_log: bool) -> String {
    base_config(servers, "")
        .replace("access_log = false", &format!("access_log = {access_log}"))
        .replace(
            "[[listeners]]\nname = \"https\"\nbind = \"127.0.0.1:0\"\ntls = true\n",
            "",
        )
        .replace(
            "name = \"http\"\nbind = \"127.0.0.1:0\"",
            &format!("name = \"http\"\nbind = \"127.0.0.1:{port}\""),
        )
        .replace("[admin]\n", "[admin]\nenabled = false\n")
}

/// Resident memory of a process (`"self"` or a pid), in KiB.
pub fn rss_kib(process: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl BinaryGateway {
    /// Starts the binary with `config(port)` and waits until it accepts connections.
    /// Its stdout and stderr are piped.
    pub async fn start(config: impl Fn(u16) -> String) -> BinaryGateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        let port = free_port();
        std::fs::write(&path, config(port)).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..200 {
            if TcpStream::connect(addr).await.is_ok() {
                return BinaryGateway {
                    child,
                    addr,
                    path,
                    port,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("the gateway binary did not start");
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Lines of a piped stream, delivered as they are written.
    pub fn lines(
        stream: impl std::io::Read + Send + 'static,
    ) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        use std::io::BufRead;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        rx
    }
}

impl Drop for BinaryGateway {
    /// A failing test must not leave a gateway running (a finished child is reaped).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `bytes` one at a time, `every` apart, until the peer closes the connection or
/// `give_up` passes; then waits up to 3 s for the close. True when the peer closed.
pub async fn trickle<S>(s: &mut S, bytes: &[u8], every: Duration, give_up: Duration) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    for b in bytes {
        if s.write_all(&[*b]).await.is_err() || s.flush().await.is_err() {
            return true;
        }
        tokio::time::sleep(every).await;
        if started.elapsed() > give_up {
            break;
        }
    }
    let mut buf = [0u8; 256];
    matches!(
        tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// The shipped `gateway.toml` on free ports, its rule files named by absolute path: for
/// a temp dir, so no generated file lands in the repository.
pub fn shipped_config_on_free_ports() -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(Path::new(root).join("gateway.toml"))
        .unwrap()
        .replace("127.0.0.1:8443", "127.0.0.1:0")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "rules = [\"rules/*.toml\"]",
            &format!("rules = [\"{root}/rules/*.toml\"]"),
        )
}

/// One request on `s` as client `ip` (through `x-forwarded-for`, for `trusted_config`),
/// with `cookie` and a form body when given.
pub async fn request_as(
    s: &mut Sender,
    method: &str,
    path: &str,
    ip: &str,
    cookie: Option<&str>,
    form: &str,
) -> Reply {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("x-forwarded-for", ip)
        .header("user-agent", "test-client/1.0");
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if !form.is_empty() {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    Reply::from(
        s.send(req.body(full(form.to_string())).unwrap())
            .await
            .unwrap(),
    )
    .await
}
