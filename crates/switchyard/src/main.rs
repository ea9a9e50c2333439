//! The `switchyard` command line: `serve`, `demo`, `drill`, `check-config`, `version`.

#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use switchyard::serve;
use switchyard_config::Config;

#[derive(Parser)]
#[command(
    name = "switchyard",
    version,
    about = "A PostgreSQL proxy and pooler that never hangs on a dead primary"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "SWITCHYARD_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        #[arg(
            long,
            short,
            default_value = "switchyard.toml",
            env = "SWITCHYARD_CONFIG"
        )]
        config: PathBuf,
    },
    /// Start a local primary, a streaming standby and Switchyard in front of them, until Ctrl-C.
    Demo(switchyard::demo::DemoArgs),
    /// Replay the incident: the same fault on a primary, direct and through Switchyard; report.
    Drill(switchyard_drill::DrillArgs),
    /// Validate a config file and list every problem in it (and that the TLS files it names
    /// can be loaded here).
    CheckConfig {
        file: PathBuf,
        /// Check the config alone, not the TLS files it names (for a config written for
        /// another machine).
        #[arg(long)]
        skip_files: bool,
    },
    /// Print the version.
    Version,
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    match cli.command {
        Command::Version => {
            println!("switchyard {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::CheckConfig { file, skip_files } => match Config::load(&file) {
            Ok(c) if !skip_files && let Err(e) = switchyard_frontend::Live::new(c.clone()) => {
                eprintln!("{}: TLS: {e}", file.display());
                std::process::exit(1);
            }
            Ok(c) => {
                println!(
                    "{}: OK ({} cluster(s), {} site(s), {} user(s))",
                    file.display(),
                    c.clusters.len(),
                    c.sites.len(),
                    c.users.len()
                );
                Ok(())
            }
            Err(e) => {
                eprintln!("{}: {e}", file.display());
                std::process::exit(1);
            }
        },
        Command::Demo(args) => {
            if let Err(e) = switchyard::demo::run(args) {
                eprintln!("switchyard demo: {e:#}");
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Drill(args) => {
            let exe = match &args.proxy_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().context("cannot find this program's path")?,
            };
            match switchyard_drill::run(&args, exe) {
                Ok(report) => {
                    print!("{}", report.to_text());
                    eprintln!(
                        "switchyard drill: report in {}/{{{}, {}, {}}}",
                        args.out.display(),
                        switchyard_drill::REPORT_TEXT,
                        switchyard_drill::REPORT_JSON,
                        switchyard_drill::CHART_SVG
                    );
                    Ok(())
                }
                Err(e) => {
                    eprintln!("switchyard drill: {e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Serve { config: path } => {
            let config =
                Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
            runtime(config.proxy.worker_threads)?.block_on(run_serve(path, config))
        }
    }
}

/// The runtime: `proxy.worker_threads` threads (0: one per core), or `SWITCHYARD_WORKERS`.
fn runtime(configured: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var("SWITCHYARD_WORKERS")
        .ok()
        .and_then(|w| w.parse::<usize>().ok())
        .unwrap_or(configured);
    match workers {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

async fn run_serve(path: PathBuf, config: Config) -> anyhow::Result<()> {
    let shutdown_timeout = config.proxy.shutdown_timeout.get();
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let running = serve::start_with(config, Some(path.clone())).await?;
    tokio::spawn(serve::watch_config(running.proxy.clone(), path, hup));
    let shutdown = running.proxy.shutdown.clone();
    let handed_over = running.handed_over.clone();
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: draining"),
        () = shutdown.cancelled() => tracing::info!("SHUTDOWN (admin console): draining"),
        () = handed_over.cancelled() => tracing::info!("a new process took over: draining"),
    }
    running.drain(shutdown_timeout).await;
    Ok(())
}
