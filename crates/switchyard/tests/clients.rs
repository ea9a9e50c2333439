//! Real clients through the proxy: psql scripts, pgbench, and psycopg 3 (with its bundled
//! libpq 18). The scripts and expected outputs live in `tests/clients/`.
//!
//! psql and pgbench come from PostgreSQL 15 (`switchyard_localpg::pg_bin_dir()`); psycopg runs in
//! `$SWITCHYARD_PYTHON`, else in `<workspace>/.venv/bin/python` (made by `scripts/setup`). Each
//! Python script takes its connection details as arguments and prints one JSON object, which the
//! tests below assert on. Every external program runs with `kill_on_drop` and a deadline
//! (`clients/programs.rs`).

mod common;
#[path = "clients/json.rs"]
mod json;
#[path = "clients/programs.rs"]
mod programs;

use common::*;
use json::Json;
use programs::{clients_dir, pg_program, read_expected, run, run_python};
use std::time::{Duration, Instant};
use switchyard_config::PoolMode;

/// Bound for one external client program (a psql script, one pgbench run, one Python script).
const PROGRAM: Duration = Duration::from_secs(60);

const MODES: [PoolMode; 2] = [PoolMode::Transaction, PoolMode::Session];

/// A libpq connection string for the proxy.
///
/// Not `Harness::conninfo`: with an empty password it writes `password= dbname=app`, which libpq
/// (and tokio-postgres) read as the password `dbname=app`, so the client silently lands in the
/// database named after the user.
fn proxy_conninfo(h: &Harness, user: &str, password: &str, db: &str) -> String {
    let mut info = format!("host=127.0.0.1 port={} user={user} dbname={db}", h.port());
    if !password.is_empty() {
        info.push_str(&format!(" password='{password}'"));
    }
    info
}

// ---------------------------------------------------------------------------------------------
// psql

/// How psql gets the script.
#[derive(Debug, Clone, Copy)]
enum Input {
    File,
    Stdin,
}

/// Runs `session.sql` with psql against `db` and checks stdout, stderr and the \copy file.
async fn psql_session(h: &Harness, db: &str, input: Input, mode: PoolMode) {
    let script = clients_dir().join("session.sql");
    let scratch = tempfile::tempdir().expect("scratch dir");
    let mut cmd = pg_program("psql");
    cmd.current_dir(scratch.path())
        .args(["-X", "-v", "ON_ERROR_STOP=0", "-h", "127.0.0.1", "-p"])
        .arg(h.port().to_string())
        .args(["-U", "postgres", "-d", db]);
    let what = format!("psql session.sql via {input:?} in {mode:?} mode");
    let ran = match input {
        Input::File => {
            cmd.arg("-f").arg(&script);
            run(cmd, None, PROGRAM, &what).await
        }
        Input::Stdin => {
            let text = std::fs::read(&script).expect("read session.sql");
            run(cmd, Some(&text), PROGRAM, &what).await
        }
    }
    .expect_success(&what);

    assert_eq!(
        ran.stdout,
        read_expected("session.stdout"),
        "{what}: stdout differs from tests/clients/session.stdout; stderr:\n{}",
        ran.stderr
    );
    // psql prefixes errors with `psql:FILE:LINE: ` when it reads a file, not when it reads stdin.
    let expected_stderr = read_expected("session.stderr");
    let (stderr, expected_stderr) = match input {
        Input::File => (
            ran.stderr
                .replace(&format!("psql:{}:", script.display()), "psql:SCRIPT:"),
            expected_stderr,
        ),
        Input::Stdin => (ran.stderr.clone(), strip_psql_locations(&expected_stderr)),
    };
    assert_eq!(
        stderr, expected_stderr,
        "{what}: errors and notices differ from tests/clients/session.stderr"
    );
    let csv = std::fs::read_to_string(scratch.path().join("items.csv")).expect("\\copy to file");
    assert_eq!(
        csv, "1,apple,3\n2,pear,5\n7,plum,14\n",
        "{what}: \\copy file"
    );
}

