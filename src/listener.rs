//! What every listener does before a door sees a request: it caps the connections it holds
//! and gives each request head a deadline, so that slow or idle clients on one listener cannot
//! use up the descriptors the others (and the admin listener's health checks) need.
//!
//! [`Guarded`] wraps any Pingora service app (the proxy door's `HttpProxy`, the MCP and admin
//! apps): a connection over the listener's cap is answered `503 connection_limit` and closed;
//! an accepted one is wrapped in a [`HeadClock`] stream that fails reads with a `408
//! request_timeout` once a head has taken longer than `server.request_head_timeout` — timed
//! from the accept for a connection's first request, and from the first byte of each later
//! one (the time a kept-alive connection waits between requests is the keep-alive timeout's).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::error::{GatewayError, Reason};

/// A listener's connection cap and head deadline.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections held at once; the next is answered 503 and closed.
    pub max_connections: usize,
    /// How long a request head may take to arrive.
    pub head_timeout: Duration,
}

/// A service app behind a connection cap and a head deadline.
pub struct Guarded<A> {
    inner: Arc<A>,
    slots: Arc<Semaphore>,
    limits: Limits,
    listener: &'static str,
}

impl<A> Guarded<A> {
    /// `listener` names it in logs: `mcp`, `proxy` or `admin`.
    pub fn new(inner: A, limits: Limits, listener: &'static str) -> Self {
        Guarded {
            inner: Arc::new(inner),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            limits,
            listener,
        }
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let stream: Stream = if (*stream).as_any().is::<HeadClock>() {
            // A kept-alive connection coming back for its next request.
            let Ok(mut clock) = stream.into_any().downcast::<HeadClock>() else {
                return None;
            };
            clock.next_request();
            clock
        } else {
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                refuse_connection(stream, self.listener, self.limits.max_connections).await;
                return None;
            };
            Box::new(HeadClock::new(
                stream,
                slot,
                self.limits.head_timeout,
                self.listener,
            ))
        };
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

/// Answers a connection over the cap with a 503 problem (best effort, bounded to a second)
/// and closes it. An HTTP/2 connection is only closed: it expects frames, not text.
async fn refuse_connection(mut stream: Stream, listener: &'static str, cap: usize) {
    tracing::warn!(
        listener,
        max_connections = cap,
        "connection refused: the listener holds as many connections as allowed"
    );
    crate::telemetry::metrics()
        .connections_refused
        .with_label_values(&[listener, Reason::ConnectionLimit.code()])
        .inc();
    if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        let e = GatewayError::because(
            Reason::ConnectionLimit,
            format!("this listener holds {cap} connections, as many as server.max_connections allows; retry shortly"),
        );
        let response = raw_problem(&e, &[("Retry-After", "1")]);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = stream.write_all(&response).await;
            let _ = stream.flush().await;
        })
        .await;
    }
    Shutdown::shutdown(&mut *stream).await;
}

/// A complete HTTP/1.1 problem+json response that closes the connection, for the moments
/// before a request could be parsed (no session exists to write it).
fn raw_problem(e: &GatewayError, extra: &[(&str, &str)]) -> Vec<u8> {
    let body = e.problem_json().to_string();
    let status = e.kind.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/problem+json\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in extra {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// Where a request head stands, as far as the bytes read show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Head {
    /// Waiting for the next request's first byte; no deadline runs.
    Idle,
    /// Inside a head that must end by the deadline. `line` is where the scan stands: 0 in a
    /// line, 1 just after a line feed, 2 after a line feed and a carriage return. `content`
    /// is whether any byte other than CR/LF has come (leading empty lines do not end a head).
    Reading { line: u8, content: bool },
    /// The head has ended; the body, the response and the next request are not timed here.
    Done,
}

/// A downstream stream that enforces the head deadline and holds the connection's slot.
pub struct HeadClock {
    inner: Stream,
    _slot: OwnedSemaphorePermit,
    timeout: Duration,
    head: Head,
    deadline: Option<Instant>,
    /// Made only when a read has to wait within a head, so a head that arrives in one read
    /// never touches the timer.
    sleep: Option<Pin<Box<Sleep>>>,
    /// Whether any byte of the current head has come; a timeout answers 408 only then.
    started: bool,
    listener: &'static str,
}

impl Drop for HeadClock {
    fn drop(&mut self) {
        crate::telemetry::metrics()
            .connections_open
            .with_label_values(&[self.listener])
            .dec();
    }
}

impl HeadClock {
    fn new(
        inner: Stream,
        slot: OwnedSemaphorePermit,
        timeout: Duration,
        listener: &'static str,
    ) -> Self {
        crate::telemetry::metrics()
            .connections_open
            .with_label_values(&[listener])
            .inc();
        HeadClock {
            listener,
            inner,
            _slot: slot,
            timeout,
            head: Head::Reading {
                line: 0,
                content: false,
            },
            deadline: Some(Instant::now() + timeout),
            sleep: None,
            started: false,
        }
    }

    /// Re-arms for a kept-alive connection's next request: timed from its first byte.
    fn next_request(&mut self) {
        self.head = Head::Idle;
        self.deadline = None;
        self.sleep = None;
        self.started = false;
    }

    /// Scans newly read bytes for the end of the head.
    fn scan(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.head == Head::Idle {
            self.head = Head::Reading {
                line: 0,
                content: false,
            };
            self.deadline = Some(Instant::now() + self.timeout);
        }
        self.started = true;
        let Head::Reading {
            mut line,
            mut content,
        } = self.head
        else {
            return;
        };
        for &b in bytes {
            match (b, line) {
                (b'\n', 1 | 2) if content => {
                    self.head = Head::Done;
                    self.deadline = None;
                    self.sleep = None;
                    return;
                }
                (b'\n', _) => line = 1,
                (b'\r', 1) => line = 2,
                (b'\r', _) => line = 0,
                _ => {
                    line = 0;
                    content = true;
                }
            }
        }
        self.head = Head::Reading { line, content };
    }

    /// Ready when the head's deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(deadline) = self.deadline else {
            return Poll::Pending;
        };
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        sleep.as_mut().poll(cx)
    }
}

