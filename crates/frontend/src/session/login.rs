//! Login: startup negotiation, authentication, then either a client session (its target,
//! validating the client's settings on a server) or an admin-console connection (the virtual
//! database `switchyard`, `admin.users` only), and the greeting (ParameterStatus,
//! BackendKeyData, ReadyForQuery).

use super::pool_for::{Target, pool_at, server_db, sync_settings, target_for};
use crate::auth::authenticate;
use crate::auth_query::LookedUp;
use crate::cancel::{CancelHandle, ClientInfo, Who};
use crate::client::ClientConn;
use crate::console::{CONSOLE_DATABASE, Console};
use crate::params::ClientParams;
use crate::proxy::{Live, UserAuth};
use crate::startup::{Hello, negotiate};
use crate::{Proxy, SessionError};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use switchyard_config::{Config, EffectivePool, PoolMode, UserConfig};
use switchyard_pool::{Pool, Pooled};
use switchyard_proto::Frame;
use switchyard_proto::backend::{self, TxStatus};
use switchyard_server::{Credential, ServerSecret};

/// A client that has logged in, before its relay starts.
pub struct LoggedIn {
    pub target: Arc<Target>,
    pub settings: std::sync::Arc<EffectivePool>,
    pub welcome: std::sync::Arc<BTreeMap<String, String>>,
    pub params: ClientParams,
    pub cancel: CancelHandle,
}

/// A session-mode client's server connection, taken at login (so the client's backend key is
/// the server's own process id), and the generation it belongs to.
pub type Pinned = (Pooled, u64);

/// How a login ended.
pub enum Login {
    /// A client session, greeted; its relay comes next (on its pinned server connection in
    /// session mode, when there was a primary at login).
    Session(LoggedIn, Option<Pinned>),
    /// An admin-console connection, greeted; the console serves it next.
    Console {
        user: String,
        registration: CancelHandle,
        console: Arc<dyn Console>,
    },
    /// The connection only carried a cancel request.
    Cancel,
}

/// Runs the login: startup, authentication, then a session's or the console's greeting.
pub async fn login(
    proxy: &Proxy,
    client: &mut ClientConn,
    peer: Option<SocketAddr>,
) -> Result<Login, SessionError> {
    let tls = proxy.live.load().client_tls.clone();
    let startup = match negotiate(client, &tls).await? {
        Hello::Cancel { process_id, secret } => {
            if !proxy.cancels.cancel(process_id, &secret).await {
                // Maybe a client of the process this one replaced, still draining there.
                proxy.forward_to_predecessor(process_id, secret);
            }
            return Ok(Login::Cancel);
        }
        Hello::Startup { params } => params,
    };
    let get = |k: &str| startup.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let user = get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        SessionError::Unsupported("no PostgreSQL user name specified in startup packet".into())
    })?;
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    if tls.checks_user_name() && client.stream.peer_common_name().as_deref() != Some(&user) {
        // client_tls = verify-full: the certificate must name the user, whatever the method.
        return Err(SessionError::CertAuthFailed { user });
    }
    let live = proxy.live.load_full();
    let claimed = claim(proxy, &live, &user, &database).await?;
    let (user_cfg, credential) = match claimed {
        Claimed::Configured(cfg) => {
            authenticate(client, &user, live.auth.get(&user), &proxy.mock_nonce).await?;
            let credential = cfg.server_password().map(str::to_string).into();
            (cfg, credential)
        }
        Claimed::LookedUp(found) => {
            let proved = authenticate(client, &user, found.auth.as_ref(), &proxy.mock_nonce).await;
            let keys = proved.inspect_err(|e| {
                if matches!(e, SessionError::AuthFailed { .. }) {
                    proxy.auth_query.forget(&found);
                }
            })?;
            // What the server logins of this user's pools prove from now on.
            let known = proxy.auth_query.admit(&found);
            match (keys, &found.auth) {
                (Some(keys), _) => known.secret.set(ServerSecret::Scram(keys)),
                (None, Some(UserAuth::Md5 { stored })) => {
                    known.secret.set(ServerSecret::Md5(stored.clone()))
                }
                _ => {}
            }
            (known.config.clone(), known.credential())
        }
        Claimed::Unknown => {
            authenticate(client, &user, None, &proxy.mock_nonce).await?;
            return Err(SessionError::AuthFailed { user });
        }
    };
    if database == CONSOLE_DATABASE {
        return console_login(proxy, client, &live.config, user_cfg, peer).await;
    }
    drop(live);
    let (s, pinned) = session_login(
        proxy, client, &startup, &database, &user_cfg, credential, peer,
    )
    .await?;
    Ok(Login::Session(s, pinned))
}