/// `psql:SCRIPT:12: ERROR: ...` → `ERROR: ...`, line by line.
fn strip_psql_locations(text: &str) -> String {
    text.lines()
        .map(|line| {
            line.strip_prefix("psql:SCRIPT:")
                .and_then(|rest| rest.split_once(": "))
                .map_or(line, |(_, msg)| msg)
        })
        .fold(String::new(), |acc, line| acc + line + "\n")
}

/// A psql script with transactions, variables, \copy both ways, errors mid-script, a NOTICE,
/// \gset and SQL PREPARE/EXECUTE gives exactly PostgreSQL's own output, from a file and from
/// stdin, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_in_both_modes() {
    for mode in MODES {
        let h = Harness::start(mode).await;
        h.pg.create_database("app_stdin", "postgres")
            .expect("second database");
        psql_session(&h, "app", Input::File, mode).await;
        psql_session(&h, "app_stdin", Input::Stdin, mode).await;
    }
}

// ---------------------------------------------------------------------------------------------
// pgbench

const PGBENCH_CLIENTS: u64 = 8;
const PGBENCH_TRANSACTIONS: u64 = 200;

/// The value after `label` on the line that starts with it, e.g. `query mode: prepared`.
fn pgbench_field<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find_map(|l| l.strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {label:?} in pgbench output:\n{out}"))
}

/// pgbench threads for a protocol. `-M prepared` prepares each statement lazily with a blocking
/// `PQprepare` that stalls every client of the thread; when that waits for a pooled server held
/// by a client of the same thread in the middle of a transaction (or, in session mode, for its
/// whole session), the thread deadlocks against itself, with any pooler. So prepared runs use
/// one thread per client; the others run the requested two threads.
fn pgbench_threads(protocol: &str) -> u64 {
    if protocol == "prepared" {
        PGBENCH_CLIENTS
    } else {
        2
    }
}

/// One pgbench run of `-c 8 -t 200` with the given protocol and workload.
async fn pgbench_run(h: &Harness, mode: PoolMode, protocol: &str, select_only: bool) {
    let mut cmd = pg_program("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p"])
        .arg(h.port().to_string())
        .args(["-U", "postgres", "-M", protocol])
        .args(["-j", &pgbench_threads(protocol).to_string()])
        .args(["-c", &PGBENCH_CLIENTS.to_string()])
        .args(["-t", &PGBENCH_TRANSACTIONS.to_string()]);
    if select_only {
        cmd.arg("-S");
    }
    cmd.arg("app");
    let workload = if select_only { "select-only" } else { "TPC-B" };
    let what = format!("pgbench -M {protocol} {workload} in {mode:?} mode");
    let started = Instant::now();
    let ran = run(cmd, None, PROGRAM, &what).await.expect_success(&what);
    let out = &ran.stdout;
    let kind = if select_only {
        "<builtin: select only>"
    } else {
        "<builtin: TPC-B (sort of)>"
    };
    assert_eq!(pgbench_field(out, "transaction type:"), kind, "{what}");
    assert_eq!(pgbench_field(out, "query mode:"), protocol, "{what}");
    let total = PGBENCH_CLIENTS * PGBENCH_TRANSACTIONS;
    assert_eq!(
        pgbench_field(out, "number of transactions actually processed:"),
        format!("{total}/{total}"),
        "{what}:\n{out}\n{}",
        ran.stderr
    );
    let failed = pgbench_field(out, "number of failed transactions:");
    assert!(failed.starts_with("0 "), "{what}: failed: {failed}");
    assert!(
        !ran.stderr.contains("error") && !ran.stderr.contains("aborted"),
        "{what}: {}",
        ran.stderr
    );
    eprintln!("{what}: {:?}", started.elapsed());
}

