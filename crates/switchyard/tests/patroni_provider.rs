//! The Patroni provider (issue 11): a cluster configured only by its Patroni REST URLs. The
//! members come from Patroni's `/cluster` (the real Patroni + etcd the fixture runs); Switchyard
//! still decides the primary from its own probes, and follows Patroni's failover when the
//! leader's host crashes. Skipped, with a message, where Patroni or etcd is not installed.

mod common;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::Config;
use switchyard_localpg::{Etcd, PatroniCluster, PatroniOptions, patroni_available};
use switchyard_topology::ClusterState;

fn config(rest_urls: &[String]) -> Config {
    let urls: Vec<String> = rest_urls.iter().map(|u| format!("{u:?}")).collect();
    let toml = format!(
        r#"
        [proxy]
        listen = "127.0.0.1:0"
        [admin]
        listen = "127.0.0.1:0"
        incidents_file = ""
        [pool]
        mode = "transaction"
        [clusters.main]
        patroni = [{}]
        [[sites]]
        database = "*"
        cluster = "main"
        [[users]]
        name = "postgres"
        auth = "trust"
        "#,
        urls.join(", ")
    );
    Config::from_toml(&toml).expect("config")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_come_from_patroni_and_its_failover_is_followed() {
    if let Err(why) = patroni_available() {
        println!("skipped: {why}");
        return;
    }
    let (etcd, cluster) = tokio::task::spawn_blocking(|| {
        let etcd = Etcd::start().expect("etcd");
        let opts = PatroniOptions {
            ttl: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(2),
            ..PatroniOptions::default()
        };
        let cluster = PatroniCluster::start(&etcd, "provider", opts).expect("Patroni cluster");
        (etcd, cluster)
    })
    .await
    .expect("fixture");
    let urls: Vec<String> = cluster
        .members()
        .iter()
        .map(|m| format!("http://127.0.0.1:{}", m.rest_port()))
        .collect();
    let running = within(STEP, "proxy start", switchyard::serve::start(config(&urls)))
        .await
        .expect("proxy starts");
    let router = running.proxy.router.clone();
    let leader = cluster.leader_index().expect("a leader");
    let (old, new) = (
        cluster.members()[leader].addr(),
        cluster.members()[1 - leader].addr(),
    );
    let primary = |want: &str| {
        matches!(&router.monitor("main").expect("monitor").view().state,
            ClusterState::Primary { addr, .. } if addr == want)
    };
    let deadline = Instant::now() + STEP;
    while !(primary(&old) && router.members("main").len() == 2) {
        assert!(
            Instant::now() < deadline,
            "members {:?}, view {:#?}",
            router.members("main"),
            router.monitor("main").map(|m| m.view())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        running.addr.port()
    ))
    .await
    .expect("client");
    let port = |addr: &str| addr.rsplit_once(':').expect("host:port").1.to_owned();
    assert_eq!(
        first_column(&c, "select inet_server_port()").await,
        port(&old)
    );

    // The leader's host crashes; Patroni promotes the replica once the leader key expires.
    let member = &cluster.members()[leader];
    member.stop_agent().expect("stop the agent");
    member.kill_postgres().expect("kill PostgreSQL");
    let crashed = Instant::now();
    let deadline = crashed + Duration::from_secs(60);
    while !primary(&new) {
        assert!(
            Instant::now() < deadline,
            "{:#?}",
            router.monitor("main").map(|m| m.view())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "leader crash → new primary followed: {:?}",
        crashed.elapsed()
    );
    assert_eq!(
        first_column(&c, "select inet_server_port()").await,
        port(&new)
    );
    drop(etcd);
}
