//! One path's cluster under the builtin manager: a real PostgreSQL 15 primary and a streaming,
//! synchronous standby (as RDS Multi-AZ replicates synchronously), the faults injected on the
//! primary's host, and the promotion.
//!
//! Every method blocks (it runs programs and waits for them): call it from `spawn_blocking`.

use std::sync::Mutex;

use switchyard_localpg::{Blackhole, PgOptions, PgServer};

use crate::args::FaultKind;
use crate::error::DrillError;

/// A primary, its synchronous standby, and the fault currently applied.
pub struct BuiltinCluster {
    // Fields drop in order: the blackhole is lifted, then the standby and the primary stop.
    blackhole: Mutex<Option<Blackhole>>,
    pub standby: PgServer,
    pub primary: PgServer,
}

impl BuiltinCluster {
    /// Starts the primary, makes the standby, and turns synchronous replication on.
    pub fn start() -> Result<BuiltinCluster, DrillError> {
        let primary = PgServer::start_with(PgOptions::default())
            .map_err(DrillError::fixture("start the primary"))?;
        let standby = primary
            .start_standby()
            .map_err(DrillError::fixture("start the standby"))?;
        primary
            .make_synchronous()
            .map_err(DrillError::fixture("make the standby synchronous"))?;
        Ok(BuiltinCluster {
            blackhole: Mutex::new(None),
            standby,
            primary,
        })
    }

    /// Both members' addresses, primary first.
    pub fn members(&self) -> Vec<String> {
        vec![self.primary.addr(), self.standby.addr()]
    }

    /// Injects `fault` on the primary's host.
    pub fn inject(&self, fault: FaultKind) -> Result<(), DrillError> {
        let step = "inject the fault";
        match fault {
            FaultKind::Crash => self.primary.kill().map_err(DrillError::fixture(step)),
            FaultKind::Freeze => self.primary.freeze().map_err(DrillError::fixture(step)),
            FaultKind::Blackhole => {
                let hole =
                    Blackhole::start(self.primary.port()).map_err(DrillError::fixture(step))?;
                *self.blackhole.lock().unwrap_or_else(|p| p.into_inner()) = Some(hole);
                Ok(())
            }
        }
    }

    /// Promotes the standby and waits until it accepts writes.
    pub fn promote(&self) -> Result<(), DrillError> {
        self.standby
            .promote()
            .map_err(DrillError::fixture("promote the standby"))
    }
}
