//! Incidents: what a failover looks like on a status page. One cluster's [`IncidentTrack`] turns
//! samples of its topology and counters into an incident that moves through
//! Investigating → Identified → Monitoring → Resolved, with its timeline and scope of impact.
//!
//! Pure (no clock, no I/O): [`IncidentTrack::step`] is the one transition point, fed by the
//! tracker loop and tested alone.

use serde::{Deserialize, Serialize};
use switchyard_topology::CaughtTotals;

/// A status-page stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// The primary stopped answering (or two members are writable); looking into it.
    Investigating,
    /// A primary is known again.
    Identified,
    /// Traffic flows on it; watching that it stays.
    Monitoring,
    /// Stable for `resolve_after`.
    Resolved,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Investigating => "Investigating",
            Stage::Identified => "Identified",
            Stage::Monitoring => "Monitoring",
            Stage::Resolved => "Resolved",
        }
    }
}

/// One stage reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    pub stage: Stage,
    pub at_ms: u64,
    pub note: String,
}

/// Who was affected and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Databases (sites) with a request held, aborted or retried.
    pub sites: Vec<String>,
    /// What happened to requests during the incident, and the longest hold (flat in JSON:
    /// `held`, `rolled_back`, … beside `sites`).
    #[serde(flatten)]
    pub caught: CaughtTotals,
}

/// A notification's delivery to one webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub url: String,
    pub stage: Stage,
    pub state: DeliveryState,
    pub attempts: u32,
    pub at_ms: u64,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// One incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Incident {
    pub id: u64,
    pub cluster: String,
    pub title: String,
    pub stage: Stage,
    pub opened_ms: u64,
    pub resolved_ms: Option<u64>,
    pub timeline: Vec<Transition>,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    /// From the old primary's last good probe to the incident's opening: how long it took to
    /// be sure (an upper bound on fault → detection).
    pub detection_ms: Option<u64>,
    /// Replication lag (bytes) last seen before the fault: commits acknowledged in this window
    /// may not have reached the standby (none, with synchronous replication).
    pub at_risk_lag_bytes: Option<u64>,
    pub scope: Scope,
    pub notifications: Vec<Delivery>,
}

impl Incident {
    /// The primary changed: the incident names a new primary other than the old one.
    pub fn is_failover(&self) -> bool {
        self.new_primary.is_some() && self.new_primary != self.old_primary
    }

    /// Closes an incident nobody follows any more (Switchyard restarted, or its cluster left the
    /// configuration), saying so; false if it was resolved already.
    pub fn close_unfollowed(&mut self, at_ms: u64, note: &str) -> bool {
        if self.stage == Stage::Resolved {
            return false;
        }
        self.stage = Stage::Resolved;
        self.resolved_ms = Some(at_ms);
        self.timeline.push(Transition {
            stage: Stage::Resolved,
            at_ms,
            note: note.to_owned(),
        });
        true
    }
}

/// What the tracker saw of one cluster at one moment.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub now_ms: u64,
    pub primary: Option<String>,
    /// Several writable members on the same timeline.
    pub conflict: bool,
    pub transactions: u64,
    pub caught: CaughtTotals,
    pub sites: Vec<String>,
    /// Last good probe (Unix ms) of the previous primary, if known.
    pub old_primary_last_ok_ms: Option<u64>,
    /// Lag of the most advanced standby behind the primary, in bytes, if both are known.
    pub lag_bytes: Option<u64>,
}

/// One cluster's incident state: the open incident, if any, and what it needs to move on.
#[derive(Debug, Default)]
pub struct IncidentTrack {
    pub open: Option<Incident>,
    last_primary: Option<String>,
    last_lag: Option<u64>,
    baseline: CaughtTotals,
    /// Transactions counted at the last sample without a primary: any beyond it ran on the
    /// primary identified since (they may complete before the sample that sees it).
    tx_without_primary: u64,
    /// Transactions counted when the current primary was identified.
    identified_tx: u64,
}

/// With no client traffic at all, Monitoring starts this long after Identified.
pub const QUIET_MONITORING_MS: u64 = 5_000;

