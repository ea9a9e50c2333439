//! Validation of a parsed config: every problem is collected, so an operator fixes them in one go.

use crate::{AuthMethod, CONSOLE_DATABASE, Config, is_cleartext, is_md5_hash};
use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("cannot parse config: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(ValidationErrors),
}

/// Every problem found in one config, one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<String>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "config has {} error(s):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errs = Vec::new();
        if self.proxy.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "proxy.listen {:?} is not an address like 127.0.0.1:6432",
                self.proxy.listen
            ));
        }
        if self.proxy.max_client_conn == 0 {
            errs.push("proxy.max_client_conn must be at least 1".into());
        }
        if self.proxy.client_write_timeout.get().is_zero() {
            errs.push("proxy.client_write_timeout must be above zero".into());
        }
        let park = self.proxy.park_idle_after.get();
        if !park.is_zero() && park < std::time::Duration::from_millis(100) {
            errs.push("proxy.park_idle_after must be 0s (off) or at least 100ms".into());
        }
        if self.proxy.max_message_size < 1024 {
            errs.push("proxy.max_message_size must be at least 1024 bytes".into());
        }
        if self.proxy.max_message_size > 1 << 30 {
            errs.push(
                "proxy.max_message_size must be at most 1073741824 bytes (PostgreSQL's own limit)"
                    .into(),
            );
        }
        self.validate_client_tls(&mut errs);
        self.validate_clusters(&mut errs);
        self.validate_sites(&mut errs);
        self.validate_users(&mut errs);
        self.validate_auth_query(&mut errs);
        let user_names: Vec<&str> = self.users.iter().map(|u| u.name.as_str()).collect();
        self.admin.validate(&user_names, &mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errs))
        }
    }

    fn validate_client_tls(&self, errs: &mut Vec<String>) {
        use crate::ClientTls as T;
        let p = &self.proxy;
        if p.tls_cert_file.is_empty() != p.tls_key_file.is_empty() {
            errs.push("proxy.tls_cert_file and proxy.tls_key_file go together".into());
        }
        let mode = p.client_tls;
        if matches!(mode, T::Require | T::VerifyCa | T::VerifyFull) && p.tls_cert_file.is_empty() {
            errs.push(format!(
                "proxy.client_tls = {mode:?} needs proxy.tls_cert_file and proxy.tls_key_file"
            ));
        }
        if matches!(mode, T::VerifyCa | T::VerifyFull) && p.client_tls_ca_file.is_empty() {
            errs.push(format!(
                "proxy.client_tls = {mode:?} needs proxy.client_tls_ca_file (the CAs client certificates must lead to)"
            ));
        }
    }

    fn validate_clusters(&self, errs: &mut Vec<String>) {
        for s in &self.failover.dns_servers {
            if s.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "failover.dns_servers: {s:?} is not an address like 10.0.0.2:53"
                ));
            }
        }
        for (name, c) in &self.clusters {
            if c.members.is_empty() && c.endpoint.is_none() && c.patroni.is_empty() {
                errs.push(format!(
                    "clusters.{name} has no members, endpoint or patroni"
                ));
            }
            for url in &c.patroni {
                if !url.starts_with("http://") {
                    errs.push(format!(
                        "clusters.{name}: patroni URL {url:?} must start with http:// (https is not supported yet)"
                    ));
                }
            }
            let host_port = |m: &str| {
                m.rsplit_once(':')
                    .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
            };
            for m in &c.members {
                if !host_port(m) {
                    errs.push(format!("clusters.{name}: member {m:?} is not host:port"));
                }
            }
            if let Some(e) = &c.endpoint
                && !host_port(e)
            {
                errs.push(format!("clusters.{name}: endpoint {e:?} is not host:port"));
            }
            if let Some(u) = &c.probe_user {
                if self.user(u).is_none() {
                    errs.push(format!(
                        "clusters.{name}.probe_user {u:?} is not a configured user"
                    ));
                }
            } else if !self.users.is_empty() && self.probe_user(c).is_none() {
                errs.push(format!(
                    "clusters.{name}: no user can log in to the servers for probes; set probe_user or give a user server_password"
                ));
            }
        }
        let f = &self.failover;
        if f.resolve_autocommit_reads && !f.resolve_autocommit_writes {
            errs.push(
                "failover.resolve_autocommit_reads needs resolve_autocommit_writes: reads carry the write probe"
                    .into(),
            );
        }
        if f.down_after == 0 || f.up_after == 0 {
            errs.push("failover.down_after and failover.up_after must be at least 1".into());
        }
        if f.probe_timeout.get().is_zero()
            || f.probe_interval.get().is_zero()
            || f.fast_probe_interval.get().is_zero()
        {
            errs.push("failover probe intervals and probe_timeout must be above zero".into());
        }
    }

    fn validate_sites(&self, errs: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for s in &self.sites {
            if !seen.insert(&s.database) {
                errs.push(format!("site {:?} is listed twice", s.database));
            }
            if s.database == CONSOLE_DATABASE {
                errs.push(format!(
                    "site {CONSOLE_DATABASE:?}: that name is the admin console's; serve the database under another name (server_database = {CONSOLE_DATABASE:?})"
                ));
            }
            if !self.clusters.contains_key(&s.cluster) {
                errs.push(format!(
                    "site {:?} names unknown cluster {:?}",
                    s.database, s.cluster
                ));
            }
            let p = self.effective_pool(s);
            if p.size == 0 {
                errs.push(format!(
                    "site {:?}: pool size must be at least 1",
                    s.database
                ));
            }
            if p.min_idle > p.size {
                errs.push(format!(
                    "site {:?}: min_idle {} exceeds size {}",
                    s.database, p.min_idle, p.size
                ));
            }
        }
        if self.sites.is_empty() {
            errs.push("no [[sites]]: clients could not reach any database".into());
        }
    }

    fn validate_auth_query(&self, errs: &mut Vec<String>) {
        let p = &self.proxy;
        if p.auth_user.is_empty() {
            return;
        }
        match self.users.iter().find(|u| u.name == p.auth_user) {
            None => errs.push(format!(
                "proxy.auth_user {:?} is not a [[users]] entry: it needs one, with the \
                 server_password Switchyard looks users up with",
                p.auth_user
            )),
            Some(u) if u.server_password().is_none() && u.auth != AuthMethod::Trust => {
                errs.push(format!(
                    "proxy.auth_user {:?} has no server password to log in with: set its \
                     server_password",
                    p.auth_user
                ))
            }
            Some(_) => {}
        }
        if !p.auth_query.contains("$1") {
            errs.push("proxy.auth_query must take the user name as $1".into());
        }
    }

    fn validate_users(&self, errs: &mut Vec<String>) {
        let mut seen = HashSet::new();
        for u in &self.users {
            let who = format!("user {:?}", u.name);
            if !seen.insert(&u.name) {
                errs.push(format!("{who} is listed twice"));
            }
            match (u.auth, u.password.as_deref()) {
                (AuthMethod::Trust, _) => {}
                (AuthMethod::Cert, _) => {
                    use crate::ClientTls as T;
                    if !matches!(self.proxy.client_tls, T::VerifyCa | T::VerifyFull) {
                        errs.push(format!(
                            "{who}: auth \"cert\" needs proxy.client_tls = \"verify-ca\" or \"verify-full\" (client certificates are only asked for then)"
                        ));
                    }
                }
                (_, None) => errs.push(format!("{who}: auth {:?} needs a password", u.auth)),
                (AuthMethod::Md5, Some(p)) if p.starts_with("SCRAM-SHA-256$") => {
                    errs.push(format!(
                        "{who}: md5 auth cannot use a SCRAM verifier; give cleartext or an md5 hash"
                    ))
                }
                (AuthMethod::ScramSha256, Some(p)) if is_md5_hash(p) => {
                    errs.push(format!("{who}: scram-sha-256 auth cannot use an md5 hash"))
                }
                (AuthMethod::ScramSha256, Some(p)) if !is_cleartext(p) => {
                    if let Err(e) = switchyard_proto::scram::ScramSecret::parse(p) {
                        errs.push(format!("{who}: {e}"));
                    }
                }
                _ => {}
            }
            if u.server_password
                .as_deref()
                .is_some_and(|p| !is_cleartext(p))
            {
                errs.push(format!("{who}: server_password must be cleartext"));
            }
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn auth_user_must_be_a_user_with_a_server_password() {
        let with = |proxy: &str, users: &str| {
            let text = format!(
                "[proxy]\n{proxy}\n[clusters.c]\nmembers = [\"127.0.0.1:5432\"]\n\
                 [[sites]]\ndatabase = \"*\"\ncluster = \"c\"\n{users}"
            );
            Config::from_toml(&text).map_err(|e| e.to_string())
        };
        let lookup = "[[users]]\nname = \"lookup\"\nauth = \"scram-sha-256\"\n\
                      password = \"pw\"\n";
        assert!(with("auth_user = \"lookup\"", lookup).is_ok());
        let e = with("auth_user = \"nobody\"", lookup).expect_err("unknown auth_user");
        assert!(e.contains("proxy.auth_user \"nobody\""), "{e}");
        let verifier_only = "[[users]]\nname = \"lookup\"\nauth = \"md5\"\n\
                             password = \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n";
        let e = with("auth_user = \"lookup\"", verifier_only).expect_err("no server password");
        assert!(e.contains("no server password"), "{e}");
        let e =
            with("auth_user = \"lookup\"\nauth_query = \"select 1\"", lookup).expect_err("no $1");
        assert!(e.contains("$1"), "{e}");
    }

    #[test]
    fn dns_servers_are_addresses() {
        let base = "[clusters.c]\nendpoint = \"db.example.internal:5432\"\n[[sites]]\n\
                    database = \"*\"\ncluster = \"c\"\n[[users]]\nname = \"u\"\nauth = \"trust\"\n";
        let good = format!("{base}[failover]\ndns_servers = [\"127.0.0.1:5353\"]\n");
        Config::from_toml(&good).expect("valid");
        let bad = format!("{base}[failover]\ndns_servers = [\"ns1.example\"]\n");
        let e = Config::from_toml(&bad).expect_err("invalid").to_string();
        assert!(
            e.contains("dns_servers") && e.contains("ns1.example"),
            "{e}"
        );
    }

    #[test]
    fn an_admin_listener_beyond_loopback_needs_a_token() {
        let base = "[clusters.c]\nmembers = [\"127.0.0.1:5432\"]\n[[sites]]\ndatabase = \"*\"\n\
                    cluster = \"c\"\n[[users]]\nname = \"u\"\nauth = \"trust\"\n[admin]\n";
        let with = |admin: &str| Config::from_toml(&format!("{base}{admin}"));
        let e = with("listen = \"0.0.0.0:9930\"\n")
            .expect_err("no token")
            .to_string();
        assert!(e.contains("admin.token"), "{e}");
        assert!(with("listen = \"0.0.0.0:9930\"\ntoken = \"s3cret\"\n").is_ok());
        assert!(with("listen = \"127.0.0.1:9930\"\n").is_ok());
        assert!(with("listen = \"[::1]:9930\"\n").is_ok());
    }

    use crate::{Config, ConfigError};

    const GOOD: &str = r#"
        [clusters.main]
        members = ["127.0.0.1:5432"]
        [[sites]]
        database = "*"
        cluster = "main"
        [[users]]
        name = "postgres"
        auth = "trust"
    "#;

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::from_toml(GOOD).unwrap();
        assert_eq!(c.proxy.listen, "127.0.0.1:6432");
        assert_eq!(c.site_for("anything").unwrap().cluster, "main");
        assert_eq!(c.effective_pool(&c.sites[0]).size, 20);
    }

    #[test]
    fn every_error_is_reported() {
        let bad = r#"
            [proxy]
            listen = "nowhere"
            [clusters.main]
            members = ["nohost"]
            [[sites]]
            database = "db"
            cluster = "missing"
            size = 0
            [[users]]
            name = "u"
            auth = "md5"
        "#;
        let Err(ConfigError::Invalid(e)) = Config::from_toml(bad) else {
            panic!("must be invalid")
        };
        assert_eq!(e.0.len(), 6, "{e}");
    }

    #[test]
    fn probing_reads_needs_the_write_probe() {
        let text = r#"
            [clusters.main]
            members = ["h:5432"]
            [[sites]]
            database = "db"
            cluster = "main"
            [[users]]
            name = "u"
            auth = "trust"
            [failover]
            resolve_commits = true
            resolve_autocommit_writes = false
            resolve_autocommit_reads = true
        "#;
        let Err(ConfigError::Invalid(e)) = Config::from_toml(text) else {
            panic!("must be invalid")
        };
        assert!(e.to_string().contains("resolve_autocommit_reads"), "{e}");
        let fixed = text.replace("resolve_autocommit_writes = false", "");
        assert!(Config::from_toml(&fixed).is_ok());
    }

    #[test]
    fn the_console_database_is_reserved() {
        let text = r#"
            [clusters.main]
            members = ["h:5432"]
            [[sites]]
            database = "switchyard"
            cluster = "main"
        "#;
        let Err(ConfigError::Invalid(e)) = Config::from_toml(text) else {
            panic!("must be invalid")
        };
        assert!(e.to_string().contains("the admin console's"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(matches!(
            Config::from_toml("[proxy]\nlisten_port = 1\n"),
            Err(ConfigError::Parse(_))
        ));
    }
}
