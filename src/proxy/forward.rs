//! The forward phase: one request to one upstream pool, and its response back.
//!
//! Status mapping, each a short JSON error with the request id:
//! - body over the route limit: 413 (at once from `Content-Length`, or as it streams);
//! - no server in rotation: 503;
//! - connect failure or refused: 502 (after retrying another server, for idempotent
//!   requests without a body, which cannot have reached the upstream);
//! - no response head within `response_timeout`: 504;
//! - malformed upstream response, or `101` to a request that asked for no upgrade: 502
//!   (hyper discards a connection whose response it could not parse).

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::body::{ByteCount, ClientBody, RequestBody, RequestBodyError};
use super::error::error_response;
use super::headers::{is_upgrade_request, set_forwarded, strip_hop_by_hop};
use super::route::Route;
use super::upstream::{Pool, Target};
use super::{echo, ResponseBody};
use crate::pipeline::checks::ForwardTarget;
use crate::pipeline::RequestCtx;
use crate::server::ConnInfo;

/// Forwards `req` along `route` and returns what goes back to the client.
pub async fn forward(
    ctx: &mut RequestCtx,
    conn: &ConnInfo,
    route: &Arc<Route>,
    req: Request<ClientBody>,
) -> Response<ResponseBody> {
    let (mut parts, body) = req.into_parts();
    let limit = route.max_body_bytes;
    let declared = match &body {
        // Read by a phase (a login form) under its own limit: the route's still applies.
        ClientBody::Buffered(b) => Some(b.len() as u64),
        ClientBody::Streaming(_) | ClientBody::Partial(..) => content_length(&parts),
    };
    if let Some(len) = declared {
        if len > limit {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large",
                &ctx.request_id,
            );
        }
    }

    let upgrade = parts.version == Version::HTTP_11 && is_upgrade_request(&parts.headers);
    let client_upgrade = if upgrade {
        parts.extensions.remove::<OnUpgrade>()
    } else {
        None
    };
    let upgrade_proto = if upgrade {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    };

    let host = original_host(&parts);
    strip_hop_by_hop(&mut parts.headers, false);
    if let Some(proto) = upgrade_proto {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, proto);
    }
    set_forwarded(
        &mut parts.headers,
        conn.peer.ip(),
        ctx.peer_trusted,
        conn.proto(),
        host.as_ref(),
        &ctx.request_id,
    );
    let pool = &route.pool;
    if pool.preserve_host {
        if let Some(h) = &host {
            parts.headers.insert(header::HOST, h.clone());
        }
    } else {
        parts.headers.remove(header::HOST);
    }
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();

    let mut body = match body {
        ClientBody::Streaming(body) if body_is_empty(&body) => Some(RequestBody::Empty),
        ClientBody::Streaming(body) => {
            let count = Arc::new(ByteCount::default());
            ctx.bytes_in = Some(count.clone());
            Some(RequestBody::limited(body, limit, count))
        }
        ClientBody::Partial(head, rest) => {
            let count = Arc::new(ByteCount::default());
            ctx.bytes_in = Some(count.clone());
            Some(RequestBody::limited_after(Some(head), rest, limit, count))
        }
        ClientBody::Buffered(b) if b.is_empty() => Some(RequestBody::Empty),
        ClientBody::Buffered(b) => {
            let count = Arc::new(ByteCount::default());
            count.add(b.len() as u64);
            ctx.bytes_in = Some(count);
            Some(RequestBody::Buffered(Some(b)))
        }
    };
    // Only a request with no body can be sent again after a failed connect.
    let may_retry = pool.retries > 0
        && pool.servers.len() > 1
        && is_idempotent(&parts.method)
        && matches!(body, Some(RequestBody::Empty));
    let path_and_query = match (&ctx.original_uri, &ctx.upstream_uri, route.forward_target) {
        (Some(original), _, ForwardTarget::Original) => original.path_and_query().cloned(),
        (_, Some(upstream), _) => upstream.path_and_query().cloned(),
        _ => parts.uri.path_and_query().cloned(),
    };

    let mut tried: u64 = 0;
    let mut attempts = 0usize;
    loop {
        let Some((index, server)) = pool.pick(tried) else {
            // Nothing (left) in rotation: 502 when an attempt already failed to connect.
            let (status, message) = if attempts > 0 {
                (StatusCode::BAD_GATEWAY, "upstream unavailable")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream")
            };
            return error_response(status, message, &ctx.request_id);
        };
        let server = server.clone();
        if index < 64 {
            tried |= 1 << index;
        }
        attempts += 1;
        ctx.upstream = Some(server.label.clone());
        let last_try = !may_retry || attempts > pool.retries;
        let attempt_parts = if last_try {
            std::mem::replace(&mut parts, Request::new(()).into_parts().0)
        } else {
            clone_parts(&parts)
        };
        let attempt_body = if last_try {
            body.take().unwrap_or(RequestBody::Empty)
        } else {
            RequestBody::Empty
        };
        let mut upstream_req = Request::from_parts(attempt_parts, attempt_body);

        let (scheme, authority) = match &server.target {
            Target::BuiltinEcho => {
                if let Some(pq) = &path_and_query {
                    let mut u = http::uri::Parts::default();
                    u.path_and_query = Some(pq.clone());
                    if let Ok(u) = Uri::from_parts(u) {
                        *upstream_req.uri_mut() = u;
                    }
                }
                let started = Instant::now();
                let res = echo::answer(upstream_req).await;
                ctx.upstream_duration = Some(started.elapsed());
                return match res {
                    Ok(resp) => finish_response(ctx, resp, false),
                    Err(e) => body_error_response(ctx, &e),
                };
            }
            Target::Http { scheme, authority } => (scheme.clone(), authority.clone()),
        };
        let mut uri = Uri::builder().scheme(scheme).authority(authority);
        if let Some(pq) = &path_and_query {
            uri = uri.path_and_query(pq.clone());
        }
        *upstream_req.uri_mut() = match uri.build() {
            Ok(u) => u,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad request target",
                    &ctx.request_id,
                )
            }
        };
        if !pool.preserve_host || !upstream_req.headers().contains_key(header::HOST) {
            if let Some(a) = upstream_req.uri().authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    upstream_req.headers_mut().insert(header::HOST, v);
                }
            }
        }

        let guard = Pool::begin(&server);
        let started = Instant::now();
        let result =
            tokio::time::timeout(pool.response_timeout, pool.client.request(upstream_req)).await;
        let waited = started.elapsed();
        ctx.upstream_duration = Some(waited);
        pool.metrics.duration.observe(waited.as_secs_f64());
        let resp = match result {
            Err(_) => {
                pool.metrics.timeouts.inc();
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream timed out",
                    &ctx.request_id,
                );
            }
            Ok(Err(e)) if e.is_connect() => {
                pool.record_connect_failure(&server);
                if !last_try {
                    continue;
                }
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream unavailable",
                    &ctx.request_id,
                );
            }
            Ok(Err(e)) => {
                if let Some(body_err) = find_cause::<RequestBodyError>(&e) {
                    // The client's body failed (too large, or the client went away): not
                    // the upstream's fault.
                    return body_error_response(ctx, body_err);
                }
                pool.metrics.protocol_errors.inc();
                tracing::debug!(pool = %pool.name, server = %server.label, error = %e, "upstream request failed");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "bad upstream response",
                    &ctx.request_id,
                );
            }
            Ok(Ok(resp)) => resp,
        };
        pool.record_success(&server);

        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                pool.metrics.protocol_errors.inc();
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream switched protocols unasked",
                    &ctx.request_id,
                );
            };
            return tunnel(ctx, resp, client_upgrade, guard);
        }
        let (rparts, rbody) = resp.into_parts();
        let out = Response::from_parts(rparts, ResponseBody::upstream(rbody, guard));
        return finish_response(ctx, out, ctx.is_head);
    }
}

