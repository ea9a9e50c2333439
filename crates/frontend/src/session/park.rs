//! A session's side of parking (`crate::parking`): when an idle session may park, how it leaves
//! its task for the lot, and how a new task takes it up again.

use super::run::{Link, Session};
use crate::SessionError;
use crate::parking::{Parkable, Resume};
use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;
use switchyard_tls::Stream;

/// A parked session: the session, its client's socket out of tokio, and when its
/// `client_idle_timeout` is due.
pub(crate) struct Parked {
    session: Box<Session>,
    socket: std::net::TcpStream,
    idle_deadline: Option<Instant>,
}

impl Parkable for Parked {
    fn socket(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    fn idle_deadline(&self) -> Option<Instant> {
        self.idle_deadline
    }

    fn resume(self, why: Resume) -> impl Future<Output = ()> + Send + 'static {
        serve_parked(self, why)
    }
}

/// Whether a session asked to park can now: transaction pooling's state between transactions
/// (nothing attached, nothing half-read, no reply owed), a plain socket, not listening.
pub(super) fn may_park(session_link: &Link, owes_ready: bool, pending_output: bool) -> bool {
    matches!(session_link, Link::Detached) && !owes_ready && !pending_output
}

/// Runs a logged-in session until it ends, or parks it when it asks to (see
/// `Session::poll_idle`).
pub(crate) async fn serve_session(mut session: Box<Session>) {
    let result = session.run().await;
    // Boxed: only the session's end needs its state, not every idle client's task.
    Box::pin(end_or_park(session, result)).await;
}

async fn end_or_park(mut session: Box<Session>, result: Result<(), SessionError>) {
    if let Err(SessionError::Parked { idle_deadline }) = result {
        match park(&mut session) {
            Ok(socket) => {
                let proxy = (*session.proxy).clone();
                session.info.cancel.parked();
                proxy.parking.park(Parked {
                    session,
                    socket,
                    idle_deadline,
                });
                return;
            }
            Err(e) => {
                Box::pin(session.close(Err(SessionError::ClientGone(e)))).await;
                return;
            }
        }
    }
    Box::pin(session.close(result)).await;
}

/// Takes the client's socket out of tokio (dropping its registration).
fn park(session: &mut Session) -> std::io::Result<std::net::TcpStream> {
    match std::mem::replace(&mut session.client.stream, Stream::Closed) {
        Stream::Plain(tcp) => tcp.into_std(),
        other => {
            // `poll_idle` parks plain sockets only.
            session.client.stream = other;
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }
}

/// A parked session's new task: its socket back in tokio, then the relay loop again.
pub(super) async fn serve_parked(parked: Parked, why: Resume) {
    let Parked {
        mut session,
        socket,
        ..
    } = parked;
    session.info.cancel.unparked();
    let result = match tokio::net::TcpStream::from_std(socket) {
        Ok(tcp) => {
            session.client.stream = Stream::Plain(tcp);
            match why {
                Resume::IdleTimeout => Err(SessionError::IdleTimeout {
                    limit: session.idle_limit().unwrap_or_default(),
                }),
                Resume::Readable | Resume::Shutdown => session.run().await,
            }
        }
        Err(e) => Err(SessionError::ClientGone(e)),
    };
    Box::pin(end_or_park(session, result)).await;
}
