//! The monitor against a real primary and streaming standby: it names the primary, notices a
//! crash and a freeze, follows a promotion, and fences the old primary when it comes back.

use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_localpg::PgServer;
use switchyard_server::{ConnectParams, SocketOptions};
use switchyard_topology::{
    ClusterMonitor, ClusterState, MonitorSettings, Thresholds, TopologyView,
};
use tokio_util::sync::CancellationToken;

fn params(pg: &PgServer) -> ConnectParams {
    ConnectParams {
        addr: pg.addr(),
        server_name: None,
        user: "postgres".into(),
        database: "postgres".into(),
        credential: Default::default(),
        connect_timeout: Duration::from_millis(500),
        socket: SocketOptions::default(),
        allowed_auth: switchyard_server::AllowedAuth::any(),
        tls: std::sync::Arc::new(switchyard_tls::ToServer::disabled()),
        probe_commits: false,
        probe_writes: false,
    }
}

fn settings() -> MonitorSettings {
    MonitorSettings {
        probe_interval: Duration::from_millis(200),
        fast_interval: Duration::from_millis(100),
        probe_timeout: Duration::from_millis(500),
        thresholds: Thresholds {
            down_after: 2,
            up_after: 2,
        },
    }
}

/// Waits (bounded) until the view satisfies `pred`.
async fn wait_for(
    m: &ClusterMonitor,
    limit: Duration,
    what: &str,
    pred: impl Fn(&TopologyView) -> bool,
) -> Arc<TopologyView> {
    let mut rx = m.subscribe();
    let result = tokio::time::timeout(limit, async {
        loop {
            let v = rx.borrow_and_update().clone();
            if pred(&v) {
                return v;
            }
            if rx.changed().await.is_err() {
                panic!("monitor stopped");
            }
        }
    })
    .await;
    result.unwrap_or_else(|_| {
        panic!(
            "timed out after {limit:?} waiting for {what}; last view: {:?}",
            m.view()
        )
    })
}

fn primary_is(v: &TopologyView, addr: &str) -> bool {
    matches!(&v.state, ClusterState::Primary { addr: a, .. } if a == addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_crash_and_promotion_and_fences_the_old_primary() {
    let primary = PgServer::start().unwrap();
    let standby = primary.start_standby().unwrap();
    let stop = CancellationToken::new();
    let m = ClusterMonitor::start(
        "main",
        vec![params(&primary), params(&standby)],
        settings(),
        stop.clone(),
    );
    let v = wait_for(&m, Duration::from_secs(10), "the primary", |v| {
        primary_is(v, &primary.addr())
    })
    .await;
    let gen0 = v.generation;

    // Bounds count from the fault's start: it takes effect before the call returns.
    let killed = Instant::now();
    primary.kill().unwrap();
    let v = wait_for(&m, Duration::from_secs(10), "no primary", |v| {
        v.state == ClusterState::NoPrimary
    })
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "crash noticed after {:?}",
        killed.elapsed()
    );
    assert!(v.generation > gen0);

    // The promotion takes effect between the request and promote's return (which can take
    // seconds under load): the bound on following it counts from the return, the latest.
    let requested = Instant::now();
    standby.promote().unwrap();
    let returned = Instant::now();
    let v = wait_for(&m, Duration::from_secs(10), "the promoted standby", |v| {
        primary_is(v, &standby.addr())
    })
    .await;
    assert!(
        returned.elapsed() < Duration::from_secs(2),
        "promotion followed {:?} after promote returned (which took {:?})",
        returned.elapsed(),
        returned - requested
    );
    let gen_new = v.generation;

    // The old primary comes back writable on the old timeline: it must not be chosen.
    primary.start_again().unwrap();
    wait_for(
        &m,
        Duration::from_secs(10),
        "old primary probed again",
        |v| {
            v.members[0].facts.as_ref().is_some_and(|f| !f.in_recovery)
                && v.members[0].health == switchyard_topology::Health::Up
        },
    )
    .await;
    let v = m.view();
    assert!(
        primary_is(&v, &standby.addr()),
        "old primary fenced by timeline: {v:?}"
    );
    assert_eq!(v.generation, gen_new);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_is_noticed() {
    let primary = PgServer::start().unwrap();
    let stop = CancellationToken::new();
    let m = ClusterMonitor::start("main", vec![params(&primary)], settings(), stop.clone());
    wait_for(&m, Duration::from_secs(10), "the primary", |v| {
        primary_is(v, &primary.addr())
    })
    .await;
    let frozen = Instant::now();
    primary.freeze().unwrap();
    wait_for(&m, Duration::from_secs(10), "no primary", |v| {
        v.state == ClusterState::NoPrimary
    })
    .await;
    assert!(
        frozen.elapsed() < Duration::from_secs(3),
        "freeze noticed after {:?}",
        frozen.elapsed()
    );
    primary.thaw().unwrap();
    wait_for(&m, Duration::from_secs(10), "primary back", |v| {
        primary_is(v, &primary.addr())
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_fence_moves_traffic_off() {
    let primary = PgServer::start().unwrap();
    let stop = CancellationToken::new();
    let m = ClusterMonitor::start("main", vec![params(&primary)], settings(), stop.clone());
    wait_for(&m, Duration::from_secs(10), "the primary", |v| {
        primary_is(v, &primary.addr())
    })
    .await;
    assert!(m.set_fenced(&primary.addr(), true));
    wait_for(&m, Duration::from_secs(5), "fenced", |v| {
        v.state == ClusterState::NoPrimary
    })
    .await;
    m.set_fenced(&primary.addr(), false);
    wait_for(&m, Duration::from_secs(5), "unfenced", |v| {
        primary_is(v, &primary.addr())
    })
    .await;
    stop.cancel();
}
