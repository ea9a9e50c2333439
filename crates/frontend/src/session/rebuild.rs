//! Session mode across a failover (`[failover] rebuild_sessions`): a session idle when its
//! server is lost, holding only state Switchyard recorded and can build again (settings,
//! prepared statements, LISTENs: `switchyard_server::BuiltState`), is attached to the next
//! primary at once (not at its next request, so its LISTENs hear on) and that state is
//! replayed there; the client notices nothing. A primary lost during the replay sends it back
//! to the gate for the next one. A request in flight outside a transaction
//! that changes nothing recorded (a query, an INSERT) is answered as in transaction mode
//! (08007) and the session is rebuilt the same way. A session inside a transaction gets
//! 40001 as in transaction mode and is rebuilt, with what it held before the transaction, once
//! the client ends it; one whose COMMIT is in flight gets that COMMIT's answer as in
//! transaction mode and is rebuilt at once. A session whose request in flight changes what it
//! holds (a COMMIT of a SET, a named Parse), or that holds state that cannot be rebuilt, ends
//! with 57P01 saying what was lost.

use super::run::{Link, Session, stripe_of};
use crate::SessionError;
use switchyard_proto::backend::TxStatus;
use switchyard_server::{BuiltState, ServerError};
use switchyard_topology::Caught;

impl Session {
    /// The session's server was lost (session mode): rebuild it elsewhere if it can be
    /// (`Ok(None)`: done), or answer its request in flight first (`Ok(Some)`: the caller
    /// answers, then rebuilds that), else end it naming what is lost.
    pub(super) fn lose_session(
        &mut self,
        built: Option<Box<BuiltState>>,
        outstanding: usize,
        addr: &str,
        generation: u64,
        why: String,
    ) -> Result<Option<Box<BuiltState>>, SessionError> {
        let between_transactions =
            self.relay.status == TxStatus::Idle && self.owe_ready_at_sync.is_none();
        let idle = between_transactions && outstanding == 0 && !self.relay.unsynced();
        let enabled = (self.proxy.live.load().config.failover).rebuild_sessions;
        let mut built = built;
        // Inside a transaction: it is answered 40001 and rolled back as in transaction mode,
        // then the session is rebuilt with what it held before the transaction (and what a
        // rollback keeps). Its COMMIT in flight is answered as in transaction mode (08007, or
        // its resolved outcome) when nothing the session holds depends on that outcome.
        let committing = self.relay.commit_in_flight();
        let transaction_lost = !between_transactions
            && self.owe_ready_at_sync.is_none()
            && !self.relay.unsynced()
            && enabled
            && built
                .as_mut()
                .is_some_and(|b| b.lost().is_none() && b.transaction_lost(committing));
        if transaction_lost {
            let what = if committing {
                "with its COMMIT in flight; answering it"
            } else {
                "inside a transaction; rolling it back (40001)"
            };
            tracing::info!(parent: self.span(), server = %addr, cause = %why, "session-mode server lost {what}, then rebuilding the session");
            return Ok(built);
        }
        let lost = match built {
            Some(b) if idle && enabled && b.is_settled() && b.is_empty() => {
                // Nothing to rebuild: the next request attaches via the gate.
                self.relay.reset();
                self.count_loss(Caught::Retried, generation);
                return Ok(None);
            }
            Some(b) if idle && enabled && b.is_settled() && b.lost().is_none() => {
                tracing::info!(parent: self.span(), server = %addr, cause = %why, "session-mode server lost while idle; rebuilding the session on the next primary");
                self.relay.reset();
                self.count_loss(Caught::Retried, generation);
                self.link = Link::Rebuilding(b);
                return Ok(None);
            }
            Some(b)
                // (Not mid-batch: what the client sends up to its Sync would run on the new
                // primary after it was told 08007.)
                if between_transactions
                    && !self.relay.unsynced()
                    && enabled
                    && !b.changes_in_flight()
                    && b.lost().is_none() =>
            {
                tracing::info!(parent: self.span(), server = %addr, cause = %why, "session-mode server lost with a request in flight; answering it, then rebuilding the session");
                return Ok(Some(b));
            }
            Some(b) if idle && enabled && b.is_settled() => b.lost(),
            _ if !enabled => None,
            _ if !idle => Some("a transaction or request in progress".to_string()),
            _ => Some("state whose outcome was not yet known".to_string()),
        };
        self.count_loss(Caught::SessionLost, generation);
        let why = match lost {
            Some(lost) => format!("{why}; this session held {lost}, which cannot be rebuilt"),
            None => why,
        };
        Err(SessionError::SessionLost(why))
    }

    /// Attaches to the current primary (waiting in the failover gate) and replays what the
    /// session had built. A primary lost during the replay (its connection fails, or the
    /// topology moves on) sends the rebuild back to the gate for the next one, within
    /// `failover_timeout` of the first attempt; any other failure ends the session with 57P01.
    pub(super) async fn rebuild(&mut self) -> Result<(), SessionError> {
        let Link::Rebuilding(mut built) = std::mem::replace(&mut self.link, Link::Detached) else {
            return Ok(());
        };
        let lost = |e: &dyn std::fmt::Display| {
            SessionError::SessionLost(format!("the session could not be rebuilt: {e}"))
        };
        built.settle_for_move();
        let deadline = tokio::time::Instant::now() + self.failover_timeout();
        loop {
            self.attach().await.map_err(|e| lost(&e))?;
            let Link::Attached {
                server, generation, ..
            } = &mut self.link
            else {
                return Err(lost(&"no server connection"));
            };
            let generation = *generation;
            // Until the replay is through, the connection's state is not known: never reused.
            self.relay.discard = true;
            let replayed = tokio::time::timeout(
                super::pool_for::INTERNAL_QUERY_TIMEOUT,
                server.conn.replay(&built),
            )
            .await;
            let addr = server.conn.addr.clone();
            let (failed, connection_failed) = match replayed {
                Ok(Ok(())) => {
                    server.conn.built = Some(built);
                    self.relay.discard = false;
                    // (Nothing of the client's is sent on this attachment yet: `fresh`, so a
                    // loss now is handled like one before its first request.)
                    tracing::info!(parent: self.span(), server = %addr, "session rebuilt on the new primary");
                    return Ok(());
                }
                // (An error the server answered means the state cannot be built there.)
                Ok(Err(e)) => (e.to_string(), !matches!(e, ServerError::Query(_))),
                Err(_) => ("replaying its state timed out".to_string(), false),
            };
            let primary_lost = connection_failed || self.generation_moved_from(generation);
            self.drop_server();
            if !primary_lost || tokio::time::Instant::now() >= deadline {
                return Err(lost(&failed));
            }
            tracing::warn!(parent: self.span(), server = %addr, error = %failed, "primary lost while the session was being rebuilt; rebuilding on the next one");
        }
    }

    /// Whether the topology has moved on from `generation`.
    fn generation_moved_from(&self, generation: u64) -> bool {
        self.monitor
            .as_ref()
            .is_some_and(|m| m.generation() != generation)
    }

    /// Lets go of the attached server connection without returning it to its pool.
    fn drop_server(&mut self) {
        let Link::Attached { server, .. } = std::mem::replace(&mut self.link, Link::Detached)
        else {
            return;
        };
        if let Some(m) = &self.monitor {
            m.request_finished(&server.conn.addr, stripe_of(&server.conn));
        }
        self.info.cancel.unlink();
        self.relay.reset();
        drop(server);
    }
}
