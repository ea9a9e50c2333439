//! Commit outcome resolution (`[failover] resolve_commits`): a COMMIT that ends an explicit
//! transaction (or an autocommit write over the extended protocol) carries, in the same write,
//! a probe of the transaction's id, the WAL position before its commit record and its
//! timeline ([`switchyard_server::CommitProbe`]). If the
//! server is lost before the COMMIT's answer, the primary that follows is asked what became of
//! the transaction, and the client gets the true answer:
//!
//! - no transaction id: it wrote nothing, so committing and rolling it back are the same:
//!   COMMIT (one exception: a transaction that only sent NOTIFY gets its id during COMMIT,
//!   so whether its notification went out is not known; listeners lose notifications at a
//!   failover anyway, as they lose their connections);
//! - a primary that has run since before the COMMIT was sent (its age, by its own clock, is
//!   compared with the time since, by ours: no clocks are compared) and is on the
//!   transaction's timeline: the same history, its transaction ids never reused (the server
//!   whose backend was ended, or one that came back after a blip): `pg_xact_status` there;
//! - one so running that was promoted from the transaction's timeline (the next one): if its
//!   history ends before the probe's position (`pg_last_wal_replay_lsn`, the end of the WAL it
//!   replayed before promotion), the commit record cannot be in it: 40001. Otherwise the
//!   probe's own WAL message, which carries the transaction's id, is in it, so the new
//!   primary never hands that id to another transaction, and `pg_xact_status` is the truth:
//!   COMMIT, or 40001;
//! - anything else (no primary in time, one that restarted since the COMMIT was sent, a
//!   timeline further on, an error): 08007 as without resolution, with the reason.
//!
//! The wait is bounded by `failover_timeout`, like any request held in the gate.

use super::abort::{outcome_unknown, rolled_back};
use super::login::primary_pool;
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::run::{Session, generation_moved_past};
use crate::statements::Statements;
use bytes::BytesMut;
use std::time::Duration;
use switchyard_proto::backend::{self, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_server::{
    CommitProbe, CommitReply, PROBE_STATEMENT, Probed, Probing, ServerConn, WRITE_PROBE_STATEMENT,
    parse_lsn,
};
use switchyard_topology::Caught;
use tokio::time::Instant;

/// What became of a transaction whose COMMIT was in flight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Resolved {
    Committed,
    /// It did not commit; why.
    RolledBack(String),
    /// Nobody can tell; why.
    Unknown(String),
}

/// Whether `text` (NUL-terminated or not) is one COMMIT or END statement and nothing else.
fn is_commit_text(text: &[u8]) -> bool {
    let text = String::from_utf8_lossy(crate::sql::until_nul(text)).to_ascii_lowercase();
    let words: Vec<&str> = text
        .trim()
        .trim_end_matches(';')
        .split_whitespace()
        .collect();
    matches!(
        words.as_slice(),
        ["commit"] | ["commit", "work" | "transaction"] | ["end"] | ["end", "work" | "transaction"]
    )
}

