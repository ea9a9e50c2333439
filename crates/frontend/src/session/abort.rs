//! What a client is told when its server connection is lost (design.md §2), and the local
//! answering that follows: the only place Switchyard plays the server.
//!
//! - Nothing outstanding, not in a transaction: nothing is said; the next request waits in the
//!   failover gate like any new work. The same for an unanswered request that cannot have
//!   changed anything (a lone `BEGIN`, a driver's prepare): it goes back to the gate.
//! - Inside a transaction, no COMMIT sent: 40001 (rolled back, safe to retry), then
//!   ReadyForQuery('E'); Switchyard answers 25P02 to everything until the client ends the
//!   transaction, and ROLLBACK (or COMMIT, as PostgreSQL does in a failed transaction) itself.
//! - A COMMIT, or any autocommit request, in flight: 08007 (outcome unknown). A statement
//!   Switchyard cannot prove read-only counts as a write.
//! - Session mode: the session is rebuilt on the next primary when it can be (`rebuild.rs`:
//!   idle, or with an autocommit request or a COMMIT in flight, answered as above, or in a
//!   transaction, rolled back as above); else its
//!   server-side state is gone: FATAL 57P01 naming why, connection closed. The server's own
//!   57P0x counts as such a loss when the primary is going away (a switchover shuts it down);
//!   when the primary stays (the backend was terminated), the server's FATAL is relayed.

use super::run::{Link, Lost, Session, stripe_of};
use crate::SessionError;
use crate::sql::first_statement_commits;
use bytes::Bytes;
use switchyard_config::PoolMode;
use switchyard_proto::backend::{self, ErrorFields, TxStatus};
use switchyard_proto::frontend::{Bind, Parse, Target, TargetKind, tag as fe};
use switchyard_proto::{Frame, sqlstate};
use switchyard_server::{CommitProbe, Probing};
use switchyard_topology::Caught;

/// 40001: the transaction died with its server connection; `cause` says how, when known.
pub(super) fn rolled_back(cause: Option<&str>) -> ErrorFields {
    let how = cause.unwrap_or("the server connection was lost");
    ErrorFields::error(
        sqlstate::SERIALIZATION_FAILURE,
        format!("switchyard: {how}; this transaction was rolled back and is safe to retry"),
    )
}

/// 08007: a commit (or a request that may have written) was in flight when its server
/// connection was lost.
pub(super) fn outcome_unknown(commit: bool, cause: &str) -> ErrorFields {
    let what = if commit {
        "whether the transaction committed"
    } else {
        "whether this request took effect"
    };
    ErrorFields::error(
        sqlstate::TRANSACTION_RESOLUTION_UNKNOWN,
        format!("switchyard: {cause} while this request was in flight; {what} is unknown"),
    )
}

fn in_failed_transaction() -> ErrorFields {
    ErrorFields::error(
        "25P02",
        "switchyard: current transaction is aborted, commands ignored until end of transaction block",
    )
}

/// How a statement would end a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    Rollback,
    Commit,
}

fn ends_transaction(sql: &[u8]) -> Option<Ends> {
    // Query and Parse bodies carry the text NUL-terminated (and Parse has more after it).
    let sql = sql.split(|&b| b == 0).next().unwrap_or_default();
    let text = String::from_utf8_lossy(sql.get(..64).unwrap_or(sql))
        .trim_start()
        .to_ascii_lowercase();
    let first: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let rest = text[first.len()..]
        .trim_start()
        .trim_end_matches(';')
        .trim();
    match first.as_str() {
        "rollback" | "abort" if rest.is_empty() || rest == "work" || rest == "transaction" => {
            Some(Ends::Rollback)
        }
        _ if first_statement_commits(sql) => Some(Ends::Commit),
        _ => None,
    }
}

