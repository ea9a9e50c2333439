//! [`BuiltState`]: what a session-mode client has built on its server connection that can be
//! built again on another (settings changed with SET, statements prepared in SQL or through
//! the protocol, LISTEN channels), and what cannot (temporary objects, session advisory
//! locks, WITH HOLD cursors, SET ROLE ...). The relay records it as requests are answered
//! (`frontend::session_state` reads the client's SQL); when a failover takes the session's
//! server, it is replayed on the new primary's connection ([`ServerConn::replay`]).
//!
//! A change counts once the server has shown it took effect: a protocol Parse or Close at its
//! ParseComplete or CloseComplete; what a statement does when it is run (a Query, or the
//! Execute of a portal bound to a prepared statement), once the transaction it ran in ends
//! without error and without ROLLBACK (SQL PREPARE and DEALLOCATE, which no rollback undoes,
//! once their request is answered without error). Anything in doubt is recorded as lost,
//! never replayed by guess.

use crate::{ServerConn, ServerError};
use bytes::{Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use switchyard_proto::backend::{ErrorFields, TxStatus, tag};
use switchyard_proto::frontend;

/// One change a statement makes to what its session holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A setting (`key`: its name, lowercased unless quoted) and the statement that made it.
    Set {
        key: String,
        sql: String,
    },
    /// RESET ALL: replayed as such (it also undoes settings the client started with).
    ResetAll,
    /// SQL `PREPARE name ...`.
    Prepare {
        name: String,
        sql: String,
    },
    /// SQL `DEALLOCATE name` (None: ALL, protocol-level statements too).
    Deallocate(Option<String>),
    Listen {
        channel: String,
        sql: String,
    },
    /// `UNLISTEN channel` (None: `*`).
    Unlisten(Option<String>),
    /// DISCARD ALL: everything goes, what could not be rebuilt too (but a LOAD).
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

/// What running a statement does here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Change(Change),
    /// State that cannot be rebuilt; `permanent`: not even DISCARD ALL undoes it (LOAD).
    Lost {
        what: &'static str,
        permanent: bool,
    },
}

/// A protocol Parse or Close sent and not yet answered.
#[derive(Debug)]
enum ProtocolOp {
    /// A Parse: the statement's name (None: unnamed) and the message as sent.
    Parse(Option<(Bytes, Bytes)>),
    /// A statement's (a portal's: None).
    Close(Option<Bytes>),
}

/// Most kinds of lost state named to the client.
const MAX_LOST: usize = 4;
/// Most statements and channels kept for a rebuild; beyond, the session counts as holding
/// what cannot be rebuilt (replaying more would not fit the rebuild's time anyway).
const MAX_KEPT: usize = 1000;

/// The rebuildable state of one session-mode session's server connection.
#[derive(Debug, Default)]
pub struct BuiltState {
    /// (key, statement), oldest first: replayed in this order, so the last one wins.
    settings: Vec<(String, String)>,
    sql_prepared: Vec<(String, String)>,
    listening: Vec<(String, String)>,
    /// Protocol-level named statements: the Parse message as the client sent it, by name.
    parsed: HashMap<Bytes, Bytes>,
    /// What cannot be rebuilt, as told to the client, with the request that made it.
    lost: Vec<(u64, &'static str, bool)>,
    /// Changes not yet settled, with the number of the request that made them.
    pending: Vec<(u64, Change)>,
    /// Protocol Parses and Closes awaiting their answers, in order, by request.
    ops: VecDeque<(u64, ProtocolOp)>,
    /// What prepared statements do when run (only those that do something here).
    statement_effects: HashMap<Bytes, Vec<Effect>>,
    /// The same for bound portals.
    portal_effects: HashMap<Bytes, Vec<Effect>>,
    /// Requests (Query, FunctionCall, a Sync the server answers) sent and answered.
    sent: u64,
    answered: u64,
    /// An error came while pending changes of requests up to this one were unsettled: their
    /// transaction did not commit.
    failed_through: Option<u64>,
}

impl BuiltState {
    /// Records what a statement run by the request being sent does.
    pub fn run(&mut self, effects: &[Effect]) {
        for e in effects {
            match e {
                Effect::Change(c) => self.pending.push((self.sent, c.clone())),
                Effect::Lost { what, permanent } => self.lose(what, *permanent),
            }
        }
    }

    fn lose(&mut self, what: &'static str, permanent: bool) {
        if !self.lost.iter().any(|(_, w, _)| *w == what) && self.lost.len() < MAX_LOST {
            self.lost.push((self.sent, what, permanent));
        }
    }

    /// A request the server will answer with ReadyForQuery was sent.
    pub fn request_sent(&mut self) {
        self.sent += 1;
    }

    /// The server entered copy-in mode and will not answer the Sync counted as request
    /// `number` (libpq sends it right after the Execute): what was counted after it moves up.
    pub fn sync_ignored(&mut self, number: u64) {
        self.sent = self.sent.saturating_sub(1);
        for (req, _) in &mut self.pending {
            if *req > number {
                *req -= 1;
            }
        }
        for (req, _) in &mut self.ops {
            if *req > number {
                *req -= 1;
            }
        }
    }

