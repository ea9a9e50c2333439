//! [`PatroniOptions`] and what they become: the PostgreSQL parameters of a Patroni cluster and
//! each member's `patroni.yml`.

use std::path::Path;
use std::time::Duration;

use super::NAMESPACE;
use crate::server::{HOST, common_conf};
use crate::{Etcd, FixtureError};

/// How a [`PatroniCluster`](super::PatroniCluster) detects failures and replicates. Timings are
/// whole seconds (Patroni takes integers); they must satisfy Patroni's rule
/// `loop_wait + 2 * retry_timeout <= ttl`. Patroni 3.0.2 enforces nothing more; from 3.0.3 on,
/// Patroni raises values below its minimums (`ttl` 20 s, `retry_timeout` 3 s) with a warning,
/// so the fast defaults here would be slowed down by a newer Patroni.
#[derive(Debug, Clone)]
pub struct PatroniOptions {
    /// How long the leader key lives in etcd without renewal: roughly the time from a leader's
    /// loss to the start of the race for its succession. Default 10 s.
    pub ttl: Duration,
    /// Pause between two runs of each agent's HA loop. Default 1 s.
    pub loop_wait: Duration,
    /// How long DCS and PostgreSQL operations are retried before the leader demotes itself.
    /// Default 4 s.
    pub retry_timeout: Duration,
    /// Patroni's `synchronous_mode`: the replica is the synchronous standby, and only it may be
    /// promoted, so acknowledged commits survive a failover. Default true.
    pub synchronous_mode: bool,
    /// PostgreSQL parameters added after (and overriding) the fixture's own, e.g.
    /// `("max_connections", "50")`. They go into the cluster-wide configuration in etcd.
    /// Patroni drops a value it finds invalid, with only a warning in its log: check with `SHOW`.
    pub extra_pg_params: Vec<(String, String)>,
}

impl Default for PatroniOptions {
    fn default() -> Self {
        PatroniOptions {
            ttl: Duration::from_secs(10),
            loop_wait: Duration::from_secs(1),
            retry_timeout: Duration::from_secs(4),
            synchronous_mode: true,
            extra_pg_params: Vec::new(),
        }
    }
}

impl PatroniOptions {
    /// `(ttl, loop_wait, retry_timeout)` in whole seconds, checked against Patroni's rule.
    pub(super) fn seconds(&self) -> Result<(u64, u64, u64), FixtureError> {
        let whole = |name: &str, d: Duration| {
            if d.subsec_nanos() == 0 && d.as_secs() >= 1 {
                Ok(d.as_secs())
            } else {
                Err(FixtureError::BadOptions(format!(
                    "Patroni's {name} must be a whole number of seconds, at least 1 (got {d:?})"
                )))
            }
        };
        let ttl = whole("ttl", self.ttl)?;
        let loop_wait = whole("loop_wait", self.loop_wait)?;
        let retry = whole("retry_timeout", self.retry_timeout)?;
        if loop_wait + 2 * retry > ttl {
            return Err(FixtureError::BadOptions(format!(
                "Patroni needs loop_wait + 2 * retry_timeout <= ttl, got {loop_wait} + 2 * {retry} > {ttl}"
            )));
        }
        Ok((ttl, loop_wait, retry))
    }

    /// PostgreSQL parameters for the cluster: the fixture's usual settings, then the caller's.
    pub(super) fn pg_params(&self) -> Result<Vec<(String, String)>, FixtureError> {
        let mut params: Vec<(String, String)> = common_conf()
            .iter()
            .filter_map(|line| line.split_once(" = "))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('\'').to_owned()))
            .collect();
        // A new replica starts before the leader has made its replication slot; its first
        // attempt fails, and the default 5 s before the next one would dominate start-up.
        params.push(("wal_retrieve_retry_interval".to_owned(), "500ms".to_owned()));
        for (key, value) in &self.extra_pg_params {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.".contains(c))
            {
                return Err(FixtureError::BadOptions(format!(
                    "bad PostgreSQL parameter name {key:?}"
                )));
            }
            params.retain(|(k, _)| !k.eq_ignore_ascii_case(key));
            params.push((key.clone(), value.clone()));
        }
        Ok(params)
    }
}

