//! `gateway health`: asks a running gateway's `/readyz` whether it is ready, for container
//! `HEALTHCHECK`s and service managers. It reads only the config's `[admin]` section (no
//! rule compilation), connects to the metrics listener when one is configured, else to
//! the admin port, over plain HTTP on the local host, and gives up after a deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// Why the gateway is not (known to be) ready.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{0}")]
    Config(String),
    #[error("no admin port and no metrics listener configured: nothing to ask")]
    NoEndpoint,
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{addr}: not ready ({status})")]
    NotReady { addr: SocketAddr, status: String },
}

/// The address `gateway health` asks: the metrics listener if any, else the admin port;
/// an unspecified address (`0.0.0.0`, `::`) is asked on loopback.
pub fn endpoint(config: &Path) -> Result<SocketAddr, HealthError> {
    let loaded = crate::config::load(config).map_err(|e| HealthError::Config(e.to_string()))?;
    let a = &loaded.raw.admin;
    let text = match (&a.metrics_bind, a.enabled) {
        (Some(m), _) => m.clone(),
        (None, true) => a.bind.clone(),
        (None, false) => return Err(HealthError::NoEndpoint),
    };
    let mut addr: SocketAddr = text
        .parse()
        .map_err(|_| HealthError::Config(format!("`{text}` is not an address:port")))?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    Ok(addr)
}

/// GET `/readyz` at `addr`: `Ok` on 200, otherwise why not.
pub fn check(addr: SocketAddr, timeout: Duration) -> Result<(), HealthError> {
    let io = |source| HealthError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = s.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.lines().next().unwrap_or("").trim().to_string();
    if status.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(HealthError::NotReady {
            addr,
            status: if status.is_empty() {
                "no answer".into()
            } else {
                status
            },
        })
    }
}
