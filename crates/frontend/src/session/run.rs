//! The relay loop of one logged-in client.
//!
//! A session is in one of three states ([`Link`]): `Detached` (no server connection; waiting
//! for the client's next request), `Attached` (a pooled connection at the current primary and
//! the relay state for it), or `FailedTransaction` (the client's transaction died with its
//! server; Switchyard answers the client itself until it ends the transaction, see `abort.rs`).
//! `attach`, `detach` and `abort` are the transitions. In transaction mode the session detaches
//! at the end of every transaction; in session mode it stays attached until the client leaves.

use super::login::{LoggedIn, primary_pool};
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::relay::{ClientStep, Fatal, Relay, ServerSide, is_frontend_tag};
use crate::cancel::CancelTarget;
use crate::client::ClientConn;
use crate::statements::Statements;
use crate::{Proxy, SessionError};
use bytes::BytesMut;
use std::sync::Arc;
use switchyard_config::PoolMode;
use switchyard_pool::{Pool, Pooled};
use switchyard_proto::backend::{self, ErrorFields, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_proto::{ProtoError, decode_frame, peek_header};
use switchyard_server::ServerError;
use switchyard_topology::ClusterMonitor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

// One Link lives per session and `Attached` is its normal state: boxing it would allocate per
// transaction for nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Link {
    Detached,
    Attached {
        server: Pooled,
        pool: Arc<Pool>,
        generation: u64,
    },
    /// `told`: the client has already been sent the 40001 for it.
    FailedTransaction {
        told: bool,
    },
}

/// Why an attached server connection is gone.
#[derive(Debug)]
pub(super) enum Lost {
    /// The cluster's topology changed (new primary, or none): connections of the old generation
    /// are abandoned at once, without waiting for TCP to notice anything.
    Generation,
    Socket(ServerError),
    /// The server announced it is shutting down (FATAL 57P0x).
    GoingAway,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Generation => f.write_str("the cluster's primary changed"),
            Lost::Socket(e) => write!(f, "{e}"),
            Lost::GoingAway => f.write_str("the server is shutting down"),
        }
    }
}

enum Flow {
    Continue,
    ClientLeft,
    Lost(Lost),
}

pub struct Session {
    pub(super) proxy: Arc<Proxy>,
    pub(super) client: ClientConn,
    pub(super) info: LoggedIn,
    pub(super) statements: Statements,
    pub(super) link: Link,
    /// Relay state of the current attachment; reset (not reallocated) on every attach.
    pub(super) relay: Relay,
    out: BytesMut,
    pub(super) span: tracing::Span,
    pub(super) monitor: Option<ClusterMonitor>,
    generations: Option<watch::Receiver<u64>>,
    /// A ReadyForQuery owed to the client at its next Sync (after an aborted extended batch).
    pub(super) owe_ready_at_sync: Option<TxStatus>,
}

impl Session {
    pub fn new(proxy: Arc<Proxy>, client: ClientConn, info: LoggedIn, span: tracing::Span) -> Self {
        let relay = Relay::new(info.settings.mode);
        let monitor = proxy.router.monitor(&info.target.cluster);
        let generations = monitor.as_ref().map(ClusterMonitor::generations);
        Self {
            proxy,
            client,
            info,
            statements: Statements::default(),
            link: Link::Detached,
            relay,
            out: BytesMut::with_capacity(8192),
            span,
            monitor,
            generations,
            owe_ready_at_sync: None,
        }
    }

    pub(super) fn mode(&self) -> PoolMode {
        self.info.settings.mode
    }

    /// Runs until the client leaves (`Ok`) or the session must end (`Err`, told to the client
    /// by [`Session::finish`]).
    pub async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            if let Link::Attached { .. } = self.link {
                match self.relay_once().await? {
                    Flow::Continue => {}
                    Flow::ClientLeft => return Ok(()),
                    Flow::Lost(cause) => self.abort(cause).await?,
                }
                continue;
            }
            let Some(h) = peek_header(&self.client.buf, self.client.max_message)? else {
                tokio::select! {
                    biased;
                    more = self.client.fill() => if !more? { return Ok(()) },
                    _ = self.proxy.shutdown.cancelled() => return Err(SessionError::Shutdown),
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
            if self.owe_ready_at_sync.is_some() {
                self.drain_to_sync().await?;
            } else if let Link::FailedTransaction { .. } = self.link {
                self.answer_failed_transaction().await?;
            } else if let Err(e) = self.attach().await {
                self.refuse_request(e).await?;
            }
        }
    }

