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
use crate::chart;
use crate::cluster::BuiltinCluster;
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
    cluster: Arc<BuiltinCluster>,
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
    say("starting two clusters (PostgreSQL 15 primary + synchronous standby each)");
    let (direct, proxied) = tokio::try_join!(
        blocking(BuiltinCluster::start),
        blocking(BuiltinCluster::start)
    )?;
    let (direct, proxied) = (Arc::new(direct), Arc::new(proxied));
    say(&format!(
        "creating {} site databases per cluster",
        args.sites
    ));
    let (a, b) = (direct.primary.addr(), proxied.primary.addr());
    tokio::try_join!(sites::create(&a, args.sites), sites::create(&b, args.sites))?;
    let mut proxy = Proxy::start(&exe, &args.out, &proxied.members(), args.sites).await?;
    say(&format!(
        "Switchyard serving on {} (log: {})",
        proxy.addr,
        proxy.log.display()
    ));

    let epoch = Instant::now();
    let mut paths = [
        DrillPath {
            name: "direct",
            endpoint: watch::channel(direct.primary.addr()).0,
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

    promote_builtin(&mut paths, epoch, fault + args.promote_after, &progress).await?;
    tokio::time::sleep(args.observe).await;
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
                match sites::count_lost(&p.cluster.standby.addr(), &acked).await {
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
    };
    write_files(&args.out, &report, &snapshots)?;
    Ok(report)
}

/// The builtin manager: promotes both standbys at `when` (concurrently), and points the direct
/// path's endpoint at its new primary as soon as it is promoted (as a DNS name would follow).
async fn promote_builtin(
    paths: &mut [DrillPath; 2],
    epoch: Instant,
    when: Duration,
    progress: &Progress,
) -> Result<(), DrillError> {
    tokio::time::sleep_until((epoch + when).into()).await;
    let (a, b) = (paths[0].cluster.clone(), paths[1].cluster.clone());
    let promote = |c: Arc<BuiltinCluster>| async move {
        blocking(move || c.promote()).await?;
        Ok::<_, DrillError>(epoch.elapsed())
    };
    let (pa, pb) = tokio::try_join!(promote(a), promote(b))?;
    paths[0].promoted = Some(pa);
    paths[1].promoted = Some(pb);
    let new_primary = paths[0].cluster.standby.addr();
    paths[0].endpoint.send_replace(new_primary);
    progress.event(
        "standbys promoted (builtin manager); direct path's address now names the new primary",
    );
    Ok(())
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