/// Who a client says it is, before it proves it.
enum Claimed {
    Configured(Arc<UserConfig>),
    /// Not configured; `auth_query` found it (or found nothing: then its `auth` is `None`).
    LookedUp(LookedUp),
    /// Neither: the login goes through an exchange that cannot succeed.
    Unknown,
}

async fn claim(
    proxy: &Proxy,
    live: &Live,
    user: &str,
    database: &str,
) -> Result<Claimed, SessionError> {
    if let Some(cfg) = live.users.get(user) {
        return Ok(Claimed::Configured(cfg.clone()));
    }
    if live.config.proxy.auth_user.is_empty() || database == CONSOLE_DATABASE {
        return Ok(Claimed::Unknown);
    }
    let Some(site) = live.config.site_for(database) else {
        return Ok(Claimed::Unknown);
    };
    let server_db = server_db(site, database);
    let found = proxy
        .auth_query
        .lookup(proxy, live, site, &server_db, user)
        .await?;
    Ok(Claimed::LookedUp(found))
}

/// The parameters the target's servers report at login (known from its pool, else asked of
/// the primary, waiting in the failover gate for one).
pub(crate) async fn welcome_for(
    proxy: &Proxy,
    target: &Target,
    settings: &EffectivePool,
    failover_timeout: std::time::Duration,
) -> Result<Arc<BTreeMap<String, String>>, SessionError> {
    let known = proxy
        .pools
        .known_welcome(&target.server_db, target.user.server_user());
    if let Some(w) = known {
        return Ok(w);
    }
    let (pool, _) = primary_pool(proxy, target, settings, failover_timeout).await?;
    match pool.welcome_params(settings.query_wait_timeout.get()).await {
        Ok(w) => Ok(w),
        Err(e) => {
            // A database or user the server refuses (likely through a `*` site) leaves no
            // pool behind.
            proxy.pools.forget_if_unused(&pool);
            Err(e.into())
        }
    }
}

/// A client session's login after authentication: its target, its settings, the greeting.
async fn session_login(
    proxy: &Proxy,
    client: &mut ClientConn,
    startup: &[(String, String)],
    database: &str,
    user_cfg: &Arc<UserConfig>,
    credential: Credential,
    peer: Option<SocketAddr>,
) -> Result<(LoggedIn, Option<Pinned>), SessionError> {
    let live = proxy.live.load_full();
    let config = &live.config;
    let site = config
        .site_for(database)
        .ok_or_else(|| SessionError::NoSuchDatabase(database.to_owned()))?;
    let target = proxy
        .targets
        .share(target_for(site, database, user_cfg, credential));
    let settings = live.settings_for(site);
    let failover_timeout = config.failover.failover_timeout.get();
    drop(live);
    let welcome = welcome_for(proxy, &target, &settings, failover_timeout).await?;
    let mut params =
        ClientParams::from_startup(startup, &welcome).map_err(SessionError::Unsupported)?;
    let pinned = check_settings(
        proxy,
        &target,
        &settings,
        &mut params,
        &welcome,
        failover_timeout,
    )
    .await?;
    // In session mode the client's backend is one server process for its whole session: its
    // key carries that process id, so pg_backend_pid(), a NOTIFY's sender and
    // pg_terminate_backend(pg_backend_pid()) mean what they would on a direct connection.
    let server_pid = pinned.as_ref().map(|(s, _)| s.conn.key().process_id);
    let cancel = proxy.cancels.register(
        ClientInfo {
            who: Who::Session(target.clone()),
            peer,
            connected_unix_s: unix_s(),
        },
        server_pid,
    );
    let frames = params
        .reported()
        .map(|(k, v)| backend::parameter_status(k, v));
    greet(client, frames.collect(), &cancel).await?;
    tracing::info!(user = %user_cfg.name, %database, process_id = cancel.process_id, "login");
    let logged_in = LoggedIn {
        target,
        settings,
        welcome,
        params,
        cancel,
    };
    Ok((logged_in, pinned))
}