impl IncidentTrack {
    /// Feeds one sample; returns the incident if it changed stage (opened, moved, resolved).
    /// `next_id` numbers a new incident.
    pub fn step(
        &mut self,
        cluster: &str,
        s: &Sample,
        resolve_after_ms: u64,
        next_id: &mut u64,
    ) -> Option<Incident> {
        let healthy = s.primary.is_some() && !s.conflict;
        let moved = match self.open.take() {
            None if !healthy && (self.last_primary.is_some() || s.conflict) => {
                self.open = Some(self.open_incident(cluster, s, next_id));
                true
            }
            None => {
                // Requests caught from here on belong to the next incident.
                self.baseline = s.caught;
                false
            }
            Some(mut inc) => {
                inc.scope = self.scope(s);
                let next = self.next_stage(&inc, s, resolve_after_ms);
                let moved = next.is_some();
                if let Some((stage, note)) = next {
                    self.enter(&mut inc, stage, note, s);
                }
                if inc.stage == Stage::Investigating {
                    self.tx_without_primary = s.transactions;
                }
                if inc.stage == Stage::Resolved {
                    return Some(inc);
                }
                self.open = Some(inc);
                moved
            }
        };
        if healthy {
            self.last_primary = s.primary.clone();
            self.last_lag = s.lag_bytes;
        }
        if moved { self.open.clone() } else { None }
    }

    fn open_incident(&mut self, cluster: &str, s: &Sample, next_id: &mut u64) -> Incident {
        *next_id += 1;
        self.tx_without_primary = s.transactions;
        let title = if s.conflict {
            "Several writable members: writes refused".to_owned()
        } else {
            format!(
                "Primary {} unresponsive",
                self.last_primary.as_deref().unwrap_or("?")
            )
        };
        let note = if s.conflict {
            "two members accept writes on the same timeline".to_owned()
        } else {
            "the primary failed its probes; new work waits in the failover gate".to_owned()
        };
        Incident {
            id: *next_id,
            cluster: cluster.to_owned(),
            title,
            stage: Stage::Investigating,
            opened_ms: s.now_ms,
            resolved_ms: None,
            timeline: vec![Transition {
                stage: Stage::Investigating,
                at_ms: s.now_ms,
                note,
            }],
            old_primary: self.last_primary.clone(),
            new_primary: None,
            detection_ms: s.old_primary_last_ok_ms.map(|t| s.now_ms.saturating_sub(t)),
            at_risk_lag_bytes: self.last_lag,
            scope: Scope::default(),
            notifications: Vec::new(),
        }
    }

    /// The stage the incident moves to now, if any, with its note.
    fn next_stage(
        &self,
        inc: &Incident,
        s: &Sample,
        resolve_after_ms: u64,
    ) -> Option<(Stage, String)> {
        let stage_at = inc.timeline.last().map_or(inc.opened_ms, |t| t.at_ms);
        match (&s.primary, s.conflict, inc.stage) {
            (None, _, Stage::Investigating) | (_, true, Stage::Investigating) => None,
            (None, _, _) | (_, true, _) => Some((
                Stage::Investigating,
                "the primary was lost again".to_owned(),
            )),
            (Some(p), false, Stage::Investigating) => Some((
                Stage::Identified,
                if Some(p) == inc.old_primary.as_ref() {
                    format!("{p} answers again and is still the primary")
                } else {
                    format!("{p} was promoted and is the primary")
                },
            )),
            (Some(_), false, Stage::Identified) => {
                if s.transactions > self.identified_tx {
                    Some((
                        Stage::Monitoring,
                        "traffic flows on the new primary".to_owned(),
                    ))
                } else if s.now_ms >= stage_at + QUIET_MONITORING_MS {
                    Some((
                        Stage::Monitoring,
                        "no client traffic; the primary answers its probes".to_owned(),
                    ))
                } else {
                    None
                }
            }
            // (In Monitoring, the last transition is the one into it.)
            (Some(_), false, Stage::Monitoring) => {
                (s.now_ms >= stage_at + resolve_after_ms).then(|| {
                    (
                        Stage::Resolved,
                        format!("stable for {} s", resolve_after_ms / 1000),
                    )
                })
            }
            (Some(_), false, Stage::Resolved) => None,
        }
    }

    fn enter(&mut self, inc: &mut Incident, stage: Stage, note: String, s: &Sample) {
        match stage {
            Stage::Identified => {
                self.identified_tx = self.tx_without_primary;
                inc.new_primary = s.primary.clone();
            }
            Stage::Resolved => inc.resolved_ms = Some(s.now_ms),
            Stage::Monitoring | Stage::Investigating => {}
        }
        inc.stage = stage;
        inc.timeline.push(Transition {
            stage,
            at_ms: s.now_ms,
            note,
        });
    }