impl Session {
    /// The attached server is gone: close it, tell the client per the contract, and move to the
    /// right state.
    pub(super) async fn abort(&mut self, cause: Lost) -> Result<(), SessionError> {
        let Link::Attached {
            server, generation, ..
        } = std::mem::replace(&mut self.link, Link::Detached)
        else {
            return Ok(());
        };
        let addr = server.conn.addr.clone();
        let mid_message = server.conn.passthrough > 0;
        let probe = server.conn.commit_probe;
        let mut server = server;
        // A probed write's own answer, held back: what of it the client may still be sent.
        let held = match probe {
            CommitProbe::Answered(_, kind) if kind.is_write() => {
                let mut held = server.conn.read_buf.split();
                if let Probing::SimpleWrite { .. } = kind {
                    switchyard_server::strip_extended_answers(&mut held, 0);
                }
                Some(held.freeze())
            }
            _ => None,
        };
        let built = server.conn.built.take();
        let held_fatal = server.conn.held_fatal.take();
        if let Some(m) = &self.monitor {
            m.request_finished(&addr, stripe_of(&server.conn));
            if !matches!(cause, Lost::Generation) {
                m.suspect(&addr);
            }
        }
        drop(server);
        self.info.cancel.unlink();
        if let Lost::SessionEnded = cause
            && !self.server_is_leaving(&addr, generation).await
        {
            // The primary stays: its backend was terminated (an operator's
            // pg_terminate_backend). The server's own FATAL ends the session, as it would
            // end a direct connection.
            if let Some(fatal) = held_fatal {
                self.client.send(&[fatal]).await?;
            }
            self.count_loss(Caught::SessionLost, generation);
            return Err(SessionError::EndedByServer);
        }
        let never_sent = matches!(cause, Lost::NeverSent(_));
        if never_sent || (self.mode() == PoolMode::Session && self.fresh) {
            // Nothing reached the server: the request waits in the gate like new work. In
            // session mode nothing was sent on this attachment (pinned at login, or just
            // rebuilt): the session has built nothing more there, and what a rebuild brought
            // is rebuilt again.
            tracing::info!(parent: self.span(), server = %addr, %cause, "server gone before the request; retrying via the gate");
            self.relay.reset();
            if never_sent {
                self.count_loss(Caught::Retried, generation);
            }
            if let Some(b) = built.filter(|b| !b.is_empty()) {
                self.link = Link::Rebuilding(b);
            }
            return Ok(());
        }
        if let Some(request) = self.replay.take()
            && self.mode() == PoolMode::Transaction
        {
            // What reached the server changes nothing (BEGIN, a prepare): send it again via the gate.
            tracing::info!(parent: self.span(), server = %addr, %cause, "server gone before answering a request that changes nothing; retrying via the gate");
            self.relay.reset();
            self.put_back(&request);
            self.count_loss(Caught::Retried, generation);
            return Ok(());
        }
        let outstanding = self.relay.outstanding_requests();
        let why = cause.to_string();
        if mid_message {
            // The client has part of a row: only closing its connection tells it (as a direct
            // connection's would close).
            tracing::warn!(parent: self.span(), server = %addr, cause = %why, "server connection lost while a large row was being relayed; closing the client's connection");
            self.count_loss(Caught::Unknown, generation);
            return Err(SessionError::LostMidMessage(why));
        }
        tracing::warn!(parent: self.span(), server = %addr, cause = %why, outstanding, "server connection lost");
        // Session mode: rebuilt, or ended; or its request in flight is answered as below and
        // then it is rebuilt.
        let mut rebuild_after = None;
        if self.mode() == PoolMode::Session {
            match self.lose_session(built, outstanding, &addr, generation, why.clone())? {
                None => return Ok(()),
                Some(built) => rebuild_after = Some(built),
            }
        }
        let commit = self.relay.commit_in_flight();
        if let CommitProbe::Answered(probed, kind) = probe
            && outstanding == 1
            && !self.relay.unsynced()
            && match kind {
                Probing::Commit(_) => commit,
                Probing::Write | Probing::SimpleWrite { .. } => {
                    !commit && self.relay.status == TxStatus::Idle
                }
            }
        {
            // A lone COMMIT or an autocommit write that carried the probe: ask what became
            // of its transaction.
            let lost = (&*addr, generation);
            let asked = self.answer_resolved((probed, kind, held), lost, &why);
            Box::pin(asked).await?;
            if let Some(built) = rebuild_after.filter(|b| !b.is_empty()) {
                self.link = Link::Rebuilding(built);
            }
            return Ok(());
        }
        let in_tx = self.relay.status != TxStatus::Idle && !commit;
        if in_tx {
            self.count_loss(Caught::RolledBack, generation);
        } else if outstanding > 0 || self.relay.unsynced() {
            self.count_loss(Caught::Unknown, generation);
        }
        let (first, rest, after) = if in_tx {
            (
                rolled_back(Some(&why)),
                in_failed_transaction(),
                TxStatus::Failed,
            )
        } else {
            (
                outcome_unknown(commit, &why),
                outcome_unknown(commit, &why),
                TxStatus::Idle,
            )
        };
        let unsynced = self.relay.unsynced();
        let mut frames = Vec::new();
        for i in 0..outstanding + usize::from(unsynced) {
            frames.push(if i == 0 {
                first.to_frame()
            } else {
                rest.to_frame()
            });
            if i < outstanding {
                frames.push(backend::ready_for_query(after));
            }
        }
        if unsynced {
            self.owe_ready_at_sync = Some(after);
        }
        let rebuild_after = rebuild_after.filter(|b| !b.is_empty());
        if in_tx {
            // (Session mode: rebuilt once the client ends the transaction.)
            self.link = Link::FailedTransaction {
                told: !frames.is_empty(),
                rebuild: rebuild_after,
            };
        } else if let Some(built) = rebuild_after {
            self.link = Link::Rebuilding(built);
        }
        self.relay.reset();
        self.client.send(&frames).await
    }

