//! Commit outcome resolution (`[failover] resolve_commits`): a COMMIT that ends an explicit
//! transaction carries, in the same write, a probe of the transaction's id and the WAL
//! position before its commit record ([`switchyard_server::CommitProbe`]). If the server is
//! lost before the COMMIT's answer, the primary that follows is asked what became of the
//! transaction, and the client gets the true answer:
//!
//! - no transaction id: it wrote nothing, so committing and rolling it back are the same:
//!   COMMIT;
//! - the same server, still the primary (its backend was ended): `pg_xact_status` there;
//! - a promoted standby: if its history ends before the probe's position
//!   (`pg_last_wal_replay_lsn`, the end of the WAL it replayed before promotion), the commit
//!   record cannot be in it: 40001. Otherwise every record of the transaction before its
//!   commit is, so its id is below any the new primary hands out, and `pg_xact_status` is
//!   the truth: COMMIT, or 40001;
//! - anything else (no primary in time, the new primary restarted since its promotion, an
//!   error): 08007 as without resolution, with the reason.
//!
//! The wait is bounded by `failover_timeout`, like any request held in the gate.

use super::abort::{outcome_unknown, rolled_back};
use super::login::primary_pool;
use super::pool_for::INTERNAL_QUERY_TIMEOUT;
use super::run::{Session, generation_moved_past};
use bytes::BytesMut;
use std::time::Duration;
use switchyard_proto::backend::{self, TxStatus};
use switchyard_proto::frontend::{self, tag as fe};
use switchyard_server::{PROBE_SQL, parse_lsn};
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

/// The probe followed by the client's COMMIT, for one write.
pub(super) fn with_probe(request: &[u8]) -> BytesMut {
    let probe = frontend::query(PROBE_SQL).to_bytes();
    let mut out = BytesMut::with_capacity(probe.len() + request.len());
    out.extend_from_slice(&probe);
    out.extend_from_slice(request);
    out
}

/// How long one question to a server may take (a frozen one never answers).
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

impl Session {
    /// Asks the cluster what became of transaction `xid`, whose COMMIT was in flight on the
    /// server of `lost_generation` at `lost_addr`, its WAL before the commit at `lsn`.
    pub(super) async fn resolve_commit(
        &mut self,
        xid: Option<u64>,
        lsn: u64,
        lost_addr: &str,
        lost_generation: u64,
    ) -> Resolved {
        let Some(xid) = xid else {
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
            let same_history = generation == lost_generation && pool.addr() == lost_addr;
            let asked = tokio::time::timeout(ASK_TIMEOUT, async {
                let mut server = pool.checkout(ASK_TIMEOUT, generation).await?;
                let answer = ask(&mut server.conn, xid, lsn, same_history).await;
                pool.release(server);
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

/// One server's answer; `None` when it could not give one (try another).
async fn ask(
    conn: &mut switchyard_server::ServerConn,
    xid: u64,
    lsn: u64,
    same_history: bool,
) -> Option<Resolved> {
    if !same_history {
        let replayed = first_row(conn, "SELECT pg_catalog.pg_last_wal_replay_lsn()::text").await?;
        let end = replayed
            .ok()
            .and_then(|row| row.first().cloned().flatten())
            .and_then(|text| parse_lsn(&text));
        let Some(end) = end else {
            return Some(Resolved::Unknown(
                "the new primary has restarted since its promotion: where its history began is \
                 not known"
                    .into(),
            ));
        };
        if end < lsn {
            return Some(Resolved::RolledBack(
                "the primary failed over before this transaction's commit reached the new \
                 primary"
                    .into(),
            ));
        }
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
        (xid, lsn): (Option<u64>, u64),
        lost: (&str, u64),
        cause: &str,
    ) -> Result<(), crate::SessionError> {
        let (addr, generation) = lost;
        let resolved = self.resolve_commit(xid, lsn, addr, generation).await;
        tracing::info!(parent: self.span(), server = %addr, ?xid, ?resolved, "COMMIT in flight when its server was lost: resolved");
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
        let q = |sql: &str| frontend::query(sql).to_bytes().to_vec();
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
}
