//! Switchyard's operator surfaces: what happened and what is happening, for people and tools.
//!
//! - `tracker`: samples every cluster every 100 ms; events and incidents come from it.
//! - `incident`: the pure incident state machine (Investigating → Identified → Monitoring →
//!   Resolved) with scope of impact; `store`: incidents kept in a JSON file across restarts.
//! - `events`: the bounded event log.
//! - `http`: `/livez`, `/readyz`, `/metrics` (`metrics`, prometheus-client), `/api/…`
//!   (`snapshot`), and the status page (`page`).
//! - `notify`: webhooks on every incident transition, off the data path.
#![forbid(unsafe_code)]

pub mod console;
pub mod events;
pub mod http;
pub mod incident;
pub mod metrics;
pub mod notify;
mod page;
pub mod snapshot;
mod state;
pub mod store;
mod tracker;

use std::net::SocketAddr;
use std::sync::Arc;

use switchyard_config::AdminConfig;
use switchyard_frontend::Proxy;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use state::AdminState;

/// The running admin surfaces.
pub struct Admin {
    pub state: Arc<AdminState>,
    /// Where the HTTP listener listens, if it does.
    pub http: Option<SocketAddr>,
}

/// Starts the tracker, the notifier and (if `config.listen` is set) the HTTP listener; they run
/// until `stop`. Fails only if the HTTP listener cannot bind.
pub async fn start(
    proxy: Arc<Proxy>,
    config: &AdminConfig,
    stop: CancellationToken,
) -> std::io::Result<Admin> {
    start_on(proxy, config, stop, None).await
}

/// [`start`], serving HTTP on `listener` (one already bound, as taken over from a process
/// being replaced) instead of binding `config.listen`.
pub async fn start_on(
    proxy: Arc<Proxy>,
    config: &AdminConfig,
    stop: CancellationToken,
    listener: Option<TcpListener>,
) -> std::io::Result<Admin> {
    let state = AdminState::new(proxy, config);
    let http = if config.listen.is_empty() {
        None
    } else {
        let listener = match listener {
            Some(l) => l,
            None => TcpListener::bind(&config.listen).await?,
        };
        let addr = listener.local_addr()?;
        tokio::spawn(http::serve(listener, state.clone(), stop.clone()));
        tracing::info!(%addr, "admin HTTP listening (status page, /metrics, /api)");
        Some(addr)
    };
    let notifier = notify::Notifier::start(config.webhooks.clone(), state.clone(), stop.clone());
    tokio::spawn(tracker::run(state.clone(), notifier, stop));
    Ok(Admin { state, http })
}
