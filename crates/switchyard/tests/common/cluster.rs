//! A two-member cluster for failover tests: a real primary and its streaming standby (both from
//! `switchyard-localpg`), with the test users and an `app` database, and a Switchyard started
//! in-process with `members = [primary, standby]` and DEFAULT `[failover]` settings (the bounds of
//! design.md §1 hold for the defaults).
//!
//! ```ignore
//! let c = Cluster::start(ClusterOptions::default()).await;
//! let app = c.client().await;
//! c.standby.promote()?;                       // blocking: or c.promote_standby().await
//! c.wait_for_primary(&c.standby.addr(), STEP).await;
//! ```
//!
//! Faults ([`Fault`]: crash, freeze, blackhole) are injected with [`Cluster::inject`] and undone
//! with [`Cluster::restore`]; [`send`], [`why`] and [`where_am_i`] are the client-side helpers.
//!
//! The servers are `Arc<PgServer>` so blocking fixture calls can move into `spawn_blocking`
//! ([`blocking`]). The topology is read from the proxy's own monitor ([`Cluster::topology`]); the
//! test crate cannot name the topology types, so the state is exposed as text plus the primary's
//! address.
#![allow(dead_code)]

use super::{
    MD5_PASSWORD, MD5_USER, SCRAM_PASSWORD, SCRAM_USER, STEP, config_for, connect, within,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard::serve::{self, Running};
use switchyard_config::{Config, PoolMode};
use switchyard_localpg::{Blackhole, FixtureError, PasswordKind, PgOptions, PgServer};
use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};

/// Name of the cluster in the generated config.
pub const CLUSTER: &str = "main";

/// Reads a published view through its fields' names and `Debug` (the test crate cannot name
/// the topology types).
macro_rules! topology_of {
    ($view:expr) => {{
        let view = $view;
        let state = format!("{:?}", view.state);
        Topology {
            generation: view.generation,
            primary: primary_addr(&state),
            health: view
                .members
                .iter()
                .map(|m| (m.addr.clone(), format!("{:?}", m.health)))
                .collect(),
            state,
        }
    }};
}

/// How the cluster is built.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub mode: PoolMode,
    /// `synchronous_standby_names = '*'` on the primary (set after the standby is made, so the
    /// standby does not inherit it and can commit alone once promoted).
    pub sync_replication: bool,
    /// Extra `postgresql.conf` lines for the primary (inherited by the standby's base backup).
    pub extra_conf: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            mode: PoolMode::Transaction,
            sync_replication: false,
            extra_conf: Vec::new(),
        }
    }
}

/// What the proxy's monitor says right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    pub generation: u64,
    /// The address of the member named primary, if any.
    pub primary: Option<String>,
    /// `Debug` of the cluster state: `NoPrimary`, `Primary { .. }`, `Conflict([..])`.
    pub state: String,
    /// Per member: address and `Debug` of its health (`Up`, `Suspect { .. }`, `Down { .. }`).
    pub health: Vec<(String, String)>,
}

impl Topology {
    pub fn has_no_primary(&self) -> bool {
        self.state == "NoPrimary"
    }

    pub fn is_conflict(&self) -> bool {
        self.state.starts_with("Conflict")
    }

    /// Whether member `addr` is healthy (`Up`).
    pub fn is_up(&self, addr: &str) -> bool {
        self.health.iter().any(|(a, h)| a == addr && h == "Up")
    }
}

/// A primary, its streaming standby, and a proxy in front of both.
pub struct Cluster {
    pub primary: Arc<PgServer>,
    pub standby: Arc<PgServer>,
    pub proxy: Running,
}

/// Runs a blocking fixture call off the async workers, bounded by [`STEP`].
pub async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, FixtureError> + Send + 'static,
) -> T {
    let joined = within(STEP, what, tokio::task::spawn_blocking(f)).await;
    match joined {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(e) => panic!("{what}: task failed: {e}"),
    }
}

