//! Shared [`Target`]s: every client of the same (cluster, server database, user) holds the same
//! `Arc<Target>` instead of its own copy of the names (at 10,000 idle clients of one site that
//! is most of a kilobyte per ten clients). Entries are weak: a target lives as long as a client
//! uses it, and dead entries are swept as the table grows.

use crate::session::pool_for::Target;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

/// The table, keyed by cluster, server database and user name.
#[derive(Default)]
pub struct Targets {
    by_key: Mutex<HashMap<(String, String, String), Weak<Target>>>,
}

/// Dead entries are swept when the table reaches this size, and then at each doubling.
const SWEEP_FROM: usize = 64;

impl Targets {
    /// The shared target equal to `t` (same names, same user config), made from `t` if none.
    pub fn share(&self, t: Target) -> Arc<Target> {
        let key = (t.cluster.clone(), t.server_db.clone(), t.user.name.clone());
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = map.get(&key).and_then(Weak::upgrade)
            && Arc::ptr_eq(&existing.user, &t.user)
            && existing.credential == t.credential
        {
            return existing;
        }
        let shared = Arc::new(t);
        map.insert(key, Arc::downgrade(&shared));
        if map.len() >= SWEEP_FROM && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_config::{Config, UserConfig};

    fn target(db: &str, user: &Arc<UserConfig>) -> Target {
        Target {
            cluster: "main".into(),
            server_db: db.into(),
            user: user.clone(),
            credential: Default::default(),
        }
    }

    #[test]
    fn equal_targets_are_shared_until_the_user_config_changes() {
        let toml = "[clusters.c]\nmembers = [\"127.0.0.1:1\"]\n[[sites]]\ndatabase = \"*\"\n\
                    cluster = \"c\"\n[[users]]\nname = \"app\"\nauth = \"trust\"\n";
        let user: UserConfig = Config::from_toml(toml).unwrap().users.remove(0);
        let user = Arc::new(user);
        let t = Targets::default();
        let a = t.share(target("app", &user));
        let b = t.share(target("app", &user));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &t.share(target("other", &user))));
        let reloaded = Arc::new((*user).clone());
        assert!(
            !Arc::ptr_eq(&a, &t.share(target("app", &reloaded))),
            "a new user config"
        );
    }
}