/// If `sent` (one flight of the client's, whole messages) is a lone COMMIT (or END), how a
/// server answers it: one simple Query of it; or extended-protocol messages that run only it
/// (an unnamed Parse of it or a Bind of a named statement of it, Describes, one Execute) and
/// end with a Sync. Anything else in the flight, or a doubt: `None` (no probe; 08007 if lost).
pub(super) fn commit_reply(sent: &[u8], statements: &Statements) -> Option<CommitReply> {
    let mut at = 0;
    let mut answers = Vec::new();
    let mut parsed_commit = false;
    let mut bound_portal: Option<&[u8]> = None;
    let mut executed = false;
    while at < sent.len() {
        let h = switchyard_proto::peek_header(&sent[at..], usize::MAX).ok()??;
        let body = sent.get(at + 5..at + h.wire_len)?;
        at += h.wire_len;
        let first = crate::sql::until_nul(body);
        let second = || crate::sql::until_nul(body.get(first.len() + 1..).unwrap_or_default());
        match h.tag {
            fe::QUERY if at == h.wire_len && at == sent.len() => {
                return is_commit_text(body).then_some(CommitReply::SIMPLE);
            }
            fe::PARSE if first.is_empty() && is_commit_text(second()) && !parsed_commit => {
                parsed_commit = true;
                answers.push(b'1');
            }
            fe::BIND if bound_portal.is_none() => {
                let commits = match second() {
                    [] => parsed_commit,
                    name => statements
                        .get(name)
                        .is_some_and(|s| is_commit_text(&s.parse.tail)),
                };
                if !commits {
                    return None;
                }
                bound_portal = Some(first);
                answers.push(b'2');
            }
            fe::DESCRIBE => match body.split_first()? {
                (b'S', name) if crate::sql::until_nul(name).is_empty() && parsed_commit => {
                    answers.extend_from_slice(b"tn");
                }
                (b'P', name) if Some(crate::sql::until_nul(name)) == bound_portal => {
                    answers.push(b'n');
                }
                _ => return None,
            },
            fe::EXECUTE if !executed && bound_portal == Some(first) => {
                executed = true;
                answers.push(b'C');
            }
            fe::SYNC if executed && at == sent.len() => {
                answers.push(b'Z');
                return CommitReply::of(&answers);
            }
            _ => return None,
        }
    }
    None
}

/// Whether (and how) the request just sent is probed: a lone COMMIT ending an explicit
/// transaction, or an autocommit write (with `reads`, `resolve_autocommit_reads`: or read,
/// which may call a function that writes). Only for a request sent with nothing outstanding.
pub(super) fn probing(
    status_before: TxStatus,
    committing: bool,
    sent: &[u8],
    statements: &Statements,
    reads: bool,
) -> Option<Probing> {
    let probed = if reads {
        is_row_statement
    } else {
        is_write_text
    };
    match status_before {
        TxStatus::InTransaction if committing => {
            commit_reply(sent, statements).map(Probing::Commit)
        }
        TxStatus::Idle if !committing && is_autocommit_write(sent, statements, probed) => {
            Some(Probing::Write)
        }
        TxStatus::Idle if !committing => simple_write_statements(sent, probed)
            .map(|statements| Probing::SimpleWrite { statements }),
        _ => None,
    }
}

/// The probe followed by the client's `request`, for one write; records it on the connection.
/// A write is probed only where the write probe is prepared; a COMMIT's probe goes as a simple
/// query where its statement is not, or where the statements are not Switchyard's to rely on
/// (`own_statements` false: session mode).
pub(super) fn with_probe(
    conn: &mut ServerConn,
    kind: Probing,
    request: &[u8],
    own_statements: bool,
) -> Option<BytesMut> {
    let usable = |conn: &ServerConn, name: &[u8]| {
        own_statements && !conn.prepared.is_uncertain() && conn.prepared.contains(name)
    };
    let mut out = match kind {
        Probing::Commit(_) => {
            let prepared = usable(conn, PROBE_STATEMENT);
            if prepared {
                conn.prepared.touch(PROBE_STATEMENT);
            }
            switchyard_server::probe_messages(prepared)
        }
        Probing::Write | Probing::SimpleWrite { .. } => {
            if !usable(conn, WRITE_PROBE_STATEMENT) {
                return None;
            }
            // PostgreSQL sends nothing before a Sync or a Flush: a Flush after the statement,
            // before the Sync that commits, brings its answer out before the commit.
            const SYNC: [u8; 5] = [fe::SYNC, 0, 0, 0, 4];
            let mut out = switchyard_server::write_probe_messages();
            if let Probing::SimpleWrite { .. } = kind {
                as_extended(request, &mut out)?;
            } else {
                out.extend_from_slice(request.strip_suffix(&SYNC)?);
            }
            out.extend_from_slice(&[fe::FLUSH, 0, 0, 0, 4]);
            out.extend_from_slice(&SYNC);
            conn.prepared.touch(WRITE_PROBE_STATEMENT);
            conn.commit_probe = CommitProbe::Sent(std::time::Instant::now(), kind);
            return Some(out);
        }
    };
    out.extend_from_slice(request);
    conn.commit_probe = CommitProbe::Sent(std::time::Instant::now(), kind);
    Some(out)
}

