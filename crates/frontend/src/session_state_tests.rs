use super::*;
use switchyard_proto::backend::TxStatus;

/// Runs each of `sqls` as one answered simple query; returns the state.
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
    // A quoted name is the same name as written plain and folded.
    assert_eq!(after(&["LISTEN \"jobs\"", "UNLISTEN jobs"]).listens(), 0);
    assert_eq!(after(&["LISTEN \"Jobs\"", "UNLISTEN jobs"]).listens(), 1);
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
        ("SET SESSION ROLE other", "SET ROLE"),
        ("SET SESSION AUTHORIZATION other", "AUTHORIZATION"),
        ("SELECT set_config('a.b', '1', false)", "set_config"),
        ("LOAD 'auto_explain'", "LOAD"),
        ("SELECT 'unterminated", "could not read"),
        ("BEGIN; ROLLBACK WORK TO SAVEPOINT s", "SAVEPOINT"),
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
        assert!(b.is_empty(), "{sql}");
    }
}

#[test]
fn discard_all_forgets_even_the_lost() {
    assert_eq!(lost(&["CREATE TEMP TABLE t (a int)", "DISCARD ALL"]), None);
}

#[test]
fn session_characteristics_do_not_replace_each_other() {
    let b = after(&[
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    ]);
    assert_eq!(b.lost(), None);
    assert!(!b.is_empty());
}

/// Parse, Bind, Execute and Sync as a driver sends them.
fn extended(b: &mut BuiltState, name: &str, sql: &str) {
    let parse = format!("{name}\0{sql}\0\0\0");
    note_message(b, fe::PARSE, parse.as_bytes(), false);
    let bind = format!("\0{name}\0\0\0\0\0\0\0");
    note_message(b, fe::BIND, bind.as_bytes(), false);
    note_message(b, fe::EXECUTE, b"\0\0\0\0\0", false);
    note_message(b, fe::SYNC, b"", false);
    b.op_done();
    b.ready(TxStatus::Idle);
}

#[test]
fn a_statement_run_through_the_protocol_counts_when_executed() {
    let mut b = BuiltState::default();
    extended(&mut b, "", "SET work_mem = '9MB'");
    assert!(!b.is_empty());
    assert!(b.is_settled());
    // A named statement run again later (Bind/Execute alone) counts again.
    let mut c = BuiltState::default();
    extended(&mut c, "s1", "LISTEN a");
    extended(&mut c, "", "UNLISTEN a");
    assert_eq!(c.listens(), 0);
    note_message(&mut c, fe::BIND, b"\0s1\0\0\0\0\0\0\0", false);
    note_message(&mut c, fe::EXECUTE, b"\0\0\0\0\0", false);
    note_message(&mut c, fe::SYNC, b"", false);
    c.ready(TxStatus::Idle);
    assert_eq!(c.listens(), 1);
    note_message(&mut c, fe::CLOSE, b"Ss1\0", false);
    note_message(&mut c, fe::SYNC, b"", false);
    c.op_done();
    c.ready(TxStatus::Idle);
    assert!(c.is_settled());
}
