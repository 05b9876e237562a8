//! The accept loop of one listener and the life of each connection on it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::{proxy_protocol, ConnInfo, IdleTimeoutIo, PerAddress, Protocol};
use crate::app::Shared;
use crate::config::LimitsSection;

/// hyper connection builders for one listener, built once per config.
pub struct ConnBuilders {
    h1: auto::Builder<TokioExecutor>,
    h2: auto::Builder<TokioExecutor>,
    auto: auto::Builder<TokioExecutor>,
}

impl ConnBuilders {
    pub fn new(limits: &LimitsSection) -> ConnBuilders {
        let make = || {
            let mut b = auto::Builder::new(TokioExecutor::new());
            // hyper's own limits are a backstop at twice ours; ours answer with a request id.
            let head_buf = (limits.max_header_bytes + limits.max_uri_bytes) * 2 + 16 * 1024;
            // One flat buffer per write: over TLS that is one record per response instead
            // of one per iovec (measured: fewer bytes and syscalls on keep-alive GETs).
            b.http1()
                .writev(false)
                .timer(TokioTimer::new())
                // The request-head deadline is kept by IdleTimeoutIo (one timer per
                // connection); hyper's would arm a timer per request.
                .header_read_timeout(None)
                .max_buf_size(head_buf.max(8192 + 1))
                .max_headers(limits.max_header_count * 2);
            b.http2()
                .timer(TokioTimer::new())
                .max_header_list_size((limits.max_header_bytes * 2).min(u32::MAX as usize) as u32)
                .max_concurrent_streams(250);
            b
        };
        ConnBuilders {
            h1: make().http1_only(),
            h2: make().http2_only(),
            auto: make(),
        }
    }
}

/// What a listener needs from the config in force, swapped on reload.
pub struct ListenerRuntime {
    pub name: Arc<str>,
    pub tls: Option<TlsAcceptor>,
    pub h2c: bool,
    pub proxy_protocol: bool,
    /// Shared with open connections, which hold only this (not the whole runtime).
    pub builders: Arc<ConnBuilders>,
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    /// Connections one client address may hold open (0: no cap); see [`PerAddress`].
    pub max_connections_per_ip: usize,
}

/// Accepts until `stop` turns true. Each connection runs on its own task and holds a
/// permit of the listener's connection limit and a place in its client address's share
/// ([`PerAddress`]); over either limit, new connections are closed at once.
pub async fn serve_listener(
    listener: TcpListener,
    index: usize,
    max_connections: usize,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let limit = Arc::new(Semaphore::new(max_connections));
    let per_address = Arc::new(PerAddress::default());
    let name = shared.runtime.load().listeners[index].name.clone();
    let active = shared
        .metrics
        .connections_active
        .with_label_values(&[&name]);
    let total = shared.metrics.connections_total.with_label_values(&[&name]);
    let rejected = shared
        .metrics
        .connections_rejected
        .with_label_values(&[&name]);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.changed() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            rejected.inc();
            drop(stream);
            continue;
        };
        total.inc();
        active.inc();
        let shared = shared.clone();
        let active = active.clone();
        let drain = shared.drain.subscribe();
        let per_address = per_address.clone();
        tokio::spawn(async move {
            handle_connection(stream, peer, index, shared, drain, per_address).await;
            active.dec();
            drop(permit);
        });
    }
}

async fn handle_connection(
    mut stream: TcpStream,
    mut peer: SocketAddr,
    index: usize,
    shared: Arc<Shared>,
    drain: watch::Receiver<bool>,
    per_address: Arc<PerAddress>,
) {
    let _ = stream.set_nodelay(true);
    // Take what this connection needs and let go of the runtime: a long-lived connection
    // must not keep a replaced config (its pools, its health checkers) alive.
    let (name, tls, h2c, proxy_protocol, builders, handshake_timeout, idle_timeout, head_timeout) = {
        let rt = shared.runtime.load();
        let lr = &rt.listeners[index];
        (
            lr.name.clone(),
            lr.tls.clone(),
            lr.h2c,
            lr.proxy_protocol,
            lr.builders.clone(),
            lr.tls_handshake_timeout,
            lr.idle_timeout,
            lr.header_read_timeout,
        )
    };
    // Without PROXY protocol the cap applies to the TCP peer at once; with it, to the
    // client the header names (the balancer itself would otherwise hit it).
    let admit = |peer: SocketAddr| {
        let rt = shared.runtime.load();
        let max = rt.listeners[index].max_connections_per_ip;
        let exempt = !rt.trusted.is_empty() && rt.trusted.contains(peer.ip());
        let slot = per_address.admit(peer.ip(), if exempt { 0 } else { max });
        if slot.is_none() {
            shared
                .metrics
                .connections_rejected_per_address
                .with_label_values(&[&name])
                .inc();
            tracing::debug!(listener = %name, %peer, max, "per-address connection cap reached");
        }
        slot
    };
    let mut _slot = None;
    if !proxy_protocol {
        match admit(peer) {
            Some(s) => _slot = s,
            None => return,
        }
    }
    if proxy_protocol {
        match tokio::time::timeout(handshake_timeout, proxy_protocol::read_header(&mut stream))
            .await
        {
            Ok(Ok(Some(addr))) => peer = addr,
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                tracing::debug!(listener = %name, %peer, error = %e, "PROXY header refused");
                return;
            }
            Err(_) => return,
        }
        match admit(peer) {
            Some(s) => _slot = s,
            None => return,
        }
    }
    match tls {
        Some(acceptor) => {
            let info = Arc::new(ConnInfo::new(peer, name.clone(), true));
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
            let tls = match handshake {
                Ok(Ok(s)) => s,
                _ => {
                    shared
                        .metrics
                        .tls_handshake_failures
                        .with_label_values(&[&name])
                        .inc();
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let (builder, protocol) = if h2 {
                (&builders.h2, Protocol::Http2)
            } else {
                (&builders.h1, Protocol::Http1)
            };
            let io = IdleTimeoutIo::new(
                tls,
                idle_timeout,
                Some(head_timeout),
                protocol,
                info.clone(),
            );
            serve_http(io, info, builder, &shared, drain).await;
        }
        None => {
            let info = Arc::new(ConnInfo::new(peer, name, false));
            let builder = if h2c { &builders.auto } else { &builders.h1 };
            // With h2c the protocol is not known yet; the head deadline applies to both.
            let io = IdleTimeoutIo::new(
                stream,
                idle_timeout,
                Some(head_timeout),
                Protocol::Http1,
                info.clone(),
            );
            serve_http(io, info, builder, &shared, drain).await;
        }
    }
}

async fn serve_http<I>(
    io: I,
    info: Arc<ConnInfo>,
    builder: &auto::Builder<TokioExecutor>,
    shared: &Arc<Shared>,
    mut drain: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = svc_shared.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(Box::pin(crate::pipeline::handle(shared, info, req)).await) }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    if *drain.borrow() {
        conn.as_mut().graceful_shutdown();
    }
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = drain.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
