//! From the site backends' logs to one path's figures: stuck requests, the longest stall,
//! latency during the incident, errors by SQLSTATE, time to the first write, and a timeline in
//! the style of a hosted status page. Pure functions over a snapshot, so they are tested alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::workload::{BackendLog, InFlight, Kind, Outcome, Request};

/// A request still unanswered at the end after this long is stuck (Switchyard's own bound is
/// 2 s from the fault; a request held in the failover gate is answered at the promotion).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// A request unanswered this long is visible trouble (the status page's "Investigating").
pub const TROUBLE_AFTER: Duration = Duration::from_secs(1);

/// When things happened, since the drill's start.
#[derive(Debug, Clone, Copy)]
pub struct Moments {
    pub fault: Duration,
    pub promoted: Option<Duration>,
    pub end: Duration,
}

/// What one site backend did, copied out of its log at the end.
#[derive(Debug, Clone, Default)]
pub struct BackendSnapshot {
    pub done: Vec<Request>,
    pub in_flight: Option<InFlight>,
    pub acked: Vec<i64>,
}

impl From<&BackendLog> for BackendSnapshot {
    fn from(log: &BackendLog) -> Self {
        BackendSnapshot {
            done: log.done.clone(),
            in_flight: log.in_flight,
            acked: log.acked.clone(),
        }
    }
}

/// Latency of the requests of the incident: every request answered after the fault, and every
/// request still unanswered at the end, counted at its age then (a lower bound: `*_unanswered`
/// says when a figure is one).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub requests: u64,
    pub p50_ms: Option<f64>,
    pub p50_unanswered: bool,
    pub p99_ms: Option<f64>,
    pub p99_unanswered: bool,
    pub max_ms: Option<f64>,
    pub max_unanswered: bool,
}

/// A status-page stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Stage {
    Investigating,
    Identified,
    Monitoring,
    Resolved,
}

/// One reached stage: when (seconds since the fault) and what it was.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineEntry {
    pub stage: Stage,
    pub at_s: f64,
    pub detail: String,
}

/// One path's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathFigures {
    pub path: &'static str,
    pub requests_answered: u64,
    pub requests_succeeded: u64,
    pub stuck: u64,
    pub longest_stall_s: f64,
    pub longest_stall_unanswered: bool,
    pub incident_latency: Latency,
    pub errors_by_sqlstate: BTreeMap<String, u64>,
    pub acked_writes: u64,
    pub lost_writes: Option<u64>,
    pub first_write_after_fault_s: Option<f64>,
    pub sites: u16,
    pub sites_recovered: u16,
    pub timeline: Vec<TimelineEntry>,
    pub unresolved: Option<String>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn since(at: Duration, origin: Duration) -> f64 {
    secs(at.saturating_sub(origin))
}

/// The figures of one path. `lost_writes` comes from the check on the new primary.
pub fn figures(
    path: &'static str,
    backends: &[BackendSnapshot],
    at: Moments,
    lost_writes: Option<u64>,
) -> PathFigures {
    let done = || backends.iter().flat_map(|b| b.done.iter());
    let unanswered: Vec<InFlight> = backends.iter().filter_map(|b| b.in_flight).collect();
    let stuck = unanswered
        .iter()
        .filter(|r| at.end.saturating_sub(r.start) > STUCK_AFTER)
        .count() as u64;
    let longest_done = done().map(|r| r.end - r.start).max().unwrap_or_default();
    let longest_open = unanswered
        .iter()
        .map(|r| at.end.saturating_sub(r.start))
        .max()
        .unwrap_or_default();
    let mut errors_by_sqlstate = BTreeMap::new();
    for r in done() {
        if let Outcome::Failed(code) = &r.outcome {
            *errors_by_sqlstate.entry(code.clone()).or_insert(0) += 1;
        }
    }
    let first_write = done()
        .filter(|r| r.kind == Kind::Write && r.outcome == Outcome::Ok && r.start >= at.fault)
        .map(|r| r.end)
        .min();
    let recovered = recovered_at(backends, at);
    let timeline = timeline(backends, at, &recovered);
    let unresolved = (timeline.last().map(|e| e.stage) != Some(Stage::Resolved)).then(|| {
        let waiting = backends.len() - recovered.iter().flatten().count();
        format!(
            "not resolved when the drill ended ({:.1} s after the fault): {waiting} of {} sites \
             had no successful request since the promotion, {stuck} requests stuck",
            since(at.end, at.fault),
            backends.len()
        )
    });
    PathFigures {
        path,
        requests_answered: done().count() as u64,
        requests_succeeded: done().filter(|r| r.outcome == Outcome::Ok).count() as u64,
        stuck,
        longest_stall_s: secs(longest_done.max(longest_open)),
        longest_stall_unanswered: longest_open > longest_done,
        incident_latency: latency(
            done()
                .filter(|r| r.end >= at.fault)
                .map(|r| (r.end - r.start, false))
                .chain(
                    unanswered
                        .iter()
                        .map(|r| (at.end.saturating_sub(r.start), true)),
                ),
        ),
        errors_by_sqlstate,
        acked_writes: backends.iter().map(|b| b.acked.len() as u64).sum(),
        lost_writes,
        first_write_after_fault_s: first_write.map(|t| since(t, at.fault)),
        sites: backends.len() as u16,
        sites_recovered: recovered.iter().flatten().count() as u16,
        timeline,
        unresolved,
    }
}