    /// Forwards what the client has sent, waits for either side (or a topology change),
    /// forwards what the server sent, and detaches at the end of a transaction (transaction mode).
    async fn relay_once(&mut self) -> Result<Flow, SessionError> {
        let relay = &mut self.relay;
        let Link::Attached {
            server, generation, ..
        } = &mut self.link
        else {
            return Ok(Flow::Continue);
        };
        let generation = *generation;
        let conn = &mut server.conn;
        self.out.clear();
        let mut side = ServerSide {
            params: &mut conn.params,
            prepared: &mut conn.prepared,
        };
        let step = relay.client_to_server(
            &mut self.client.buf,
            self.client.max_message,
            &mut self.statements,
            &mut side,
            &mut self.out,
        )?;
        if !self.out.is_empty()
            && let Err(e) = conn.stream.write_all(&self.out).await
        {
            return Ok(Flow::Lost(Lost::Socket(e.into())));
        }
        if step == ClientStep::Terminate {
            return Ok(Flow::ClientLeft);
        }
        let generations = &mut self.generations;
        let topology_changed = async {
            match generations {
                Some(rx) => loop {
                    if rx.changed().await.is_err() {
                        // The monitor stopped (process exit): no more news.
                        std::future::pending::<()>().await;
                    }
                    if *rx.borrow_and_update() != generation {
                        return;
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            r = conn.stream.read_buf(&mut conn.read_buf) => match r {
                Ok(0) => return Ok(Flow::Lost(Lost::Socket(ServerError::Closed))),
                Ok(_) => {}
                Err(e) => return Ok(Flow::Lost(Lost::Socket(e.into()))),
            },
            () = topology_changed => return Ok(Flow::Lost(Lost::Generation)),
            // Idle between transactions while attached (session mode): shutdown ends it now.
            _ = self.proxy.shutdown.cancelled(), if relay.at_sync_point() => {
                return Err(SessionError::Shutdown);
            }
            r = self.client.stream.read_buf(&mut self.client.buf) => {
                return match r {
                    Ok(0) => Ok(Flow::ClientLeft),
                    Ok(_) => Ok(Flow::Continue),
                    Err(e) => Err(SessionError::ClientGone(e)),
                };
            }
        }
        self.out.clear();
        let mut side = ServerSide {
            params: &mut conn.params,
            prepared: &mut conn.prepared,
        };
        let saw_ready = relay.server_to_client(
            &mut conn.read_buf,
            &mut self.info.params,
            &mut side,
            &mut self.out,
        )?;
        if !self.out.is_empty() {
            self.client.write(&self.out).await?;
        }
        if std::mem::take(&mut relay.evidence)
            && let Some(m) = &self.monitor
        {
            m.suspect(&conn.addr);
        }
        match relay.server_fatal {
            Some(Fatal::ServerGoingAway) => return Ok(Flow::Lost(Lost::GoingAway)),
            Some(Fatal::Other) => return Err(SessionError::EndedByServer),
            None => {}
        }
        if saw_ready && relay.releases() {
            self.detach();
        } else if saw_ready && relay.at_sync_point() && self.proxy.shutdown.is_cancelled() {
            return Err(SessionError::Shutdown);
        }
        Ok(Flow::Continue)
    }

    /// Takes a server connection at the current primary (waiting in the failover gate if there
    /// is none) and brings its settings in line with the client's.
    async fn attach(&mut self) -> Result<(), SessionError> {
        let (pool, generation) = primary_pool(
            &self.proxy,
            &self.info.target,
            &self.info.settings,
            self.info.failover_timeout,
        )
        .await?;
        let mut server = pool
            .checkout(self.info.settings.query_wait_timeout.get(), generation)
            .await?;
        let same_settings = server.conn.settings_fingerprint == self.info.params.fingerprint();
        let sync = if same_settings {
            None
        } else {
            self.info
                .params
                .sync_sql(&server.conn.params, &self.info.welcome)
        };
        if let Some(sql) = sync {
            match tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, server.conn.run(&sql)).await {
                Ok(Ok(_)) => self
                    .info
                    .params
                    .apply_to(&mut server.conn.params, &self.info.welcome),
                Ok(Err(e @ ServerError::Query(_))) => {
                    pool.release(server);
                    return Err(SessionError::Server(e));
                }
                Ok(Err(e)) => {
                    pool.discard(server);
                    return Err(SessionError::Server(e));
                }
                Err(_) => {
                    pool.discard(server);
                    return Err(SessionError::Server(ServerError::Timeout {
                        addr: pool.addr().to_string(),
                        what: "setting session parameters",
                        after_ms: INTERNAL_QUERY_TIMEOUT.as_millis(),
                    }));
                }
            }
        }
        server.conn.settings_fingerprint = self.info.params.fingerprint();
        self.info.cancel.set(Some(CancelTarget {
            addr: server.conn.addr.clone(),
            key: server.conn.key.clone(),
        }));
        if let Some(m) = &self.monitor {
            m.request_started(&server.conn.addr);
        }
        self.relay.reset();
        self.link = Link::Attached {
            server,
            pool,
            generation,
        };
        Ok(())
    }

    /// Gives the server connection back (or closes it if it is not at a clean sync point).
    pub(super) fn detach(&mut self) {
        self.info.cancel.set(None);
        let transaction_mode = self.mode() == PoolMode::Transaction;
        let Link::Attached {
            mut server, pool, ..
        } = std::mem::replace(&mut self.link, Link::Detached)
        else {
            return;
        };
        if let Some(m) = &self.monitor {
            m.request_finished(&server.conn.addr);
        }
        if transaction_mode {
            // Every ParameterStatus went to both maps: they still match.
            server.conn.settings_fingerprint = self.info.params.fingerprint();
        }
        let clean = self.relay.at_sync_point()
            && server.conn.read_buf.is_empty()
            && self.relay.server_fatal.is_none();
        if clean {
            pool.release(server);
        } else {
            pool.discard(server);
        }
    }

    /// A request that could not get a server: its messages up to the next Sync (or the Query)
    /// are dropped and the client gets the error and ReadyForQuery; the connection stays usable.
    async fn refuse_request(&mut self, e: SessionError) -> Result<(), SessionError> {
        let Some(fields) = e.to_client() else {
            return Err(e);
        };
        if fields.is_fatal() {
            return Err(e);
        }
        tracing::info!(parent: &self.span, error = %e, "request refused");
        self.skip_request().await?;
        self.client
            .send(&[fields.to_frame(), backend::ready_for_query(TxStatus::Idle)])
            .await
    }

    /// Reads and drops the client's frames through the next Sync, Query or FunctionCall.
    pub(super) async fn skip_request(&mut self) -> Result<(), SessionError> {
        loop {
            let Some(f) = decode_frame(&mut self.client.buf, self.client.max_message)? else {
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

    /// Ends the session: tells the client why (if it is still there) and returns or closes the
    /// server connection. Session mode resets a connection before another client gets it.
    pub async fn finish(&mut self, error: Option<SessionError>) {
        if let Some(f) = error.as_ref().and_then(SessionError::to_client) {
            let fatal = ErrorFields {
                severity: "FATAL".into(),
                ..f
            };
            self.client.send_error(&fatal).await;
        }
        let session_mode = self.mode() == PoolMode::Session;
        let relay = &mut self.relay;
        let Link::Attached { server, .. } = &mut self.link else {
            return;
        };
        let clean = relay.at_sync_point()
            && !relay.busy()
            && server.conn.read_buf.is_empty()
            && relay.server_fatal.is_none();
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
