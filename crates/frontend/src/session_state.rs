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
use switchyard_server::{BuiltState, Change, Effect};

/// Records what one client message (about to be sent) does. `copy_in`: the server is in
/// copy-in mode, where it answers no Sync.
pub fn note_message(built: &mut BuiltState, tag: u8, body: &[u8], copy_in: bool) {
    match tag {
        fe::QUERY => {
            built.run(&read_sql(body));
            built.request_sent();
        }
        fe::FUNCTION_CALL => built.request_sent(),
        fe::SYNC if !copy_in => built.request_sent(),
        fe::PARSE => {
            let name = cstr(body);
            let text = body.get(name.len() + 1..).unwrap_or_default();
            let effects = read_sql(text);
            if name.is_empty() {
                built.parse_sent(name, &[], effects);
            } else {
                let mut msg = Vec::with_capacity(body.len() + 5);
                msg.push(fe::PARSE);
                msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
                msg.extend_from_slice(body);
                built.parse_sent(name, &msg, effects);
            }
        }
        fe::BIND => {
            let portal = cstr(body);
            let statement = cstr(body.get(portal.len() + 1..).unwrap_or_default());
            built.bound(portal, statement);
        }
        fe::EXECUTE => built.executed(cstr(body)),
        fe::CLOSE => match body.first() {
            Some(b'S') => built.close_sent(Some(cstr(&body[1..]))),
            _ => built.close_sent(None),
        },
        _ => {}
    }
}

/// The NUL-terminated string at the start of `body`.
fn cstr(body: &[u8]) -> &[u8] {
    body.split(|&b| b == 0).next().unwrap_or_default()
}

/// What running the statements of `sql` (a Query or Parse text, NUL-terminated) does.
fn read_sql(sql: &[u8]) -> Vec<Effect> {
    let sql = until_nul(sql);
    let mut effects = Vec::new();
    note_functions(&mut effects, sql);
    let lexed = for_each_statement(sql, |statement| read_statement(&mut effects, statement));
    if !lexed {
        lose(&mut effects, "a statement Switchyard could not read");
    }
    effects
}

fn lose(effects: &mut Vec<Effect>, what: &'static str) {
    effects.push(Effect::Lost {
        what,
        permanent: false,
    });
}

fn record(effects: &mut Vec<Effect>, change: Change) {
    effects.push(Effect::Change(change));
}

/// Function calls that build state whatever statement they are in: `pg_advisory_lock` and
/// its shared and try forms (the `_xact_` ones end with the transaction), `set_config`, and
/// anything in `pg_temp`. Underscores are few in SQL, so this looks only around each one.
fn note_functions(effects: &mut Vec<Effect>, sql: &[u8]) {
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
            lose(effects, "a session advisory lock");
        } else if around(i, b"set", b"config") {
            lose(effects, "a setting made with set_config()");
        } else if around(i, b"pg", b"temp") {
            lose(effects, "an object in pg_temp");
        }
    }
}

/// The next word of `text` (after blanks), lowercased, and what follows it.
fn next_word(text: &[u8]) -> (String, &[u8]) {
    let text = skip_blanks(text).unwrap_or_default();
    let (w, rest) = word(text);
    (String::from_utf8_lossy(w).to_ascii_lowercase(), rest)
}

/// The next name of `text`: a quoted identifier as written inside its quotes (a doubled
/// quote is one), else up to a blank, `=`, `(` or `;`, lowercased, as PostgreSQL folds it.
pub(crate) fn next_name(text: &[u8]) -> (String, &[u8]) {
    let text = skip_blanks(text).unwrap_or_default();
    if text.first() == Some(&b'"') {
        let mut name = Vec::new();
        let mut i = 1;
        while i < text.len() {
            match (text[i], text.get(i + 1)) {
                (b'"', Some(b'"')) => {
                    name.push(b'"');
                    i += 2;
                }
                (b'"', _) => {
                    return (String::from_utf8_lossy(&name).into_owned(), &text[i + 1..]);
                }
                (b, _) => {
                    name.push(b);
                    i += 1;
                }
            }
        }
        return (String::from_utf8_lossy(&name).into_owned(), &[]);
    }
    let end = text
        .iter()
        .position(|&b| b.is_ascii_whitespace() || b == b'=' || b == b'(' || b == b';')
        .unwrap_or(text.len());
    let name = String::from_utf8_lossy(&text[..end]).to_ascii_lowercase();
    (name, &text[end..])
}

