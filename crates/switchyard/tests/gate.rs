//! Logging in while a cluster has no primary: the login goes ahead at once (settings a client
//! asks for are applied by its first transaction), and that transaction waits in the gate.

mod common;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::{Duration as CfgDuration, PoolMode};
use switchyard_topology::ClusterState;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_during_a_failover_does_not_wait_for_the_primary() {
    let h = Harness::start_with(PoolMode::Transaction, |c| {
        c.failover.failover_timeout = CfgDuration::secs(3);
    })
    .await;
    // One login while the primary is up, so the servers' parameters are known.
    let first = h.client().await;
    first.simple_query("select 1").await.unwrap();
    h.pg.kill().unwrap();
    let monitor = h.proxy.proxy.router.monitor("main").unwrap();
    within(STEP, "no primary", async {
        let mut rx = monitor.subscribe();
        while rx.borrow_and_update().state != ClusterState::NoPrimary {
            rx.changed().await.unwrap();
        }
    })
    .await;
    let started = Instant::now();
    let info = format!(
        "{} application_name=during_failover",
        h.conninfo("postgres", "", "app")
    );
    let c = within(
        Duration::from_secs(5),
        "login without a primary",
        connect(&info),
    )
    .await
    .expect("login goes ahead");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "login took {:?}",
        started.elapsed()
    );
    let err = within(STEP, "query in the gate", c.simple_query("select 1"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "57P03", "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the query waited in the gate"
    );
}
