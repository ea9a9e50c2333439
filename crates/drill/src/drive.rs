//! The drill's run, step by step: two identical clusters (one per path), the sites' databases,
//! the proxy in front of one of them, the site backends on both, the fault on both primaries at
//! the same moment, the promotion, a while of watching, the write check, the clean-up, the
//! report. Every step has a deadline; dropping the future midway (Ctrl-C) stops everything
//! through the owners' `Drop`s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::analysis::{self, BackendSnapshot, Moments};
use crate::args::DrillArgs;
use crate::args::{ManagerKind, TopologyKind};
use crate::chart;
use crate::cluster::PathCluster;
use crate::error::DrillError;
use crate::progress::Progress;
use crate::proxy::Proxy;
use crate::report::Report;
use crate::sites;
use crate::workload::{self, Workload};

/// File names in the output directory.
pub const REPORT_JSON: &str = "report.json";
pub const REPORT_TEXT: &str = "report.txt";
pub const CHART_SVG: &str = "latency.svg";

/// Runs `work` on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, DrillError> + Send + 'static,
) -> Result<T, DrillError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// One path: its cluster, how its backends reach it, and its backends.
struct DrillPath {
    name: &'static str,
    cluster: Arc<PathCluster>,
    endpoint: watch::Sender<String>,
    workload: Option<Workload>,
    promoted: Option<Duration>,
}

/// Runs the drill and writes the report's files into `args.out`.
pub async fn drive(args: &DrillArgs, exe: PathBuf) -> Result<Report, DrillError> {
    let quiet = args.quiet;
    let say = |what: &str| {
        if !quiet {
            eprintln!("switchyard drill: {what}");
        }
    };
    let (direct, proxied) = start_clusters(args.manager, args.topology, &say).await?;
    say(&format!(
        "creating {} site databases per cluster",
        args.sites
    ));
    let (a, b) = (direct.primary_addr(), proxied.primary_addr());
    tokio::try_join!(sites::create(&a, args.sites), sites::create(&b, args.sites))?;
    let mut proxy = Proxy::start(
        &exe,
        &args.out,
        &proxied.members(),
        proxied.name.as_ref(),
        args.sites,
        (args.sessions, args.resolve_commits),
    )
    .await?;
    say(&format!(
        "Switchyard serving on {} (log: {})",
        proxy.addr,
        proxy.log.display()
    ));
    say(&format!(
        "status page http://{0}/ (metrics http://{0}/metrics)",
        proxy.admin
    ));

    let epoch = Instant::now();
    let mut paths = [
        DrillPath {
            name: "direct",
            endpoint: watch::channel(direct.primary_addr()).0,
            cluster: direct,
            workload: None,
            promoted: None,
        },
        DrillPath {
            name: "switchyard",
            endpoint: watch::channel(proxy.addr.clone()).0,
            cluster: proxied,
            workload: None,
            promoted: None,
        },
    ];
    for p in &mut paths {
        let endpoint = p.endpoint.subscribe();
        p.workload = Some(Workload::start(
            args.sites,
            endpoint,
            epoch,
            args.think_time,
            args.sessions,
        ));
    }
    let progress = Progress::new(epoch, quiet);
    let progress_stop = CancellationToken::new();
    let shown = paths
        .iter()
        .map(|p| {
            (
                p.name,
                p.workload
                    .as_ref()
                    .map(|w| w.logs.clone())
                    .unwrap_or_default(),
            )
        })
        .collect();
    let display = tokio::spawn(progress.clone().run(shown, progress_stop.clone()));
    progress.event(&format!(
        "{} site backends per path running; {} in {:.0} s",
        args.sites,
        args.fault.name(),
        args.warmup.as_secs_f64()
    ));
    tokio::time::sleep(args.warmup).await;

    let fault = epoch.elapsed();
    let fault_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let kind = args.fault;
    let (a, b) = (paths[0].cluster.clone(), paths[1].cluster.clone());
    tokio::try_join!(
        blocking(move || a.inject(kind)),
        blocking(move || b.inject(kind))
    )?;
    progress.event(&format!("{} of both primaries", kind.name()));

    promote(&mut paths, args, epoch, fault, &progress).await?;
    tokio::time::sleep(args.observe).await;
    let incident = proxy.newest_incident().await;
    let end = epoch.elapsed();
    progress_stop.cancel();
    let _ = display.await;
    progress.event("drill over; checking acknowledged writes on the new primaries");

    let mut figures = Vec::new();
    let mut snapshots = Vec::new();
    let mut notes = Vec::new();
    for p in &mut paths {
        let mut workload = p.workload.take().expect("started above");
        workload.stop();
        let snap: Vec<BackendSnapshot> = workload
            .logs
            .iter()
            .map(|l| BackendSnapshot::from(&*workload::lock(l)))
            .collect();
        let at = Moments {
            fault,
            promoted: p.promoted,
            end,
        };
        let lost = match p.promoted {
            Some(_) => {
                let acked: Vec<Vec<i64>> = snap.iter().map(|b| b.acked.clone()).collect();
                match sites::count_lost(&p.cluster.standby_addr(), &acked).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        notes.push(format!("{}: acknowledged writes not checked: {e}", p.name));
                        None
                    }
                }
            }
            None => {
                notes.push(format!(
                    "{}: no promotion, acknowledged writes not checked",
                    p.name
                ));
                None
            }
        };
        figures.push(analysis::figures(p.name, &snap, at, lost));
        snapshots.push((p.name, snap, at));
    }

    blocking(move || {
        proxy.stop();
        drop(paths);
        Ok(())
    })
    .await?;

    let report = Report {
        switchyard_version: env!("CARGO_PKG_VERSION"),
        fault: args.fault,
        manager: args.manager,
        topology: args.topology,
        sessions: args.sessions,
        resolve_commits: args.resolve_commits,
        sites: args.sites,
        fault_unix_ms,
        warmup_s: args.warmup.as_secs_f64(),
        promotion_after_fault_s: figures
            .iter()
            .find_map(|f| {
                f.timeline
                    .iter()
                    .find(|e| e.stage == analysis::Stage::Identified)
            })
            .map(|e| e.at_s),
        drill_s: (end.as_secs_f64() * 10.0).round() / 10.0,
        paths: figures,
        chart: CHART_SVG.to_owned(),
        notes,
        switchyard_incident: incident,
    };
    write_files(&args.out, &report, &snapshots)?;
    Ok(report)
}

