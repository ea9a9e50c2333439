//! What `/api/clusters` and the status page show of each cluster and site, read from the live
//! state: role, health, timeline and lag of every member, the generation, the open incident.

use serde::Serialize;
use std::sync::atomic::Ordering;

use switchyard_topology::ClusterState;

use crate::incident::Stage;
use crate::state::AdminState;

#[derive(Debug, Clone, Serialize)]
pub struct ClusterSnapshot {
    pub name: String,
    /// `primary`, `no_primary` or `conflict`.
    pub state: &'static str,
    pub primary: Option<String>,
    pub generation: u64,
    /// Seconds since the state last changed.
    pub state_age_s: f64,
    pub members: Vec<MemberSnapshot>,
    pub transactions: u64,
    pub open_incident: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberSnapshot {
    pub addr: String,
    /// `primary`, `standby`, `writable_not_primary` (fenced, or an old primary) or `unknown`.
    pub role: &'static str,
    pub health: String,
    pub fenced: bool,
    pub timeline: Option<u32>,
    /// Bytes of WAL behind the primary (standbys).
    pub lag_bytes: Option<u64>,
    pub probes_ok: u64,
    pub probes_failed: u64,
    pub last_probe_ms: f64,
}

/// Per site (database pattern): where it is served and how it is doing.
#[derive(Debug, Clone, Serialize)]
pub struct SiteSnapshot {
    pub database: String,
    pub cluster: String,
    /// `operational`, `degraded` (an incident is open but a primary is known) or `outage`.
    pub status: &'static str,
}

pub fn clusters(state: &AdminState) -> Vec<ClusterSnapshot> {
    let incidents = state.incidents();
    state
        .proxy
        .router
        .monitors()
        .iter()
        .map(|m| {
            let view = m.view();
            let primary = view.primary_addr().map(str::to_owned);
            let probes: Vec<_> = m.probes().collect();
            let members = view
                .members
                .iter()
                .zip(&probes)
                .map(|(member, (_, p))| {
                    let facts = member.facts.as_ref();
                    MemberSnapshot {
                        addr: member.addr.clone(),
                        role: view.role_of(member),
                        health: member.health.name().to_owned(),
                        fenced: member.fenced,
                        timeline: facts.map(|f| f.timeline),
                        lag_bytes: view.lag_of(member),
                        probes_ok: p.ok.load(Ordering::Relaxed),
                        probes_failed: p.failed.load(Ordering::Relaxed),
                        last_probe_ms: p.last_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
                    }
                })
                .collect();
            ClusterSnapshot {
                name: m.name().to_owned(),
                state: match view.state {
                    ClusterState::Primary { .. } => "primary",
                    ClusterState::NoPrimary => "no_primary",
                    ClusterState::Conflict(_) => "conflict",
                },
                primary,
                generation: view.generation,
                state_age_s: view.since.elapsed().as_secs_f64(),
                members,
                transactions: m.counters().transactions(),
                open_incident: incidents
                    .iter()
                    .find(|i| i.cluster == m.name() && i.stage != Stage::Resolved)
                    .map(|i| i.id),
            }
        })
        .collect()
}

pub fn sites(state: &AdminState, clusters: &[ClusterSnapshot]) -> Vec<SiteSnapshot> {
    let live = state.proxy.live.load();
    live.config
        .sites
        .iter()
        .map(|site| {
            let c = clusters.iter().find(|c| c.name == site.cluster);
            let status = match c {
                Some(c) if c.state != "primary" => "outage",
                Some(c) if c.open_incident.is_some() => "degraded",
                Some(_) => "operational",
                None => "outage",
            };
            SiteSnapshot {
                database: site.database.clone(),
                cluster: site.cluster.clone(),
                status,
            }
        })
        .collect()
}
