//! The relay loop of one logged-in client.
//!
//! A session is in one of four states ([`Link`]): `Detached` (no server connection; waiting
//! for the client's next request), `Attached` (a pooled connection at the current primary and
//! the relay state for it), `FailedTransaction` (the client's transaction died with its
//! server; Switchyard answers the client itself until it ends the transaction, see `abort.rs`)
//! or `Rebuilding` (session mode: its server was lost and what it built goes to the next
//! primary first, see `rebuild.rs`). `attach`, `detach`, `abort` and `rebuild` are the
//! transitions; one step of the relay while attached is `step.rs`'s. In transaction mode the
//! session detaches at the end of every transaction; in session mode it stays attached until
//! the client leaves.

use super::listen::Listened;
use super::login::LoggedIn;
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::relay::{Fatal, Relay, is_frontend_tag};
use crate::SessionError;
use crate::client::ClientConn;
use crate::proxy::Admitted;
use crate::statements::Statements;
use bytes::BytesMut;
use std::sync::Arc;
use std::task::{Context, Poll};
use switchyard_config::PoolMode;
use switchyard_pool::{Pool, Pooled};
use switchyard_proto::backend::{self, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_proto::{ProtoError, decode_frame, peek_header};
use switchyard_server::{ServerConn, ServerError};
use switchyard_tls::Stream;
use switchyard_topology::{ClusterMonitor, Stripe};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// Where a session's requests go; see the module comment.
pub(super) enum Link {
    Detached,
    Attached {
        /// Knows its pool: [`Pooled::pool`].
        server: Pooled,
        generation: u64,
        since: Instant,
    },
    /// `told`: the client has already been sent the 40001 for it. `rebuild`: session mode,
    /// what the session had built, rebuilt on the next primary once the client ends the
    /// transaction (`rebuild.rs`).
    FailedTransaction {
        told: bool,
        rebuild: Option<Box<switchyard_server::BuiltState>>,
    },
    /// Session mode: the server was lost between the session's transactions. What it had
    /// built is replayed on a connection at the next primary before anything else
    /// (`rebuild.rs`).
    Rebuilding(Box<switchyard_server::BuiltState>),
}

impl Link {
    /// While attached: the server connection, its generation and when the attachment began.
    pub(super) fn attached_mut(&mut self) -> Option<(&mut Pooled, u64, Instant)> {
        match self {
            Link::Attached {
                server,
                generation,
                since,
            } => Some((server, *generation, *since)),
            _ => None,
        }
    }
}

/// Resolves once the cluster's generation is no longer `generation`; never, without a monitor
/// or once the monitor has stopped (process exit).
///
/// Cancel safety: cancel-safe.
pub(super) async fn generation_moved_past(rx: &mut Option<watch::Receiver<u64>>, generation: u64) {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        if *rx.borrow_and_update() != generation {
            return;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Where the counters this server connection's transactions update go (see [`Stripe`]).
pub(super) fn stripe_of(conn: &ServerConn) -> Stripe {
    Stripe::of(conn.key().process_id)
}

/// Why an attached server connection is gone.
#[derive(Debug)]
pub(super) enum Lost {
    /// The cluster's topology changed (new primary, or none): connections of the old generation
    /// are abandoned at once, without waiting for TCP to notice anything.
    Generation,
    Socket(ServerError),
    /// The first write of an attachment failed: the server never saw the request.
    NeverSent(ServerError),
    /// The server ended the connection (FATAL 57P0x: a shutdown, or the backend terminated).
    GoingAway,
    /// The same in session mode, with the server's FATAL held (`Relay::held_fatal`).
    SessionEnded,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Generation => f.write_str("the cluster's primary changed"),
            Lost::Socket(e) => write!(f, "{e}"),
            Lost::NeverSent(e) => write!(f, "{e} (before the request was sent)"),
            Lost::GoingAway | Lost::SessionEnded => {
                f.write_str("the server ended the connection (shutdown or termination)")
            }
        }
    }
}

pub struct Session {
    pub(super) proxy: Admitted,
    pub(super) client: ClientConn,
    pub(super) info: LoggedIn,
    pub(crate) statements: Statements,
    pub(super) link: Link,
    /// Relay state of the current attachment; reset (not reallocated) on every attach.
    pub(super) relay: Relay,
    /// What the relay rewrote or dropped, when it could not forward the buffer read.
    pub(super) out: BytesMut,
    /// The client's span, boxed when enabled (debug level): a disabled one takes no room.
    pub(super) span: Option<Box<tracing::Span>>,
    pub(super) monitor: Option<Arc<ClusterMonitor>>,
    /// Nothing has been written on the current attachment yet: if the first write fails, the
    /// server never saw the request, which can go back to the gate.
    pub(super) fresh: bool,
    /// The attachment's only request so far, as the client sent it, while it is unanswered and
    /// cannot have changed anything (a lone `BEGIN`, a driver's Parse/Describe/Sync): if the
    /// server is lost now, it goes back to the gate instead of failing.
    pub(super) replay: Option<Box<[u8]>>,
    /// The pool last used, reused while its server stays the primary.
    pub(super) last_pool: Option<Arc<Pool>>,
    /// The generation `last_pool` was chosen in: while it is current, so is the pool.
    pub(super) last_generation: u64,
    /// A ReadyForQuery owed to the client at its next Sync (after an aborted extended batch).
    pub(super) owe_ready_at_sync: Option<TxStatus>,
}

impl Session {
    pub(crate) fn new(
        proxy: Admitted,
        client: ClientConn,
        info: LoggedIn,
        span: tracing::Span,
    ) -> Self {
        let relay = Relay::new(info.settings.mode);
        let monitor = proxy.router.monitor(&info.target.cluster);
        Self {
            proxy,
            client,
            info,
            statements: Statements::default(),
            link: Link::Detached,
            relay,
            out: BytesMut::new(),
            span: (!span.is_disabled()).then(|| Box::new(span)),
            monitor,
            owe_ready_at_sync: None,
            fresh: false,
            replay: None,
            last_pool: None,
            last_generation: 0,
        }
    }

    /// The client's span (a disabled one when its level is off).
    pub(super) fn span(&self) -> &tracing::Span {
        static DISABLED: std::sync::LazyLock<tracing::Span> =
            std::sync::LazyLock::new(tracing::Span::none);
        self.span.as_deref().unwrap_or(&DISABLED)
    }

    /// The longest new work waits in the failover gate (read live: a reload applies to every
    /// client's next request).
    pub(super) fn failover_timeout(&self) -> std::time::Duration {
        self.proxy.failover_timeout()
    }

    /// A watch of the cluster's generation (a fresh receiver: sessions keep none while idle).
    pub(super) fn generations(&self) -> Option<watch::Receiver<u64>> {
        self.monitor.as_ref().map(|m| m.generations())
    }

    pub(super) fn mode(&self) -> PoolMode {
        self.info.settings.mode
    }

    /// Runs until the client leaves (`Ok`) or the session must end (`Err`, told to the client
    /// by [`Session::finish`]).
    pub async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            if let Link::Attached { .. } = self.link {
                // Boxed: the relay's state is large and only needed while attached, so an idle
                // session task stays small. One allocation per transaction.
                if Box::pin(self.serve_attached()).await? {
                    return Ok(());
                }
                continue;
            }
            if let Link::Rebuilding(_) = self.link {
                Box::pin(self.rebuild()).await?;
                continue;
            }
            let Some(h) = peek_header(&self.client.buf, self.client.max_message())? else {
                self.client.shed_buffer();
                if self.out.capacity() > 0 {
                    self.out.clear();
                    self.client.buffers().give(std::mem::take(&mut self.out));
                }
                if !self.idle().await? {
                    return Ok(());
                }
                continue;
            };
            if !is_frontend_tag(h.tag) {
                return Err(ProtoError::Unexpected {
                    tag: h.tag as char,
                    during: "a session",
                }
                .into());
            }
            if h.tag == fe::TERMINATE {
                return Ok(());
            }
            if self.client.buf.len() < h.wire_len && matches!(self.link, Link::Detached) {
                // Not a server connection for a message still arriving: it is relayed whole
                // anyway, and a client that sends a header and stalls would hold a pool slot.
                if !self.idle().await? {
                    return Ok(());
                }
                continue;
            }
            if self.mode() == PoolMode::Transaction
                && matches!(self.link, Link::Detached)
                && self.owe_ready_at_sync.is_none()
                && matches!(
                    h.tag,
                    fe::QUERY | fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE
                )
                && super::listen::may_be_listen_flight(
                    &self.client.buf,
                    h.wire_len,
                    self.info.cancel.inbox().is_some_and(|i| i.has_prepared()),
                )
            {
                match Box::pin(self.try_listen()).await? {
                    Listened::No => {}
                    Listened::Done => continue,
                    Listened::ClientLeft => return Ok(()),
                }
            }
            // Each of these is boxed so that its state does not live in every idle session's task.
            if self.owe_ready_at_sync.is_some() {
                Box::pin(self.drain_to_sync()).await?;
            } else if let Link::FailedTransaction { .. } = self.link {
                Box::pin(self.answer_failed_transaction()).await?;
            } else if self.try_attach_now() {
                // Attached without waiting.
            } else if let Err(e) = Box::pin(self.attach()).await {
                Box::pin(self.refuse_request(e)).await?;
            }
        }
    }

    /// [`Session::wait_idle`]; a shutdown that is an online restart's moves the session to
    /// the new process if it can (`SessionError::HandedOver`).
    ///
    /// Notifications waiting for the client go out first (it is between transactions, when
    /// PostgreSQL delivers them); mail that arrives during the wait ends it, so the caller's
    /// next idle wait delivers it.
    pub(super) async fn idle(&mut self) -> Result<bool, SessionError> {
        if self.info.cancel.inbox().is_some() {
            Box::pin(self.deliver_notifications()).await?;
        }
        match self.wait_idle().await {
            Err(SessionError::Shutdown) => Err(self.hand_over()),
            other => other,
        }
    }

    /// The idle wait: the client's next bytes (`Ok(false)`: it left), shutdown, or a request to
    /// park (`SessionError::Parked`, see `park.rs`). Every idle client's task holds this future,
    /// so it is one poll function over the socket alone: the shutdown and the parking sweep wake
    /// the task through the waker kept in its registration (no waiter node to add and remove on
    /// every wait).
    ///
    /// Cancel safety: cancel-safe.
    async fn wait_idle(&mut self) -> Result<bool, SessionError> {
        match self.idle_limit() {
            None => self.poll_idle().await,
            // Boxed: the timer is only in the tasks of clients that have one.
            Some(limit) => Box::pin(self.poll_idle_for(limit)).await,
        }
    }

    /// [`Session::poll_idle`] for at most `limit`.
    ///
    /// Cancel safety: cancel-safe.
    async fn poll_idle_for(&mut self, limit: std::time::Duration) -> Result<bool, SessionError> {
        let deadline = Instant::now() + limit;
        match tokio::time::timeout_at(deadline, self.poll_idle()).await {
            Ok(Err(SessionError::Parked { .. })) => Err(SessionError::Parked {
                idle_deadline: Some(deadline.into_std()),
            }),
            Ok(r) => r,
            Err(_) => Err(SessionError::IdleTimeout { limit }),
        }
    }

    /// `client_idle_timeout`, if the session has one.
    pub(super) fn idle_limit(&self) -> Option<std::time::Duration> {
        self.info.settings.client_idle_timeout.limit()
    }

    /// [`Session::wait_idle`] without a limit.
    ///
    /// Cancel safety: cancel-safe.
    async fn poll_idle(&mut self) -> Result<bool, SessionError> {
        // A move closure over one pointer: every idle client's task holds it.
        let this = &mut *self;
        std::future::poll_fn(move |cx| this.poll_idle_once(cx)).await
    }

    /// One look at what an idle session waits for: shutdown, notifications to deliver, the
    /// client's next bytes, or (with none) a request to park.
    fn poll_idle_once(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, SessionError>> {
        let cancel = &self.info.cancel;
        if self.proxy.poll_stopping(cancel, cx).is_ready() {
            return Poll::Ready(Err(SessionError::Shutdown));
        }
        if let Some(inbox) = cancel.inbox()
            && inbox.poll_mail(cx).is_ready()
        {
            // Notifications to deliver: the caller's loop does.
            return Poll::Ready(Ok(true));
        }
        let filled = self.client.poll_fill(cx);
        // Only with nothing to read: a client whose bytes are here is not idle.
        if filled.is_pending() && cancel.asked_to_park() {
            if !matches!(self.client.stream, Stream::Plain(_)) {
                cancel.can_never_park();
            } else if self.client.buf.is_empty()
                && cancel.inbox().is_none()
                && super::park::may_park(self)
            {
                return Poll::Ready(Err(SessionError::Parked {
                    idle_deadline: None,
                }));
            } else {
                cancel.cannot_park_now();
            }
        }
        filled
    }

    /// Gives the server connection back (or closes it if it is not at a clean sync point).
    pub(super) fn detach(&mut self) {
        let now = Instant::now();
        let attached_for = self
            .link
            .attached_mut()
            .map_or(std::time::Duration::ZERO, |(_, _, since)| now - since);
        self.detach_at(now, attached_for);
    }

    /// [`Session::detach`] with the time already read, and how long it has been attached then
    /// (already known where a request's answer ends: one clock read and one subtraction).
    pub(super) fn detach_at(&mut self, now: Instant, attached_for: std::time::Duration) {
        self.info.cancel.unlink();
        let transaction_mode = self.mode() == PoolMode::Transaction;
        let Link::Attached { mut server, .. } = std::mem::replace(&mut self.link, Link::Detached)
        else {
            return;
        };
        if let Some(m) = &self.monitor {
            let stripe = stripe_of(&server.conn);
            m.request_finished(&server.conn.addr, stripe);
            m.counters()
                .transaction(attached_for, u64::from(self.relay.answered), stripe);
        }
        if transaction_mode && self.relay.listened {
            self.warn_listen_in_transaction();
        }
        if transaction_mode {
            // Every ParameterStatus went to both maps: they still match.
            server.conn.settings_fingerprint = self.info.params.fingerprint();
        }
        let clean = self.relay.at_sync_point()
            && server.conn.read_buf.is_empty()
            && self.relay.server_fatal.is_none()
            && !self.relay.discard;
        if clean {
            server.release_at(now.into_std());
        } else {
            drop(server);
        }
    }

    /// A request that could not get a server: its messages up to the next Sync (or the Query)
    /// are dropped and the client gets the error and ReadyForQuery; the connection stays usable.
    pub(super) async fn refuse_request(&mut self, e: SessionError) -> Result<(), SessionError> {
        let Some(fields) = e.to_client() else {
            return Err(e);
        };
        if fields.is_fatal() {
            return Err(e);
        }
        tracing::info!(parent: self.span(), error = %e, "request refused");
        self.skip_request().await?;
        self.client
            .send(&[fields.to_frame(), backend::ready_for_query(TxStatus::Idle)])
            .await
    }

    /// Reads and drops the client's frames through the next Sync, Query or FunctionCall.
    pub(super) async fn skip_request(&mut self) -> Result<(), SessionError> {
        loop {
            let max = self.client.max_message();
            let Some(f) = decode_frame(&mut self.client.buf, max)? else {
                if !self.client.fill().await? {
                    return Err(SessionError::ClientGone(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                continue;
            };
            match f.tag {
                fe::TERMINATE => {
                    return Err(SessionError::ClientGone(
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                fe::SYNC | fe::QUERY | fe::FUNCTION_CALL => return Ok(()),
                _ => {}
            }
        }
    }

    /// Who this session is, for log lines.
    pub fn describe(&self) -> String {
        let peer = self
            .client
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let t = &self.info.target;
        format!(
            "{}@{} from {peer} (key {})",
            t.user.name, t.server_db, self.info.cancel.process_id
        )
    }

    /// Logs how the session ended, then [`Session::finish`]es it.
    pub async fn close(&mut self, result: Result<(), SessionError>) {
        let who = self.describe();
        let span = self.span().clone();
        match &result {
            Ok(()) => tracing::debug!(parent: &span, %who, "client left"),
            Err(SessionError::ClientGone(e)) => {
                tracing::debug!(parent: &span, %who, error = %e, "client gone")
            }
            Err(SessionError::HandedOver) => {
                tracing::debug!(parent: &span, %who, "handed over to the new process")
            }
            Err(e @ SessionError::ClientStalled { .. }) => {
                tracing::warn!(parent: &span, %who, error = %e, "session ended")
            }
            Err(e) => tracing::info!(parent: &span, %who, error = %e, "session ended"),
        }
        self.finish(result.err()).instrument(span).await;
    }

    /// Ends the session: tells the client why (if it is still there) and returns or closes the
    /// server connection. Session mode resets a connection before another client gets it.
    pub async fn finish(&mut self, error: Option<SessionError>) {
        let mid_message =
            matches!(&self.link, Link::Attached { server, .. } if server.conn.passthrough > 0);
        if let Some(fatal) = error.as_ref().and_then(SessionError::to_client_fatal)
            && !mid_message
        {
            // (Not after part of a row: the client could not read it.)
            self.client.send_error(&fatal).await;
        }
        let session_mode = self.mode() == PoolMode::Session;
        let relay = &mut self.relay;
        let Link::Attached { server, .. } = &mut self.link else {
            return;
        };
        // What this client built goes with it (the reset below undoes it on the server).
        server.conn.built = None;
        let clean = relay.at_sync_point()
            && !relay.busy()
            && server.conn.read_buf.is_empty()
            && relay.server_fatal.is_none()
            && !relay.discard;
        if clean && session_mode {
            let reset = self.info.settings.server_reset_query.clone();
            let ok = matches!(
                tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, server.conn.run(&reset)).await,
                Ok(Ok(TxStatus::Idle))
            );
            if ok {
                server.conn.prepared.clear();
                server.conn.settings_fingerprint = 0;
                server
                    .conn
                    .params
                    .retain(|k, _| self.info.welcome.contains_key(k));
            } else {
                relay.server_fatal = Some(Fatal::Other);
            }
        }
        self.detach();
    }
}
