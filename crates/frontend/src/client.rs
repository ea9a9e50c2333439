//! [`ClientConn`]: the client's socket (plain or TLS) with its read buffer and frame cap.

use crate::SessionError;
use bytes::BytesMut;
use std::io::ErrorKind;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use switchyard_proto::backend::ErrorFields;
use switchyard_proto::{Frame, decode_frame};
use switchyard_tls::Stream;
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::buffers::{BUFFER_SIZE as READ_CHUNK, Buffers};
use std::sync::Arc;

pub struct ClientConn {
    pub stream: Stream,
    /// Bytes read and not yet relayed. Idle clients hold no buffer at all (see [`Self::fill`]
    /// and [`Self::shed_buffer`]): at 10,000 idle clients that is most of the memory.
    pub buf: BytesMut,
    /// Largest message accepted (`max_message_size`, at most 1 GiB: PostgreSQL's own limit).
    /// This and the next field are 32-bit: with them the session stays in its allocation class.
    max_message: u32,
    /// Longest a write may wait without the socket taking a byte (`client_write_timeout`), ms.
    write_stall_ms: u32,
    buffers: Arc<Buffers>,
}

/// What a parked session keeps of its client connection: not the socket (the parking lot holds
/// it) and not the read buffer (empty when a session parks).
pub struct ParkedClient {
    max_message: u32,
    write_stall_ms: u32,
    buffers: Arc<Buffers>,
}

impl ParkedClient {
    /// The connection again, on `stream`.
    pub fn resume(self, stream: Stream) -> ClientConn {
        ClientConn {
            stream,
            buf: BytesMut::new(),
            max_message: self.max_message,
            write_stall_ms: self.write_stall_ms,
            buffers: self.buffers,
        }
    }
}

impl ClientConn {
    /// Splits off the socket for the parking lot (the read buffer, which must be empty, is
    /// given back).
    pub fn park(mut self) -> (Stream, ParkedClient) {
        debug_assert!(self.buf.is_empty(), "a session parks with nothing unread");
        self.shed_buffer();
        let parked = ParkedClient {
            max_message: self.max_message,
            write_stall_ms: self.write_stall_ms,
            buffers: self.buffers,
        };
        (self.stream, parked)
    }

    pub fn new(
        stream: TcpStream,
        max_message: usize,
        write_stall_limit: Duration,
        buffers: Arc<Buffers>,
    ) -> Self {
        let _ = stream.set_nodelay(true);
        Self {
            stream: Stream::Plain(stream),
            buf: BytesMut::new(),
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            write_stall_ms: u32::try_from(write_stall_limit.as_millis()).unwrap_or(u32::MAX),
            buffers,
        }
    }

    /// Largest message accepted from this client, in bytes.
    pub fn max_message(&self) -> usize {
        self.max_message as usize
    }

    /// The shared buffer cache (for the session's write buffer too).
    pub fn buffers(&self) -> &Buffers {
        &self.buffers
    }

