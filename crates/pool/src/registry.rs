//! The registry of pools, and the reaper loop that keeps them within their idle/lifetime limits.

use crate::{Pool, PoolSettings};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard_server::ConnectParams;
use tokio_util::sync::CancellationToken;

/// What a pool serves: a server address, a server database and a server user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PoolKey {
    pub addr: String,
    pub database: String,
    pub user: String,
}

#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
}

impl Pools {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pool for `key`, created with `connect` and `settings` if new, resized if its settings
    /// changed.
    pub fn get(
        &self,
        key: &PoolKey,
        connect: impl FnOnce() -> ConnectParams,
        settings: PoolSettings,
    ) -> Arc<Pool> {
        let mut pools = self.lock();
        if let Some(p) = pools.get(key) {
            p.resize(settings);
            return p.clone();
        }
        let p = Pool::new(connect(), settings);
        pools.insert(key.clone(), p.clone());
        p
    }

    /// Retires connections older than `generation` in the pools of these server addresses.
    pub fn retire_before(&self, addrs: &[String], generation: u64) {
        for (key, pool) in self.all() {
            if addrs.contains(&key.addr) {
                pool.retire_before(generation);
            }
        }
    }

    /// The welcome parameters any pool for (database, user) has learned, whatever its server:
    /// a client can log in while its cluster has no primary.
    pub fn known_welcome(
        &self,
        database: &str,
        user: &str,
    ) -> Option<Arc<std::collections::BTreeMap<String, String>>> {
        self.all()
            .into_iter()
            .filter(|(k, _)| k.database == database && k.user == user)
            .find_map(|(_, p)| p.cached_welcome())
    }

    pub fn all(&self) -> Vec<(PoolKey, Arc<Pool>)> {
        let mut v: Vec<_> = self
            .lock()
            .iter()
            .map(|(k, p)| (k.clone(), p.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Removes pools for which `keep` says no; their idle connections close now, checked-out
    /// ones when released.
    pub fn retain(&self, mut keep: impl FnMut(&PoolKey, &Pool) -> bool) {
        self.lock().retain(|k, p| {
            let kept = keep(k, p);
            if !kept {
                p.remove();
            }
            kept
        });
    }

    /// Reaps and prefills every pool once a second until `stop` fires.
    pub async fn run_reaper(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let mut forget = Vec::new();
            for (key, pool) in self.all() {
                let (missing, unused) = pool.reap();
                if unused {
                    forget.push(pool.clone());
                }
                if missing > 0 {
                    tokio::spawn(async move {
                        for _ in 0..missing {
                            if let Err(e) = pool.prefill_one().await {
                                tracing::warn!(addr = %key.addr, database = %key.database, error = %e, "min_idle prefill failed");
                                break;
                            }
                        }
                    });
                }
            }
            for pool in forget {
                self.forget_if_unused(&pool);
            }
        }
    }

    /// Removes `pool` from the registry if it still has no connection and no request (a login
    /// refused by its server, a pool the reaper found unused for its idle timeout).
    pub fn forget_if_unused(&self, pool: &Arc<Pool>) {
        self.retain(|_, p| !(std::ptr::eq(p, Arc::as_ptr(pool)) && p.is_unused()));
    }
}