    /// A Parse was sent (`msg`: the whole message; `name` empty for the unnamed statement)
    /// of a statement that does `effects` when run.
    pub fn parse_sent(&mut self, name: &[u8], msg: &[u8], effects: Vec<Effect>) {
        let name = Bytes::copy_from_slice(name);
        if effects.is_empty() {
            self.statement_effects.remove(&name);
        } else {
            self.statement_effects.insert(name.clone(), effects);
        }
        let named = (!name.is_empty()).then(|| (name, Bytes::copy_from_slice(msg)));
        self.ops.push_back((self.sent, ProtocolOp::Parse(named)));
    }

    /// A Bind of `statement` to `portal` was sent.
    pub fn bound(&mut self, portal: &[u8], statement: &[u8]) {
        match self.statement_effects.get(statement) {
            Some(e) => {
                let e = e.clone();
                self.portal_effects
                    .insert(Bytes::copy_from_slice(portal), e);
            }
            None => {
                self.portal_effects.remove(portal);
            }
        }
    }

    /// An Execute of `portal` was sent: what its statement does happens now.
    pub fn executed(&mut self, portal: &[u8]) {
        if let Some(effects) = self.portal_effects.get(portal).cloned() {
            self.run(&effects);
        }
    }

    /// A Close of the named statement (None: a portal) was sent.
    pub fn close_sent(&mut self, statement: Option<&[u8]>) {
        let name = statement.map(Bytes::copy_from_slice);
        self.ops.push_back((self.sent, ProtocolOp::Close(name)));
    }

    /// The oldest Parse or Close sent was answered (ParseComplete, CloseComplete).
    pub fn op_done(&mut self) {
        match self.ops.pop_front().map(|(_, op)| op) {
            Some(ProtocolOp::Parse(Some((name, msg)))) => {
                // One namespace with SQL PREPARE.
                let text = String::from_utf8_lossy(&name).into_owned();
                self.sql_prepared.retain(|(n, _)| *n != text);
                if self.parsed.len() < MAX_KEPT || self.parsed.contains_key(&name) {
                    self.parsed.insert(name, msg);
                } else {
                    self.lose("more prepared statements than Switchyard keeps", false);
                }
            }
            Some(ProtocolOp::Close(Some(name))) => {
                self.parsed.remove(&name);
                let text = String::from_utf8_lossy(&name).into_owned();
                self.sql_prepared.retain(|(n, _)| *n != text);
            }
            Some(ProtocolOp::Parse(None) | ProtocolOp::Close(None)) | None => {}
        }
    }

    /// The oldest Parse or Close sent was skipped (an error came before it).
    pub fn op_skipped(&mut self) {
        self.ops.pop_front();
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
        self.answered += 1;
        let done = self.answered;
        // A Parse or Close of an answered request that got no answer was skipped.
        while self.ops.front().is_some_and(|(req, _)| *req < done) {
            self.ops.pop_front();
        }
        if status != TxStatus::Idle || self.pending.is_empty() {
            return;
        }
        let settled = self
            .pending
            .iter()
            .take_while(|(req, _)| *req < done)
            .count();
        let mut changes: Vec<(u64, Change)> = self.pending.drain(..settled).collect();
        if let Some(failed) = self.failed_through.take() {
            // The failed transaction's changes did not take (a COMMIT sent after the error
            // was a rollback), unless a COMMIT went through before the error, in the same
            // request or an earlier one: then which did is not known. A PREPARE is not
            // undone by a rollback, but whether it ran before the error is not known.
            let commit = Change::End { commit: true };
            if changes
                .iter()
                .any(|(req, c)| *req <= failed && *c == commit)
            {
                self.lose("settings of a request that failed part-way", false);
            }
            if (changes.iter()).any(|(req, c)| *req <= failed && c.survives_rollback()) {
                self.lose("a statement prepared in a transaction that failed", false);
            }
            // What the failed requests did is gone; their transaction goes on until its end
            // (a ROLLBACK, or a COMMIT that is one): what came after that ran normally.
            changes.retain(|(req, _)| *req > failed);
            let end = (changes.iter())
                .position(|(_, c)| matches!(c, Change::End { .. }))
                .map_or(changes.len(), |i| i + 1);
            changes.drain(..end);
        }
        let mut in_block = Vec::new();
        for (req, change) in changes {
            match change {
                Change::End { commit: true } => {
                    in_block.drain(..).for_each(|(r, c)| self.apply(r, c))
                }
                Change::End { commit: false } => in_block.clear(),
                other if other.survives_rollback() => self.apply(req, other),
                other => in_block.push((req, other)),
            }
        }
        in_block.into_iter().for_each(|(r, c)| self.apply(r, c));
    }

