//! [`CommitProbe`]: what Switchyard learns of a transaction in the same flight as its COMMIT
//! (its transaction id and the WAL position before the commit record), so that if the server
//! is lost before the COMMIT's answer the outcome can be asked of the new primary
//! (`frontend::session::resolve`).
//!
//! The probe is a prepared statement run just before the client's COMMIT, in the same write;
//! its answers come first and are taken off the stream here, so the client never sees them.
//! An autocommit write (one INSERT, UPDATE, DELETE or MERGE sent over the extended protocol)
//! gets a write probe instead, in the same implicit transaction (no Sync between): it assigns
//! the transaction its id before the statement runs.

use bytes::{Buf, BufMut, BytesMut};
use std::time::Instant;
use switchyard_proto::backend::{ErrorFields, tag};
use switchyard_proto::{ProtoError, peek_header};

/// The probe: the transaction's id if it has one (a transaction that wrote nothing has none),
/// a WAL position before the commit record that follows, and the timeline the transaction
/// runs on (from the WAL file name: PostgreSQL has no plainer way to ask).
///
/// With an id, the position is the end of a small transactional WAL message written now
/// (`pg_logical_emit_message`, which needs no logical decoding): a record that carries the
/// id. A promoted standby whose history reaches that position has seen the id, so it can never
/// hand the same id to another transaction, and `pg_xact_status` there speaks of this one. (A
/// transaction that only wrote to temporary or unlogged tables has no record of its id before
/// its commit record; without this one, a standby that missed the commit could reuse the id.)
pub const PROBE_SQL: &str = "SELECT pg_catalog.txid_current_if_assigned(), \
     CASE WHEN pg_catalog.txid_current_if_assigned() IS NULL \
     THEN pg_catalog.pg_current_wal_insert_lsn() \
     ELSE pg_catalog.pg_logical_emit_message(true, 'switchyard', '') END, \
     ('x' || substr(pg_catalog.pg_walfile_name(\
     pg_catalog.pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int";

/// The probe prepared on the connection once (at login), so each COMMIT's probe is a Bind and
/// an Execute, neither parsed nor planned again. While the connection's record of prepared
/// statements lacks it (a client's DISCARD ALL or DEALLOCATE ALL, an eviction, an error that
/// made the record uncertain), the probe goes as a simple query instead.
pub const PROBE_STATEMENT: &[u8] = b"sy_commit_probe";

/// The probe's messages: Bind, Execute and Sync of [`PROBE_STATEMENT`] if `prepared`, else a
/// Query. (A Sync inside the client's transaction block ends nothing.)
pub fn probe_messages(prepared: bool) -> BytesMut {
    let mut out = BytesMut::new();
    if !prepared {
        switchyard_proto::frontend::query(PROBE_SQL).encode(&mut out);
        return out;
    }
    probe_messages_of(PROBE_STATEMENT)
}

/// Bind, Execute and Sync of the prepared statement `name`.
fn probe_messages_of(name: &[u8]) -> BytesMut {
    use switchyard_proto::frontend::{bind_unnamed_portal, execute_all, tag as fe};
    let mut out = BytesMut::new();
    bind_unnamed_portal(name, &[]).encode(&mut out);
    execute_all().encode(&mut out);
    switchyard_proto::Frame::new(fe::SYNC, bytes::Bytes::new()).encode(&mut out);
    out
}

/// The write probe: as [`PROBE_SQL`], but it runs before the write, in the same implicit
/// transaction, and gives it its id at once (the WAL message assigns it and records it).
pub const WRITE_PROBE_SQL: &str = "SELECT pg_catalog.txid_current(), \
     pg_catalog.pg_logical_emit_message(true, 'switchyard', ''), \
     ('x' || substr(pg_catalog.pg_walfile_name(\
     pg_catalog.pg_current_wal_insert_lsn()), 1, 8))::bit(32)::int";

