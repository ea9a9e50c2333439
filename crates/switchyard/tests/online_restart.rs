//! Online restart (`[proxy] handover_socket`): a second `switchyard serve` on the same config
//! takes over the running one's listening sockets and idle clients; the old one drains and
//! exits. pgbench running through it (`-M prepared`: named statements move too) and pgbench
//! connecting per transaction (`-C`) see no failed transaction and no error.

mod common;
#[path = "clients/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::served::Served;
use common::*;
use programs::{pg_program, run};
use std::time::{Duration, Instant};
use switchyard_config::{Config, PoolMode};
use switchyard_localpg::PgServer;
use tokio_postgres::NoTls;

/// One pgbench run, in the background.
const PGBENCH: Duration = Duration::from_secs(90);

fn pgbench(port: u16, extra: &[&str]) -> tokio::process::Command {
    let mut cmd = pg_program("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(extra)
        .arg("app");
    cmd
}

/// Waits until pgbench (`run`) has written `rows` more history rows than `from`; fails with
/// its output if it ended first.
async fn wait_history(
    pg: &PgServer,
    run: &tokio::task::JoinHandle<programs::Ran>,
    from: i64,
    rows: i64,
) -> i64 {
    let deadline = Instant::now() + STEP;
    loop {
        let n: i64 = pg
            .psql_db("app", "SELECT count(*) FROM pgbench_history")
            .expect("count")
            .parse()
            .expect("a number");
        if n >= from + rows {
            return n;
        }
        assert!(
            !run.is_finished(),
            "pgbench ended at {n} history rows, before {}",
            from + rows
        );
        assert!(Instant::now() < deadline, "pgbench is not under way");
        // A poll interval, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Transaction pooling in front of `pg` with a handover socket in a temporary directory (kept
/// while the returned guard lives).
fn handover_config(pg: &PgServer) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = config_for(pg, PoolMode::Transaction);
    cfg.proxy.handover_socket = dir.path().join("handover.sock").display().to_string();
    (cfg, dir)
}

/// Starts a new process on `cfg` at `port`, which takes over from `old`; the old one exits.
async fn restart(old: &mut Served, cfg: &Config, port: u16) -> Served {
    let new = Served::start_on(cfg.clone(), port).await;
    let status = old.exit_within(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "the old process exited with {status}:\n{}",
        old.log()
    );
    assert!(old.log().contains("sessions handed over"), "{}", old.log());
    new
}

fn assert_clean(ran: &programs::Ran, what: &str) {
    let out = &ran.stdout;
    let failed = out
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions:"))
        .unwrap_or_else(|| panic!("{what}: no failed count:\n{out}\n{}", ran.stderr));
    assert!(
        failed.trim().starts_with("0 "),
        "{what}: failed {failed}\n{}",
        ran.stderr
    );
    assert!(
        !ran.stderr.contains("error") && !ran.stderr.contains("aborted"),
        "{what}: {}",
        ran.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_goes_through_two_online_restarts_without_a_failed_transaction() {
    let pg = start_pg();
    let init = run(
        pgbench(pg.port(), &["-i", "-q"]),
        None,
        PGBENCH,
        "pgbench -i",
    )
    .await;
    init.expect_success("pgbench -i");
    let (cfg, _dir) = handover_config(&pg);
    let port = switchyard_localpg::free_port();
    let mut first = Served::start_on(cfg.clone(), port).await;

    // A steady run with named statements: its 4 connections move at the restart.
    let steady = tokio::spawn(run(
        pgbench(
            port,
            &["-n", "-M", "prepared", "-c", "4", "-j", "4", "-T", "12"],
        ),
        None,
        PGBENCH,
        "steady pgbench",
    ));
    let seen = wait_history(&pg, &steady, 0, 200).await;
    let mut second = restart(&mut first, &cfg, port).await;
    wait_history(&pg, &steady, seen, 200).await;
    let ran = within(PGBENCH, "steady pgbench", steady).await.unwrap();
    assert_clean(&ran.expect_success("steady pgbench"), "steady pgbench");
    // All four of its connections moved (none was closed: pgbench would have aborted).
    assert!(
        first.log().contains("sessions=4 failed=0"),
        "{}",
        first.log()
    );
    assert!(
        second
            .log()
            .contains("taking over from the running Switchyard")
    );
    assert_eq!(
        second.log().matches("session taken over").count(),
        4,
        "{}",
        second.log()
    );

    // A connection per transaction: the listener moves with no refused connection.
    let churn = tokio::spawn(run(
        pgbench(port, &["-n", "-C", "-c", "4", "-j", "2", "-T", "12"]),
        None,
        PGBENCH,
        "pgbench -C",
    ));
    // (-n: pgbench leaves the history table alone, so its count only grows.)
    let seen = wait_history(&pg, &churn, 0, 0).await;
    let seen = wait_history(&pg, &churn, seen, 50).await;
    let third = restart(&mut second, &cfg, port).await;
    wait_history(&pg, &churn, seen, 50).await;
    let ran = within(PGBENCH, "pgbench -C", churn).await.unwrap();
    assert_clean(&ran.expect_success("pgbench -C"), "pgbench -C");
    drop(third);
}

/// A client whose request is running when the new process takes over stays in the old one
/// until it is answered. Its driver sends a cancel request to the address it knows, where the
/// new process now accepts: the new one passes the key it does not know to the old one, which
/// cancels the request (57014). The client then moves like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_a_client_still_in_the_old_process() {
    let pg = start_pg();
    let (cfg, _dir) = handover_config(&pg);
    let port = switchyard_localpg::free_port();
    let mut first = Served::start_on(cfg.clone(), port).await;
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
    let client = connect(&conninfo).await.expect("connect");
    let token = client.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(60)").await;
        (client, r)
    });
    let deadline = Instant::now() + STEP;
    while pg
        .psql_db(
            "app",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)'",
        )
        .expect("count")
        != "1"
    {
        assert!(Instant::now() < deadline, "the request never ran");
        // A poll interval, not a synchronisation.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let second = Served::start_on(cfg.clone(), port).await;
    first
        .wait_log("a new process took over the listeners", 1, STEP)
        .await;
    within(STEP, "the cancel request", token.cancel_query(NoTls))
        .await
        .expect("cancel request sent");
    let (client, answer) = within(STEP, "the cancelled request", sleeping)
        .await
        .expect("task");
    let e = answer.expect_err("the request was cancelled");
    assert_eq!(e.code().map(|c| c.code()), Some("57014"), "{e:?}");
    let rows = within(STEP, "after", client.simple_query("SELECT 1"))
        .await
        .expect("the client goes on");
    let one = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(one.as_deref(), Some("1"));
    let status = first.exit_within(Duration::from_secs(30)).await;
    assert!(status.success(), "{}", first.log());
    assert!(
        first.log().contains("sessions=1 failed=0"),
        "{}",
        first.log()
    );
    drop(second);
}

/// `switchyard_clients_parked` from `/metrics` at `admin`.
async fn parked_now(admin: u16) -> f64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = within(
        STEP,
        "admin connect",
        tokio::net::TcpStream::connect(("127.0.0.1", admin)),
    )
    .await
    .expect("connect to the admin listener");
    let req = b"GET /metrics HTTP/1.0\r\nHost: switchyard\r\n\r\n";
    within(STEP, "send", s.write_all(req)).await.expect("send");
    let mut raw = Vec::new();
    within(STEP, "read", s.read_to_end(&mut raw))
        .await
        .expect("read");
    String::from_utf8_lossy(&raw)
        .lines()
        .find_map(|l| l.strip_prefix("switchyard_clients_parked "))
        .and_then(|v| v.trim().parse().ok())
        .expect("switchyard_clients_parked in /metrics")
}