    fn scope(&self, s: &Sample) -> Scope {
        Scope {
            sites: s.sites.clone(),
            caught: s.caught.since(&self.baseline),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(now_ms: u64, primary: Option<&str>, transactions: u64) -> Sample {
        Sample {
            now_ms,
            primary: primary.map(str::to_owned),
            transactions,
            ..Sample::default()
        }
    }

    #[test]
    fn a_failover_moves_through_the_four_stages() {
        let mut t = IncidentTrack::default();
        let mut id = 0;
        let mut stages = Vec::new();
        let mut feed = |s: Sample, t: &mut IncidentTrack| {
            if let Some(inc) = t.step("main", &s, 10_000, &mut id) {
                stages.push((inc.stage, s.now_ms));
                Some(inc)
            } else {
                None
            }
        };
        assert!(feed(sample(0, Some("a:1"), 10), &mut t).is_none());
        let mut lost = sample(1_000, None, 10);
        lost.old_primary_last_ok_ms = Some(0);
        lost.caught.held = 0;
        let opened = feed(lost, &mut t).expect("opens");
        assert_eq!(opened.title, "Primary a:1 unresponsive");
        assert_eq!(opened.detection_ms, Some(1_000));
        let mut held = sample(5_000, None, 10);
        held.caught.held = 3;
        held.sites = vec!["site_01".into()];
        assert!(feed(held.clone(), &mut t).is_none(), "still investigating");
        let mut promoted = sample(6_000, Some("b:2"), 10);
        promoted.caught = held.caught;
        promoted.sites = held.sites.clone();
        let identified = feed(promoted, &mut t).unwrap();
        assert_eq!(identified.new_primary.as_deref(), Some("b:2"));
        assert_eq!(identified.scope.caught.held, 3);
        assert_eq!(identified.scope.sites, ["site_01"]);
        assert!(
            feed(sample(6_100, Some("b:2"), 10), &mut t).is_none(),
            "no traffic yet"
        );
        feed(sample(6_200, Some("b:2"), 11), &mut t).expect("monitoring");
        assert!(feed(sample(16_100, Some("b:2"), 50), &mut t).is_none());
        let resolved = feed(sample(16_200, Some("b:2"), 60), &mut t).expect("resolved");
        assert_eq!(resolved.resolved_ms, Some(16_200));
        assert!(t.open.is_none());
        assert_eq!(
            stages,
            [
                (Stage::Investigating, 1_000),
                (Stage::Identified, 6_000),
                (Stage::Monitoring, 6_200),
                (Stage::Resolved, 16_200)
            ]
        );
        assert_eq!(id, 1);
    }

    #[test]
    fn an_incident_nobody_follows_is_closed_with_a_note_once() {
        let mut t = IncidentTrack::default();
        let mut id = 0;
        t.step("main", &sample(0, Some("a:1"), 0), 10_000, &mut id);
        let mut open = t
            .step("main", &sample(100, None, 0), 10_000, &mut id)
            .unwrap();
        assert!(open.close_unfollowed(500, "restarted"));
        assert_eq!((open.stage, open.resolved_ms), (Stage::Resolved, Some(500)));
        assert_eq!(
            open.timeline.last().map(|t| t.note.as_str()),
            Some("restarted")
        );
        assert!(!open.close_unfollowed(900, "again"), "resolved already");
        assert_eq!(open.timeline.len(), 2);
    }

    #[test]
    fn losing_the_new_primary_goes_back_to_investigating() {
        let mut t = IncidentTrack::default();
        let mut id = 0;
        t.step("main", &sample(0, Some("a:1"), 0), 10_000, &mut id);
        t.step("main", &sample(100, None, 0), 10_000, &mut id)
            .unwrap();
        t.step("main", &sample(200, Some("b:2"), 0), 10_000, &mut id)
            .unwrap();
        let again = t
            .step("main", &sample(300, None, 0), 10_000, &mut id)
            .unwrap();
        assert_eq!(again.stage, Stage::Investigating);
        assert_eq!(again.timeline.len(), 3);
        assert_eq!(id, 1, "the same incident");
    }

    #[test]
    fn traffic_that_ran_before_the_tracker_saw_the_new_primary_counts() {
        let mut t = IncidentTrack::default();
        let mut id = 0;
        t.step("main", &sample(0, Some("a:1"), 5), 10_000, &mut id);
        t.step("main", &sample(100, None, 5), 10_000, &mut id)
            .unwrap();
        // Between two samples: the new primary appeared and two transactions ran on it.
        let identified = t
            .step("main", &sample(200, Some("b:2"), 7), 10_000, &mut id)
            .unwrap();
        assert_eq!(identified.stage, Stage::Identified);
        let monitoring = t
            .step("main", &sample(300, Some("b:2"), 7), 10_000, &mut id)
            .unwrap();
        assert_eq!(monitoring.stage, Stage::Monitoring);
        assert_eq!(
            monitoring.timeline[2].note,
            "traffic flows on the new primary"
        );
    }

    #[test]
    fn no_incident_before_a_primary_was_ever_seen() {
        let mut t = IncidentTrack::default();
        let mut id = 0;
        assert!(
            t.step("main", &sample(0, None, 0), 10_000, &mut id)
                .is_none()
        );
        assert!(t.open.is_none());
    }
}
