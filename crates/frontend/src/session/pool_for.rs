//! Where a client's transactions go: its target (cluster, server database, server user), the
//! pool for that target at the cluster's current primary, and keeping pools in step with a
//! reloaded config.

use crate::Proxy;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{Config, EffectivePool, SiteConfig, UserConfig};
use switchyard_pool::{Pool, PoolKey, PoolSettings};
use switchyard_server::{ConnectParams, SocketOptions};

/// How long internal statements (SET, reset) may take on a healthy server.
pub const INTERNAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a logged-in client is served from.
#[derive(Debug, Clone)]
pub struct Target {
    pub cluster: String,
    pub server_db: String,
    pub user: Arc<UserConfig>,
}

pub fn target_for(site: &SiteConfig, database: &str, user: &Arc<UserConfig>) -> Target {
    Target {
        cluster: site.cluster.clone(),
        server_db: site
            .server_database
            .clone()
            .unwrap_or_else(|| database.to_string()),
        user: user.clone(),
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
    config: &Config,
    addr: String,
    database: String,
    user: &UserConfig,
) -> ConnectParams {
    let s = &config.server;
    ConnectParams {
        addr,
        user: user.server_user().to_string(),
        database,
        password: user.server_password().map(str::to_string),
        connect_timeout: s.connect_timeout.get(),
        socket: SocketOptions {
            keepalive_idle: s.keepalive_idle.get(),
            keepalive_interval: s.keepalive_interval.get(),
            keepalive_count: s.keepalive_count,
            tcp_user_timeout: s.tcp_user_timeout.get(),
        },
    }
}

/// The pool for `target` on the server at `addr`.
pub fn pool_at(
    proxy: &Proxy,
    config: &Config,
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
                config,
                addr.to_string(),
                target.server_db.clone(),
                &target.user,
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
        let user = config.users.iter().find(|u| u.server_user() == key.user);
        let (Some(site), Some(user)) = (site, user) else {
            return false;
        };
        let member = config
            .clusters
            .get(&site.cluster)
            .is_some_and(|c| c.members.contains(&key.addr));
        if !member
            || *pool.connect_params()
                != connect_params(config, key.addr.clone(), key.database.clone(), user)
        {
            return false;
        }
        pool.resize(settings(&config.effective_pool(site)));
        kept += 1;
        true
    });
    tracing::info!(pools = kept, "pools reconciled with the new config");
}