/// Creates the test users and the `app` database (open to everyone) on `pg`.
fn prepare_primary(pg: &PgServer) -> Result<(), FixtureError> {
    pg.create_user(SCRAM_USER, SCRAM_PASSWORD, PasswordKind::Scram)?;
    pg.create_user(MD5_USER, MD5_PASSWORD, PasswordKind::Md5)?;
    pg.create_database("app", "postgres")?;
    pg.psql_db("app", "GRANT ALL ON SCHEMA public TO PUBLIC")?;
    Ok(())
}

/// The proxy config for a cluster of `primary` and `standby` (default failover settings).
pub fn cluster_config(primary: &PgServer, standby: &PgServer, mode: PoolMode) -> Config {
    let mut config = config_for(primary, mode);
    let cluster = config
        .clusters
        .get_mut(CLUSTER)
        .expect("config_for names its cluster `main`");
    cluster.members = vec![primary.addr(), standby.addr()];
    config
}

impl Cluster {
    /// Starts primary, standby and proxy, and waits until the proxy names the primary and sees
    /// the standby up.
    pub async fn start(opts: ClusterOptions) -> Self {
        Self::start_with(opts, |_| {}).await
    }

    /// Like [`Cluster::start`], letting `tweak` change the proxy config first.
    pub async fn start_with(opts: ClusterOptions, tweak: impl FnOnce(&mut Config)) -> Self {
        let extra_conf = opts.extra_conf.clone();
        let sync = opts.sync_replication;
        let (primary, standby) = blocking("start primary and standby", move || {
            let primary = PgServer::start_with(PgOptions {
                extra_conf,
                ..PgOptions::default()
            })?;
            prepare_primary(&primary)?;
            let standby = primary.start_standby()?;
            if sync {
                primary.make_synchronous()?;
            }
            Ok((primary, standby))
        })
        .await;
        let mut config = cluster_config(&primary, &standby, opts.mode);
        tweak(&mut config);
        let proxy = within(STEP, "proxy start", serve::start(config))
            .await
            .expect("proxy starts");
        let cluster = Self {
            primary: Arc::new(primary),
            standby: Arc::new(standby),
            proxy,
        };
        let (p, s) = (cluster.primary.addr(), cluster.standby.addr());
        cluster
            .wait_for(
                STEP,
                "the proxy to name the primary and see the standby",
                |t| t.primary.as_deref() == Some(p.as_str()) && t.is_up(&s),
            )
            .await;
        cluster
    }

    pub fn port(&self) -> u16 {
        self.proxy.addr.port()
    }

