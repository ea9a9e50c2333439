//! `/metrics`: the Prometheus text exposition, encoded by prometheus-client from a [`Collector`]
//! that reads the live state at scrape time (pools, monitors, the data path's counters, the
//! incident history), so the data path keeps plain atomics and pays nothing for metrics.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use switchyard_topology::ClusterState;
use switchyard_topology::counters::LatencyHistogram;

use crate::incident::Stage;
use crate::state::AdminState;

type Labels = Vec<(&'static str, String)>;

/// Reads [`AdminState`] on every scrape.
#[derive(Clone)]
struct Live(Arc<AdminState>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("switchyard live state")
    }
}

/// The exposition, in the Prometheus text format (version 0.0.4).
pub fn render(state: &Arc<AdminState>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Live(state.clone())));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// One metric family being written.
struct Family<'a, 'b> {
    encoder: &'b mut DescriptorEncoder<'a>,
}

impl Family<'_, '_> {
    fn gauges(&mut self, name: &str, help: &str, rows: &[(Labels, f64)]) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in rows {
            ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn counters<N: EncodeCounterValue + Copy>(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, N)],
    ) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in rows {
            ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        rows: &[(Labels, &LatencyHistogram)],
    ) -> std::fmt::Result {
        let mut m = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in rows {
            let (sum, count, buckets) = h.snapshot();
            let mut with_inf = buckets;
            with_inf.push((f64::INFINITY, count));
            m.encode_family(labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, count, &with_inf, None,
                )?;
        }
        Ok(())
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let state = &self.0;
        let mut f = Family {
            encoder: &mut encoder,
        };
        let proxy = &state.proxy;
        f.gauges(
            "switchyard_clients_connected",
            "Client connections open now",
            &[(vec![], proxy.client_count() as f64)],
        )?;
        f.gauges(
            "switchyard_clients_parked",
            "Idle clients parked now (park_idle_after): no task, woken by their next bytes",
            &[(vec![], proxy.parked_count() as f64)],
        )?;
        pools(&mut f, state)?;
        clusters(&mut f, state)?;
        incidents(&mut f, state)
    }
}

fn pools(f: &mut Family<'_, '_>, state: &AdminState) -> std::fmt::Result {
    let mut servers = Vec::new();
    let mut waiting = Vec::new();
    for (key, pool) in state.proxy.pools.all() {
        let s = pool.stats();
        let labels = |extra: Option<&'static str>| {
            let mut l: Labels = vec![
                ("server", key.addr.clone()),
                ("database", key.database.clone()),
                ("user", key.user.clone()),
            ];
            if let Some(st) = extra {
                l.push(("state", st.to_owned()));
            }
            l
        };
        servers.push((labels(Some("idle")), s.idle as f64));
        servers.push((labels(Some("active")), s.active as f64));
        waiting.push((labels(None), s.waiting as f64));
    }
    f.gauges(
        "switchyard_pool_servers",
        "Server connections per pool, by state",
        &servers,
    )?;
    f.gauges(
        "switchyard_pool_clients_waiting",
        "Clients waiting for a server connection",
        &waiting,
    )
}