fn finish_response(
    ctx: &RequestCtx,
    mut resp: Response<ResponseBody>,
    head_request: bool,
) -> Response<ResponseBody> {
    let keep_length = head_request || resp.status() == StatusCode::NOT_MODIFIED;
    strip_hop_by_hop(resp.headers_mut(), keep_length);
    *resp.version_mut() = Version::HTTP_11;
    resp.headers_mut()
        .insert("x-request-id", ctx.request_id.clone());
    resp
}

fn tunnel(
    ctx: &RequestCtx,
    resp: Response<Incoming>,
    client_upgrade: OnUpgrade,
    guard: super::upstream::ActiveGuard,
) -> Response<ResponseBody> {
    let (mut parts, _body) = resp.into_parts();
    let upstream_upgrade = parts.extensions.remove::<OnUpgrade>();
    let proto = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers, false);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Some(p) = proto {
        parts.headers.insert(header::UPGRADE, p);
    }
    parts.headers.insert("x-request-id", ctx.request_id.clone());
    parts.extensions = http::Extensions::new();
    if let Some(upstream_upgrade) = upstream_upgrade {
        tokio::spawn(async move {
            let _guard = guard;
            let (client, upstream) = match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(c), Ok(u)) => (c, u),
                _ => return,
            };
            let mut client = TokioIo::new(client);
            let mut upstream = TokioIo::new(upstream);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
    }
    Response::from_parts(parts, ResponseBody::empty())
}

fn body_error_response(ctx: &RequestCtx, e: &RequestBodyError) -> Response<ResponseBody> {
    match e {
        RequestBodyError::TooLarge(_) => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large",
            &ctx.request_id,
        ),
        RequestBodyError::Client(_) => error_response(
            StatusCode::BAD_REQUEST,
            "could not read request body",
            &ctx.request_id,
        ),
    }
}

fn find_cause<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn body_is_empty(body: &Incoming) -> bool {
    use http_body::Body;
    body.is_end_stream() || body.size_hint().exact() == Some(0)
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// The host the client asked for: the `Host` header, or the HTTP/2 `:authority`.
fn original_host(parts: &Parts) -> Option<HeaderValue> {
    if let Some(h) = parts.headers.get(header::HOST) {
        return Some(h.clone());
    }
    parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
}

fn clone_parts(p: &Parts) -> Parts {
    let mut req = Request::new(());
    *req.method_mut() = p.method.clone();
    *req.uri_mut() = p.uri.clone();
    *req.version_mut() = p.version;
    *req.headers_mut() = p.headers.clone();
    req.into_parts().0
}
