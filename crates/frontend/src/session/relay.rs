//! The relay proper, sans-IO: moves complete messages between the client's and the server's
//! buffers, keeps the expected-response queue, rewrites named statements in transaction mode,
//! and decides when a transaction has ended so the server connection can go back to its pool.

use crate::params::ClientParams;
use crate::session_state;
use crate::sql::{Effect, is_transaction_start, mentions};
use crate::statements::Statements;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use switchyard_config::PoolMode;
use switchyard_proto::backend::{self, ErrorFields, TxStatus, tag as be};
use switchyard_proto::frontend::{Bind, Parse, Target, TargetKind, tag as fe};
use switchyard_proto::{Frame, ProtoError, peek_header};
use switchyard_server::{BuiltState, Prepared};

/// Largest server message the relay accepts (PostgreSQL's own limit is 1 GiB).
const MAX_SERVER_MESSAGE: usize = (1 << 30) + 1024;

/// A row (or COPY data) message longer than this is passed to the client in pieces as they
/// arrive, never held whole: a 1 GiB row costs no more memory than a small one.
const STREAM_OVER: usize = 64 << 10;

/// Room made for each read of a message passed through in pieces.
const STREAM_CHUNK: usize = 64 << 10;

/// Server messages the relay passes on without reading them, so it may send them in pieces.
fn streams(tag: u8) -> bool {
    matches!(tag, be::DATA_ROW | be::COPY_DATA)
}

/// A response the relay is waiting for, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    ParseComplete {
        injected: bool,
    },
    CloseComplete {
        injected: bool,
    },
    /// The ReadyForQuery that ends a Sync (`sync`), Query or FunctionCall.
    Ready {
        sync: bool,
    },
}

impl Expect {
    fn is_ready(&self) -> bool {
        matches!(self, Expect::Ready { .. })
    }
}

/// What the client asked for in the frames just relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStep {
    Continue,
    /// The client sent Terminate.
    Terminate,
}

/// The server connection's state the relay reads and updates. Built as a literal where it is
/// used: borrowing these fields one by one leaves the connection's socket and read buffer free
/// for the same step (a constructor taking the whole connection would not).
pub struct ServerSide<'a> {
    pub params: &'a mut BTreeMap<String, String>,
    pub prepared: &'a mut Prepared,
    /// `max_prepared_statements`: the least recently used statement beyond it is closed.
    pub max_prepared: usize,
    /// [`switchyard_server::ServerConn::passthrough`]: what is still to come of a message
    /// passed through in pieces.
    pub passthrough: &'a mut u32,
    /// Session mode: what the client builds on the connection (see `session_state`).
    pub built: Option<&'a mut BuiltState>,
}

/// Relay state for one attachment of a client to a server connection.
pub struct Relay {
    mode: PoolMode,
    expect: VecDeque<Expect>,
    /// Extended-protocol messages sent since the last Sync.
    unsynced: bool,
    /// The server is in copy-in mode (CopyInResponse seen, the client's CopyDone or CopyFail
    /// not yet sent).
    copy_in: bool,
    pub status: TxStatus,
    /// The server sent a FATAL error: it is closing.
    pub server_fatal: Option<Fatal>,
    /// The server said something that suggests it is no longer a healthy primary (read-only
    /// transaction, shutting down): the monitor should probe it now.
    pub evidence: bool,
    /// A request that may commit (COMMIT, END, PREPARE TRANSACTION, in any statement of a
    /// query or through a bound statement, whatever the protocol) was sent and not yet
    /// answered: if the server is lost now, the transaction's outcome is unknown.
    commit_in_flight: bool,
    /// A request that rolls the transaction back was sent and not yet answered: any request
    /// sent after it runs outside the transaction block and may commit by itself.
    rollback_in_flight: bool,
    /// What the unnamed statement last parsed on this attachment may do.
    unnamed_statement: Effect,
    /// What the unnamed portal may do when executed (None: not bound on this attachment).
    unnamed_portal: Option<Effect>,
    /// What any named portal bound on this attachment may do (their union; None: none bound).
    /// Per portal would cost a map in every session for what only cursors use.
    named_portals: Option<Effect>,
    /// The client's SQL on this attachment named search_path (a setting PostgreSQL before 18
    /// does not report).
    names_search_path: bool,
    /// search_path may have changed on this attachment (a SET naming it, a RESET or DISCARD
    /// ALL completed): read it back before the connection goes back to the pool.
    pub read_back_search_path: bool,
    /// The connection's state is not known (a read-back failed), or it may hear notifications
    /// (a LISTEN in transaction mode): close it, never reuse it.
    pub discard: bool,
    /// Transaction mode: a LISTEN went to the server on this attachment (the client is warned
    /// that nobody listens for it; see `session/listen.rs`).
    pub listened: bool,
    /// Requests answered (ReadyForQuery) on this attachment.
    pub answered: u32,
    /// The request being answered ran past `query_timeout` and a cancel was sent for it.
    pub query_cancelled: bool,
    /// When the request being answered was sent, in µs since the attachment began (for the
    /// request-latency histogram and `query_timeout`); 32 bits keep every session in its
    /// allocation class, and saturate after 71 minutes.
    pub request_started_us: u32,
}

