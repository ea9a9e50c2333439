//! [`PatroniMember`]: one member of a [`super::PatroniCluster`], i.e. a Patroni agent started as
//! the `postgres` user, the PostgreSQL it manages, and their temp dir; its process faults; and
//! killing all of it on drop.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::config::config_yaml;
use super::{PatroniOptions, REST_TIMEOUT, SIGNAL_TIMEOUT, find_program};
use crate::etcd::{kill_and_reap, tail};
use crate::server::HOST;
use crate::sql::{Login, psql_at};
use crate::{Etcd, FixtureError, cmd, free_port, http, procs};

/// One member: a Patroni agent, the PostgreSQL it manages, and their directory.
#[derive(Debug)]
pub struct PatroniMember {
    name: String,
    home: TempDir,
    pg_port: u16,
    rest_port: u16,
    /// What we spawned: `runuser` (whose only child is the agent) when root, else the agent.
    runner: Mutex<Child>,
    agent_pid: u32,
}

impl PatroniMember {
    /// Writes member `index`'s configuration in a new temp dir and starts its agent.
    pub(super) fn spawn(
        index: usize,
        scope: &str,
        etcd: &Etcd,
        opts: &PatroniOptions,
        params: &[(String, String)],
    ) -> Result<PatroniMember, FixtureError> {
        let root = cmd::scratch_root();
        let home = tempfile::Builder::new()
            .prefix("switchyard-patroni-")
            .tempdir_in(&root)
            .map_err(|e| FixtureError::io("create temp dir in", &root, e))?;
        cmd::set_mode(home.path(), 0o755)?;
        let pg_port = free_port();
        let rest_port = loop {
            let port = free_port();
            if port != pg_port {
                break port;
            }
        };
        let name = format!("node{index}");
        let yaml = home.path().join("patroni.yml");
        let text = config_yaml(
            scope,
            &name,
            home.path(),
            pg_port,
            rest_port,
            etcd,
            opts,
            params,
        )?;
        fs::write(&yaml, text).map_err(|e| FixtureError::io("write", &yaml, e))?;
        let log_path = home.path().join("patroni.log");
        let log = File::create(&log_path).map_err(|e| FixtureError::io("create", &log_path, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| FixtureError::io("duplicate handle of", &log_path, e))?;
        cmd::give_to_pg_user(home.path())?;
        let patroni = find_program("patroni").ok_or_else(|| FixtureError::Spawn {
            command: "patroni".to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "not on PATH"),
        })?;
        let mut command = if cmd::running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", cmd::PG_USER, "--"]).arg(&patroni);
            c
        } else {
            Command::new(&patroni)
        };
        command
            .arg(&yaml)
            .current_dir("/")
            .env_remove("PYTHONPATH")
            .env_remove("PYTHONHOME")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let label = cmd::describe(&command);
        let runner = command.spawn().map_err(|source| FixtureError::Spawn {
            command: label,
            source,
        })?;
        let runner_pid = runner.id();
        let mut member = PatroniMember {
            name,
            home,
            pg_port,
            rest_port,
            runner: Mutex::new(runner),
            agent_pid: runner_pid,
        };
        if cmd::running_as_root() {
            member.agent_pid = member.find_agent(runner_pid)?;
        }
        Ok(member)
    }

    /// The agent under `runuser`: its child whose command line names our configuration file.
    fn find_agent(&self, runner_pid: u32) -> Result<u32, FixtureError> {
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            self.check_agent_running()?;
            if let Some(pid) = procs::tree(runner_pid)
                .into_iter()
                .skip(1)
                .find(|&p| self.is_our_agent(p))
            {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(FixtureError::WaitTimeout {
                    what: "runuser to start the Patroni agent",
                    timeout: SIGNAL_TIMEOUT,
                    last: format!("no child of pid {runner_pid} runs patroni"),
                });
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn is_our_agent(&self, pid: u32) -> bool {
        let yaml = self.home.path().join("patroni.yml");
        procs::is_alive(pid)
            && procs::cmdline(pid)
                .is_some_and(|c| c.contains("patroni") && c.contains(&*yaml.to_string_lossy()))
    }

    /// Fails if the process we spawned has exited (the agent died, e.g. on a bad configuration).
    pub(super) fn check_agent_running(&self) -> Result<(), FixtureError> {
        let mut runner = self.runner.lock().unwrap_or_else(PoisonError::into_inner);
        match runner.try_wait() {
            Ok(Some(status)) => Err(FixtureError::Command {
                command: format!("patroni {}", self.home.path().join("patroni.yml").display()),
                status,
                stderr: format!("the agent exited; see {}", self.log_path().display()),
            }),
            _ => Ok(()),
        }
    }

    /// The member's name in Patroni (`node0`, `node1`): also its `application_name` as a standby.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TCP port its PostgreSQL listens on, on `127.0.0.1`.
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }

    /// The TCP port of its Patroni REST API, on `127.0.0.1`.
    pub fn rest_port(&self) -> u16 {
        self.rest_port
    }

    /// `"127.0.0.1:PORT"` of its PostgreSQL.
    pub fn addr(&self) -> String {
        format!("{HOST}:{}", self.pg_port)
    }

    /// Its PostgreSQL data directory (made by Patroni).
    pub fn data_dir(&self) -> PathBuf {
        self.home.path().join("data")
    }

    /// Its Patroni log (with PostgreSQL's stderr).
    pub fn log_path(&self) -> PathBuf {
        self.home.path().join("patroni.log")
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log_path(), lines)
    }

    /// Whether its Patroni answers `GET /primary` with 200 within 1 s (it holds the leader lock).
    pub fn is_leader(&self) -> bool {
        self.rest_status("/primary") == Some(200)
    }

    /// The status code of `GET path` on its REST API, or `None` without an answer in 1 s.
    pub(super) fn rest_status(&self, path: &str) -> Option<u16> {
        http::get(self.rest_port, path, REST_TIMEOUT)
            .ok()
            .map(|r| r.status)
    }

    /// Its postmaster's pid, from `data/postmaster.pid`, checked to be a live process working in
    /// this data directory.
    pub fn postmaster_pid(&self) -> Result<u32, FixtureError> {
        procs::postmaster_of(&self.data_dir())
    }

    /// The pid of its Patroni agent (the Python process, not `runuser`).
    pub fn agent_pid(&self) -> u32 {
        self.agent_pid
    }

    /// Crashes its PostgreSQL: `SIGKILL` to the postmaster and all its descendants, then waits
    /// until they are gone. A running agent restarts it; stop the agent first for a lost host.
    pub fn kill_postgres(&self) -> Result<(), FixtureError> {
        procs::kill_tree(self.postmaster_pid()?, SIGNAL_TIMEOUT)
    }

    /// Freezes its PostgreSQL: `SIGSTOP` to the postmaster and all its descendants.
    pub fn freeze_postgres(&self) -> Result<(), FixtureError> {
        procs::freeze_tree(self.postmaster_pid()?, SIGNAL_TIMEOUT)
    }

    /// Stops its agent (`SIGSTOP` to the Patroni process and any helper it is running, such as
    /// `pg_ctl`; PostgreSQL is not its descendant and keeps running). Its leader lock then
    /// expires after `ttl`, and its REST API stops answering.
    pub fn stop_agent(&self) -> Result<(), FixtureError> {
        procs::freeze_tree(self.live_agent()?, SIGNAL_TIMEOUT)
    }

    /// Kills its agent (`SIGKILL` to it and its helpers) and waits until it is gone. Its
    /// PostgreSQL keeps running, unmanaged, as it would in production.
    pub fn kill_agent(&self) -> Result<(), FixtureError> {
        procs::kill_tree(self.live_agent()?, SIGNAL_TIMEOUT)
    }

    /// The agent's pid if it still runs (so a recycled pid is never signalled).
    fn live_agent(&self) -> Result<u32, FixtureError> {
        if self.is_our_agent(self.agent_pid) {
            Ok(self.agent_pid)
        } else {
            Err(FixtureError::NotRunning {
                data_dir: self.data_dir(),
                detail: format!("its Patroni agent (pid {}) has exited", self.agent_pid),
            })
        }
    }

    /// Runs `sql` as `postgres` on its PostgreSQL over TCP; returns trimmed stdout (unaligned,
    /// tuples only). Errors carry psql's stderr.
    pub fn psql(&self, sql: &str) -> Result<String, FixtureError> {
        psql_at(self.pg_port, &Login::superuser("postgres", None), sql)
    }

    /// Like [`PatroniMember::psql`], giving up connecting after `connect_timeout` (whole
    /// seconds, at least 2). Use it against frozen or unreachable members.
    pub fn psql_with_timeout(
        &self,
        sql: &str,
        connect_timeout: Duration,
    ) -> Result<String, FixtureError> {
        let login = Login::superuser("postgres", Some(connect_timeout));
        psql_at(self.pg_port, &login, sql)
    }

    /// Thaws and kills the agent and anything it runs, and reaps what we spawned (best effort,
    /// for drop; idempotent).
    pub(super) fn kill_agent_tree(&self) {
        let mut runner = self.runner.lock().unwrap_or_else(PoisonError::into_inner);
        // Only an unreaped child's pid is sure not to be recycled: signal its tree while it is
        // one, and otherwise only an agent whose command line is still ours.
        if matches!(runner.try_wait(), Ok(None)) {
            let _ = procs::thaw_tree(runner.id());
            let _ = procs::kill_tree(runner.id(), SIGNAL_TIMEOUT);
        }
        if self.is_our_agent(self.agent_pid) {
            let _ = procs::thaw_tree(self.agent_pid);
            let _ = procs::kill_tree(self.agent_pid, SIGNAL_TIMEOUT);
        }
        kill_and_reap(&mut runner);
    }
}

impl Drop for PatroniMember {
    fn drop(&mut self) {
        self.kill_agent_tree();
        if let Ok(pid) = self.postmaster_pid() {
            let _ = procs::thaw_tree(pid);
            let _ = procs::kill_tree(pid, SIGNAL_TIMEOUT);
        }
        // Orphans (backends of a postmaster killed alone, an earlier postmaster): anything still
        // working in the member's directory.
        let left = procs::working_in(self.home.path());
        let _ = procs::signal("CONT", &left);
        let _ = procs::signal("KILL", &left);
        let _ = procs::wait_dead(&left, SIGNAL_TIMEOUT);
        // The TempDir field removes the directory (ignoring errors) when dropped after this.
    }
}