/// p50 / p99 / max of the latencies given, each flagged when it belongs to an unanswered request.
fn latency(requests: impl Iterator<Item = (Duration, bool)>) -> Latency {
    let mut all: Vec<(Duration, bool)> = requests.collect();
    all.sort();
    let pick = |q: f64| {
        let rank = ((q * all.len() as f64).ceil() as usize).clamp(1, all.len().max(1));
        all.get(rank - 1)
            .map(|&(d, open)| ((d.as_secs_f64() * 10_000.0).round() / 10.0, open))
    };
    let (p50, p99, max) = (pick(0.50), pick(0.99), pick(1.0));
    Latency {
        requests: all.len() as u64,
        p50_ms: p50.map(|p| p.0),
        p50_unanswered: p50.is_some_and(|p| p.1),
        p99_ms: p99.map(|p| p.0),
        p99_unanswered: p99.is_some_and(|p| p.1),
        max_ms: max.map(|p| p.0),
        max_unanswered: max.is_some_and(|p| p.1),
    }
}

/// Per backend: when its first successful request that started after the promotion ended.
fn recovered_at(backends: &[BackendSnapshot], at: Moments) -> Vec<Option<Duration>> {
    let Some(promoted) = at.promoted else {
        return vec![None; backends.len()];
    };
    backends
        .iter()
        .map(|b| {
            b.done
                .iter()
                .filter(|r| r.start >= promoted && r.outcome == Outcome::Ok)
                .map(|r| r.end)
                .min()
        })
        .collect()
}

/// The status-page stages this path reached, with times since the fault.
fn timeline(
    backends: &[BackendSnapshot],
    at: Moments,
    recovered: &[Option<Duration>],
) -> Vec<TimelineEntry> {
    let mut entries = Vec::new();
    let entry = |stage, t: Duration, detail: String| TimelineEntry {
        stage,
        at_s: since(t, at.fault),
        detail,
    };
    if let Some(t) = first_trouble(backends, at) {
        entries.push(entry(
            Stage::Investigating,
            t,
            "requests failing or waiting over 1 s".into(),
        ));
    }
    let Some(promoted) = at.promoted else {
        return entries;
    };
    entries.push(entry(
        Stage::Identified,
        promoted,
        "primary lost; the standby was promoted".into(),
    ));
    let first_write = backends
        .iter()
        .flat_map(|b| b.done.iter())
        .filter(|r| r.kind == Kind::Write && r.outcome == Outcome::Ok && r.end >= promoted)
        .map(|r| r.end)
        .min();
    if let Some(t) = first_write {
        entries.push(entry(
            Stage::Monitoring,
            t,
            "writes succeed on the new primary".into(),
        ));
    }
    let all = recovered.iter().copied().collect::<Option<Vec<_>>>();
    let any_stuck = backends
        .iter()
        .filter_map(|b| b.in_flight)
        .any(|r| at.end.saturating_sub(r.start) > STUCK_AFTER);
    if let (Some(all), false) = (all, any_stuck)
        && let Some(t) = all.into_iter().max()
    {
        entries.push(entry(
            Stage::Resolved,
            t.max(first_write.unwrap_or(t)),
            format!("all {} sites served again, nothing stuck", backends.len()),
        ));
    }
    entries
}