    /// Session mode, the server ended the session's backend (57P0x): whether that is the
    /// primary going away (a switchover's shutdown, a crash restart), to be handled as a
    /// failover, rather than a termination of this backend alone. Waits for the monitor's
    /// answer (at most its detection time); without a monitor, a termination.
    async fn server_is_leaving(&self, addr: &str, generation: u64) -> bool {
        match &self.monitor {
            Some(m) => m.moving_on_from(addr, generation).await,
            None => false,
        }
    }

    /// Puts `frames` back in front of whatever the client has sent since.
    fn put_back(&mut self, frames: &[u8]) {
        let later = std::mem::take(&mut self.client.buf);
        self.client.ensure_room();
        self.client.buf.extend_from_slice(frames);
        self.client.buf.extend_from_slice(&later);
        self.client.buffers().give(later);
    }

    /// After an aborted extended batch: drop the client's frames up to its Sync, then send the
    /// ReadyForQuery it is owed.
    pub(super) async fn drain_to_sync(&mut self) -> Result<(), SessionError> {
        let Some(status) = self.owe_ready_at_sync.take() else {
            return Ok(());
        };
        loop {
            let f = self.client.read_frame().await?;
            if f.tag == fe::SYNC {
                return self.client.send(&[backend::ready_for_query(status)]).await;
            }
        }
    }

    /// Answers one request of a client whose transaction was lost, without a server. What is
    /// kept of the request is its shape (one small entry per message, at most
    /// [`MAX_FAILED_BATCH`]), never the messages themselves.
    pub(super) async fn answer_failed_transaction(&mut self) -> Result<(), SessionError> {
        let Link::FailedTransaction { told, .. } = self.link else {
            return Ok(());
        };
        let mut shape = Vec::new();
        let mut ends = None;
        loop {
            let f = self.client.read_frame().await?;
            ends = ends.or_else(|| self.ends_transaction(&f));
            if shape.len() >= MAX_FAILED_BATCH {
                return Err(SessionError::BatchTooLong {
                    max: MAX_FAILED_BATCH,
                });
            }
            shape.push(Reply::to(&f));
            if matches!(f.tag, fe::SYNC | fe::QUERY | fe::FUNCTION_CALL) {
                break;
            }
        }
        let frames = failed_transaction_reply(&shape, ends, told);
        if let Link::FailedTransaction { told, rebuild } = &mut self.link {
            *told = true;
            if ends.is_some() {
                self.link = match rebuild.take() {
                    Some(built) => Link::Rebuilding(built),
                    None => Link::Detached,
                };
            }
        }
        self.client.send(&frames).await
    }

    /// Whether a message ends the transaction (its statement, or the statement it binds).
    fn ends_transaction(&self, f: &Frame) -> Option<Ends> {
        match f.tag {
            fe::QUERY => ends_transaction(&f.body),
            fe::PARSE => Parse::decode(f)
                .ok()
                .and_then(|p| ends_transaction(&p.tail)),
            fe::BIND => Bind::decode(f)
                .ok()
                .and_then(|b| self.statement_text(&b))
                .and_then(|t| ends_transaction(&t)),
            _ => None,
        }
    }

    fn statement_text(&self, bind: &Bind) -> Option<Bytes> {
        let parse = self.statements.get(&bind.statement)?;
        Some(parse.parse.tail.clone())
    }
}

/// Most messages one request may hold while Switchyard answers a lost transaction itself
/// (a pipeline that long without a Sync is refused with FATAL 54000).
pub(super) const MAX_FAILED_BATCH: usize = 100_000;

/// What PostgreSQL answers one message with when the transaction is ended by the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    CommandComplete,
    ParseComplete,
    BindComplete,
    CloseComplete,
    DescribeStatement,
    DescribePortal,
    /// A Sync, Query or FunctionCall: ReadyForQuery (after a Query's CommandComplete).
    QueryThenReady,
    Ready,
    Nothing,
}

