//! An IO wrapper that closes connections on which nothing useful is happening, with one
//! timer per connection and no timer per request.
//!
//! It enforces two deadlines:
//! - **idle**: no bytes read or written and no request in flight for `idle` (a client that
//!   connects and never sends a byte, an idle keep-alive or HTTP/2 connection, an idle
//!   tunnel). hyper-util's auto builder would otherwise wait forever for the preface.
//! - **request head**: once the first byte of a request head has arrived, the pipeline must
//!   have received the request within `head_timeout` (slowloris).
//!
//! On HTTP/2 ([`Protocol::Http2`]) bytes alone prove nothing: a client can keep a
//! connection busy forever with PINGs, SETTINGS or WINDOW_UPDATEs (each answered, so writes
//! prove nothing either), or dribble a header block that hyper only sees once complete.
//! There the activity that counts is requests: the first request must arrive within
//! `head_timeout` of the first byte (the preface), and the connection is idle when no
//! request has been in flight or arrived for `idle` — whatever frames keep coming.
//!
//! A request "in flight" ([`ConnInfo::in_flight`]) is never cut off, so a slow upstream
//! does not cost its client the connection.
//!
//! Why not hyper's `header_read_timeout`: it arms a fresh timer for every request, and
//! tokio wakes its driver through an eventfd whenever a new timer is due before the
//! driver's planned wake-up: one extra `write` and `epoll_wait` per request (measured with
//! strace on keep-alive GETs). Here the single timer is re-armed only when it fires, at
//! least every `head_timeout / 2`, so a slow head is closed between 1× and 1.5× the
//! timeout. Cost per read or write: one `Instant::now()`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::ConnInfo;

/// What the connection speaks, for what counts as activity (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1 (or not known yet, as with h2c): every byte counts.
    Http1,
    /// HTTP/2: only requests count.
    Http2,
}

pin_project! {
    pub struct IdleTimeoutIo<T> {
        #[pin]
        inner: T,
        // Boxed so the wrapper is Unpin, as hyper's IO adapters want; one allocation per
        // connection.
        timer: Pin<Box<Sleep>>,
        idle: Duration,
        head_timeout: Option<Duration>,
        period: Duration,
        last_activity: Instant,
        // When the first byte of the current request head arrived, and the request count
        // at that moment (a higher count later means the head was complete).
        head_started: Option<(Instant, u64)>,
        protocol: Protocol,
        // HTTP/2: the request count when the timer last looked.
        requests_seen: u64,
        conn: Arc<ConnInfo>,
    }
}

impl<T> IdleTimeoutIo<T> {
    pub fn new(
        inner: T,
        idle: Duration,
        head_timeout: Option<Duration>,
        protocol: Protocol,
        conn: Arc<ConnInfo>,
    ) -> Self {
        let now = Instant::now();
        let period = match head_timeout {
            Some(h) => idle.min(h / 2).max(Duration::from_millis(10)),
            None => idle,
        };
        IdleTimeoutIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + period)),
            idle,
            head_timeout,
            period,
            last_activity: now,
            head_started: None,
            protocol,
            requests_seen: 0,
            conn,
        }
    }
}

impl<T: AsyncRead> AsyncRead for IdleTimeoutIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before && *this.protocol == Protocol::Http2 {
                    // Only the first request's head is timed here (see the module doc).
                    if this.head_timeout.is_some() && this.head_started.is_none() {
                        let requests = this.conn.requests.load(Ordering::Relaxed);
                        if requests == 0 {
                            *this.head_started = Some((Instant::now(), 0));
                        }
                    }
                } else if buf.filled().len() > before {
                    let now = Instant::now();
                    *this.last_activity = now;
                    if this.head_timeout.is_some() {
                        let requests = this.conn.requests.load(Ordering::Relaxed);
                        if matches!(this.head_started, Some((_, mark)) if *mark != requests) {
                            *this.head_started = None;
                        }
                        if this.head_started.is_none()
                            && this.conn.in_flight.load(Ordering::Relaxed) == 0
                        {
                            *this.head_started = Some((now, requests));
                        }
                    }
                }
                Poll::Ready(r)
            }
            Poll::Pending => loop {
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        let busy = this.conn.in_flight.load(Ordering::Relaxed) > 0;
                        if *this.protocol == Protocol::Http2 {
                            let requests = this.conn.requests.load(Ordering::Relaxed);
                            if requests != *this.requests_seen {
                                *this.requests_seen = requests;
                                *this.last_activity = now;
                            }
                        }
                        if busy {
                            *this.last_activity = now;
                        } else {
                            if let (Some(limit), Some((started, mark))) =
                                (*this.head_timeout, *this.head_started)
                            {
                                let requests = this.conn.requests.load(Ordering::Relaxed);
                                if requests == mark && now.duration_since(started) >= limit {
                                    return Poll::Ready(Err(io::Error::new(
                                        io::ErrorKind::TimedOut,
                                        "request head timeout",
                                    )));
                                }
                            }
                            if now.duration_since(*this.last_activity) >= *this.idle {
                                return Poll::Ready(Err(io::Error::new(
                                    io::ErrorKind::TimedOut,
                                    "connection idle timeout",
                                )));
                            }
                        }
                        this.timer.as_mut().reset(now + *this.period);
                    }
                }
            },
        }
    }
}

impl<T: AsyncWrite> AsyncWrite for IdleTimeoutIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 && *this.protocol == Protocol::Http1 {
                *this.last_activity = Instant::now();
            }
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            if *n > 0 && *this.protocol == Protocol::Http1 {
                *this.last_activity = Instant::now();
            }
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
