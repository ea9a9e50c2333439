//! The router: one [`ClusterMonitor`] per configured cluster, and the failover gate.
//!
//! [`Router::primary`] answers "where do writes go now?": at once while a cluster has a primary,
//! after a bounded wait while it has none (the gate), or with an error when the wait runs out or
//! two members are writable. [`Router::reconcile`] keeps the monitors in step with the config;
//! a retire loop per cluster drops idle server connections of generations that are over.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_config::{ClusterConfig, Config};
use switchyard_pool::Pools;
use switchyard_server::{AllowedAuth, ConnectParams, SocketOptions};
use switchyard_tls::{ServerTlsMode, TlsError, ToServer};
use switchyard_topology::{
    Carried, ClusterMonitor, ClusterState, MonitorSettings, Thresholds, TopologyView,
};
use tokio_util::sync::CancellationToken;

mod discover;
mod patroni;

/// Where a transaction goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub addr: String,
    pub generation: u64,
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RouteError {
    #[error("no primary for cluster {cluster:?} within {waited:?}")]
    NoPrimary { cluster: String, waited: Duration },
    #[error("cluster {cluster:?} has several writable members ({members}); writes are refused")]
    Conflict { cluster: String, members: String },
    #[error("cluster {0:?} is not configured")]
    UnknownCluster(String),
}

struct Entry {
    /// As configured (without the addresses learned from its endpoint or Patroni).
    config: ClusterConfig,
    settings: MonitorSettings,
    tls: Arc<ToServer>,
    /// How the probes connect (the address aside).
    probe: ConnectParams,
    /// Addresses learned from the cluster's endpoint or Patroni, members like the configured ones.
    resolved: Vec<String>,
    monitor: Arc<ClusterMonitor>,
    stop: CancellationToken,
}

impl Entry {
    /// Configured members, then learned ones.
    fn members(&self) -> Vec<String> {
        members_with(&self.config, &self.resolved)
    }
}

fn members_with(c: &ClusterConfig, resolved: &[String]) -> Vec<String> {
    let mut all = c.members.clone();
    all.extend(resolved.iter().filter(|a| !c.members.contains(a)).cloned());
    all
}

/// Most addresses kept from the sources' answers (the oldest ones no longer in the answer go
/// first): a name that moves among many addresses must not grow the member list for ever.
const MAX_RESOLVED: usize = 16;

/// The name a member's TLS certificate must carry, when it is not the member's own host: the
/// endpoint's, for an address learned from it.
pub fn server_name(c: &ClusterConfig, addr: &str) -> Option<String> {
    if c.members.iter().any(|m| m == addr) {
        return None;
    }
    c.endpoint
        .as_deref()
        .map(|e| switchyard_tls::host_of(e).to_owned())
}

pub struct Router {
    /// This router, for the discovery loops it starts.
    me: std::sync::Weak<Router>,
    clusters: Mutex<HashMap<String, Entry>>,
    /// One discovery loop per cluster with an endpoint or Patroni, with what it was started with.
    discovery: Mutex<HashMap<String, (discover::DiscoverySettings, CancellationToken)>>,
    pools: Arc<Pools>,
    shutdown: CancellationToken,
    /// The highest generation any monitor this router stopped had reached: a new monitor
    /// numbers after it, so generations only grow (pools retire by number).
    retired_generations: std::sync::atomic::AtomicU64,
}

fn monitor_settings(config: &Config) -> MonitorSettings {
    let f = &config.failover;
    MonitorSettings {
        probe_interval: f.probe_interval.get(),
        fast_interval: f.fast_probe_interval.get(),
        probe_timeout: f.probe_timeout.get(),
        thresholds: Thresholds {
            down_after: f.down_after,
            up_after: f.up_after,
        },
    }
}

/// Socket options of every server connection (pooled and probes), from `[server]`.
pub fn socket_options(s: &switchyard_config::ServerConfig) -> SocketOptions {
    SocketOptions {
        keepalive_idle: s.keepalive_idle.get(),
        keepalive_interval: s.keepalive_interval.get(),
        keepalive_count: s.keepalive_count,
        tcp_user_timeout: s.tcp_user_timeout.get(),
    }
}

