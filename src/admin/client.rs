//! A minimal client for the admin API, used by the command line to ask a running gateway
//! to do what needs its open store (archive, backup) instead of opening the file itself.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

use crate::runtime::AdminSettings;

/// Sends one request to the admin API of the gateway `admin` describes; returns the status
/// and body.
pub async fn call(
    admin: &AdminSettings,
    method: http::Method,
    path: &str,
    body: Option<String>,
) -> Result<(u16, String), String> {
    if !admin.enabled {
        return Err("the admin port is disabled in the config".into());
    }
    // The command line acts as the operator: it needs a token with the admin role.
    let token = super::auth::read_secrets(admin)
        .map_err(|e| e.to_string())?
        .into_iter()
        .find(|s| s.role == super::auth::Role::Admin)
        .ok_or("no admin token with the admin role is configured")?
        .token;
    let addr = admin.bind;
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to the admin port {addr} timed out"))?
        .map_err(|e| format!("cannot reach the admin port {addr}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin port {addr}: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin port {addr}: {e}"))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("admin port {addr}: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}