/// Whether `sent` is one autocommit write over the extended protocol: Bind (of an unnamed
/// statement parsed in the same flight, or a named one), maybe Describes, one Execute of all
/// its rows, a Sync; the statement one that `probed` accepts (one INSERT, UPDATE, DELETE or
/// MERGE; or any [`is_row_statement`]). (A simple query of one is
/// [`simple_write_statements`].)
fn is_autocommit_write(sent: &[u8], statements: &Statements, probed: fn(&[u8]) -> bool) -> bool {
    let mut at = 0;
    let mut parsed_write = false;
    let mut bound: Option<&[u8]> = None;
    let mut executed = false;
    while at < sent.len() {
        let Ok(Some(h)) = switchyard_proto::peek_header(&sent[at..], usize::MAX) else {
            return false;
        };
        let Some(body) = sent.get(at + 5..at + h.wire_len) else {
            return false;
        };
        at += h.wire_len;
        let first = crate::sql::until_nul(body);
        let second = || crate::sql::until_nul(body.get(first.len() + 1..).unwrap_or_default());
        let ok = match h.tag {
            fe::PARSE if first.is_empty() && bound.is_none() => {
                parsed_write = probed(second());
                parsed_write
            }
            fe::BIND if bound.is_none() => {
                let writes = match second() {
                    [] => parsed_write,
                    name => statements.get(name).is_some_and(|s| probed(&s.parse.tail)),
                };
                bound = Some(first);
                writes
            }
            fe::DESCRIBE => bound.is_some() || parsed_write,
            // All rows: a portal left suspended would outlive the probe's transaction view.
            fe::EXECUTE => {
                let all = body.get(first.len() + 1..) == Some(&[0, 0, 0, 0][..]);
                let ok = !executed && bound == Some(first) && all;
                executed = true;
                ok
            }
            fe::SYNC => executed && at == sent.len(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    executed && sent.last_chunk::<5>() == Some(&[fe::SYNC, 0, 0, 0, 4])
}

/// Most statements of one simple query that is probed (each becomes four messages).
const MAX_PROBED_STATEMENTS: usize = 64;

/// Whether `sent` is one simple query whose statements (at most [`MAX_PROBED_STATEMENTS`])
/// each write rows or read them (INSERT, UPDATE, DELETE, MERGE, SELECT, WITH, VALUES, TABLE:
/// nothing that ends a transaction or cannot run inside one), at least one accepted by
/// `probed` (an INSERT, UPDATE, DELETE or MERGE; or any). PostgreSQL runs them as one
/// implicit transaction, and so does the probed form ([`as_extended`]).
///
/// Returns how many statements it has.
fn simple_write_statements(sent: &[u8], probed: fn(&[u8]) -> bool) -> Option<u8> {
    let text = simple_query_text(sent)?;
    let (mut statements, mut writes, mut runs_in_a_transaction) = (0, false, true);
    let lexed = crate::sql::for_each_statement(text, |s| {
        if !crate::sql::skip_blanks(s).is_some_and(<[u8]>::is_empty) {
            statements += 1;
            writes |= probed(s);
            runs_in_a_transaction &= is_row_statement(s);
        }
    });
    let probed = lexed && writes && runs_in_a_transaction;
    u8::try_from(statements)
        .ok()
        .filter(|&n| probed && usize::from(n) <= MAX_PROBED_STATEMENTS)
}

/// The text of `sent` if it is one Query message (without its NUL).
fn simple_query_text(sent: &[u8]) -> Option<&[u8]> {
    let (&fe::QUERY, rest) = sent.split_first()? else {
        return None;
    };
    let &[a, b, c, d] = rest.first_chunk::<4>()?;
    if u32::from_be_bytes([a, b, c, d]) as usize + 1 != sent.len() {
        return None; // more than one message
    }
    Some(crate::sql::until_nul(&rest[4..]))
}

/// A simple query's statements (`query`, the whole Query message) as the extended protocol's
/// unnamed statement, one after the other: Parse, Bind (text results), Describe of the portal
/// (for the RowDescription a simple query's answer has), Execute of all rows; no Sync, so all
/// run in one implicit transaction, as the simple query's would. (An error skips the rest
/// through the Sync, as it ends a simple query.)
fn as_extended(query: &[u8], out: &mut BytesMut) -> Option<()> {
    use switchyard_proto::frontend::{
        Target, TargetKind, bind_unnamed_portal, execute_all, parse_unnamed,
    };
    let text = simple_query_text(query)?;
    let lexed = crate::sql::for_each_statement(text, |s| {
        if crate::sql::skip_blanks(s).is_some_and(<[u8]>::is_empty) {
            return;
        }
        parse_unnamed(s.trim_ascii()).encode(out);
        bind_unnamed_portal(b"", &[]).encode(out);
        Target::encode(fe::DESCRIBE, TargetKind::Portal, b"").encode(out);
        execute_all().encode(out);
    });
    lexed.then_some(())
}

/// A statement that reads or writes rows (after comments): one that runs inside a
/// transaction block like any other, and ends none.
fn is_row_statement(text: &[u8]) -> bool {
    let Some(start) = crate::sql::skip_blanks(crate::sql::until_nul(text)) else {
        return false;
    };
    let first = crate::sql::word(start).0;
    [
        "insert", "update", "delete", "merge", "select", "with", "values", "table",
    ]
    .iter()
    .any(|w| first.eq_ignore_ascii_case(w.as_bytes()))
}

/// One INSERT, UPDATE, DELETE or MERGE statement (after comments).
fn is_write_text(text: &[u8]) -> bool {
    let text = crate::sql::until_nul(text);
    let Some(start) = crate::sql::skip_blanks(text) else {
        return false;
    };
    let first = crate::sql::word(start).0;
    ["insert", "update", "delete", "merge"]
        .iter()
        .any(|w| first.eq_ignore_ascii_case(w.as_bytes()))
}

/// How long one question to a server may take (a frozen one never answers).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

impl Session {
    /// Asks the cluster what became of the transaction `probed`, whose COMMIT was in flight
    /// when its server was lost.
    pub(super) async fn resolve_commit(&mut self, probed: Probed) -> Resolved {
        let Some(xid) = probed.xid else {
            return Resolved::Committed;
        };
        let deadline = Instant::now() + self.failover_timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let routed = primary_pool(&self.proxy, &self.info.target, &self.info.settings, left);
            let (pool, generation) = match routed.await {
                Ok(r) => r,
                Err(e) => return Resolved::Unknown(format!("no primary to ask ({e})")),
            };
            let asked = tokio::time::timeout(ASK_TIMEOUT, async {
                let mut server = pool.checkout(ASK_TIMEOUT, generation).await?;
                let answer = ask(&mut server.conn, xid, &probed).await;
                if answer.is_some() {
                    pool.release(server);
                }
                // (Else the connection failed or timed out mid-question: dropped, not reused.)
                Ok::<_, crate::SessionError>(answer)
            })
            .await;
            if let Ok(Ok(Some(resolved))) = asked {
                return resolved;
            }
            // The server could not answer (it is the one that was lost, or is failing): wait
            // for the topology to move on, then ask again.
            if Instant::now() >= deadline {
                return Resolved::Unknown("no primary answered within failover_timeout".into());
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(500));
            let _ = tokio::time::timeout(
                wait,
                generation_moved_past(&mut self.generations(), generation),
            )
            .await;
        }
    }
}

/// One query's first row, bounded; `None` if the server did not answer in time or failed.
async fn first_row(
    conn: &mut switchyard_server::ServerConn,
    sql: &str,
) -> Option<Result<Vec<Option<String>>, switchyard_server::ServerError>> {
    match tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, conn.query_row(sql)).await {
        Ok(Err(e)) if !matches!(e, switchyard_server::ServerError::Query(_)) => None,
        Ok(answer) => Some(answer),
        Err(_) => None,
    }
}

/// What the primary asked tells of its history: its timeline, how long it has run (by its
/// own clock) and where the WAL it replayed before its promotion ended (NULL if it never
/// was a standby in this run).
const HISTORY_SQL: &str = "SELECT ('x' || substr(pg_catalog.pg_walfile_name(\
     pg_catalog.pg_current_wal_lsn()), 1, 8))::bit(32)::int::text, \
     extract(epoch FROM pg_catalog.clock_timestamp() - pg_catalog.pg_postmaster_start_time())\
     ::text, pg_catalog.pg_last_wal_replay_lsn()::text";

/// The history of the primary asked.
#[derive(Debug, Clone, Copy, PartialEq)]
struct History {
    timeline: u32,
    /// Seconds since its postmaster started.
    uptime: f64,
    replayed: Option<u64>,
}

/// Whether the primary's `pg_xact_status` can tell, from its history alone.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Ask,
    Decided(Resolved),
}

