//! Session mode's server connection taken at login (so the client's key is its server's
//! process id) must not change who may log in: with every server connection held by other
//! sessions, a login still completes at once, and its first query waits for a connection as
//! it always did.

mod common;

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
