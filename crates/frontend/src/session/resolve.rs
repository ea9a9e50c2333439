//! Commit outcome resolution (`[failover] resolve_commits`): a COMMIT that ends an explicit
//! transaction carries, in the same write, a probe of the transaction's id, the WAL position
//! before its commit record and its timeline ([`switchyard_server::CommitProbe`]). If the
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
//!   replayed before promotion), the commit record cannot be in it: 40001. Otherwise every
//!   record of the transaction before its commit is, so its id is below any the new primary
//!   hands out, and `pg_xact_status` is the truth: COMMIT, or 40001;
//! - anything else (no primary in time, one that restarted since the COMMIT was sent, a
//!   timeline further on, an error): 08007 as without resolution, with the reason.
//!
//! The wait is bounded by `failover_timeout`, like any request held in the gate.

use super::abort::{outcome_unknown, rolled_back};
use super::login::primary_pool;
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::run::{Session, generation_moved_past};
use bytes::BytesMut;
use std::time::Duration;
use switchyard_proto::backend::{self, TxStatus};
use switchyard_proto::frontend::tag as fe;
use switchyard_server::{Probed, parse_lsn};
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

/// True if `sent` is one simple Query whose only statement is COMMIT or END.
pub(super) fn is_lone_commit(sent: &[u8]) -> bool {
    let Some((&fe::QUERY, rest)) = sent.split_first() else {
        return false;
    };
    let Some(len) = rest.get(..4) else {
        return false;
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if sent.len() != len + 1 || len < 5 {
        return false;
    }
    let text = String::from_utf8_lossy(&sent[5..sent.len() - 1]).to_ascii_lowercase();
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

/// The probe followed by the client's COMMIT, for one write; `prepared`: the connection has
/// the probe prepared (see [`switchyard_server::PROBE_STATEMENT`]).
pub(super) fn with_probe(request: &[u8], prepared: bool) -> BytesMut {
    let mut out = switchyard_server::probe_messages(prepared);
    out.extend_from_slice(request);
    out
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
    /// Answers the client's COMMIT, in flight when its server was lost, with what became of
    /// the transaction.
    pub(super) async fn answer_resolved(
        &mut self,
        probed: Probed,
        lost: (&str, u64),
        cause: &str,
    ) -> Result<(), crate::SessionError> {
        let (addr, generation) = lost;
        let resolved = self.resolve_commit(probed).await;
        tracing::info!(parent: self.span(), server = %addr, xid = ?probed.xid, ?resolved, "COMMIT in flight when its server was lost: resolved");
        let (answer, caught) = match &resolved {
            Resolved::Committed => (backend::command_complete("COMMIT"), Caught::Committed),
            Resolved::RolledBack(how) => (rolled_back(Some(how)).to_frame(), Caught::RolledBack),
            Resolved::Unknown(why) => (
                outcome_unknown(true, &format!("{cause} ({why})")).to_frame(),
                Caught::Unknown,
            ),
        };
        self.count_loss(caught, generation);
        self.relay.reset();
        self.client
            .send(&[answer, backend::ready_for_query(TxStatus::Idle)])
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_lone_commit_is_probed() {
        let q = |sql: &str| switchyard_proto::frontend::query(sql).to_bytes().to_vec();
        for yes in [
            "COMMIT",
            "commit;",
            "  END  ",
            "commit work",
            "End Transaction;",
        ] {
            assert!(is_lone_commit(&q(yes)), "{yes}");
        }
        for no in [
            "COMMIT PREPARED 'x'",
            "UPDATE t SET a = 1; COMMIT",
            "commit; select 1",
            "ROLLBACK",
            "PREPARE TRANSACTION 'x'",
        ] {
            assert!(!is_lone_commit(&q(no)), "{no}");
        }
        let mut two = q("COMMIT");
        two.extend(q("SELECT 1"));
        assert!(!is_lone_commit(&two), "two messages");
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
