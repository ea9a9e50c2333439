//! Which pool serves a (site, database, user), and keeping pools in step with a reloaded config.

use crate::Proxy;
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{Config, EffectivePool, SiteConfig, UserConfig};
use switchyard_pool::{Pool, PoolKey, PoolSettings};
use switchyard_server::{ConnectParams, SocketOptions};

/// The server to use for a site. Until topology discovery, the first member is the primary.
fn primary_addr(config: &Config, site: &SiteConfig) -> Option<String> {
    config
        .clusters
        .get(&site.cluster)
        .and_then(|c| c.members.first())
        .cloned()
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

/// The pool for a client of `site` asking for `database` as `user`.
pub fn pool_for(
    proxy: &Proxy,
    config: &Config,
    site: &SiteConfig,
    database: &str,
    user: &UserConfig,
) -> Option<(Arc<Pool>, EffectivePool)> {
    let addr = primary_addr(config, site)?;
    let server_db = site
        .server_database
        .clone()
        .unwrap_or_else(|| database.to_string());
    let eff = config.effective_pool(site);
    let key = PoolKey {
        addr: addr.clone(),
        database: server_db.clone(),
        user: user.server_user().to_string(),
    };
    let pool = proxy.pools.get(
        &key,
        || connect_params(config, addr, server_db, user),
        settings(&eff),
    );
    Some((pool, eff))
}

/// After a reload: resize pools whose site and user remain, drop the others (their checked-out
/// connections close when released) and those whose connection settings changed.
pub fn reconcile_pools(proxy: &Proxy) {
    let live = proxy.live.load();
    let config = &live.config;
    let mut resized = Vec::new();
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
        if primary_addr(config, site).as_deref() != Some(key.addr.as_str()) {
            return false;
        }
        if *pool.connect_params()
            != connect_params(config, key.addr.clone(), key.database.clone(), user)
        {
            return false;
        }
        resized.push((
            pool.addr().to_string(),
            settings(&config.effective_pool(site)),
        ));
        pool.resize(settings(&config.effective_pool(site)));
        true
    });
    tracing::info!(
        pools = resized.len(),
        "pools reconciled with the new config"
    );
}

/// How long internal statements (SET, reset) may take on a healthy server.
pub const INTERNAL_QUERY_TIMEOUT: Duration = Duration::from_secs(5);