/// A YAML single-quoted scalar.
fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Member `name`'s `patroni.yml`. Cluster-wide settings go under `bootstrap.dcs` (Patroni
/// copies them into etcd once, when member 0 bootstraps, and only takes parameters such as
/// `max_connections` and `wal_level` from there); per-member ones under `postgresql`.
#[allow(clippy::too_many_arguments)]
pub(super) fn config_yaml(
    scope: &str,
    name: &str,
    dir: &Path,
    pg_port: u16,
    rest_port: u16,
    etcd: &Etcd,
    opts: &PatroniOptions,
    params: &[(String, String)],
) -> Result<String, FixtureError> {
    let (ttl, loop_wait, retry_timeout) = opts.seconds()?;
    let dir_text = dir.to_string_lossy();
    let mut params_yaml = String::new();
    for (key, value) in params {
        params_yaml.push_str(&format!("        {key}: {}\n", quoted(value)));
    }
    let rest = quoted(&format!("{HOST}:{rest_port}"));
    let pg = quoted(&format!("{HOST}:{pg_port}"));
    // `127.0.0.1` in connect_address fails `patroni --validate-config`, but a normal start
    // does not validate, and loopback is the point here.
    Ok(format!(
        "\
scope: {scope}
namespace: {namespace}
name: {name}
restapi:
  listen: {rest}
  connect_address: {rest}
etcd3:
  hosts: {etcd_hosts}
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {loop_wait}
    retry_timeout: {retry_timeout}
    synchronous_mode: {sync}
    postgresql:
      use_pg_rewind: false
      use_slots: true
      parameters:
{params_yaml}  initdb:
  - encoding: UTF8
  - locale: C
  - no-sync
postgresql:
  listen: {pg}
  connect_address: {pg}
  data_dir: {data_dir}
  bin_dir: {bin_dir}
  pgpass: {pgpass}
  authentication:
    superuser:
      username: postgres
    replication:
      username: postgres
  parameters:
    unix_socket_directories: {socket_dir}
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
  use_pg_rewind: false
  basebackup:
  - checkpoint: fast
  - no-sync
watchdog:
  mode: 'off'
",
        scope = quoted(scope),
        namespace = quoted(NAMESPACE),
        name = quoted(name),
        etcd_hosts = quoted(&format!("{HOST}:{}", etcd.client_port())),
        sync = opts.synchronous_mode,
        data_dir = quoted(&format!("{dir_text}/data")),
        bin_dir = quoted(&crate::pg_bin_dir().to_string_lossy()),
        pgpass = quoted(&format!("{dir_text}/pgpass")),
        socket_dir = quoted(&dir_text),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timings_follow_patronis_rule() {
        assert_eq!(PatroniOptions::default().seconds().ok(), Some((10, 1, 4)));
        let short = PatroniOptions {
            ttl: Duration::from_secs(8),
            ..PatroniOptions::default()
        };
        assert!(matches!(short.seconds(), Err(FixtureError::BadOptions(_))));
        let fractional = PatroniOptions {
            loop_wait: Duration::from_millis(500),
            ..PatroniOptions::default()
        };
        assert!(matches!(
            fractional.seconds(),
            Err(FixtureError::BadOptions(_))
        ));
    }

    #[test]
    fn extra_parameters_override_the_fixtures() {
        let opts = PatroniOptions {
            extra_pg_params: vec![("MAX_CONNECTIONS".into(), "50".into())],
            ..PatroniOptions::default()
        };
        let params = opts.pg_params().unwrap();
        let max: Vec<_> = params
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("max_connections"))
            .collect();
        assert_eq!(max, [&("MAX_CONNECTIONS".to_owned(), "50".to_owned())]);
        assert!(params.contains(&("wal_keep_size".to_owned(), "256MB".to_owned())));
        let bad = PatroniOptions {
            extra_pg_params: vec![("x: y".into(), "1".into())],
            ..PatroniOptions::default()
        };
        assert!(matches!(bad.pg_params(), Err(FixtureError::BadOptions(_))));
    }

    #[test]
    fn yaml_scalars_are_single_quoted() {
        assert_eq!(quoted("it's"), "'it''s'");
    }
}
