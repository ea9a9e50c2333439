//! `switchyard drill`: the incident that motivates Switchyard, replayed end to end on this
//! machine, and measured.
//!
//! Two identical clusters (a real PostgreSQL 15 primary and its synchronous streaming standby
//! each) serve the same workload: N "site backends" (one database per site) doing small write
//! transactions and reads with no client-side timeout, like the backends that hung for two
//! hours. One path goes straight to the primary's address (an address that follows the
//! promotion, as a DNS name would); the other goes through a real `switchyard serve` process.
//! The same fault hits both primaries at the same moment (crash, freeze or blackhole), a cluster
//! manager promotes the standbys, and the drill reports per path: requests stuck at the end, the
//! longest stall, latency during the incident, errors by SQLSTATE, acknowledged writes lost
//! (checked on the new primary), time to the first successful write, and a status-page
//! timeline. It writes `report.json`, `report.txt` and `latency.svg` and cleans up everything it
//! started, also on Ctrl-C or failure.
//!
//! Modules: [`args`] (options), `cluster` (one path's servers and faults), `sites` (the sites'
//! databases, the lost-write check), `workload` (the site backends), `proxy` (the proxy
//! process), `drive` (the run), [`analysis`] (figures), [`report`] (JSON and text), `chart`,
//! `progress`.

#![forbid(unsafe_code)]

pub mod analysis;
pub mod args;
mod chart;
mod cluster;
mod drive;
mod error;
mod progress;
mod proxy;
pub mod report;
mod sites;
mod workload;

use std::path::PathBuf;

pub use args::{DrillArgs, FaultKind, ManagerKind, TopologyKind};
pub use drive::{CHART_SVG, REPORT_JSON, REPORT_TEXT};
pub use error::DrillError;
pub use report::Report;

/// Runs a drill with `proxy_exe` as the Switchyard program; returns the report (also written to
/// `args.out`). Blocking: it runs its own runtime.
pub fn run(args: &DrillArgs, proxy_exe: PathBuf) -> Result<Report, DrillError> {
    check_prerequisites(args)?;
    std::fs::create_dir_all(&args.out).map_err(|source| DrillError::Io {
        path: args.out.clone(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| DrillError::Io {
            path: PathBuf::from("(the drill's runtime)"),
            source,
        })?;
    runtime.block_on(async {
        let interrupted = interrupted().map_err(|source| DrillError::Io {
            path: PathBuf::from("(signal handlers)"),
            source,
        })?;
        tokio::select! {
            report = drive::drive(args, proxy_exe) => report,
            () = interrupted.cancelled() => Err(DrillError::Interrupted),
        }
    })
}

/// PostgreSQL must be installed; a blackhole needs iptables and root.
fn check_prerequisites(args: &DrillArgs) -> Result<(), DrillError> {
    let postgres = switchyard_localpg::pg_bin_dir().join("postgres");
    if !postgres.exists() {
        return Err(DrillError::Unavailable {
            what: "PostgreSQL 15",
            why: format!(
                "{} is missing: run scripts/setup, or set PG_BIN",
                postgres.display()
            ),
        });
    }
    if args.fault == FaultKind::Blackhole && !switchyard_localpg::iptables_available() {
        return Err(DrillError::Unavailable {
            what: "the blackhole fault",
            why: "it needs the iptables program and root (CAP_NET_ADMIN)".into(),
        });
    }
    if args.topology == TopologyKind::Dns {
        if let Err(why) = switchyard_localpg::dnsmasq_available() {
            return Err(DrillError::Unavailable {
                what: "the dns topology",
                why,
            });
        }
        if args.manager != ManagerKind::Builtin || args.fault == FaultKind::Blackhole {
            return Err(DrillError::Unavailable {
                what: "the dns topology",
                why: "it runs with the builtin manager and a crash or freeze (both members \
                      share a port, which a blackhole by port would take whole)"
                    .into(),
            });
        }
    }
    if args.manager == ManagerKind::Patroni
        && let Err(why) = switchyard_localpg::patroni_available()
    {
        return Err(DrillError::Unavailable {
            what: "the patroni manager",
            why,
        });
    }
    Ok(())
}

/// A token cancelled by the first SIGINT, SIGTERM or SIGHUP (the terminal closed), for the
/// local runs (`drill`, `demo`). The handlers stay installed afterwards, so further signals do
/// not interrupt the clean-up. Needs a runtime.
pub fn interrupted() -> std::io::Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let token = tokio_util::sync::CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}
