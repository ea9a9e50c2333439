//! Persistent servers against real PostgreSQL 15: data kept across starts, a standby reused or
//! made again, leftovers of a killed process stopped, a taken port reported.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use switchyard_localpg::{FixtureError, Origin, PgOptions, PgServer, free_port};
use tempfile::TempDir;

type Result<T = ()> = std::result::Result<T, FixtureError>;

/// A state directory the `postgres` user can enter (the tests may run as root).
fn state_dir() -> TempDir {
    let dir = tempfile::Builder::new()
        .prefix("localpg-kept-")
        .tempdir_in("/tmp")
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

fn poll_until(pg: &PgServer, sql: &str, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if pg
            .psql_with_timeout(sql, Duration::from_secs(2))
            .ok()
            .as_deref()
            == Some(want)
        {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

fn is_dead(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
        s.rsplit(')').next().unwrap_or("").trim().starts_with('Z')
    })
}

fn assert_stopped(dir: &Path, pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_dead(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    assert!(is_dead(pid), "postmaster {pid} still alive");
    assert!(
        !dir.join("data/postmaster.pid").exists(),
        "postmaster.pid left in {dir:?}"
    );
    assert!(
        dir.join("data/PG_VERSION").exists(),
        "data of {dir:?} was removed"
    );
}

#[test]
fn data_survives_restarts_and_a_promoted_standby_is_made_again() -> Result {
    let state = state_dir();
    let (pdir, sdir) = (state.path().join("primary"), state.path().join("standby"));
    let primary = PgServer::start_in(&pdir, free_port(), PgOptions::default())?;
    assert_eq!(primary.origin(), Origin::Created);
    let standby = primary.start_standby_in(&sdir, free_port())?;
    assert_eq!(standby.origin(), Origin::Created);
    primary.psql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (1)")?;
    assert!(poll_until(&standby, "SELECT count(*) FROM kept", "1"));
    let pids = (primary.postmaster_pid()?, standby.postmaster_pid()?);
    drop(standby);
    drop(primary);
    assert_stopped(&pdir, pids.0);
    assert_stopped(&sdir, pids.1);

    // Again, on other ports: both reused, the standby follows the primary's new port.
    let primary = PgServer::start_in(&pdir, free_port(), PgOptions::default())?;
    assert_eq!(primary.origin(), Origin::Reused);
    assert_eq!(primary.psql("SELECT count(*) FROM kept")?, "1");
    let standby = primary.start_standby_in(&sdir, free_port())?;
    assert_eq!(standby.origin(), Origin::Reused);
    primary.psql("INSERT INTO kept VALUES (2)")?;
    assert!(poll_until(&standby, "SELECT count(*) FROM kept", "2"));

    // A promoted standby is no standby any more: the next start makes it again.
    standby.promote()?;
    drop(standby);
    drop(primary);
    let primary = PgServer::start_in(&pdir, free_port(), PgOptions::default())?;
    let standby = primary.start_standby_in(&sdir, free_port())?;
    assert_eq!(standby.origin(), Origin::Replaced);
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()")?, "t");
    assert!(poll_until(&standby, "SELECT count(*) FROM kept", "2"));
    Ok(())
}

#[test]
fn leftovers_are_stopped_even_frozen_and_a_taken_port_is_reported() -> Result {
    let state = state_dir();
    let dir = state.path().join("primary");
    let primary = PgServer::start_in(&dir, free_port(), PgOptions::default())?;
    let pid = primary.postmaster_pid()?;
    // Frozen as the demo tells users to: the postmaster, then its children (each of which leads
    // its own process group, so `kill -STOP -- -PID` would miss them).
    let pid_arg = pid.to_string();
    let kill = Command::new("kill").args(["-STOP", &pid_arg]).status();
    let pkill = Command::new("pkill")
        .args(["-STOP", "-P", &pid_arg])
        .status();
    assert!(kill.expect("kill").success() && pkill.expect("pkill").success());
    // As if our process had been killed: no drop, the server keeps running.
    std::mem::forget(primary);
    assert_eq!(PgServer::stop_leftover(&dir)?, Some(pid));
    assert_stopped(&dir, pid);
    assert_eq!(PgServer::stop_leftover(&dir)?, None);

    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    match PgServer::start_in(&dir, port, PgOptions::default()) {
        Err(FixtureError::PortInUse { port: p, .. }) => assert_eq!(p, port),
        other => panic!("expected PortInUse, got {other:?}"),
    }
    drop(taken);
    let primary = PgServer::start_in(&dir, free_port(), PgOptions::default())?;
    assert_eq!(primary.origin(), Origin::Reused);
    Ok(())
}
