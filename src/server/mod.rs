//! Client-facing listeners: accept, connection limits, PROXY protocol, TLS handshake,
//! idle timeouts, and serving HTTP/1.1 and HTTP/2 with hyper.

mod idle_io;
mod listener;
mod per_address;
pub mod proxy_protocol;

pub use idle_io::{IdleTimeoutIo, Protocol};
pub use listener::{serve_listener, ConnBuilders, ListenerRuntime};
pub use per_address::{AddressSlot, PerAddress};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

/// What the request path knows about the connection a request came on.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client as seen at the TCP level (or as the PROXY protocol header said).
    pub peer: SocketAddr,
    pub listener: Arc<str>,
    pub tls: bool,
    /// Requests whose responses have not finished; a connection with any is never idle.
    pub in_flight: AtomicUsize,
    /// Requests handed to the pipeline so far (marks the end of each request head).
    pub requests: AtomicU64,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, listener: Arc<str>, tls: bool) -> ConnInfo {
        ConnInfo {
            peer,
            listener,
            tls,
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
        }
    }
    /// `https` or `http`, for `X-Forwarded-Proto`.
    pub fn proto(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
}