/// The first NUL-terminated string of a message body (a Bind's or Execute's portal name).
fn cstr_at_start(body: &[u8]) -> Option<&[u8]> {
    body.iter().position(|&b| b == 0).map(|end| &body[..end])
}

/// The second NUL-terminated string of a message body (a Bind's statement name).
fn cstr_after_first(body: &[u8]) -> Option<&[u8]> {
    let portal_end = body.iter().position(|&b| b == 0)?;
    let rest = &body[portal_end + 1..];
    rest.iter().position(|&b| b == 0).map(|end| &rest[..end])
}

/// What a relay step consumed and where the bytes to send are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded {
    /// Bytes of the input consumed.
    pub used: usize,
    /// When `verbatim`: the bytes to send are the input's first `end` (a Terminate is consumed,
    /// not sent).
    pub end: usize,
    /// The frames go through unchanged, straight from the input; else they are in `out`.
    pub verbatim: bool,
}

impl Forwarded {
    /// The bytes to send.
    pub fn bytes<'a>(&self, input: &'a [u8], out: &'a [u8]) -> &'a [u8] {
        if self.verbatim {
            &input[..self.end]
        } else {
            out
        }
    }
}

/// Room in `input` (after the relayed bytes were dropped) for the next read: for the whole of
/// a partial server message at its front, so that a large one is read in few steps, or for a
/// piece of one passed through in pieces (`passthrough` bytes of it still to come).
pub fn reserve_for_partial(input: &mut BytesMut, passthrough: u32) {
    if passthrough > 0 {
        input.reserve((passthrough as usize).min(STREAM_CHUNK));
    } else if let Ok(Some(h)) = peek_header(input, MAX_SERVER_MESSAGE)
        && input.len() < h.wire_len
    {
        let want = if streams(h.tag) && h.wire_len > STREAM_OVER {
            STREAM_CHUNK
        } else {
            h.wire_len
        };
        input.reserve(want.saturating_sub(input.len()));
    }
}

/// Why a server connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fatal {
    /// Shutdown or termination (57P01/57P02/57P03) in transaction mode: the server is going
    /// away. Not relayed: the session handles it like any lost server, and the client keeps
    /// its connection.
    ServerGoingAway,
    /// The same in session mode: the client's backend is gone with its session state, so the
    /// server's own FATAL is relayed and the session ends, as on a direct connection.
    SessionEnded,
    /// Anything else (often the client's own doing): relayed, and the session ends.
    Other,
}

