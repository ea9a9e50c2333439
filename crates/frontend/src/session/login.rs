//! Login: startup negotiation, authentication, the client's target, validating the client's
//! settings on a server, and the greeting (ParameterStatus, BackendKeyData, ReadyForQuery).

use super::pool_for::{Target, pool_at, sync_settings, target_for};
use crate::auth::authenticate;
use crate::cancel::CancelHandle;
use crate::client::ClientConn;
use crate::params::ClientParams;
use crate::startup::{Hello, negotiate};
use crate::{Proxy, SessionError};
use std::collections::BTreeMap;
use switchyard_config::EffectivePool;
use switchyard_pool::Pool;
use switchyard_proto::Frame;
use switchyard_proto::backend::{self, TxStatus};

/// A client that has logged in, before its relay starts.
pub struct LoggedIn {
    pub target: Target,
    pub settings: std::sync::Arc<EffectivePool>,
    pub failover_timeout: std::time::Duration,
    pub welcome: std::sync::Arc<BTreeMap<String, String>>,
    pub params: ClientParams,
    pub cancel: CancelHandle,
}

/// Runs the login; `Ok(None)` for a connection that only carried a cancel request.
pub async fn login(
    proxy: &Proxy,
    client: &mut ClientConn,
) -> Result<Option<LoggedIn>, SessionError> {
    let startup = match negotiate(client).await? {
        Hello::Cancel { process_id, secret } => {
            proxy.cancels.cancel(process_id, &secret).await;
            return Ok(None);
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
    let live = proxy.live.load_full();
    authenticate(client, &user, live.auth.get(&user)).await?;
    let config = &live.config;
    let user_cfg = live
        .users
        .get(&user)
        .ok_or_else(|| SessionError::AuthFailed { user: user.clone() })?;
    let site = config
        .site_for(&database)
        .ok_or_else(|| SessionError::NoSuchDatabase(database.clone()))?;
    let target = target_for(site, &database, user_cfg);
    let settings = live.settings_for(site);
    let failover_timeout = config.failover.failover_timeout.get();
    let known = proxy
        .pools
        .known_welcome(&target.server_db, target.user.server_user());
    let welcome = match known {
        Some(w) => w,
        None => {
            let pool = primary_pool(proxy, &target, &settings, failover_timeout).await?;
            pool.0
                .welcome_params(settings.query_wait_timeout.get())
                .await?
        }
    };
    let params =
        ClientParams::from_startup(&startup, &welcome).map_err(SessionError::Unsupported)?;
    // Settings are tried at login only while there is a primary to try them on: during a
    // failover the login goes ahead, and the first transaction (held in the gate) applies them.
    let has_primary = proxy.router.monitor(&target.cluster).is_some_and(|m| {
        matches!(
            m.view().state,
            switchyard_topology::ClusterState::Primary { .. }
        )
    });
    if params.has_overrides() && has_primary {
        let (pool, generation) = primary_pool(proxy, &target, &settings, failover_timeout).await?;
        validate_settings(
            &pool,
            generation,
            &params,
            &welcome,
            settings.query_wait_timeout.get(),
        )
        .await?;
    }
    let cancel = proxy.cancels.register();
    greet(client, &params, &cancel).await?;
    tracing::info!(%user, %database, process_id = cancel.process_id, "login");
    Ok(Some(LoggedIn {
        target,
        settings,
        failover_timeout,
        welcome,
        params,
        cancel,
    }))
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
        pool_at(proxy, &live.config, target, &route.addr, settings),
        route.generation,
    ))
}

/// Settings the servers lack (TimeZone, search_path...) are tried once at login, so a bad value
/// fails the login as it would on PostgreSQL, not every later transaction.
async fn validate_settings(
    pool: &Pool,
    generation: u64,
    params: &ClientParams,
    welcome: &BTreeMap<String, String>,
    wait: std::time::Duration,
) -> Result<(), SessionError> {
    let server = pool.checkout(wait, generation).await?;
    let server = sync_settings(pool, server, params, welcome)
        .await
        .map_err(SessionError::Server)?;
    pool.release(server);
    Ok(())
}

async fn greet(
    client: &mut ClientConn,
    params: &ClientParams,
    cancel: &CancelHandle,
) -> Result<(), SessionError> {
    let mut frames: Vec<Frame> = params
        .reported()
        .map(|(k, v)| backend::parameter_status(k, v))
        .collect();
    frames.push(backend::backend_key_data(cancel.process_id, &cancel.secret));
    frames.push(backend::ready_for_query(TxStatus::Idle));
    client.send(&frames).await
}