/// After a TPC-B run: every transaction left one history row, and the balances agree.
async fn check_tpcb_consistency(h: &Harness, what: &str) {
    let c = connect(&proxy_conninfo(h, "postgres", "", "app"))
        .await
        .expect("connect through the proxy");
    let row = within(
        STEP,
        "consistency query",
        c.query_one(
            "select (select count(*) from pgbench_history),
                    (select sum(abalance) from pgbench_accounts),
                    (select sum(bbalance) from pgbench_branches),
                    (select sum(tbalance) from pgbench_tellers)",
            &[],
        ),
    )
    .await
    .expect("consistency query");
    let history: i64 = row.get(0);
    let (a, b, t): (i64, i64, i64) = (row.get(1), row.get(2), row.get(3));
    assert_eq!(
        history as u64,
        PGBENCH_CLIENTS * PGBENCH_TRANSACTIONS,
        "{what}: one history row per transaction"
    );
    assert!(a == b && b == t, "{what}: balances disagree: {a} {b} {t}");
}

/// pgbench -i, then select-only and TPC-B runs with every query protocol, 8 clients sharing a
/// pool of 4 server connections.
async fn pgbench_workloads(mode: PoolMode) {
    let h = Harness::start_with(mode, |c| c.pool.size = 4).await;
    let mut init = pg_program("pgbench");
    init.args(["-i", "-s", "1", "-h", "127.0.0.1", "-p"])
        .arg(h.port().to_string())
        .args(["-U", "postgres", "app"]);
    let what = format!("pgbench -i in {mode:?} mode");
    let ran = run(init, None, PROGRAM, &what).await.expect_success(&what);
    assert!(ran.stderr.contains("done in"), "{what}: {}", ran.stderr);
    for protocol in ["simple", "extended", "prepared"] {
        pgbench_run(&h, mode, protocol, true).await;
        pgbench_run(&h, mode, protocol, false).await;
        check_tpcb_consistency(&h, &format!("{protocol} in {mode:?} mode")).await;
    }
    // Some 60 client connections came and went; PostgreSQL saw only the pool's.
    let servers =
        h.pg.psql_db(
            "app",
            "select count(*) from pg_stat_activity where datname = 'app' \
             and backend_type = 'client backend' and pid <> pg_backend_pid()",
        )
        .expect("count server connections");
    let servers: usize = servers.trim().parse().expect("a count");
    assert!(
        (1..=4).contains(&servers),
        "{mode:?}: {servers} server connections to app, pool size is 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_transaction_mode() {
    pgbench_workloads(PoolMode::Transaction).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_session_mode() {
    pgbench_workloads(PoolMode::Session).await;
}

// ---------------------------------------------------------------------------------------------
// psycopg 3

/// Pipeline mode: several statements per sync, an error inside a pipeline and recovery after it,
/// pipelines inside transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_pipeline_mode() {
    for mode in MODES {
        let h = Harness::start(mode).await;
        let info = proxy_conninfo(&h, "postgres", "", "app");
        let r = run_python("psycopg_pipeline.py", &[&info], PROGRAM).await;
        let ctx = format!("{mode:?}: {r}");
        assert_eq!(r.get("database").as_str(), "app", "{ctx}");
        assert_eq!(r.get("count").as_i64(), 22, "{ctx}");
        assert_eq!(r.get("doubled").as_i64(), 42, "{ctx}");
        assert_eq!(r.get("text").as_str(), "many-11", "{ctx}");
        assert_eq!(r.get("error_raised").as_str(), "UniqueViolation", "{ctx}");
        let ids: Vec<i64> = r
            .get("ids_after_error")
            .as_array()
            .iter()
            .map(Json::as_i64)
            .collect();
        assert_eq!(
            ids,
            [100],
            "{ctx}: before the error committed, after it skipped"
        );
        assert_eq!(r.get("count_after_recovery").as_i64(), 2, "{ctx}");
        assert_eq!(r.get("tx_error_raised").as_str(), "DivisionByZero", "{ctx}");
        assert_eq!(r.get("tx_rows_after_rollback").as_i64(), 0, "{ctx}");
        assert_eq!(r.get("tx_count_inside").as_i64(), 10, "{ctx}");
        assert_eq!(r.get("tx_committed").as_i64(), 10, "{ctx}");
        assert_eq!(r.get("status").as_str(), "IDLE", "{ctx}");
    }
}

/// Every statement prepared (prepare_threshold = 0), 5 connections × 50 transactions on a pool
/// of 2 in transaction mode, with psycopg's DEALLOCATE ALL after rollbacks and Close on cache
/// eviction: every result is right and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_prepared_statements_across_transactions() {
    let h = Harness::start_with(PoolMode::Transaction, |c| c.pool.size = 2).await;
    let info = proxy_conninfo(&h, "postgres", "", "app");
    let r = run_python("psycopg_prepared.py", &[&info, "5", "50"], PROGRAM).await;
    assert!(r.get("errors").as_array().is_empty(), "{r}");
    assert_eq!(r.get("ok").as_i64(), 250, "{r}");
    assert_eq!(r.get("wrong").as_i64(), 0, "{r}");
    assert_eq!(r.get("rolled_back").as_i64(), 25, "{r}");
    assert_eq!(r.get("committed_rows").as_i64(), 225, "{r}");
    assert!(r.get("max_prepared").as_i64() > 0, "{r}");
    let pids = r.get("server_pids").as_array().len();
    assert!(
        (1..=2).contains(&pids),
        "pool size is 2, 5 clients shared it: {r}"
    );
}

