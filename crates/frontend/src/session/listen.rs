//! Transaction mode, the session's side of LISTEN (the hub is `crate::listen`): a request that
//! only LISTENs or UNLISTENs, outside a transaction, is answered here once the client's hub
//! listens; notifications wait in the client's inbox and reach it whenever it is between
//! transactions, as a direct connection's would. A LISTEN in a form that cannot be followed
//! (with other statements, in a named statement) is refused with 0A000; one inside a
//! transaction reaches the server, whose connection is then closed instead of pooled (it would
//! hear for the next client), and the client is warned.

use super::run::Session;
use crate::SessionError;
use crate::listen::ListenOp;
use crate::session_state::next_name;
use crate::sql::{for_each_statement, skip_blanks, until_nul, word};
use bytes::{BufMut, Bytes, BytesMut};
use switchyard_proto::backend::{self, ErrorFields, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_proto::{Frame, peek_header};
use tokio::time::Instant;

/// What the client's next request is, as far as LISTEN goes.
#[derive(Debug, PartialEq, Eq)]
enum Flight {
    /// Not a LISTEN or UNLISTEN: relayed as usual.
    Other,
    /// Starts like one, and the rest has not all arrived.
    Incomplete,
    /// A LISTEN that cannot be followed.
    Refused,
    /// A simple query of LISTEN/UNLISTEN statements, `len` bytes.
    Simple { ops: Vec<ListenOp>, len: usize },
    /// Extended-protocol messages about LISTEN/UNLISTEN statements only, through a Sync or a
    /// Flush (`len` bytes): answered in order.
    Extended(Extended),
}

/// Most messages of an extended flight about LISTEN statements (Parse, Describe, Bind,
/// Execute, Close of a few, and its Sync or Flush).
const MAX_FLIGHT: usize = 64;

/// How [`Session::try_listen`] went.
pub(super) enum Listened {
    /// Not a LISTEN: relay it.
    No,
    /// Answered (or refused) here.
    Done,
    /// The client left while its request arrived.
    ClientLeft,
}

/// An extended-protocol flight answered here.
#[derive(Debug, Default, PartialEq, Eq)]
struct Extended {
    answers: Vec<Answer>,
    /// Statements it prepares by name (kept for their later Binds) and closes.
    prepared: Vec<(Bytes, ListenOp)>,
    closed: Vec<Bytes>,
    len: usize,
}

/// One answer of an [`Extended`] flight.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A message with no body (ParseComplete, BindComplete, NoData, CloseComplete), or a
    /// ParameterDescription of no parameters.
    Message(u8),
    /// An Execute: carried out, then its CommandComplete.
    Run(ListenOp),
    /// A Sync's ReadyForQuery.
    Ready,
}

/// The LISTEN statements an extended flight may name: those it parses, and those the client
/// prepared earlier.
struct Known<'a> {
    earlier: &'a dyn Fn(&[u8]) -> Option<ListenOp>,
    statements: Vec<(Bytes, ListenOp)>,
    portals: Vec<(Bytes, ListenOp)>,
}

impl Known<'_> {
    fn statement(&self, name: &[u8]) -> Option<ListenOp> {
        let here = self.statements.iter().rev().find(|(n, _)| n == name);
        here.map(|(_, op)| op.clone())
            .or_else(|| (self.earlier)(name))
    }

    fn portal(&self, name: &[u8]) -> Option<ListenOp> {
        let found = self.portals.iter().rev().find(|(n, _)| n == name);
        found.map(|(_, op)| op.clone())
    }
}

/// The LISTEN/UNLISTEN of one statement; `None` if it is anything else. A doubt (trailing
/// words, a name that does not end cleanly) is `None` too.
fn listen_op(statement: &[u8]) -> Option<ListenOp> {
    let text = skip_blanks(statement)?;
    let (first, rest) = word(text);
    let listen = first.eq_ignore_ascii_case(b"listen");
    if !listen && !first.eq_ignore_ascii_case(b"unlisten") {
        return None;
    }
    let star = skip_blanks(rest).and_then(|r| r.strip_prefix(b"*"));
    let (name, after) = match (listen, star) {
        (false, Some(after)) => (None, after),
        _ => {
            let (name, after) = next_name(rest);
            if name.is_empty() {
                return None;
            }
            (Some(truncate_identifier(name)), after)
        }
    };
    // Nothing after it but blanks and, as in a Parse's text, one `;`.
    let after = skip_blanks(after)?;
    let after = after.strip_prefix(b";").map_or(Some(after), skip_blanks)?;
    if !after.is_empty() {
        return None;
    }
    Some(match (listen, name) {
        (true, Some(n)) => ListenOp::Listen(n),
        (true, None) => return None,
        (false, n) => ListenOp::Unlisten(n),
    })
}

