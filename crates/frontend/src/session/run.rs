//! The relay loop of one logged-in client.
//!
//! A session is either `Detached` (no server connection; waiting for the client's next request)
//! or `Attached` (a pooled server connection and the relay state for it). `attach` and `detach`
//! are the only transitions. In transaction mode the session detaches at the end of every
//! transaction; in session mode it stays attached until the client leaves.

use super::login::LoggedIn;
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::relay::{ClientStep, Relay, ServerSide};
use crate::cancel::CancelTarget;
use crate::client::ClientConn;
use crate::statements::Statements;
use crate::{Proxy, SessionError};
use bytes::BytesMut;
use std::sync::Arc;
use switchyard_config::PoolMode;
use switchyard_pool::Pooled;
use switchyard_proto::backend::{self, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_proto::{decode_frame, peek_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// One Link lives per session and `Attached` is its normal state: boxing it would allocate per
// transaction for nothing.
#[allow(clippy::large_enum_variant)]
enum Link {
    Detached,
    Attached { server: Pooled },
}

pub struct Session {
    proxy: Arc<Proxy>,
    client: ClientConn,
    info: LoggedIn,
    statements: Statements,
    link: Link,
    /// Relay state of the current attachment; reset (not reallocated) on every attach.
    relay: Relay,
    out: BytesMut,
    span: tracing::Span,
}

impl Session {
    pub fn new(proxy: Arc<Proxy>, client: ClientConn, info: LoggedIn, span: tracing::Span) -> Self {
        let relay = Relay::new(info.settings.mode);
        Self {
            proxy,
            client,
            info,
            statements: Statements::default(),
            link: Link::Detached,
            relay,
            out: BytesMut::with_capacity(8192),
            span,
        }
    }

    fn mode(&self) -> PoolMode {
        self.info.settings.mode
    }

    /// Runs until the client leaves (`Ok`) or the session must end (`Err`, told to the client
    /// by [`Session::finish`]).
    pub async fn run(&mut self) -> Result<(), SessionError> {
        loop {
            if matches!(self.link, Link::Detached) {
                match peek_header(&self.client.buf, self.client.max_message)? {
                    Some(h) if h.tag == fe::TERMINATE => return Ok(()),
                    Some(_) => {
                        if let Err(e) = self.attach().await {
                            self.refuse_request(e).await?;
                        }
                    }
                    None => {
                        tokio::select! {
                            biased;
                            more = self.client.fill() => if !more? { return Ok(()) },
                            _ = self.proxy.shutdown.cancelled() => return Err(SessionError::Shutdown),
                        }
                    }
                }
                continue;
            }
            if self.relay_once().await? == ClientStep::Terminate {
                return Ok(());
            }
        }
    }

    /// Forwards what the client has sent, waits for either side, forwards what the server sent,
    /// and detaches at the end of a transaction (transaction mode).
    async fn relay_once(&mut self) -> Result<ClientStep, SessionError> {
        let relay = &mut self.relay;
        let Link::Attached { server } = &mut self.link else {
            return Ok(ClientStep::Continue);
        };
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
        if !self.out.is_empty() {
            conn.stream
                .write_all(&self.out)
                .await
                .map_err(|e| SessionError::ServerLost(e.into()))?;
        }
        if step == ClientStep::Terminate {
            return Ok(step);
        }
        tokio::select! {
            biased;
            r = conn.stream.read_buf(&mut conn.read_buf) => match r {
                Ok(0) => return Err(SessionError::ServerLost(switchyard_server::ServerError::Closed)),
                Ok(_) => {}
                Err(e) => return Err(SessionError::ServerLost(e.into())),
            },
            // Idle between transactions while attached (session mode): shutdown ends it now.
            _ = self.proxy.shutdown.cancelled(), if relay.at_sync_point() => {
                return Err(SessionError::Shutdown);
            }
            r = self.client.stream.read_buf(&mut self.client.buf) => {
                return match r {
                    Ok(0) => Ok(ClientStep::Terminate),
                    Ok(_) => Ok(ClientStep::Continue),
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
        if relay.server_fatal {
            return Err(SessionError::ServerLost(
                switchyard_server::ServerError::Closed,
            ));
        }
        if saw_ready && relay.releases() {
            self.detach();
        } else if saw_ready && relay.at_sync_point() && self.proxy.shutdown.is_cancelled() {
            return Err(SessionError::Shutdown);
        }
        Ok(ClientStep::Continue)
    }

    /// Takes a server connection from the pool and brings its settings in line with the client's.
    async fn attach(&mut self) -> Result<(), SessionError> {
        let pool = &self.info.pool;
        let mut server = pool
            .checkout(self.info.settings.query_wait_timeout.get())
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
                Ok(Err(e)) => {
                    pool.release(server);
                    return Err(SessionError::Server(e));
                }
                Err(_) => {
                    pool.discard(server);
                    return Err(SessionError::Server(
                        switchyard_server::ServerError::Timeout {
                            addr: pool.addr().to_string(),
                            what: "setting session parameters",
                            after_ms: INTERNAL_QUERY_TIMEOUT.as_millis(),
                        },
                    ));
                }
            }
        }
        server.conn.settings_fingerprint = self.info.params.fingerprint();
        self.info.cancel.set(Some(CancelTarget {
            addr: server.conn.addr.clone(),
            key: server.conn.key.clone(),
        }));
        self.relay.reset();
        self.link = Link::Attached { server };
        Ok(())
    }

    /// Gives the server connection back (or closes it if it is not at a clean sync point).
    fn detach(&mut self) {
        self.info.cancel.set(None);
        let transaction_mode = self.mode() == PoolMode::Transaction;
        if let Link::Attached { mut server } = std::mem::replace(&mut self.link, Link::Detached) {
            if transaction_mode {
                // Every ParameterStatus went to both maps: they still match.
                server.conn.settings_fingerprint = self.info.params.fingerprint();
            }
            if self.relay.at_sync_point() && server.conn.read_buf.is_empty() {
                self.info.pool.release(server);
            } else {
                self.info.pool.discard(server);
            }
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
                fe::SYNC | fe::QUERY | fe::FUNCTION_CALL => break,
                _ => {}
            }
        }
        self.client
            .send(&[fields.to_frame(), backend::ready_for_query(TxStatus::Idle)])
            .await
    }

    /// Ends the session: tells the client why (if it is still there) and returns or closes the
    /// server connection. Session mode resets a connection before another client gets it.
    pub async fn finish(&mut self, error: Option<SessionError>) {
        if let Some(f) = error.as_ref().and_then(SessionError::to_client) {
            let fatal = switchyard_proto::backend::ErrorFields {
                severity: "FATAL".into(),
                ..f
            };
            self.client.send_error(&fatal).await;
        }
        let session_mode = self.mode() == PoolMode::Session;
        let relay = &mut self.relay;
        let Link::Attached { server } = &mut self.link else {
            return;
        };
        let clean = relay.at_sync_point()
            && !relay.busy()
            && server.conn.read_buf.is_empty()
            && !relay.server_fatal;
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
                relay.server_fatal = true;
            }
        }
        self.detach();
    }
}
