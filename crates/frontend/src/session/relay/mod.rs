//! The relay proper, sans-IO: moves complete messages between the client's and the server's
//! buffers, keeps the expected-response queue, rewrites named statements in transaction mode,
//! and decides when a transaction has ended so the server connection can go back to its pool.

use crate::params::ClientParams;
use crate::session_state;
use crate::sql::{Effect, is_transaction_start, query_text, scan};
use crate::statements::Statements;
use bytes::{Bytes, BytesMut};
use std::collections::{BTreeMap, VecDeque};
use switchyard_config::PoolMode;
use switchyard_proto::backend::{self, ErrorFields, TxStatus, tag as be};
use switchyard_proto::frontend::{Bind, Parse, Target, TargetKind, tag as fe};
use switchyard_proto::{Frame, ProtoError, peek_header};
use switchyard_server::{BuiltState, Prepared};

mod answer;
mod request;

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
    /// [`switchyard_server::ServerConn::held_fatal`]: [`Fatal::SessionEnded`]'s FATAL, not
    /// relayed.
    pub held_fatal: &'a mut Option<Frame>,
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

/// Whether an extended-protocol message names a prepared statement (which transaction mode
/// renames per server connection). The unnamed statement and portals are the server
/// connection's own for the length of one attachment: those messages pass unchanged, as most
/// drivers' unnamed flights do. A malformed one counts as naming one, so that its decoding
/// reports it.
fn names_a_statement(tag: u8, body: &[u8]) -> bool {
    match tag {
        fe::PARSE => body.first() != Some(&0),
        fe::BIND => cstr_after_first(body) != Some(&[]),
        fe::DESCRIBE | fe::CLOSE => !matches!(body, [b'S', 0] | [b'P', .., 0]),
        _ => false,
    }
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
    /// The same in session mode: the client's backend is gone with its session state. Held
    /// (`ServerSide::held_fatal`) until the session knows why: a primary that stays terminated the
    /// backend, and the server's own FATAL is relayed and the session ends, as on a direct
    /// connection; a primary going away (a switchover's shutdown) is a failover, and the
    /// session is rebuilt on the next primary if it can be.
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

    /// True while a response is still due from the server.
    pub fn busy(&self) -> bool {
        self.expect.iter().any(Expect::is_ready)
    }
}

#[cfg(test)]
mod tests;
