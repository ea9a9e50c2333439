//! One step of an attached session's relay ([`Session::serve_attached`]): forward the client's
//! complete requests, wait for either side (with the limit that applies: `query_timeout`,
//! `idle_transaction_timeout`, `client_idle_timeout`), pass on the server's answers, and
//! detach at the end of a transaction. What a lost server means is `abort.rs`'s.

use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::relay::{ClientStep, Fatal, Relay, ServerSide, changes_nothing, reserve_for_partial};
use super::run::{Link, Lost, Session, stripe_of};
use crate::SessionError;
use crate::params::ClientParams;
use bytes::{Buf, BytesMut};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::PoolMode;
use switchyard_proto::backend::TxStatus;
use switchyard_server::{CommitProbe, ServerConn, ServerError};
use switchyard_topology::ClusterMonitor;
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

/// Room made for each read of a server's answers while a request is still being written.
const READ_WHILE_WRITING: usize = 16 << 10;

/// search_path, which PostgreSQL before 18 does not report through ParameterStatus, after a
/// transaction that may have changed it: read back from the server as the transaction ends, so
/// that it follows the client to its next server connection, and is undone for the next client
/// of this one, as reported settings are. False if the server did not answer.
async fn read_back_unreported(conn: &mut ServerConn, params: &mut ClientParams) -> bool {
    const UNREPORTED: &str = "search_path";
    if params.is_reported(UNREPORTED) {
        return true;
    }
    let sql = "select current_setting('search_path')";
    let row = match tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, conn.query_row(sql)).await {
        Ok(Ok(row)) => row,
        Ok(Err(e)) => {
            tracing::warn!(server = %conn.addr, error = %e, "cannot read back search_path; closing the server connection");
            return false;
        }
        Err(_) => {
            tracing::warn!(server = %conn.addr, "search_path not read back in time; closing the server connection");
            return false;
        }
    };
    let Some(Some(value)) = row.into_iter().next() else {
        return false;
    };
    params.observe(UNREPORTED, &value);
    conn.params.insert(UNREPORTED.to_owned(), value);
    true
}

/// Resolves once shutdown has begun (see [`crate::Proxy::poll_stopping`]).
///
/// Cancel safety: cancel-safe.
fn stopping<'a>(
    proxy: &'a crate::Proxy,
    cancel: &'a crate::cancel::CancelHandle,
) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| proxy.poll_stopping(cancel, cx))
}

/// Names the topology change as the cause when a server's socket failed because the pool cut
/// it off (a new generation), or failed on its own just as the topology moved on.
fn lost(monitor: &Option<Arc<ClusterMonitor>>, generation: u64, cause: Lost) -> Lost {
    if monitor
        .as_ref()
        .is_some_and(|m| m.generation() != generation)
    {
        Lost::Generation
    } else {
        cause
    }
}

/// The limit on an attached session's next wait.
#[derive(Debug, Clone, Copy)]
enum Limit {
    None,
    /// From when the wait begins (read only if it does begin: no clock read when the awaited
    /// bytes are already there).
    After(Duration),
    At(Instant),
}

/// The limit of an attached session's next wait, and what it waits for: a request's answer
/// (`query_timeout`, from when it was sent, once per request), or the client inside a
/// transaction (`idle_transaction_timeout`) or idle (`client_idle_timeout`).
fn wait_limit(
    relay: &Relay,
    settings: &switchyard_config::EffectivePool,
    attached_at: Instant,
) -> (Limit, Waiting) {
    let after = |d: switchyard_config::Duration| d.limit().map_or(Limit::None, Limit::After);
    // Messages sent without a Sync (an Execute then a Flush) may be running on the server:
    // that is a wait for the server too, never an idle client.
    if relay.busy() || relay.unsynced() {
        let deadline = settings
            .query_timeout
            .limit()
            .filter(|_| !relay.query_cancelled)
            .map(|d| attached_at + Duration::from_micros(relay.request_started_us.into()) + d);
        (deadline.map_or(Limit::None, Limit::At), Waiting::Query)
    } else if relay.at_sync_point() {
        (after(settings.client_idle_timeout), Waiting::ClientIdle)
    } else {
        (
            after(settings.idle_transaction_timeout),
            Waiting::ClientInTransaction,
        )
    }
}