    /// A connection string for the proxy as `postgres` to `app`; `extra` is appended
    /// (e.g. `"application_name=x"`).
    pub fn conninfo(&self, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=app {extra}",
            self.port()
        )
    }

    /// Connects through the proxy as `postgres` to `app`.
    pub async fn client(&self) -> Client {
        connect(&self.conninfo(""))
            .await
            .expect("connect through the proxy")
    }

    /// What the proxy's monitor says now.
    pub fn topology(&self) -> Topology {
        let monitor = self
            .proxy
            .proxy
            .router
            .monitor(CLUSTER)
            .expect("the proxy watches the cluster");
        topology_of!(monitor.view())
    }

    /// Waits (at most `limit`) until the monitor's view satisfies `pred`; returns that view and
    /// the instant it was seen. Panics with the last view on timeout.
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Topology) -> bool,
    ) -> (Topology, Instant) {
        let monitor = self
            .proxy
            .proxy
            .router
            .monitor(CLUSTER)
            .expect("the proxy watches the cluster");
        let mut rx = monitor.subscribe();
        let waited = tokio::time::timeout(limit, async {
            loop {
                rx.borrow_and_update();
                let t = self.topology();
                if pred(&t) {
                    return (t, Instant::now());
                }
                if rx.changed().await.is_err() {
                    panic!("the monitor stopped while waiting for {what}");
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            panic!(
                "timed out after {limit:?} waiting for {what}; last view: {:?}",
                self.topology()
            )
        })
    }

    /// Waits until the proxy names `addr` as primary.
    pub async fn wait_for_primary(&self, addr: &str, limit: Duration) -> (Topology, Instant) {
        self.wait_for(limit, &format!("primary {addr}"), |t| {
            t.primary.as_deref() == Some(addr)
        })
        .await
    }

    /// Waits until the proxy has no primary (the old one is Down).
    pub async fn wait_for_no_primary(&self, limit: Duration) -> (Topology, Instant) {
        self.wait_for(limit, "no primary", Topology::has_no_primary)
            .await
    }

    /// Promotes the standby (blocking, off the workers); returns when it is out of recovery.
    /// Promotes the standby; says when it was asked and when `pg_ctl promote` returned.
    pub async fn promote_standby(&self) -> Promotion {
        let standby = self.standby.clone();
        let requested = Instant::now();
        blocking("promote the standby", move || standby.promote()).await;
        Promotion {
            requested,
            returned: Instant::now(),
        }
    }

    /// Runs `sql` with psql on `server` directly (not through the proxy), off the workers.
    pub async fn psql_on(server: &Arc<PgServer>, db: &str, sql: &str) -> String {
        let (server, db, sql) = (server.clone(), db.to_owned(), sql.to_owned());
        blocking("psql", move || server.psql_db(&db, &sql)).await
    }
}

/// A promotion took effect somewhere between the request and `pg_ctl promote`'s return (the
/// standby takes writes before it returns; under load the promotion itself can take seconds).
/// So a "not before" check counts from `requested`, the earliest instant it can have taken
/// effect, and a bound on how soon the proxy followed counts from `returned`, the latest (a
/// slow `pg_ctl` is not the proxy's delay; pg_ctl notices the promotion within ~0.1 s).
#[derive(Debug, Clone, Copy)]
pub struct Promotion {
    pub requested: Instant,
    pub returned: Instant,
}

impl Promotion {
    /// How long after the promotion `at` came, for an upper bound (from `returned`).
    pub fn then_until(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.returned)
    }

    /// Whether `at` can have come after the promotion took effect (from `requested`).
    pub fn may_precede(&self, at: Instant) -> bool {
        at >= self.requested
    }

    /// How long `pg_ctl promote` took.
    pub fn took(&self) -> Duration {
        self.returned - self.requested
    }
}

/// Every view the proxy's monitor publishes from now on, with the instant it was seen, until
/// [`TopologyLog::stop`].
pub struct TopologyLog {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<(Instant, Topology)>>,
}

impl TopologyLog {
    /// Stops recording and returns the views seen (consecutive duplicates left out).
    pub async fn stop(self) -> Vec<(Instant, Topology)> {
        let _ = self.stop.send(());
        within(STEP, "the topology log to stop", self.task)
            .await
            .expect("topology log task")
    }
}

impl Cluster {
    /// Starts recording the monitor's views (health changes included) in the background.
    pub fn record_topology(&self) -> TopologyLog {
        let proxy = self.proxy.proxy.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let monitor = proxy
                .router
                .monitor(CLUSTER)
                .expect("the proxy watches the cluster");
            let mut rx = monitor.subscribe();
            let mut log: Vec<(Instant, Topology)> = Vec::new();
            loop {
                let t = topology_of!(rx.borrow_and_update().clone());
                if log.last().is_none_or(|(_, last)| *last != t) {
                    log.push((Instant::now(), t));
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return log },
                    _ = &mut stopped => return log,
                }
            }
        });
        TopologyLog { stop, task }
    }
}

/// The `addr` field of a `Primary { id: .., addr: ".." }` state's `Debug`.
fn primary_addr(state: &str) -> Option<String> {
    let rest = state.strip_prefix("Primary")?;
    let start = rest.find("addr: \"")? + "addr: \"".len();
    let len = rest[start..].find('"')?;
    Some(rest[start..start + len].to_owned())
}

