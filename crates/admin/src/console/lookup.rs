//! Finding things in the live config and topology for the console: which site and cluster a
//! pool or a client belongs to, the name clients use for a server database, each cluster's
//! primary.

use std::collections::HashMap;

use switchyard_config::{Config, SiteConfig};
use switchyard_frontend::Proxy;
use switchyard_pool::PoolKey;
use switchyard_topology::ClusterState;

use super::ConsoleError;

/// The cluster that has `addr` as a member.
pub fn cluster_of_member<'a>(config: &'a Config, addr: &str) -> Option<&'a str> {
    config
        .clusters
        .iter()
        .find(|(_, c)| c.members.iter().any(|m| m == addr))
        .map(|(name, _)| name.as_str())
}

/// The site of `cluster` that serves the server database `server_db`: the one naming it as its
/// server database or its database, else the cluster's wildcard.
pub fn site_of<'a>(config: &'a Config, cluster: &str, server_db: &str) -> Option<&'a SiteConfig> {
    let of_cluster = || config.sites.iter().filter(|s| s.cluster == cluster);
    of_cluster()
        .find(|s| s.server_database.as_deref() == Some(server_db))
        .or_else(|| of_cluster().find(|s| s.server_database.is_none() && s.database == server_db))
        .or_else(|| of_cluster().find(|s| s.database == "*"))
}

/// A pool's cluster and site.
pub fn site_of_pool<'a>(config: &'a Config, key: &PoolKey) -> Option<(&'a str, &'a SiteConfig)> {
    let cluster = cluster_of_member(config, &key.addr)?;
    Some((cluster, site_of(config, cluster, &key.database)?))
}

/// The database name clients ask for to reach `server_db` on `cluster`.
pub fn client_database(config: &Config, cluster: &str, server_db: &str) -> String {
    match site_of(config, cluster, server_db) {
        Some(site) if site.database != "*" => site.database.clone(),
        _ => server_db.to_owned(),
    }
}

/// `(cluster, server database)` of the database clients call `name`.
pub fn resolve_database(config: &Config, name: &str) -> Result<(String, String), ConsoleError> {
    let site = config
        .site_for(name)
        .ok_or_else(|| ConsoleError::NoSuchDatabase(name.to_owned()))?;
    let server_db = site
        .server_database
        .clone()
        .unwrap_or_else(|| name.to_owned());
    Ok((site.cluster.clone(), server_db))
}

/// Each cluster's current primary, by cluster name.
pub fn primaries(proxy: &Proxy) -> HashMap<String, String> {
    proxy
        .router
        .monitors()
        .iter()
        .filter_map(|m| match &m.view().state {
            ClusterState::Primary { addr, .. } => Some((m.name().to_owned(), addr.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [clusters.a]
            members = ["h1:5432", "h2:5432"]
            [clusters.b]
            members = ["h3:5432"]
            [[sites]]
            database = "shop"
            cluster = "a"
            server_database = "shop_prod"
            [[sites]]
            database = "*"
            cluster = "b"
            [[users]]
            name = "postgres"
            auth = "trust"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn pools_and_names_map_back_to_their_sites() {
        let c = config();
        let key = |addr: &str, db: &str| PoolKey {
            addr: addr.into(),
            database: db.into(),
            user: "postgres".into(),
        };
        let (cluster, site) = site_of_pool(&c, &key("h2:5432", "shop_prod")).unwrap();
        assert_eq!((cluster, site.database.as_str()), ("a", "shop"));
        let (cluster, site) = site_of_pool(&c, &key("h3:5432", "anything")).unwrap();
        assert_eq!((cluster, site.database.as_str()), ("b", "*"));
        assert!(site_of_pool(&c, &key("nowhere:1", "shop_prod")).is_none());
        assert_eq!(client_database(&c, "a", "shop_prod"), "shop");
        assert_eq!(client_database(&c, "b", "x"), "x");
        assert_eq!(
            resolve_database(&c, "shop").unwrap(),
            ("a".to_owned(), "shop_prod".to_owned())
        );
        assert_eq!(
            resolve_database(&c, "x").unwrap(),
            ("b".to_owned(), "x".to_owned())
        );
    }
}
