//! The admin console: PgBouncer-style SHOW commands and operator commands over the PostgreSQL
//! protocol, on the virtual database `switchyard` (`psql -h 127.0.0.1 -p 6432 -U postgres
//! switchyard`), for the users in `admin.users`.
//!
//! The frontend authenticates the connection and greets it, then hands it to [`AdminConsole`]
//! through the `switchyard_frontend::console::Console` hook; [`connection`] runs the loop (simple
//! queries only), [`command`] parses and dispatches, and each command has its own file.
//! Operator commands are logged and recorded as events (`SHOW EVENTS`).

mod command;
mod connection;
mod error;
mod fence;
mod lookup;
mod pause;
mod reconnect;
mod reload;
mod show_clients;
mod show_clusters;
mod show_config;
mod show_databases;
mod show_events;
mod show_incidents;
mod show_pools;
mod show_servers;
mod show_stats;
mod shutdown;
mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use switchyard_frontend::Proxy;
use switchyard_frontend::console::{Console, ConsoleClient};

use crate::state::AdminState;

pub use error::{COMMANDS, ConsoleError};

/// Reloads the config file (RELOAD): `Err` says why it was refused.
pub type ReloadHook = Box<dyn Fn(&Proxy) -> Result<(), String> + Send + Sync>;

/// What the console needs from the process that runs it.
#[derive(Default)]
pub struct ConsoleHooks {
    /// RELOAD; `None`: the proxy was started without a config file.
    pub reload: Option<ReloadHook>,
    /// Where the proxy listens (SHOW CLIENTS' `local_addr`, `local_port`).
    pub listen: Option<SocketAddr>,
}

/// The console, as installed in the proxy.
pub struct AdminConsole {
    state: Arc<AdminState>,
    hooks: Arc<ConsoleHooks>,
}

impl Console for AdminConsole {
    fn serve(&self, client: ConsoleClient) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(connection::serve(
            self.state.clone(),
            self.hooks.clone(),
            client,
        ))
    }
}

/// Installs the console in `state`'s proxy. The proxy holds it weakly: keep the returned handle
/// for as long as the console should serve.
pub fn install(state: &Arc<AdminState>, hooks: ConsoleHooks) -> Arc<dyn Console> {
    let console: Arc<dyn Console> = Arc::new(AdminConsole {
        state: state.clone(),
        hooks: Arc::new(hooks),
    });
    if !state.proxy.install_console(&console) {
        tracing::warn!("an admin console was already installed; keeping the first");
    }
    console
}

/// What a command runs with.
pub(crate) struct Ctx<'a> {
    pub state: &'a AdminState,
    pub hooks: &'a ConsoleHooks,
    /// Who typed the command.
    pub user: &'a str,
}

impl Ctx<'_> {
    pub fn proxy(&self) -> &Proxy {
        &self.state.proxy
    }

    /// Whether the user may change things (is in `admin.users`, read live): `stats_users` may
    /// only look.
    pub fn may_operate(&self) -> bool {
        self.proxy()
            .live
            .load()
            .config
            .admin
            .users
            .iter()
            .any(|u| u == self.user)
    }

    /// Logs an operator command and records it as an event (`cluster` "" for the whole proxy).
    pub fn record(&self, cluster: &str, detail: String) {
        self.state.event(
            cluster,
            crate::events::EventKind::Command,
            format!("{detail} (by {})", self.user),
        );
    }
}
