//! The drill's report: the JSON document (its fields are documented in the README) and the
//! plain-text rendering an SRE pastes into a postmortem.

use std::fmt::Write as _;

use serde::Serialize;

use crate::analysis::{PathFigures, Stage};
use crate::args::{FaultKind, ManagerKind, TopologyKind};

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub switchyard_version: &'static str,
    pub fault: FaultKind,
    pub manager: ManagerKind,
    /// How Switchyard was told where the members are (both addresses, or one DNS name).
    pub topology: TopologyKind,
    /// Session pooling, each backend's session holding state its reads use (`--sessions`).
    pub sessions: bool,
    /// `[failover] resolve_commits = true` (`--resolve-commits`).
    pub resolve_commits: bool,
    pub sites: u16,
    /// Wall-clock time of the fault, Unix milliseconds.
    pub fault_unix_ms: u64,
    /// Phases, in seconds: traffic before the fault, fault → promotion, drill length.
    pub warmup_s: f64,
    pub promotion_after_fault_s: Option<f64>,
    pub drill_s: f64,
    /// `direct` first, then `switchyard`.
    pub paths: Vec<PathFigures>,
    /// The latency chart's file name, next to the report.
    pub chart: String,
    /// Notes on what the drill could not check.
    pub notes: Vec<String>,
    /// Switchyard's own record of the incident (its `/api/incidents`), taken at the end.
    pub switchyard_incident: Option<serde_json::Value>,
}

impl Report {
    /// The plain-text report.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let promotion = match self.promotion_after_fault_s {
            Some(s) => format!("promoted {s:.1} s after the fault"),
            None => "no promotion".to_owned(),
        };
        let _ = writeln!(
            out,
            "Switchyard drill: {} of the primary at {}, {} manager ({promotion}){}",
            self.fault.name(),
            utc_time(self.fault_unix_ms),
            self.manager.name(),
            if self.topology == TopologyKind::Dns {
                "; Switchyard given one DNS name that moves to the promoted standby"
            } else {
                ""
            },
        );
        let _ = writeln!(
            out,
            "{} site backends per path (no client-side timeouts), each on its own database{}; \
             PostgreSQL 15 primary + synchronous standby per path; drill {:.0} s.\n",
            self.sites,
            match (self.sessions, self.resolve_commits) {
                (true, _) =>
                    ", session pooling, each session holding a setting and a \
                               prepared statement its reads use",
                (false, true) => ", commit outcome resolution on",
                (false, false) => "",
            },
            self.drill_s
        );
        let (d, s) = (&self.paths[0], &self.paths[1]);
        let _ = writeln!(
            out,
            "{:<40}{:<24}through Switchyard",
            "", "direct to primary"
        );
        for (label, f) in ROWS {
            let _ = writeln!(out, "{label:<40}{:<24}{}", f(d), f(s));
        }
        for f in &self.paths {
            let _ = writeln!(out, "\nTimeline, {} (time since the fault):", title(f.path));
            for e in &f.timeline {
                let _ = writeln!(
                    out,
                    "  +{:>6.1} s  {:<14} {}",
                    e.at_s,
                    stage(e.stage),
                    e.detail
                );
            }
            if let Some(why) = &f.unresolved {
                let _ = writeln!(out, "  {:>9}  {:<14} {why}", "", "Unresolved");
            }
        }
        if let Some(inc) = &self.switchyard_incident {
            out.push_str(&incident_text(inc, self.fault_unix_ms));
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nNote: {note}");
        }
        let _ = writeln!(out, "\nChart of request latency over time: {}", self.chart);
        out
    }
}

