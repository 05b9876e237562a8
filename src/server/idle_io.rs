//! An IO wrapper that closes a connection on which nothing has moved for a while.
//!
//! This is the one mechanism behind three timeouts: a client that connects and never sends
//! a byte (hyper-util's auto builder would wait forever for the protocol preface), an idle
//! HTTP/1 keep-alive connection, and an idle HTTP/2 connection. "Idle" means no bytes read
//! or written and no request in flight ([`ConnInfo::in_flight`]), so a slow upstream never
//! gets its client cut off.
//!
//! Cost: one `Instant::now()` per successful read or write. The timer is not reset on every
//! byte; when it fires it checks the last activity and re-arms itself if needed.

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

pin_project! {
    pub struct IdleTimeoutIo<T> {
        #[pin]
        inner: T,
        // Boxed so the wrapper is Unpin, as hyper's IO adapters want; one allocation per
        // connection.
        timer: Pin<Box<Sleep>>,
        timeout: Duration,
        last_activity: Instant,
        conn: Arc<ConnInfo>,
    }
}

impl<T> IdleTimeoutIo<T> {
    pub fn new(inner: T, timeout: Duration, conn: Arc<ConnInfo>) -> Self {
        let now = Instant::now();
        IdleTimeoutIo {
            inner,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
            timeout,
            last_activity: now,
            conn,
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
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
                if buf.filled().len() > before {
                    *this.last_activity = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => loop {
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => {
                        let now = Instant::now();
                        let deadline = *this.last_activity + *this.timeout;
                        if this.conn.in_flight.load(Ordering::Relaxed) > 0 {
                            *this.last_activity = now;
                            this.timer.as_mut().reset(now + *this.timeout);
                        } else if deadline <= now {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "connection idle timeout",
                            )));
                        } else {
                            this.timer.as_mut().reset(deadline);
                        }
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
            if *n > 0 {
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
            if *n > 0 {
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
