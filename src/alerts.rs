//! Alerts: audit events worth waking someone for, pushed to webhooks.
//!
//! Each `[[alerts.webhooks]]` picks events by risk (`min_risk`) and by type (`types`) and
//! owns a bounded queue and one delivery task. The event writer offers every event after
//! its batch is committed (and critical ones it could not store); offering never blocks:
//! a full queue drops the alert and counts it (`gateway_alerts_dropped_total{webhook}`).
//!
//! Delivery: `POST` of `{"webhook": name, "event": {…}}` (the stored event, so no secret:
//! events never hold one) with `X-Gateway-Timestamp` (Unix seconds) and
//! `X-Gateway-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, so a
//! receiver can check origin and refuse replays. One delivery at a time per webhook, in
//! order; a connection error, timeout, 408, 429 or 5xx is retried after `backoff`,
//! doubling up to five minutes, `max_retries` times; any other answer ends the attempt
//! (`sent` for 2xx, `failed` otherwise). `https://` URLs are verified against the Mozilla
//! roots (webpki-roots) plus `ca_file`. Connections go only to addresses inside
//! `[network] egress_allow` (DNS answers included).
//!
//! Webhooks are read at start; a reload that changes `[alerts]` takes effect at the next
//! restart.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::events::model::{now_micros, AuditEvent, EventType, Risk};

/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One `[[alerts.webhooks]]`, validated.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub name: String,
    pub url: Uri,
    pub secret: crate::secrets::SecretSource,
    pub min_risk: Risk,
    pub types: Vec<EventType>,
    pub queue: usize,
    pub max_retries: u32,
    pub timeout: Duration,
    pub backoff: Duration,
    pub ca_file: Option<std::path::PathBuf>,
}

/// Why alerts cannot start.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("webhook `{name}`: secret {source}")]
    Secret {
        name: String,
        source: crate::secrets::SecretError,
    },
    #[error("webhook `{name}`: ca_file {path}: {message}")]
    CaFile {
        name: String,
        path: String,
        message: String,
    },
}

struct Sink {
    min_risk: Risk,
    types: Vec<EventType>,
    tx: mpsc::Sender<Arc<AuditEvent>>,
    dropped: prometheus::IntCounter,
    depth: prometheus::IntGauge,
}

/// The running webhooks: what the event writer offers events to.
pub struct Alerts {
    sinks: Vec<Sink>,
}

struct Counters {
    sent: IntCounterVec,
    failed: IntCounterVec,
    dropped: IntCounterVec,
    retries: IntCounterVec,
    depth: IntGaugeVec,
}

impl Counters {
    fn register(registry: &Registry) -> Counters {
        let vec = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["webhook"]).expect("metric");
            let _ = registry.register(Box::new(v.clone()));
            v
        };
        let depth = IntGaugeVec::new(
            Opts::new(
                "gateway_alerts_queue_depth",
                "Alerts waiting for delivery, by webhook.",
            ),
            &["webhook"],
        )
        .expect("metric");
        let _ = registry.register(Box::new(depth.clone()));
        Counters {
            sent: vec(
                "gateway_alerts_sent_total",
                "Alerts a webhook accepted (2xx), by webhook.",
            ),
            failed: vec(
                "gateway_alerts_failed_total",
                "Alerts given up after the last attempt or refused (4xx), by webhook.",
            ),
            dropped: vec(
                "gateway_alerts_dropped_total",
                "Alerts dropped because the webhook's queue was full, by webhook.",
            ),
            retries: vec(
                "gateway_alerts_retries_total",
                "Delivery attempts repeated after an error, by webhook.",
            ),
            depth,
        }
    }
}

impl Alerts {
    /// Reads the secrets and starts one delivery task per webhook on the current runtime.
    pub fn start(
        webhooks: &[WebhookSettings],
        registry: &Registry,
        egress: &crate::network::Egress,
    ) -> Result<Option<Arc<Alerts>>, AlertError> {
        if webhooks.is_empty() {
            return Ok(None);
        }
        let counters = Counters::register(registry);
        let mut sinks = Vec::new();
        for w in webhooks {
            let secret = w
                .secret
                .read()
                .map_err(|source| AlertError::Secret {
                    name: w.name.clone(),
                    source,
                })?
                .into_bytes();
            let tls = tls_config(w)?;
            let (tx, rx) = mpsc::channel(w.queue);
            let depth = counters.depth.with_label_values(&[&w.name]);
            let delivery = Delivery {
                name: w.name.clone(),
                url: w.url.clone(),
                secret,
                tls,
                max_retries: w.max_retries,
                timeout: w.timeout,
                backoff: w.backoff,
                egress: egress.clone(),
                sent: counters.sent.with_label_values(&[&w.name]),
                failed: counters.failed.with_label_values(&[&w.name]),
                retries: counters.retries.with_label_values(&[&w.name]),
                depth: depth.clone(),
            };
            tokio::spawn(delivery.run(rx));
            sinks.push(Sink {
                min_risk: w.min_risk,
                types: w.types.clone(),
                tx,
                dropped: counters.dropped.with_label_values(&[&w.name]),
                depth,
            });
            tracing::info!(webhook = %w.name, url = %w.url, "alerts webhook ready");
        }
        Ok(Some(Arc::new(Alerts { sinks })))
    }

