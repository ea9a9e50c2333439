//! What can stop a drill before it has a report.

use std::path::PathBuf;
use switchyard_localpg::FixtureError;

/// Why a drill could not run to its report.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// Something the drill needs is not installed or not allowed here.
    #[error("{what} is not available: {why}")]
    Unavailable { what: &'static str, why: String },
    /// A local PostgreSQL server (or Patroni/etcd) could not be started or changed.
    #[error("{step}: {source}")]
    Fixture {
        step: &'static str,
        #[source]
        source: FixtureError,
    },
    /// Setting up the sites' databases or checking the writes failed.
    #[error("{step}: {source}")]
    Sql {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// A step had no answer within its deadline.
    #[error("{step}: no answer within {secs} s")]
    Timeout { step: &'static str, secs: u64 },
    /// The proxy could not be started, or stopped serving.
    #[error("the Switchyard proxy {what}; its log is {}", log.display())]
    Proxy { what: String, log: PathBuf },
    /// A file of the report could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Ctrl-C, SIGTERM or SIGHUP arrived: everything was cleaned up, no report.
    #[error("interrupted; everything the drill started was stopped")]
    Interrupted,
}

impl DrillError {
    pub(crate) fn fixture(step: &'static str) -> impl FnOnce(FixtureError) -> DrillError {
        move |source| DrillError::Fixture { step, source }
    }

    pub(crate) fn sql(step: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DrillError {
        move |source| DrillError::Sql { step, source }
    }
}