/// COPY FROM STDIN (rows, raw CSV blocks, binary) and COPY TO STDOUT (rows, raw, binary), plus
/// a COPY failing on bad data and one aborted by the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_copy_both_ways() {
    for mode in MODES {
        let h = Harness::start(mode).await;
        let info = proxy_conninfo(&h, "postgres", "", "app");
        let r = run_python("psycopg_copy.py", &[&info], PROGRAM).await;
        let ctx = format!("{mode:?}: {r}");
        assert_eq!(r.get("database").as_str(), "app", "{ctx}");
        assert_eq!(r.get("copy_in_rowcount").as_i64(), 5000, "{ctx}");
        assert_eq!(r.get("copy_in_csv_rowcount").as_i64(), 1000, "{ctx}");
        assert_eq!(r.get("count").as_i64(), 6000, "{ctx}");
        assert_eq!(r.get("copy_out_rows").as_i64(), 6000, "{ctx}");
        let row = |key: &str| {
            let cols = r.get(key).as_array();
            (
                cols[0].as_i64(),
                cols[1].as_str().to_owned(),
                cols[2].as_f64(),
            )
        };
        assert_eq!(
            row("copy_out_first"),
            (0, "name 0\twith tab".to_owned(), 0.0),
            "{ctx}"
        );
        assert_eq!(
            row("copy_out_last"),
            (5999, "csv, 5999".to_owned(), 5999.5),
            "{ctx}"
        );
        assert!(r.get("copy_out_in_order").as_bool(), "{ctx}");
        assert!(r.get("copy_out_csv_matches").as_bool(), "{ctx}");
        assert!(r.get("binary_roundtrip").as_bool(), "{ctx}");
        assert_eq!(
            r.get("bad_copy_error").as_str(),
            "InvalidTextRepresentation",
            "{ctx}"
        );
        assert_eq!(
            r.get("copy_fail_raised").as_str(),
            "client gives up",
            "{ctx}"
        );
        assert_eq!(r.get("count_after_failures").as_i64(), 6000, "{ctx}");
        assert_eq!(r.get("status").as_str(), "IDLE", "{ctx}");
    }
}

