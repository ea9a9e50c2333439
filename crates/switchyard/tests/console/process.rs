//! The console commands that act on the process, against the `switchyard serve` binary on a
//! config file: RELOAD (a changed file applied, a bad one refused) and SHUTDOWN (the drain).

use crate::common::served::Served as Proc;
use crate::common::*;
use crate::psql::{Shown, command, console, console_error};
use std::time::Duration;
use switchyard_config::{Duration as CfgDuration, PoolMode};

impl Proc {
    fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }
}

/// Polls until a new TCP connection to `port` is refused, at most `limit`.
async fn wait_refusing(port: u16, limit: Duration) {
    within(limit, "the listener to close", async {
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_through_the_console_applies_the_file_or_refuses_it() {
    let pg = start_pg();
    let mut cfg = config_for(&pg, PoolMode::Transaction);
    cfg.admin.users = vec!["postgres".into()];
    let p = Proc::start(cfg.clone()).await;
    let size = |shown: Shown| shown.one("SHOW CONFIG", &[("key", "pool.size")])["value"].clone();
    assert_eq!(size(console(p.port, "SHOW CONFIG").await), "4");

    cfg.pool.size = 7;
    cfg.proxy.listen = format!("127.0.0.1:{}", p.port);
    p.rewrite(&toml::to_string(&cfg).expect("config as TOML"), true);
    assert_eq!(
        size(console(p.port, "SHOW CONFIG").await),
        "4",
        "not before RELOAD"
    );
    command(p.port, "RELOAD").await;
    assert_eq!(
        size(console(p.port, "SHOW CONFIG").await),
        "7",
        "{}",
        p.log()
    );

    p.rewrite("[pool]\nsize = \"many\"\n", true);
    let err = console_error(p.port, "RELOAD").await;
    assert!(
        err.contains("F0000: switchyard: config reload refused"),
        "{err}"
    );
    assert_eq!(
        size(console(p.port, "SHOW CONFIG").await),
        "7",
        "the running config stays"
    );
    let events = console(p.port, "SHOW EVENTS").await;
    events.one(
        "RELOAD event",
        &[("detail", "RELOAD: config reloaded (by postgres)")],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_through_the_console_drains_then_exits() {
    let pg = start_pg();
    pg.psql_db("app", "create table console_drain(a int)")
        .unwrap();
    let mut cfg = config_for(&pg, PoolMode::Transaction);
    cfg.admin.users = vec!["postgres".into()];
    cfg.proxy.shutdown_timeout = CfgDuration::secs(30);
    let mut p = Proc::start(cfg).await;
    let (a, a_conn) = within(
        STEP,
        "connect a",
        tokio_postgres::connect(&p.conninfo("app"), tokio_postgres::NoTls),
    )
    .await
    .expect("connect a");
    let a_conn = tokio::spawn(a_conn);
    within(
        STEP,
        "begin",
        a.batch_execute("begin; insert into console_drain values (1)"),
    )
    .await
    .unwrap();

    command(p.port, "SHUTDOWN").await;
    wait_refusing(p.port, Duration::from_secs(5)).await;
    within(STEP, "a commits while draining", a.batch_execute("commit"))
        .await
        .expect("the open transaction finishes");
    assert_eq!(
        pg.psql_db("app", "select count(*) from console_drain")
            .unwrap(),
        "1"
    );
    let end = within(STEP, "a is closed after its transaction", a_conn)
        .await
        .unwrap();
    let e = end.expect_err("a FATAL ends a's connection");
    assert_eq!(sqlstate(&e), "57P01", "{e:?}");
    let status = p.exit_within(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{status}\n{}", p.log());
    assert!(
        p.log().contains("SHUTDOWN (admin console): draining"),
        "{}",
        p.log()
    );
}