    /// Makes room for a read of at least half a chunk, and for the whole of a message whose
    /// header is already here.
    pub fn ensure_room(&mut self) {
        if self.buf.capacity() == 0 {
            self.buf = self.buffers.take();
        }
        if let Ok(Some(h)) = switchyard_proto::peek_header(&self.buf, self.max_message())
            && h.wire_len > self.buf.len()
        {
            // Room for the rest of the message, but never more than has already arrived: a
            // length field alone makes nothing be allocated (the buffer at most doubles per
            // read, so a large message still takes few reads).
            let rest = h.wire_len - self.buf.len();
            self.buf.reserve(rest.min(self.buf.len().max(READ_CHUNK)));
        }
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// Frees the buffer when nothing is in it.
    pub fn shed_buffer(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > 0 {
            self.buffers.give(std::mem::take(&mut self.buf));
        }
    }

    /// Waits for the client to send something and reads it; `Ok(false)` on a clean EOF. The
    /// buffer is only allocated once there is something to read.
    ///
    /// Cancel safety: cancel-safe (waiting for readiness takes nothing).
    pub async fn fill(&mut self) -> Result<bool, SessionError> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// [`ClientConn::fill`] as a poll function. Readiness is awaited first with
    /// `poll_read_ready`, which keeps the waker in the socket's own slot (no waiter node in the
    /// future every idle client's task holds) and takes no buffer until there is something to
    /// read. The read goes through `poll_read`, which forgets the readiness after a read that did
    /// not fill the buffer (race-free: tokio clears only the readiness event seen before the
    /// read), so the next wait does not begin with a read that can only fail.
    ///
    /// Over TLS the read goes straight to the session: it may hold decrypted bytes that the
    /// socket's readiness knows nothing of.
    pub fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, SessionError>> {
        if let Stream::Plain(tcp) = &self.stream
            && let Err(e) = ready!(tcp.poll_read_ready(cx))
        {
            return Poll::Ready(Err(SessionError::ClientGone(e)));
        }
        self.ensure_room();
        match tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.stream), cx, &mut self.buf)
        {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => Poll::Ready(Err(SessionError::ClientGone(e))),
            // Stale readiness, now cleared and the waker registered: give the buffer back.
            Poll::Pending => {
                self.shed_buffer();
                Poll::Pending
            }
        }
    }

    /// Reads one whole frame; EOF is an error (the client left mid-conversation).
    pub async fn read_frame(&mut self) -> Result<Frame, SessionError> {
        self.read_frame_within(self.max_message()).await
    }

    /// Reads one whole frame of at most `max` bytes (before authentication, PostgreSQL's
    /// small cap instead of `max_message_size`); a larger one is refused as soon as its
    /// header arrives.
    pub async fn read_frame_within(&mut self, max: usize) -> Result<Frame, SessionError> {
        loop {
            if let Some(f) = decode_frame(&mut self.buf, max)? {
                return Ok(f);
            }
            if !self.fill().await? {
                return Err(SessionError::ClientGone(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
        }
    }

    /// Writes all of `bytes` (and, over TLS, flushes them): at once when the socket takes them
    /// (the common case: no timer, no future state), else waiting for room, at most
    /// `client_write_timeout` without progress. A client that stops reading its answers would
    /// otherwise hold its server connection for ever.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let gone = SessionError::ClientGone;
        let mut rest = match self.stream.try_write(bytes) {
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == ErrorKind::WouldBlock => bytes,
            Err(e) => return Err(gone(e)),
        };
        if rest.is_empty() && self.stream.flushed_now().map_err(gone)? {
            return Ok(());
        }
        let limit = Duration::from_millis(u64::from(self.write_stall_ms));
        loop {
            let stream = &mut self.stream;
            let step = std::future::poll_fn(|cx| {
                let s = std::pin::Pin::new(&mut *stream);
                if rest.is_empty() {
                    s.poll_flush(cx).map_ok(|()| None)
                } else {
                    s.poll_write(cx, rest).map_ok(Some)
                }
            });
            match tokio::time::timeout(limit, step).await {
                Err(_) => return Err(SessionError::ClientStalled { waited: limit }),
                Ok(Err(e)) => return Err(gone(e)),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(0))) => return Err(gone(ErrorKind::WriteZero.into())),
                Ok(Ok(Some(n))) => rest = &rest[n..],
            }
        }
    }

    /// The TLS handshake, on a client that asked for TLS (after its SSLRequest was answered
    /// `S`), or that began with one (`direct`). Bounded by the login's deadline.
    pub async fn start_tls(
        &mut self,
        tls: &switchyard_tls::FromClient,
        direct: bool,
    ) -> Result<(), SessionError> {
        let Some(tcp) = self.stream.take_plain() else {
            return Err(SessionError::Unsupported("TLS requested twice".into()));
        };
        self.stream = tls
            .accept(tcp, direct)
            .await
            .map_err(|e| SessionError::ClientGone(std::io::Error::other(e.to_string())))?;
        Ok(())
    }

    /// The client's address, if its socket is still there.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        self.stream.tcp().and_then(|t| t.peer_addr().ok())
    }

    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        for f in frames {
            f.encode(&mut out);
        }
        self.write(&out).await
    }

    /// Sends an error, best effort and bounded: the client may already be gone or stuck.
    pub async fn send_error(&mut self, e: &ErrorFields) {
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            self.send(&[e.to_frame()]),
        )
        .await;
    }
}
