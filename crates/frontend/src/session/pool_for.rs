//! Where a client's transactions go: its target (cluster, server database, server user), the
//! pool for that target at the cluster's current primary, and keeping pools in step with a
//! reloaded config.

use crate::Proxy;
use crate::params::ClientParams;
use crate::proxy::Live;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{EffectivePool, SiteConfig, UserConfig};
use switchyard_pool::{Pool, PoolKey, PoolSettings, Pooled};
use switchyard_router::{allowed_auth, socket_options};
use switchyard_server::{ConnectParams, Credential, ServerError};

/// How long internal statements (SET, reset) may take on a healthy server.
pub const INTERNAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Brings a checked-out connection's settings in line with the client's (skipped when its
/// fingerprint says they already match). On failure the connection goes back to its pool if a
/// SET was merely refused (a bad value), and is closed otherwise.
pub async fn sync_settings(
    pool: &Pool,
    mut server: Pooled,
    params: &ClientParams,
    welcome: &BTreeMap<String, String>,
) -> Result<Pooled, ServerError> {
    if server.conn.settings_fingerprint != params.fingerprint()
        && let Some(sql) = params.sync_sql(&server.conn.params, welcome)
    {
        let ran = tokio::time::timeout(INTERNAL_QUERY_TIMEOUT, server.conn.run(&sql)).await;
        let ran = ran.unwrap_or_else(|_| {
            Err(ServerError::Timeout {
                addr: pool.addr().to_string(),
                what: "setting session parameters",
                after_ms: INTERNAL_QUERY_TIMEOUT.as_millis(),
            })
        });
        match ran {
            Ok(_) => params.apply_to(&mut server.conn.params, welcome),
            Err(e @ ServerError::Query(_)) => {
                pool.release(server);
                return Err(e);
            }
            Err(e) => {
                pool.discard(server);
                return Err(e);
            }
        }
    }
    server.conn.settings_fingerprint = params.fingerprint();
    Ok(server)
}

/// What a logged-in client is served from.
#[derive(Debug, Clone)]
pub struct Target {
    pub cluster: String,
    pub server_db: String,
    pub user: Arc<UserConfig>,
    /// How the target's pools log in: the user's server password, or (auth_query users) the
    /// secret its clients' logins proved.
    pub credential: Credential,
}

/// The server database a client's `database` maps to on `site`.
pub fn server_db(site: &SiteConfig, database: &str) -> String {
    site.server_database
        .clone()
        .unwrap_or_else(|| database.to_string())
}

pub fn target_for(
    site: &SiteConfig,
    database: &str,
    user: &Arc<UserConfig>,
    credential: Credential,
) -> Target {
    Target {
        cluster: site.cluster.clone(),
        server_db: server_db(site, database),
        user: user.clone(),
        credential,
    }
}

fn settings(p: &EffectivePool) -> PoolSettings {
    PoolSettings {
        size: p.size,
        min_idle: p.min_idle,
        idle_timeout: p.server_idle_timeout.get(),
        lifetime: p.server_lifetime.get(),
    }
}

fn connect_params(
    live: &Live,
    cluster: &str,
    addr: String,
    database: String,
    user: &UserConfig,
    credential: Credential,
) -> ConnectParams {
    let s = &live.config.server;
    let server_name = live
        .config
        .clusters
        .get(cluster)
        .and_then(|c| switchyard_router::server_name(c, &addr));
    ConnectParams {
        addr,
        server_name,
        user: user.server_user().to_string(),
        database,
        credential,
        connect_timeout: s.connect_timeout.get(),
        socket: socket_options(s),
        allowed_auth: allowed_auth(s),
        tls: live.server_tls.clone(),
        probe_commits: live.config.failover.resolve_commits,
        probe_writes: live.config.failover.resolve_autocommit_writes,
    }
}

/// The pool for `target` on the server at `addr`.
pub fn pool_at(
    proxy: &Proxy,
    live: &Live,
    target: &Target,
    addr: &str,
    eff: &EffectivePool,
) -> Arc<Pool> {
    let key = PoolKey {
        addr: addr.to_string(),
        database: target.server_db.clone(),
        user: target.user.server_user().to_string(),
    };
    proxy.pools.get(
        &key,
        || {
            connect_params(
                live,
                &target.cluster,
                addr.to_string(),
                target.server_db.clone(),
                &target.user,
                target.credential.clone(),
            )
        },
        settings(eff),
    )
}

/// After a reload: resize pools whose site, user and member remain; drop the others (their
/// checked-out connections close when released) and those whose connection settings changed.
pub fn reconcile_pools(proxy: &Proxy) {
    let live = proxy.live.load();
    let config = &live.config;
    let mut kept = 0;
    proxy.pools.retain(|key, pool| {
        let site = config
            .sites
            .iter()
            .find(|s| s.server_database.as_deref() == Some(key.database.as_str()))
            .or_else(|| config.site_for(&key.database));
        let Some(site) = site else {
            return false;
        };
        let configured = config.users.iter().find(|u| u.server_user() == key.user);
        let (user, credential) = match configured {
            Some(u) => (u.clone(), u.server_password().map(str::to_string).into()),
            // An auth_query user's pools stay while auth_query does.
            None if !config.proxy.auth_user.is_empty() => {
                match proxy.auth_query.known_user(&site.cluster, &key.user) {
                    Some(k) => ((*k.config).clone(), k.credential()),
                    None => return false,
                }
            }
            None => return false,
        };
        let member = config.clusters.contains_key(&site.cluster)
            && proxy.router.members(&site.cluster).contains(&key.addr);
        if !member
            || *pool.connect_params()
                != connect_params(
                    &live,
                    &site.cluster,
                    key.addr.clone(),
                    key.database.clone(),
                    &user,
                    credential,
                )
        {
            return false;
        }
        pool.resize(settings(&config.effective_pool(site)));
        kept += 1;
        true
    });
    tracing::info!(pools = kept, "pools reconciled with the new config");
}
