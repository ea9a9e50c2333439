//! One probe of one member, on a dedicated connection that is never pooled: recovery state,
//! timeline, system identifier and WAL position in one round trip, bounded by a timeout. A server
//! that accepts the connection but does not answer (frozen) fails the probe like a dead one.

use std::time::Duration;
use switchyard_server::{ConnectParams, ServerConn, ServerError};

/// What a successful probe learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub in_recovery: bool,
    /// A primary's current timeline (from its WAL file name); a standby's received timeline.
    pub timeline: u32,
    pub system_id: u64,
    pub wal_lsn: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("probe answer unreadable: {0}")]
    Answer(String),
}

/// The probe query. `pg_walfile_name` is refused during recovery, hence the CASE.
const PROBE_SQL: &str = "SELECT pg_is_in_recovery(), \
     CASE WHEN pg_is_in_recovery() \
          THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), 0)::text \
          ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END, \
     (SELECT system_identifier FROM pg_control_system())::text, \
     (CASE WHEN pg_is_in_recovery() THEN coalesce(pg_last_wal_replay_lsn(), '0/0') \
           ELSE pg_current_wal_lsn() END - '0/0')::text";

/// Probes a member, reusing `conn` when it is open and replacing it when not. On failure the
/// connection is dropped: a half-answered one cannot be trusted.
pub async fn probe(
    conn: &mut Option<ServerConn>,
    params: &ConnectParams,
    timeout: Duration,
) -> Result<NodeFacts, ProbeError> {
    let result = tokio::time::timeout(timeout, probe_inner(conn, params)).await;
    match result {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => {
            *conn = None;
            Err(e)
        }
        Err(_) => {
            *conn = None;
            Err(ProbeError::Timeout(timeout))
        }
    }
}

async fn probe_inner(
    conn: &mut Option<ServerConn>,
    params: &ConnectParams,
) -> Result<NodeFacts, ProbeError> {
    if conn.is_none() {
        *conn = Some(ServerConn::connect(params).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Err(ProbeError::Answer("no connection".into()));
    };
    let row = c.query_row(PROBE_SQL).await?;
    parse(&row)
}

fn parse(row: &[Option<String>]) -> Result<NodeFacts, ProbeError> {
    let field = |i: usize| {
        row.get(i)
            .and_then(|v| v.as_deref())
            .ok_or_else(|| ProbeError::Answer(format!("column {i} missing")))
    };
    let num = |i: usize| {
        field(i)?
            .parse::<u64>()
            .map_err(|e| ProbeError::Answer(format!("column {i}: {e}")))
    };
    Ok(NodeFacts {
        in_recovery: field(0)? == "t",
        timeline: num(1)? as u32,
        system_id: num(2)?,
        wal_lsn: field(3)?
            .split('.')
            .next()
            .unwrap_or("0")
            .parse()
            .map_err(|e| ProbeError::Answer(format!("lsn: {e}")))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_probe_row() {
        let row = vec![
            Some("f".into()),
            Some("2".into()),
            Some("7312".into()),
            Some("23456".into()),
        ];
        assert_eq!(
            parse(&row).unwrap(),
            NodeFacts {
                in_recovery: false,
                timeline: 2,
                system_id: 7312,
                wal_lsn: 23456
            }
        );
        assert!(parse(&[Some("t".into())]).is_err());
    }
}