/// The server authentication methods `[server] require_auth` allows.
pub fn allowed_auth(s: &switchyard_config::ServerConfig) -> AllowedAuth {
    use switchyard_config::ServerAuthMethod as M;
    let has = |m: M| s.require_auth.contains(&m);
    AllowedAuth {
        none: has(M::None),
        password: has(M::Password),
        md5: has(M::Md5),
        scram: has(M::ScramSha256),
    }
}

/// TLS to servers from `[server] tls` and `tls_ca_file` (files read now: build it once per
/// config load).
pub fn server_tls(s: &switchyard_config::ServerConfig) -> Result<ToServer, TlsError> {
    use switchyard_config::ServerTls as T;
    let mode = match s.tls {
        T::Disable => ServerTlsMode::Disable,
        T::Prefer => ServerTlsMode::Prefer,
        T::Require => ServerTlsMode::Require,
        T::VerifyCa => ServerTlsMode::VerifyCa,
        T::VerifyFull => ServerTlsMode::VerifyFull,
    };
    let ca = (!s.tls_ca_file.is_empty()).then(|| std::path::Path::new(&s.tls_ca_file));
    ToServer::new(mode, ca)
}

/// How the probes of a cluster connect (to any member: `addr` is left empty).
fn probe_template(config: &Config, cluster: &ClusterConfig, tls: &Arc<ToServer>) -> ConnectParams {
    let user = config.probe_user(cluster);
    let s = &config.server;
    ConnectParams {
        addr: String::new(),
        server_name: None,
        user: user
            .map(|u| u.server_user().to_string())
            .unwrap_or_else(|| "postgres".into()),
        database: cluster.probe_database.clone(),
        credential: user
            .and_then(|u| u.server_password())
            .map(str::to_string)
            .into(),
        connect_timeout: config.failover.probe_timeout.get(),
        socket: socket_options(s),
        allowed_auth: allowed_auth(s),
        tls: tls.clone(),
        probe_commits: false,
        probe_writes: false,
    }
}

/// How the probes connect to each of `members`.
fn probe_params(
    template: &ConnectParams,
    c: &ClusterConfig,
    members: &[String],
) -> Vec<ConnectParams> {
    members
        .iter()
        .map(|addr| ConnectParams {
            addr: addr.clone(),
            server_name: server_name(c, addr),
            ..template.clone()
        })
        .collect()
}

