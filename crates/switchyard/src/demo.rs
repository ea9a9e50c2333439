//! `switchyard demo`: a local primary and streaming standby (PostgreSQL 15, kept in a state
//! directory) with Switchyard in front of them, until Ctrl-C, SIGTERM or SIGHUP.
//!
//! What runs: the two PostgreSQL servers, separate processes started through
//! `switchyard-localpg` (as the `postgres` user when we are root), and the proxy in this process
//! on a current-thread runtime. One task turns SIGINT, SIGTERM or SIGHUP into a cancellation.
//!
//! Lifecycle: take `demo.lock` in the state directory (an exclusive `flock` holding our pid; the
//! kernel releases it when a process dies, so the lock of a killed demo is simply taken over),
//! stop servers a killed demo left running, check the ports, start the primary and then the
//! standby (reusing their data: running the demo again is idempotent), start the proxy, print the
//! banner, wait for a signal, drain the proxy (bounded), stop both servers (`-m fast`), release
//! the lock. Every step is bounded; a failure stops whatever had started and is reported as one
//! line.

use anyhow::{Context, bail};
use clap::Args;
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use switchyard_config::Config;
use switchyard_localpg::{Origin, PgOptions, PgServer};
use tokio_util::sync::CancellationToken;

use crate::serve;

/// How long open transactions may still run through the proxy after Ctrl-C.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// The lock file, in the state directory.
const LOCK_FILE: &str = "demo.lock";

/// The state directory when running as root: `postgres` must be able to enter it.
const ROOT_STATE_DIR: &str = "/var/tmp/switchyard-demo";

/// Options of `switchyard demo`.
#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Where the servers' data, sockets and logs are kept between runs [default:
    /// $XDG_STATE_HOME/switchyard-demo, else ~/.local/state/switchyard-demo; as root
    /// /var/tmp/switchyard-demo]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Address Switchyard listens on.
    #[arg(long, default_value = "127.0.0.1:6432")]
    pub listen: SocketAddr,
    /// Address of the status page, metrics and JSON API.
    #[arg(long, default_value = "127.0.0.1:9930")]
    pub admin_listen: SocketAddr,
    /// Port of the primary, on 127.0.0.1.
    #[arg(long, default_value_t = 5433)]
    pub primary_port: u16,
    /// Port of the standby, on 127.0.0.1.
    #[arg(long, default_value_t = 5434)]
    pub standby_port: u16,
}

/// Runs the demo until Ctrl-C, SIGTERM or SIGHUP, then stops everything it started.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let state = match &args.state_dir {
        Some(dir) => dir.clone(),
        None => default_state_dir()?,
    };
    let postgres = switchyard_localpg::pg_bin_dir().join("postgres");
    if !postgres.exists() {
        bail!(
            "PostgreSQL 15 is not installed ({} is missing): run scripts/setup, or set PG_BIN",
            postgres.display()
        );
    }
    let state = prepare_state_dir(&state)?;
    let _lock = DemoLock::take(&state)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run_locked(args, state))
}

/// The default `--state-dir`.
pub fn default_state_dir() -> anyhow::Result<PathBuf> {
    if switchyard_localpg::runs_as_postgres_user() {
        return Ok(PathBuf::from(ROOT_STATE_DIR));
    }
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if let Some(xdg) = absolute("XDG_STATE_HOME") {
        return Ok(xdg.join("switchyard-demo"));
    }
    let home =
        absolute("HOME").context("neither XDG_STATE_HOME nor HOME is set: pass --state-dir")?;
    Ok(home.join(".local/state/switchyard-demo"))
}

