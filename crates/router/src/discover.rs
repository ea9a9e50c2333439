//! Members learned from outside the config: a DNS endpoint (one name the cluster manager moves to
//! the primary, as a managed database has) and Patroni's member list. Every address learned
//! becomes a member, judged by the same probes as a configured one: a name or a leader is a hint
//! where to look, never evidence of which member is the primary. The sources are asked again
//! when their answer runs out (the name's TTL, capped by `dns_max_ttl`, or by
//! `dns_max_ttl_unhealthy` while the cluster has no healthy primary; Patroni every few seconds)
//! and at once on every failure signal (a member no longer up, a new generation).

use crate::Router;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;
use switchyard_config::{ClusterConfig, FailoverConfig};
use switchyard_topology::{ClusterState, TopologyView};
use tokio_util::sync::CancellationToken;

/// How often Patroni's member list is read while the cluster is healthy.
const PATRONI_POLL: Duration = Duration::from_secs(5);

/// What a discovery loop was started with: a change starts a new loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiscoverySettings {
    pub endpoint: Option<String>,
    pub patroni: Vec<String>,
    pub dns_servers: Vec<String>,
    pub max_ttl: Duration,
    pub max_ttl_unhealthy: Duration,
    pub timeout: Duration,
}

impl DiscoverySettings {
    /// `None` for a cluster with nothing to discover.
    pub fn new(c: &ClusterConfig, f: &FailoverConfig) -> Option<Self> {
        if c.endpoint.is_none() && c.patroni.is_empty() {
            return None;
        }
        Some(Self {
            endpoint: c.endpoint.clone(),
            patroni: c.patroni.clone(),
            dns_servers: f.dns_servers.clone(),
            max_ttl: f.dns_max_ttl.get(),
            max_ttl_unhealthy: f.dns_max_ttl_unhealthy.get(),
            timeout: f.probe_timeout.get().max(Duration::from_secs(1)),
        })
    }
}

/// A resolver for `servers` (`host:port` of DNS servers; empty: the system's). It keeps no
/// cache: how long an answer is used is decided here, not by the resolver.
fn resolver(servers: &[String]) -> Result<TokioResolver, String> {
    let mut builder = if servers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let mut config = ResolverConfig::from_parts(None, vec![], vec![]);
        for s in servers {
            let addr: SocketAddr = s
                .parse()
                .map_err(|_| format!("dns server {s:?} is not an address like 10.0.0.2:53"))?;
            let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
            for c in &mut ns.connections {
                c.port = addr.port();
            }
            config.add_name_server(ns);
        }
        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
    };
    builder.options_mut().cache_size = 0;
    builder.build().map_err(|e| e.to_string())
}

/// The cluster has a primary and every member it knows is up.
fn healthy(view: &TopologyView) -> bool {
    matches!(view.state, ClusterState::Primary { .. })
        && view
            .members
            .iter()
            .all(|m| m.health == switchyard_topology::Health::Up || m.fenced)
}

/// What counts as a failure signal: the generation, and which members are not up.
fn signature(view: &TopologyView) -> (u64, Vec<bool>) {
    let down = view
        .members
        .iter()
        .map(|m| m.health != switchyard_topology::Health::Up)
        .collect();
    (view.generation, down)
}

/// Asks `cluster`'s sources until `stop`, telling the router each address it learns.
pub(crate) async fn run(
    router: Weak<Router>,
    cluster: String,
    s: DiscoverySettings,
    stop: CancellationToken,
) {
    let endpoint = s
        .endpoint
        .as_deref()
        .and_then(|e| e.rsplit_once(':'))
        .map(|(host, port)| (host.to_owned(), port.parse::<u16>().unwrap_or(5432)));
    let resolver = match endpoint.as_ref().map(|_| resolver(&s.dns_servers)) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            tracing::error!(%cluster, error = %e, "cannot resolve the endpoint");
            None
        }
    };
    loop {
        let Some(monitor) = router.upgrade().and_then(|r| r.monitor(&cluster)) else {
            return;
        };
        let mut views = monitor.subscribe();
        let view = views.borrow_and_update().clone();
        let cap = if healthy(&view) {
            s.max_ttl
        } else {
            s.max_ttl_unhealthy
        };
        let mut wait = cap;
        let mut learned = Vec::new();
        if let (Some(resolver), Some((host, port))) = (&resolver, &endpoint) {
            match tokio::time::timeout(s.timeout, resolver.lookup_ip(host.as_str())).await {
                Ok(Ok(answer)) => {
                    learned.extend(
                        answer
                            .iter()
                            .map(|ip| SocketAddr::new(ip, *port).to_string()),
                    );
                    let ttl = answer
                        .valid_until()
                        .saturating_duration_since(std::time::Instant::now());
                    wait = wait.min(ttl);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%cluster, endpoint = %host, error = %e, "endpoint did not resolve");
                    wait = wait.min(Duration::from_secs(1));
                }
                Err(_) => {
                    tracing::warn!(%cluster, endpoint = %host, "endpoint did not resolve in time");
                    wait = wait.min(Duration::from_secs(1));
                }
            }
        }
        if !s.patroni.is_empty() {
            match crate::patroni::members(&s.patroni, s.timeout).await {
                Ok((addrs, leader)) => {
                    tracing::debug!(%cluster, ?addrs, ?leader, "Patroni's members (its leader is a hint only)");
                    learned.extend(addrs);
                    wait = wait.min(PATRONI_POLL);
                }
                Err(e) => {
                    tracing::warn!(%cluster, error = %e, "Patroni's member list could not be read");
                    wait = wait.min(Duration::from_secs(1));
                }
            }
        }
        if !learned.is_empty()
            && let Some(router) = router.upgrade()
        {
            router.learn(&cluster, &learned);
        }
        // At least a little: a TTL of 0 must not spin.
        let wait = wait.max(Duration::from_millis(100));
        let before = signature(&view);
        let failure_signal = async {
            loop {
                if views.changed().await.is_err() {
                    // The monitor was replaced (a member learned, a reload): look again.
                    return;
                }
                if signature(&views.borrow_and_update()) != before {
                    return;
                }
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = failure_signal => {}
            () = stop.cancelled() => return,
        }
    }
}
