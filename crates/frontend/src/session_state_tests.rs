use super::*;
use switchyard_proto::backend::TxStatus;

/// Runs `sql` as one answered simple query; returns the state.
fn after(sqls: &[&str]) -> BuiltState {
    let mut b = BuiltState::default();
    for sql in sqls {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        note_message(&mut b, fe::QUERY, &body, false);
        b.ready(TxStatus::Idle);
    }
    b
}

fn lost(sqls: &[&str]) -> Option<String> {
    after(sqls).lost()
}

#[test]
fn settings_prepared_statements_and_listens_are_recorded() {
    let b = after(&[
        "SET work_mem = '8MB'",
        "set session statement_timeout to 5000; SET LOCAL lock_timeout = 1",
        "PREPARE q (int) AS SELECT $1 * 2",
        "LISTEN jobs; listen \"Other\"",
        "SET TIME ZONE 'UTC'",
        "UNLISTEN \"Other\"",
    ]);
    assert_eq!(b.lost(), None);
    assert!(b.is_settled());
    assert_eq!(b.listens(), 1);
}

#[test]
fn what_cannot_be_rebuilt_is_named() {
    for (sql, what) in [
        ("CREATE TEMP TABLE t (a int)", "temporary table"),
        ("create global temporary table t (a int)", "temporary table"),
        ("SELECT 1 INTO TEMP t", "temporary table"),
        ("SELECT pg_advisory_lock(1)", "advisory lock"),
        ("select pg_try_advisory_lock_shared(1)", "advisory lock"),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", "WITH HOLD"),
        ("SET ROLE other", "SET ROLE"),
        ("SET SESSION AUTHORIZATION other", "AUTHORIZATION"),
        ("SELECT set_config('a.b', '1', false)", "set_config"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("SELECT 'unterminated", "could not read"),
    ] {
        let lost = lost(&[sql]).unwrap_or_default();
        assert!(lost.contains(what), "{sql}: {lost:?}");
    }
}

#[test]
fn ordinary_statements_build_nothing() {
    for sql in [
        "SELECT 1",
        "SELECT pg_advisory_xact_lock(1)",
        "INSERT INTO temperatures VALUES (1)",
        "SELECT * FROM t WHERE note = 'create temp table'",
        "SET LOCAL work_mem = '1MB'",
        "DECLARE c CURSOR FOR SELECT 1",
        "BEGIN; SELECT 1; COMMIT",
    ] {
        let b = after(&[sql]);
        assert_eq!(b.lost(), None, "{sql}");
        assert_eq!(b.listens(), 0, "{sql}");
    }
}

#[test]
fn discard_all_forgets_even_the_lost() {
    assert_eq!(lost(&["CREATE TEMP TABLE t (a int)", "DISCARD ALL"]), None);
}

#[test]
fn protocol_statements_count_at_parse_complete_and_go_at_close() {
    let mut b = BuiltState::default();
    note_message(&mut b, fe::PARSE, b"s1\0SELECT 1\0\0\0", false);
    note_message(&mut b, fe::SYNC, b"", false);
    assert!(!b.is_settled());
    b.parse_done();
    b.ready(TxStatus::Idle);
    assert!(b.is_settled());
    note_message(&mut b, fe::CLOSE, b"Ss1\0", false);
    note_message(&mut b, fe::SYNC, b"", false);
    b.ready(TxStatus::Idle);
    assert!(b.is_settled());
}
