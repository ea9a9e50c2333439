//! Users whose passwords live only in the database (`auth_user` + `auth_query`): the stored
//! verifier is looked up as `auth_user` on the cluster's primary, in the client's database, and
//! cached for `auth_cache_ttl`; the secret a client's login proves is kept for the server
//! logins of that user's pools, so no plain password is needed anywhere.

use crate::proxy::{Live, UserAuth};
use crate::session::login::primary_pool;
use crate::session::pool_for::{INTERNAL_QUERY_TIMEOUT, Target};
use crate::{Proxy, SessionError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use switchyard_config::{AuthMethod, SiteConfig, UserConfig, is_md5_hash};
use switchyard_proto::scram::ScramSecret;
use switchyard_server::{Credential, LearnedSecret, ServerError};

/// The most verifiers cached (only users that exist are cached, and a lookup each is bounded
/// by the auth_user pool): when full, those past [`KEEP_STALE`] go, else the oldest.
const MAX_CACHED: usize = 10_000;
/// How long an expired verifier is kept to stand in when a lookup fails.
const KEEP_STALE: Duration = Duration::from_secs(3600);

/// The auth_query state of one proxy.
#[derive(Default)]
pub struct AuthQueryUsers {
    /// Looked-up verifiers, by (cluster, server database, user).
    cache: Mutex<HashMap<(String, String, String), Cached>>,
    /// Users that have logged in, by (cluster, user): their stand-in config (shared, so their
    /// sessions share one target) and the secret their pools log in with.
    known: Mutex<HashMap<(String, String), Known>>,
}

struct Cached {
    at: Instant,
    auth: UserAuth,
}

#[derive(Clone)]
pub struct Known {
    pub config: Arc<UserConfig>,
    pub secret: Arc<LearnedSecret>,
}

impl Known {
    pub fn credential(&self) -> Credential {
        Credential::Learned(self.secret.clone())
    }
}

/// What a looked-up user needs for its login.
pub struct LookedUp {
    pub auth: Option<UserAuth>,
    key: (String, String, String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AuthQueryUsers {
    /// The stand-in config and learned secret of the user `looked_up` found, once it has
    /// proved who it is (so names that never log in leave nothing behind).
    pub fn admit(&self, looked_up: &LookedUp) -> Known {
        let (cluster, _, user) = &looked_up.key;
        let mut known = lock(&self.known);
        known
            .entry((cluster.clone(), user.clone()))
            .or_insert_with(|| Known {
                config: Arc::new(UserConfig {
                    name: user.clone(),
                    auth: AuthMethod::ScramSha256,
                    password: None,
                    server_password: None,
                    server_user: None,
                }),
                secret: Arc::default(),
            })
            .clone()
    }

    /// The learned secret of `user` on `cluster`, if that user has logged in.
    pub fn known_user(&self, cluster: &str, user: &str) -> Option<Known> {
        let key = (cluster.to_string(), user.to_string());
        lock(&self.known).get(&key).cloned()
    }

    /// The verifier of `user`, from the cache while it is fresh, else from the database.
    pub async fn lookup(
        &self,
        proxy: &Proxy,
        live: &Live,
        site: &SiteConfig,
        server_db: &str,
        user: &str,
    ) -> Result<LookedUp, SessionError> {
        let key = (
            site.cluster.clone(),
            server_db.to_string(),
            user.to_string(),
        );
        let ttl = live.config.proxy.auth_cache_ttl.get();
        let cached = lock(&self.cache)
            .get(&key)
            .map(|c| (c.at.elapsed() < ttl, Some(c.auth.clone())));
        let auth = match cached {
            Some((true, auth)) => auth,
            // An expired entry stands in if the database cannot be asked right now (no
            // primary during a failover): the lookup does not wait for one then.
            Some((false, stale)) => match query(proxy, live, site, server_db, user, true).await {
                Ok(auth) => self.remember(&key, auth),
                Err(e) => {
                    tracing::warn!(%user, error = %e, "auth_query failed; using the verifier looked up before");
                    stale
                }
            },
            None => {
                let auth = query(proxy, live, site, server_db, user, false).await?;
                self.remember(&key, auth)
            }
        };
        Ok(LookedUp { auth, key })
    }

    /// Caches the verifier a lookup found. A user found missing is not remembered (its login
    /// fails anyway; caching it would let a flood of made-up names fill memory, and would
    /// make a repeated failure cost less for a missing user than for a wrong password), and
    /// takes any verifier cached before with it, so a dropped role has none to stand in.
    fn remember(&self, key: &(String, String, String), auth: Option<UserAuth>) -> Option<UserAuth> {
        let mut cache = lock(&self.cache);
        let Some(auth) = auth else {
            cache.remove(key);
            return None;
        };
        if cache.len() >= MAX_CACHED && !cache.contains_key(key) {
            cache.retain(|_, c| c.at.elapsed() < KEEP_STALE);
            if cache.len() >= MAX_CACHED {
                // Still full of recent entries: the oldest goes.
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, c)| c.at)
                    .map(|(k, _)| k.clone());
                if let Some(oldest) = oldest {
                    cache.remove(&oldest);
                }
            }
        }
        let at = Instant::now();
        cache.insert(
            key.clone(),
            Cached {
                at,
                auth: auth.clone(),
            },
        );
        Some(auth)
    }

    /// A login with this lookup failed: the next one asks the database again (the password
    /// may have changed there).
    pub fn forget(&self, looked_up: &LookedUp) {
        lock(&self.cache).remove(&looked_up.key);
    }
}

/// Runs `auth_query` for `user` on the primary, as `auth_user`; without a primary, waits in
/// the failover gate unless `no_wait`.
async fn query(
    proxy: &Proxy,
    live: &Live,
    site: &SiteConfig,
    server_db: &str,
    user: &str,
    no_wait: bool,
) -> Result<Option<UserAuth>, SessionError> {
    let config = &live.config;
    let failed = |why: String| SessionError::AuthLookup {
        user: user.to_string(),
        why,
    };
    let auth_user = live
        .users
        .get(&config.proxy.auth_user)
        .ok_or_else(|| failed("auth_user is not configured".into()))?;
    let target = Target {
        cluster: site.cluster.clone(),
        server_db: server_db.to_string(),
        credential: auth_user.server_password().map(str::to_string).into(),
        user: auth_user.clone(),
    };
    let settings = live.settings_for(site);
    let gate = if no_wait {
        Duration::ZERO
    } else {
        config.failover.failover_timeout.get()
    };
    let (pool, generation) = primary_pool(proxy, &target, &settings, gate)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let checked_out = pool
        .checkout(settings.query_wait_timeout.get(), generation)
        .await;
    let mut server = checked_out.map_err(|e| {
        // A database the server refuses (a made-up name through a `*` site) leaves no pool.
        proxy.pools.forget_if_unused(&pool);
        failed(SessionError::from(e).to_string())
    })?;
    let ran = tokio::time::timeout(
        INTERNAL_QUERY_TIMEOUT,
        server
            .conn
            .query_row_with(&config.proxy.auth_query, &[user]),
    )
    .await;
    let row = match ran {
        Ok(Ok(row)) => {
            pool.release(server);
            row
        }
        Ok(Err(e @ ServerError::Query(_))) => {
            pool.release(server);
            return Err(failed(format!("auth_query failed: {e}")));
        }
        Ok(Err(e)) => {
            pool.discard(server);
            return Err(failed(e.to_string()));
        }
        Err(_) => {
            pool.discard(server);
            return Err(failed(format!(
                "auth_query took more than {} ms",
                INTERNAL_QUERY_TIMEOUT.as_millis()
            )));
        }
    };
    Ok(verifier(row.get(1).cloned().flatten().as_deref()))
}

/// How a user with this stored password logs in: SCRAM against a SCRAM verifier, md5 against
/// an md5 hash; anything else (NULL, no row, a malformed value) is no user.
fn verifier(stored: Option<&str>) -> Option<UserAuth> {
    let stored = stored?;
    if is_md5_hash(stored) {
        return Some(UserAuth::Md5 {
            stored: stored.to_string(),
        });
    }
    ScramSecret::parse(stored)
        .ok()
        .map(|secret| UserAuth::Scram { secret })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_verifiers_make_a_user() {
        let scram = ScramSecret::derive("pw", b"0123456789abcdef", 4096);
        assert!(
            matches!(verifier(Some(&scram.to_text())), Some(UserAuth::Scram { secret }) if secret == scram)
        );
        let md5 = switchyard_proto::md5::stored_hash("u", "pw");
        assert!(matches!(verifier(Some(&md5)), Some(UserAuth::Md5 { stored }) if stored == md5));
        for no_user in [
            None,
            Some(""),
            Some("cleartext"),
            Some("SCRAM-SHA-256$0:x$y:z"),
        ] {
            assert!(verifier(no_user).is_none(), "{no_user:?}");
        }
    }
}
