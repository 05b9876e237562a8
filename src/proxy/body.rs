//! Body types that cross the gateway.
//!
//! [`RequestBody`] is what goes upstream: nothing, or the client's body with the route's
//! size limit enforced as it streams (the limit is checked on every frame, so a body that
//! lies about its length or has none is still cut off). [`ResponseBody`] is what goes to
//! the client: an upstream body streamed through, or a small body the gateway made. Both
//! are enums rather than boxed trait objects, so no allocation is needed to pick one.
//!
//! A `ResponseBody` carries a [`Completion`]: when the body ends or is dropped, the
//! completion runs once (access log, in-flight bookkeeping). That is what makes the access
//! log line appear exactly once per request, on every exit path.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::upstream::ActiveGuard;

/// The client sent more than the route allows.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// Errors a request body can produce while streaming upstream.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error(transparent)]
    TooLarge(#[from] BodyTooLarge),
    #[error("reading the client body: {0}")]
    Client(#[from] hyper::Error),
}

/// Bytes that have passed through a body, readable after it is gone.
#[derive(Debug, Default)]
pub struct ByteCount(AtomicU64);

impl ByteCount {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

/// A request body as the phases hand it to forwarding: still streaming from the client,
/// or already read by a phase that had to look at it (a login form).
pub enum ClientBody {
    Streaming(Incoming),
    Buffered(Bytes),
    /// A beginning already read (the WAF inspected it), the rest still streaming.
    Partial(Bytes, Incoming),
}

/// What is sent upstream.
pub enum RequestBody {
    Empty,
    /// Read by a phase before forwarding.
    Buffered(Option<Bytes>),
    Limited {
        /// Sent before anything from `inner` (a beginning a phase already read).
        head: Option<Bytes>,
        inner: Incoming,
        seen: u64,
        limit: u64,
        count: Arc<ByteCount>,
    },
}

impl RequestBody {
    pub fn limited(inner: Incoming, limit: u64, count: Arc<ByteCount>) -> RequestBody {
        RequestBody::limited_after(None, inner, limit, count)
    }

    /// `head`, then `inner`; both count towards `limit`.
    pub fn limited_after(
        head: Option<Bytes>,
        inner: Incoming,
        limit: u64,
        count: Arc<ByteCount>,
    ) -> RequestBody {
        RequestBody::Limited {
            head,
            inner,
            seen: 0,
            limit,
            count,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Buffered(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Limited {
                head,
                inner,
                seen,
                limit,
                count,
            } => {
                if let Some(h) = head.take() {
                    *seen += h.len() as u64;
                    count.add(h.len() as u64);
                    return Poll::Ready(Some(Ok(Frame::data(h))));
                }
                match Pin::new(inner).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            *seen += data.len() as u64;
                            count.add(data.len() as u64);
                            if *seen > *limit {
                                return Poll::Ready(Some(Err(
                                    BodyTooLarge { limit: *limit }.into()
                                )));
                            }
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Buffered(b) => b.is_none(),
            RequestBody::Limited { head, inner, .. } => head.is_none() && inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Buffered(b) => {
                SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Limited { head, inner, .. } => {
                let extra = head.as_ref().map_or(0, |h| h.len() as u64);
                let inner = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(u) = inner.upper() {
                    hint.set_upper(u + extra);
                }
                hint
            }
        }
    }
}

/// Runs once when a response body finishes or is dropped.
pub trait Completion: Send + Sync {
    fn complete(&mut self, bytes_out: u64, aborted: bool);
}

enum Kind {
    Full(Option<Bytes>),
    Upstream(Incoming),
}

/// What is sent to the client.
pub struct ResponseBody {
    kind: Kind,
    bytes_out: u64,
    completion: Option<Box<dyn Completion>>,
    /// The upstream server's in-flight slot, held until the body is done.
    _slot: Option<ActiveGuard>,
}

impl ResponseBody {
    pub fn full(b: impl Into<Bytes>) -> ResponseBody {
        let b = b.into();
        ResponseBody {
            kind: Kind::Full(if b.is_empty() { None } else { Some(b) }),
            bytes_out: 0,
            completion: None,
            _slot: None,
        }
    }
    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
            bytes_out: 0,
            completion: None,
            _slot: None,
        }
    }
    pub fn upstream(b: Incoming, slot: ActiveGuard) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(b),
            bytes_out: 0,
            completion: None,
            _slot: Some(slot),
        }
    }
    /// Attaches what must run when this body is done.
    pub fn set_completion(&mut self, c: Box<dyn Completion>) {
        self.completion = Some(c);
    }

    fn finish(&mut self, aborted: bool) {
        if let Some(mut c) = self.completion.take() {
            c.complete(self.bytes_out, aborted);
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Dropped before the end: the client went away or the stream failed. hyper stops
        // polling once `is_end_stream` is true, so a finished body is recognised here too.
        let aborted = !self.is_end_stream();
        self.finish(aborted);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let res = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
        };
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.bytes_out += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.finish(false);
                }
            }
            Poll::Ready(None) => this.finish(false),
            Poll::Ready(Some(Err(_))) => this.finish(true),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}