/// Judges the primary's history against the transaction's; `since_commit` is how long ago
/// its COMMIT was sent, read after the history came back. Then an uptime longer than that
/// means the server started before the COMMIT was sent (and before the transaction ran on
/// it), whatever the latencies: they only make the uptime look shorter.
fn judge(probed: &Probed, history: History, since_commit: Duration) -> Verdict {
    if history.uptime <= since_commit.as_secs_f64() {
        return Verdict::Decided(Resolved::Unknown(
            "the primary started after the COMMIT was sent, so it may have lost the \
             transaction's WAL and reused its id"
                .into(),
        ));
    }
    if history.timeline == probed.timeline {
        return Verdict::Ask;
    }
    if history.timeline != probed.timeline.wrapping_add(1) {
        return Verdict::Decided(Resolved::Unknown(format!(
            "the new primary is on timeline {}, the transaction ran on {}",
            history.timeline, probed.timeline
        )));
    }
    match history.replayed {
        None => Verdict::Decided(Resolved::Unknown(
            "where the new primary's history began is not known".into(),
        )),
        Some(end) if end < probed.lsn => Verdict::Decided(Resolved::RolledBack(
            "the primary failed over before this transaction's commit reached the new primary"
                .into(),
        )),
        Some(_) => Verdict::Ask,
    }
}

