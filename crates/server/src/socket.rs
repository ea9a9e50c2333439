//! TCP options on every server socket: keepalive and TCP_USER_TIMEOUT are the kernel-level
//! backstop against a server that vanished without closing its sockets.

use std::time::Duration;
use tokio::net::TcpStream;

#[derive(Debug, Clone, PartialEq)]
pub struct SocketOptions {
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    pub tcp_user_timeout: Duration,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            keepalive_idle: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(1),
            keepalive_count: 3,
            tcp_user_timeout: Duration::from_secs(10),
        }
    }
}

impl SocketOptions {
    pub fn apply(&self, stream: &TcpStream) -> std::io::Result<()> {
        let sock = socket2::SockRef::from(stream);
        sock.set_tcp_nodelay(true)?;
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.keepalive_idle)
            .with_interval(self.keepalive_interval)
            .with_retries(self.keepalive_count);
        sock.set_tcp_keepalive(&ka)?;
        sock.set_tcp_user_timeout(Some(self.tcp_user_timeout))?;
        Ok(())
    }
}

/// A second handle on a server connection's socket (a `dup` made once at connect), so that the
/// pool can cut a checked-out connection off from outside the task using it: after
/// [`Closer::shut_down`] the session's pending read returns end-of-file at once, and writes fail.
/// This is how a topology change reaches the requests in flight on the old primary, without
/// every request registering a waker somewhere.
#[derive(Clone)]
pub struct Closer(std::sync::Arc<std::os::fd::OwnedFd>);

impl Closer {
    pub fn new(stream: &TcpStream) -> std::io::Result<Self> {
        use std::os::fd::AsFd;
        Ok(Self(std::sync::Arc::new(
            stream.as_fd().try_clone_to_owned()?,
        )))
    }

    /// Shuts the socket down both ways (the connection's own handle stays open until it is
    /// dropped, so nothing else can get this descriptor's number meanwhile).
    pub fn shut_down(&self) {
        let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Both);
    }
}

impl std::fmt::Debug for Closer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Closer")
    }
}