/// [`WRITE_PROBE_SQL`] prepared on the connection once (at login); without it, writes are
/// not probed.
pub const WRITE_PROBE_STATEMENT: &[u8] = b"sy_write_probe";

/// The write probe's messages: Bind and Execute of [`WRITE_PROBE_STATEMENT`], no Sync: the
/// client's statement and Sync follow in the same implicit transaction (the caller puts a
/// Flush before that Sync, which brings the probe's answer out with the statement's).
pub fn write_probe_messages() -> BytesMut {
    let mut out = probe_messages_of(WRITE_PROBE_STATEMENT);
    // Without the Sync (5 bytes at the end).
    out.truncate(out.len() - 5);
    out
}

/// Whether the connection's user may run [`PROBE_SQL`] (asked once per connection, at login):
/// a probe refused inside a transaction would abort it, turning its COMMIT into a rollback.
pub(crate) const PRIVILEGE_SQL: &str = "SELECT pg_catalog.has_function_privilege(\
     'pg_catalog.txid_current_if_assigned()', 'EXECUTE') AND \
     pg_catalog.has_function_privilege('pg_catalog.txid_current()', 'EXECUTE') AND \
     (SELECT coalesce(bool_and(pg_catalog.has_function_privilege(p.oid, 'EXECUTE')), false) \
      FROM pg_catalog.pg_proc p WHERE p.proname = 'pg_logical_emit_message' \
      AND p.pronamespace = 'pg_catalog'::regnamespace) AND \
     pg_catalog.has_function_privilege('pg_catalog.pg_current_wal_insert_lsn()', 'EXECUTE') AND \
     pg_catalog.has_function_privilege('pg_catalog.pg_walfile_name(pg_lsn)', 'EXECUTE')";

/// Largest answer message the probe can have (a row of three short values, an error).
const MAX_PROBE_MESSAGE: usize = 64 << 10;

/// What the probe learnt of a transaction about to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probed {
    /// The transaction's id; none if it wrote nothing.
    pub xid: Option<u64>,
    /// The WAL position before its commit record.
    pub lsn: u64,
    /// The timeline it ran on.
    pub timeline: u32,
    /// When its COMMIT was sent (the server's age is compared with the time since).
    pub sent_at: Instant,
}

/// How the client's COMMIT is answered: the tags of the server's messages, in order, which
/// Switchyard sends itself when it learns after a failover that the transaction committed. A
/// simple query's is CommandComplete and ReadyForQuery; an extended flight's has ParseComplete,
/// ParameterDescription, NoData and BindComplete before them, as its messages asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitReply {
    tags: [u8; 8],
    len: u8,
}

impl CommitReply {
    /// A simple query's COMMIT.
    pub const SIMPLE: CommitReply = CommitReply {
        tags: [
            tag::COMMAND_COMPLETE,
            tag::READY_FOR_QUERY,
            0,
            0,
            0,
            0,
            0,
            0,
        ],
        len: 2,
    };

    /// From the answers' tags (at most 8).
    pub fn of(tags: &[u8]) -> Option<CommitReply> {
        let mut reply = CommitReply {
            tags: [0; 8],
            len: u8::try_from(tags.len()).ok()?,
        };
        reply.tags.get_mut(..tags.len())?.copy_from_slice(tags);
        Some(reply)
    }

    /// The answer of a COMMIT that committed.
    pub fn frames(&self) -> Vec<switchyard_proto::Frame> {
        use switchyard_proto::Frame;
        use switchyard_proto::backend::{self, TxStatus};
        self.tags[..usize::from(self.len)]
            .iter()
            .map(|&t| match t {
                tag::COMMAND_COMPLETE => backend::command_complete("COMMIT"),
                tag::READY_FOR_QUERY => backend::ready_for_query(TxStatus::Idle),
                // ParameterDescription: no parameters.
                b't' => Frame::new(t, bytes::Bytes::from_static(&[0, 0])),
                _ => Frame::new(t, bytes::Bytes::new()),
            })
            .collect()
    }
}

