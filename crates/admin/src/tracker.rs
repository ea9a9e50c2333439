//! The tracker loop: every [`TICK`], for each cluster, compares the monitor's view with the
//! previous one (events for topology, health and fence changes), samples the data-path
//! counters, and steps the cluster's incident (stored, logged, notified on every stage change).
//! It owns the per-cluster [`IncidentTrack`]s; the rest of the admin reads [`AdminState`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use switchyard_topology::counters::unix_ms;
use switchyard_topology::{ClusterMonitor, ClusterState, TopologyView};
use tokio_util::sync::CancellationToken;

use crate::events::EventKind;
use crate::incident::{IncidentTrack, Sample};
use crate::notify::Notifier;
use crate::state::AdminState;

/// How often clusters are sampled.
pub const TICK: Duration = Duration::from_millis(100);

/// What the tracker remembers of one cluster.
#[derive(Default)]
struct Tracked {
    track: IncidentTrack,
    last_view: Option<Arc<TopologyView>>,
    /// The primary before the current state (for the detection time).
    last_primary: Option<String>,
}

/// Runs until `stop`.
pub async fn run(state: Arc<AdminState>, notifier: Option<Notifier>, stop: CancellationToken) {
    let mut clusters: HashMap<String, Tracked> = HashMap::new();
    let mut next_id = state.last_incident_id();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let monitors = state.proxy.router.monitors();
        clusters.retain(|name, _| {
            let kept = monitors.iter().any(|m| m.name() == name);
            if !kept {
                state.close_incidents_of(
                    name,
                    "not followed further: the cluster left the configuration",
                );
            }
            kept
        });
        for m in monitors {
            let tracked = clusters.entry(m.name().to_owned()).or_default();
            let view = m.view();
            if let Some(last) = &tracked.last_view {
                log_changes(&state, m.name(), last, &view);
            }
            let sample = sample(&m, &view, tracked.last_primary.as_deref());
            let resolve_ms = state.resolve_after.as_millis() as u64;
            match tracked
                .track
                .step(m.name(), &sample, resolve_ms, &mut next_id)
            {
                Some(incident) => {
                    let last = incident.timeline.last();
                    state.event(
                        m.name(),
                        EventKind::Incident,
                        format!(
                            "incident #{} {}: {}",
                            incident.id,
                            incident.stage.name(),
                            last.map_or("", |t| t.note.as_str())
                        ),
                    );
                    state.put_incident(&incident, true);
                    if let Some(n) = &notifier {
                        n.notify(&incident);
                    }
                }
                None => match &tracked.track.open {
                    // Keep the open incident's scope current for the status page.
                    Some(open) => state.put_incident(open, false),
                    // Nothing open: touches and the longest hold start afresh.
                    None if sample.primary.is_some() => drop(m.counters().take_touched()),
                    None => {}
                },
            }
            if let ClusterState::Primary { addr, .. } = &view.state {
                tracked.last_primary = Some(addr.clone());
            }
            tracked.last_view = Some(view);
        }
    }
}

/// One cluster's sample.
fn sample(m: &ClusterMonitor, view: &TopologyView, last_primary: Option<&str>) -> Sample {
    let counters = m.counters();
    let primary = view.primary_addr().map(str::to_owned);
    let old_primary_last_ok_ms = last_primary.and_then(|old| {
        m.probes()
            .find(|(addr, _)| *addr == old)
            .map(|(_, p)| p.last_ok_unix_ms.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|&t| t > 0)
    });
    Sample {
        now_ms: unix_ms(),
        conflict: matches!(view.state, ClusterState::Conflict(_)),
        transactions: counters.transactions(),
        caught: counters.caught_totals(),
        sites: counters.touched().into_iter().collect(),
        old_primary_last_ok_ms,
        lag_bytes: view.standby_lag(),
        primary,
    }
}

/// Events for what changed between two views of a cluster.
fn log_changes(state: &AdminState, cluster: &str, last: &TopologyView, now: &TopologyView) {
    if last.state != now.state {
        let detail = match &now.state {
            ClusterState::Primary { addr, .. } => {
                format!("primary is {addr} (generation {})", now.generation)
            }
            ClusterState::NoPrimary => format!("no primary (generation {})", now.generation),
            ClusterState::Conflict(ids) => {
                let addrs: Vec<&str> = ids
                    .iter()
                    .filter_map(|&i| now.members.get(i).map(|m| m.addr.as_str()))
                    .collect();
                format!("conflict: several writable members {addrs:?}; writes refused")
            }
        };
        state.event(cluster, EventKind::Topology, detail);
    }
    // By address: a reload may add, remove or reorder members.
    for new in &now.members {
        let Some(old) = last.members.iter().find(|m| m.addr == new.addr) else {
            continue;
        };
        if old.health != new.health {
            state.event(
                cluster,
                EventKind::Health,
                format!(
                    "{}: {} → {}",
                    new.addr,
                    old.health.name(),
                    new.health.name()
                ),
            );
        }
        if old.fenced != new.fenced {
            let what = if new.fenced { "fenced" } else { "unfenced" };
            state.event(cluster, EventKind::Fence, format!("{} {what}", new.addr));
        }
    }
}