impl Router {
    pub fn new(pools: Arc<Pools>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            clusters: Mutex::new(HashMap::new()),
            discovery: Mutex::new(HashMap::new()),
            pools,
            shutdown,
            retired_generations: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.clusters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts monitors for new or changed clusters and stops those no longer configured.
    /// `tls`: the config's [`server_tls`], for the probes.
    pub fn reconcile(&self, config: &Config, tls: &Arc<ToServer>) {
        let settings = monitor_settings(config);
        let mut clusters = self.lock();
        // What a monitor restarted by the reload takes over (see `Carried`), and the addresses
        // its endpoint or Patroni had named.
        let mut replaced: HashMap<String, (Arc<ClusterMonitor>, Vec<String>)> = HashMap::new();
        clusters.retain(|name, e| {
            let keep = config.clusters.get(name) == Some(&e.config)
                && e.settings == settings
                && *e.tls == **tls
                && e.probe == probe_template(config, &e.config, tls);
            if !keep {
                e.stop.cancel();
                self.retired_generations
                    .fetch_max(e.monitor.generation(), Ordering::Relaxed);
                replaced.insert(name.clone(), (e.monitor.clone(), e.resolved.clone()));
            }
            keep
        });
        for (name, c) in &config.clusters {
            if clusters.contains_key(name) {
                continue;
            }
            let (previous, resolved) = match replaced.remove(name) {
                Some((m, resolved)) if c.endpoint.is_some() || !c.patroni.is_empty() => {
                    (Some(m), resolved)
                }
                Some((m, _)) => (Some(m), Vec::new()),
                None => (None, Vec::new()),
            };
            let entry = self.start_monitor(
                &clusters,
                name,
                c.clone(),
                settings.clone(),
                tls.clone(),
                probe_template(config, c, tls),
                resolved,
                previous,
            );
            clusters.insert(name.clone(), entry);
        }
        drop(clusters);
        self.reconcile_discovery(config);
    }

    /// Starts (or restarts, taking over `previous`) the monitor of cluster `name`.
    #[allow(clippy::too_many_arguments)]
    fn start_monitor(
        &self,
        clusters: &HashMap<String, Entry>,
        name: &str,
        c: ClusterConfig,
        settings: MonitorSettings,
        tls: Arc<ToServer>,
        probe: ConnectParams,
        resolved: Vec<String>,
        previous: Option<Arc<ClusterMonitor>>,
    ) -> Entry {
        // Above every generation in use, stopped or running.
        let floor = clusters
            .values()
            .map(|e| e.monitor.generation())
            .fold(self.retired_generations.load(Ordering::Relaxed), u64::max);
        let members = members_with(&c, &resolved);
        let stop = self.shutdown.child_token();
        let before = previous.as_ref().map(|m| (m.generation(), m.view()));
        let carried = Carried {
            after_generation: floor,
            previous: previous.map(|m| (*m).clone()),
        };
        let monitor = Arc::new(ClusterMonitor::start_after(
            name,
            probe_params(&probe, &c, &members),
            settings.clone(),
            stop.clone(),
            carried,
        ));
        if let Some((generation, view)) = before
            && monitor.generation() > generation
        {
            // The primary was not kept (removed, or fenced): what was attached to it under
            // the old numbers is cut off, on old members and new.
            let mut all = members.clone();
            all.extend(view.members.iter().map(|m| m.addr.clone()));
            self.pools.retire_before(&all, monitor.generation());
        }
        tokio::spawn(retire_loop(
            (*monitor).clone(),
            self.pools.clone(),
            stop.clone(),
        ));
        tracing::info!(cluster = %name, ?members, endpoint = ?c.endpoint, "watching cluster");
        Entry {
            config: c,
            settings,
            tls,
            probe,
            resolved,
            monitor,
            stop,
        }
    }

    /// Keeps one discovery loop per cluster that has an endpoint or Patroni, started with its
    /// settings.
    fn reconcile_discovery(&self, config: &Config) {
        let mut loops = self.discovery.lock().unwrap_or_else(|p| p.into_inner());
        let wanted: HashMap<String, discover::DiscoverySettings> = config
            .clusters
            .iter()
            .filter_map(|(name, c)| {
                let settings = discover::DiscoverySettings::new(c, &config.failover)?;
                Some((name.clone(), settings))
            })
            .collect();
        loops.retain(|name, (settings, stop)| {
            let keep = wanted.get(name) == Some(settings);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for (name, settings) in wanted {
            if loops.contains_key(&name) {
                continue;
            }
            let stop = self.shutdown.child_token();
            tokio::spawn(discover::run(
                self.me.clone(),
                name.clone(),
                settings.clone(),
                stop.clone(),
            ));
            loops.insert(name, (settings, stop));
        }
    }

    /// A source (endpoint, Patroni) named `addrs`: those not yet members become members (the monitor
    /// restarts with them, taking over the primary, its generation and fences, as on a reload).
    pub(crate) fn learn(&self, cluster: &str, addrs: &[String]) {
        let mut clusters = self.lock();
        let Some(e) = clusters.get(cluster) else {
            return;
        };
        let known = e.members();
        let new: Vec<String> = addrs
            .iter()
            .filter(|a| !known.contains(a))
            .cloned()
            .collect();
        if new.is_empty() {
            return;
        }
        let Some(e) = clusters.remove(cluster) else {
            return;
        };
        tracing::info!(%cluster, addresses = ?new, "new addresses from the endpoint or Patroni: watching them as members");
        e.stop.cancel();
        self.retired_generations
            .fetch_max(e.monitor.generation(), Ordering::Relaxed);
        let mut resolved = e.resolved;
        resolved.extend(new);
        while resolved.len() > MAX_RESOLVED {
            match resolved.iter().position(|a| !addrs.contains(a)) {
                Some(i) => resolved.remove(i),
                None => break,
            };
        }
        let entry = self.start_monitor(
            &clusters,
            cluster,
            e.config,
            e.settings,
            e.tls,
            e.probe,
            resolved,
            Some(e.monitor),
        );
        clusters.insert(cluster.to_owned(), entry);
    }

    /// Every member of `cluster` now: configured ones and those learned (endpoint, Patroni).
    pub fn members(&self, cluster: &str) -> Vec<String> {
        self.lock()
            .get(cluster)
            .map(Entry::members)
            .unwrap_or_default()
    }

    pub fn monitor(&self, cluster: &str) -> Option<Arc<ClusterMonitor>> {
        self.lock().get(cluster).map(|e| e.monitor.clone())
    }

    /// Every cluster's monitor, by cluster name.
    pub fn monitors(&self) -> Vec<Arc<ClusterMonitor>> {
        let mut all: Vec<_> = self.lock().values().map(|e| e.monitor.clone()).collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The current primary of `cluster`, waiting up to `gate` for one to appear.
    ///
    /// Cancel safety: cancel-safe.
    pub async fn primary(&self, cluster: &str, gate: Duration) -> Result<Route, RouteError> {
        let mut monitor = self
            .monitor(cluster)
            .ok_or_else(|| RouteError::UnknownCluster(cluster.to_string()))?;
        let mut rx = monitor.subscribe();
        let wait = async {
            loop {
                let view = rx.borrow_and_update().clone();
                match route(cluster, &view) {
                    Ok(Some(r)) => return Ok(r),
                    Err(e) => return Err(e),
                    Ok(None) => {}
                }
                if rx.changed().await.is_err() {
                    // A reload replaced the monitor: go on waiting on its successor.
                    match self.monitor(cluster) {
                        Some(next) if !Arc::ptr_eq(&next, &monitor) => {
                            monitor = next;
                            rx = monitor.subscribe();
                        }
                        _ => {
                            return Err(RouteError::NoPrimary {
                                cluster: cluster.to_string(),
                                waited: gate,
                            });
                        }
                    }
                }
            }
        };
        tokio::time::timeout(gate, wait).await.unwrap_or_else(|_| {
            Err(RouteError::NoPrimary {
                cluster: cluster.to_string(),
                waited: gate,
            })
        })
    }
}

/// `Ok(None)` while there is no primary yet.
fn route(cluster: &str, view: &TopologyView) -> Result<Option<Route>, RouteError> {
    match &view.state {
        ClusterState::Primary { addr, .. } => Ok(Some(Route {
            addr: addr.clone(),
            generation: view.generation,
        })),
        ClusterState::NoPrimary => Ok(None),
        ClusterState::Conflict(ids) => {
            let members: Vec<&str> = ids
                .iter()
                .filter_map(|i| view.members.get(*i))
                .map(|m| m.addr.as_str())
                .collect();
            Err(RouteError::Conflict {
                cluster: cluster.to_string(),
                members: members.join(", "),
            })
        }
    }
}

/// On every generation change, closes idle server connections opened under older generations.
async fn retire_loop(monitor: ClusterMonitor, pools: Arc<Pools>, stop: CancellationToken) {
    let mut rx = monitor.subscribe();
    let mut generation = rx.borrow().generation;
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = stop.cancelled() => return,
        }
        let now = rx.borrow_and_update().generation;
        if now != generation {
            generation = now;
            let members: Vec<String> = rx.borrow().members.iter().map(|m| m.addr.clone()).collect();
            pools.retire_before(&members, generation);
        }
    }
}