/// A fault of the primary (design.md §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `SIGKILL` of the postmaster and all its children: sockets close (FIN/RST).
    Crash,
    /// `SIGSTOP` of the whole process tree: the kernel still completes handshakes and ACKs.
    Freeze,
    /// Every loopback packet to or from the primary's port dropped (`iptables`, see
    /// [`switchyard_localpg::Blackhole`]); the standby's replication stream is cut too.
    Blackhole,
}

/// A fault in place, to be undone with [`Cluster::restore`].
pub struct Injected {
    pub fault: Fault,
    hole: Option<Blackhole>,
}

impl Cluster {
    /// Injects `fault` on the primary; returns once it is complete (processes gone, all
    /// stopped, rules in place).
    pub async fn inject(&self, fault: Fault) -> Injected {
        let primary = self.primary.clone();
        let hole = match fault {
            Fault::Crash => {
                blocking("kill the primary", move || primary.kill()).await;
                None
            }
            Fault::Freeze => {
                blocking("freeze the primary", move || primary.freeze()).await;
                None
            }
            Fault::Blackhole => {
                let port = primary.port();
                Some(blocking("blackhole the primary", move || Blackhole::start(port)).await)
            }
        };
        Injected { fault, hole }
    }

    /// Brings the old primary back: restart after a crash (crash recovery; it comes back
    /// writable on its old timeline), thaw after a freeze, lift the blackhole.
    pub async fn restore(&self, injected: Injected) {
        let primary = self.primary.clone();
        match injected.fault {
            Fault::Crash => {
                blocking("restart the old primary", move || primary.start_again()).await;
            }
            Fault::Freeze => blocking("thaw the old primary", move || primary.thaw()).await,
            Fault::Blackhole => {
                let mut hole = injected.hole.expect("a blackhole guard");
                blocking("lift the blackhole", move || hole.stop()).await;
            }
        }
    }

    /// With synchronous replication, whatever reached the old primary after the standby left
    /// waits invisibly for it. Turns synchronous replication off there and waits (bounded) until
    /// no backend waits any more, so its data shows everything that reached it.
    pub async fn release_sync_waits_on_primary(&self) {
        let old = self.primary.clone();
        let what = "release synchronous-commit waits on the old primary";
        let left = blocking(what, move || {
            old.psql("ALTER SYSTEM SET synchronous_standby_names = ''")?;
            old.psql("SELECT pg_reload_conf()")?;
            let deadline = Instant::now() + STEP;
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'";
            loop {
                let n = old.psql(sql)?;
                if n == "0" || Instant::now() >= deadline {
                    return Ok(n);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .await;
        assert_eq!(
            left, "0",
            "backends still waiting for synchronous replication"
        );
    }
}

/// A request's outcome and when it arrived.
pub type Answer = (
    Result<Vec<SimpleQueryMessage>, tokio_postgres::Error>,
    Instant,
);

/// Sends `sql` (simple protocol) from a task; the answer comes with its arrival time.
pub fn send(client: &Arc<Client>, sql: &'static str) -> JoinHandle<Answer> {
    let client = client.clone();
    tokio::spawn(async move {
        let r = client.simple_query(sql).await;
        (r, Instant::now())
    })
}

/// The first column of the first row of a simple-query answer.
pub fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    })
}

/// Runs `sql` (simple protocol), failing the test on error.
pub async fn step(client: &Client, sql: &str) {
    within(STEP, sql, client.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", why(&e)));
}

/// An error with its severity, SQLSTATE and message (tokio-postgres' `Display` says only
/// "db error").
pub fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => format!("{e} ({e:?})"),
    }
}

/// `pg_is_in_recovery()` and `inet_server_port()` of the server a statement runs on.
pub async fn where_am_i(name: &str, client: &Client) -> (bool, i32) {
    let sql = "select pg_is_in_recovery(), inet_server_port()";
    let row = within(STEP, name, client.query_one(sql, &[]))
        .await
        .unwrap_or_else(|e| panic!("{name}: statement on the proxy: {}", why(&e)));
    (row.get(0), row.get(1))
}
