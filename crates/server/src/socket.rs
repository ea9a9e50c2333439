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
