//! Starting, reloading and draining one proxy.
//!
//! Loops started here: the accept loop (`frontend::listener`), the pool reaper (every second),
//! the admin surfaces (`switchyard-admin`: incident tracker, HTTP listener, notifier; the admin
//! console is installed in the proxy and served from client connections),
//! and, for a proxy started from a file, the config watcher (SIGHUP, plus a check of the file's
//! modification time every second).

use anyhow::Context;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use switchyard_admin::console::{ConsoleHooks, ReloadHook};
use switchyard_config::Config;
use switchyard_frontend::Proxy;
use switchyard_frontend::console::Console;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A running proxy.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub proxy: Arc<Proxy>,
    /// The operator surfaces: incidents, events, the HTTP listener.
    pub admin: switchyard_admin::Admin,
    /// The admin console (the proxy holds it weakly: this keeps it serving).
    pub console: Arc<dyn Console>,
    accept: JoinHandle<()>,
    /// Cancelled when a new process has taken over (online restart): drain then.
    pub handed_over: CancellationToken,
    /// The handover socket's task (it sends the moving sessions).
    offer: Option<JoinHandle<()>>,
}

/// Binds the listener and starts the proxy's loops, with no config file behind it (the admin
/// console's RELOAD says so).
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, None).await
}

/// Binds the listener and starts the proxy's loops; `path` is the file `config` came from,
/// which the admin console's RELOAD reads again.
pub async fn start_with(config: Config, path: Option<PathBuf>) -> anyhow::Result<Running> {
    let handover_socket = PathBuf::from(&config.proxy.handover_socket);
    let taken = if config.proxy.handover_socket.is_empty() {
        None
    } else {
        crate::handover::take_over(&handover_socket).await?
    };
    let (listener, admin_listener, incoming) = match taken {
        Some(t) => {
            tracing::info!(socket = %handover_socket.display(), "taking over from the running Switchyard");
            (from_std(t.listener)?, t.admin, Some(t.sessions))
        }
        None => (
            TcpListener::bind(&config.proxy.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.proxy.listen))?,
            None,
            None,
        ),
    };
    let admin_listener = match admin_listener {
        Some(l) => Some(from_std(l)?),
        None if !config.admin.listen.is_empty() => Some(
            TcpListener::bind(&config.admin.listen)
                .await
                .with_context(|| {
                    format!("cannot listen on {} (admin.listen)", config.admin.listen)
                })?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    // Kept for a later handover: the listeners as they are now.
    let listener_fd = listener.as_fd().try_clone_to_owned()?;
    let admin_fd = admin_listener
        .as_ref()
        .map(|l| l.as_fd().try_clone_to_owned())
        .transpose()?;
    let admin_config = config.admin.clone();
    let shutdown_timeout = config.proxy.shutdown_timeout.get();
    let proxy = Proxy::new(config).context("TLS settings")?;
    tokio::spawn(proxy.pools.clone().run_reaper(proxy.background.clone()));
    // The admin surfaces run until the drain is over, so an incident during shutdown is seen.
    let admin = switchyard_admin::start_on(
        proxy.clone(),
        &admin_config,
        proxy.background.clone(),
        admin_listener,
    )
    .await
    .with_context(|| format!("cannot listen on {} (admin.listen)", admin_config.listen))?;
    let handed_over = CancellationToken::new();
    // This process offers to be replaced once it has taken in everything it replaced.
    let received = CancellationToken::new();
    if incoming.is_none() {
        received.cancel();
    }
    let offer = (!handover_socket.as_os_str().is_empty()).then(|| {
        tokio::spawn(crate::handover::offer(
            handover_socket,
            listener_fd,
            admin_fd,
            proxy.clone(),
            handed_over.clone(),
            received.clone(),
        ))
    });
    let hooks = ConsoleHooks {
        reload: path.map(|p| Box::new(move |proxy: &Proxy| reload(proxy, &p)) as ReloadHook),
        listen: Some(addr),
    };
    let console = switchyard_admin::console::install(&admin.state, hooks);
    let accept = tokio::spawn(switchyard_frontend::listener::serve(
        proxy.clone(),
        listener,
    ));
    if let Some(incoming) = incoming {
        // Accepting now: the old process may stop.
        // The old process drains for its shutdown_timeout (likely this one's), then sends
        // what is left.
        let limit = shutdown_timeout + Duration::from_secs(30);
        tokio::spawn(incoming.receive(proxy.clone(), received, limit));
    }
    tracing::info!(%addr, "switchyard listening");
    Ok(Running {
        addr,
        proxy,
        admin,
        console,
        accept,
        handed_over,
        offer,
    })
}

fn from_std(l: std::net::TcpListener) -> std::io::Result<TcpListener> {
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

impl Running {
    /// Stops accepting, lets sessions finish their transactions for up to `timeout`, then returns
    /// (remaining sessions end with the process or the runtime).
    pub async fn drain(self, timeout: Duration) {
        self.proxy.shutdown.cancel();
        let _ = self.accept.await;
        let deadline = tokio::time::Instant::now() + timeout;
        while self.proxy.client_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.proxy.client_count();
        if left > 0 {
            tracing::warn!(
                clients = left,
                "shutdown timeout reached; closing remaining connections"
            );
        } else {
            tracing::info!("all clients drained");
        }
        if self.handed_over.is_cancelled()
            && let Some(offer) = self.offer
        {
            // The last sessions queued for the new process go out before this one exits.
            let _ = tokio::time::timeout(Duration::from_secs(5), offer).await;
        }
        self.proxy.background.cancel();
    }
}

/// Loads `path` again and applies it if valid; an invalid file leaves the running config alone.
pub fn reload(proxy: &Proxy, path: &Path) -> Result<(), String> {
    match Config::load(path) {
        Ok(c) => {
            if c.proxy.listen != proxy.live.load().config.proxy.listen {
                tracing::warn!("proxy.listen changed: takes effect after a restart");
            }
            if let Err(e) = proxy.reload(c) {
                tracing::error!(path = %path.display(), error = %e, "config reload refused; keeping the running config");
                return Err(e.to_string());
            }
            tracing::info!(path = %path.display(), "config reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "config reload refused; keeping the running config");
            Err(e.to_string())
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The modification times of the config file and of the TLS files the running config names:
/// a renewed certificate is picked up like an edited config.
fn stamp(proxy: &Proxy, path: &Path) -> Vec<Option<SystemTime>> {
    let live = proxy.live.load();
    let (p, s) = (&live.config.proxy, &live.config.server);
    let tls_files = [
        &p.tls_cert_file,
        &p.tls_key_file,
        &p.client_tls_ca_file,
        &s.tls_ca_file,
    ];
    std::iter::once(mtime(path))
        .chain(
            tls_files
                .into_iter()
                .filter(|f| !f.is_empty())
                .map(|f| mtime(Path::new(f))),
        )
        .collect()
}

/// Reloads on SIGHUP and when the modification time of the file, or of a TLS file it names,
/// changes, until shutdown. The caller installs the SIGHUP handler (`hup`) before announcing
/// readiness, so no early signal kills us.
pub async fn watch_config(proxy: Arc<Proxy>, path: PathBuf, mut hup: tokio::signal::unix::Signal) {
    let mut seen = stamp(&proxy, &path);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading config");
                let _ = reload(&proxy, &path);
                seen = stamp(&proxy, &path);
            }
            _ = tick.tick() => {
                let now = stamp(&proxy, &path);
                if now.first().is_some_and(Option::is_some) && now != seen {
                    // A refused reload (a key written before its certificate) is tried again
                    // at the next change.
                    let _ = reload(&proxy, &path);
                    seen = stamp(&proxy, &path);
                }
            }
            _ = proxy.shutdown.cancelled() => return,
        }
    }
}