impl AsyncRead for HeadClock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if matches!(this.head, Head::Idle | Head::Reading { .. }) {
                    this.scan(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.poll_deadline(cx).is_pending() {
                    return Poll::Pending;
                }
                // Out of time: a client that sent part of a head is told why (best effort,
                // one non-blocking write); one that sent nothing is just closed.
                if this.started {
                    let e = GatewayError::because(
                        Reason::HeadTimeout,
                        format!(
                            "the request head did not arrive within {} ms (server.request_head_timeout)",
                            this.timeout.as_millis()
                        ),
                    );
                    let _ = Pin::new(&mut this.inner).poll_write(cx, &raw_problem(&e, &[]));
                }
                crate::telemetry::metrics()
                    .connections_refused
                    .with_label_values(&[this.listener, Reason::HeadTimeout.code()])
                    .inc();
                this.deadline = None;
                this.sleep = None;
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)))
            }
        }
    }
}

/// The error a read fails with when the head deadline passes; the doors that read requests
/// themselves recognise it and stay quiet (the 408 has been sent).
#[derive(Debug)]
pub struct HeadTimedOut;

impl std::fmt::Display for HeadTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request head deadline passed (server.request_head_timeout)")
    }
}

impl std::error::Error for HeadTimedOut {}

impl AsyncWrite for HeadClock {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadClock {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeadClock {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadClock {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadClock {
    fn get_timing_digest(&self) -> Vec<Option<pingora::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadClock {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: pingora::protocols::raw_connect::ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadClock {
    fn get_socket_digest(&self) -> Option<Arc<pingora::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: pingora::protocols::SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for HeadClock {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

impl std::fmt::Debug for HeadClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadClock")
            .field("inner", &self.inner)
            .field("head", &self.head)
            .finish()
    }
}

/// Reads a request head for a door that reads its own (MCP, admin): true when there is a
/// request to serve; otherwise the connection is done, any answer already given (see
/// [`answer_unreadable`]).
pub async fn read_head(session: &mut pingora::protocols::http::ServerSession) -> bool {
    match session.read_request().await {
        Ok(true) => true,
        Ok(false) => false,
        Err(e) => {
            answer_unreadable(session, &e).await;
            false
        }
    }
}

/// What a door that reads requests itself (MCP, admin) does when a head cannot be read: a
/// malformed head is answered 400 `malformed_request`; a head that timed out has had its 408
/// from [`HeadClock`]; a broken connection gets nothing.
async fn answer_unreadable(
    session: &mut pingora::protocols::http::ServerSession,
    e: &pingora::Error,
) {
    if !matches!(e.etype(), pingora::ErrorType::InvalidHTTPHeader) {
        return;
    }
    // Pingora's own context quotes the raw head, credentials included: it is not echoed.
    let g = GatewayError::because(
        Reason::MalformedRequest,
        "the request head is not valid HTTP/1.1 (request line, header syntax or framing headers)",
    );
    let body = bytes::Bytes::from(g.problem_json().to_string());
    let Ok(mut h) = pingora::http::ResponseHeader::build(g.kind.status(), Some(4)) else {
        return;
    };
    let ok = h
        .insert_header(http::header::CONTENT_TYPE, "application/problem+json")
        .is_ok()
        && h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())
            .is_ok()
        && h.insert_header(http::header::CACHE_CONTROL, "no-store")
            .is_ok();
    if ok {
        let _ = session.write_error_response(h, body).await;
    }
}