impl Reply {
    fn to(f: &Frame) -> Self {
        match f.tag {
            fe::QUERY => Self::QueryThenReady,
            fe::EXECUTE => Self::CommandComplete,
            fe::PARSE => Self::ParseComplete,
            fe::BIND => Self::BindComplete,
            fe::CLOSE => Self::CloseComplete,
            fe::DESCRIBE if Target::decode(f).is_ok_and(|t| t.kind == TargetKind::Statement) => {
                Self::DescribeStatement
            }
            fe::DESCRIBE => Self::DescribePortal,
            fe::SYNC | fe::FUNCTION_CALL => Self::Ready,
            _ => Self::Nothing,
        }
    }
}

/// The reply PostgreSQL would give in a failed transaction: ROLLBACK (and COMMIT, which rolls
/// back) end it; anything else is refused.
fn failed_transaction_reply(shape: &[Reply], ends: Option<Ends>, told: bool) -> Vec<Frame> {
    let refused = match ends {
        None => Some(if told {
            in_failed_transaction()
        } else {
            rolled_back(None)
        }),
        // A COMMIT of a transaction the client has not yet heard was lost: say so.
        Some(Ends::Commit) if !told => Some(rolled_back(None)),
        Some(_) => None,
    };
    if let Some(err) = refused {
        let status = if ends.is_some() {
            TxStatus::Idle
        } else {
            TxStatus::Failed
        };
        return vec![err.to_frame(), backend::ready_for_query(status)];
    }
    let mut out = Vec::new();
    for reply in shape {
        match reply {
            Reply::CommandComplete => out.push(backend::command_complete("ROLLBACK")),
            Reply::ParseComplete => out.push(backend::parse_complete()),
            Reply::BindComplete => out.push(Frame::new(b'2', Bytes::new())),
            Reply::CloseComplete => out.push(backend::close_complete()),
            Reply::DescribeStatement => {
                out.push(Frame::new(b't', Bytes::from_static(&[0, 0])));
                out.push(Frame::new(b'n', Bytes::new()));
            }
            Reply::DescribePortal => out.push(Frame::new(b'n', Bytes::new())),
            Reply::QueryThenReady => {
                out.push(backend::command_complete("ROLLBACK"));
                out.push(backend::ready_for_query(TxStatus::Idle));
            }
            Reply::Ready => out.push(backend::ready_for_query(TxStatus::Idle)),
            Reply::Nothing => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(frames: &[Frame]) -> String {
        frames.iter().map(|f| f.tag as char).collect()
    }

    #[test]
    fn a_lost_transaction_is_answered_as_postgresql_would() {
        use Reply::*;
        let pipeline = [
            ParseComplete,
            BindComplete,
            DescribePortal,
            CommandComplete,
            Ready,
        ];
        assert_eq!(
            tags(&failed_transaction_reply(
                &pipeline,
                Some(Ends::Rollback),
                true
            )),
            "12nCZ",
            "an extended ROLLBACK ends it"
        );
        assert_eq!(
            tags(&failed_transaction_reply(&[QueryThenReady], None, true)),
            "EZ",
            "anything else is refused (25P02)"
        );
        assert_eq!(
            tags(&failed_transaction_reply(
                &[QueryThenReady],
                Some(Ends::Commit),
                false
            )),
            "EZ",
            "a COMMIT the client has not heard was lost gets 40001"
        );
        assert_eq!(
            tags(&failed_transaction_reply(
                &[DescribeStatement, Ready],
                Some(Ends::Rollback),
                true
            )),
            "tnZ"
        );
    }

    #[test]
    fn classifies_transaction_ends() {
        assert_eq!(ends_transaction(b"ROLLBACK"), Some(Ends::Rollback));
        assert_eq!(ends_transaction(b"ROLLBACK\0"), Some(Ends::Rollback));
        assert_eq!(
            ends_transaction(b"rollback\0\0\0"),
            Some(Ends::Rollback),
            "a Parse tail"
        );
        assert_eq!(ends_transaction(b"  abort work;"), Some(Ends::Rollback));
        assert_eq!(ends_transaction(b"rollback to savepoint a"), None);
        assert_eq!(ends_transaction(b"COMMIT"), Some(Ends::Commit));
        assert_eq!(ends_transaction(b"end"), Some(Ends::Commit));
        assert_eq!(ends_transaction(b"select 1"), None);
        assert_eq!(ends_transaction(b"committed_rows"), None);
    }
}
