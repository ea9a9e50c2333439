//! [`Stream`]: a connection's socket, plain or TLS, as one type the data path reads and writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A socket, plain or TLS (Switchyard as the client of a server, or as the server of a client).
/// The TLS states are boxed: a plain connection, the common case, stays small.
pub enum Stream {
    Plain(TcpStream),
    ToServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    FromClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// The socket was taken for a TLS handshake that did not give it back (it failed): every
    /// read and write fails.
    Closed,
}

fn closed() -> io::Error {
    io::ErrorKind::NotConnected.into()
}

impl Stream {
    /// The TCP socket under it (`None` once [`Stream::Closed`]).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::ToServer(s) => Some(s.get_ref().0),
            Stream::FromClient(s) => Some(s.get_ref().0),
            Stream::Closed => None,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::ToServer(_) | Stream::FromClient(_))
    }

    /// Takes the plain socket out for a TLS handshake, leaving [`Stream::Closed`] (`None`: it
    /// is not a plain socket).
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Stream::Closed) {
            Stream::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The common name of the certificate a TLS client presented (and the acceptor verified).
    pub fn peer_common_name(&self) -> Option<String> {
        let Stream::FromClient(s) = self else {
            return None;
        };
        let der = s.get_ref().1.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let cn = cert.subject().iter_common_name().next()?;
        cn.as_str().ok().map(str::to_owned)
    }

    /// Writes what can be written now, without waiting. `Ok(n)`: the first `n` bytes are taken;
    /// on TLS they may still sit encrypted in the session until a flush (see
    /// [`Stream::flushed_now`]).
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.try_write(buf),
            _ => match self.poll_now(|s, cx| Pin::new(s).poll_write(cx, buf)) {
                Poll::Ready(r) => r,
                Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }

    /// True if nothing written is left in the TLS session (always, for a plain socket);
    /// pushes out what the socket takes now, without waiting.
    pub fn flushed_now(&mut self) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(true),
            _ => match self.poll_now(|s, cx| Pin::new(s).poll_flush(cx)) {
                Poll::Ready(r) => r.map(|()| true),
                Poll::Pending => Ok(false),
            },
        }
    }

    /// One poll with a waker that does nothing: for a try that falls back to a real wait,
    /// which registers the task's waker again.
    fn poll_now<T>(&mut self, f: impl FnOnce(&mut Self, &mut Context<'_>) -> Poll<T>) -> Poll<T> {
        f(self, &mut Context::from_waker(std::task::Waker::noop()))
    }

    /// True if the connection still looks usable while idle: nothing has arrived (an idle
    /// server or client sends nothing unasked; an EOF, an error or an unsolicited message
    /// means it is gone). Looks without taking any byte, so TLS records stay intact.
    pub fn idle_and_open(&self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.tcp()
            .is_some_and(|tcp| matches!(tcp.poll_peek(&mut cx, &mut buf), Poll::Pending))
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::ToServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::FromClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::ToServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::FromClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::ToServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::FromClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::ToServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::FromClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Closed => Poll::Ready(Ok(())),
        }
    }
}
