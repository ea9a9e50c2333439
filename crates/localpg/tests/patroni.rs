//! Integration tests of the Patroni + etcd fixture: a real cluster manager must notice that the
//! leader's host is gone (agent stopped, PostgreSQL crashed or frozen) and promote the replica by
//! itself, keeping the acknowledged commits (synchronous mode). Skipped, with a message, where
//! Patroni or etcd is not installed.

use std::time::{Duration, Instant};

use switchyard_localpg::{
    Etcd, FixtureError, PatroniCluster, PatroniMember, PatroniOptions, patroni_available,
};

type Result<T = ()> = std::result::Result<T, FixtureError>;

/// Time allowed beyond `ttl` for the replica to notice the expired lock, check the old leader's
/// REST API (which times out when its agent is stopped) and promote.
const FAILOVER_SLACK: Duration = Duration::from_secs(15);

/// How the leader fails.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Agent stopped, PostgreSQL killed (`SIGKILL`): the host crashed.
    HostCrash,
    /// Agent stopped, PostgreSQL stopped (`SIGSTOP`): the host hangs, its TCP still answers.
    HostFreeze,
    /// Only PostgreSQL stopped; the agent runs on (and blocks on its queries).
    PostgresFreeze,
}

/// `true` when the stack can run; otherwise prints why the test is skipped.
fn available() -> bool {
    match patroni_available() {
        Ok(()) => true,
        Err(reason) => {
            println!("skipped: {reason}");
            false
        }
    }
}

/// Starts a cluster, writes a row, fails the leader, and checks that Patroni promotes the other
/// member within `ttl` plus slack, with the row and room for more writes.
fn leader_failure_is_survived(fault: Fault, scope: &str) -> Result {
    if !available() {
        return Ok(());
    }
    let started = Instant::now();
    let etcd = Etcd::start()?;
    let opts = PatroniOptions::default();
    let ttl = opts.ttl;
    let cluster = PatroniCluster::start(&etcd, scope, opts)?;
    println!("measured: etcd + cluster start {:?}", started.elapsed());

    let old = cluster.leader_index().expect("a leader right after start");
    assert_eq!(old, 0, "member 0 bootstraps and leads");
    let leader = &cluster.members()[old];
    leader.psql("CREATE TABLE t (id int PRIMARY KEY, note text)")?;
    // Synchronous mode: acknowledged means on the replica too.
    leader.psql("INSERT INTO t VALUES (1, 'before')")?;

    let lost = Instant::now();
    inject(leader, fault)?;
    let new = cluster.wait_for_leader_other_than(old, ttl + FAILOVER_SLACK)?;
    println!(
        "measured: {fault:?}: leader lost -> {} writable leader in {:?} (ttl {ttl:?})",
        cluster.members()[new].name(),
        lost.elapsed()
    );
    assert_ne!(new, old);
    assert_eq!(cluster.leader_index(), Some(new));

    let promoted = &cluster.members()[new];
    promoted.psql("INSERT INTO t VALUES (2, 'after')")?;
    assert_eq!(
        promoted.psql("SELECT string_agg(note, ',' ORDER BY id) FROM t")?,
        "before,after"
    );
    Ok(())
}

/// Injects `fault` into `member`; a host fault takes the agent as well as PostgreSQL, as
/// hardware would.
fn inject(member: &PatroniMember, fault: Fault) -> Result {
    match fault {
        Fault::HostCrash => {
            member.stop_agent()?;
            member.kill_postgres()
        }
        Fault::HostFreeze => {
            member.stop_agent()?;
            member.freeze_postgres()
        }
        Fault::PostgresFreeze => member.freeze_postgres(),
    }
}

#[test]
fn crashed_leader_host_is_replaced_by_the_replica() -> Result {
    leader_failure_is_survived(Fault::HostCrash, "crash")
}

#[test]
fn frozen_leader_host_is_replaced_by_the_replica() -> Result {
    leader_failure_is_survived(Fault::HostFreeze, "freeze")
}

#[test]
fn frozen_leader_postgres_under_a_live_agent_is_replaced_too() -> Result {
    leader_failure_is_survived(Fault::PostgresFreeze, "hang")
}

#[test]
fn member_accessors_and_option_checks() -> Result {
    if !available() {
        return Ok(());
    }
    let etcd = Etcd::start()?;
    assert_eq!(
        etcd.client_url(),
        format!("http://127.0.0.1:{}", etcd.client_port())
    );
    let bad = PatroniOptions {
        ttl: Duration::from_secs(5),
        ..PatroniOptions::default()
    };
    let err = PatroniCluster::start(&etcd, "bad", bad).unwrap_err();
    assert!(matches!(err, FixtureError::BadOptions(_)), "{err}");
    let opts = PatroniOptions {
        synchronous_mode: false,
        extra_pg_params: vec![("max_connections".into(), "77".into())],
        ..PatroniOptions::default()
    };
    let cluster = PatroniCluster::start(&etcd, "plain", opts)?;
    let err = PatroniCluster::start(&etcd, "plain", PatroniOptions::default()).unwrap_err();
    assert!(matches!(err, FixtureError::BadOptions(_)), "{err}");
    for (i, m) in cluster.members().iter().enumerate() {
        assert_eq!(m.name(), format!("node{i}"));
        assert_eq!(m.addr(), format!("127.0.0.1:{}", m.pg_port()));
        assert_eq!(m.psql("SHOW max_connections")?, "77");
        assert_eq!(m.psql("SHOW fsync")?, "off");
        assert_eq!(m.psql("SHOW port")?, m.pg_port().to_string());
        assert!(m.postmaster_pid()? > 0);
        assert_ne!(m.agent_pid(), m.postmaster_pid()?);
        assert!(m.rest_port() > 0);
    }
    assert_eq!(
        cluster.members()[1].psql("SELECT pg_is_in_recovery()")?,
        "t"
    );
    assert_eq!(cluster.leader_index(), Some(0));
    Ok(())
}