/// LISTEN in autocommit, NOTIFY from another connection (plain, pg_notify, in a committed and in
/// a rolled-back transaction): the listener gets exactly the committed ones, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_listen_notify_in_session_mode() {
    let h = Harness::start(PoolMode::Session).await;
    let info = proxy_conninfo(&h, "postgres", "", "app");
    let r = run_python("psycopg_notify.py", &[&info], PROGRAM).await;
    let got: Vec<String> = r
        .get("received")
        .as_array()
        .iter()
        .map(|n| {
            let n = n.as_array();
            format!("{}:{}", n[0].as_str(), n[1].as_str())
        })
        .collect();
    assert_eq!(
        got,
        [
            "ch:one", "ch:two", "ch:three", "ch:stop", "ch:self", "ch:stop"
        ],
        "{r}"
    );
    assert!(r.get("seconds").as_f64() < 5.0, "{r}");
    assert_eq!(r.get("after").as_str(), "listener ok", "{r}");
    // As on a direct connection: each client's key is its server process, and a notification
    // names the process of the client that sent it.
    let (listener, sender) = (r.get("listener_key_pid"), r.get("sender_key_pid"));
    assert_eq!(
        listener.as_i64(),
        r.get("listener_backend_pid").as_i64(),
        "{r}"
    );
    assert_eq!(sender.as_i64(), r.get("sender_backend_pid").as_i64(), "{r}");
    let pids: Vec<i64> = r
        .get("sender_pids")
        .as_array()
        .iter()
        .map(|p| p.as_i64())
        .collect();
    let (l, s) = (listener.as_i64(), sender.as_i64());
    assert_eq!(pids, [s, s, s, s, l, l], "{r}");
}

/// Session mode, as a direct connection: the client's key is its server's process id; cancel
/// works with it; a backend it terminates itself ends its connection with 57P01 (a pool's
/// health check that does this sees the connection go). Transaction mode keeps its own ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_backend_identity() {
    for mode in MODES {
        let h = Harness::start(mode).await;
        let info = proxy_conninfo(&h, "postgres", "", "app");
        let r = run_python("psycopg_identity.py", &[&info], PROGRAM).await;
        let ctx = format!("{mode:?}: {r}");
        let same = r.get("key_pid").as_i64() == r.get("backend_pid").as_i64();
        assert_eq!(same, mode == PoolMode::Session, "{ctx}");
        assert_eq!(r.get("cancel").as_str(), "57014", "{ctx}");
        if mode == PoolMode::Session {
            assert_eq!(r.get("terminate_own").as_str(), "57P01", "{ctx}");
            assert!(r.get("closed_after").as_bool(), "{ctx}");
        }
        assert!(r.get("fresh_after").as_bool(), "{ctx}");
    }
}

/// `conn.cancel()` and `conn.cancel_safe()` from a thread stop `pg_sleep(30)` with QueryCanceled
/// within seconds, and the connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_cancel_in_both_modes() {
    for mode in MODES {
        let h = Harness::start(mode).await;
        let info = proxy_conninfo(&h, "postgres", "", "app");
        let r = run_python("psycopg_cancel.py", &[&info], PROGRAM).await;
        for method in ["cancel", "cancel_safe"] {
            let m = r.get(method);
            let ctx = format!("{mode:?} {method}: {m}");
            assert!(m.get("saw_running").as_bool(), "{ctx}");
            assert_eq!(m.get("error").as_str(), "QueryCanceled", "{ctx}");
            assert_eq!(m.get("sqlstate").as_str(), "57014", "{ctx}");
            assert!(m.get("seconds").as_f64() < 10.0, "{ctx}");
            assert_eq!(m.get("after").as_str(), "still usable", "{ctx}");
        }
    }
}

/// Asserts that each named case of `r` connected over plain-text protocol 3.0.
fn assert_connected(r: &Json, cases: &[&str]) {
    for case in cases {
        let c = r.get(case);
        assert!(c.get("ok").as_bool(), "{case} should connect: {c}");
        assert_eq!(c.get("protocol").as_i64(), 30000, "{case}: {c}");
        assert!(!c.get("ssl").as_bool(), "{case}: {c}");
    }
}