/// The statement's text, as it will be replayed; None if it is not UTF-8 (a client in
/// another encoding: its bytes are not kept by guess).
fn text_of(statement: &[u8]) -> Option<String> {
    std::str::from_utf8(statement)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Records `change`, made from `text` by `make` (None: the text cannot be replayed).
fn replayable(effects: &mut Vec<Effect>, text: &[u8], make: impl FnOnce(String) -> Change) {
    match text_of(text) {
        Some(sql) => record(effects, make(sql)),
        None => lose(
            effects,
            "a setting or statement in an encoding other than UTF-8",
        ),
    }
}

fn read_statement(effects: &mut Vec<Effect>, statement: &[u8]) {
    let Some(text) = skip_blanks(statement) else {
        lose(effects, "a statement Switchyard could not read");
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
        b"set" => read_set(effects, text, rest),
        b"reset" => match next_name(rest).0.as_str() {
            "all" => record(effects, Change::ResetAll),
            // (A role set before was recorded as lost: resetting it does not bring it back.)
            "role" | "session" => {}
            name => {
                let key = name.to_string();
                replayable(effects, text, |sql| Change::Set { key, sql });
            }
        },
        b"prepare" => {
            let (name, _) = next_name(rest);
            if name != "transaction" {
                replayable(effects, text, |sql| Change::Prepare { name, sql });
            }
        }
        b"deallocate" => {
            let (mut name, after) = next_name(rest);
            if name == "prepare" {
                name = next_name(after).0;
            }
            record(effects, Change::Deallocate((name != "all").then_some(name)));
        }
        b"listen" => {
            let channel = next_name(rest).0;
            replayable(effects, text, |sql| Change::Listen { channel, sql });
        }
        b"unlisten" => {
            let channel = next_name(rest).0;
            record(
                effects,
                Change::Unlisten((channel != "*").then_some(channel)),
            );
        }
        b"discard" if next_word(rest).0 == "all" => record(effects, Change::DiscardAll),
        b"commit" | b"end" => record(effects, Change::End { commit: true }),
        b"rollback" | b"abort" => {
            let (mut next, after) = next_word(rest);
            if next == "work" || next == "transaction" {
                next = next_word(after).0;
            }
            match next.as_str() {
                // ROLLBACK TO SAVEPOINT undoes settings made after the savepoint, which this
                // record does not follow.
                "to" => lose(effects, "settings around a ROLLBACK TO SAVEPOINT"),
                "prepared" => {}
                _ => record(effects, Change::End { commit: false }),
            }
        }
        b"create" => {
            let mut after = rest;
            for _ in 0..4 {
                let (w, next) = next_word(after);
                if w == "temp" || w == "temporary" {
                    lose(effects, "a temporary table");
                    break;
                }
                after = next;
            }
        }
        b"select" | b"with" if contains_words(text, b"into", b"temp") => {
            lose(effects, "a temporary table");
        }
        b"declare" if contains_words(text, b"with", b"hold") => {
            lose(effects, "a WITH HOLD cursor");
        }
        b"load" => effects.push(Effect::Lost {
            what: "a library loaded with LOAD",
            permanent: true,
        }),
        _ => {}
    }
}

/// `SET ...`: a setting to replay, or state that cannot be.
fn read_set(effects: &mut Vec<Effect>, text: &[u8], rest: &[u8]) {
    let (mut second, mut after) = next_name(rest);
    if second == "session" {
        (second, after) = next_name(after);
        match second.as_str() {
            "authorization" => return lose(effects, "SET SESSION AUTHORIZATION"),
            // Each characteristic its own: none replaces another.
            "characteristics" => {
                let key = String::from_utf8_lossy(text).into_owned();
                return replayable(effects, text, |sql| Change::Set { key, sql });
            }
            _ => {}
        }
    }
    let _ = after;
    let key = match second.as_str() {
        "local" | "transaction" | "constraints" => return,
        "role" | "session_authorization" => return lose(effects, "a role set with SET ROLE"),
        "time" => "timezone".to_string(),
        "schema" => "search_path".to_string(),
        "names" => "client_encoding".to_string(),
        name => name.to_string(),
    };
    replayable(effects, text, |sql| Change::Set { key, sql });
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
