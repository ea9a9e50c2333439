//! The site backends: per path, one task per site that does what the backends of the incident
//! did — a small write transaction, then a read, and again — with NO client-side timeout, and a
//! log of every request that the analysis reads at the end.
//!
//! A backend connects to whatever address its path's endpoint names at that moment (for the
//! direct path the drill moves it to the new primary on promotion, as a DNS name would; for the
//! Switchyard path it is the proxy), reconnects after a broken connection, and never gives up:
//! a request that gets no answer stays in flight until the drill ends and aborts the task. That
//! is what "stuck" means in the report.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// Database name of site `index` (0-based): `site_01`, `site_02`, ...
pub fn site_database(index: u16) -> String {
    format!("site_{:02}", index + 1)
}

/// Tables every site database has: the events the backend writes, and a counter it bumps.
pub const SITE_SCHEMA: &str = "\
CREATE TABLE events (seq bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE counters (id int PRIMARY KEY, writes bigint NOT NULL);
INSERT INTO counters VALUES (1, 0);";

/// What a request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// `BEGIN; INSERT …; UPDATE …; COMMIT`.
    Write,
    /// One `SELECT`.
    Read,
}

/// How a finished request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Failed with this SQLSTATE, or `"connection"` when the connection broke without one.
    Failed(String),
}

/// One finished request; times are since the drill's start.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub start: Duration,
    pub end: Duration,
    pub outcome: Outcome,
}

/// A request still waiting for its answer.
#[derive(Debug, Clone, Copy)]
pub struct InFlight {
    pub kind: Kind,
    pub start: Duration,
}

/// Everything one site backend did, shared with the progress display and the analysis.
#[derive(Debug, Default)]
pub struct BackendLog {
    pub done: Vec<Request>,
    pub in_flight: Option<InFlight>,
    /// `seq` of every write whose COMMIT was acknowledged.
    pub acked: Vec<i64>,
}

/// A site backend's log.
pub type SharedLog = Arc<Mutex<BackendLog>>;

