//! [`BuiltState`]: what a session-mode client has built on its server connection that can be
//! built again on another (settings changed with SET, statements prepared in SQL or through
//! the protocol, LISTEN channels), and what cannot (temporary objects, session advisory
//! locks, WITH HOLD cursors, SET ROLE ...). The relay records it as requests are answered
//! (`frontend::session_state` reads the client's SQL); when a failover takes the session's
//! server, it is replayed on the new primary's connection ([`ServerConn::rebuild`]).
//!
//! A change counts once the server has shown it took effect: a Parse at its ParseComplete;
//! SET, PREPARE, LISTEN and the like when the transaction they ran in ends without error and
//! without ROLLBACK. Anything in doubt is recorded as lost, never replayed by guess.

use crate::{ServerConn, ServerError};
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use switchyard_proto::backend::{ErrorFields, TxStatus, tag};
use switchyard_proto::frontend;

/// One change a statement makes to what its session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A setting (`key`: its name as written, lowercased) and the statement that made it.
    Set {
        key: String,
        sql: String,
    },
    ResetAll,
    /// SQL `PREPARE name ...`.
    Prepare {
        name: String,
        sql: String,
    },
    /// SQL `DEALLOCATE name` (None: ALL).
    Deallocate(Option<String>),
    Listen {
        channel: String,
        sql: String,
    },
    /// `UNLISTEN channel` (None: `*`).
    Unlisten(Option<String>),
    /// DISCARD ALL: everything goes, what could not be rebuilt too.
    DiscardAll,
    /// The transaction block ends: committed (COMMIT, END) or not (ROLLBACK, ABORT).
    End {
        commit: bool,
    },
}

impl Change {
    /// SQL PREPARE and DEALLOCATE take effect at once, whatever becomes of the transaction.
    fn survives_rollback(&self) -> bool {
        matches!(self, Change::Prepare { .. } | Change::Deallocate(_))
    }
}

/// Most kinds of lost state named to the client.
const MAX_LOST: usize = 4;

/// The rebuildable state of one session-mode session's server connection.
#[derive(Debug, Default)]
pub struct BuiltState {
    /// (key, statement), oldest first: replayed in this order, so the last one wins.
    settings: Vec<(String, String)>,
    sql_prepared: Vec<(String, String)>,
    listening: Vec<(String, String)>,
    /// Protocol-level named statements: (name, the Parse message as the client sent it).
    parsed: Vec<(Bytes, Bytes)>,
    /// What cannot be rebuilt, as told to the client.
    lost: Vec<&'static str>,
    /// Changes not yet settled, with the number of the request that made them.
    pending: Vec<(u32, Change)>,
    /// Parses sent and not yet answered, in order (None: the unnamed statement).
    parses: VecDeque<Option<(Bytes, Bytes)>>,
    /// Requests (Query, FunctionCall, Sync) sent and answered (ReadyForQuery).
    sent: u32,
    answered: u32,
    /// An error came while pending changes of requests up to this one were unsettled: their
    /// transaction did not commit.
    failed_through: Option<u32>,
}

impl BuiltState {
    /// Records a change made by the request being sent.
    pub fn record(&mut self, change: Change) {
        self.pending.push((self.sent, change));
    }

    /// Records state that cannot be rebuilt.
    pub fn lose(&mut self, what: &'static str) {
        if !self.lost.contains(&what) && self.lost.len() < MAX_LOST {
            self.lost.push(what);
        }
    }

    /// A request (Query, FunctionCall, Sync) was sent: a ReadyForQuery will answer it.
    pub fn request_sent(&mut self) {
        self.sent = self.sent.wrapping_add(1);
    }

    /// A Parse was sent (`msg`: the whole message; `name` empty for the unnamed statement).
    pub fn parse_sent(&mut self, name: &[u8], msg: &[u8]) {
        let named =
            (!name.is_empty()).then(|| (Bytes::copy_from_slice(name), Bytes::copy_from_slice(msg)));
        self.parses.push_back(named);
    }

    /// The oldest Parse sent completed: its statement exists.
    pub fn parse_done(&mut self) {
        if let Some(Some((name, msg))) = self.parses.pop_front() {
            self.parsed.retain(|(n, _)| *n != name);
            self.parsed.push((name, msg));
        }
    }

    /// The oldest Parse sent was skipped (an error came before it).
    pub fn parse_skipped(&mut self) {
        self.parses.pop_front();
    }

    /// A Close of the named statement was sent (closing one that does not exist is no error).
    pub fn statement_closed(&mut self, name: &[u8]) {
        self.parsed.retain(|(n, _)| n != name);
    }

    /// An ErrorResponse came for the request being answered.
    pub fn error(&mut self) {
        if !self.pending.is_empty() {
            self.failed_through = Some(self.answered);
        }
    }