/// Message types a client may send after startup.
pub fn is_frontend_tag(tag: u8) -> bool {
    matches!(
        tag,
        fe::BIND
            | fe::CLOSE
            | fe::COPY_DATA
            | fe::COPY_DONE
            | fe::COPY_FAIL
            | fe::DESCRIBE
            | fe::EXECUTE
            | fe::FLUSH
            | fe::FUNCTION_CALL
            | fe::PARSE
            | fe::QUERY
            | fe::SYNC
            | fe::TERMINATE
    )
}

/// True for a batch of client frames that cannot change anything on the server: one Query
/// holding a lone `BEGIN …` / `START TRANSACTION …`, or extended-protocol messages without an
/// Execute (Parse, Bind, Describe, Flush, Sync: what drivers send to prepare a statement). If
/// the server is lost before it answers, such a batch can simply be sent again elsewhere.
pub fn changes_nothing(frames: &[u8]) -> bool {
    let mut rest = frames;
    let mut any = false;
    while let Some((&tag, after)) = rest.split_first() {
        let Some(len) = after
            .get(..4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        else {
            return false;
        };
        let Some(body) = after.get(4..len).filter(|_| len >= 4) else {
            return false;
        };
        let harmless = match tag {
            fe::PARSE | fe::BIND | fe::DESCRIBE | fe::FLUSH | fe::SYNC => true,
            fe::QUERY => !any && after.len() == len && is_transaction_start(body),
            _ => false,
        };
        if !harmless {
            return false;
        }
        any = true;
        rest = &after[len..];
    }
    any
}

impl Relay {
    pub fn new(mode: PoolMode) -> Self {
        Self {
            mode,
            expect: VecDeque::new(),
            unsynced: false,
            copy_in: false,
            status: TxStatus::Idle,
            server_fatal: None,
            evidence: false,
            commit_in_flight: false,
            rollback_in_flight: false,
            unnamed_statement: Effect::default(),
            unnamed_portal: None,
            named_portals: None,
            names_search_path: false,
            read_back_search_path: false,
            discard: false,
            listened: false,
            answered: 0,
            query_cancelled: false,
            request_started_us: 0,
        }
    }

    /// Ready for a new attachment; keeps the queue's allocation.
    pub fn reset(&mut self) {
        self.expect.clear();
        self.unsynced = false;
        self.copy_in = false;
        self.status = TxStatus::Idle;
        self.server_fatal = None;
        self.evidence = false;
        self.commit_in_flight = false;
        self.rollback_in_flight = false;
        self.unnamed_statement = Effect::default();
        self.unnamed_portal = None;
        self.named_portals = None;
        self.names_search_path = false;
        self.read_back_search_path = false;
        self.discard = false;
        self.listened = false;
        self.answered = 0;
        self.query_cancelled = false;
        self.request_started_us = 0;
    }

    /// Requests forwarded whose ReadyForQuery has not come back.
    pub fn outstanding_requests(&self) -> usize {
        self.expect.iter().filter(|e| e.is_ready()).count()
    }

    /// Extended-protocol messages were sent after the last Sync.
    pub fn unsynced(&self) -> bool {
        self.unsynced
    }

    /// Messages of Switchyard's own (a Parse of a statement the connection lacked, a Close of
    /// an evicted one) went to the server with the client's: their answers are not the
    /// client's, and are taken off only here.
    pub fn injected(&self) -> bool {
        self.expect.iter().any(|e| {
            matches!(
                e,
                Expect::ParseComplete { injected: true } | Expect::CloseComplete { injected: true }
            )
        })
    }

    pub fn commit_in_flight(&self) -> bool {
        self.commit_in_flight
    }

    /// True at a sync point with no transaction open: the server connection is free.
    pub fn at_sync_point(&self) -> bool {
        self.status == TxStatus::Idle && !self.unsynced && self.expect.is_empty()
    }

    /// In transaction mode, the end of a transaction releases the server connection.
    pub fn releases(&self) -> bool {
        self.mode == PoolMode::Transaction && self.at_sync_point()
    }

    /// Relays every complete client frame at the front of `input`, stopping after a Terminate.
    /// Frames go through unchanged where they can ([`Forwarded::verbatim`]: nothing is copied)
    /// and into `out` from the first one that must be rewritten. The caller drops the used bytes
    /// of `input` only once they have reached the server, so a request whose first write fails is
    /// still there to go elsewhere.
    pub fn client_to_server(
        &mut self,
        input: &[u8],
        max: usize,
        statements: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(ClientStep, Forwarded), ProtoError> {
        let mut pos = 0;
        let mut copying = false;
        let forwarded = |pos: usize, end: usize, copying: bool| Forwarded {
            used: pos,
            end,
            verbatim: !copying,
        };
        while let Some(h) = peek_header(&input[pos..], max)? {
            if !is_frontend_tag(h.tag) {
                return Err(ProtoError::Unexpected {
                    tag: h.tag as char,
                    during: "a session",
                });
            }
            let start = pos;
            let Some(msg) = input.get(pos..pos + h.wire_len) else {
                break;
            };
            pos += h.wire_len;
            let rewrite = self.mode == PoolMode::Transaction
                && matches!(h.tag, fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE);
            if matches!(h.tag, fe::QUERY | fe::PARSE) {
                let m = mentions(&msg[5..]);
                self.names_search_path |= m.search_path;
                if m.listen && self.mode == PoolMode::Transaction {
                    // Its server connection would hear for the next client: closed, not pooled.
                    self.listened = true;
                    self.discard = true;
                }
            }
            if let Some(built) = server.built.as_deref_mut() {
                session_state::note_message(built, h.tag, &msg[5..], self.copy_in);
            }
            self.note_commit(h.tag, &msg[5..], statements);
            if rewrite {
                if !copying {
                    out.extend_from_slice(&input[..start]);
                    copying = true;
                }
                let frame = Frame {
                    tag: h.tag,
                    body: Bytes::copy_from_slice(&msg[5..]),
                };
                self.rewrite(frame, statements, server, out)?;
                continue;
            }
            match h.tag {
                fe::TERMINATE => {
                    return Ok((ClientStep::Terminate, forwarded(pos, start, copying)));
                }
                fe::QUERY | fe::FUNCTION_CALL => {
                    self.expect.push_back(Expect::Ready { sync: false })
                }
                fe::SYNC => {
                    // In copy-in mode the server ignores a Sync: no answer is owed for it.
                    if !self.copy_in {
                        self.expect.push_back(Expect::Ready { sync: true });
                    }
                    self.unsynced = false;
                }
                fe::COPY_DONE | fe::COPY_FAIL => self.copy_in = false,
                fe::PARSE => self
                    .expect
                    .push_back(Expect::ParseComplete { injected: false }),
                fe::CLOSE => self
                    .expect
                    .push_back(Expect::CloseComplete { injected: false }),
                fe::BIND | fe::DESCRIBE | fe::EXECUTE => self.unsynced = true,
                _ => {}
            }
            if matches!(h.tag, fe::PARSE | fe::CLOSE) {
                self.unsynced = true;
            }
            if copying {
                out.extend_from_slice(msg);
            }
        }
        Ok((ClientStep::Continue, forwarded(pos, pos, copying)))
    }

    /// Classifies by what reaches the server, whatever the protocol: a Query with a committing
    /// statement anywhere in it, or an Execute of a portal bound to one (or to a statement or
    /// portal not known here), puts a commit in flight; so does any request sent while a
    /// rollback is unanswered (it runs outside the transaction block). A Parse records what the
    /// unnamed statement would do, a Bind what its portal would.
    fn note_commit(&mut self, tag: u8, body: &[u8], statements: &Statements) {
        let effect = match tag {
            fe::QUERY => Effect::of(body),
            fe::EXECUTE => match cstr_at_start(body) {
                Some([]) => self.unnamed_portal,
                Some(_) => self.named_portals,
                None => None,
            }
            .unwrap_or(Effect::UNKNOWN),
            fe::FUNCTION_CALL => Effect::default(),
            fe::PARSE => {
                if let Some(text) = body.strip_prefix(&[0]) {
                    self.unnamed_statement = Effect::of(text);
                }
                return;
            }
            fe::BIND => {
                let effect = match cstr_after_first(body) {
                    Some([]) => self.unnamed_statement,
                    Some(name) => statements.get(name).map_or(Effect::UNKNOWN, |s| s.effect),
                    None => Effect::UNKNOWN,
                };
                match cstr_at_start(body) {
                    Some([]) => self.unnamed_portal = Some(effect),
                    _ => {
                        let all = self.named_portals.unwrap_or_default();
                        self.named_portals = Some(all.or(effect));
                    }
                }
                return;
            }
            _ => return,
        };
        self.commit_in_flight |= effect.commits() || self.rollback_in_flight;
        self.rollback_in_flight |= effect.rolls_back();
    }

    /// Transaction mode: named statements get their server-side names, and are prepared on this
    /// server connection first when it lacks them.
    fn rewrite(
        &mut self,
        frame: Frame,
        st: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        self.unsynced = true;
        match frame.tag {
            fe::PARSE => {
                let parse = Parse::decode(&frame)?;
                if parse.name.is_empty() {
                    self.expect
                        .push_back(Expect::ParseComplete { injected: false });
                    frame.encode(out);
                    return Ok(());
                }
                let s = st.prepare(parse)?;
                if server.prepared.contains(&s.server_name) || server.prepared.is_uncertain() {
                    // Another client's identical statement (or maybe one, after an error made
                    // the record uncertain): replace it (same text, same name).
                    self.inject_close(&s.server_name, out);
                }
                self.note_prepared(&s.server_name, server, out);
                s.parse.renamed(&s.server_name).encode(out);
                self.expect
                    .push_back(Expect::ParseComplete { injected: false });
            }
            fe::BIND => {
                let bind = Bind::decode(&frame)?;
                match st.get(&bind.statement) {
                    Some(s) if !bind.statement.is_empty() => {
                        let s = s.clone();
                        self.ensure_prepared(&s.server_name, &s.parse, server, out);
                        bind.with_statement(&s.server_name).encode(out);
                    }
                    _ => frame.encode(out),
                }
            }
            _ => self.rewrite_target(frame, st, server, out)?,
        }
        Ok(())
    }

    fn rewrite_target(
        &mut self,
        frame: Frame,
        st: &mut Statements,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(), ProtoError> {
        let target = Target::decode(&frame)?;
        let is_close = frame.tag == fe::CLOSE;
        if is_close {
            self.expect
                .push_back(Expect::CloseComplete { injected: false });
        }
        if target.kind == TargetKind::Portal || target.name.is_empty() {
            frame.encode(out);
            return Ok(());
        }
        let known = if is_close {
            st.close(&target.name)
        } else {
            st.get(&target.name).cloned()
        };
        match known {
            Some(s) if is_close => {
                server.prepared.remove(&s.server_name);
                Target::encode(fe::CLOSE, TargetKind::Statement, &s.server_name).encode(out);
            }
            Some(s) => {
                self.ensure_prepared(&s.server_name, &s.parse, server, out);
                Target::encode(fe::DESCRIBE, TargetKind::Statement, &s.server_name).encode(out);
            }
            None => frame.encode(out),
        }
        Ok(())
    }

    fn ensure_prepared(
        &mut self,
        name: &Bytes,
        parse: &Parse,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) {
        if server.prepared.contains(name) {
            server.prepared.touch(name);
            return;
        }
        // Close first: harmless if absent, and it covers a statement we lost track of.
        self.inject_close(name, out);
        self.note_prepared(name, server, out);
        parse.renamed(name).encode(out);
        self.expect
            .push_back(Expect::ParseComplete { injected: true });
    }

    /// Records a statement prepared on the server, closing the least recently used one there if
    /// the connection then holds more than `max_prepared_statements`.
    fn note_prepared(&mut self, name: &Bytes, server: &mut ServerSide<'_>, out: &mut BytesMut) {
        if let Some(evicted) = server.prepared.insert(name.clone(), server.max_prepared) {
            self.inject_close(&evicted, out);
        }
    }

    fn inject_close(&mut self, name: &[u8], out: &mut BytesMut) {
        Target::encode(fe::CLOSE, TargetKind::Statement, name).encode(out);
        self.expect
            .push_back(Expect::CloseComplete { injected: true });
    }

    /// Relays every complete server frame at the front of `input`: unchanged where it can
    /// ([`Forwarded::verbatim`]: nothing is copied), into `out` from the first frame that is
    /// dropped (a response to a message the relay injected, a FATAL "shutting down"). Returns
    /// whether a ReadyForQuery went by (the only point where the server connection can be
    /// released). The caller drops the used bytes once they are relayed.
    pub fn server_to_client(
        &mut self,
        input: &[u8],
        params: &mut ClientParams,
        server: &mut ServerSide<'_>,
        out: &mut BytesMut,
    ) -> Result<(bool, Forwarded), ProtoError> {
        let mut saw_ready = false;
        // The rest of a message being passed through in pieces comes first.
        let mut pos = input.len().min(*server.passthrough as usize);
        *server.passthrough -= pos as u32;
        let mut copying = false;
        while *server.passthrough == 0
            && let Some(h) = peek_header(&input[pos..], MAX_SERVER_MESSAGE)?
        {
            let Some(msg) = input.get(pos..pos + h.wire_len) else {
                if streams(h.tag) && h.wire_len > STREAM_OVER {
                    // Too large to hold: what has come of it goes now, the rest as it comes.
                    if copying {
                        out.extend_from_slice(&input[pos..]);
                    }
                    *server.passthrough = (h.wire_len - (input.len() - pos)) as u32;
                    pos = input.len();
                }
                break;
            };
            let body = &msg[5..];
            let forward = match h.tag {
                be::READY_FOR_QUERY => {
                    saw_ready = true;
                    self.answered = self.answered.saturating_add(1);
                    self.on_ready(body)?;
                    if let Some(built) = server.built.as_deref_mut() {
                        built.ready(self.status);
                    }
                    true
                }
                be::PARAMETER_STATUS | be::ERROR_RESPONSE => {
                    let f = Frame {
                        tag: h.tag,
                        body: Bytes::copy_from_slice(body),
                    };
                    self.observe(&f, params, server)?
                }
                be::COMMAND_COMPLETE => {
                    if body.starts_with(b"DISCARD") || body.starts_with(b"DEALLOCATE") {
                        server.prepared.clear();
                    }
                    self.read_back_search_path |= body == b"RESET\0"
                        || body == b"DISCARD ALL\0"
                        || (body == b"SET\0" && self.names_search_path);
                    true
                }
                be::PARSE_COMPLETE => {
                    let injected = self.take(|e| matches!(e, Expect::ParseComplete { .. }));
                    if let Some(built) = server.built.as_deref_mut().filter(|_| !injected) {
                        built.op_done();
                    }
                    !injected
                }
                be::COPY_IN_RESPONSE => {
                    if let Some(number) = self.on_copy_in()
                        && let Some(built) = server.built.as_deref_mut()
                    {
                        built.sync_ignored(number);
                    }
                    true
                }
                be::CLOSE_COMPLETE => {
                    let injected = self.take(|e| matches!(e, Expect::CloseComplete { .. }));
                    if let Some(built) = server.built.as_deref_mut().filter(|_| !injected) {
                        built.op_done();
                    }
                    !injected
                }
                _ => true,
            };
            if !forward && !copying {
                out.extend_from_slice(&input[..pos]);
                copying = true;
            } else if forward && copying {
                out.extend_from_slice(msg);
            }
            pos += h.wire_len;
        }
        Ok((
            saw_ready,
            Forwarded {
                used: pos,
                end: pos,
                verbatim: !copying,
            },
        ))
    }

    /// The server entered copy-in mode, where it ignores Sync: the Sync a driver sends right
    /// after the Execute that started COPY FROM STDIN (libpq and tokio-postgres do) gets no
    /// ReadyForQuery, and neither do Syncs sent until CopyDone or CopyFail.
    ///
    /// Returns the number of the request that Sync was (counted from the attachment's first).
    fn on_copy_in(&mut self) -> Option<u64> {
        self.copy_in = true;
        let i = (self.expect.iter()).position(|e| *e == Expect::Ready { sync: true })?;
        let before = self.expect.iter().take(i).filter(|e| e.is_ready()).count();
        self.expect.remove(i);
        Some(u64::from(self.answered) + before as u64)
    }

    /// Pops the expected response if it matches; true if it was one the relay injected.
    fn take(&mut self, is: impl Fn(&Expect) -> bool) -> bool {
        match self.expect.front() {
            Some(e) if is(e) => {
                let injected = matches!(
                    e,
                    Expect::ParseComplete { injected: true }
                        | Expect::CloseComplete { injected: true }
                );
                self.expect.pop_front();
                injected
            }
            _ => false,
        }
    }

    fn on_ready(&mut self, body: &[u8]) -> Result<(), ProtoError> {
        self.status = match body.first() {
            Some(b'I') => TxStatus::Idle,
            Some(b'T') => TxStatus::InTransaction,
            Some(b'E') => TxStatus::Failed,
            _ => {
                return Err(ProtoError::Malformed {
                    what: "ReadyForQuery status",
                });
            }
        };
        while let Some(e) = self.expect.pop_front() {
            if e.is_ready() {
                break;
            }
        }
        self.query_cancelled = false;
        if self.status == TxStatus::Idle {
            // Outside a transaction block no portal outlives its Sync.
            self.unnamed_portal = None;
            self.named_portals = None;
        }
        if !self.unsynced && !self.busy() {
            // Everything sent has been answered: no commit is in flight any more.
            self.commit_in_flight = false;
            self.rollback_in_flight = false;
        }
        Ok(())
    }

    /// Looks at a ParameterStatus or ErrorResponse; returns whether to relay it.
    fn observe(
        &mut self,
        f: &Frame,
        params: &mut ClientParams,
        server: &mut ServerSide<'_>,
    ) -> Result<bool, ProtoError> {
        if f.tag == be::PARAMETER_STATUS {
            let (k, v) = backend::decode_parameter_status(f)?;
            params.observe(&k, &v);
            server.params.insert(k, v);
            return Ok(true);
        }
        // ErrorResponse: the server skips everything up to the next Sync, so do our expectations.
        let mut skipped_parse = false;
        let mut built = server.built.as_deref_mut();
        while let Some(e) = self.expect.front().filter(|e| !e.is_ready()) {
            skipped_parse |= matches!(e, Expect::ParseComplete { .. });
            if let (
                Expect::ParseComplete { injected: false }
                | Expect::CloseComplete { injected: false },
                Some(b),
            ) = (e, built.as_deref_mut())
            {
                b.op_skipped();
            }
            self.expect.pop_front();
        }
        if let Some(b) = built {
            b.error();
        }
        if skipped_parse {
            // A Parse the record counted as done was skipped: the record no longer tells what
            // the server has.
            server.prepared.forget_uncertain();
        }
        let e = ErrorFields::decode(f)?;
        let going_away = e.code.starts_with("57P");
        self.evidence |= going_away || e.code == switchyard_proto::sqlstate::READ_ONLY_TRANSACTION;
        if !e.is_fatal() {
            return Ok(true);
        }
        let fatal = match (going_away, self.mode) {
            (true, PoolMode::Transaction) => Fatal::ServerGoingAway,
            (true, PoolMode::Session) => Fatal::SessionEnded,
            (false, _) => Fatal::Other,
        };
        self.server_fatal = Some(fatal);
        Ok(fatal != Fatal::ServerGoingAway)
    }

    /// True while a response is still due from the server.
    pub fn busy(&self) -> bool {
        self.expect.iter().any(Expect::is_ready)
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
