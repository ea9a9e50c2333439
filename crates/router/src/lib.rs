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
    config: ClusterConfig,
    settings: MonitorSettings,
    tls: Arc<ToServer>,
    monitor: Arc<ClusterMonitor>,
    stop: CancellationToken,
}

pub struct Router {
    clusters: Mutex<HashMap<String, Entry>>,
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

/// How the probes of a cluster connect to each member.
fn probe_params(
    config: &Config,
    cluster: &ClusterConfig,
    tls: &Arc<ToServer>,
) -> Vec<ConnectParams> {
    let user = config.probe_user(cluster);
    let s = &config.server;
    cluster
        .members
        .iter()
        .map(|addr| ConnectParams {
            addr: addr.clone(),
            user: user
                .map(|u| u.server_user().to_string())
                .unwrap_or_else(|| "postgres".into()),
            database: cluster.probe_database.clone(),
            password: user.and_then(|u| u.server_password()).map(str::to_string),
            connect_timeout: config.failover.probe_timeout.get(),
            socket: socket_options(s),
            allowed_auth: allowed_auth(s),
            tls: tls.clone(),
        })
        .collect()
}

impl Router {
    pub fn new(pools: Arc<Pools>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            clusters: Mutex::new(HashMap::new()),
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
        // What a monitor restarted by the reload takes over (see `Carried`).
        let mut replaced: HashMap<String, Arc<ClusterMonitor>> = HashMap::new();
        clusters.retain(|name, e| {
            let keep = config.clusters.get(name) == Some(&e.config)
                && e.settings == settings
                && *e.tls == **tls;
            if !keep {
                e.stop.cancel();
                self.retired_generations
                    .fetch_max(e.monitor.generation(), Ordering::Relaxed);
                replaced.insert(name.clone(), e.monitor.clone());
            }
            keep
        });
        // Above every generation in use, stopped or running.
        let floor = clusters
            .values()
            .map(|e| e.monitor.generation())
            .fold(self.retired_generations.load(Ordering::Relaxed), u64::max);
        for (name, c) in &config.clusters {
            if clusters.contains_key(name) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let previous = replaced.remove(name);
            let before = previous.as_ref().map(|m| (m.generation(), m.view()));
            let carried = Carried {
                after_generation: floor,
                previous: previous.map(|m| (*m).clone()),
            };
            let monitor = Arc::new(ClusterMonitor::start_after(
                name,
                probe_params(config, c, tls),
                settings.clone(),
                stop.clone(),
                carried,
            ));
            if let Some((generation, view)) = before
                && monitor.generation() > generation
            {
                // The primary was not kept (removed, or fenced): what was attached to it under
                // the old numbers is cut off, on old members and new.
                let mut members: Vec<String> = c.members.clone();
                members.extend(view.members.iter().map(|m| m.addr.clone()));
                self.pools.retire_before(&members, monitor.generation());
            }
            tokio::spawn(retire_loop(
                (*monitor).clone(),
                self.pools.clone(),
                stop.clone(),
            ));
            tracing::info!(cluster = %name, members = ?c.members, "watching cluster");
            clusters.insert(
                name.clone(),
                Entry {
                    config: c.clone(),
                    settings: settings.clone(),
                    tls: tls.clone(),
                    monitor,
                    stop,
                },
            );
        }
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
