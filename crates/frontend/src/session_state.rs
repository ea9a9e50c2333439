//! What a session-mode client's messages do to the state its server connection holds, recorded
//! in the connection's [`BuiltState`] so that a failover can rebuild it on the new primary.
//!
//! Read from the SQL text by statement boundaries and first words (see `sql.rs`), not parsed:
//! state made where the text does not show it (inside a function, by a trigger) is not seen.
//! What is seen and cannot be rebuilt is recorded as lost: temporary objects, session-level
//! advisory locks, WITH HOLD cursors, SET ROLE / SESSION AUTHORIZATION, `set_config()`,
//! `LOAD`. A doubt counts as lost: the session then ends at a failover (57P01 naming it)
//! rather than going on with state missing.

use crate::sql::{for_each_statement, skip_blanks, until_nul, word};
use switchyard_proto::frontend::tag as fe;
use switchyard_server::{BuiltState, Change};

/// Records what one client message (about to be sent) does. `copy_in`: the server is in
/// copy-in mode, where it answers no Sync.
pub fn note_message(built: &mut BuiltState, tag: u8, body: &[u8], copy_in: bool) {
    match tag {
        fe::QUERY => {
            read_sql(built, body);
            built.request_sent();
        }
        fe::FUNCTION_CALL => built.request_sent(),
        fe::SYNC if !copy_in => built.request_sent(),
        fe::PARSE => {
            let name = body.split(|&b| b == 0).next().unwrap_or_default();
            let text = body.get(name.len() + 1..).unwrap_or_default();
            read_sql(built, text);
            let mut msg = Vec::with_capacity(body.len() + 5);
            msg.push(fe::PARSE);
            msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
            msg.extend_from_slice(body);
            built.parse_sent(name, &msg);
        }
        fe::CLOSE if body.first() == Some(&b'S') => {
            let name = body[1..].split(|&b| b == 0).next().unwrap_or_default();
            if !name.is_empty() {
                built.statement_closed(name);
            }
        }
        _ => {}
    }
}

/// Records what the statements of `sql` (a Query or Parse text, NUL-terminated) do.
fn read_sql(built: &mut BuiltState, sql: &[u8]) {
    let sql = until_nul(sql);
    note_functions(built, sql);
    let lexed = for_each_statement(sql, |statement| read_statement(built, statement));
    if !lexed {
        built.lose("a statement Switchyard could not read");
    }
}

/// Function calls that build state whatever statement they are in: `pg_advisory_lock` and
/// its shared and try forms (the `_xact_` ones end with the transaction), `set_config`, and
/// anything in `pg_temp`. Underscores are few in SQL, so this looks only around each one.
fn note_functions(built: &mut BuiltState, sql: &[u8]) {
    let around = |i: usize, before: &[u8], after: &[u8]| {
        i >= before.len()
            && sql[i - before.len()..i].eq_ignore_ascii_case(before)
            && sql
                .get(i + 1..i + 1 + after.len())
                .is_some_and(|a| a.eq_ignore_ascii_case(after))
    };
    for (i, &b) in sql.iter().enumerate() {
        if b != b'_' {
            continue;
        }
        if around(i, b"advisory", b"lock") {
            built.lose("a session advisory lock");
        } else if around(i, b"set", b"config") {
            built.lose("a setting made with set_config()");
        } else if around(i, b"pg", b"temp") {
            built.lose("an object in pg_temp");
        }
    }
}

/// The next word of `text` (after blanks), lowercased, and what follows it.
fn next_word(text: &[u8]) -> (String, &[u8]) {
    let text = skip_blanks(text).unwrap_or_default();
    let (w, rest) = word(text);
    (String::from_utf8_lossy(w).to_ascii_lowercase(), rest)
}

/// The next name of `text`: up to a blank, `=`, `(` or `;`, lowercased unless quoted.
fn next_name(text: &[u8]) -> (String, &[u8]) {
    let text = skip_blanks(text).unwrap_or_default();
    let end = text
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'=' || b == b'(' || b == b';')
        .unwrap_or(text.len());
    let name = String::from_utf8_lossy(&text[..end]);
    let name = if name.starts_with('"') {
        name.into_owned()
    } else {
        name.to_ascii_lowercase()
    };
    (name, &text[end..])
}