/// One server's answer; `None` when it could not give one (try another).
async fn ask(
    conn: &mut switchyard_server::ServerConn,
    xid: u64,
    probed: &Probed,
) -> Option<Resolved> {
    // An error (the server is no longer the primary, say): ask again once the topology moves.
    let row = first_row(conn, HISTORY_SQL).await?.ok()?;
    let value = |i: usize| row.get(i).cloned().flatten();
    let history = History {
        timeline: value(0)?.parse().ok()?,
        uptime: value(1)?.parse().ok()?,
        replayed: value(2).and_then(|text| parse_lsn(&text)),
    };
    if let Verdict::Decided(resolved) = judge(probed, history, probed.sent_at.elapsed()) {
        return Some(resolved);
    }
    let sql = format!("SELECT pg_catalog.pg_xact_status('{xid}'::xid8)::text");
    Some(match first_row(conn, &sql).await? {
        Ok(row) => match row.first().cloned().flatten().as_deref() {
            Some("committed") => Resolved::Committed,
            Some("aborted") => Resolved::RolledBack(
                "the server connection was lost during COMMIT and the transaction did not \
                 commit"
                    .into(),
            ),
            // Still running there (the same server, its backend not yet ended): ask again.
            Some("in progress") => return None,
            other => Resolved::Unknown(format!("the transaction's status is {other:?}")),
        },
        Err(e) => Resolved::Unknown(format!("its status could not be read: {e}")),
    })
}

