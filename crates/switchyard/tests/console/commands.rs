//! The operator commands that act on traffic: PAUSE/RESUME, FENCE/UNFENCE, RECONNECT.

use crate::common::*;
use crate::psql::{command, console, console_error, num};
use crate::{eventually, harness, wait_primary};
use std::time::{Duration, Instant};
use switchyard_config::Duration as CfgDuration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let h = harness(|c| c.failover.failover_timeout = CfgDuration::secs(30)).await;
    let port = h.port();
    wait_primary(&h, true).await;
    let inflight = h.client().await;
    within(STEP, "begin", inflight.simple_query("begin; select 1"))
        .await
        .unwrap();
    let held = h.client().await;
    command(port, "PAUSE app").await;

    // The transaction already running finishes.
    within(
        STEP,
        "in-flight work",
        inflight.simple_query("select 2; commit"),
    )
    .await
    .expect("a transaction begun before PAUSE finishes");
    // A new one waits, and shows as waiting.
    let mut waiting = tokio::spawn(async move {
        let r = held.simple_query("select 3").await;
        (held, r.map(|_| ()))
    });
    eventually(STEP, "the held client shows as waiting", || async {
        let clients = console(port, "SHOW CLIENTS").await;
        !clients
            .find(&[("state", "waiting"), ("database", "app")])
            .is_empty()
    })
    .await;
    let pools = console(port, "SHOW POOLS").await;
    let row = pools.one(
        "SHOW POOLS",
        &[("database", "app"), ("server", &h.pg.addr())],
    );
    assert_eq!(num(row, "cl_waiting"), 1, "{row:?}");
    assert!(!waiting.is_finished(), "still held");

    command(port, "RESUME app").await;
    let (held, r) = within(STEP, "the held transaction after RESUME", &mut waiting)
        .await
        .unwrap();
    r.expect("runs after RESUME");
    paused_past_failover_timeout(&h).await;
    within(STEP, "the held client again", held.simple_query("select 6"))
        .await
        .unwrap();

    let events = console(port, "SHOW EVENTS").await;
    let details: Vec<&str> = events.rows.iter().map(|r| r["detail"].as_str()).collect();
    for want in ["PAUSE app", "RESUME app", "PAUSE:", "RESUME:"] {
        let found = details.iter().any(|d| d.starts_with(want));
        assert!(found, "{want} in {details:#?}");
    }
}

/// PAUSE of everything past `failover_timeout`: 57P03, and the connection stays usable.
async fn paused_past_failover_timeout(h: &Harness) {
    let port = h.port();
    let mut config = h.proxy.proxy.live.load().config.clone();
    config.failover.failover_timeout = CfgDuration::millis(500);
    h.proxy.proxy.reload(config).expect("reload");
    let late = h.client().await;
    command(port, "PAUSE").await;
    let started = Instant::now();
    let e = within(
        STEP,
        "held until failover_timeout",
        late.simple_query("select 4"),
    )
    .await
    .expect_err("57P03 after failover_timeout");
    assert_eq!(sqlstate(&e), "57P03", "{e:?}");
    assert!(started.elapsed() >= Duration::from_millis(450), "{e:?}");
    assert!(format!("{e:?}").contains("paused by an operator"), "{e:?}");
    let err = console_error(port, "RESUME app").await;
    assert!(
        err.contains("55000: switchyard: everything is paused"),
        "{err}"
    );
    command(port, "RESUME").await;
    within(STEP, "after RESUME", late.simple_query("select 5"))
        .await
        .expect("usable after the error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fence_moves_traffic_off_the_primary_until_unfence() {
    let h = harness(|c| c.failover.failover_timeout = CfgDuration::secs(1)).await;
    let port = h.port();
    wait_primary(&h, true).await;
    let c = h.client().await;
    within(STEP, "before FENCE", c.simple_query("select 1"))
        .await
        .unwrap();

    let addr = h.pg.addr();
    command(port, &format!("FENCE {addr}")).await;
    wait_primary(&h, false).await;
    let clusters = console(port, "SHOW CLUSTERS").await;
    let m = clusters.one("SHOW CLUSTERS", &[("member", &addr)]);
    assert_eq!(m["fenced"], "1", "{m:?}");
    assert_eq!(m["primary"], "", "no primary while fenced: {m:?}");
    // A reload that restarts the cluster's monitor (a probe setting changed) keeps the fence.
    let before = h.proxy.proxy.router.monitor("main").expect("monitor");
    let mut config = h.proxy.proxy.live.load().config.clone();
    config.failover.probe_interval = CfgDuration::millis(400);
    h.proxy.proxy.reload(config).expect("reload");
    let monitor = h.proxy.proxy.router.monitor("main").expect("monitor");
    assert!(!std::sync::Arc::ptr_eq(&before, &monitor), "a new monitor");
    assert_eq!(
        monitor.fenced_members(),
        vec![addr.to_string()],
        "fenced after the reload"
    );
    let started = Instant::now();
    let e = within(STEP, "new work while fenced", c.simple_query("select 2"))
        .await
        .expect_err("no primary");
    assert_eq!(sqlstate(&e), "57P03", "{e:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "held in the gate first: {waited:?}"
    );

    command(port, &format!("unfence \"{addr}\"")).await;
    wait_primary(&h, true).await;
    within(STEP, "after UNFENCE", c.simple_query("select 3"))
        .await
        .expect("the same connection works again");
    let events = console(port, "SHOW EVENTS").await;
    let commands = events.find(&[("kind", "command"), ("cluster", "main")]);
    let details: Vec<&str> = commands.iter().map(|r| r["detail"].as_str()).collect();
    assert!(
        details[0].starts_with(&format!("FENCE {addr}")),
        "{details:#?}"
    );
    assert!(
        details[1].starts_with(&format!("UNFENCE {addr}")),
        "{details:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_server_connections() {
    let h = harness(|_| {}).await;
    let port = h.port();
    let busy = h.client().await;
    within(STEP, "begin", busy.simple_query("begin"))
        .await
        .unwrap();
    let busy_pid = backend_pid(&busy).await.to_string();
    let idle = h.client().await;
    let idle_pid = backend_pid(&idle).await;
    assert_eq!(
        backend_pid(&idle).await,
        idle_pid,
        "the idle connection is reused"
    );

    command(port, "RECONNECT app").await;
    let servers = console(port, "SHOW SERVERS").await;
    let gone = servers.find(&[("ptr", &idle_pid.to_string())]).is_empty();
    assert!(
        gone,
        "the idle connection closes at once: {:#?}",
        servers.rows
    );
    servers.one("the busy one stays", &[("ptr", &busy_pid)]);
    assert_ne!(backend_pid(&idle).await, idle_pid, "a new connection");
    let same = backend_pid(&busy).await.to_string();
    assert_eq!(same, busy_pid, "the transaction keeps its server");
    within(STEP, "commit", busy.simple_query("commit"))
        .await
        .unwrap();
    let servers = console(port, "SHOW SERVERS").await;
    let gone = servers.find(&[("ptr", &busy_pid)]).is_empty();
    assert!(
        gone,
        "the busy connection closes when released: {:#?}",
        servers.rows
    );
}