/// What the probed request is, and so how its answer is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probing {
    /// A COMMIT, answered this way if it committed.
    Commit(CommitReply),
    /// An autocommit write behind a write probe: its own answer (rows, CommandComplete) is
    /// held until its ReadyForQuery, so that if the server is lost the client has had none of
    /// it and gets either all of it (the transaction committed) or an error.
    Write,
    /// The same, for writes the client sent as a simple query: each of its statements runs
    /// as the extended protocol's unnamed statement, all in the probe's implicit transaction
    /// (a probe's error would leave a simple query behind it skipped, waiting for a Sync that
    /// never comes), and what that adds to its answer (ParseComplete, BindComplete, NoData) is
    /// taken out, so the client sees a simple query's answer.
    SimpleWrite {
        /// How many (a whole answer has a CommandComplete for each, or an error).
        statements: u8,
    },
}

impl Probing {
    /// An autocommit write's (whose own answer is held).
    pub fn is_write(self) -> bool {
        matches!(self, Probing::Write | Probing::SimpleWrite { .. })
    }

    /// How many statements the probed request runs.
    pub fn statements(self) -> usize {
        match self {
            Probing::SimpleWrite { statements } => usize::from(statements),
            _ => 1,
        }
    }
}

/// Takes out of `buf`, from `from` (where a message begins) through the first ReadyForQuery,
/// what running a simple query as the extended protocol added to its answer: ParseComplete,
/// BindComplete and NoData, before each of its statements' answers (complete messages only;
/// a simple query's answer has none of these, so nothing of the client's is taken).
pub fn strip_extended_answers(buf: &mut BytesMut, from: usize) {
    let mut at = from.min(buf.len());
    // Built only if something is taken out.
    let mut kept: Option<BytesMut> = None;
    let mut copied_to = 0;
    while let Ok(Some(h)) = peek_header(&buf[at..], usize::MAX) {
        if buf.len() < at + h.wire_len {
            break;
        }
        match h.tag {
            tag::PARSE_COMPLETE | tag::BIND_COMPLETE | tag::NO_DATA => {
                let k = kept.get_or_insert_with(|| BytesMut::with_capacity(buf.len()));
                k.extend_from_slice(&buf[copied_to..at]);
                copied_to = at + h.wire_len;
            }
            tag::READY_FOR_QUERY => break,
            _ => {}
        }
        at += h.wire_len;
    }
    if let Some(mut kept) = kept {
        kept.extend_from_slice(&buf[copied_to..]);
        *buf = kept;
    }
}

/// Most bytes of a probed request's own answer held back; past this (a long RETURNING, a long
/// notice) it is relayed as it comes and the request, if its server is lost, gets 08007 as
/// without a probe.
const MAX_HELD_BYTES: usize = 1 << 20;

/// Where the probe of the connection's current COMMIT stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CommitProbe {
    /// No COMMIT probed on this request.
    #[default]
    None,
    /// Sent with the request at that instant; its answers are the first to come.
    Sent(Instant, Probing),
    /// Answered; the request's own answer is held until all of it has come, so that if the
    /// server is lost before, the client has had none of it.
    Answered(Probed, Probing),
    /// A simple write's answer too long to hold: relayed as it comes, still without what the
    /// extended protocol adds (see [`strip_extended_answers`]), and not resolved if lost.
    Relayed,
    /// The probe failed (cancelled, a privilege taken away since login): its error aborted
    /// the transaction, so the COMMIT's answer was turned into a 40001 error; the outcome is
    /// known (rolled back).
    Failed,
}