type Row = (&'static str, fn(&PathFigures) -> String);

/// The table's rows: label and how to render the figure.
const ROWS: [Row; 9] = [
    ("requests stuck at the end (> 5 s)", |f| f.stuck.to_string()),
    ("longest stall", |f| {
        let open = if f.longest_stall_unanswered {
            " (unanswered)"
        } else {
            ""
        };
        format!("{:.1} s{open}", f.longest_stall_s)
    }),
    ("latency during incident p50 / p99", |f| {
        let l = &f.incident_latency;
        match (l.p50_ms, l.p99_ms) {
            (Some(p50), Some(p99)) => format!(
                "{} / {}",
                ms(p50, l.p50_unanswered),
                ms(p99, l.p99_unanswered)
            ),
            _ => "no requests".to_owned(),
        }
    }),
    ("requests answered / succeeded", |f| {
        format!("{} / {}", f.requests_answered, f.requests_succeeded)
    }),
    ("errors by SQLSTATE", |f| {
        if f.errors_by_sqlstate.is_empty() {
            return "none".to_owned();
        }
        f.errors_by_sqlstate
            .iter()
            .map(|(code, n)| format!("{code}×{n}"))
            .collect::<Vec<_>>()
            .join(" ")
    }),
    ("acknowledged writes lost", |f| match f.lost_writes {
        Some(n) => format!("{n} of {}", f.acked_writes),
        None => format!("unchecked ({} acked)", f.acked_writes),
    }),
    ("fault → first successful write", |f| {
        match f.first_write_after_fault_s {
            Some(s) => format!("{s:.1} s"),
            None => "never".to_owned(),
        }
    }),
    ("sites served again after promotion", |f| {
        format!("{} of {}", f.sites_recovered, f.sites)
    }),
    ("resolved (all sites, nothing stuck)", |f| {
        match f.timeline.iter().find(|e| e.stage == Stage::Resolved) {
            Some(e) => format!("+{:.1} s", e.at_s),
            None => "no".to_owned(),
        }
    }),
];

/// A latency; `≥` when it is the age of a request still unanswered.
fn ms(v: f64, unanswered: bool) -> String {
    let at_least = if unanswered { "≥" } else { "" };
    if v >= 1000.0 {
        format!("{at_least}{:.1} s", v / 1000.0)
    } else {
        format!("{at_least}{v:.0} ms")
    }
}

fn title(path: &str) -> &'static str {
    if path == "direct" {
        "direct to primary"
    } else {
        "through Switchyard"
    }
}

fn stage(s: Stage) -> &'static str {
    match s {
        Stage::Investigating => "Investigating",
        Stage::Identified => "Identified",
        Stage::Monitoring => "Monitoring",
        Stage::Resolved => "Resolved",
    }
}

/// `HH:MM:SS UTC` of a Unix-milliseconds time.
fn utc_time(unix_ms: u64) -> String {
    let day_s = (unix_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        day_s / 3600,
        (day_s / 60) % 60,
        day_s % 60
    )
}

/// Switchyard's incident record, with times since the drill's fault.
fn incident_text(inc: &serde_json::Value, fault_ms: u64) -> String {
    let since = |v: &serde_json::Value| {
        v.as_u64()
            .map_or(0.0, |ms| (ms as f64 - fault_ms as f64) / 1000.0)
    };
    let stages: Vec<String> = inc["timeline"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|e| {
                    format!(
                        "{} {:+.1} s",
                        e["stage"].as_str().unwrap_or("?"),
                        since(&e["at_ms"])
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let scope = &inc["scope"];
    let n = |k: &str| scope[k].as_u64().unwrap_or(0);
    let sites = scope["sites"].as_array().map_or(0, Vec::len);
    let detected = inc["detection_ms"]
        .as_u64()
        .map(|d| {
            format!(
                "; sure {:.1} s after the old primary's last good probe",
                d as f64 / 1000.0
            )
        })
        .unwrap_or_default();
    format!(
        "\nSwitchyard's own incident record (#{} \"{}\", from its /api/incidents):\n  {}\n  \
         scope: {sites} sites; held {}, COMMIT found committed {}, rolled back {}, outcome \
         unknown {}, gate timeouts {}, re-sent {}, sessions lost {}; longest hold {:.1} \
         s{detected}\n",
        inc["id"],
        inc["title"].as_str().unwrap_or("?"),
        stages.join(", "),
        n("held"),
        n("committed"),
        n("rolled_back"),
        n("unknown"),
        n("gate_timeouts"),
        n("retried"),
        n("sessions_lost"),
        n("longest_hold_ms") as f64 / 1000.0,
    )
}
