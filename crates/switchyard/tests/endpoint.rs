//! A cluster reached through one DNS name, as on a managed database (issue 11): a real name
//! server (dnsmasq) answers for the name with a one-second TTL; the primary and its standby
//! listen on the same port on two loopback addresses, and the standby has no name of its own.
//! When the primary crashes, the standby is promoted and the name moves to it, Switchyard learns
//! the new address from the name, judges it by its probes, and sends writes there; TLS is
//! checked against the name, not the address. The old address, back and writable on the older
//! timeline, gets no write, even when the name is pointed back at it.

mod common;

use common::*;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_config::{PoolMode, ServerTls};
use switchyard_localpg::{DnsServer, PgOptions, PgServer, TestCerts, dnsmasq_available};
use switchyard_topology::{ClusterMonitor, ClusterState, Health, TopologyView};

const NAME: &str = "db.switchyard.test";
const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const STANDBY_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Waits (at most `limit`) until the view satisfies `pred`; returns when it was seen.
async fn wait_view(
    monitor: impl Fn() -> Arc<ClusterMonitor>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&TopologyView) -> bool,
) -> Instant {
    let deadline = Instant::now() + limit;
    loop {
        let view = monitor().view();
        if pred(&view) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "not {what} after {limit:?}: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn primary_is(view: &TopologyView, addr: &str) -> bool {
    matches!(&view.state, ClusterState::Primary { addr: a, .. } if a == addr)
}

/// The address the session's server listens on, and that a write there works.
async fn write_lands_on(c: &tokio_postgres::Client) -> String {
    within(STEP, "a write", c.batch_execute("insert into t values (3)"))
        .await
        .expect("the write succeeds");
    first_column(c, "select host(inet_server_addr())").await
}

/// A primary on 127.0.0.2 and its standby on 127.0.0.3, on one port, behind [`NAME`] (pointing
/// at the primary), and Switchyard configured with the name alone; with `tls`, both servers'
/// certificates name only the endpoint, and Switchyard checks them (verify-full).
struct Setup {
    primary: Arc<PgServer>,
    standby: Arc<PgServer>,
    dns: DnsServer,
    running: switchyard::serve::Running,
    _certs: Arc<TestCerts>,
}

async fn setup(tls: bool) -> Setup {
    dnsmasq_available().expect("the DNS tests need dnsmasq");
    let port = switchyard_localpg::free_port();
    let certs = Arc::new(TestCerts::generate(&[NAME]).expect("certificates"));
    let opts = PgOptions {
        tls: tls.then(|| certs.clone()),
        ..PgOptions::default()
    };
    let primary = Arc::new(PgServer::start_at(PRIMARY_IP, port, opts).expect("primary"));
    primary
        .create_database("app", "postgres")
        .expect("app database");
    primary
        .psql_db("app", "create table t(a int)")
        .expect("table");
    let standby = Arc::new(primary.start_standby_at(STANDBY_IP, port).expect("standby"));
    let dns = DnsServer::start(&[(NAME, PRIMARY_IP)]).expect("dnsmasq");
    let mut config = config_for(&primary, PoolMode::Transaction);
    let cluster = config.clusters.get_mut("main").expect("cluster");
    cluster.members.clear();
    cluster.endpoint = Some(format!("{NAME}:{port}"));
    config.failover.dns_servers = vec![dns.addr()];
    if tls {
        // The certificates name the endpoint only: an address passes only as the name.
        config.server.tls = ServerTls::VerifyFull;
        config.server.tls_ca_file = certs.ca.display().to_string();
    }
    let running = within(STEP, "proxy start", switchyard::serve::start(config))
        .await
        .expect("proxy starts");
    let router = running.proxy.router.clone();
    let old = primary.addr();
    wait_view(
        || router.monitor("main").expect("monitor"),
        STEP,
        "the endpoint's primary found",
        |v| primary_is(v, &old),
    )
    .await;
    Setup {
        primary,
        standby,
        dns,
        running,
        _certs: certs,
    }
}

async fn client(running: &switchyard::serve::Running) -> tokio_postgres::Client {
    connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        running.addr.port()
    ))
    .await
    .expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_is_followed_to_the_promoted_standby_and_the_old_address_is_fenced() {
    let Setup {
        primary,
        standby,
        dns,
        running,
        ..
    } = setup(true).await;
    let router = running.proxy.router.clone();
    let monitor = || router.monitor("main").expect("monitor");
    let (old, new) = (primary.addr(), standby.addr());
    assert_eq!(
        router.members("main"),
        vec![old.clone()],
        "only the name's address"
    );
    let c = client(&running).await;
    assert_eq!(write_lands_on(&c).await, PRIMARY_IP.to_string());

    // The failover as a managed database does it: the primary dies, the standby is promoted,
    // then the name moves to it.
    primary.kill().expect("kill the primary");
    standby.promote().expect("promote the standby");
    let moved = Instant::now();
    dns.point(&[(NAME, STANDBY_IP)]).expect("move the name");
    let followed = wait_view(monitor, Duration::from_secs(20), "the new primary", |v| {
        primary_is(v, &new)
    })
    .await;
    let took = followed - moved;
    eprintln!("name moved → new primary seen: {took:?}");
    // One TTL (1 s, capped at dns_max_ttl_unhealthy), a probe, and slack for a loaded machine.
    assert!(
        took < Duration::from_secs(10),
        "followed the name in {took:?}"
    );
    assert_eq!(write_lands_on(&c).await, STANDBY_IP.to_string());
    let members = router.members("main");
    assert!(
        members.contains(&old) && members.contains(&new),
        "both addresses are members: {members:?}"
    );

    // The old primary comes back, writable on the old timeline, and the name even points at
    // it again: the evidence (timeline) wins over the name.
    primary.start_again().expect("restart the old primary");
    dns.point(&[(NAME, PRIMARY_IP)])
        .expect("point the name back");
    wait_view(
        monitor,
        Duration::from_secs(20),
        "the old primary seen up again",
        |v| {
            v.members.iter().any(|m| {
                m.addr == old
                    && m.health == Health::Up
                    && m.facts
                        .as_ref()
                        .is_some_and(|f| !f.in_recovery && f.timeline == 1)
            })
        },
    )
    .await;
    assert!(
        primary_is(&monitor().view(), &new),
        "{:#?}",
        monitor().view()
    );
    for _ in 0..5 {
        assert_eq!(write_lands_on(&c).await, STANDBY_IP.to_string());
    }
    let on_old = primary
        .psql_db("app", "select count(*) from t")
        .expect("count on the old primary");
    assert_eq!(
        on_old, "1",
        "the old primary got no write after the failover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_behind_the_name_is_answered_at_once_and_the_late_flip_followed() {
    /// How long after the fault the name moves (a slow provider).
    const FLIP_AFTER: Duration = Duration::from_secs(20);
    let Setup {
        primary,
        standby,
        dns,
        running,
        ..
    } = setup(false).await;
    primary.make_synchronous().expect("synchronous replication");
    let router = running.proxy.router.clone();
    let monitor = || router.monitor("main").expect("monitor");
    let c = Arc::new(client(&running).await);
    for _ in 0..100 {
        within(STEP, "a write", c.batch_execute("insert into t values (1)"))
            .await
            .expect("acknowledged write");
    }
    // A request in flight when the primary freezes.
    let busy = Arc::new(client(&running).await);
    let in_flight = {
        let busy = busy.clone();
        tokio::spawn(async move {
            let r = busy.simple_query("select pg_sleep(30)").await;
            (r.map(drop), Instant::now())
        })
    };
    let sleeping = "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)'";
    let deadline = Instant::now() + STEP;
    while primary.psql_db("app", sleeping).ok().as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the request never reached the primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fault = Instant::now();
    primary.freeze().expect("freeze the primary");
    let (answer, answered) = within(STEP, "the in-flight answer", in_flight)
        .await
        .expect("task");
    let e = answer.expect_err("the in-flight request fails");
    assert_eq!(sqlstate(&e), "08007", "{e:?}");
    let answered_after = answered - fault;
    eprintln!("freeze → in-flight answered: {answered_after:?}");
    assert!(
        answered_after < Duration::from_secs(4),
        "{answered_after:?}"
    );

    standby.promote().expect("promote the standby");
    // New work waits in the gate while the name still points at the frozen primary.
    let held = {
        let c = c.clone();
        tokio::spawn(async move {
            let r = c.batch_execute("insert into t values (2)").await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep_until((fault + FLIP_AFTER).into()).await;
    assert!(!held.is_finished(), "no write before the name moves");
    let flip = Instant::now();
    dns.point(&[(NAME, STANDBY_IP)]).expect("move the name");
    let (written, at) = within(STEP, "the held write", held).await.expect("task");
    written.expect("the held write runs on the promoted standby");
    let first_write = at - flip;
    eprintln!("name moved → first write: {first_write:?}");
    assert!(first_write < Duration::from_secs(3), "{first_write:?}");
    assert_eq!(write_lands_on(&c).await, STANDBY_IP.to_string());
    let kept = standby
        .psql_db("app", "select count(*) filter (where a = 1) from t")
        .expect("count");
    assert_eq!(kept, "100", "every acknowledged write survived");

    // The old primary thaws, writable on the old timeline: fenced.
    primary.thaw().expect("thaw");
    let old = primary.addr();
    wait_view(
        monitor,
        Duration::from_secs(20),
        "the old primary seen up again",
        |v| {
            v.members
                .iter()
                .any(|m| m.addr == old && m.health == Health::Up)
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(write_lands_on(&c).await, STANDBY_IP.to_string());
    }
    let on_old = primary
        .psql_db("app", "select count(*) from t")
        .expect("count on the old primary");
    assert_eq!(on_old, "100", "no write reached the old address");
}