/// Clients parked while idle are resumed at the handover and move to the new process with
/// their prepared statements, like any idle client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_clients_move_with_an_online_restart() {
    let pg = start_pg();
    let (mut cfg, _dir) = handover_config(&pg);
    cfg.proxy.park_idle_after = switchyard_config::Duration::millis(100);
    let admin = switchyard_localpg::free_port();
    let mut first_cfg = cfg.clone();
    first_cfg.admin.listen = format!("127.0.0.1:{admin}");
    let port = switchyard_localpg::free_port();
    let mut first = Served::start_on(first_cfg, port).await;
    let info = format!("host=127.0.0.1 port={port} user=postgres dbname=app");
    let mut clients = Vec::new();
    for i in 0..5i32 {
        let c = connect(&info).await.expect("connect");
        let st = within(STEP, "prepare", c.prepare("select $1::int * 2"))
            .await
            .expect("prepare");
        let row = within(STEP, "query", c.query_one(&st, &[&i]))
            .await
            .expect("query");
        assert_eq!(row.get::<_, i32>(0), i * 2);
        clients.push((c, st));
    }
    let deadline = Instant::now() + STEP;
    while parked_now(admin).await < 5.0 {
        assert!(
            Instant::now() < deadline,
            "the idle clients were not parked"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = restart(&mut first, &cfg, port).await;
    assert_eq!(
        second.log().matches("session taken over").count(),
        5,
        "{}",
        second.log()
    );
    for (i, (c, st)) in clients.iter().enumerate() {
        let i = i as i32;
        let row = within(STEP, "query after the restart", c.query_one(st, &[&i]))
            .await
            .unwrap_or_else(|e| panic!("client {i}: {e:?}\n{}", second.log()));
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }
}