impl Session {
    /// Answers the client's COMMIT or autocommit write, in flight when its server was lost,
    /// with what became of the transaction. A write's `held` answer (all of it that came) is
    /// sent if it is complete: through its CommandComplete if it committed, through its error
    /// if that ended it.
    pub(super) async fn answer_resolved(
        &mut self,
        (probed, kind, held): (Probed, Probing, Option<bytes::Bytes>),
        lost: (&str, u64),
        cause: &str,
    ) -> Result<(), crate::SessionError> {
        let (addr, generation) = lost;
        let resolved = self.resolve_commit(probed).await;
        tracing::info!(parent: self.span(), server = %addr, xid = ?probed.xid, ?resolved, ?kind, "request in flight when its server was lost: resolved");
        let commit = matches!(kind, Probing::Commit(_));
        let held = held
            .as_deref()
            .and_then(|h| switchyard_server::held_through_end(h, kind.statements()));
        let ready = backend::ready_for_query(TxStatus::Idle);
        let mut out = BytesMut::new();
        let unknown = |why: &str| outcome_unknown(commit, &format!("{cause} ({why})")).to_frame();
        let caught = match (&resolved, kind, held) {
            (Resolved::Committed, Probing::Commit(reply), _) => {
                reply.frames().iter().for_each(|f| f.encode(&mut out));
                Caught::Committed
            }
            (
                Resolved::Committed,
                Probing::Write | Probing::SimpleWrite { .. },
                Some((answer, true)),
            ) => {
                out.extend_from_slice(answer);
                ready.encode(&mut out);
                Caught::Committed
            }
            (Resolved::Committed, Probing::Write | Probing::SimpleWrite { .. }, _) => {
                let why = "it committed on the primary that followed, but its result was lost";
                unknown(why).encode(&mut out);
                ready.encode(&mut out);
                Caught::Committed
            }
            (
                Resolved::RolledBack(_),
                Probing::Write | Probing::SimpleWrite { .. },
                Some((answer, false)),
            ) => {
                // Its own error ended it: the server's answer, whole.
                out.extend_from_slice(answer);
                ready.encode(&mut out);
                Caught::RolledBack
            }
            (Resolved::RolledBack(how), ..) => {
                rolled_back(Some(how)).to_frame().encode(&mut out);
                ready.encode(&mut out);
                Caught::RolledBack
            }
            (Resolved::Unknown(why), ..) => {
                unknown(why).encode(&mut out);
                ready.encode(&mut out);
                Caught::Unknown
            }
        };
        self.count_loss(caught, generation);
        self.relay.reset();
        self.client.write(&out).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_simple_write(sent: &[u8]) -> bool {
        simple_write_statements(sent, is_write_text).is_some()
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        switchyard_proto::Frame::new(tag, bytes::Bytes::copy_from_slice(body))
            .to_bytes()
            .to_vec()
    }

    #[test]
    fn only_a_lone_commit_is_probed() {
        let st = Statements::default();
        let q = |sql: &str| switchyard_proto::frontend::query(sql).to_bytes().to_vec();
        for yes in [
            "COMMIT",
            "commit;",
            "  END  ",
            "commit work",
            "End Transaction;",
        ] {
            assert_eq!(
                commit_reply(&q(yes), &st),
                Some(CommitReply::SIMPLE),
                "{yes}"
            );
        }
        for no in [
            "COMMIT PREPARED 'x'",
            "UPDATE t SET a = 1; COMMIT",
            "commit; select 1",
            "ROLLBACK",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert_eq!(commit_reply(&q(no), &st), None, "{no}");
        }
        let mut two = q("COMMIT");
        two.extend(q("SELECT 1"));
        assert_eq!(commit_reply(&two, &st), None, "two messages");
    }

    #[test]
    fn an_extended_commit_is_probed_with_its_reply_shape() {
        let mut st = Statements::default();
        let parse =
            |name: &str, sql: &str| msg(fe::PARSE, format!("{name}\0{sql}\0\0\0").as_bytes());
        let named = switchyard_proto::frontend::Parse::decode(&switchyard_proto::Frame::new(
            fe::PARSE,
            bytes::Bytes::from_static(b"c1\0COMMIT\0\0\0"),
        ))
        .unwrap();
        st.prepare(named).unwrap();
        let bind = |stmt: &str| msg(fe::BIND, format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
        let execute = msg(fe::EXECUTE, b"\0\0\0\0\0");
        let sync = msg(fe::SYNC, b"");
        let describe_p = msg(fe::DESCRIBE, b"P\0");
        let describe_s = msg(fe::DESCRIBE, b"S\0");
        let shape = |parts: &[&[u8]]| {
            commit_reply(&parts.concat(), &st)
                .map(|r| r.frames().iter().map(|f| f.tag).collect::<Vec<u8>>())
        };
        // pgjdbc: unnamed Parse, Bind, Describe portal, Execute, Sync.
        let p = parse("", "COMMIT");
        assert_eq!(
            shape(&[&p, &bind(""), &describe_p, &execute, &sync]).unwrap(),
            b"12nCZ"
        );
        assert_eq!(
            shape(&[&p, &describe_s, &bind(""), &execute, &sync]).unwrap(),
            b"1tn2CZ"
        );
        // A named statement of COMMIT.
        assert_eq!(shape(&[&bind("c1"), &execute, &sync]).unwrap(), b"2CZ");
        // Not a lone COMMIT.
        let other = parse("", "UPDATE t SET a = 1");
        assert_eq!(
            shape(&[&other, &bind(""), &execute, &p, &bind(""), &execute, &sync]),
            None
        );
        assert_eq!(shape(&[&bind("unknown"), &execute, &sync]), None);
        assert_eq!(shape(&[&p, &bind(""), &execute]), None, "no Sync");
        assert_eq!(
            shape(&[&bind(""), &execute, &sync]),
            None,
            "an unnamed statement parsed before"
        );
    }

    #[test]
    fn only_a_lone_extended_write_is_probed_outside_a_transaction() {
        let parse = |sql: &str| msg(fe::PARSE, format!("\0{sql}\0\0\0").as_bytes());
        let bind = |stmt: &str| msg(fe::BIND, format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes());
        let execute = msg(fe::EXECUTE, b"\0\0\0\0\0");
        let some_rows = msg(fe::EXECUTE, b"\0\0\0\0\x0a");
        let sync = msg(fe::SYNC, b"");
        let describe = msg(fe::DESCRIBE, b"P\0");
        let st = Statements::default();
        let write = |parts: &[&[u8]]| is_autocommit_write(&parts.concat(), &st, is_write_text);
        let insert = parse("/* c */ INSERT INTO t VALUES ($1)");
        assert!(write(&[&insert, &bind(""), &describe, &execute, &sync]));
        assert!(write(&[
            &parse("update t set a = 1"),
            &bind(""),
            &execute,
            &sync
        ]));
        assert!(!write(&[&parse("SELECT 1"), &bind(""), &execute, &sync]));
        assert!(
            !write(&[&insert, &bind(""), &some_rows, &sync]),
            "part of its rows"
        );
        assert!(!write(&[&insert, &bind(""), &execute]), "no Sync");
        assert!(!write(&[
            &insert,
            &bind(""),
            &execute,
            &insert,
            &bind(""),
            &execute,
            &sync
        ]));
        assert!(
            !write(&[&bind(""), &execute, &sync]),
            "an unnamed statement of before"
        );
        let q = |sql: &str| switchyard_proto::frontend::query(sql).to_bytes().to_vec();
        assert!(
            !write(&[&q("INSERT INTO t VALUES (1)")]),
            "a simple query is a SimpleWrite"
        );
        assert!(is_simple_write(&q("insert into t values (1);")));
        assert!(is_simple_write(&q("-- c\nDELETE FROM t WHERE a = ';'")));
        // Several statements, one implicit transaction: probed when one of them writes and
        // none ends a transaction or cannot run inside one.
        assert!(is_simple_write(&q(
            "INSERT INTO t VALUES (1); SELECT 1; update t set a = 2;"
        )));
        assert!(is_simple_write(&q(
            "WITH x AS (SELECT 1) SELECT 1; MERGE INTO t USING x ON true WHEN MATCHED THEN DELETE"
        )));
        for no in [
            "SELECT 1",
            "SELECT f(); SELECT 2",
            "BEGIN",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT",
            "INSERT INTO t VALUES (1); VACUUM t",
            "INSERT INTO t VALUES (1); SET a.b = 1",
            "INSERT INTO t VALUES (1); SELECT '",
        ] {
            assert!(!is_simple_write(&q(no)), "{no}");
        }
        let many = "INSERT INTO t VALUES (1);".repeat(MAX_PROBED_STATEMENTS + 1);
        assert!(!is_simple_write(&q(&many)), "too many statements");
        // Each statement as the unnamed statement, no Sync between; blanks skipped.
        let mut out = BytesMut::new();
        as_extended(&q("INSERT INTO t VALUES (1);  ; SELECT ';' "), &mut out).unwrap();
        let mut frames = Vec::new();
        while let Some(f) = switchyard_proto::decode_frame(&mut out, 1 << 20).unwrap() {
            frames.push(f);
        }
        let tags: Vec<u8> = frames.iter().map(|f| f.tag).collect();
        assert_eq!(tags, b"PBDEPBDE");
        assert_eq!(&frames[0].body[..], b"\0INSERT INTO t VALUES (1)\0\0\0");
        assert_eq!(&frames[4].body[..], b"\0SELECT ';'\0\0\0");
        assert!(!is_simple_write(
            &[q("INSERT INTO t VALUES (1)"), q("SELECT 1")].concat()
        ));
        // Run as the unnamed statement: Parse, Bind, Describe, Execute of the same text.
        let mut out = BytesMut::new();
        as_extended(&q("INSERT INTO t VALUES (1)"), &mut out).unwrap();
        assert!(
            write(&[&out[..], &sync]),
            "the same as a driver's extended write"
        );
        assert_eq!(
            probing(
                TxStatus::InTransaction,
                false,
                &[&insert[..], &bind(""), &execute, &sync].concat(),
                &st,
                true
            ),
            None,
            "inside a transaction, a write commits nothing"
        );
        // Reads (a function they call may write) only with resolve_autocommit_reads.
        let select = [&parse("SELECT f($1)")[..], &bind(""), &execute, &sync].concat();
        for (sent, kind) in [
            (&select[..], Probing::Write),
            (&q("SELECT f()")[..], Probing::SimpleWrite { statements: 1 }),
            (
                &q("SELECT 1; TABLE t")[..],
                Probing::SimpleWrite { statements: 2 },
            ),
        ] {
            assert_eq!(probing(TxStatus::Idle, false, sent, &st, false), None);
            assert_eq!(probing(TxStatus::Idle, false, sent, &st, true), Some(kind));
        }
        for never in ["CALL p()", "DO $$ BEGIN END $$", "SHOW work_mem"] {
            assert_eq!(probing(TxStatus::Idle, false, &q(never), &st, true), None);
        }
    }

    fn probed(timeline: u32, lsn: u64) -> Probed {
        Probed {
            xid: Some(1000),
            lsn,
            timeline,
            sent_at: std::time::Instant::now(),
        }
    }

    fn history(timeline: u32, uptime: f64, replayed: Option<u64>) -> History {
        History {
            timeline,
            uptime,
            replayed,
        }
    }

    #[test]
    fn the_same_history_is_asked_whatever_the_generation() {
        let p = probed(3, 500);
        let s = Duration::from_secs(2);
        // The same server after a blip (no replay: it never was a standby in this run).
        assert_eq!(judge(&p, history(3, 3600.0, None), s), Verdict::Ask);
        // Restarted since the COMMIT: its WAL may have lost the transaction.
        assert!(matches!(
            judge(&p, history(3, 1.5, None), s),
            Verdict::Decided(Resolved::Unknown(_))
        ));
    }

    #[test]
    fn a_promoted_standby_is_asked_only_if_its_history_holds_the_transaction() {
        let p = probed(3, 500);
        let s = Duration::from_secs(2);
        assert_eq!(judge(&p, history(4, 3600.0, Some(500)), s), Verdict::Ask);
        assert!(matches!(
            judge(&p, history(4, 3600.0, Some(499)), s),
            Verdict::Decided(Resolved::RolledBack(_))
        ));
        for unknown in [
            history(4, 3600.0, None),
            history(5, 3600.0, Some(900)),
            history(2, 3600.0, Some(900)),
            history(4, 1.0, Some(900)),
        ] {
            assert!(
                matches!(
                    judge(&p, unknown, s),
                    Verdict::Decided(Resolved::Unknown(_))
                ),
                "{unknown:?}"
            );
        }
    }
}
