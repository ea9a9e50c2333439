use super::*;

fn set(key: &str) -> Change {
    Change::Set {
        key: key.into(),
        sql: format!("SET {key} = 1"),
    }
}

/// Sends one request making `changes`, then answers it with `status` (after an error if
/// `error`).
fn request(b: &mut BuiltState, changes: &[Change], error: bool, status: TxStatus) {
    for c in changes {
        b.record(c.clone());
    }
    b.request_sent();
    if error {
        b.error();
    }
    b.ready(status);
}

#[test]
fn a_committed_setting_is_kept_a_rolled_back_one_is_not() {
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    request(&mut b, &[set("b")], false, TxStatus::InTransaction);
    request(
        &mut b,
        &[Change::End { commit: false }],
        false,
        TxStatus::Idle,
    );
    request(&mut b, &[set("c")], false, TxStatus::InTransaction);
    request(&mut b, &[set("d")], true, TxStatus::Failed);
    request(
        &mut b,
        &[Change::End { commit: true }],
        false,
        TxStatus::Idle,
    );
    request(
        &mut b,
        &[set("e"), Change::End { commit: true }],
        false,
        TxStatus::Idle,
    );
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1;\nSET e = 1"));
    assert!(b.is_settled());
    assert_eq!(b.lost(), None);
}

#[test]
fn the_last_setting_of_a_name_wins_and_reset_all_clears() {
    let mut b = BuiltState::default();
    let again = Change::Set {
        key: "a".into(),
        sql: "SET a = 2".into(),
    };
    request(&mut b, &[set("a"), set("b"), again], false, TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET b = 1;\nSET a = 2"));
    request(&mut b, &[Change::ResetAll], false, TxStatus::Idle);
    assert_eq!(b.replay_sql(), None);
}

#[test]
fn a_parse_counts_once_it_completes() {
    let mut b = BuiltState::default();
    b.parse_sent(b"s1", b"P-s1");
    b.parse_sent(b"", b"P-unnamed");
    b.parse_sent(b"s2", b"P-s2");
    b.request_sent();
    b.parse_done();
    b.parse_done();
    b.parse_skipped(); // an error came before s2
    b.ready(TxStatus::Idle);
    assert_eq!(b.parsed.len(), 1);
    assert_eq!(&b.parsed[0].0[..], b"s1");
    b.statement_closed(b"s1");
    assert!(b.parsed.is_empty());
    assert!(b.is_settled());
}

#[test]
fn pipelined_requests_settle_one_by_one() {
    let mut b = BuiltState::default();
    b.record(set("a"));
    b.request_sent();
    b.record(set("b"));
    b.request_sent();
    assert!(!b.is_settled());
    b.ready(TxStatus::Idle); // the first: its SET took
    b.error(); // the second failed
    b.ready(TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1"));
    assert!(b.is_settled());
}

#[test]
fn lost_state_is_named_and_discard_all_forgets_everything() {
    let mut b = BuiltState::default();
    b.lose("a temporary table");
    b.lose("a temporary table");
    b.lose("a session advisory lock");
    assert_eq!(
        b.lost().as_deref(),
        Some("a temporary table, a session advisory lock")
    );
    request(
        &mut b,
        &[set("a"), Change::DiscardAll],
        false,
        TxStatus::Idle,
    );
    assert_eq!(b.lost(), None);
    assert_eq!(b.replay_sql(), None);
}

#[test]
fn a_commit_then_an_error_in_one_request_is_a_doubt() {
    let mut b = BuiltState::default();
    request(
        &mut b,
        &[set("a"), Change::End { commit: true }, set("b")],
        true,
        TxStatus::Idle,
    );
    assert!(b.lost().is_some());
}
