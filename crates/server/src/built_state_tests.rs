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
    let effects: Vec<Effect> = changes.iter().cloned().map(Effect::Change).collect();
    b.run(&effects);
    b.request_sent();
    if error {
        b.error();
    }
    b.ready(status);
}

/// `PREPARE p AS SELECT 1`.
fn prepare_p() -> Change {
    Change::Prepare {
        name: "p".into(),
        sql: "PREPARE p AS SELECT 1".into(),
    }
}

fn end(commit: bool) -> Change {
    Change::End { commit }
}

#[test]
fn a_committed_setting_is_kept_a_rolled_back_one_is_not() {
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    request(&mut b, &[set("b")], false, TxStatus::InTransaction);
    request(&mut b, &[end(false)], false, TxStatus::Idle);
    request(&mut b, &[set("c")], false, TxStatus::InTransaction);
    request(&mut b, &[set("d")], true, TxStatus::Failed);
    request(&mut b, &[end(true)], false, TxStatus::Idle);
    request(&mut b, &[set("e"), end(true)], false, TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1\n;\nSET e = 1"));
    assert!(b.is_settled());
    assert_eq!(b.lost(), None);
}

#[test]
fn what_follows_the_end_of_a_failed_transaction_counts() {
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::InTransaction);
    request(&mut b, &[], true, TxStatus::Failed);
    request(&mut b, &[set("b")], true, TxStatus::Failed);
    request(&mut b, &[end(false), set("x")], false, TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET x = 1"));
    assert_eq!(b.lost(), None);
}

#[test]
fn the_last_setting_of_a_name_wins_and_reset_all_is_replayed_first() {
    let mut b = BuiltState::default();
    let again = Change::Set {
        key: "a".into(),
        sql: "SET a = 2".into(),
    };
    request(&mut b, &[set("a"), set("b"), again], false, TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET b = 1\n;\nSET a = 2"));
    request(&mut b, &[Change::ResetAll, set("c")], false, TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("RESET ALL\n;\nSET c = 1"));
}

#[test]
fn protocol_statements_count_when_answered_in_order_with_closes() {
    let mut b = BuiltState::default();
    b.parse_sent(b"s1", b"P-s1", vec![]);
    b.parse_sent(b"", b"", vec![]);
    b.parse_sent(b"s2", b"P-s2", vec![]);
    b.close_sent(Some(b"s2"));
    b.request_sent();
    b.op_done(); // s1
    b.op_done(); // unnamed
    b.op_skipped(); // s2: an error came before it
    b.op_skipped(); // its Close too
    b.ready(TxStatus::Idle);
    assert_eq!(b.parsed.len(), 1);
    assert!(b.parsed.contains_key(&b"s1"[..]));
    // Parse then Close in one batch: gone.
    b.parse_sent(b"s3", b"P-s3", vec![]);
    b.close_sent(Some(b"s3"));
    b.close_sent(Some(b"s1"));
    b.request_sent();
    b.op_done();
    b.op_done();
    b.op_done();
    b.ready(TxStatus::Idle);
    assert!(b.parsed.is_empty());
    assert!(b.is_settled());
}

#[test]
fn an_unanswered_parse_is_dropped_at_its_ready_for_query() {
    let mut b = BuiltState::default();
    b.parse_sent(b"s1", b"P-s1", vec![]);
    b.request_sent();
    // The relay skipped the Parse's answer without telling (a streamed batch): the
    // ReadyForQuery settles it anyway.
    b.ready(TxStatus::Idle);
    assert!(b.is_settled());
    assert!(b.parsed.is_empty());
}

#[test]
fn a_prepared_statement_acts_when_executed_not_when_parsed() {
    let mut b = BuiltState::default();
    let to = |v: &str| {
        vec![Effect::Change(Change::Set {
            key: "search_path".into(),
            sql: format!("SET search_path TO {v}"),
        })]
    };
    b.parse_sent(b"sa", b"P-sa", to("a"));
    b.parse_sent(b"sb", b"P-sb", to("b"));
    for statement in [&b"sa"[..], b"sb", b"sa"] {
        b.bound(b"", statement);
        b.executed(b"");
    }
    b.request_sent();
    b.op_done();
    b.op_done();
    b.ready(TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET search_path TO a"));
    // Parsed, never run: nothing.
    let mut c = BuiltState::default();
    c.parse_sent(b"", b"", to("z"));
    c.request_sent();
    c.op_done();
    c.ready(TxStatus::Idle);
    assert_eq!(c.replay_sql(), None);
}

#[test]
fn pipelined_requests_settle_one_by_one() {
    let mut b = BuiltState::default();
    b.run(&[Effect::Change(set("a"))]);
    b.request_sent();
    b.run(&[Effect::Change(set("b"))]);
    b.request_sent();
    assert!(!b.is_settled());
    b.ready(TxStatus::Idle); // the first: its SET took
    b.error(); // the second failed
    b.ready(TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1"));
    assert!(b.is_settled());
}

#[test]
fn an_ignored_sync_moves_later_requests_up() {
    let mut b = BuiltState::default();
    b.request_sent(); // request 0: the Execute's Sync, which copy-in mode ignores
    b.sync_ignored(0);
    b.run(&[Effect::Change(set("a"))]);
    b.request_sent(); // request 0 again: the CopyDone's Sync
    b.ready(TxStatus::Idle);
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1"));
    assert!(b.is_settled());
}

#[test]
fn lost_state_is_named_and_discard_all_forgets_what_came_before() {
    let mut b = BuiltState::default();
    let lost = |what| Effect::Lost {
        what,
        permanent: false,
    };
    b.run(&[lost("a temporary table"), lost("a temporary table")]);
    b.run(&[lost("a session advisory lock")]);
    b.run(&[Effect::Lost {
        what: "a library loaded with LOAD",
        permanent: true,
    }]);
    assert_eq!(
        b.lost().as_deref(),
        Some("a temporary table, a session advisory lock, a library loaded with LOAD")
    );
    b.request_sent();
    b.ready(TxStatus::Idle);
    request(
        &mut b,
        &[set("a"), Change::DiscardAll],
        false,
        TxStatus::Idle,
    );
    assert_eq!(b.lost().as_deref(), Some("a library loaded with LOAD"));
    assert_eq!(b.replay_sql(), None);
}

#[test]
fn sql_and_protocol_statements_share_one_namespace() {
    let mut b = BuiltState::default();
    b.parse_sent(b"q", b"P-q", vec![]);
    b.request_sent();
    b.op_done();
    b.ready(TxStatus::Idle);
    request(
        &mut b,
        &[Change::Deallocate(Some("q".into()))],
        false,
        TxStatus::Idle,
    );
    assert!(b.parsed.is_empty());
    let prepare = Change::Prepare {
        name: "r".into(),
        sql: "PREPARE r AS SELECT 1".into(),
    };
    request(&mut b, &[prepare], false, TxStatus::Idle);
    b.close_sent(Some(b"r"));
    b.request_sent();
    b.op_done();
    b.ready(TxStatus::Idle);
    assert_eq!(b.replay_sql(), None);
}

#[test]
fn a_commit_then_an_error_in_one_request_is_a_doubt() {
    let mut b = BuiltState::default();
    request(
        &mut b,
        &[set("a"), end(true), set("b")],
        true,
        TxStatus::Idle,
    );
    assert!(b.lost().is_some());
}

#[test]
fn a_lost_transaction_keeps_what_a_rollback_keeps_when_that_is_known() {
    let prepare = prepare_p();
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    request(
        &mut b,
        &[set("b"), prepare.clone()],
        false,
        TxStatus::InTransaction,
    );
    assert!(b.transaction_lost(false));
    assert!(b.is_settled());
    assert_eq!(
        b.replay_sql().as_deref(),
        Some("SET a = 1\n;\nPREPARE p AS SELECT 1")
    );
    // A request still unanswered made a change: whether it ran is not known.
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::InTransaction);
    b.run(&[Effect::Change(set("b"))]);
    b.request_sent();
    assert!(!b.transaction_lost(false));
    assert!(!b.is_settled(), "nothing changed");
    // A PREPARE before an error in the transaction: whether it ran is not known.
    let mut b = BuiltState::default();
    request(&mut b, &[prepare], true, TxStatus::Failed);
    assert!(!b.transaction_lost(false));
    // An unanswered request that changes nothing is only answered (40001).
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    request(&mut b, &[], false, TxStatus::InTransaction);
    b.request_sent();
    assert!(b.transaction_lost(false));
    assert!(b.is_settled());
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1"));
}

#[test]
fn a_lost_commit_keeps_the_state_when_its_transaction_changed_nothing_held() {
    let prepare = prepare_p();
    // BEGIN; a PREPARE; then the COMMIT in flight: the PREPARE holds either way.
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    request(&mut b, &[prepare], false, TxStatus::InTransaction);
    b.run(&[Effect::Change(end(true))]);
    b.request_sent();
    assert!(!b.transaction_lost(false), "a COMMIT in flight is a change");
    assert!(b.transaction_lost(true));
    assert!(b.is_settled());
    assert_eq!(
        b.replay_sql().as_deref(),
        Some("SET a = 1\n;\nPREPARE p AS SELECT 1")
    );
    // A SET in the transaction: whether it holds depends on the COMMIT.
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::InTransaction);
    b.run(&[Effect::Change(end(true))]);
    b.request_sent();
    assert!(!b.transaction_lost(true));
    assert!(!b.is_settled(), "nothing changed");
}

#[test]
fn a_parse_or_close_in_flight_is_as_if_not_sent() {
    let mut b = BuiltState::default();
    request(&mut b, &[set("a")], false, TxStatus::Idle);
    let parse = b"P\0\0\0\x11s1\0select 1\0\0\0";
    b.parse_sent(b"s1", parse, Vec::new());
    b.request_sent();
    b.op_done();
    b.ready(TxStatus::InTransaction);
    // s1 is prepared; its Close, then a Parse of s2, are in flight.
    b.close_sent(Some(b"s1"));
    b.parse_sent(b"s2", b"P\0\0\0\x11s2\0select 2\0\0\0", Vec::new());
    b.request_sent();
    assert!(!b.changes_in_flight());
    assert!(b.transaction_lost(false));
    assert!(b.is_settled());
    assert_eq!(b.replay_sql().as_deref(), Some("SET a = 1"));
    let held: Vec<&[u8]> = b.parsed.keys().map(|k| &k[..]).collect();
    assert_eq!(held, [b"s1"], "what the client was told, not what it asked");
}