/// Locks a log; a panicked backend cannot leave it half-written in a way that matters here.
pub fn lock(log: &SharedLog) -> std::sync::MutexGuard<'_, BackendLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The site backends of one path, running until [`Workload::stop`].
pub struct Workload {
    pub logs: Vec<SharedLog>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl Workload {
    /// Starts `sites` backends connecting to `endpoint` (an `host:port` that may change).
    pub fn start(
        sites: u16,
        endpoint: watch::Receiver<String>,
        epoch: Instant,
        think_time: Duration,
        sessions: bool,
    ) -> Workload {
        let stop = CancellationToken::new();
        let logs: Vec<SharedLog> = (0..sites).map(|_| SharedLog::default()).collect();
        let tasks = logs
            .iter()
            .enumerate()
            .map(|(i, log)| {
                let backend = Backend {
                    database: site_database(i as u16),
                    endpoint: endpoint.clone(),
                    log: log.clone(),
                    epoch,
                    think_time,
                    sessions,
                };
                tokio::spawn(backend.run(stop.clone()))
            })
            .collect();
        Workload { logs, tasks, stop }
    }

    /// Ends the workload at once: requests still waiting are abandoned (they stay in the logs as
    /// in flight) and their connections dropped.
    pub fn stop(&mut self) {
        self.stop.cancel();
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One site backend.
struct Backend {
    database: String,
    endpoint: watch::Receiver<String>,
    log: SharedLog,
    epoch: Instant,
    think_time: Duration,
    /// Builds session state at connect, which every read uses (`--sessions`).
    sessions: bool,
}

/// The session state a `--sessions` backend builds when it connects.
const SESSION_STATE: &str = "SET work_mem = '5MB'; PREPARE read_events AS \
     SELECT count(*), coalesce(max(seq), -1), current_setting('work_mem') FROM events";

/// A connection and the task driving it (aborted when the connection is dropped).
struct Connection {
    client: Client,
    _driver: AbortOnDropHandle<()>,
}

impl Backend {
    async fn run(self, stop: CancellationToken) {
        let mut conn: Option<Connection> = None;
        let mut next_seq = 0i64;
        for turn in 0u64.. {
            let kind = if turn % 2 == 0 {
                Kind::Write
            } else {
                Kind::Read
            };
            let seq = next_seq;
            if kind == Kind::Write {
                next_seq += 1;
            }
            let start = self.epoch.elapsed();
            lock(&self.log).in_flight = Some(InFlight { kind, start });
            let result = self.request(&mut conn, kind, seq).await;
            let end = self.epoch.elapsed();
            let outcome = match result {
                Ok(()) => Outcome::Ok,
                Err(failure) => {
                    if conn.as_ref().is_none_or(|c| c.client.is_closed()) {
                        conn = None;
                    }
                    Outcome::Failed(failure)
                }
            };
            {
                let mut log = lock(&self.log);
                log.in_flight = None;
                if kind == Kind::Write && outcome == Outcome::Ok {
                    log.acked.push(seq);
                }
                log.done.push(Request {
                    kind,
                    start,
                    end,
                    outcome,
                });
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.think_time) => {}
            }
        }
    }

    /// One request, connecting first if needed; a failure is its SQLSTATE, `connection`, or
    /// `state` (a `--sessions` read that found its session's setting gone). No timeout
    /// anywhere: like the incident's backends, it waits as long as the network lets it.
    async fn request(
        &self,
        conn: &mut Option<Connection>,
        kind: Kind,
        seq: i64,
    ) -> Result<(), String> {
        match self.request_on(conn, kind, seq).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("state".to_owned()),
            Err(e) => Err(sqlstate_of(&e)),
        }
    }

    /// [`Backend::request`]; `Ok(false)`: the session's state was not what it built.
    async fn request_on(
        &self,
        conn: &mut Option<Connection>,
        kind: Kind,
        seq: i64,
    ) -> Result<bool, tokio_postgres::Error> {
        if conn.is_none() {
            *conn = Some(self.connect().await?);
        }
        let Some(Connection { client, .. }) = conn.as_mut() else {
            unreachable!("connected just above");
        };
        match kind {
            Kind::Write => {
                let tx = client.transaction().await?;
                tx.execute("INSERT INTO events (seq) VALUES ($1)", &[&seq])
                    .await?;
                tx.execute("UPDATE counters SET writes = writes + 1 WHERE id = 1", &[])
                    .await?;
                tx.commit().await.map(|()| true)
            }
            Kind::Read if self.sessions => {
                // Fails (26000) if the prepared statement was lost; a lost setting shows in
                // the row, counted as a failure `state`.
                let rows = client.simple_query("EXECUTE read_events").await?;
                let work_mem = rows.iter().find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(2).map(str::to_owned),
                    _ => None,
                });
                Ok(work_mem.as_deref() == Some("5MB"))
            }
            Kind::Read => client
                .query_one("SELECT count(*), coalesce(max(seq), -1) FROM events", &[])
                .await
                .map(|_| true),
        }
    }

    async fn connect(&self) -> Result<Connection, tokio_postgres::Error> {
        let addr = self.endpoint.borrow().clone();
        let (host, port) = addr.rsplit_once(':').unwrap_or((&addr, "5432"));
        let config = format!(
            "host={host} port={port} user=postgres dbname={} application_name=site-backend",
            self.database
        );
        let (client, connection) = tokio_postgres::connect(&config, NoTls).await?;
        let driver = AbortOnDropHandle::new(tokio::spawn(async move {
            let _ = connection.await;
        }));
        if self.sessions {
            client.batch_execute(SESSION_STATE).await?;
        }
        Ok(Connection {
            client,
            _driver: driver,
        })
    }
}

/// The SQLSTATE of an error, or `"connection"` when the connection failed without one.
fn sqlstate_of(e: &tokio_postgres::Error) -> String {
    e.code()
        .map_or_else(|| "connection".to_owned(), |c| c.code().to_owned())
}