fn clusters(f: &mut Family<'_, '_>, state: &AdminState) -> std::fmt::Result {
    let monitors = state.proxy.router.monitors();
    let cl = |name: &str| -> Labels { vec![("cluster", name.to_owned())] };
    let mut generation = Vec::new();
    let mut has_primary = Vec::new();
    let mut transactions = Vec::new();
    let mut queries = Vec::new();
    let mut latency = Vec::new();
    let mut query_latency = Vec::new();
    let mut caught = Vec::new();
    let mut hold_seconds = Vec::new();
    let mut lost_elsewhere = Vec::new();
    let mut role = Vec::new();
    let mut health = Vec::new();
    let mut probes = Vec::new();
    let mut probe_latency = Vec::new();
    for m in &monitors {
        let view = m.view();
        let name = m.name();
        let c = m.counters();
        generation.push((cl(name), view.generation as f64));
        has_primary.push((
            cl(name),
            f64::from(u8::from(matches!(view.state, ClusterState::Primary { .. }))),
        ));
        transactions.push((cl(name), c.transactions()));
        queries.push((cl(name), c.queries.get()));
        latency.push((cl(name), &c.transaction_latency));
        query_latency.push((cl(name), &c.query_latency));
        for o in c.caught_totals().outcomes() {
            let mut l = cl(name);
            l.push(("outcome", o.label.to_owned()));
            caught.push((l, o.count));
        }
        hold_seconds.push((cl(name), c.held_us.load(Ordering::Relaxed) as f64 / 1e6));
        lost_elsewhere.push((cl(name), c.lost_outside_failover.load(Ordering::Relaxed)));
        for member in &view.members {
            let member_labels = |extra: (&'static str, String)| {
                vec![
                    ("cluster", name.to_owned()),
                    ("member", member.addr.clone()),
                    extra,
                ]
            };
            let r = view.role_of(member);
            role.push((member_labels(("role", r.to_owned())), 1.0));
            for h in ["Unknown", "Up", "Suspect", "Down"] {
                let on = member.health.name() == h;
                health.push((
                    member_labels(("health", h.to_lowercase())),
                    f64::from(u8::from(on)),
                ));
            }
        }
        for (addr, p) in m.probes() {
            let labels = |result: &str| {
                vec![
                    ("cluster", name.to_owned()),
                    ("member", addr.to_owned()),
                    ("result", result.to_owned()),
                ]
            };
            probes.push((labels("ok"), p.ok.load(Ordering::Relaxed)));
            probes.push((labels("failed"), p.failed.load(Ordering::Relaxed)));
            probe_latency.push((
                vec![("cluster", name.to_owned()), ("member", addr.to_owned())],
                &p.latency,
            ));
        }
    }
    f.gauges(
        "switchyard_cluster_generation",
        "Topology generation (bumps on every change of primary)",
        &generation,
    )?;
    f.gauges(
        "switchyard_cluster_has_primary",
        "1 if the cluster has a primary now",
        &has_primary,
    )?;
    f.counters(
        "switchyard_transactions",
        "Transactions (transaction mode) or session attachments completed",
        &transactions,
    )?;
    f.counters(
        "switchyard_queries",
        "Requests answered by servers (ReadyForQuery)",
        &queries,
    )?;
    f.histograms(
        "switchyard_transaction_duration_seconds",
        "Time a client held a server connection",
        &latency,
    )?;
    f.histograms(
        "switchyard_query_duration_seconds",
        "Time from a request sent to the server to its ReadyForQuery",
        &query_latency,
    )?;
    f.counters(
        "switchyard_failover_requests",
        "Requests caught by a failover or a missing primary, by outcome",
        &caught,
    )?;
    f.counters(
        "switchyard_requests_lost_outside_failover",
        "Requests whose server connection was lost while the primary stayed (a terminated backend, a network blip)",
        &lost_elsewhere,
    )?;
    f.counters(
        "switchyard_gate_hold_seconds",
        "Total time requests waited in the failover gate",
        &hold_seconds,
    )?;
    f.gauges(
        "switchyard_member_role",
        "Member role as the probes see it (1 per member)",
        &role,
    )?;
    f.gauges(
        "switchyard_member_health",
        "Member health state (1 for the current one)",
        &health,
    )?;
    f.counters("switchyard_probes", "Probes per member, by result", &probes)?;
    f.histograms(
        "switchyard_probe_duration_seconds",
        "Probe round-trip time",
        &probe_latency,
    )
}

fn incidents(f: &mut Family<'_, '_>, state: &AdminState) -> std::fmt::Result {
    let all = state.incidents();
    let failovers = state.failovers();
    let mut detection: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    for inc in all.iter().rev() {
        if let Some(ms) = inc.detection_ms {
            detection.insert(inc.cluster.clone(), ms as f64 / 1000.0);
        }
    }
    let open = all.iter().filter(|i| i.stage != Stage::Resolved).count();
    let rows = |m: &std::collections::BTreeMap<String, u64>| -> Vec<(Labels, u64)> {
        m.iter()
            .map(|(c, n)| (vec![("cluster", c.clone())], *n))
            .collect()
    };
    f.counters(
        "switchyard_failovers",
        "Failovers followed (incidents whose primary changed); starts from the kept history at a restart",
        &rows(&failovers),
    )?;
    let det: Vec<(Labels, f64)> = detection
        .iter()
        .map(|(c, s)| (vec![("cluster", c.clone())], *s))
        .collect();
    f.gauges(
        "switchyard_failover_detection_seconds",
        "Last incident: time from the old primary's last good probe to the decision",
        &det,
    )?;
    f.gauges(
        "switchyard_incidents_open",
        "Incidents not yet resolved",
        &[(vec![], open as f64)],
    )
}