    /// A ReadyForQuery came: the request it answers and those before it are done, and
    /// changes whose transaction ended are settled.
    pub fn ready(&mut self, status: TxStatus) {
        self.answered = self.answered.wrapping_add(1);
        if status != TxStatus::Idle || self.pending.is_empty() {
            return;
        }
        let done = self.answered;
        let settled = self
            .pending
            .iter()
            .take_while(|(req, _)| *req < done)
            .count();
        let changes: Vec<(u32, Change)> = self.pending.drain(..settled).collect();
        if let Some(failed) = self.failed_through.take() {
            // The transaction aborted, so its changes did not take (a COMMIT sent after the
            // error was a rollback), unless a COMMIT went through before the error, in the
            // same request or an earlier one: then which did is not known.
            let commit = Change::End { commit: true };
            if changes
                .iter()
                .any(|(req, c)| *req <= failed && *c == commit)
            {
                self.lose("settings of a request that failed part-way");
            }
            // A PREPARE is not undone by a rollback, but whether it ran before the error is
            // not known.
            if changes.iter().any(|(_, c)| c.survives_rollback()) {
                self.lose("a statement prepared in a transaction that failed");
            }
            return;
        }
        let mut in_block = Vec::new();
        for (_, change) in changes {
            match change {
                Change::End { commit: true } => in_block.drain(..).for_each(|c| self.apply(c)),
                Change::End { commit: false } => in_block.clear(),
                // Takes effect at once, whatever becomes of the transaction.
                other if other.survives_rollback() => self.apply(other),
                other => in_block.push(other),
            }
        }
        in_block.into_iter().for_each(|c| self.apply(c));
    }

    fn apply(&mut self, change: Change) {
        fn put(list: &mut Vec<(String, String)>, key: String, sql: String) {
            list.retain(|(k, _)| *k != key);
            list.push((key, sql));
        }
        fn remove(list: &mut Vec<(String, String)>, key: Option<String>) {
            match key {
                Some(key) => list.retain(|(k, _)| *k != key),
                None => list.clear(),
            }
        }
        match change {
            Change::Set { key, sql } => put(&mut self.settings, key, sql),
            Change::ResetAll => self.settings.clear(),
            Change::Prepare { name, sql } => put(&mut self.sql_prepared, name, sql),
            Change::Deallocate(name) => remove(&mut self.sql_prepared, name),
            Change::Listen { channel, sql } => put(&mut self.listening, channel, sql),
            Change::Unlisten(channel) => remove(&mut self.listening, channel),
            Change::DiscardAll => {
                self.settings.clear();
                self.sql_prepared.clear();
                self.listening.clear();
                self.parsed.clear();
                self.lost.clear();
            }
            Change::End { .. } => {}
        }
    }

    /// What cannot be rebuilt, for the client's message; None if everything can.
    pub fn lost(&self) -> Option<String> {
        (!self.lost.is_empty()).then(|| self.lost.join(", "))
    }

    /// Every request has been answered and every change settled: the state is known.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && self.parses.is_empty() && self.sent == self.answered
    }

    /// A request not yet answered may have changed what is recorded (a change or a Parse
    /// awaits its outcome).
    pub fn changes_in_flight(&self) -> bool {
        !self.pending.is_empty() || !self.parses.is_empty()
    }

    /// Nothing built: nothing to rebuild, nothing lost.
    pub fn is_empty(&self) -> bool {
        self.settings.is_empty()
            && self.sql_prepared.is_empty()
            && self.listening.is_empty()
            && self.parsed.is_empty()
            && self.lost.is_empty()
    }

    /// LISTEN channels held (each a statement).
    pub fn listens(&self) -> usize {
        self.listening.len()
    }

    /// The SQL that rebuilds the settings, SQL prepared statements and LISTENs, in one
    /// simple query; None if there are none.
    fn replay_sql(&self) -> Option<String> {
        let all: Vec<&str> = (self.settings.iter())
            .chain(&self.sql_prepared)
            .chain(&self.listening)
            .map(|(_, sql)| sql.as_str())
            .collect();
        (!all.is_empty()).then(|| all.join(";\n"))
    }
}

impl ServerConn {
    /// Builds `state` again on this (new) connection: one simple query for the settings, SQL
    /// prepared statements and LISTENs, then the protocol-level Parses and a Sync. Any error
    /// fails the rebuild (the caller ends the session). The connection takes the state.
    pub async fn rebuild(&mut self, mut state: Box<BuiltState>) -> Result<(), ServerError> {
        // A request lost in flight with the old connection is no longer awaited.
        state.sent = 0;
        state.answered = 0;
        state.failed_through = None;
        let mut out = BytesMut::new();
        let mut readies = 0;
        if let Some(sql) = state.replay_sql() {
            frontend::query(&sql).encode(&mut out);
            readies += 1;
        }
        if !state.parsed.is_empty() {
            for (_, parse) in &state.parsed {
                out.extend_from_slice(parse);
            }
            switchyard_proto::Frame::new(frontend::tag::SYNC, Bytes::new()).encode(&mut out);
            readies += 1;
        }
        self.write_out(&out).await?;
        let mut failure = None;
        while readies > 0 {
            let f = self.read_frame().await?;
            match f.tag {
                tag::ERROR_RESPONSE => failure = Some(ErrorFields::decode(&f)?),
                tag::READY_FOR_QUERY => readies -= 1,
                _ => {}
            }
        }
        if let Some(e) = failure {
            return Err(ServerError::Query(Box::new(e)));
        }
        self.built = Some(state);
        Ok(())
    }
}

#[cfg(test)]
#[path = "built_state_tests.rs"]
mod tests;