impl CommitProbe {
    /// While `Sent`: takes the probe's answers off the front of `buf` once all have arrived
    /// (through its ReadyForQuery) and records what they said; then, while `Answered`, holds
    /// the COMMIT's answer until it is all in `buf`. `Ok(true)`: `buf` may be relayed.
    ///
    /// If the probe failed, its error aborted the client's transaction and the COMMIT ends it
    /// as a ROLLBACK: that answer is awaited too and its CommandComplete replaced by an error
    /// saying so, as the client must not read a rollback as success.
    ///
    /// `relaying`: how much at the front of `buf` is the rest of a message the relay is
    /// passing on in pieces (only once the answer is [`CommitProbe::Relayed`]).
    pub fn take_answer(&mut self, buf: &mut BytesMut, relaying: usize) -> Result<bool, ProtoError> {
        match *self {
            Self::Sent(sent_at, reply) => self.take_probe(buf, sent_at, reply),
            Self::Answered(_, kind) => {
                if let Probing::SimpleWrite { .. } = kind {
                    strip_extended_answers(buf, 0);
                }
                let whole = held_whole(buf)?;
                if whole.is_none() {
                    // Too long to hold: relayed as it comes, and not resolved if lost.
                    *self = match kind {
                        Probing::SimpleWrite { .. } => Self::Relayed,
                        _ => Self::None,
                    };
                }
                Ok(whole != Some(false))
            }
            Self::Relayed => {
                strip_extended_answers(buf, relaying);
                Ok(true)
            }
            Self::None | Self::Failed => Ok(true),
        }
    }

    fn take_probe(
        &mut self,
        buf: &mut BytesMut,
        sent_at: Instant,
        reply: Probing,
    ) -> Result<bool, ProtoError> {
        // Find the end of the answer first: nothing is consumed until it is all here. A write
        // probe has no Sync of its own: its answer ends with its CommandComplete (or error).
        let answer = match reply {
            Probing::Commit(_) => scan_to_ready(buf, 0, MAX_PROBE_MESSAGE)?,
            Probing::Write | Probing::SimpleWrite { .. } => {
                // (No Sync of its own: its answer ends with its CommandComplete or error.)
                let ends = |t| matches!(t, tag::COMMAND_COMPLETE | tag::ERROR_RESPONSE);
                scan_through(buf, 0, MAX_PROBE_MESSAGE, ends)?
            }
        };
        let Some(answer) = answer else {
            return Ok(false);
        };
        let row = answer
            .iter()
            .find(|m| m.tag == tag::DATA_ROW)
            .and_then(|m| parse_row(&buf[m.body.clone()]));
        let error = answer.iter().find(|m| m.tag == tag::ERROR_RESPONSE);
        let failed = error.is_some();
        let end = answer.last().map_or(0, |m| m.body.end);
        let fatal = error.is_some_and(|m| {
            let frame = switchyard_proto::Frame::new(
                tag::ERROR_RESPONSE,
                bytes::Bytes::copy_from_slice(&buf[m.body.clone()]),
            );
            ErrorFields::decode(&frame).map_or(true, |e| e.is_fatal())
        });
        if fatal {
            // The server is ending the connection (a shutdown, a terminated backend): its
            // FATAL is left for the relay, which knows what that means; the probe's other
            // answers go. Nothing is resolved.
            let m = error.expect("fatal implies an error");
            let mut rest = BytesMut::with_capacity(buf.len() - end + m.body.len() + 5);
            rest.put_slice(&buf[m.body.start - 5..m.body.end]);
            rest.put_slice(&buf[end..]);
            *buf = rest;
            *self = Self::None;
            return Ok(true);
        }
        if row.is_none() && !failed {
            // An answer without its row (cannot happen with the probe's own statement): the
            // request runs on, unresolved; never answered as if it had failed.
            buf.advance(end);
            *self = Self::None;
            return Ok(true);
        }
        if let (Some((xid, lsn, timeline)), false) = (row, failed) {
            buf.advance(end);
            let probed = Probed {
                xid,
                lsn,
                timeline,
                sent_at,
            };
            *self = Self::Answered(probed, reply);
            return self.take_answer(buf, 0);
        }
        if reply.is_write() {
            // The probe's error made the server skip the client's statement through its Sync:
            // the client is told it did not run, and gets the ReadyForQuery that follows.
            let mut rewritten = BytesMut::with_capacity(buf.len());
            let e = ErrorFields::error(
                switchyard_proto::sqlstate::SERIALIZATION_FAILURE,
                "switchyard: the commit outcome probe sent with this statement failed, so the \
                 statement did not run; it is safe to retry",
            );
            e.to_frame().encode(&mut rewritten);
            rewritten.put_slice(&buf[end..]);
            *buf = rewritten;
            *self = Self::Failed;
            return Ok(true);
        }
        let Some(commit) = scan_to_ready(buf, end, usize::MAX)? else {
            return Ok(false);
        };
        let mut rewritten = BytesMut::with_capacity(buf.len());
        for m in &commit {
            if m.tag == tag::COMMAND_COMPLETE {
                let e = ErrorFields::error(
                    switchyard_proto::sqlstate::SERIALIZATION_FAILURE,
                    "switchyard: the commit outcome probe sent with this COMMIT failed, which \
                     rolled the transaction back; it is safe to retry",
                );
                e.to_frame().encode(&mut rewritten);
            } else {
                rewritten.put_slice(&buf[m.body.start - 5..m.body.end]);
            }
        }
        let commit_end = commit.last().map_or(end, |m| m.body.end);
        rewritten.put_slice(&buf[commit_end..]);
        *buf = rewritten;
        *self = Self::Failed;
        Ok(true)
    }
}

