//! Commit outcome resolution (`[failover] resolve_commits`): a COMMIT in flight when the primary
//! fails gets its true answer, checked against the new primary's data.
//!
//! - Committed: synchronous replication with `remote_apply`, and replay paused on the standby,
//!   so the COMMIT waits with its commit record already on the standby. The primary crashes
//!   (or freezes); promotion replays the record: the client must get COMMIT, and the row is
//!   there.
//! - Not committed: a deferred trigger sleeps inside the COMMIT, before its commit record.
//!   The primary crashes; the client must get 40001, and the row is not there.
//! - The same two with no failover: an operator ends the COMMIT's backend on a healthy
//!   primary, which then knows the outcome itself.

mod common;

use common::cluster::{Cluster, ClusterOptions, Fault, why};
use common::*;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::PoolMode;

const SCHEMA: &str = "\
CREATE TABLE t (v text);
CREATE FUNCTION sleep_at_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(60); RETURN NULL; END $$;
CREATE CONSTRAINT TRIGGER sleep_at_commit AFTER INSERT ON t
  DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.v = 'slow')
  EXECUTE FUNCTION sleep_at_commit();
CREATE FUNCTION apply_at_commit() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM set_config('synchronous_commit', 'remote_apply', true); RETURN NEW; END $$;
CREATE TRIGGER apply_at_commit BEFORE INSERT ON t FOR EACH ROW WHEN (NEW.v = 'applied')
  EXECUTE FUNCTION apply_at_commit();
CREATE FUNCTION add_row(v text) RETURNS text LANGUAGE sql AS
  $$ INSERT INTO t VALUES (v) RETURNING v $$;
GRANT ALL ON t TO PUBLIC;";

/// How the COMMIT is held on the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Waiting for the standby to apply its commit record (which it has).
    ForApply,
    /// Inside a deferred trigger, before its commit record.
    BeforeCommitRecord,
}

/// What happens to the primary while the COMMIT is held there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Then {
    /// The fault, and the standby is promoted.
    FailOver(Fault),
    /// Its backend is terminated (pg_terminate_backend); the primary stays.
    BackendEnded,
}

/// How the client sends its COMMIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    /// A simple query.
    Simple,
    /// A statement prepared by name, then bound and executed (tokio-postgres's `execute`).
    Named,
    /// An unnamed Parse, Bind, Execute and Sync in one flight (pgjdbc's, psycopg's way).
    Unnamed,
    /// No COMMIT: the INSERT itself, outside a transaction (autocommit), over the extended
    /// protocol; its commit waits at its Sync (the row's triggers hold it there).
    AutocommitInsert,
    /// The same INSERT as a simple query (run behind the probe as the extended protocol).
    AutocommitSimpleInsert,
    /// A simple query of several statements, the INSERT last: one implicit transaction.
    AutocommitSimpleBatch,
    /// No INSERT in sight: a SELECT of a function that inserts, over the extended protocol
    /// (probed with `resolve_autocommit_reads`).
    AutocommitSelect,
}

/// Runs one scene; returns what the client's COMMIT got and whether the row is on the primary
/// that follows.
async fn scene(then: Then, held: Held) -> (Result<(), String>, bool) {
    scene_with(then, held, true, Sent::Simple).await
}