/// Creates the state directory (enterable by `postgres`: mode 0755) if missing; returns its
/// absolute path, which the servers' settings need.
fn prepare_state_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .create(dir)
            .with_context(|| format!("cannot create the state directory {}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    dir.canonicalize()
        .with_context(|| format!("cannot resolve the state directory {}", dir.display()))
}

async fn run_locked(args: DemoArgs, state: PathBuf) -> anyhow::Result<()> {
    let stop = stop_on_signal()?;
    let config = proxy_config(&args, &state)?;
    let started = Instant::now();
    let boot = {
        let (args, state) = (args.clone(), state.clone());
        tokio::task::spawn_blocking(move || start_cluster(&args, &state))
    };
    let cluster = match boot.await.context("the start-up task failed")? {
        Ok(cluster) => cluster,
        Err(e) if stop.is_cancelled() => {
            eprintln!("switchyard demo: interrupted while starting ({e:#}); nothing left running");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if stop.is_cancelled() {
        return stop_cluster(cluster).await;
    }
    let running = match serve::start(config).await {
        Ok(running) => running,
        Err(e) => {
            let _ = stop_cluster(cluster).await;
            return Err(e);
        }
    };
    print!("{}", banner(&args, &state, &cluster, started.elapsed()));
    let _ = std::io::stdout().flush();
    stop.cancelled().await;
    eprintln!("switchyard demo: stopping");
    let drain = running.drain(DRAIN_TIMEOUT);
    if tokio::time::timeout(DRAIN_TIMEOUT * 2, drain)
        .await
        .is_err()
    {
        eprintln!("switchyard demo: the proxy did not drain in time; stopping anyway");
    }
    stop_cluster(cluster).await?;
    eprintln!(
        "switchyard demo: stopped; the data stays in {}",
        state.display()
    );
    Ok(())
}

/// A token cancelled by the first SIGINT, SIGTERM or SIGHUP (shared with the drill).
fn stop_on_signal() -> anyhow::Result<CancellationToken> {
    switchyard_drill::interrupted().context("cannot handle SIGINT, SIGTERM or SIGHUP")
}

/// The proxy's config: both servers as one cluster, any database, user `postgres` with trust,
/// transaction pooling (as `examples/cluster.toml`).
fn proxy_config(args: &DemoArgs, state: &Path) -> anyhow::Result<Config> {
    let toml = format!(
        r#"
        [proxy]
        listen = "{listen}"
        [pool]
        mode = "transaction"
        size = 20
        [clusters.demo]
        members = ["127.0.0.1:{primary}", "127.0.0.1:{standby}"]
        [[sites]]
        database = "*"
        cluster = "demo"
        [[users]]
        name = "postgres"
        auth = "trust"
        [admin]
        listen = "{admin}"
        users = ["postgres"]
        incidents_file = "{incidents}"
        resolve_after = "20s"
        "#,
        admin = args.admin_listen,
        incidents = state.join("incidents.json").display(),
        listen = args.listen,
        primary = args.primary_port,
        standby = args.standby_port,
    );
    Config::from_toml(&toml).context("the demo's proxy config is invalid")
}

/// The two servers. Fields drop in order: the standby stops before the primary.
struct Cluster {
    standby: PgServer,
    primary: PgServer,
}

/// Stops leftovers of a killed demo, checks the ports, starts the primary and its standby.
/// Blocking (it runs programs and waits for them).
fn start_cluster(args: &DemoArgs, state: &Path) -> anyhow::Result<Cluster> {
    let (primary_dir, standby_dir) = (state.join("primary"), state.join("standby"));
    for (role, dir) in [("standby", &standby_dir), ("primary", &primary_dir)] {
        let stopped = PgServer::stop_leftover(dir)
            .with_context(|| format!("cannot stop the {role} an earlier demo left running"))?;
        if let Some(pid) = stopped {
            eprintln!(
                "switchyard demo: stopped the {role} (pid {pid}) an earlier demo left running"
            );
        }
    }
    check_ports(args)?;
    eprintln!(
        "switchyard demo: starting the primary on 127.0.0.1:{}",
        args.primary_port
    );
    let primary = PgServer::start_in(&primary_dir, args.primary_port, PgOptions::default())
        .context("cannot start the primary")?;
    eprintln!(
        "switchyard demo: starting the standby on 127.0.0.1:{}",
        args.standby_port
    );
    let standby = primary
        .start_standby_in(&standby_dir, args.standby_port)
        .context("cannot start the standby")?;
    Ok(Cluster { standby, primary })
}

/// Fails with a clear message if two ports collide or one is taken by another process.
fn check_ports(args: &DemoArgs) -> anyhow::Result<()> {
    let (primary, standby, listen) = (args.primary_port, args.standby_port, args.listen.port());
    if primary == standby || listen == primary || listen == standby {
        bail!("--listen, --primary-port and --standby-port need three different ports");
    }
    let wanted = [
        (args.listen, "--listen"),
        (local(primary), "--primary-port"),
        (local(standby), "--standby-port"),
        (args.admin_listen, "--admin-listen"),
    ];
    for (addr, flag) in wanted {
        if let Err(e) = TcpListener::bind(addr) {
            bail!(
                "{addr} is not free ({e}): stop what listens there, or choose another with {flag}"
            );
        }
    }
    Ok(())
}

fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Stops both servers (thawing them first, in case someone froze them), off the runtime.
async fn stop_cluster(cluster: Cluster) -> anyhow::Result<()> {
    tokio::task::spawn_blocking(move || {
        let standby = cluster
            .standby
            .shutdown()
            .context("cannot stop the standby");
        let primary = cluster
            .primary
            .shutdown()
            .context("cannot stop the primary");
        standby.and(primary)
    })
    .await
    .context("the stopping task failed")?
}

/// What the user reads once everything runs.
fn banner(args: &DemoArgs, state: &Path, cluster: &Cluster, took: Duration) -> String {
    let pid = cluster
        .primary
        .postmaster_pid()
        .map_or_else(|_| "<primary pid>".to_owned(), |p| p.to_string());
    let as_postgres = if switchyard_localpg::runs_as_postgres_user() {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let pg_ctl = switchyard_localpg::pg_bin_dir().join("pg_ctl");
    let host = if args.listen.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        args.listen.ip().to_string()
    };
    let (port, pport, sport) = (args.listen.port(), args.primary_port, args.standby_port);
    let psql = format!("psql -h {host} -p {port} -U postgres");
    let state = state.display();
    format!(
        "switchyard demo: ready in {took:.1?} (state in {state})
  primary     PostgreSQL on 127.0.0.1:{pport}, pid {pid} ({primary})
  standby     PostgreSQL on 127.0.0.1:{sport}, streaming from the primary ({standby})
  switchyard  on {listen}: transaction pooling, any database name, user postgres (no password)

Connect:
  {psql} postgres

Try a failover by hand, from another terminal:
  kill -STOP {pid}; pkill -STOP -P {pid}     # freeze the primary: postmaster, then its backends
  {as_postgres}{pg_ctl} -D {state}/standby/data promote
  {psql} -c 'select inet_server_port()'     # {sport}: Switchyard follows the promotion
  pkill -CONT -P {pid}; kill -CONT {pid}     # thaw the old primary: fenced (older timeline)
(The next demo starts from the primary's data again and makes a new standby.)

Admin console (SHOW POOLS, SHOW CLUSTERS, SHOW INCIDENTS, SHOW HELP):
  {psql} switchyard

Status page: http://{admin}/   metrics: http://{admin}/metrics   API: http://{admin}/api/incidents
Logs: {state}/primary/postgres.log, {state}/standby/postgres.log; Switchyard's on stderr.
Ctrl-C stops everything; the data stays in {state} for the next run.
",
        admin = args.admin_listen,
        primary = describe(cluster.primary.origin()),
        standby = describe(cluster.standby.origin()),
        listen = args.listen,
        pg_ctl = pg_ctl.display(),
    )
}

fn describe(origin: Origin) -> &'static str {
    match origin {
        Origin::Created => "new data",
        Origin::Reused => "data of an earlier run",
        Origin::Replaced => "data made anew",
    }
}

/// An exclusive `flock` on `<state>/demo.lock`, which holds the owner's pid. The kernel drops the
/// lock with the process, so a killed demo leaves no lock behind (the file stays).
struct DemoLock {
    file: File,
}

impl DemoLock {
    fn take(state: &Path) -> anyhow::Result<DemoLock> {
        let path = state.join(LOCK_FILE);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => bail!(
                "a demo is already running (pid {}) with its state in {}",
                holder(&mut file),
                state.display()
            ),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(DemoLock { file })
    }
}

impl Drop for DemoLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// The pid in a lock file another demo holds. It writes the pid just after locking, so an empty
/// file is read again for up to a second.
fn holder(file: &mut File) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let mut text = String::new();
        let read = file.rewind().and_then(|()| file.read_to_string(&mut text));
        if let Some(pid) = read.ok().and_then(|_| text.trim().parse::<u32>().ok()) {
            return pid.to_string();
        }
        if Instant::now() >= deadline {
            return "unknown".to_owned();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn defaults_match_the_readme() {
        let cli = Cli::parse_from(["demo"]);
        assert_eq!(cli.demo.listen.to_string(), "127.0.0.1:6432");
        assert_eq!((cli.demo.primary_port, cli.demo.standby_port), (5433, 5434));
        let config = proxy_config(&cli.demo, Path::new("/var/tmp/demo")).expect("valid");
        assert_eq!(config.clusters["demo"].members.len(), 2);
        assert_eq!(config.admin.listen, "127.0.0.1:9930");
        assert_eq!(config.admin.incidents_file, "/var/tmp/demo/incidents.json");
    }

    #[test]
    fn colliding_ports_are_refused() {
        let mut cli = Cli::parse_from(["demo"]);
        cli.demo.standby_port = cli.demo.primary_port;
        let err = check_ports(&cli.demo).expect_err("collision");
        assert!(err.to_string().contains("three different ports"), "{err}");
    }

    #[test]
    fn a_held_lock_names_its_holder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = DemoLock::take(dir.path()).expect("first lock");
        let err = DemoLock::take(dir.path())
            .err()
            .expect("second lock refused");
        let pid = std::process::id();
        assert!(
            err.to_string()
                .contains(&format!("a demo is already running (pid {pid})")),
            "{err}"
        );
        drop(first);
        DemoLock::take(dir.path()).expect("taken again after release");
    }
}