/// One message found in a buffer: its tag and where its body lies.
struct Found {
    tag: u8,
    body: std::ops::Range<usize>,
}

/// The messages from `at` through the next ReadyForQuery, once all have arrived (none larger
/// than `max`).
fn scan_to_ready(buf: &[u8], at: usize, max: usize) -> Result<Option<Vec<Found>>, ProtoError> {
    scan_through(buf, at, max, |t| t == tag::READY_FOR_QUERY)
}

/// The messages from `at` through the first whose tag `ends` says ends them, once all have
/// arrived (none larger than `max`).
fn scan_through(
    buf: &[u8],
    mut at: usize,
    max: usize,
    ends: impl Fn(u8) -> bool,
) -> Result<Option<Vec<Found>>, ProtoError> {
    let mut found = Vec::new();
    loop {
        let Some(h) = peek_header(&buf[at..], max)? else {
            return Ok(None);
        };
        if buf.len() < at + h.wire_len {
            return Ok(None);
        }
        found.push(Found {
            tag: h.tag,
            body: at + 5..at + h.wire_len,
        });
        at += h.wire_len;
        if ends(h.tag) {
            return Ok(Some(found));
        }
    }
}

/// Whether the request's own answer, held at the front of `buf`, is all there (through its
/// ReadyForQuery); `None` once it is longer than [`MAX_HELD_BYTES`] (no message size limit
/// applies here: the relay checks what it passes on).
fn held_whole(buf: &[u8]) -> Result<Option<bool>, ProtoError> {
    let mut at = 0;
    loop {
        let Some(h) = peek_header(&buf[at..], usize::MAX)? else {
            return Ok(Some(false));
        };
        if at + h.wire_len > MAX_HELD_BYTES {
            return Ok(None);
        }
        if buf.len() < at + h.wire_len {
            return Ok(Some(false));
        }
        if h.tag == tag::READY_FOR_QUERY {
            return Ok(Some(true));
        }
        at += h.wire_len;
    }
}