/// [`scene`] with synchronous replication or not, and the COMMIT sent as `sent`.
async fn scene_with(
    then: Then,
    held: Held,
    sync_replication: bool,
    sent: Sent,
) -> (Result<(), String>, bool) {
    let opts = ClusterOptions {
        sync_replication,
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with(opts, |cfg| {
        cfg.failover.resolve_commits = true;
        cfg.failover.resolve_autocommit_reads = sent == Sent::AutocommitSelect;
    })
    .await;
    Cluster::psql_on(&c.primary, "app", SCHEMA).await;
    let client = Arc::new(c.client().await);
    let value = match held {
        Held::ForApply => "applied",
        Held::BeforeCommitRecord => "slow",
    };
    let insert = "INSERT INTO t VALUES ($1)";
    let simple_insert = format!("INSERT INTO t VALUES ('{value}')");
    let autocommit = matches!(
        sent,
        Sent::AutocommitInsert
            | Sent::AutocommitSimpleInsert
            | Sent::AutocommitSimpleBatch
            | Sent::AutocommitSelect
    );
    if !autocommit {
        let begin = format!("BEGIN; INSERT INTO t VALUES ('{value}')");
        within(STEP, "begin", client.batch_execute(&begin))
            .await
            .unwrap();
    }
    let wait_event = match held {
        Held::ForApply => {
            Cluster::psql_on(&c.standby, "postgres", "SELECT pg_wal_replay_pause()").await;
            "SyncRep"
        }
        Held::BeforeCommitRecord => "PgSleep",
    };
    let committing = client.clone();
    let simple = simple_insert.clone();
    let commit = tokio::spawn(async move {
        match sent {
            Sent::Simple => committing.batch_execute("COMMIT").await,
            Sent::Named => committing.execute("COMMIT", &[]).await.map(drop),
            Sent::Unnamed => committing.execute_typed("COMMIT", &[]).await.map(drop),
            Sent::AutocommitInsert => committing.execute(insert, &[&value]).await.map(|n| {
                assert_eq!(n, 1, "the INSERT's own answer");
            }),
            Sent::AutocommitSimpleInsert => committing.simple_query(&simple).await.map(|answer| {
                let done = answer.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::CommandComplete(n) => Some(*n),
                    _ => None,
                });
                assert_eq!(done, Some(1), "the INSERT's own answer");
            }),
            Sent::AutocommitSelect => committing
                .query_one("SELECT add_row($1)", &[&value])
                .await
                .map(|row| {
                    assert_eq!(row.get::<_, String>(0), value, "the SELECT's own answer");
                }),
            Sent::AutocommitSimpleBatch => {
                let batch = format!("INSERT INTO t VALUES ('batch'); SELECT 'row' AS r; {simple}");
                committing.simple_query(&batch).await.map(|answer| {
                    use tokio_postgres::SimpleQueryMessage as M;
                    let seen: Vec<String> = answer
                        .iter()
                        .filter_map(|m| match m {
                            M::CommandComplete(n) => Some(format!("C{n}")),
                            M::Row(r) => Some(format!("D{}", r.get(0).unwrap_or_default())),
                            M::RowDescription(_) => Some("T".to_string()),
                            _ => None,
                        })
                        .collect();
                    assert_eq!(
                        seen,
                        ["C1", "T", "Drow", "C1", "C1"],
                        "the batch's own answer"
                    );
                })
            }
        }
    });
    // The COMMIT is in flight once the primary shows it waiting.
    let query = match sent {
        Sent::AutocommitInsert => insert.to_string(),
        Sent::AutocommitSelect => "SELECT add_row($1)".to_string(),
        // (A batch's statement running now is its last, the INSERT.)
        Sent::AutocommitSimpleInsert | Sent::AutocommitSimpleBatch => {
            simple_insert.replace('\'', "''")
        }
        _ => "COMMIT".to_string(),
    };
    waiting_on_the_primary(&c, &query, wait_event).await;
    let (injected, follower) = match then {
        Then::FailOver(fault) => {
            let injected = c.inject(fault).await;
            c.promote_standby().await;
            (Some(injected), &c.standby)
        }
        Then::BackendEnded => {
            let end = format!(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity \
                 WHERE query = '{query}'"
            );
            assert_eq!(Cluster::psql_on(&c.primary, "postgres", &end).await, "t");
            (None, &c.primary)
        }
    };
    let answer = within(Duration::from_secs(40), "the COMMIT's answer", commit)
        .await
        .expect("task")
        .map_err(|e| format!("{} {}", sqlstate(&e), why(&e)));
    let count = Cluster::psql_on(
        follower,
        "app",
        &format!("SELECT count(*) FROM t WHERE v = '{value}'"),
    )
    .await;
    if let Some(injected) = injected {
        c.restore(injected).await;
    }
    (answer, count == "1")
}

