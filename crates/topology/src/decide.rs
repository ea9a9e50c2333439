//! The pure decision: which member is the primary.
//!
//! The primary is the one usable, writable, unfenced member on the highest timeline of the
//! expected system identifier. No such member: `NoPrimary`. More than one on that timeline:
//! `Conflict` (writes are refused; picking one by freshness is how split brains lose data).
//! A writable member on a lower timeline than the highest ever seen (an old primary that came
//! back) is never a candidate.

use crate::{Health, NodeFacts};

/// What the decision knows about one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub id: usize,
    pub health: Health,
    /// The last successful probe's facts, if any.
    pub facts: Option<NodeFacts>,
    /// Fenced by an operator or by evidence: never a candidate.
    pub fenced: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Primary(usize),
    NoPrimary,
    /// Several writable members on the same, highest timeline.
    Conflict(Vec<usize>),
}

/// Names the primary. `system_id`: the expected system identifier (None: accept the first seen);
/// `min_timeline`: the highest primary timeline ever seen for this cluster.
pub fn decide(members: &[MemberView], system_id: Option<u64>, min_timeline: u32) -> Decision {
    // Until every member has answered (or failed) once, a stale primary could look like the
    // only one: wait. Bounded, since a first failed probe makes a member Down at once.
    if members
        .iter()
        .any(|m| m.health == Health::Unknown && !m.fenced)
    {
        return Decision::NoPrimary;
    }
    let writable: Vec<(usize, u32)> = members
        .iter()
        .filter(|m| m.health.is_usable() && !m.fenced)
        .filter_map(|m| m.facts.as_ref().map(|f| (m.id, f)))
        .filter(|(_, f)| !f.in_recovery && system_id.is_none_or(|s| s == f.system_id))
        .filter(|(_, f)| f.timeline >= min_timeline)
        .map(|(id, f)| (id, f.timeline))
        .collect();
    let Some(top) = writable.iter().map(|(_, tl)| *tl).max() else {
        return Decision::NoPrimary;
    };
    let at_top: Vec<usize> = writable
        .iter()
        .filter(|(_, tl)| *tl == top)
        .map(|(id, _)| *id)
        .collect();
    match at_top.as_slice() {
        [one] => Decision::Primary(*one),
        _ => Decision::Conflict(at_top),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Health::*;

    fn facts(in_recovery: bool, timeline: u32, system_id: u64) -> Option<NodeFacts> {
        Some(NodeFacts {
            in_recovery,
            timeline,
            system_id,
            wal_lsn: 0,
        })
    }

    fn m(id: usize, health: Health, facts: Option<NodeFacts>) -> MemberView {
        MemberView {
            id,
            health,
            facts,
            fenced: false,
        }
    }

    #[test]
    fn table() {
        let primary = facts(false, 1, 7);
        let standby = facts(true, 1, 7);
        let promoted = facts(false, 2, 7);
        let down = Down { successes: 0 };
        type Case = (&'static str, Vec<MemberView>, Option<u64>, u32, Decision);
        let cases: Vec<Case> = vec![
            (
                "one primary",
                vec![m(0, Up, primary.clone()), m(1, Up, standby.clone())],
                Some(7),
                1,
                Decision::Primary(0),
            ),
            (
                "suspect primary still serves",
                vec![m(0, Suspect { failures: 1 }, primary.clone())],
                None,
                0,
                Decision::Primary(0),
            ),
            (
                "primary down",
                vec![m(0, down, primary.clone()), m(1, Up, standby.clone())],
                Some(7),
                1,
                Decision::NoPrimary,
            ),
            (
                "promoted standby",
                vec![m(0, down, primary.clone()), m(1, Up, promoted.clone())],
                Some(7),
                1,
                Decision::Primary(1),
            ),
            (
                "old primary back on old timeline",
                vec![m(0, Up, primary.clone()), m(1, Up, promoted.clone())],
                Some(7),
                2,
                Decision::Primary(1),
            ),
            (
                "old primary back, new one down",
                vec![m(0, Up, primary.clone()), m(1, down, promoted.clone())],
                Some(7),
                2,
                Decision::NoPrimary,
            ),
            (
                "split brain",
                vec![m(0, Up, promoted.clone()), m(1, Up, promoted.clone())],
                Some(7),
                2,
                Decision::Conflict(vec![0, 1]),
            ),
            (
                "foreign system id",
                vec![m(0, Up, facts(false, 5, 9))],
                Some(7),
                1,
                Decision::NoPrimary,
            ),
            (
                "unknown health",
                vec![m(0, Unknown, primary.clone())],
                None,
                0,
                Decision::NoPrimary,
            ),
            (
                "a member not heard from yet",
                vec![m(0, Up, primary.clone()), m(1, Unknown, None)],
                None,
                0,
                Decision::NoPrimary,
            ),
            ("nothing yet", vec![], None, 0, Decision::NoPrimary),
        ];
        for (name, members, sid, min_tl, want) in cases {
            assert_eq!(decide(&members, sid, min_tl), want, "{name}");
        }
        let mut fenced = m(0, Up, primary);
        fenced.fenced = true;
        assert_eq!(decide(&[fenced], None, 0), Decision::NoPrimary, "fenced");
    }
}