/// PostgreSQL keeps the first 63 bytes of an identifier.
fn truncate_identifier(mut name: String) -> String {
    if name.len() > 63 {
        let mut end = 63;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

/// Whether the first statement of `sql` starts with LISTEN (cheap: on the data path for
/// every request of a transaction-mode client between transactions).
fn starts_with_listen(sql: &[u8]) -> bool {
    skip_blanks(sql).is_some_and(|t| {
        // Most requests are told by their first letter.
        if !matches!(t.first().map(|b| b | 0x20), Some(b'l' | b'u')) {
            return false;
        }
        let first = word(t).0;
        first.eq_ignore_ascii_case(b"listen") || first.eq_ignore_ascii_case(b"unlisten")
    })
}

/// Whether the client's next request (a whole first message of `wire_len` bytes at the front
/// of `buf`) may be a LISTEN flight, without allocating: a Query or Parse whose text starts
/// with LISTEN or UNLISTEN, or, when the client prepared LISTEN statements, anything that may
/// use them. On
/// the data path for every request of a transaction-mode client between transactions: only
/// a yes pays for [`Session::try_listen`].
pub(super) fn may_be_listen_flight(buf: &[u8], wire_len: usize, has_prepared_listen: bool) -> bool {
    if has_prepared_listen {
        return true;
    }
    let (Some(&tag), Some(body)) = (buf.first(), buf.get(5..wire_len)) else {
        return false;
    };
    match tag {
        fe::QUERY => starts_with_listen(crate::sql::query_text(body)),
        fe::PARSE => starts_with_listen(crate::sql::parse_text(body)),
        _ => false,
    }
}

/// The statements of a simple query, if every one is a LISTEN or UNLISTEN (empty ones are
/// skipped, as PostgreSQL does); `Err(())` if one is among other statements.
fn simple_ops(text: &[u8]) -> Result<Vec<ListenOp>, ()> {
    let mut ops = Vec::new();
    let mut other = false;
    let mut mixed_listen = false;
    let lexed = for_each_statement(text, |s| {
        if skip_blanks(s).is_some_and(<[u8]>::is_empty) {
            return;
        }
        match listen_op(s) {
            Some(op) => ops.push(op),
            None => {
                other = true;
                mixed_listen |= starts_with_listen(s);
            }
        }
    });
    // With other statements, neither is followed: the hub would keep hearing for an UNLISTEN
    // sent to a pooled connection.
    if !lexed || mixed_listen || (other && !ops.is_empty()) {
        return Err(());
    }
    Ok(ops)
}

/// Reads the client's next request (at the front of `buf`) for a LISTEN; `earlier` names the
/// LISTEN statements the client prepared before.
fn read_flight(
    buf: &[u8],
    max: usize,
    earlier: &dyn Fn(&[u8]) -> Option<ListenOp>,
) -> Result<Flight, switchyard_proto::ProtoError> {
    let Some(h) = peek_header(buf, max)? else {
        return Ok(Flight::Other);
    };
    let Some(first) = buf.get(5..h.wire_len) else {
        return Ok(Flight::Other); // (the caller waits for whole messages)
    };
    if h.tag == fe::QUERY {
        let text = until_nul(first);
        if !starts_with_listen(text) {
            return Ok(Flight::Other);
        }
        return Ok(match simple_ops(text) {
            Ok(ops) if ops.is_empty() => Flight::Other,
            Ok(ops) => Flight::Simple {
                ops,
                len: h.wire_len,
            },
            Err(()) => Flight::Refused,
        });
    }
    let mut known = Known {
        earlier,
        statements: Vec::new(),
        portals: Vec::new(),
    };
    let mut flight = Extended::default();
    let mut at = 0;
    for _ in 0..MAX_FLIGHT {
        let Some(h) = peek_header(&buf[at..], max)? else {
            return Ok(if at == 0 {
                Flight::Other
            } else {
                Flight::Incomplete
            });
        };
        let Some(body) = buf.get(at + 5..at + h.wire_len) else {
            return Ok(if at == 0 {
                Flight::Other
            } else {
                Flight::Incomplete
            });
        };
        if at == 0 && matches!(h.tag, fe::SYNC | fe::FLUSH) {
            return Ok(Flight::Other);
        }
        let about_listen = answer(&mut known, &mut flight, h.tag, body);
        let only_closes = flight.answers.iter().all(|a| *a == Answer::Message(b'3'));
        match about_listen {
            Some(true) => {}
            // The first message decides whether this is a LISTEN flight at all; a flight that
            // only closes LISTEN statements before other work is relayed (the server closes
            // what it does not have without a word), and the names forgotten.
            _ if at == 0 || only_closes => return Ok(Flight::Other),
            // A LISTEN flight with something else in it: not followed.
            _ => return Ok(Flight::Refused),
        }
        at += h.wire_len;
        if matches!(h.tag, fe::SYNC | fe::FLUSH) {
            flight.len = at;
            return Ok(Flight::Extended(flight));
        }
    }
    // No LISTEN flight is this long: a client that never ends one is not buffered for.
    Ok(Flight::Refused)
}

/// Answers one message of an extended flight if it is about a LISTEN statement (`Some(true)`),
/// and records what it prepares or binds. Sync and Flush end the flight; any other message
/// is not about LISTEN (`Some(false)`), nor is a malformed one (`None`).
fn answer(known: &mut Known<'_>, flight: &mut Extended, tag: u8, body: &[u8]) -> Option<bool> {
    let first = until_nul(body);
    let second = || until_nul(body.get(first.len() + 1..).unwrap_or_default());
    match tag {
        fe::PARSE => {
            let text = second();
            let Some(op) = starts_with_listen(text).then(|| listen_op(text)).flatten() else {
                return Some(false);
            };
            let name = Bytes::copy_from_slice(first);
            known.statements.push((name.clone(), op.clone()));
            if !name.is_empty() {
                flight.closed.retain(|n| n != &name);
                flight.prepared.push((name, op));
            }
            flight.answers.push(Answer::Message(b'1'));
        }
        fe::BIND => {
            let op = known.statement(second())?;
            known.portals.push((Bytes::copy_from_slice(first), op));
            flight.answers.push(Answer::Message(b'2'));
        }
        fe::DESCRIBE => {
            let (kind, name) = body.split_first()?;
            let name = until_nul(name);
            match kind {
                b'S' => {
                    known.statement(name)?;
                    flight.answers.push(Answer::Message(b't'));
                }
                b'P' => {
                    known.portal(name)?;
                }
                _ => return None,
            }
            flight.answers.push(Answer::Message(b'n'));
        }
        fe::EXECUTE => {
            let op = known.portal(first)?;
            flight.answers.push(Answer::Run(op));
        }
        fe::CLOSE => {
            let (kind, name) = body.split_first()?;
            let name = until_nul(name);
            match kind {
                b'S' => {
                    known.statement(name)?;
                    flight.closed.push(Bytes::copy_from_slice(name));
                    known.statements.retain(|(n, _)| n != name);
                }
                b'P' => {
                    known.portal(name)?;
                    known.portals.retain(|(n, _)| n != name);
                }
                _ => return None,
            }
            flight.answers.push(Answer::Message(b'3'));
        }
        fe::SYNC => flight.answers.push(Answer::Ready),
        fe::FLUSH => {}
        _ => return Some(false),
    }
    Some(true)
}

impl Session {
    /// Transaction mode, between transactions, with a whole message at the front of the
    /// client's buffer: answers a request that only LISTENs or UNLISTENs, and refuses a LISTEN
    /// that cannot be followed.
    pub(super) async fn try_listen(&mut self) -> Result<Listened, SessionError> {
        loop {
            let inbox = self.info.cancel.inbox();
            let earlier = |name: &[u8]| inbox.and_then(|i| i.prepared_listen(name));
            let flight = read_flight(&self.client.buf, self.client.max_message(), &earlier)?;
            return match flight {
                Flight::Other => {
                    self.forget_replaced_statements();
                    Ok(Listened::No)
                }
                Flight::Incomplete => {
                    if !self.idle().await? {
                        return Ok(Listened::ClientLeft);
                    }
                    continue;
                }
                Flight::Refused => {
                    self.refuse_listen().await?;
                    Ok(Listened::Done)
                }
                Flight::Simple { ops, len } => {
                    let _ = self.client.buf.split_to(len);
                    let mut frames = Vec::new();
                    for op in ops {
                        let tag = tag_of(&op);
                        if let Err(e) = self.apply_listen(op).await {
                            frames.push(e.to_client().ok_or(e)?.to_frame());
                            break;
                        }
                        frames.push(backend::command_complete(tag));
                    }
                    frames.push(backend::ready_for_query(TxStatus::Idle));
                    self.client.send(&frames).await?;
                    Ok(Listened::Done)
                }
                Flight::Extended(flight) => {
                    self.answer_extended(flight).await?;
                    Ok(Listened::Done)
                }
            };
        }
    }

    /// Refuses the client's next request (a LISTEN that cannot be followed) at once, as a
    /// server reports an error: a simple query with its ReadyForQuery; extended messages with
    /// the error now and the ReadyForQuery at their Sync, whatever comes before it (a client
    /// that sent a Flush is waiting for the error).
    async fn refuse_listen(&mut self) -> Result<(), SessionError> {
        let e = SessionError::ListenUnsupported;
        tracing::info!(parent: self.span(), error = %e, "LISTEN refused");
        let error = e.to_client().ok_or(e)?.to_frame();
        if self.client.buf.first() == Some(&fe::QUERY) {
            let max = self.client.max_message();
            let _ = switchyard_proto::decode_frame(&mut self.client.buf, max)?;
            let ready = backend::ready_for_query(TxStatus::Idle);
            return self.client.send(&[error, ready]).await;
        }
        self.owe_ready_at_sync = Some(TxStatus::Idle);
        self.client.send(&[error]).await
    }

    /// A flight relayed as usual may prepare or close, by the name of a LISTEN statement the
    /// client prepared before, something else: that name is forgotten here.
    fn forget_replaced_statements(&self) {
        let Some(inbox) = self.info.cancel.inbox().filter(|i| i.has_prepared()) else {
            return;
        };
        let max = self.client.max_message();
        let mut at = 0;
        let mut names = Vec::new();
        while let Ok(Some(h)) = peek_header(&self.client.buf[at..], max) {
            let Some(body) = self.client.buf.get(at + 5..at + h.wire_len) else {
                break;
            };
            match (h.tag, body.split_first()) {
                (fe::PARSE, _) => names.push(Bytes::copy_from_slice(until_nul(body))),
                (fe::CLOSE, Some((b'S', name))) => {
                    names.push(Bytes::copy_from_slice(until_nul(name)));
                }
                _ => {}
            }
            at += h.wire_len;
            if matches!(h.tag, fe::SYNC | fe::QUERY) {
                break;
            }
        }
        if !names.is_empty() {
            inbox.note_prepared(Vec::new(), &names);
        }
    }

    /// Answers an extended flight about LISTEN statements, carrying out its Executes. After an
    /// error the rest is skipped through the Sync, as a server does.
    async fn answer_extended(&mut self, flight: Extended) -> Result<(), SessionError> {
        let _ = self.client.buf.split_to(flight.len);
        if !flight.prepared.is_empty() || self.info.cancel.inbox().is_some() {
            self.listen_inbox()
                .note_prepared(flight.prepared, &flight.closed);
        }
        let mut frames = Vec::new();
        let mut failed = false;
        for a in flight.answers {
            match a {
                Answer::Ready => {
                    frames.push(backend::ready_for_query(TxStatus::Idle));
                    failed = false;
                }
                _ if failed => {}
                Answer::Message(b't') => {
                    frames.push(Frame::new(b't', bytes::Bytes::from_static(&[0, 0])));
                }
                Answer::Message(tag) => frames.push(Frame::new(tag, bytes::Bytes::new())),
                Answer::Run(op) => {
                    let tag = tag_of(&op);
                    match self.apply_listen(op).await {
                        Ok(()) => frames.push(backend::command_complete(tag)),
                        Err(e) => {
                            frames.push(e.to_client().ok_or(e)?.to_frame());
                            failed = true;
                        }
                    }
                }
            }
        }
        if failed {
            // Ended by a Flush: the ReadyForQuery is owed at the client's Sync.
            self.owe_ready_at_sync = Some(TxStatus::Idle);
        }
        self.client.send(&frames).await
    }

    /// The client's inbox, made at its first LISTEN.
    fn listen_inbox(&self) -> std::sync::Arc<crate::listen::Inbox> {
        self.info
            .cancel
            .inbox_or_init(|| self.proxy.listen_hubs.inbox())
            .clone()
    }

    /// Carries out one LISTEN or UNLISTEN through the client's hub, waiting at most
    /// `failover_timeout` (a LISTEN during a failover waits for the next primary).
    async fn apply_listen(&mut self, op: ListenOp) -> Result<(), SessionError> {
        if matches!(op, ListenOp::Unlisten(_)) && self.info.cancel.inbox().is_none() {
            return Ok(()); // it never listened
        }
        let deadline = Instant::now() + self.failover_timeout();
        let inbox = self.listen_inbox();
        let hubs = &self.proxy.listen_hubs;
        let applied = hubs.apply(
            &self.proxy,
            &self.info.target,
            &self.info.settings,
            &inbox,
            op,
            deadline,
        );
        applied.await.inspect_err(|e| {
            tracing::info!(parent: self.span(), error = %e, "LISTEN refused");
        })
    }

    /// Sends the client the notifications (and notices) waiting for it, if any.
    pub(super) async fn deliver_notifications(&mut self) -> Result<(), SessionError> {
        let Some(inbox) = self.info.cancel.inbox() else {
            return Ok(());
        };
        let frames = inbox.take();
        if frames.is_empty() {
            return Ok(());
        }
        let mut out = BytesMut::with_capacity(frames.iter().map(|f| f.len()).sum());
        for f in frames {
            out.put_slice(&f);
        }
        self.client.write(&out).await
    }

    /// A transaction sent LISTEN to a pooled connection (which is closed, not pooled, for it):
    /// the client is told, with its next notifications, that nobody listens for it.
    pub(super) fn warn_listen_in_transaction(&mut self) {
        let notice = ErrorFields::warning(
            "01000",
            "switchyard: a LISTEN or UNLISTEN inside a transaction or among other statements is \
             not followed in transaction pooling (its server connection was closed); send it \
             on its own, outside a transaction",
        );
        self.listen_inbox()
            .push(notice.to_notice_frame().to_bytes());
    }
}

fn tag_of(op: &ListenOp) -> &'static str {
    match op {
        ListenOp::Listen(_) => "LISTEN",
        ListenOp::Unlisten(_) => "UNLISTEN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        switchyard_proto::Frame::new(tag, bytes::Bytes::copy_from_slice(body))
            .to_bytes()
            .to_vec()
    }

    fn query(sql: &str) -> Vec<u8> {
        msg(fe::QUERY, &[sql.as_bytes(), b"\0"].concat())
    }

    fn listen(name: &str) -> ListenOp {
        ListenOp::Listen(name.into())
    }

    fn read(buf: &[u8]) -> Flight {
        let earlier = |name: &[u8]| (name == b"old").then(|| listen("old"));
        read_flight(buf, 1 << 20, &earlier).unwrap()
    }

    #[test]
    fn simple_queries_of_listen_and_unlisten_are_answered_here() {
        let sql = "LISTEN Jobs; listen \"Mixed Case\";; UNLISTEN *";
        assert_eq!(
            read(&query(sql)),
            Flight::Simple {
                ops: vec![
                    listen("jobs"),
                    listen("Mixed Case"),
                    ListenOp::Unlisten(None)
                ],
                len: query(sql).len()
            }
        );
        assert!(
            matches!(read(&query("  /* c */ unlisten a")), Flight::Simple { ops, .. } if ops == vec![ListenOp::Unlisten(Some("a".into()))])
        );
        // (A LISTEN or UNLISTEN after the first statement reaches the relay, which closes
        // its connection and warns the client.)
        for other in [
            "SELECT 1",
            "NOTIFY jobs",
            "listener",
            "SELECT 1; UNLISTEN a",
        ] {
            assert_eq!(read(&query(other)), Flight::Other, "{other}");
        }
        for refused in [
            "LISTEN a; SELECT 1",
            "LISTEN",
            "LISTEN a b",
            "UNLISTEN a; LISTEN b; SELECT 1",
            // The hub would keep hearing for an UNLISTEN sent to a pooled connection.
            "UNLISTEN a; SELECT 1",
        ] {
            assert_eq!(read(&query(refused)), Flight::Refused, "{refused}");
        }
        let long = "x".repeat(70);
        assert!(
            matches!(read(&query(&format!("LISTEN {long}"))), Flight::Simple { ops, .. } if ops == vec![listen(&long[..63])])
        );
    }

    fn answers(f: Flight) -> (Vec<Answer>, Vec<(Bytes, ListenOp)>) {
        match f {
            Flight::Extended(e) => (e.answers, e.prepared),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn extended_listens_are_answered_here_named_or_not() {
        let parse = |name: &str| msg(fe::PARSE, format!("{name}\0LISTEN jobs\0\0\0").as_bytes());
        let bind = |stmt: &str| msg(fe::BIND, format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
        let describe_p = msg(fe::DESCRIBE, b"P\0");
        let execute = msg(fe::EXECUTE, b"\0\0\0\0\0");
        let sync = msg(fe::SYNC, b"");
        let flush = msg(fe::FLUSH, b"");
        use Answer::*;
        // psycopg, pgjdbc, node-postgres: one unnamed flight.
        let whole = [&parse("")[..], &bind(""), &describe_p, &execute, &sync].concat();
        let (a, prepared) = answers(read(&whole));
        assert_eq!(
            a,
            vec![
                Message(b'1'),
                Message(b'2'),
                Message(b'n'),
                Run(listen("jobs")),
                Ready
            ]
        );
        assert!(prepared.is_empty());
        assert_eq!(
            read(&[&parse("")[..], &bind("")].concat()),
            Flight::Incomplete
        );
        // asyncpg: prepared by name, described, flushed; then bound and run.
        let describe_s = msg(fe::DESCRIBE, b"S__st1\0");
        let (a, prepared) = answers(read(&[&parse("__st1")[..], &describe_s, &flush].concat()));
        assert_eq!(a, vec![Message(b'1'), Message(b't'), Message(b'n')]);
        assert_eq!(
            prepared,
            vec![(Bytes::from_static(b"__st1"), listen("jobs"))]
        );
        let (a, _) = answers(read(&[&bind("old")[..], &execute, &sync].concat()));
        assert_eq!(a, vec![Message(b'2'), Run(listen("old")), Ready]);
        // Not about LISTEN, or mixed.
        assert_eq!(
            read(&[&bind("other")[..], &execute, &sync].concat()),
            Flight::Other
        );
        assert_eq!(read(&sync), Flight::Other);
        let other = msg(fe::PARSE, b"\0SELECT 1\0\0\0");
        let mixed = [&parse("")[..], &bind(""), &execute, &other, &sync].concat();
        assert_eq!(read(&mixed), Flight::Refused);
        // A Parse's text may end with a `;` (psycopg's do).
        let semicolon = msg(fe::PARSE, b"\0LISTEN jobs;\0\0\0");
        let (a, _) = answers(read(&[&semicolon[..], &bind(""), &execute, &sync].concat()));
        assert_eq!(
            a,
            vec![Message(b'1'), Message(b'2'), Run(listen("jobs")), Ready]
        );
        // Closing a LISTEN statement before other work: relayed, not refused.
        let close = msg(fe::CLOSE, b"Sold\0");
        assert_eq!(read(&[&close[..], &other, &sync].concat()), Flight::Other);
        let (a, _) = answers(read(&[&close[..], &sync].concat()));
        assert_eq!(a, vec![Message(b'3'), Ready]);
        // A flight that never ends is not buffered for.
        let describe_unnamed = msg(fe::DESCRIBE, b"S\0");
        let endless = [&parse("")[..], &describe_unnamed.repeat(100)].concat();
        assert_eq!(read(&endless), Flight::Refused);
    }
}