/// Until the primary shows `query` waiting on `wait_event`.
async fn waiting_on_the_primary(c: &Cluster, query: &str, wait_event: &str) {
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query = '{query}' AND wait_event = \
         '{wait_event}'"
    );
    within(
        Duration::from_secs(20),
        "the COMMIT waiting on the primary",
        async {
            while Cluster::psql_on(&c.primary, "postgres", &sql).await != "1" {
                // A poll interval, not a synchronisation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_reached_the_standby_is_answered_commit_after_a_crash() {
    let (answer, there) = scene(Then::FailOver(Fault::Crash), Held::ForApply).await;
    assert!(there, "the row is on the new primary");
    assert_eq!(answer, Ok(()), "the client is told its COMMIT succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_reached_the_standby_is_answered_commit_after_a_freeze() {
    let (answer, there) = scene(Then::FailOver(Fault::Freeze), Held::ForApply).await;
    assert!(there, "the row is on the new primary");
    assert_eq!(answer, Ok(()), "the client is told its COMMIT succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_reached_the_standby_is_answered_commit_after_a_blackhole() {
    let (answer, there) = scene(Then::FailOver(Fault::Blackhole), Held::ForApply).await;
    assert!(there, "the row is on the new primary");
    assert_eq!(answer, Ok(()), "the client is told its COMMIT succeeded");
}

/// A COMMIT prepared by name (tokio-postgres) or sent as one unnamed extended flight (pgjdbc,
/// psycopg) gets its true answer too, in the shape its messages asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_commit_gets_its_true_answer_after_a_crash() {
    let then = Then::FailOver(Fault::Crash);
    for sent in [Sent::Named, Sent::Unnamed] {
        let (answer, there) = scene_with(then, Held::ForApply, true, sent).await;
        assert!(there, "{sent:?}: the row is on the new primary");
        assert_eq!(
            answer,
            Ok(()),
            "{sent:?}: the client is told its COMMIT succeeded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_protocol_commit_that_never_wrote_its_record_gets_40001() {
    let then = Then::FailOver(Fault::Freeze);
    for sent in [Sent::Named, Sent::Unnamed] {
        let (answer, there) = scene_with(then, Held::BeforeCommitRecord, true, sent).await;
        assert!(!there, "{sent:?}: the row is not on the new primary");
        let err = answer.expect_err("the COMMIT failed");
        assert!(err.starts_with("40001"), "{sent:?}: {err}");
    }
}

/// An autocommit INSERT over the extended protocol whose commit reached the standby gets its
/// own answer (INSERT 0 1); one whose commit record was never written gets 40001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocommit_write_gets_its_true_answer_after_a_crash_and_a_freeze() {
    autocommit_write_scenes(Sent::AutocommitInsert).await;
}

/// The same for an INSERT sent as a simple query (psql, node-postgres without parameters).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simple_query_autocommit_write_gets_its_true_answer_after_a_crash_and_a_freeze() {
    autocommit_write_scenes(Sent::AutocommitSimpleInsert).await;
}

/// The same for several statements in one simple query (psql -c, an ORM's batch): they
/// commit or roll back together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_simple_query_gets_its_true_answer_after_a_crash_and_a_freeze() {
    autocommit_write_scenes(Sent::AutocommitSimpleBatch).await;
}

/// With `resolve_autocommit_reads`: a SELECT of a function that writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_select_that_writes_gets_its_true_answer_after_a_crash_and_a_freeze() {
    autocommit_write_scenes(Sent::AutocommitSelect).await;
}

async fn autocommit_write_scenes(sent: Sent) {
    let then = Then::FailOver(Fault::Crash);
    let (answer, there) = scene_with(then, Held::ForApply, true, sent).await;
    assert!(there, "the row is on the new primary");
    assert_eq!(answer, Ok(()), "the client gets the INSERT's answer");
    let then = Then::FailOver(Fault::Freeze);
    let (answer, there) = scene_with(then, Held::BeforeCommitRecord, true, sent).await;
    assert!(!there, "the row is not on the new primary");
    let err = answer.expect_err("the INSERT failed");
    assert!(err.starts_with("40001"), "{err}");
}

/// With asynchronous replication the standby may lack even the transaction's records: the
/// answer is still 40001 (its history ends before the commit), never COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_never_written_is_answered_40001_with_asynchronous_replication() {
    let then = Then::FailOver(Fault::Freeze);
    let (answer, there) = scene_with(then, Held::BeforeCommitRecord, false, Sent::Simple).await;
    assert!(!there, "the row is not on the new primary");
    let err = answer.expect_err("the COMMIT failed");
    assert!(err.starts_with("40001"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_wrote_its_record_is_answered_40001() {
    let (answer, there) = scene(Then::FailOver(Fault::Crash), Held::BeforeCommitRecord).await;
    assert!(!there, "the row is not on the new primary");
    let err = answer.expect_err("the COMMIT failed");
    assert!(err.starts_with("40001"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_backend_is_ended_after_its_record_is_answered_commit() {
    let (answer, there) = scene(Then::BackendEnded, Held::ForApply).await;
    assert!(there, "the row is on the primary");
    assert_eq!(answer, Ok(()), "the client is told its COMMIT succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_backend_is_ended_before_its_record_is_answered_40001() {
    let (answer, there) = scene(Then::BackendEnded, Held::BeforeCommitRecord).await;
    assert!(!there, "the row is not on the primary");
    let err = answer.expect_err("the COMMIT failed");
    assert!(err.starts_with("40001"), "{err}");
}

/// The probe runs inside the client's transaction: were it refused there, the transaction
/// would abort and its COMMIT become a rollback. A user who may run it commits with it; a
/// user who may not (EXECUTE revoked, in database `app2`) commits without it, and nothing is
/// lost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_go_through_whether_or_not_the_user_may_run_the_probe() {
    let pg = start_pg();
    pg.create_database("app2", "postgres").unwrap();
    for db in ["app", "app2"] {
        pg.psql_db(db, "CREATE TABLE t (v text); GRANT ALL ON t TO PUBLIC")
            .unwrap();
    }
    pg.psql_db(
        "app2",
        "REVOKE EXECUTE ON FUNCTION pg_catalog.pg_current_wal_insert_lsn() FROM PUBLIC",
    )
    .unwrap();
    let mut config = config_for(&pg, switchyard_config::PoolMode::Transaction);
    config.failover.resolve_commits = true;
    let h = Harness::from_parts(pg, config).await;
    for db in ["app", "app2"] {
        let c = connect(&h.conninfo(SCRAM_USER, SCRAM_PASSWORD, db))
            .await
            .expect("login");
        within(
            STEP,
            "insert",
            c.batch_execute("BEGIN; INSERT INTO t VALUES ('x')"),
        )
        .await
        .unwrap();
        let done = within(STEP, "commit", c.simple_query("COMMIT"))
            .await
            .unwrap();
        // The COMMIT's own answer only (the probe's row never reaches the client).
        assert!(
            matches!(
                done.as_slice(),
                [tokio_postgres::SimpleQueryMessage::CommandComplete(0)]
            ),
            "{db}: {} messages",
            done.len()
        );
        let n = h.pg.psql_db(db, "SELECT count(*) FROM t").unwrap();
        assert_eq!(n, "1", "{db}: the transaction committed");
    }
}

/// A probe that fails (here: refused to the role the transaction switched to) has aborted the
/// transaction: its COMMIT is answered 40001, never a quiet ROLLBACK the client would take for
/// success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_probe_makes_the_commit_an_error_not_a_silent_rollback() {
    let pg = start_pg();
    pg.psql_db(
        "app",
        &format!(
            "CREATE TABLE t (v text); GRANT ALL ON t TO PUBLIC; \
             CREATE ROLE limited; GRANT limited TO {SCRAM_USER}; \
             REVOKE EXECUTE ON FUNCTION pg_catalog.pg_walfile_name(pg_lsn) FROM PUBLIC; \
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_walfile_name(pg_lsn) TO {SCRAM_USER}"
        ),
    )
    .unwrap();
    let mut config = config_for(&pg, switchyard_config::PoolMode::Transaction);
    config.failover.resolve_commits = true;
    let h = Harness::from_parts(pg, config).await;
    let c = connect(&h.conninfo(SCRAM_USER, SCRAM_PASSWORD, "app"))
        .await
        .expect("login");
    within(
        STEP,
        "insert",
        c.batch_execute("BEGIN; SET LOCAL ROLE limited; INSERT INTO t VALUES ('x')"),
    )
    .await
    .unwrap();
    let err = within(STEP, "commit", c.simple_query("COMMIT"))
        .await
        .expect_err("the COMMIT fails");
    assert_eq!(err.code().map(|c| c.code()), Some("40001"), "{err}");
    let n = h.pg.psql_db("app", "SELECT count(*) FROM t").unwrap();
    assert_eq!(n, "0", "the transaction did not commit");
    // The client's connection goes on.
    let rows = within(STEP, "next", c.simple_query("SELECT 1"))
        .await
        .unwrap();
    assert!(!rows.is_empty());
}

/// With no failover, a probed autocommit write is answered exactly as without a probe: its rows
/// (RETURNING), its count, its error (the connection goes on), whether sent as a simple query
/// (run behind the probe as the extended protocol) or over the extended protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probed_writes_are_answered_as_without_a_probe() {
    let pg = start_pg();
    pg.psql_db(
        "app",
        "CREATE TABLE u (v text PRIMARY KEY); GRANT ALL ON u TO PUBLIC",
    )
    .unwrap();
    let mut config = config_for(&pg, switchyard_config::PoolMode::Transaction);
    config.failover.resolve_commits = true;
    let h = Harness::from_parts(pg, config).await;
    let c = h.client().await;
    let simple = |sql: &'static str| {
        let c = &c;
        async move { within(STEP, sql, c.simple_query(sql)).await }
    };
    // The write probe is there to be used.
    let sql = "SELECT count(*) FROM pg_prepared_statements WHERE name = 'sy_write_probe'";
    assert_eq!(first_column(&c, sql).await, "1");
    let rows = simple("INSERT INTO u VALUES ('a') RETURNING v, 'x' AS w")
        .await
        .unwrap();
    let values: Vec<(String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((r.get(0)?.to_string(), r.get("w")?.to_string()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(values, vec![("a".to_string(), "x".to_string())]);
    assert!(matches!(
        rows.last(),
        Some(tokio_postgres::SimpleQueryMessage::CommandComplete(1))
    ));
    let dup = simple("INSERT INTO u VALUES ('a')")
        .await
        .expect_err("duplicate");
    assert_eq!(sqlstate(&dup), "23505", "{dup:?}");
    let missing = simple("UPDATE nowhere SET v = 1")
        .await
        .expect_err("no table");
    assert_eq!(sqlstate(&missing), "42P01", "{missing:?}");
    let n = within(STEP, "update", c.execute("UPDATE u SET v = $1", &[&"b"]))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let row = within(
        STEP,
        "returning",
        c.query_one("DELETE FROM u WHERE v = $1 RETURNING v", &[&"b"]),
    )
    .await
    .unwrap();
    assert_eq!(row.get::<_, String>(0), "b");
    let e = within(
        STEP,
        "dup",
        c.execute("INSERT INTO u VALUES ($1), ($1)", &[&"c"]),
    )
    .await
    .expect_err("duplicate");
    assert_eq!(sqlstate(&e), "23505");
    // Several statements in one simple query: one answer each, as without a probe, also when
    // the answer is too long to hold (3 MB of rows, relayed as they come).
    let batch = "INSERT INTO u VALUES ('m1'); \
                 SELECT g::text FROM generate_series(1, 200000) g; \
                 DELETE FROM u WHERE v = 'm1'";
    // (tokio-postgres sends the Close of a statement it dropped with the next request: that
    // one, not the batch, which must go alone to be probed.)
    simple("SELECT 1").await.unwrap();
    let answer = simple(batch).await.unwrap();
    use tokio_postgres::SimpleQueryMessage as M;
    let completed: Vec<u64> = answer
        .iter()
        .filter_map(|m| match m {
            M::CommandComplete(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert_eq!(completed, [1, 200000, 1]);
    let rows = answer.iter().filter(|m| matches!(m, M::Row(_))).count();
    assert_eq!(rows, 200000);
    let last = answer.iter().rev().find_map(|m| match m {
        M::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(last.as_deref(), Some("200000"));
    // They commit or fail together.
    let dup = simple("INSERT INTO u VALUES ('m2'); INSERT INTO u VALUES ('m2')")
        .await
        .expect_err("duplicate");
    assert_eq!(sqlstate(&dup), "23505", "{dup:?}");
    // Each of those committed or failed on its own.
    assert_eq!(h.pg.psql_db("app", "SELECT count(*) FROM u").unwrap(), "0");
    assert_eq!(simple("SELECT 1").await.unwrap().len(), 3);
}

/// `resolve_autocommit_writes = false`: COMMITs are still probed, writes are not (the write
/// probe is not even prepared).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autocommit_writes_can_be_left_unprobed() {
    let pg = start_pg();
    let mut config = config_for(&pg, switchyard_config::PoolMode::Transaction);
    config.failover.resolve_commits = true;
    config.failover.resolve_autocommit_writes = false;
    let h = Harness::from_parts(pg, config).await;
    let c = h.client().await;
    let sql = "SELECT string_agg(name, ',' ORDER BY name) FROM pg_prepared_statements \
               WHERE name LIKE 'sy\\_%'";
    assert_eq!(first_column(&c, sql).await, "sy_commit_probe");
}

/// Session mode: the COMMIT gets its true answer, and the session goes on, rebuilt on the new
/// primary with what it built (its COMMIT changed none of that).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_commit_gets_its_true_answer_and_the_session_goes_on() {
    let opts = ClusterOptions {
        mode: PoolMode::Session,
        sync_replication: true,
        ..ClusterOptions::default()
    };
    let c = Cluster::start_with(opts, |cfg| cfg.failover.resolve_commits = true).await;
    Cluster::psql_on(&c.primary, "app", SCHEMA).await;
    let client = Arc::new(c.client().await);
    // A probed COMMIT with nothing failing is answered as without a probe.
    for sql in ["SET work_mem = '7MB'", "BEGIN; INSERT INTO t VALUES ('x')"] {
        within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    }
    let done = within(STEP, "COMMIT", client.simple_query("COMMIT"))
        .await
        .unwrap();
    assert!(
        matches!(
            &done[..],
            [tokio_postgres::SimpleQueryMessage::CommandComplete(0)]
        ),
        "{done:?}"
    );
    let sql = "BEGIN; INSERT INTO t VALUES ('applied')";
    within(STEP, sql, client.batch_execute(sql)).await.unwrap();
    Cluster::psql_on(&c.standby, "postgres", "SELECT pg_wal_replay_pause()").await;
    let committing = client.clone();
    let commit = tokio::spawn(async move { committing.batch_execute("COMMIT").await });
    waiting_on_the_primary(&c, "COMMIT", "SyncRep").await;
    let injected = c.inject(Fault::Crash).await;
    c.promote_standby().await;
    let answer = within(Duration::from_secs(40), "the COMMIT's answer", commit)
        .await
        .expect("task");
    assert!(answer.is_ok(), "{answer:?}");
    let work_mem = within(STEP, "SHOW", client.simple_query("SHOW work_mem"))
        .await
        .expect("the session goes on");
    let shown = work_mem.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(shown.as_deref(), Some("7MB"), "rebuilt with its setting");
    c.restore(injected).await;
}
