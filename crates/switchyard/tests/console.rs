//! The admin console through real psql (PostgreSQL 15): every SHOW with PgBouncer's column
//! names and sensible rows, every command (PAUSE/RESUME, RECONNECT, FENCE/UNFENCE; RELOAD and
//! SHUTDOWN through the binary), refusal of non-admin users, and errors that leave the
//! connection usable.

mod common;
#[path = "clients/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;
#[path = "console/psql.rs"]
#[allow(dead_code)]
mod psql;

#[path = "console/commands.rs"]
mod commands;
#[path = "console/process.rs"]
mod process;
#[path = "console/shows.rs"]
mod shows;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::{Config, PoolMode};
use switchyard_topology::ClusterState;

/// A proxy whose console admits `postgres`.
async fn harness(tweak: impl FnOnce(&mut Config)) -> Harness {
    Harness::start_with(PoolMode::Transaction, |c| {
        c.admin.users = vec!["postgres".into()];
        tweak(c);
    })
    .await
}

/// Polls `check` (every 50 ms) until it holds, at most `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the `main` cluster has (or has not) a primary.
async fn wait_primary(h: &Harness, want: bool) {
    let monitor = h.proxy.proxy.router.monitor("main").expect("cluster main");
    let mut views = monitor.subscribe();
    let has = |s: &ClusterState| matches!(s, ClusterState::Primary { .. });
    within(STEP, "the cluster's primary to change", async {
        while has(&views.borrow_and_update().state) != want {
            views.changed().await.expect("monitor runs");
        }
    })
    .await;
}
