//! [`PatroniCluster`]: a real Patroni-managed PostgreSQL 15 cluster (Debian's `patroni`, 3.0)
//! of two members on top of an [`Etcd`], for drills where a real cluster manager, not the test,
//! detects a failed primary and promotes the standby. This module owns the members' Patroni
//! configuration, starting the agents (as the `postgres` user when we are root), waiting for a
//! writable leader and a streaming (synchronous) replica, the process faults a drill composes
//! into a host failure, and killing everything on drop.
//!
//! Each member lives in its own temp dir: `patroni.yml`, `patroni.log` (Patroni's log, with
//! PostgreSQL's stderr), `pgpass` (written by Patroni), `data/` (made by Patroni: `initdb` on
//! the first member, `pg_basebackup` on the second) and the unix socket. Patroni starts the
//! postmaster detached (it is not a descendant of the agent), so agent faults and PostgreSQL
//! faults are independent; a lost host is both, e.g. [`PatroniMember::stop_agent`] plus
//! [`PatroniMember::kill_postgres`].

mod config;
mod member;

use std::fs;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::{Etcd, FixtureError};

pub use config::PatroniOptions;
pub use member::PatroniMember;

/// How many members a cluster has: a leader and one replica.
const MEMBERS: usize = 2;

/// Deadline for the whole cluster to come up.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Deadline of one REST API call.
const REST_TIMEOUT: Duration = Duration::from_secs(1);

/// Connect timeout of the fixture's own `psql` probes.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Deadline for signalled processes to stop or die (and for `runuser` to start the agent).
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between polls.
const POLL: Duration = Duration::from_millis(100);

/// Lines of each log quoted in errors.
const LOG_TAIL_LINES: usize = 30;

/// Patroni's key prefix in etcd (its default).
const NAMESPACE: &str = "/service/";

/// Whether a Patroni stack can run here: `Ok` if the `patroni` and `etcd` programs are on
/// `PATH`, else a one-line reason naming the missing Debian package.
pub fn patroni_available() -> Result<(), String> {
    for (program, package) in [("patroni", "patroni"), ("etcd", "etcd-server")] {
        if find_program(program).is_none() {
            return Err(format!(
                "`{program}` is not on PATH: install Debian's `{package}` package (scripts/setup does)"
            ));
        }
    }
    Ok(())
}

/// The first executable file called `name` in `$PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// A running two-member Patroni cluster: member 0 was bootstrapped by Patroni's `initdb` and led
/// at start; member 1 was cloned by Patroni with `pg_basebackup` and streams from it. Dropping
/// the cluster kills the agents first (so none restarts PostgreSQL or takes over), then every
/// PostgreSQL process, and removes the members' directories. Drop never panics.
///
/// What Patroni 3.0.2 (Debian 12) does with the faults:
///
/// * Leader host lost (agent stopped, PostgreSQL killed or frozen): its lease in etcd expires
///   after `ttl`; the replica then asks the old leader's REST API (2 s timeout), and promotes.
///   About `ttl` + 2 to 3 s in all.
/// * Leader's PostgreSQL frozen, agent running: the agent's HA loop blocks on its query to
///   PostgreSQL, and its REST API stops answering, so the replica takes over as above.
/// * Resuming such a leader afterwards (thaw, or [`PatroniMember::continue_agent`]) is unsafe
///   with this version: its agent finishes the interrupted HA cycle, takes a new lease and
///   overwrites the leader key unconditionally (the `etcd3` backend's `_update_leader`; fixed
///   upstream in Patroni 3.0.3, patroni/patroni#2689), so the *new* leader demotes itself and
///   the old one goes on as primary on the old timeline: commits made on the new leader are
///   lost. Kill a failed leader's agent instead of resuming it.
#[derive(Debug)]
pub struct PatroniCluster {
    scope: String,
    members: Vec<PatroniMember>,
}

impl PatroniCluster {
    /// Starts a two-member cluster named `scope` (letters, digits, `-`, `_`; unused in this
    /// etcd) on `etcd`, and returns once the leader accepts writes over TCP and the replica
    /// streams from it (as the synchronous standby with `opts.synchronous_mode`), within 90 s.
    /// Errors quote the end of the agents' logs.
    pub fn start(
        etcd: &Etcd,
        scope: &str,
        opts: PatroniOptions,
    ) -> Result<PatroniCluster, FixtureError> {
        opts.seconds()?;
        if scope.is_empty()
            || !scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(FixtureError::BadOptions(format!(
                "bad Patroni scope {scope:?}: use letters, digits, '-' and '_'"
            )));
        }
        if etcd.count_keys(&format!("{NAMESPACE}{scope}/"))? > 0 {
            return Err(FixtureError::BadOptions(format!(
                "Patroni scope {scope:?} already has keys in this etcd: use a new scope"
            )));
        }
        let mut cluster = PatroniCluster {
            scope: scope.to_owned(),
            members: Vec::with_capacity(MEMBERS),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        match cluster.bring_up(etcd, &opts, deadline) {
            Ok(()) => Ok(cluster),
            Err(e) => Err(cluster.error(format!("Patroni cluster {scope:?} did not start"), e)),
        }
    }