/// The statement's text, as it will be replayed.
fn text_of(statement: &[u8]) -> String {
    String::from_utf8_lossy(statement).trim().to_string()
}

fn read_statement(built: &mut BuiltState, statement: &[u8]) {
    let Some(text) = skip_blanks(statement) else {
        built.lose("a statement Switchyard could not read");
        return;
    };
    let (first, rest) = word(text);
    // Lowercased on the stack: most statements (SELECT, INSERT ...) change nothing here.
    let mut lower = [0u8; 10];
    let first = match lower.get_mut(..first.len()) {
        Some(l) => {
            l.copy_from_slice(first);
            l.make_ascii_lowercase();
            &*l
        }
        None => &[],
    };
    match first {
        b"set" => read_set(built, text, rest),
        b"reset" => match next_name(rest).0.as_str() {
            "all" => built.record(Change::ResetAll),
            "role" | "session" => {}
            name => built.record(Change::Set {
                key: name.to_string(),
                sql: text_of(text),
            }),
        },
        b"prepare" => {
            let (name, _) = next_name(rest);
            if name != "transaction" {
                let sql = text_of(text);
                built.record(Change::Prepare { name, sql });
            }
        }
        b"deallocate" => {
            let (mut name, after) = next_name(rest);
            if name == "prepare" {
                name = next_name(after).0;
            }
            built.record(Change::Deallocate((name != "all").then_some(name)));
        }
        b"listen" => {
            let channel = next_name(rest).0;
            let sql = text_of(text);
            built.record(Change::Listen { channel, sql });
        }
        b"unlisten" => {
            let channel = next_name(rest).0;
            built.record(Change::Unlisten((channel != "*").then_some(channel)));
        }
        b"discard" if next_word(rest).0 == "all" => built.record(Change::DiscardAll),
        b"commit" | b"end" => built.record(Change::End { commit: true }),
        b"rollback" | b"abort" => match next_word(rest).0.as_str() {
            // ROLLBACK TO SAVEPOINT undoes settings made after the savepoint, which this
            // record does not follow.
            "to" => built.lose("settings around a ROLLBACK TO SAVEPOINT"),
            "prepared" => {}
            _ => built.record(Change::End { commit: false }),
        },
        b"create" => {
            let mut after = rest;
            for _ in 0..4 {
                let (w, next) = next_word(after);
                if w == "temp" || w == "temporary" {
                    built.lose("a temporary table");
                    break;
                }
                after = next;
            }
        }
        b"select" | b"with" if contains_words(text, b"into", b"temp") => {
            built.lose("a temporary table");
        }
        b"declare" if contains_words(text, b"with", b"hold") => built.lose("a WITH HOLD cursor"),
        b"load" => built.lose("a library loaded with LOAD"),
        _ => {}
    }
}

/// `SET ...`: a setting to replay, or state that cannot be.
fn read_set(built: &mut BuiltState, text: &[u8], rest: &[u8]) {
    let (second, after) = next_name(rest);
    let key = match second.as_str() {
        "local" | "transaction" | "constraints" => return,
        "role" => return built.lose("a role set with SET ROLE"),
        "session" => match next_name(after).0.as_str() {
            "authorization" => return built.lose("SET SESSION AUTHORIZATION"),
            "characteristics" => "session characteristics".to_string(),
            name => name.to_string(),
        },
        "time" => "timezone".to_string(),
        "schema" => "search_path".to_string(),
        "names" => "client_encoding".to_string(),
        name => name.to_string(),
    };
    built.record(Change::Set {
        key,
        sql: text_of(text),
    });
}

/// Whether `text` has the word `a` followed (after blanks) by a word starting with `b`, in
/// any letter case (`INTO TEMP`, `WITH HOLD`).
fn contains_words(text: &[u8], a: &[u8], b: &[u8]) -> bool {
    text.windows(a.len()).enumerate().any(|(i, w)| {
        w.eq_ignore_ascii_case(a)
            && (i == 0 || !text[i - 1].is_ascii_alphanumeric())
            && text[i + a.len()..]
                .iter()
                .position(|c| !c.is_ascii_whitespace())
                .is_some_and(|s| {
                    let next = &text[i + a.len() + s..];
                    s > 0 && next.len() >= b.len() && next[..b.len()].eq_ignore_ascii_case(b)
                })
    })
}

#[cfg(test)]
#[path = "session_state_tests.rs"]
mod tests;
