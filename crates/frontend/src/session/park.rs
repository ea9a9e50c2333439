//! A session's side of parking (`crate::parking`): when an idle session may park, how it leaves
//! its task for the lot, and how a new task takes it up again.

use super::login::LoggedIn;
use super::relay::Relay;
use super::run::{Link, Session};
use crate::SessionError;
use crate::client::ParkedClient;
use crate::parking::{Parkable, Resume};
use crate::proxy::Admitted;
use crate::statements::Statements;
use bytes::BytesMut;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;
use switchyard_pool::Pool;
use switchyard_tls::Stream;
use switchyard_topology::ClusterMonitor;

/// A parked session: what it keeps while dormant, its client's socket out of tokio, and when
/// its `client_idle_timeout` is due.
pub(crate) struct Parked {
    session: Box<Dormant>,
    socket: std::net::TcpStream,
    idle_deadline: Option<Instant>,
}

/// What a session keeps while parked: what it was given at login and has built since, not the
/// state of an attachment (none is open) or its buffers (empty). 144 bytes instead of the
/// session's 368.
struct Dormant {
    proxy: Admitted,
    client: ParkedClient,
    info: LoggedIn,
    statements: Statements,
    span: Option<Box<tracing::Span>>,
    monitor: Option<Arc<ClusterMonitor>>,
    last_pool: Option<Arc<Pool>>,
    last_generation: u64,
}

impl Dormant {
    /// The session, between transactions, as it was when it parked (see [`may_park`]).
    fn wake(self, stream: Stream) -> Box<Session> {
        let relay = Relay::new(self.info.settings.mode);
        Box::new(Session {
            proxy: self.proxy,
            client: self.client.resume(stream),
            info: self.info,
            statements: self.statements,
            link: Link::Detached,
            relay,
            out: BytesMut::new(),
            span: self.span,
            monitor: self.monitor,
            fresh: false,
            replay: None,
            last_pool: self.last_pool,
            last_generation: self.last_generation,
            owe_ready_at_sync: None,
        })
    }
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

/// Whether a session asked to park can now, as far as its link goes: between transactions
/// (nothing attached, no reply owed, no request held for replay, nothing rewritten waiting to be
/// sent). `poll_idle_once` checks the rest: a plain socket, nothing unread, not listening.
pub(super) fn may_park(session: &Session) -> bool {
    matches!(session.link, Link::Detached)
        && session.owe_ready_at_sync.is_none()
        && session.replay.is_none()
        && session.out.is_empty()
}

/// Runs a logged-in session until it ends, or parks it when it asks to (see
/// `Session::poll_idle`).
pub(crate) async fn serve_session(mut session: Box<Session>) {
    let result = session.run().await;
    // Boxed: only the session's end needs its state, not every idle client's task.
    Box::pin(end_or_park(session, result)).await;
}

async fn end_or_park(mut session: Box<Session>, result: Result<(), SessionError>) {
    let Err(SessionError::Parked { idle_deadline }) = result else {
        Box::pin(session.close(result)).await;
        return;
    };
    if !matches!(session.client.stream, Stream::Plain(_)) {
        // `poll_idle_once` parks plain sockets only.
        let error = std::io::ErrorKind::Unsupported.into();
        Box::pin(session.close(Err(SessionError::ClientGone(error)))).await;
        return;
    }
    let proxy = Arc::clone(&session.proxy);
    let (stream, dormant) = session.into_dormant();
    let Stream::Plain(tcp) = stream else {
        unreachable!("checked above")
    };
    match tcp.into_std() {
        Ok(socket) => {
            dormant.info.cancel.parked();
            proxy.parking.park(Parked {
                session: dormant,
                socket,
                idle_deadline,
            });
        }
        Err(e) => {
            // Its socket is gone with the failed deregistration: nobody to tell.
            tracing::debug!(error = %e, "a client could not be parked; it is closed");
        }
    }
}

impl Session {
    /// The session without its attachment state and socket (see [`Dormant`]).
    fn into_dormant(self: Box<Self>) -> (Stream, Box<Dormant>) {
        let this = *self;
        let (stream, client) = this.client.park();
        let dormant = Box::new(Dormant {
            proxy: this.proxy,
            client,
            info: this.info,
            statements: this.statements,
            span: this.span,
            monitor: this.monitor,
            last_pool: this.last_pool,
            last_generation: this.last_generation,
        });
        (stream, dormant)
    }
}

/// A parked session's new task: its socket back in tokio, then the relay loop again.
///
/// The session is served boxed: an async fn keeps its arguments for its whole life, and the
/// parked record would push the task past its size class (`sizes.rs`); one allocation per wake.
pub(super) async fn serve_parked(parked: Parked, why: Resume) {
    match wake(parked, why) {
        Ok(session) => Box::pin(serve_session(session)).await,
        Err((session, error)) => Box::pin(end_or_park(session, Err(error))).await,
    }
}

/// The session of a parked record, with its socket back in tokio; with the error that ends it
/// instead, if it is not to run.
#[allow(clippy::type_complexity)]
fn wake(parked: Parked, why: Resume) -> Result<Box<Session>, (Box<Session>, SessionError)> {
    let Parked {
        session: dormant,
        socket,
        ..
    } = parked;
    dormant.info.cancel.unparked();
    match tokio::net::TcpStream::from_std(socket) {
        Err(e) => Err((dormant.wake(Stream::Closed), SessionError::ClientGone(e))),
        Ok(tcp) => {
            let session = dormant.wake(Stream::Plain(tcp));
            match why {
                Resume::IdleTimeout => {
                    let limit = session.idle_limit().unwrap_or_default();
                    Err((session, SessionError::IdleTimeout { limit }))
                }
                Resume::Readable | Resume::Shutdown => Ok(session),
            }
        }
    }
}