/// The complete messages of `held` (the own answer of a write of `statements` statements,
/// held when its server was lost) through its last CommandComplete or its error: what the
/// client is sent if its transaction's outcome is known; `None` if neither had come.
pub fn held_through_end(held: &[u8], statements: usize) -> Option<(&[u8], bool)> {
    let mut at = 0;
    let mut completed = 0;
    while let Ok(Some(h)) = peek_header(&held[at..], usize::MAX) {
        if held.len() < at + h.wire_len {
            return None;
        }
        at += h.wire_len;
        match h.tag {
            tag::COMMAND_COMPLETE => {
                completed += 1;
                if completed >= statements {
                    return Some((&held[..at], true));
                }
            }
            tag::ERROR_RESPONSE => return Some((&held[..at], false)),
            _ => {}
        }
    }
    None
}

/// The probe's row: (xid or NULL, LSN, timeline).
fn parse_row(body: &[u8]) -> Option<(Option<u64>, u64, u32)> {
    let mut c =
        switchyard_proto::cursor::Cursor::new(tag::DATA_ROW, bytes::Bytes::copy_from_slice(body));
    if c.i16().ok()? != 3 {
        return None;
    }
    let mut value = || -> Option<Option<String>> {
        let len = c.i32().ok()?;
        if len < 0 {
            return Some(None);
        }
        let b = c.bytes(len as usize).ok()?;
        Some(Some(String::from_utf8_lossy(&b).into_owned()))
    };
    let xid = match value()? {
        None => None,
        Some(x) => Some(x.parse().ok()?),
    };
    let lsn = parse_lsn(&value()??)?;
    let timeline = value()??.parse().ok()?;
    Some((xid, lsn, timeline))
}