enum Flow {
    Continue,
    ClientLeft,
    Lost(Lost),
    /// A wait ran past its limit (`query_timeout`, `idle_transaction_timeout`,
    /// `client_idle_timeout`).
    TimedOut(Waiting),
}

/// What an attached session is waiting for, which decides the limit on the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    /// The server, for a request's answer.
    Query,
    /// The client, inside a transaction (or mid-batch): it holds the server connection.
    ClientInTransaction,
    /// The client, at a sync point with no transaction open (session mode).
    ClientIdle,
}

/// Resolves when `limit` has passed (counted from the first poll for [`Limit::After`]); never
/// without one.
///
/// Cancel safety: cancel-safe.
async fn until(limit: Limit) {
    match limit {
        Limit::After(d) => tokio::time::sleep(d).await,
        Limit::At(at) => tokio::time::sleep_until(at).await,
        Limit::None => std::future::pending().await,
    }
}

impl Session {
    /// Relays until the session detaches or loses its server (answered here); true if the
    /// client left.
    ///
    /// No watch on the topology here: when the generation moves on, the pool shuts down the
    /// sockets of the old generation's checked-out connections, so a read in flight ends at once
    /// and [`lost`] names the cause.
    pub(super) async fn serve_attached(&mut self) -> Result<bool, SessionError> {
        while let Link::Attached { .. } = self.link {
            match self.relay_once().await? {
                Flow::Continue => {}
                Flow::ClientLeft => return Ok(true),
                // Boxed: losing a server is rare, and its state would more than double this
                // future, which is boxed afresh for every transaction.
                Flow::Lost(cause) => Box::pin(self.abort(cause)).await?,
                Flow::TimedOut(waiting) => self.timed_out(waiting)?,
            }
        }
        Ok(false)
    }

    /// Forwards what the client has sent, waits for either side, forwards what the server sent,
    /// and detaches at the end of a transaction (transaction mode).
    async fn relay_once(&mut self) -> Result<Flow, SessionError> {
        if let Some(flow) = self.forward_request().await? {
            return Ok(flow);
        }
        let relay = &mut self.relay;
        let Some((server, generation, since)) = self.link.attached_mut() else {
            return Ok(Flow::Continue);
        };
        let conn = &mut server.conn;
        let monitor = &self.monitor;
        let (limit, waiting) = wait_limit(relay, &self.info.settings, since);
        // Checked here too: a server that always has more to read would keep the timer
        // branch, polled last, from ever running.
        if let Limit::At(at) = limit
            && at <= Instant::now()
        {
            return Ok(Flow::TimedOut(waiting));
        }
        tokio::select! {
            biased;
            r = conn.stream.read_buf(&mut conn.read_buf) => match r {
                Ok(0) => return Ok(Flow::Lost(lost(monitor, generation, Lost::Socket(ServerError::Closed)))),
                Ok(_) => {}
                Err(e) => return Ok(Flow::Lost(lost(monitor, generation, Lost::Socket(e.into())))),
            },
            // Idle between transactions while attached (session mode): shutdown ends it now.
            () = stopping(&self.proxy, &self.info.cancel), if relay.at_sync_point() => {
                return Err(SessionError::Shutdown);
            }
            r = self.client.stream.read_buf(&mut self.client.buf) => {
                return match r {
                    Ok(0) => Ok(Flow::ClientLeft),
                    Ok(_) => Ok(Flow::Continue),
                    Err(e) => Err(SessionError::ClientGone(e)),
                };
            }
            () = until(limit), if !matches!(limit, Limit::None) => {
                return Ok(Flow::TimedOut(waiting));
            }
        }
        self.forward_answers().await
    }