/// Asserts that each case failed promptly with an OperationalError whose message has the wording.
fn assert_refused(r: &Json, cases: &[(&str, &str)]) {
    for (case, wording) in cases {
        let c = r.get(case);
        assert!(!c.get("ok").as_bool(), "{case} must fail: {c}");
        assert_eq!(c.get("error").as_str(), "OperationalError", "{case}: {c}");
        assert!(
            c.get("message").as_str().contains(wording),
            "{case}: expected {wording:?}: {c}"
        );
        assert!(
            c.get("seconds").as_f64() < 4.0,
            "{case} must fail promptly, not by connect_timeout=5: {c}"
        );
    }
}

/// libpq 18 asking for a newer protocol (`max_protocol_version=latest`, i.e. 3.2) is negotiated
/// down to 3.0 and works; a client insisting on 3.2 fails cleanly with libpq's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_newer_protocol_is_negotiated_down() {
    let h = Harness::start(PoolMode::Transaction).await;
    let info = proxy_conninfo(&h, "postgres", "", "app");
    let cases = ["latest", "explicit_3_2", "min_3_2"];
    let r = run_python(
        "psycopg_protocol.py",
        &[&info, cases[0], cases[1], cases[2]],
        PROGRAM,
    )
    .await;
    assert_connected(&r, &["latest", "explicit_3_2"]);
    assert_refused(
        &r,
        &[("min_3_2", "server only supports protocol version 3.0")],
    );
}

/// TLS is not offered: an SSLRequest is answered 'N' (prefer goes on in plain text, require
/// fails), GSS encryption likewise, and a direct TLS hello (`sslnegotiation=direct`) is refused
/// at once instead of hanging until connect_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_tls_is_declined_cleanly() {
    let h = Harness::start(PoolMode::Transaction).await;
    let info = proxy_conninfo(&h, "postgres", "", "app");
    let cases = ["ssl_prefer", "gss_prefer", "ssl_require", "ssl_direct"];
    let mut args = vec![info.as_str()];
    args.extend(cases);
    let r = run_python("psycopg_protocol.py", &args, PROGRAM).await;
    assert_connected(&r, &["ssl_prefer", "gss_prefer"]);
    assert_refused(
        &r,
        &[
            ("ssl_require", "server does not support SSL"),
            ("ssl_direct", ""),
        ],
    );
}

/// SCRAM and md5 users log in with the right password (libpq's require_auth confirms the method
/// the proxy used); wrong passwords get PostgreSQL's wording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_password_authentication() {
    let h = Harness::start(PoolMode::Transaction).await;
    let port = h.port().to_string();
    let r = run_python("psycopg_auth.py", &["127.0.0.1", &port, "app"], PROGRAM).await;
    for (case, user) in [
        ("scram_ok", SCRAM_USER),
        ("scram_required_method", SCRAM_USER),
        ("md5_ok", MD5_USER),
        ("md5_required_method", MD5_USER),
    ] {
        let c = r.get(case);
        assert!(c.get("ok").as_bool(), "{case} should log in: {c}");
        assert_eq!(c.get("current_user").as_str(), user, "{case}: {c}");
        assert_eq!(c.get("rows").as_i64(), 3, "{case}: {c}");
    }
    assert_refused(
        &r,
        &[
            (
                "scram_wrong_password",
                "password authentication failed for user \"scram_user\"",
            ),
            (
                "md5_wrong_password",
                "password authentication failed for user \"md5_user\"",
            ),
            (
                "md5_user_refuses_scram_only",
                "authentication method requirement \"scram-sha-256\"",
            ),
        ],
    );
}

/// An unknown user goes through a SCRAM exchange that fails, and is told what PostgreSQL says
/// for an unknown role under password authentication, naming the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_unknown_user_gets_postgres_wording() {
    let h = Harness::start(PoolMode::Transaction).await;
    let port = h.port().to_string();
    let r = run_python(
        "psycopg_auth.py",
        &["127.0.0.1", &port, "app", "unknown_user"],
        PROGRAM,
    )
    .await;
    assert_refused(
        &r,
        &[(
            "unknown_user",
            "password authentication failed for user \"nobody_here\"",
        )],
    );
}
