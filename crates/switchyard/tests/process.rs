//! The `switchyard` binary as an operator runs it: `check-config`, live reload (SIGHUP and a
//! change of the file's modification time, a bad file refused), and draining on SIGTERM (open
//! transactions finish, idle clients get 57P01, new connections are refused, the process exits,
//! also when a transaction never ends and `shutdown_timeout` runs out).

mod common;

use common::served::{Served as Proc, to_toml};
use common::*;
use std::path::Path;
use std::time::{Duration, Instant};
use switchyard_config::{Config, Duration as CfgDuration, PoolMode, UserConfig};
use switchyard_localpg::PgServer;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const BIN: &str = env!("CARGO_BIN_EXE_switchyard");

/// Interval of the bounded polling loops below.
const POLL: Duration = Duration::from_millis(50);

impl Proc {
    fn conninfo(&self, user: &str, password: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user='{user}' password='{password}' dbname='app' \
             connect_timeout=5",
            self.port
        )
    }

    async fn login(&self, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
        connect(&self.conninfo(user, password)).await
    }

    /// Logs in as `user` and runs a query; panics with the log if either fails.
    async fn login_works(&self, user: &str, password: &str) {
        let c = self
            .login(user, password)
            .await
            .unwrap_or_else(|e| panic!("{user} must log in: {e:?}\n{}", self.log()));
        let who: String = within(
            STEP,
            "current_user",
            c.query_one("select current_user::text", &[]),
        )
        .await
        .expect("query after login")
        .get(0);
        assert_eq!(who, user);
    }

    /// Polls until `user` can log in, at most `limit`.
    async fn wait_login(&self, user: &str, password: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.login(user, password).await {
                Ok(_) => return,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "{user} still cannot log in after {limit:?}: {e:?}\n{}",
                    self.log()
                ),
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// `config_for(pg)` with only the users named.
fn config_with_users(pg: &PgServer, mode: PoolMode, users: &[&str]) -> Config {
    let mut cfg = config_for(pg, mode);
    cfg.users
        .retain(|u: &UserConfig| users.contains(&u.name.as_str()));
    cfg
}

/// The connection task's end, which must be an error with `code` (as a FATAL), within `limit`.
async fn expect_fatal(
    conn: JoinHandle<Result<(), tokio_postgres::Error>>,
    code: &str,
    limit: Duration,
    what: &str,
) {
    let end = within(limit, what, conn).await.expect("connection task");
    let err = end
        .err()
        .unwrap_or_else(|| panic!("{what}: connection closed without an error"));
    assert_eq!(sqlstate(&err), code, "{what}: {err:?}");
    let severity = err.as_db_error().map(|d| d.severity().to_string());
    assert_eq!(severity.as_deref(), Some("FATAL"), "{what}: {err:?}");
}

/// Polls until a new connection to `port` is refused, at most `limit`.
async fn wait_refusing(p: &Proc, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        match p.login("postgres", "").await {
            Err(e) => {
                assert!(e.as_db_error().is_none(), "refused at TCP level: {e:?}");
                return;
            }
            Ok(_) => assert!(
                Instant::now() < deadline,
                "still accepting connections {limit:?} after SIGTERM:\n{}",
                p.log()
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `switchyard check-config` with `args` (within [`STEP`]).
async fn check_config(args: &[&std::ffi::OsStr]) -> std::process::Output {
    within(
        STEP,
        "check-config",
        Command::new(BIN)
            .arg("check-config")
            .args(args)
            .env("NO_COLOR", "1")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run check-config")
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_the_deployment_examples() {
    // Their TLS files live on the machine they are written for: the config alone is checked.
    for name in [
        "rds.toml",
        "patroni.toml",
        "tls.toml",
        "cluster.toml",
        "scram.toml",
    ] {
        let path = example(name);
        let out = check_config(&["--skip-files".as_ref(), path.as_os_str()]).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name} must be valid: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without --skip-files, a TLS file that is not there is an error naming it.
    let out = check_config(&[example("tls.toml").as_os_str()]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/etc/switchyard/tls/"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_accepts_the_example_and_lists_every_error() {
    let out = check_config(&[example("switchyard.toml").as_os_str()]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "example must be valid: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[proxy]
listen = "nowhere"

[clusters.main]
members = ["127.0.0.1:5432"]

[[sites]]
database = "*"
cluster = "missing"

[[users]]
name = "alice"
auth = "md5"

[[users]]
name = "ops"
auth = "trust"
"#,
    )
    .unwrap();
    let out = check_config(&[bad.as_os_str()]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("3 error(s)"), "{stderr}");
    for needle in [
        "proxy.listen \"nowhere\"",
        "unknown cluster \"missing\"",
        "user \"alice\": auth",
    ] {
        assert!(
            stderr.contains(needle),
            "stderr lacks {needle:?}:\n{stderr}"
        );
    }
}

/// SIGHUP applies a new file; a bad file is refused (logged) and the running config stays; a
/// changed file is picked up without a signal, pool size included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_on_sighup_and_on_file_change_refusing_bad_files() {
    let pg = start_pg();
    let only_postgres = config_with_users(&pg, PoolMode::Transaction, &["postgres"]);
    let mut p = Proc::start(only_postgres.clone()).await;
    p.login_works("postgres", "").await;
    let err = p
        .login(MD5_USER, MD5_PASSWORD)
        .await
        .expect_err("md5_user unknown");
    assert_eq!(sqlstate(&err), "28P01", "{err:?}");

    // 1. SIGHUP (the file keeps its modification time, so only the signal can trigger this).
    let mut with_md5 = only_postgres.clone();
    with_md5.users = config_with_users(&pg, PoolMode::Transaction, &["postgres", MD5_USER]).users;
    with_md5.proxy.listen = format!("127.0.0.1:{}", p.port);
    p.rewrite(&to_toml(&with_md5), true);
    p.signal("HUP").await;
    p.wait_login(MD5_USER, MD5_PASSWORD, Duration::from_secs(10))
        .await;
    p.wait_log("SIGHUP: reloading config", 1, STEP).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGHUP must not end the process"
    );

    // 2. An invalid file is refused with a log line; the running config stays.
    let invalid = format!("no_such_setting = true\n{}", to_toml(&with_md5));
    p.rewrite(&invalid, true);
    p.signal("HUP").await;
    p.wait_log("config reload refused", 1, Duration::from_secs(10))
        .await;
    let log = p.log();
    assert!(
        log.contains("no_such_setting"),
        "the refusal says why:\n{log}"
    );
    p.login_works(MD5_USER, MD5_PASSWORD).await;
    p.login_works("postgres", "").await;

    // 3. A fixed file, no signal: noticed through its modification time. It adds scram_user and
    //    shrinks the pool to 1 with a 1 s wait.
    let mut fixed = with_md5.clone();
    fixed.users = config_for(&pg, PoolMode::Transaction).users;
    fixed.pool.size = 1;
    fixed.pool.query_wait_timeout = CfgDuration::secs(1);
    let reloads_before = p.log().matches("config reloaded").count();
    p.rewrite(&to_toml(&fixed), false);
    p.wait_login(SCRAM_USER, SCRAM_PASSWORD, Duration::from_secs(10))
        .await;
    p.wait_log("config reloaded", reloads_before + 1, STEP)
        .await;
    p.login_works(MD5_USER, MD5_PASSWORD).await;

    // Pool size 1: while A holds the only server connection, B's query waits 1 s and gets 53300.
    let a = p.login("postgres", "").await.expect("client a");
    let b = p.login("postgres", "").await.expect("client b");
    within(STEP, "a begins", a.batch_execute("begin; select 1"))
        .await
        .expect("a's transaction");
    let t0 = Instant::now();
    let err = within(STEP, "b waits", b.simple_query("select 1"))
        .await
        .err()
        .unwrap_or_else(|| panic!("pool size 1 must make b wait:\n{}", p.log()));
    assert_eq!(sqlstate(&err), "53300", "{err:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "b waited query_wait_timeout (1 s), not {:?}",
        t0.elapsed()
    );
    within(STEP, "a commits", a.batch_execute("commit"))
        .await
        .unwrap();
    within(STEP, "b after a", b.simple_query("select 1"))
        .await
        .expect("b runs once a is done");
    assert!(p.child.try_wait().unwrap().is_none(), "still running");
}

/// SIGTERM: new connections are refused, an idle client gets FATAL 57P01, a client inside a
/// transaction finishes it (the commit lands on PostgreSQL), then the process exits 0 without
/// waiting for `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_transactions_and_closes_idle_clients() {
    let pg = start_pg();
    pg.psql_db("app", "create table drain_t(a int)").unwrap();
    let mut cfg = config_for(&pg, PoolMode::Transaction);
    cfg.proxy.shutdown_timeout = CfgDuration::secs(30);
    let mut p = Proc::start(cfg).await;
    let (a, a_conn) = connect_watched(&p.conninfo("postgres", "")).await;
    let (b, b_conn) = connect_watched(&p.conninfo("postgres", "")).await;
    within(STEP, "b runs a query", b.simple_query("select 1"))
        .await
        .unwrap();
    within(
        STEP,
        "a opens a transaction",
        a.batch_execute("begin; insert into drain_t values (1)"),
    )
    .await
    .unwrap();

    p.signal("TERM").await;
    let t0 = Instant::now();
    wait_refusing(&p, Duration::from_secs(5)).await;
    expect_fatal(b_conn, "57P01", Duration::from_secs(5), "idle client b").await;
    assert!(b.is_closed());

    // A's transaction goes on and commits.
    within(
        STEP,
        "a inserts",
        a.batch_execute("insert into drain_t values (2)"),
    )
    .await
    .expect("a's transaction continues while draining");
    within(STEP, "a commits", a.batch_execute("commit"))
        .await
        .expect("a's commit during drain");
    let rows = pg.psql_db("app", "select count(*) from drain_t").unwrap();
    assert_eq!(rows, "2", "a's commit is on PostgreSQL");
    // Once its transaction is over, a is idle and is closed too.
    expect_fatal(
        a_conn,
        "57P01",
        Duration::from_secs(5),
        "client a after commit",
    )
    .await;

    let status = p.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", p.log());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "drain ended when the last client left, not at shutdown_timeout"
    );
    assert!(p.log().contains("all clients drained"), "{}", p.log());
}

/// Session mode: a client that has run a query and sits idle holds its server connection, but
/// on SIGTERM it must still get 57P01 promptly, and the process exit without waiting for
/// `shutdown_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_idle_session_mode_clients_promptly() {
    let pg = start_pg();
    let mut cfg = config_for(&pg, PoolMode::Session);
    cfg.proxy.shutdown_timeout = CfgDuration::secs(30);
    let mut p = Proc::start(cfg).await;
    let (b, b_conn) = connect_watched(&p.conninfo("postgres", "")).await;
    within(STEP, "b runs a query", b.simple_query("select 1"))
        .await
        .unwrap();
    p.signal("TERM").await;
    wait_refusing(&p, Duration::from_secs(5)).await;
    expect_fatal(
        b_conn,
        "57P01",
        Duration::from_secs(5),
        "idle session-mode client",
    )
    .await;
    let status = p.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", p.log());
}

/// `shutdown_timeout = 1s` and a transaction that never ends: the process exits anyway, after
/// about a second, and the uncommitted row never reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_bounds_the_drain() {
    let pg = start_pg();
    pg.psql_db("app", "create table stuck_t(a int)").unwrap();
    let mut cfg = config_for(&pg, PoolMode::Transaction);
    cfg.proxy.shutdown_timeout = CfgDuration::secs(1);
    let mut p = Proc::start(cfg).await;
    let (a, a_conn) = connect_watched(&p.conninfo("postgres", "")).await;
    within(
        STEP,
        "a opens a transaction",
        a.batch_execute("begin; insert into stuck_t values (1)"),
    )
    .await
    .unwrap();

    p.signal("TERM").await;
    let t0 = Instant::now();
    let status = p.exit_within(Duration::from_secs(6)).await;
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{status}\n{}", p.log());
    assert!(
        took >= Duration::from_millis(900),
        "the open transaction had shutdown_timeout (1 s) to finish; exited after {took:?}"
    );
    assert!(
        p.log().contains("shutdown timeout reached"),
        "the forced close is logged:\n{}",
        p.log()
    );
    // The client's connection is gone and its transaction was never committed.
    within(Duration::from_secs(5), "a's connection ends", a_conn)
        .await
        .unwrap()
        .ok();
    assert!(a.is_closed());
    let rows = within(STEP, "count", async {
        // Rolled back when PostgreSQL sees the proxy's connection close; poll briefly.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let active = pg
                .psql(
                    "select count(*) from pg_stat_activity where state like 'idle in transaction%'",
                )
                .unwrap();
            if active == "0" || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        pg.psql_db("app", "select count(*) from stuck_t").unwrap()
    })
    .await;
    assert_eq!(rows, "0", "the uncommitted row is not on PostgreSQL");
}
