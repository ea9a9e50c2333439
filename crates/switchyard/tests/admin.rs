//! The admin HTTP surfaces against a real proxy and real PostgreSQL: `/metrics` read by the
//! Prometheus client's own text parser (Python, from PyPI), health and readiness, the JSON API,
//! the bearer token, and a real failover turning into an incident that moves through its four
//! stages, is shown on the status page, and is still there after a restart.

mod common;
#[path = "clients/json.rs"]
#[allow(dead_code)]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::cluster::{Cluster, ClusterOptions, Fault};
use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use switchyard_config::{Duration as CfgDuration, PoolMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.0 GET: status code and body.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    within(STEP, "an admin HTTP request", async {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let req = format!("GET {path} HTTP/1.0\r\nHost: switchyard\r\n{auth}\r\n");
        s.write_all(req.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {head:?}"));
        (code, body.to_owned())
    })
    .await
}

fn admin_addr(proxy: &switchyard::serve::Running) -> SocketAddr {
    proxy.admin.http.expect("the admin HTTP listener runs")
}

/// `/metrics` parsed by the Prometheus client's parser: `(types, samples)`.
async fn scrape(addr: SocketAddr) -> Value {
    let (code, text) = get(addr, "/metrics", None).await;
    assert_eq!(code, 200, "{text}");
    let mut cmd = programs::clean_command(programs::python());
    cmd.arg(programs::clients_dir().join("parse_metrics.py"));
    let ran = programs::run(cmd, Some(text.as_bytes()), STEP, "parse_metrics.py")
        .await
        .expect_success("the Prometheus parser reads /metrics");
    serde_json::from_str(ran.stdout.trim()).expect("parser output")
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(m: &Value, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    m["samples"].as_array()?.iter().find_map(|s| {
        let ok = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
        ok.then(|| s[2].as_f64()).flatten()
    })
}

#[tokio::test]
async fn metrics_health_and_api_describe_a_healthy_proxy() {
    let h = Harness::start(PoolMode::Transaction).await;
    let c = h.client().await;
    for _ in 0..5 {
        within(STEP, "select 1", c.simple_query("select 1"))
            .await
            .unwrap();
    }
    let addr = admin_addr(&h.proxy);
    assert_eq!(get(addr, "/livez", None).await.0, 200);
    let (code, body) = get(addr, "/readyz", None).await;
    assert_eq!(code, 200, "{body}");

    let m = scrape(addr).await;
    assert_eq!(m["types"]["switchyard_transactions"], "counter", "{m}");
    assert_eq!(
        m["types"]["switchyard_transaction_duration_seconds"],
        "histogram"
    );
    let main = [("cluster", "main")];
    let tx = sample(&m, "switchyard_transactions_total", &main).expect("transactions");
    assert!(tx >= 5.0, "{tx} transactions");
    let count = sample(&m, "switchyard_transaction_duration_seconds_count", &main).unwrap();
    assert_eq!(count, tx, "one latency observation per transaction");
    assert_eq!(m["types"]["switchyard_query_duration_seconds"], "histogram");
    let answered = sample(&m, "switchyard_queries_total", &main).unwrap();
    let timed = sample(&m, "switchyard_query_duration_seconds_count", &main).unwrap();
    assert!(
        timed >= 5.0 && timed <= answered,
        "{timed} timed requests of {answered}"
    );
    assert_eq!(
        sample(&m, "switchyard_cluster_has_primary", &main),
        Some(1.0)
    );
    let member = h.pg.addr();
    let primary = [("member", member.as_str()), ("role", "primary")];
    assert_eq!(sample(&m, "switchyard_member_role", &primary), Some(1.0));
    let ok = [("member", member.as_str()), ("result", "ok")];
    assert!(sample(&m, "switchyard_probes_total", &ok).unwrap() >= 1.0);
    assert_eq!(sample(&m, "switchyard_clients_connected", &[]), Some(1.0));
    let held = [("cluster", "main"), ("outcome", "held")];
    assert_eq!(
        sample(&m, "switchyard_failover_requests_total", &held),
        Some(0.0)
    );

    let (code, body) = get(addr, "/api/clusters", None).await;
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["clusters"][0]["state"], "primary", "{api:#}");
    assert_eq!(api["clusters"][0]["members"][0]["role"], "primary");
    assert_eq!(api["sites"][0]["status"], "operational");
    let (_, events) = get(addr, "/api/events", None).await;
    assert!(events.contains("\"events\""), "{events}");
    let (code, page) = get(addr, "/", None).await;
    assert_eq!(code, 200);
    assert!(page.contains("All systems operational"), "{page}");
}

#[tokio::test]
async fn a_token_guards_everything_but_health() {
    let h = Harness::start_with(PoolMode::Transaction, |c| {
        c.admin.token = Some("s3cret".into());
    })
    .await;
    let c = h.client().await;
    within(STEP, "select 1", c.simple_query("select 1"))
        .await
        .unwrap();
    let addr = admin_addr(&h.proxy);
    assert_eq!(get(addr, "/metrics", None).await.0, 401);
    assert_eq!(get(addr, "/api/incidents", Some("wrong")).await.0, 401);
    assert_eq!(get(addr, "/metrics", Some("s3cret")).await.0, 200);
    assert_eq!(get(addr, "/", Some("s3cret")).await.0, 200);
    assert_eq!(get(addr, "/livez", None).await.0, 200);
    assert_eq!(get(addr, "/readyz", None).await.0, 200);
}

/// Polls `/api/incidents` until the newest incident is in `stage`.
async fn wait_for_stage(addr: SocketAddr, stage: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let (_, body) = get(addr, "/api/incidents", None).await;
        let v: Value = serde_json::from_str(&body).unwrap();
        let newest = v["incidents"][0].clone();
        if newest["stage"] == stage {
            return newest;
        }
        assert!(
            Instant::now() < deadline,
            "no incident in {stage} within {limit:?}: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_becomes_an_incident_that_resolves_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("incidents.json");
    let file_str = file.display().to_string();
    let c = Cluster::start_with(ClusterOptions::default(), |cfg| {
        cfg.admin.resolve_after = CfgDuration::secs(2);
        cfg.admin.incidents_file = file_str.clone();
    })
    .await;
    let addr = admin_addr(&c.proxy);
    let client = c.client().await;
    within(STEP, "select 1", client.simple_query("select 1"))
        .await
        .unwrap();

    let _gone = c.inject(Fault::Crash).await;
    c.wait_for_no_primary(STEP).await;
    let opened = wait_for_stage(addr, "Investigating", STEP).await;
    assert_eq!(opened["old_primary"], c.primary.addr(), "{opened:#}");
    assert!(opened["detection_ms"].as_u64().is_some(), "{opened:#}");
    let (_, page) = get(addr, "/", None).await;
    assert!(
        page.contains("Investigating"),
        "status page during the incident"
    );
    let (code, _) = get(addr, "/readyz", None).await;
    assert_eq!(code, 503, "not ready without a primary");

    // A statement sent now waits in the gate: the incident's scope counts it.
    let held = tokio::spawn(async move {
        let r = client.simple_query("select 1").await.map(drop);
        (r, client)
    });
    c.promote_standby().await;
    let (r, client) = within(STEP, "the held statement", held).await.unwrap();
    r.expect("the held statement runs on the new primary");
    within(STEP, "select 2", client.simple_query("select 2"))
        .await
        .unwrap();

    let resolved = wait_for_stage(addr, "Resolved", Duration::from_secs(20)).await;
    let stages: Vec<&str> = resolved["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["stage"].as_str().unwrap())
        .collect();
    assert_eq!(
        stages,
        ["Investigating", "Identified", "Monitoring", "Resolved"],
        "{resolved:#}"
    );
    assert_eq!(resolved["new_primary"], c.standby.addr());
    let monitoring = &resolved["timeline"][2]["note"];
    assert_eq!(
        monitoring, "traffic flows on the new primary",
        "{resolved:#}"
    );
    assert!(
        resolved["scope"]["held"].as_u64().unwrap() >= 1,
        "{resolved:#}"
    );
    assert_eq!(resolved["scope"]["sites"][0], "app", "{resolved:#}");
    let m = scrape(addr).await;
    assert_eq!(
        sample(&m, "switchyard_failovers_total", &[("cluster", "main")]),
        Some(1.0)
    );
    let (_, page) = get(addr, "/", None).await;
    assert!(
        page.contains("Resolved") && page.contains("All systems operational"),
        "{page}"
    );

    // Kept across a restart: a new proxy with the same file shows the incident.
    let kept = std::fs::read_to_string(&file).expect("the incidents file exists");
    assert!(kept.contains("Resolved"), "{kept}");
    let mut config = config_for(&c.standby, PoolMode::Transaction);
    config.admin.incidents_file = file_str;
    let again = within(STEP, "second proxy", switchyard::serve::start(config))
        .await
        .expect("second proxy starts");
    let (_, body) = get(admin_addr(&again), "/api/incidents", None).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["incidents"][0]["id"], resolved["id"], "{v:#}");
    assert_eq!(v["incidents"][0]["stage"], "Resolved");
}

/// A client that starts a request and never finishes its headers is cut off after the admin
/// listener's header deadline (5 s), and the listener keeps serving others meanwhile.
#[tokio::test]
async fn a_silent_http_client_is_cut_off() {
    let h = Harness::start(PoolMode::Transaction).await;
    let addr = admin_addr(&h.proxy);
    let mut slow = within(STEP, "connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    within(
        STEP,
        "half a request",
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
    )
    .await
    .unwrap();
    let started = Instant::now();
    assert_eq!(
        get(addr, "/livez", None).await.0,
        200,
        "others are served meanwhile"
    );
    let mut rest = Vec::new();
    within(
        Duration::from_secs(10),
        "the server to close the slow connection",
        slow.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(4),
        "closed after {took:?}, before the deadline"
    );
}

/// The HTTP listener keeps at most `MAX_CONNECTIONS` open: one more is closed at once, and a
/// freed place serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_bounds_its_connections() {
    let h = Harness::start(PoolMode::Transaction).await;
    let addr = admin_addr(&h.proxy);
    let max = switchyard_admin::http::MAX_CONNECTIONS;
    let mut held = Vec::new();
    for _ in 0..max {
        // Connected and silent: each holds a place until its header timeout.
        let s = within(STEP, "connect", tokio::net::TcpStream::connect(addr))
            .await
            .expect("connect");
        held.push(s);
    }
    // The listener has taken them all once a request on a fresh connection is closed unread.
    let mut extra = within(STEP, "connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    let mut buf = [0u8; 64];
    let n = within(
        STEP,
        "the extra connection to be closed",
        extra.read(&mut buf),
    )
    .await
    .unwrap_or(0);
    assert_eq!(
        n, 0,
        "one connection over the limit is closed without an answer"
    );
    held.clear();
    within(STEP, "a place to be free again", async {
        loop {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let _ = s.write_all(b"GET /livez HTTP/1.0\r\n\r\n").await;
            let mut raw = Vec::new();
            let _ = s.read_to_end(&mut raw).await;
            if raw.starts_with(b"HTTP/1.0 200") || raw.starts_with(b"HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
        }
    })
    .await;
}