    fn apply(&mut self, req: u64, change: Change) {
        fn put(list: &mut Vec<(String, String)>, key: String, sql: String) -> bool {
            list.retain(|(k, _)| *k != key);
            list.push((key, sql));
            list.len() <= MAX_KEPT
        }
        fn remove(list: &mut Vec<(String, String)>, key: Option<String>) {
            match key {
                Some(key) => list.retain(|(k, _)| *k != key),
                None => list.clear(),
            }
        }
        let kept = match change {
            Change::Set { key, sql } => put(&mut self.settings, key, sql),
            Change::ResetAll => {
                self.settings.clear();
                put(&mut self.settings, String::new(), "RESET ALL".into())
            }
            Change::Prepare { name, sql } => {
                self.parsed.remove(name.as_bytes());
                put(&mut self.sql_prepared, name, sql)
            }
            Change::Deallocate(name) => {
                match &name {
                    Some(n) => drop(self.parsed.remove(n.as_bytes())),
                    None => self.parsed.clear(),
                }
                remove(&mut self.sql_prepared, name);
                true
            }
            Change::Listen { channel, sql } => put(&mut self.listening, channel, sql),
            Change::Unlisten(channel) => {
                remove(&mut self.listening, channel);
                true
            }
            Change::DiscardAll => {
                self.settings.clear();
                self.sql_prepared.clear();
                self.listening.clear();
                self.parsed.clear();
                self.lost
                    .retain(|(r, _, permanent)| *permanent || *r >= req);
                true
            }
            Change::End { .. } => true,
        };
        if !kept {
            self.lose(
                "more settings, statements or channels than Switchyard keeps",
                false,
            );
        }
    }

    /// The session's transaction died with its server connection (nothing of it committed):
    /// what its answered requests did that a rollback keeps (PREPARE, DEALLOCATE) stays, the
    /// rest goes, as a ROLLBACK would have it. False, and nothing changed, if that cannot be
    /// known: a request not yet answered made a change, or an error in the transaction leaves
    /// unknown whether a PREPARE before it ran. (A protocol Parse or Close awaiting its answer
    /// is as if not sent: the client is told its request failed, never that it took effect,
    /// so it holds what was recorded before.)
    ///
    /// `committing`: the transaction's COMMIT is the request in flight, so whether it
    /// committed is not known. The state is still known when nothing the transaction did
    /// depends on that (no SET, LISTEN ... in it; a PREPARE holds either way).
    pub fn transaction_lost(&mut self, committing: bool) -> bool {
        let answered = self.answered;
        let unknown = self.pending.iter().any(|(req, c)| {
            let end = matches!(c, Change::End { .. });
            if committing {
                !end && (*req >= answered || !c.survives_rollback())
            } else {
                *req >= answered
            }
        }) || (self.failed_through.is_some()
            && self.pending.iter().any(|(_, c)| c.survives_rollback()));
        if unknown {
            return false;
        }
        for (req, change) in std::mem::take(&mut self.pending) {
            if change.survives_rollback() {
                self.apply(req, change);
            }
        }
        self.failed_through = None;
        self.ops.clear();
        self.sent = self.answered;
        true
    }

    /// What cannot be rebuilt, for the client's message; None if everything can.
    pub fn lost(&self) -> Option<String> {
        (!self.lost.is_empty()).then(|| {
            let names: Vec<&str> = self.lost.iter().map(|(_, w, _)| *w).collect();
            names.join(", ")
        })
    }

    /// Every request has been answered and every change settled: the state is known.
    pub fn is_settled(&self) -> bool {
        self.pending.is_empty() && self.ops.is_empty() && self.sent == self.answered
    }

    /// A request not yet answered may have changed what is recorded (a change awaits its
    /// outcome; a Parse or Close does not count, as in [`BuiltState::transaction_lost`]).
    pub fn changes_in_flight(&self) -> bool {
        !self.pending.is_empty()
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
    /// simple query; None if there are none. (A statement may end in a `--` comment: each
    /// `;` goes on a line of its own.)
    fn replay_sql(&self) -> Option<String> {
        let all: Vec<&str> = (self.settings.iter())
            .chain(&self.sql_prepared)
            .chain(&self.listening)
            .map(|(_, sql)| sql.as_str())
            .collect();
        (!all.is_empty()).then(|| all.join("\n;\n"))
    }
}

impl BuiltState {
    /// Keeps only what is settled, for a new connection: what was in flight with the old one
    /// is gone.
    pub fn settle_for_move(&mut self) {
        self.sent = 0;
        self.answered = 0;
        self.failed_through = None;
        self.pending.clear();
        self.ops.clear();
        self.portal_effects.clear();
    }
}

impl ServerConn {
    /// Builds `state` (settled: [`BuiltState::settle_for_move`]) again on this (new)
    /// connection: one simple query for the settings, SQL prepared statements and LISTENs,
    /// then the protocol-level Parses and a Sync. Any error fails the rebuild. On success the
    /// caller hands the state to the connection (`built`); on failure it still has it, to try
    /// again on another.
    pub async fn replay(&mut self, state: &BuiltState) -> Result<(), ServerError> {
        let mut out = BytesMut::new();
        let mut readies = 0;
        if let Some(sql) = state.replay_sql() {
            frontend::query(&sql).encode(&mut out);
            readies += 1;
        }
        if !state.parsed.is_empty() {
            for parse in state.parsed.values() {
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
        match failure {
            Some(e) => Err(ServerError::Query(Box::new(e))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "built_state_tests.rs"]
mod tests;
