//! One path's cluster: a PostgreSQL 15 primary and a synchronous streaming standby (as RDS
//! Multi-AZ replicates synchronously), run either by the drill itself (builtin manager: plain
//! servers, promoted on a timer) or by a real Patroni stack over etcd (Patroni notices the lost
//! leader and promotes by itself). Also the faults injected on the primary's host.
//!
//! A host failure under Patroni takes the member's agent with it (a stopped or killed agent can
//! no longer renew the leader lock), as hardware failure would. Following Patroni 3.0.2's known
//! bug (a resumed stale leader can overwrite the new leader's key), a failed leader is never
//! resumed: it is killed at clean-up.
//!
//! Every method blocks (it runs programs and waits for them): call it from `spawn_blocking`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::Ipv4Addr;
use switchyard_localpg::{
    Blackhole, DnsServer, Etcd, PatroniCluster, PatroniOptions, PgOptions, PgServer,
};

use crate::args::FaultKind;
use crate::error::DrillError;

/// A path's cluster under either manager, and the blackhole currently applied.
pub struct PathCluster {
    // Fields drop in order: the blackhole is lifted before the servers stop.
    blackhole: Mutex<Option<Blackhole>>,
    servers: Servers,
    /// The dns topology: the name that follows the primary.
    pub name: Option<PathName>,
}

/// A DNS name for a path's primary (the dns topology), and the server answering for it.
pub struct PathName {
    pub dns: DnsServer,
    /// `name:port`, what Switchyard is given.
    pub endpoint: String,
    host: String,
    standby_ip: Ipv4Addr,
}

enum Servers {
    Builtin {
        standby: PgServer,
        primary: PgServer,
    },
    Patroni {
        cluster: PatroniCluster,
        _etcd: Arc<Etcd>,
    },
}

impl PathCluster {
    /// The dns topology under the builtin manager: primary and standby on one free port, on
    /// `127.0.0.{2k+2}` and `127.0.0.{2k+3}` for path `k`, and a name server answering for
    /// `db.drill-{path}.test` with the primary's address.
    pub fn builtin_behind_name(k: u8, path: &str) -> Result<PathCluster, DrillError> {
        let (primary_ip, standby_ip) = (
            Ipv4Addr::new(127, 0, 0, 2 + 2 * k),
            Ipv4Addr::new(127, 0, 0, 3 + 2 * k),
        );
        let port = switchyard_localpg::free_port();
        let primary = PgServer::start_at(primary_ip, port, PgOptions::default())
            .map_err(DrillError::fixture("start the primary"))?;
        let standby = primary
            .start_standby_at(standby_ip, port)
            .map_err(DrillError::fixture("start the standby"))?;
        primary
            .make_synchronous()
            .map_err(DrillError::fixture("make the standby synchronous"))?;
        let host = format!("db.drill-{path}.test");
        let dns = DnsServer::start(&[(&host, primary_ip)])
            .map_err(DrillError::fixture("start the name server"))?;
        let mut cluster = PathCluster::with(Servers::Builtin { standby, primary });
        cluster.name = Some(PathName {
            dns,
            endpoint: format!("{host}:{port}"),
            host,
            standby_ip,
        });
        Ok(cluster)
    }

    /// Builtin manager: starts the primary, makes the standby, turns synchronous replication on.
    pub fn builtin() -> Result<PathCluster, DrillError> {
        let primary = PgServer::start_with(PgOptions::default())
            .map_err(DrillError::fixture("start the primary"))?;
        let standby = primary
            .start_standby()
            .map_err(DrillError::fixture("start the standby"))?;
        primary
            .make_synchronous()
            .map_err(DrillError::fixture("make the standby synchronous"))?;
        Ok(PathCluster::with(Servers::Builtin { standby, primary }))
    }

    /// Patroni manager: a two-member Patroni cluster (synchronous mode) in its own scope.
    pub fn patroni(etcd: Arc<Etcd>, scope: &str) -> Result<PathCluster, DrillError> {
        let cluster = PatroniCluster::start(&etcd, scope, PatroniOptions::default())
            .map_err(DrillError::fixture("start the Patroni cluster"))?;
        Ok(PathCluster::with(Servers::Patroni {
            cluster,
            _etcd: etcd,
        }))
    }

    fn with(servers: Servers) -> PathCluster {
        PathCluster {
            blackhole: Mutex::new(None),
            servers,
            name: None,
        }
    }

    /// Both members' addresses, the primary first.
    pub fn members(&self) -> Vec<String> {
        match &self.servers {
            Servers::Builtin { primary, standby } => vec![primary.addr(), standby.addr()],
            Servers::Patroni { cluster, .. } => {
                cluster.members().iter().map(|m| m.addr()).collect()
            }
        }
    }

    /// The primary's address at the start (the Patroni cluster's first member leads at start).
    pub fn primary_addr(&self) -> String {
        self.members().remove(0)
    }

    /// The standby's address: the primary after a failover.
    pub fn standby_addr(&self) -> String {
        self.members().remove(1)
    }

    /// Injects `fault` on the primary's host.
    pub fn inject(&self, fault: FaultKind) -> Result<(), DrillError> {
        let step = "inject the fault";
        let map = DrillError::fixture(step);
        match (&self.servers, fault) {
            (Servers::Builtin { primary, .. }, FaultKind::Crash) => primary.kill().map_err(map),
            (Servers::Builtin { primary, .. }, FaultKind::Freeze) => primary.freeze().map_err(map),
            (Servers::Patroni { cluster, .. }, FaultKind::Crash) => {
                let leader = &cluster.members()[0];
                leader.kill_agent().map_err(DrillError::fixture(step))?;
                leader.kill_postgres().map_err(map)
            }
            (Servers::Patroni { cluster, .. }, FaultKind::Freeze) => {
                let leader = &cluster.members()[0];
                leader.stop_agent().map_err(DrillError::fixture(step))?;
                leader.freeze_postgres().map_err(map)
            }
            (servers, FaultKind::Blackhole) => {
                if let Servers::Patroni { cluster, .. } = servers {
                    cluster.members()[0]
                        .stop_agent()
                        .map_err(DrillError::fixture(step))?;
                }
                let port = self
                    .primary_addr()
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok());
                let hole = Blackhole::start(port.unwrap_or_default()).map_err(map)?;
                *self.blackhole.lock().unwrap_or_else(|p| p.into_inner()) = Some(hole);
                Ok(())
            }
        }
    }

    /// Builtin: promotes the standby now. Patroni: waits (up to `timeout`) for Patroni to have
    /// promoted it. Returns whether a new primary accepts writes.
    pub fn promotion(&self, timeout: Duration) -> Result<bool, DrillError> {
        match &self.servers {
            Servers::Builtin { standby, .. } => {
                standby
                    .promote()
                    .map_err(DrillError::fixture("promote the standby"))?;
                // As a managed database does: the name moves once the standby is promoted.
                if let Some(n) = &self.name {
                    n.dns
                        .point(&[(&n.host, n.standby_ip)])
                        .map_err(DrillError::fixture("move the name"))?;
                }
                Ok(true)
            }
            Servers::Patroni { cluster, .. } => {
                Ok(cluster.wait_for_leader_other_than(0, timeout).is_ok())
            }
        }
    }
}