/// Settings are tried at login only while there is a primary to try them on: during a
/// failover the login goes ahead, and the first transaction (held in the gate) applies them.
/// In session mode the connection they were tried on is kept: the session's own.
async fn check_settings(
    proxy: &Proxy,
    target: &Target,
    settings: &EffectivePool,
    params: &mut ClientParams,
    welcome: &BTreeMap<String, String>,
    failover_timeout: std::time::Duration,
) -> Result<Option<Pinned>, SessionError> {
    let has_primary = proxy.router.monitor(&target.cluster).is_some_and(|m| {
        matches!(
            m.view().state,
            switchyard_topology::ClusterState::Primary { .. }
        )
    });
    // While an operator has the database paused (PAUSE), a login takes no server connection:
    // the first request waits for RESUME and applies the settings then.
    let paused = proxy.pauses.is_paused(&target.cluster, &target.server_db);
    let pin = settings.mode == PoolMode::Session;
    if !((params.has_overrides() || pin) && has_primary) || paused {
        return Ok(None);
    }
    let (pool, generation) = primary_pool(proxy, target, settings, failover_timeout).await?;
    // A session-mode login never queues for a server connection: sessions may hold the whole
    // pool, each idle until its client (a pgbench connecting all its clients first, say) goes
    // on. With none free it goes ahead, and its first request takes one and applies the
    // settings, as during a failover.
    let wait = if pin {
        std::time::Duration::ZERO
    } else {
        settings.query_wait_timeout.get()
    };
    let server = match validate_settings(&pool, generation, params, welcome, wait).await {
        // A failover began meanwhile: as above, the first transaction applies them.
        Err(SessionError::PrimaryChanged) => return Ok(None),
        // The primary cannot be reached (a failover not yet noticed): the same, and the
        // monitor hears of it.
        Err(SessionError::Server(e)) if e.is_unreachable() => {
            if let Some(m) = proxy.router.monitor(&target.cluster) {
                m.suspect(pool.addr());
            }
            tracing::info!(server = %pool.addr(), error = %e, "settings not tried at login: the primary is unreachable");
            return Ok(None);
        }
        Err(SessionError::PoolTimeout { .. }) if pin => return Ok(None),
        other => other?,
    };
    if pin {
        return Ok(Some((server, generation)));
    }
    pool.release(server);
    Ok(None)
}

/// An admin-console connection's login after authentication: only `admin.users` and
/// `admin.stats_users` get in (the latter to look only).
async fn console_login(
    proxy: &Proxy,
    client: &mut ClientConn,
    config: &Config,
    user: Arc<UserConfig>,
    peer: Option<SocketAddr>,
) -> Result<Login, SessionError> {
    let admin = &config.admin;
    if !(admin.users.contains(&user.name) || admin.stats_users.contains(&user.name)) {
        let user = user.name.clone();
        return Err(SessionError::NotAdmin { user });
    }
    let console = proxy.console().ok_or(SessionError::NoConsole)?;
    let name = user.name.clone();
    let cancel = proxy.cancels.register(
        ClientInfo {
            who: Who::Console(user),
            peer,
            connected_unix_s: unix_s(),
        },
        None,
    );
    let version = format!("{}/switchyard", env!("CARGO_PKG_VERSION"));
    let params = [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("application_name", ""),
    ];
    let frames = params.iter().map(|(k, v)| backend::parameter_status(k, v));
    greet(client, frames.collect(), &cancel).await?;
    tracing::info!(user = %name, process_id = cancel.process_id, "admin console login");
    Ok(Login::Console {
        user: name,
        registration: cancel,
        console,
    })
}

fn unix_s() -> u64 {
    switchyard_topology::counters::unix_ms() / 1000
}

/// The pool at the target's current primary (waiting in the failover gate) and its generation.
pub async fn primary_pool(
    proxy: &Proxy,
    target: &Target,
    settings: &EffectivePool,
    gate: std::time::Duration,
) -> Result<(std::sync::Arc<Pool>, u64), SessionError> {
    let route = proxy.router.primary(&target.cluster, gate).await?;
    let live = proxy.live.load();
    Ok((
        pool_at(proxy, &live, target, &route.addr, settings),
        route.generation,
    ))
}

/// Settings the servers lack (TimeZone, search_path...) are tried once at login, so a bad value
/// fails the login as it would on PostgreSQL, not every later transaction. Returns the
/// connection they were tried on.
async fn validate_settings(
    pool: &std::sync::Arc<Pool>,
    generation: u64,
    params: &mut ClientParams,
    welcome: &BTreeMap<String, String>,
    wait: std::time::Duration,
) -> Result<Pooled, SessionError> {
    let server = pool.checkout(wait, generation).await?;
    let mut server = sync_settings(pool, server, params, welcome)
        .await
        .map_err(SessionError::Server)?;
    // The greeting reports the settings as PostgreSQL spells them.
    params.adopt_server_spelling(&server.conn.params);
    server.conn.settings_fingerprint = params.fingerprint();
    Ok(server)
}

async fn greet(
    client: &mut ClientConn,
    mut frames: Vec<Frame>,
    cancel: &CancelHandle,
) -> Result<(), SessionError> {
    frames.push(backend::backend_key_data(cancel.process_id, &cancel.secret));
    frames.push(backend::ready_for_query(TxStatus::Idle));
    client.send(&frames).await
}