    /// Starts member 0 and waits until it leads, then member 1 and waits until it streams (one
    /// at a time, so that member 0 is always the one that bootstraps).
    fn bring_up(
        &mut self,
        etcd: &Etcd,
        opts: &PatroniOptions,
        deadline: Instant,
    ) -> Result<(), FixtureError> {
        let params = opts.pg_params()?;
        self.members
            .push(PatroniMember::spawn(0, &self.scope, etcd, opts, &params)?);
        self.wait_until("member 0 to bootstrap and lead", deadline, |c| {
            Ok(c.members[0].is_leader())
        })?;
        self.members
            .push(PatroniMember::spawn(1, &self.scope, etcd, opts, &params)?);
        let replica_path = if opts.synchronous_mode {
            "/sync"
        } else {
            "/replica"
        };
        let streaming = format!(
            "SELECT NOT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_replication \
             WHERE state = 'streaming'{})",
            if opts.synchronous_mode {
                " AND sync_state = 'sync'"
            } else {
                ""
            }
        );
        self.wait_until("member 1 to stream from member 0", deadline, |c| {
            if !c.members[0].is_leader() {
                return Err("member 0 is no longer the leader".to_owned());
            }
            if c.members[1].rest_status(replica_path) != Some(200) {
                return Err(format!("member 1: GET {replica_path} is not 200"));
            }
            let out = c.members[0]
                .psql_with_timeout(&streaming, PROBE_TIMEOUT)
                .map_err(|e| e.to_string())?;
            Ok(out == "t")
        })
    }

    /// Polls `check` until it says true, failing when an agent exits or `deadline` passes.
    fn wait_until(
        &self,
        what: &'static str,
        deadline: Instant,
        check: impl Fn(&Self) -> Result<bool, String>,
    ) -> Result<(), FixtureError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        loop {
            for member in &self.members {
                member.check_agent_running()?;
            }
            let last = match check(self) {
                Ok(true) => return Ok(()),
                Ok(false) => "not yet".to_owned(),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(FixtureError::WaitTimeout {
                    what,
                    timeout,
                    last,
                });
            }
            thread::sleep(POLL);
        }
    }

    /// The members, in start order (member 0 led at start).
    pub fn members(&self) -> &[PatroniMember] {
        &self.members
    }

    /// The member whose Patroni says it holds the leader lock (`GET /primary` answers 200 within
    /// 1 s), if exactly one does. A stopped agent does not answer, so it never counts; two
    /// answers (see [`PatroniCluster::leaders`]) give `None`. The leader's PostgreSQL may still
    /// be finishing its promotion: see [`PatroniCluster::wait_for_leader_other_than`].
    pub fn leader_index(&self) -> Option<usize> {
        match self.leaders()[..] {
            [only] => Some(only),
            _ => None,
        }
    }

    /// Every member whose Patroni answers `GET /primary` with 200 within 1 s. More than one means
    /// two agents each believe they hold the lock, e.g. for a moment after a frozen leader
    /// resumes (see [`PatroniCluster`] on what Patroni 3.0.2 then does).
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|&i| self.members[i].is_leader())
            .collect()
    }

    /// Waits until a member other than `old` is the leader (per [`PatroniCluster::leader_index`])
    /// and its PostgreSQL has left recovery (`pg_is_in_recovery()` is false), so it accepts
    /// writes; returns its index. Errors quote the end of the agents' logs.
    pub fn wait_for_leader_other_than(
        &self,
        old: usize,
        timeout: Duration,
    ) -> Result<usize, FixtureError> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders = self.leaders();
            let last = match leaders[..] {
                [i] if i == old => format!("member {i} still leads"),
                [i] => match self.members[i]
                    .psql_with_timeout("SELECT pg_is_in_recovery()", PROBE_TIMEOUT)
                {
                    Ok(out) if out == "f" => return Ok(i),
                    Ok(out) => format!("member {i} leads; in recovery: {out}"),
                    Err(e) => format!("member {i} leads; psql: {e}"),
                },
                _ => format!("members answering GET /primary with 200: {leaders:?}"),
            };
            if Instant::now() >= deadline {
                let cause = FixtureError::WaitTimeout {
                    what: "a writable Patroni leader",
                    timeout,
                    last,
                };
                return Err(self.error(
                    format!("no member other than {old} became a writable leader"),
                    cause,
                ));
            }
            thread::sleep(POLL);
        }
    }

    /// The last `lines` lines of every member's log, each headed by its path.
    pub fn log_tails(&self, lines: usize) -> String {
        self.members
            .iter()
            .map(|m| {
                format!(
                    "--- last lines of {} ---\n{}",
                    m.log_path().display(),
                    m.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn error(&self, what: String, cause: FixtureError) -> FixtureError {
        FixtureError::Manager {
            what,
            cause: Box::new(cause),
            logs: self.log_tails(LOG_TAIL_LINES),
        }
    }
}

impl Drop for PatroniCluster {
    fn drop(&mut self) {
        // Agents first, all of them: a live agent would restart its PostgreSQL or take over.
        for member in &self.members {
            member.kill_agent_tree();
        }
        // Each member's own Drop then kills its PostgreSQL and removes its directory.
    }
}
