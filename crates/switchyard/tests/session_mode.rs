//! Session mode's server connection taken at login (so the client's key is its server's
//! process id) must not change who may log in or what a failover does: with every server
//! connection held by other sessions, a login still completes at once, and its first query
//! waits for a connection as it always did; a failover before the first query is invisible;
//! a paused database gives a login no connection.

mod common;

use common::cluster::{CLUSTER, Cluster, ClusterOptions, Fault};
use common::*;
use std::time::Duration;
use switchyard_config::PoolMode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_does_not_hold_up_a_session_mode_login() {
    let h = Harness::start_with(PoolMode::Session, |c| c.pool.size = 1).await;
    let first = h.client().await;
    let pid: i32 = within(
        STEP,
        "first query",
        first.query_one("select pg_backend_pid()", &[]),
    )
    .await
    .unwrap()
    .get(0);
    // The only server connection is the first session's; the second logs in anyway (well
    // within the login timeout, 15 s), with a setting to apply ...
    let info = format!(
        "{} application_name='second'",
        h.conninfo("postgres", "", "app")
    );
    let second = within(
        Duration::from_secs(5),
        "login with a full pool",
        connect(&info),
    )
    .await
    .expect("login");
    // ... and its first query runs, with that setting, once the first session ends.
    let query = tokio::spawn(async move {
        let sql = "select pg_backend_pid(), current_setting('application_name')";
        let row = second.query_one(sql, &[]).await;
        (second, row)
    });
    wait_for_servers_in_use(&h.proxy, "the first session's server", |n| n == 1).await;
    drop(first);
    let (_second, row) = within(STEP, "second session's query", query)
        .await
        .expect("task");
    let row = row.expect("second session's query");
    let second_pid: i32 = row.get(0);
    assert_eq!(row.get::<_, String>(1), "second");
    // The one connection went back to the pool at the first session's end (session reset)
    // and is the second's now.
    assert_eq!(second_pid, pid);
}

/// A session pinned at login that has sent nothing yet has no state to lose: a failover then
/// is invisible to it. Its first query runs on the promoted standby, with its startup
/// settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_before_the_first_query_is_invisible_to_a_session() {
    let c = Cluster::start(ClusterOptions {
        mode: PoolMode::Session,
        ..ClusterOptions::default()
    })
    .await;
    let client = within(
        STEP,
        "login",
        connect(&c.conninfo("application_name='pinned'")),
    )
    .await
    .expect("login");
    let _crashed = c.inject(Fault::Crash).await;
    c.promote_standby().await;
    let sql = "select current_setting('application_name'), pg_is_in_recovery()";
    let row = within(
        Duration::from_secs(20),
        "first query",
        client.query_one(sql, &[]),
    )
    .await
    .expect("the session goes on");
    assert_eq!(row.get::<_, String>(0), "pinned");
    assert!(!row.get::<_, bool>(1), "on the promoted standby");
}

/// While an operator has the database paused, a session-mode login takes no server
/// connection; its first query waits for RESUME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_database_gives_a_login_no_server_connection() {
    let h = Harness::start(PoolMode::Session).await;
    let paused = (CLUSTER.to_string(), "app".to_string());
    h.proxy.proxy.pauses.pause(Some(paused.clone()));
    let client = within(
        STEP,
        "login while paused",
        connect(&h.conninfo("postgres", "", "app")),
    )
    .await
    .expect("login");
    let held: usize = (h.proxy.proxy.pools.all().iter())
        .map(|(_, pool)| pool.stats().active)
        .sum();
    assert_eq!(held, 0, "no server connection taken");
    assert!(h.proxy.proxy.pauses.resume(Some(&paused)));
    let one: i32 = within(
        STEP,
        "query after RESUME",
        client.query_one("select 1", &[]),
    )
    .await
    .unwrap()
    .get(0);
    assert_eq!(one, 1);
}
