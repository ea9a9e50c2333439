//! A `*` site serves any database name, so pools must not pile up per name (issue 16, item 4):
//! a name the server refuses leaves no pool behind, and a pool unused (no connection, no
//! request) for its `server_idle_timeout` is forgotten, its row gone from SHOW POOLS and
//! /metrics, until a client needs it again.

mod common;

use common::*;
use std::time::Duration;
use switchyard_config::{Config, Duration as CfgDuration, PoolMode};

fn pool_names(h: &Harness) -> Vec<String> {
    h.proxy
        .proxy
        .pools
        .all()
        .into_iter()
        .map(|(k, _)| k.database)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_names_the_server_refuses_leave_no_pool() {
    let h = Harness::start(PoolMode::Transaction).await;
    for i in 0..20 {
        let e = h
            .client_as("postgres", "", &format!("no_such_db_{i}"))
            .await
            .expect_err("the server refuses the database");
        assert_eq!(sqlstate(&e), "3D000", "{e:?}");
    }
    let names = pool_names(&h);
    assert!(
        names.iter().all(|n| !n.starts_with("no_such_db")),
        "pools left for refused names: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_pool_is_forgotten_after_server_idle_timeout() {
    let h = Harness::start_with(PoolMode::Transaction, |c: &mut Config| {
        c.pool.server_idle_timeout = CfgDuration::secs(1);
    })
    .await;
    let c = h.client().await;
    within(STEP, "select 1", c.simple_query("select 1"))
        .await
        .expect("served");
    assert!(pool_names(&h).contains(&"app".to_string()));
    // Its idle connection closes after a second, the empty pool a second later (the reaper
    // runs every second).
    within(Duration::from_secs(10), "the unused pool to go", async {
        while pool_names(&h).contains(&"app".to_string()) {
            tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
        }
    })
    .await;
    within(STEP, "select 1 again", c.simple_query("select 1"))
        .await
        .expect("the same client is served from a new pool");
    assert!(pool_names(&h).contains(&"app".to_string()));
}