/// PostgreSQL's `X/Y` LSN text as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        switchyard_proto::Frame::new(tag, bytes::Bytes::copy_from_slice(body))
            .to_bytes()
            .to_vec()
    }

    fn row(values: &[Option<&str>]) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(s) => {
                    b.put_i32(s.len() as i32);
                    b.put_slice(s.as_bytes());
                }
                None => b.put_i32(-1),
            }
        }
        msg(b'D', &b)
    }

    #[test]
    fn takes_the_answer_off_the_stream_once_it_is_all_there() {
        let mut answer = msg(b'T', b"whatever");
        answer.extend(row(&[Some("742"), Some("0/3000148"), Some("2")]));
        answer.extend(msg(b'C', b"SELECT 1\0"));
        answer.extend(msg(b'Z', b"T"));
        let commit = msg(b'C', b"COMMIT\0");
        let mut buf = BytesMut::new();
        let at = Instant::now();
        let mut probe = CommitProbe::Sent(at, Probing::Commit(CommitReply::SIMPLE));
        for (i, byte) in answer.iter().enumerate() {
            buf.put_u8(*byte);
            assert!(!probe.take_answer(&mut buf, 0).unwrap(), "at byte {i}");
        }
        let expected = Probed {
            xid: Some(742),
            lsn: 0x3000148,
            timeline: 2,
            sent_at: at,
        };
        assert_eq!(
            probe,
            CommitProbe::Answered(expected, Probing::Commit(CommitReply::SIMPLE))
        );
        assert!(buf.is_empty(), "the probe's answer was taken");
        // The COMMIT's answer is held until it is all there.
        let ready = msg(b'Z', b"I");
        let whole = [commit.clone(), ready].concat();
        for (i, byte) in whole.iter().enumerate() {
            buf.put_u8(*byte);
            let done = probe.take_answer(&mut buf, 0).unwrap();
            assert_eq!(done, i == whole.len() - 1, "at byte {i}");
        }
        assert_eq!(&buf[..], &whole[..], "the COMMIT's answer is left to relay");
    }

    #[test]
    fn no_xid() {
        let mut buf = BytesMut::new();
        buf.extend(row(&[None, Some("1/0"), Some("1")]));
        buf.extend(msg(b'Z', b"T"));
        let mut probe = CommitProbe::Sent(Instant::now(), Probing::Commit(CommitReply::SIMPLE));
        assert!(!probe.take_answer(&mut buf, 0).unwrap());
        assert!(
            matches!(probe, CommitProbe::Answered(p, _) if p.xid.is_none() && p.lsn == 1 << 32)
        );
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
    }

    #[test]
    fn a_failed_probe_turns_the_commits_rollback_into_an_error() {
        let mut buf = BytesMut::new();
        buf.extend(msg(b'E', b"SERROR\0C57014\0\0"));
        buf.extend(msg(b'Z', b"E"));
        let mut probe = CommitProbe::Sent(Instant::now(), Probing::Commit(CommitReply::SIMPLE));
        assert!(
            !probe.take_answer(&mut buf, 0).unwrap(),
            "waits for the COMMIT's answer"
        );
        let notice = msg(b'N', b"SWARNING\0\0");
        buf.extend(&notice);
        buf.extend(msg(b'C', b"ROLLBACK\0"));
        buf.extend(msg(b'Z', b"I"));
        let next = msg(b'S', b"x\0y\0");
        buf.extend(&next);
        assert!(probe.take_answer(&mut buf, 0).unwrap());
        assert_eq!(probe, CommitProbe::Failed);
        assert_eq!(&buf[..notice.len()], &notice[..], "other messages stay");
        let mut rest = BytesMut::from(&buf[notice.len()..]);
        let e = switchyard_proto::decode_frame(&mut rest, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(e.tag, b'E');
        let fields = ErrorFields::decode(&e).unwrap();
        assert_eq!(fields.code, "40001");
        assert_eq!(&rest[..], &[msg(b'Z', b"I"), next].concat()[..]);
    }

    #[test]
    fn a_committed_reply_has_the_shape_the_client_asked_for() {
        let tags = |r: CommitReply| r.frames().iter().map(|f| f.tag).collect::<Vec<u8>>();
        assert_eq!(tags(CommitReply::SIMPLE), b"CZ");
        let extended = CommitReply::of(b"1tn2nCZ").unwrap();
        assert_eq!(tags(extended), b"1tn2nCZ");
        assert!(CommitReply::of(b"123456789").is_none());
    }

    #[test]
    fn a_write_probes_answer_ends_at_its_command_complete_and_the_write_is_held() {
        let mut buf = BytesMut::new();
        buf.extend(msg(b'2', b""));
        buf.extend(row(&[Some("900"), Some("0/3000148"), Some("1")]));
        buf.extend(msg(b'C', b"SELECT 1\0"));
        let write = [msg(b'1', b""), msg(b'2', b""), msg(b'C', b"INSERT 0 1\0")].concat();
        buf.extend(&write);
        let mut probe = CommitProbe::Sent(Instant::now(), Probing::Write);
        assert!(
            !probe.take_answer(&mut buf, 0).unwrap(),
            "held until its ReadyForQuery"
        );
        assert!(matches!(probe, CommitProbe::Answered(p, Probing::Write) if p.xid == Some(900)));
        assert_eq!(&buf[..], &write[..]);
        assert_eq!(held_through_end(&buf, 1), Some((&write[..], true)));
        // Several statements: whole once each has its CommandComplete, or one failed.
        let two = [
            msg(b'C', b"INSERT 0 1\0"),
            msg(b'T', b"\0\0"),
            msg(b'D', b"\0\0"),
        ]
        .concat();
        assert_eq!(held_through_end(&two, 2), None);
        let done = [&two[..], &msg(b'C', b"SELECT 1\0")].concat();
        assert_eq!(held_through_end(&done, 2), Some((&done[..], true)));
        let failed = [&two[..], &msg(b'E', b"SERROR\0\0")].concat();
        assert_eq!(held_through_end(&failed, 3), Some((&failed[..], false)));
        buf.extend(msg(b'Z', b"I"));
        assert!(probe.take_answer(&mut buf, 0).unwrap());
        // A failed write probe: the statement was skipped; the client is told it did not run.
        let mut buf = BytesMut::new();
        buf.extend(msg(b'E', b"SERROR\0C25006\0\0"));
        buf.extend(msg(b'Z', b"I"));
        let mut probe = CommitProbe::Sent(Instant::now(), Probing::Write);
        assert!(probe.take_answer(&mut buf, 0).unwrap());
        assert_eq!(probe, CommitProbe::Failed);
        let e = switchyard_proto::decode_frame(&mut buf, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(ErrorFields::decode(&e).unwrap().code, "40001");
        assert_eq!(&buf[..], &msg(b'Z', b"I")[..]);
        assert!(!write_probe_messages().ends_with(b"S\0\0\0\x04"), "no Sync");
    }

    #[test]
    fn a_simple_writes_extended_preamble_is_taken_off_notices_kept() {
        let notice = msg(b'N', b"SNOTICE\0\0");
        let rest = [msg(b'C', b"INSERT 0 1\0"), msg(b'Z', b"I")].concat();
        let mut buf = BytesMut::new();
        for m in [
            msg(b'1', b""),
            notice.clone(),
            msg(b'2', b""),
            msg(b'n', b""),
            rest.clone(),
        ] {
            buf.extend_from_slice(&m);
        }
        strip_extended_answers(&mut buf, 0);
        assert_eq!(&buf[..], &[notice, rest.clone()].concat()[..]);
        let mut untouched = BytesMut::from(&rest[..]);
        strip_extended_answers(&mut untouched, 0);
        assert_eq!(&untouched[..], &rest[..]);
    }

    #[test]
    fn every_statements_extended_answers_are_taken_out_up_to_the_ready_for_query() {
        let row = [msg(b'T', b"\0\0"), msg(b'D', b"\0\0")].concat();
        let next = [msg(b'1', b""), msg(b'2', b""), msg(b'Z', b"I")].concat();
        let answer = [
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'n', b""),
            msg(b'C', b"INSERT 0 1\0"),
            msg(b'1', b""),
            msg(b'2', b""),
            row.clone(),
            msg(b'C', b"SELECT 1\0"),
            msg(b'1', b""),
        ]
        .concat();
        // The last ParseComplete is still arriving; a later answer's are not ours.
        let mut buf = BytesMut::from(&[&answer[..], &msg(b'Z', b"I")[..2]].concat()[..]);
        strip_extended_answers(&mut buf, 0);
        let expected = [
            msg(b'C', b"INSERT 0 1\0"),
            row.clone(),
            msg(b'C', b"SELECT 1\0"),
        ]
        .concat();
        assert_eq!(
            &buf[..],
            &[&expected[..], &msg(b'Z', b"I")[..2]].concat()[..]
        );
        let mut buf = BytesMut::from(&[&answer[..], &msg(b'Z', b"I"), &next].concat()[..]);
        strip_extended_answers(&mut buf, 0);
        assert_eq!(
            &buf[..],
            &[&expected[..], &msg(b'Z', b"I"), &next].concat()[..]
        );
        // From `from` on only: the bytes before are the rest of a message being relayed.
        let mut buf =
            BytesMut::from(&[&b"\x01\x02"[..], &msg(b'2', b""), &msg(b'Z', b"I")].concat()[..]);
        strip_extended_answers(&mut buf, 2);
        assert_eq!(&buf[..], &[&b"\x01\x02"[..], &msg(b'Z', b"I")].concat()[..]);
    }

    #[test]
    fn a_prepared_probe_is_a_bind_an_execute_and_a_sync() {
        let mut out = probe_messages(true);
        let tags: Vec<u8> = std::iter::from_fn(|| {
            switchyard_proto::decode_frame(&mut out, 1 << 20)
                .unwrap()
                .map(|f| f.tag)
        })
        .collect();
        assert_eq!(tags, b"BES");
        let mut out = probe_messages(false);
        let query = switchyard_proto::decode_frame(&mut out, 1 << 20)
            .unwrap()
            .unwrap();
        assert_eq!(query.tag, b'Q');
        assert!(out.is_empty());
    }
}
