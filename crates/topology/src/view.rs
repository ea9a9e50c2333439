//! What a monitor publishes: the [`TopologyView`] of one cluster (its state, its members as
//! the probes see them, the generation) and what can be read from it.

use crate::health::Health;
use crate::probe::NodeFacts;
use std::time::Instant;

/// Which member carries writes now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterState {
    Primary { id: usize, addr: String },
    NoPrimary,
    Conflict(Vec<usize>),
}

/// One member as the monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    pub addr: String,
    pub health: Health,
    pub facts: Option<NodeFacts>,
    pub fenced: bool,
}

/// A published answer. `generation` bumps on every change of `state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopologyView {
    pub generation: u64,
    pub state: ClusterState,
    pub members: Vec<MemberStatus>,
    /// When `state` last changed.
    pub since: Instant,
    /// The cluster's system identifier, learned from the first primary seen.
    pub system_id: Option<u64>,
    /// The highest primary timeline ever seen: no primary below it is accepted.
    pub max_timeline: u32,
}

impl TopologyView {
    /// The primary's address, if the cluster has one.
    pub fn primary_addr(&self) -> Option<&str> {
        match &self.state {
            ClusterState::Primary { addr, .. } => Some(addr),
            _ => None,
        }
    }

    /// A member's role as the probes see it: `primary`, `standby`, `writable_not_primary`
    /// (fenced, or an old primary) or `unknown` (never probed successfully).
    pub fn role_of(&self, member: &MemberStatus) -> &'static str {
        match (
            self.primary_addr() == Some(member.addr.as_str()),
            &member.facts,
        ) {
            (true, _) => "primary",
            (false, Some(f)) if f.in_recovery => "standby",
            (false, Some(_)) => "writable_not_primary",
            (false, None) => "unknown",
        }
    }

    /// How many bytes of WAL a standby is behind the primary; `None` for anything else.
    pub fn lag_of(&self, member: &MemberStatus) -> Option<u64> {
        let primary = self.primary_addr()?;
        let head = self
            .members
            .iter()
            .find(|m| m.addr == primary)?
            .facts
            .as_ref()?;
        let standby = member.facts.as_ref().filter(|f| f.in_recovery)?;
        Some(head.wal_lsn.saturating_sub(standby.wal_lsn))
    }

    /// The lag of the most advanced standby (the one a promotion would pick up).
    pub fn standby_lag(&self) -> Option<u64> {
        self.members.iter().filter_map(|m| self.lag_of(m)).min()
    }
}
