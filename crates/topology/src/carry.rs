//! The first view of a monitor that replaces another one of the same cluster (a reload changed
//! its members or probe settings; see `Carried` in `monitor`): what it takes over, so that
//! the reload changes nothing the data path can see: the primary stays the primary under the same generation (in-flight transactions
//! and idle connections carry on), fences stay, and what the old monitor learned (member
//! health and facts, the system identifier, the highest timeline) is not forgotten.

use crate::health::Health;
use crate::view::{ClusterState, MemberStatus, TopologyView};
use std::time::Instant;

/// Members the old monitor knew keep their health and facts, and fenced members stay fenced.
/// Its primary stays the primary, under the same generation, if it is still a member and not
/// fenced. Otherwise there is no primary until the probes find one: a change if the old
/// monitor had one (or a conflict), so the generation moves past every number in use (and the
/// router retires connections of the old ones); else it goes on at the highest in use.
pub(crate) fn first_view(
    previous: Option<&TopologyView>,
    fenced: &[String],
    after_generation: u64,
    addrs: &[String],
) -> TopologyView {
    let known = |a: &str| previous.and_then(|v| v.members.iter().find(|m| m.addr == a));
    let members: Vec<MemberStatus> = addrs
        .iter()
        .map(|a| MemberStatus {
            addr: a.clone(),
            health: known(a).map_or(Health::Unknown, |m| m.health),
            facts: known(a).and_then(|m| m.facts.clone()),
            fenced: fenced.contains(a),
        })
        .collect();
    let kept = previous.and_then(|v| {
        let primary = v.primary_addr()?;
        let id = members
            .iter()
            .position(|m| m.addr == primary && !m.fenced)?;
        Some((v, id))
    });
    match kept {
        Some((v, id)) => TopologyView {
            generation: v.generation,
            state: ClusterState::Primary {
                id,
                addr: members[id].addr.clone(),
            },
            members,
            since: v.since,
            system_id: v.system_id,
            max_timeline: v.max_timeline,
        },
        None => TopologyView {
            generation: after_generation.max(previous.map_or(0, |v| v.generation))
                + u64::from(previous.is_some_and(|v| v.state != ClusterState::NoPrimary)),
            state: ClusterState::NoPrimary,
            members,
            since: Instant::now(),
            system_id: previous.and_then(|v| v.system_id),
            max_timeline: previous.map_or(0, |v| v.max_timeline),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::NodeFacts;

    fn member(addr: &str, in_recovery: bool) -> MemberStatus {
        MemberStatus {
            addr: addr.into(),
            health: Health::Up,
            facts: Some(NodeFacts {
                in_recovery,
                timeline: 3,
                system_id: 7,
                wal_lsn: 0,
            }),
            fenced: false,
        }
    }

    fn previous() -> TopologyView {
        TopologyView {
            generation: 5,
            state: ClusterState::Primary {
                id: 0,
                addr: "a:1".into(),
            },
            members: vec![member("a:1", false), member("b:2", true)],
            since: Instant::now(),
            system_id: Some(7),
            max_timeline: 3,
        }
    }

    fn addrs(list: &[&str]) -> Vec<String> {
        list.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn the_primary_and_what_was_learned_are_kept() {
        // A member added in front, so the primary's index moves.
        let v = first_view(Some(&previous()), &[], 9, &addrs(&["c:3", "b:2", "a:1"]));
        assert_eq!(v.generation, 5, "same generation: nothing to retire");
        assert_eq!(
            v.state,
            ClusterState::Primary {
                id: 2,
                addr: "a:1".into()
            }
        );
        assert_eq!(v.members[0].health, Health::Unknown, "new member");
        assert_eq!(v.members[1].health, Health::Up);
        assert!(v.members[1].facts.as_ref().unwrap().in_recovery);
        assert_eq!((v.system_id, v.max_timeline), (Some(7), 3));
    }

    #[test]
    fn a_removed_or_fenced_primary_is_not_kept() {
        for (members, fenced) in [(&["b:2"][..], &[][..]), (&["a:1", "b:2"], &["a:1"])] {
            let v = first_view(Some(&previous()), &addrs(fenced), 9, &addrs(members));
            assert_eq!(v.state, ClusterState::NoPrimary);
            assert_eq!(v.generation, 10, "numbered after every generation in use");
            let v = first_view(Some(&previous()), &addrs(fenced), 5, &addrs(members));
            assert_eq!(
                v.generation, 6,
                "a change: after the old monitor's own number too"
            );
            assert_eq!(
                v.max_timeline, 3,
                "an old primary on a lower timeline stays out"
            );
        }
    }

    #[test]
    fn no_primary_before_stays_at_the_highest_number() {
        let before = TopologyView {
            state: ClusterState::NoPrimary,
            ..previous()
        };
        let v = first_view(Some(&before), &[], 5, &addrs(&["a:1", "b:2"]));
        assert_eq!((v.generation, v.state), (5, ClusterState::NoPrimary));
    }

    #[test]
    fn without_a_previous_monitor_everything_is_unknown() {
        let v = first_view(None, &[], 0, &addrs(&["a:1"]));
        assert_eq!(v.state, ClusterState::NoPrimary);
        assert_eq!(v.members[0].health, Health::Unknown);
        assert_eq!((v.generation, v.system_id, v.max_timeline), (0, None, 0));
    }
}
