//! Integration tests of the PostgreSQL fixture against real PostgreSQL 15 servers.

use std::thread;
use std::time::{Duration, Instant};

use switchyard_localpg::{FixtureError, PasswordKind, PgOptions, PgServer};

type Result<T = ()> = std::result::Result<T, FixtureError>;

/// Polls `sql` on `pg` until it prints `want`, for at most `timeout`.
fn poll_until(pg: &PgServer, sql: &str, want: &str, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if pg
            .psql_with_timeout(sql, Duration::from_secs(2))
            .ok()
            .as_deref()
            == Some(want)
        {
            return Ok(true);
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(false)
}

#[test]
fn starts_and_answers_queries() -> Result {
    let pg = PgServer::start()?;
    assert_eq!(pg.psql("select 1")?, "1");
    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(pg.addr(), format!("127.0.0.1:{}", pg.port()));
    assert_eq!(pg.psql("show port")?, pg.port().to_string());
    assert_eq!(pg.psql("show server_version_num")?.get(..2), Some("15"));
    assert!(
        pg.socket_dir()
            .join(format!(".s.PGSQL.{}", pg.port()))
            .exists()
    );
    assert!(pg.log_path().exists());
    Ok(())
}

#[test]
fn extra_conf_is_applied_and_errors_carry_stderr() -> Result {
    let opts = PgOptions {
        extra_conf: vec!["max_connections = 42".into()],
        ..PgOptions::default()
    };
    let pg = PgServer::start_with(opts)?;
    assert_eq!(pg.psql("show max_connections")?, "42");
    let err = pg.psql("select * from no_such_table").unwrap_err();
    assert!(err.to_string().contains("no_such_table"), "{err}");
    Ok(())
}

#[test]
fn bad_conf_fails_with_log_tail() {
    let opts = PgOptions {
        extra_conf: vec!["shared_buffers = 'nonsense'".into()],
        ..PgOptions::default()
    };
    let err = PgServer::start_with(opts).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FixtureError::Start { .. }), "{text}");
    assert!(text.contains("shared_buffers"), "{text}");
}

#[test]
fn scram_and_md5_users_can_log_in() -> Result {
    let pg = PgServer::start()?;
    pg.create_user("alice", "s3cret'\"x", PasswordKind::Scram)?;
    pg.create_user("Bob", "hunter2", PasswordKind::Md5)?;
    let stored = |role: &str, prefix: &str| {
        pg.psql(&format!(
            "SELECT rolpassword LIKE '{prefix}%' FROM pg_authid WHERE rolname = '{role}'"
        ))
    };
    assert_eq!(stored("alice", "SCRAM-SHA-256$")?, "t");
    assert_eq!(stored("Bob", "md5")?, "t");
    pg.create_database("alice db", "alice")?;
    let who = pg.psql_as("alice", "s3cret'\"x", "alice db", "select current_user")?;
    assert_eq!(who, "alice");
    assert_eq!(pg.psql_as("Bob", "hunter2", "postgres", "select 2")?, "2");
    let err = pg
        .psql_as("Bob", "wrong", "postgres", "select 2")
        .unwrap_err();
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
    Ok(())
}

#[test]
fn standby_streams_and_promotes() -> Result {
    let primary = PgServer::start()?;
    let standby = primary.start_standby()?;
    assert_ne!(standby.port(), primary.port());
    assert_eq!(standby.psql("select pg_is_in_recovery()")?, "t");
    primary.psql("create table t (x int); insert into t values (42)")?;
    let seen = poll_until(&standby, "select x from t", "42", Duration::from_secs(30))?;
    assert!(seen, "row never replicated to the standby");
    standby.promote()?;
    assert_eq!(standby.psql("select pg_is_in_recovery()")?, "f");
    standby.psql("insert into t values (43)")?;
    assert_eq!(standby.psql("select count(*) from t")?, "2");
    Ok(())
}

#[test]
fn freeze_blocks_connections_until_thaw() -> Result {
    let pg = PgServer::start()?;
    pg.freeze()?;
    assert!(pg.is_frozen());
    let started = Instant::now();
    let err = pg
        .psql_with_timeout("select 1", Duration::from_secs(2))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(15), "{err}");
    pg.thaw()?;
    assert!(!pg.is_frozen());
    assert_eq!(
        pg.psql_with_timeout("select 1", Duration::from_secs(5))?,
        "1"
    );
    Ok(())
}

#[test]
fn kill_then_start_again_recovers_data() -> Result {
    let pg = PgServer::start()?;
    pg.psql("create table k (x int); insert into k values (7)")?;
    let pid = pg.postmaster_pid()?;
    pg.kill()?;
    assert!(pg.postmaster_pid().is_err());
    assert!(is_dead(pid), "postmaster {pid} survived kill");
    assert!(
        pg.psql_with_timeout("select 1", Duration::from_secs(2))
            .is_err()
    );
    pg.start_again()?;
    assert_eq!(pg.psql("select x from k")?, "7");
    assert_ne!(pg.postmaster_pid()?, pid);
    Ok(())
}

#[test]
fn stop_then_start_again_and_drop_cleans_up() -> Result {
    let pg = PgServer::start()?;
    pg.stop()?;
    assert!(
        pg.psql_with_timeout("select 1", Duration::from_secs(2))
            .is_err()
    );
    pg.start_again()?;
    assert_eq!(pg.psql("select 1")?, "1");
    let (pid, dir) = (pg.postmaster_pid()?, pg.data_dir());
    drop(pg);
    assert!(!dir.exists(), "temp dir left behind");
    assert!(is_dead(pid), "postmaster {pid} survived drop");
    Ok(())
}

#[test]
fn drop_of_frozen_server_cleans_up() -> Result {
    let pg = PgServer::start()?;
    let (pid, dir) = (pg.postmaster_pid()?, pg.data_dir());
    pg.freeze()?;
    drop(pg);
    assert!(!dir.exists(), "temp dir left behind");
    assert!(is_dead(pid), "postmaster {pid} survived drop");
    Ok(())
}

#[test]
fn concurrent_starts_get_distinct_servers() -> Result {
    let servers = thread::scope(|s| {
        let handles: Vec<_> = (0..3).map(|_| s.spawn(PgServer::start)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("start thread panicked"))
            .collect::<Result<Vec<_>>>()
    })?;
    for pg in &servers {
        assert_eq!(pg.psql("select 1")?, "1");
    }
    let mut ports: Vec<u16> = servers.iter().map(PgServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    Ok(())
}

/// Whether `pid` is gone or a zombie.
fn is_dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
    }
}

#[test]
fn server_handles_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PgServer>();
    assert_send_sync::<FixtureError>();
}