    /// Sends the server the complete requests the client has sent; `Some` ends this step of
    /// the relay (the client left, or the server is gone).
    async fn forward_request(&mut self) -> Result<Option<Flow>, SessionError> {
        let relay = &mut self.relay;
        let Some((server, generation, since)) = self.link.attached_mut() else {
            return Ok(Some(Flow::Continue));
        };
        let monitor = &self.monitor;
        if monitor
            .as_ref()
            .is_some_and(|m| m.generation() != generation)
        {
            // The topology moved on while we were busy elsewhere: not one more byte to this server.
            return Ok(Some(Flow::Lost(Lost::Generation)));
        }
        let conn = &mut server.conn;
        // Used only for what the relay rewrites; most traffic goes straight from the buffer it
        // was read into.
        self.out.clear();
        let mut side = ServerSide {
            params: &mut conn.params,
            prepared: &mut conn.prepared,
            max_prepared: self.info.settings.max_prepared_statements,
            passthrough: &mut conn.passthrough,
            built: conn.built.as_deref_mut(),
            held_fatal: &mut conn.held_fatal,
        };
        // A lone COMMIT or autocommit write may carry a probe of its transaction (if the
        // connection was opened with resolve_commits on, and its user may run it). In session
        // mode only a COMMIT, whose probe is a simple query: the session's own statements are
        // the client's to deallocate, so none of Switchyard's is relied on there.
        let nothing_outstanding = relay.outstanding_requests() == 0;
        let session_mode = self.info.settings.mode == PoolMode::Session;
        let may_probe = conn.can_probe_commits
            && nothing_outstanding
            && !relay.unsynced()
            && !relay.commit_in_flight();
        let status_before = relay.status;
        let (step, fwd) = relay.client_to_server(
            &self.client.buf,
            self.client.max_message(),
            &mut self.statements,
            &mut side,
            &mut self.out,
        )?;
        let used = fwd.used;
        let request = fwd.bytes(&self.client.buf, &self.out);
        let mut probed = None;
        if may_probe {
            let sent = &self.client.buf[..used];
            let committing = relay.commit_in_flight();
            // (Read only here: with resolve_commits on, once per lone request.)
            let reads = self
                .proxy
                .live
                .load()
                .config
                .failover
                .resolve_autocommit_reads;
            let kind =
                super::resolve::probing(status_before, committing, sent, &self.statements, reads)
                    // A write's held answer goes to the client as it is if resolved: not with
                    // answers to messages the relay added.
                    .filter(|k| !k.is_write() || !relay.injected())
                    .filter(|k| !session_mode || !k.is_write());
            // Rare (once per COMMIT or write, when enabled): the probe goes first, same write.
            probed = kind
                .and_then(|kind| super::resolve::with_probe(conn, kind, request, !session_mode));
        }
        let request = probed.as_deref().unwrap_or(request);
        // What the server's socket does not take at once (rare: the server is busy writing).
        let mut unsent = None;
        if !request.is_empty() {
            let written = match conn.stream.try_write(request) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                // The first write of an attachment found the server already gone: the request
                // is still in the client buffer and goes back to the gate instead of failing.
                Err(e) if self.fresh => return Ok(Some(Flow::Lost(Lost::NeverSent(e.into())))),
                Err(e) => {
                    return Ok(Some(Flow::Lost(lost(
                        monitor,
                        generation,
                        Lost::Socket(e.into()),
                    ))));
                }
            };
            // Over TLS, what was taken may still wait in the session: pushed out below.
            let flushed = conn.stream.flushed_now();
            if written < request.len() || !matches!(flushed, Ok(true)) {
                unsent = Some(BytesMut::from(&request[written..]));
            }
            if nothing_outstanding {
                // The first request of an attachment starts as it is attached: no clock read.
                relay.request_started_us = if self.fresh {
                    0
                } else {
                    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
                };
            }
            let sent = &self.client.buf[..used];
            self.replay = (std::mem::take(&mut self.fresh)
                && relay.status == TxStatus::Idle
                && changes_nothing(sent))
            .then(|| Box::from(sent));
        }
        self.client.buf.advance(used);
        if step == ClientStep::Terminate {
            return Ok(Some(Flow::ClientLeft));
        }
        self.client.ensure_room();
        if let Some(unsent) = unsent {
            // Boxed: rare, and its state would grow every transaction's future.
            return Box::pin(self.write_while_answering(unsent)).await;
        }
        Ok(None)
    }

    /// Writes the rest of a request to a server that is not reading it (or, over TLS, pushes
    /// out what waits in the session), while passing on what the server sends meanwhile.
    /// PostgreSQL reads no more of a request while its answers to the ones before are not being
    /// read: waiting for the write alone would be a deadlock until TCP gives up, and then a
    /// false failover error. `Some` ends this step of the relay.
    async fn write_while_answering(
        &mut self,
        mut unsent: BytesMut,
    ) -> Result<Option<Flow>, SessionError> {
        /// What one wait on the server's socket brought.
        enum Event {
            Wrote(usize),
            Flushed,
            Read(usize),
        }
        let mut flushed = false;
        while !unsent.is_empty() || !flushed {
            let Some((server, generation, _)) = self.link.attached_mut() else {
                return Ok(Some(Flow::Continue));
            };
            let conn = &mut server.conn;
            conn.read_buf.reserve(READ_WHILE_WRITING);
            // One poll function over both directions of the one stream (plain or TLS), so each
            // registers its waker and whichever is ready first is served.
            let event = std::future::poll_fn(|cx| {
                let stream = std::pin::Pin::new(&mut conn.stream);
                let wrote = if unsent.is_empty() {
                    stream.poll_flush(cx).map_ok(|()| Event::Flushed)
                } else {
                    stream.poll_write(cx, &unsent).map_ok(Event::Wrote)
                };
                if wrote.is_ready() {
                    return wrote;
                }
                let stream = std::pin::Pin::new(&mut conn.stream);
                tokio_util::io::poll_read_buf(stream, cx, &mut conn.read_buf).map_ok(Event::Read)
            })
            .await;
            match event {
                Ok(Event::Wrote(n)) => {
                    unsent.advance(n);
                    continue;
                }
                Ok(Event::Flushed) => {
                    flushed = true;
                    continue;
                }
                Ok(Event::Read(0)) => {
                    let cause = Lost::Socket(ServerError::Closed);
                    return Ok(Some(Flow::Lost(lost(&self.monitor, generation, cause))));
                }
                Ok(Event::Read(_)) => {}
                Err(e) => {
                    let cause = Lost::Socket(e.into());
                    return Ok(Some(Flow::Lost(lost(&self.monitor, generation, cause))));
                }
            }
            match self.forward_answers().await? {
                Flow::Continue => {}
                flow => return Ok(Some(flow)),
            }
        }
        Ok(None)
    }

    /// Passes on the complete messages the server has sent (and the part that has come of a
    /// large row), and handles the end of a request: latency, read-back, release.
    async fn forward_answers(&mut self) -> Result<Flow, SessionError> {
        let relay = &mut self.relay;
        let Some((server, _, since)) = self.link.attached_mut() else {
            return Ok(Flow::Continue);
        };
        let conn = &mut server.conn;
        if matches!(
            conn.commit_probe,
            CommitProbe::Sent(..) | CommitProbe::Answered(..) | CommitProbe::Relayed
        ) {
            // The commit probe's answers come first; the client never sees them. Then the
            // COMMIT's own answer is held until it is whole.
            let relaying = conn.passthrough as usize;
            match conn.commit_probe.take_answer(&mut conn.read_buf, relaying) {
                Ok(true) => {}
                Ok(false) => return Ok(Flow::Continue),
                Err(e) => return Ok(Flow::Lost(Lost::Socket(ServerError::Protocol(e)))),
            }
        }
        self.out.clear();
        let mut side = ServerSide {
            params: &mut conn.params,
            prepared: &mut conn.prepared,
            max_prepared: self.info.settings.max_prepared_statements,
            passthrough: &mut conn.passthrough,
            built: conn.built.as_deref_mut(),
            held_fatal: &mut conn.held_fatal,
        };
        let relayed = relay.server_to_client(
            &conn.read_buf,
            &mut self.info.params,
            &mut side,
            &mut self.out,
        );
        let (saw_ready, fwd) = match relayed {
            Ok(r) => r,
            // The server broke the protocol (an unexpected or oversized message): that server
            // connection is done for, and it is not the client's fault.
            Err(e) => return Ok(Flow::Lost(Lost::Socket(ServerError::Protocol(e)))),
        };
        if saw_ready
            && relay.read_back_search_path
            && relay.releases()
            && relay.server_fatal.is_none()
        {
            // The transaction ends having maybe changed search_path, which the server does not
            // report: learn it before the client hears the transaction ended, so that the
            // connection goes back to the pool with it known (and the client's next request
            // finds the connection there).
            relay.read_back_search_path = false;
            if fwd.verbatim {
                self.out.clear();
                self.out.extend_from_slice(&conn.read_buf[..fwd.end]);
            }
            conn.read_buf.advance(fwd.used);
            let known = read_back_unreported(conn, &mut self.info.params).await;
            // Set before anything can end the session: such a connection is never reused.
            relay.discard |= !known;
            if !self.out.is_empty() {
                self.client.write(&self.out).await?;
            }
            if !known {
                // The client's search_path can no longer follow it: it must not run its next
                // transaction under another one.
                return Err(SessionError::SettingsUnknown);
            }
        } else {
            let answer = fwd.bytes(&conn.read_buf, &self.out);
            if !answer.is_empty() {
                self.client.write(answer).await?;
            }
            conn.read_buf.advance(fwd.used);
        }
        reserve_for_partial(&mut conn.read_buf, conn.passthrough);
        if std::mem::take(&mut relay.evidence)
            && let Some(m) = &self.monitor
        {
            m.suspect(&conn.addr);
        }
        match relay.server_fatal {
            Some(Fatal::ServerGoingAway) => return Ok(Flow::Lost(Lost::GoingAway)),
            // A termination or a shutdown: `abort` tells which.
            Some(Fatal::SessionEnded) => return Ok(Flow::Lost(Lost::SessionEnded)),
            Some(Fatal::Other) => return Err(SessionError::EndedByServer),
            None => {}
        }
        if !saw_ready {
            return Ok(Flow::Continue);
        }
        // The COMMIT is answered: nothing left to resolve.
        conn.commit_probe = CommitProbe::None;
        // One clock read for the request's latency, the transaction's and the release.
        let now = Instant::now();
        let attached_for = now - since;
        self.replay = None;
        if let Some(m) = &self.monitor {
            let started = Duration::from_micros(relay.request_started_us.into());
            m.counters()
                .query_latency
                .observe_in(attached_for.saturating_sub(started), stripe_of(conn));
        }
        if relay.busy() {
            // A pipeline: the next request's answer starts now (for its latency and its
            // query_timeout).
            relay.request_started_us = u32::try_from(attached_for.as_micros()).unwrap_or(u32::MAX);
        }
        if relay.releases() {
            self.detach_at(now, attached_for);
        } else if relay.at_sync_point() && self.proxy.is_stopping() {
            return Err(SessionError::Shutdown);
        }
        Ok(Flow::Continue)
    }

    /// A wait ran past its limit: a request is cancelled on the server (the client gets the
    /// server's 57014 and goes on); an idle client is disconnected, and if it held a
    /// transaction, the server connection closes with it (not at a sync point), rolling it back.
    fn timed_out(&mut self, waiting: Waiting) -> Result<(), SessionError> {
        let settings = &self.info.settings;
        match waiting {
            Waiting::ClientIdle => Err(SessionError::IdleTimeout {
                limit: settings.client_idle_timeout.get(),
            }),
            Waiting::ClientInTransaction => Err(SessionError::IdleInTransactionTimeout {
                limit: settings.idle_transaction_timeout.get(),
            }),
            Waiting::Query => {
                let Link::Attached { server, .. } = &self.link else {
                    return Ok(());
                };
                self.relay.query_cancelled = true;
                let (addr, key) = (server.conn.addr.clone(), server.conn.key().clone());
                tracing::warn!(parent: self.span(), server = %addr, limit = ?settings.query_timeout.get(), "query_timeout: cancelling the request");
                tokio::spawn(async move {
                    let limit = INTERNAL_QUERY_TIMEOUT;
                    if let Err(e) = switchyard_server::send_cancel(&addr, &key, limit).await {
                        tracing::warn!(server = %addr, error = %e, "query_timeout: cancel request failed");
                    }
                });
                Ok(())
            }
        }
    }
}