/// Starts both paths' clusters (concurrently) under `manager`.
async fn start_clusters(
    manager: ManagerKind,
    topology: TopologyKind,
    say: &impl Fn(&str),
) -> Result<(Arc<PathCluster>, Arc<PathCluster>), DrillError> {
    let (a, b) = match manager {
        ManagerKind::Builtin if topology == TopologyKind::Dns => {
            say(
                "starting two clusters behind DNS names (primary + synchronous standby on one port, dnsmasq)",
            );
            tokio::try_join!(
                blocking(|| PathCluster::builtin_behind_name(0, "direct")),
                blocking(|| PathCluster::builtin_behind_name(1, "switchyard"))
            )?
        }
        ManagerKind::Builtin => {
            say("starting two clusters (PostgreSQL 15 primary + synchronous standby each)");
            tokio::try_join!(
                blocking(PathCluster::builtin),
                blocking(PathCluster::builtin)
            )?
        }
        ManagerKind::Patroni => {
            say("starting etcd and two Patroni clusters (two members each, synchronous mode)");
            let etcd = blocking(|| {
                switchyard_localpg::Etcd::start().map_err(DrillError::fixture("start etcd"))
            })
            .await?;
            let etcd = Arc::new(etcd);
            let (e1, e2) = (etcd.clone(), etcd);
            tokio::try_join!(
                blocking(move || PathCluster::patroni(e1, "drill-direct")),
                blocking(move || PathCluster::patroni(e2, "drill-switchyard"))
            )?
        }
    };
    Ok((Arc::new(a), Arc::new(b)))
}

/// The promotion, per path: the builtin manager promotes both standbys `--promote-after` the
/// fault; Patroni is waited for (up to `--promotion-timeout`). The direct path's endpoint moves
/// to its new primary as soon as that is promoted (as a DNS name would follow).
async fn promote(
    paths: &mut [DrillPath; 2],
    args: &DrillArgs,
    epoch: Instant,
    fault: Duration,
    progress: &Progress,
) -> Result<(), DrillError> {
    if args.manager == ManagerKind::Builtin {
        tokio::time::sleep_until((epoch + fault + args.promote_after).into()).await;
    }
    let (a, b) = tokio::try_join!(
        promote_one(&paths[0], args, epoch, progress),
        promote_one(&paths[1], args, epoch, progress)
    )?;
    paths[0].promoted = a;
    paths[1].promoted = b;
    Ok(())
}

/// One path's promotion; when it happened (since the drill's start), if it did.
async fn promote_one(
    p: &DrillPath,
    args: &DrillArgs,
    epoch: Instant,
    progress: &Progress,
) -> Result<Option<Duration>, DrillError> {
    let timeout = args.promotion_timeout;
    let cluster = p.cluster.clone();
    // The builtin manager's standby may take writes before `pg_ctl promote` returns: its
    // promotion counts from the request. Patroni's is seen only once it has happened.
    let requested = epoch.elapsed();
    if !blocking(move || cluster.promotion(timeout)).await? {
        progress.event(&format!(
            "{}: no promotion within {} s",
            p.name,
            timeout.as_secs()
        ));
        return Ok(None);
    }
    let at = match args.manager {
        ManagerKind::Builtin => requested,
        ManagerKind::Patroni => epoch.elapsed(),
    };
    let direct = p.name == "direct";
    if direct {
        p.endpoint.send_replace(p.cluster.standby_addr());
    }
    progress.event(&format!(
        "{}: standby promoted by the {} manager{}",
        p.name,
        args.manager.name(),
        if direct {
            "; the direct address now names it"
        } else {
            ""
        }
    ));
    Ok(Some(at))
}

/// Writes report.json, report.txt and the chart into `out`.
fn write_files(
    out: &Path,
    report: &Report,
    snapshots: &[(&'static str, Vec<BackendSnapshot>, Moments)],
) -> Result<(), DrillError> {
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| DrillError::Io { path, source })
    };
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    write(REPORT_JSON, &json)?;
    write(REPORT_TEXT, &report.to_text())?;
    let series: Vec<chart::Series<'_>> = snapshots
        .iter()
        .map(|(name, backends, _)| chart::Series {
            label: if *name == "direct" {
                "direct to primary"
            } else {
                "through Switchyard"
            },
            backends,
        })
        .collect();
    let at = snapshots.first().map(|s| s.2).expect("two paths");
    let title = format!(
        "switchyard drill: {} of the primary, {} site backends per path",
        report.fault.name(),
        report.sites
    );
    match chart::svg(&series, at, &title) {
        Ok(svg) => write(CHART_SVG, &svg),
        Err(e) => {
            eprintln!("switchyard drill: the chart could not be drawn: {e}");
            Ok(())
        }
    }
}