/// The first moment after the fault when a request failed or had waited [`TROUBLE_AFTER`].
fn first_trouble(backends: &[BackendSnapshot], at: Moments) -> Option<Duration> {
    let failed = backends
        .iter()
        .flat_map(|b| b.done.iter())
        .filter(|r| r.outcome != Outcome::Ok && r.end >= at.fault)
        .map(|r| r.end);
    let slow_done = backends
        .iter()
        .flat_map(|b| b.done.iter())
        .filter(|r| r.end - r.start > TROUBLE_AFTER)
        .map(|r| r.start + TROUBLE_AFTER);
    let slow_open = backends
        .iter()
        .filter_map(|b| b.in_flight)
        .filter(|r| at.end.saturating_sub(r.start) > TROUBLE_AFTER)
        .map(|r| r.start + TROUBLE_AFTER);
    failed
        .chain(slow_done)
        .chain(slow_open)
        .filter(|&t| t >= at.fault)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    fn req(kind: Kind, start: f64, end: f64, outcome: Outcome) -> Request {
        Request {
            kind,
            start: s(start),
            end: s(end),
            outcome,
        }
    }

    const AT: Moments = Moments {
        fault: Duration::from_secs(10),
        promoted: Some(Duration::from_secs(30)),
        end: Duration::from_secs(50),
    };

    #[test]
    fn a_backend_stuck_since_the_fault_is_stuck_and_the_path_unresolved() {
        let stuck = BackendSnapshot {
            done: vec![req(Kind::Write, 9.0, 9.01, Outcome::Ok)],
            in_flight: Some(InFlight {
                kind: Kind::Read,
                start: s(9.5),
            }),
            acked: vec![0],
        };
        let f = figures("direct", &[stuck], AT, Some(0));
        assert_eq!(f.stuck, 1);
        assert!(f.longest_stall_unanswered);
        assert_eq!(f.longest_stall_s, 40.5);
        assert_eq!(f.first_write_after_fault_s, None);
        assert_eq!(f.sites_recovered, 0);
        assert_eq!(f.incident_latency.requests, 1, "the stuck one counts");
        assert_eq!(f.incident_latency.p50_ms, Some(40500.0));
        assert!(f.incident_latency.p50_unanswered);
        let stages: Vec<Stage> = f.timeline.iter().map(|e| e.stage).collect();
        assert_eq!(stages, [Stage::Investigating, Stage::Identified]);
        assert_eq!(
            f.timeline[0].at_s, 0.5,
            "trouble shows 1 s after the stuck request began"
        );
        assert!(f.unresolved.is_some());
    }

    #[test]
    fn a_held_then_answered_backend_reaches_resolved() {
        let held = BackendSnapshot {
            done: vec![
                req(Kind::Write, 9.0, 9.01, Outcome::Ok),
                req(Kind::Read, 9.9, 11.3, Outcome::Failed("40001".into())),
                req(Kind::Write, 11.4, 30.2, Outcome::Ok),
                req(Kind::Read, 30.3, 30.31, Outcome::Ok),
            ],
            in_flight: None,
            acked: vec![0, 1],
        };
        let f = figures("switchyard", &[held], AT, Some(0));
        assert_eq!(f.stuck, 0);
        assert_eq!(f.errors_by_sqlstate.get("40001"), Some(&1));
        assert_eq!(f.first_write_after_fault_s, Some(20.2));
        assert_eq!(f.incident_latency.requests, 3);
        assert_eq!(f.incident_latency.max_ms, Some(18800.0));
        assert!(!f.incident_latency.max_unanswered);
        let stages: Vec<(Stage, f64)> = f.timeline.iter().map(|e| (e.stage, e.at_s)).collect();
        assert_eq!(
            stages,
            [
                (Stage::Investigating, 0.9),
                (Stage::Identified, 20.0),
                (Stage::Monitoring, 20.2),
                (Stage::Resolved, 20.31),
            ]
        );
        assert_eq!(f.unresolved, None);
    }
}