    /// Hands `e` to every webhook that wants it; never waits.
    pub fn offer(&self, e: &AuditEvent) {
        let mut shared: Option<Arc<AuditEvent>> = None;
        for s in &self.sinks {
            if e.risk < s.min_risk && !s.types.contains(&e.kind) {
                continue;
            }
            let ev = shared.get_or_insert_with(|| Arc::new(e.clone())).clone();
            match s.tx.try_send(ev) {
                Ok(()) => s.depth.inc(),
                Err(_) => s.dropped.inc(),
            }
        }
    }
}

fn tls_config(w: &WebhookSettings) -> Result<Option<Arc<rustls::ClientConfig>>, AlertError> {
    if w.url.scheme_str() != Some("https") {
        return Ok(None);
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &w.ca_file {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        let err = |message: String| AlertError::CaFile {
            name: w.name.clone(),
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| err(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no certificate in it".into()));
        }
        for c in certs {
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AlertError::CaFile {
            name: w.name.clone(),
            path: String::new(),
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(Arc::new(config)))
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "sha256={}",
        crate::secrets::hex(&mac.finalize().into_bytes())
    )
}

struct Delivery {
    name: String,
    url: Uri,
    secret: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
    max_retries: u32,
    timeout: Duration,
    backoff: Duration,
    egress: crate::network::Egress,
    sent: prometheus::IntCounter,
    failed: prometheus::IntCounter,
    retries: prometheus::IntCounter,
    depth: prometheus::IntGauge,
}

/// How one attempt ended.
enum Outcome {
    Accepted,
    Refused(u16),
    Retry(String),
}

impl Delivery {
    async fn run(self, mut rx: mpsc::Receiver<Arc<AuditEvent>>) {
        while let Some(e) = rx.recv().await {
            self.depth.dec();
            let body = match serde_json::to_vec(
                &serde_json::json!({"webhook": self.name, "event": &*e}),
            ) {
                Ok(b) => Bytes::from(b),
                Err(_) => continue,
            };
            let mut wait = self.backoff;
            let mut attempt = 0;
            loop {
                match self.attempt(&e, body.clone()).await {
                    Outcome::Accepted => {
                        self.sent.inc();
                        break;
                    }
                    Outcome::Refused(status) => {
                        tracing::warn!(webhook = %self.name, status, event = %e.id, "alert refused by the webhook");
                        self.failed.inc();
                        break;
                    }
                    Outcome::Retry(why) if attempt < self.max_retries => {
                        tracing::debug!(webhook = %self.name, attempt, %why, "alert delivery failed; retrying");
                        self.retries.inc();
                        attempt += 1;
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(MAX_BACKOFF);
                    }
                    Outcome::Retry(why) => {
                        tracing::warn!(webhook = %self.name, %why, event = %e.id, "alert given up");
                        self.failed.inc();
                        break;
                    }
                }
            }
        }
    }

    async fn attempt(&self, e: &AuditEvent, body: Bytes) -> Outcome {
        match tokio::time::timeout(self.timeout, self.send(e, body)).await {
            Err(_) => Outcome::Retry("timed out".into()),
            Ok(Err(why)) => Outcome::Retry(why),
            Ok(Ok(status)) if (200..300).contains(&status) => Outcome::Accepted,
            Ok(Ok(status)) if status == 408 || status == 429 || status >= 500 => {
                Outcome::Retry(format!("status {status}"))
            }
            Ok(Ok(status)) => Outcome::Refused(status),
        }
    }

    /// One POST on a fresh connection; the response status.
    async fn send(&self, e: &AuditEvent, body: Bytes) -> Result<u16, String> {
        let host = self.url.host().ok_or("no host")?;
        let https = self.tls.is_some();
        let port = self.url.port_u16().unwrap_or(if https { 443 } else { 80 });
        // The DNS answers (or the literal) must be inside [network] egress_allow.
        let bare = host.trim_matches(['[', ']']);
        let answers = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("resolve {bare}: {e}"))?;
        let allowed = self
            .egress
            .filter(bare, answers)
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect(&allowed[..])
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let timestamp = now_micros() / 1_000_000;
        let path = self
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let req = Request::post(path)
            .header(
                http::header::HOST,
                self.url.authority().map_or(host, |a| a.as_str()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("gateway/", env!("CARGO_PKG_VERSION")),
            )
            .header("x-gateway-event", e.kind.as_str())
            .header("x-gateway-delivery", e.id.to_string())
            .header("x-gateway-timestamp", timestamp.to_string())
            .header(
                "x-gateway-signature",
                signature(&self.secret, timestamp, &body),
            )
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        match &self.tls {
            Some(cfg) => {
                let name = rustls::pki_types::ServerName::try_from(
                    host.trim_matches(['[', ']']).to_string(),
                )
                .map_err(|e| format!("server name: {e}"))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS: {e}"))?;
                post(TokioIo::new(tls), req).await
            }
            None => post(TokioIo::new(tcp), req).await,
        }
    }
}

async fn post<T>(io: T, req: Request<Full<Bytes>>) -> Result<u16, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    // Read (and discard) a bounded answer so the receiver sees a clean exchange.
    let _ = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect()).await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // What a receiver computes: HMAC-SHA256 over "<timestamp>.<body>".
        let s = signature(b"secret", 1_700_000_000, b"{}");
        assert!(s.starts_with("sha256=") && s.len() == 7 + 64);
        let mut mac = Hmac::<Sha256>::new_from_slice(b"secret").unwrap();
        mac.update(b"1700000000.{}");
        let expect: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(s, format!("sha256={expect}"));
        assert_ne!(s, signature(b"secret", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"other", 1_700_000_000, b"{}"));
    }
}
