//! What the relay reads from a client's SQL text, without parsing SQL: whether a request may
//! commit a transaction (the difference between "rolled back, retry" and "outcome unknown" when
//! its server is lost), whether it only starts one, and whether it names search_path.
//!
//! Written by hand because no crate lexes PostgreSQL's comment and quoting rules cheaply enough
//! for the data path (pg_query builds the C parser); only statement boundaries and first words
//! are needed. Every doubt answers "may commit": a false "may commit" costs a client 08007
//! instead of 40001, a false "cannot commit" would tell it to retry a transaction that may have
//! committed.

/// What running a text may do to the transaction it runs in: commit it, roll
/// it back (whatever is sent after it, before its answer, then runs outside the transaction
/// block and commits by itself), both, or neither. An enum so that `Option<Effect>` is one
/// byte: the relay keeps several in every session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Effect {
    #[default]
    Neither,
    Commits,
    RollsBack,
    Both,
}

impl Effect {
    /// What an unknown text may do: anything.
    pub const UNKNOWN: Effect = Effect::Both;

    pub fn new(commits: bool, rolls_back: bool) -> Effect {
        match (commits, rolls_back) {
            (false, false) => Effect::Neither,
            (true, false) => Effect::Commits,
            (false, true) => Effect::RollsBack,
            (true, true) => Effect::Both,
        }
    }

    pub fn commits(self) -> bool {
        matches!(self, Effect::Commits | Effect::Both)
    }

    pub fn rolls_back(self) -> bool {
        matches!(self, Effect::RollsBack | Effect::Both)
    }

    /// What either may do.
    pub fn or(self, other: Effect) -> Effect {
        Effect::new(
            self.commits() || other.commits(),
            self.rolls_back() || other.rolls_back(),
        )
    }

    /// What `sql` may do, in one pass (on the data path for every simple query). It may commit
    /// if any statement is `COMMIT`, `END`, `PREPARE TRANSACTION` or `COMMIT PREPARED` (after
    /// any comments), or follows a ROLLBACK; text that does not lex to its end (an unterminated
    /// quote or comment) may do anything. A trailing NUL (as in Query and Parse bodies) ends it.
    pub fn of(sql: &[u8]) -> Effect {
        let sql = until_nul(sql);
        Effect::of_text(sql, memchr::memchr(b';', sql))
    }

    /// [`Effect::of`] a text without its NUL whose first `;` (if any) is known, as [`scan`]
    /// finds it.
    pub fn of_text(sql: &[u8], first_semicolon: Option<usize>) -> Effect {
        // Fast path, most requests: one statement, at most a trailing `;`.
        let body = trim_end(sql);
        if first_semicolon.is_none_or(|at| at + 1 == body.len()) {
            return first_words_effect(body.strip_suffix(b";").unwrap_or(body));
        }
        let mut commits = false;
        // After a ROLLBACK, what follows runs outside a transaction block, and commits by itself.
        let mut rolled_back = false;
        let lexed = for_each_statement(sql, |statement| {
            let blank = skip_blanks(statement).is_some_and(<[u8]>::is_empty);
            commits |= first_word_commits(statement) || (rolled_back && !blank);
            rolled_back |= first_word_rolls_back(statement);
        });
        // Text that does not lex may do anything.
        if lexed {
            Effect::new(commits, rolled_back)
        } else {
            Effect::UNKNOWN
        }
    }
}

/// Whether the first statement of `sql` surely commits (for the reply to a failed transaction,
/// where the server would act on the first statement only): here a doubt means no.
pub fn first_statement_commits(sql: &[u8]) -> bool {
    let sql = until_nul(sql);
    skip_blanks(sql).is_some() && first_word_commits(sql)
}

/// [`Effect::of`] one statement: what its first word(s) commit or roll back, with one skip of
/// the blanks before them (on the data path for every simple query).
fn first_words_effect(statement: &[u8]) -> Effect {
    let Some(text) = skip_blanks(statement) else {
        return Effect::Commits; // an unterminated comment: cannot tell
    };
    // Most statements are told by their first letter (ROLLBACK, ABORT, COMMIT, END, PREPARE).
    if !matches!(
        text.first().map(|b| b | 0x20),
        Some(b'r' | b'a' | b'c' | b'e' | b'p')
    ) {
        return Effect::Neither;
    }
    let (first, rest) = word(text);
    if first.eq_ignore_ascii_case(b"rollback") || first.eq_ignore_ascii_case(b"abort") {
        return Effect::RollsBack;
    }
    Effect::new(word_commits(first, rest), false)
}

/// Whether the statement starts with ROLLBACK or ABORT (a `ROLLBACK TO SAVEPOINT` too: a
/// false yes only makes what follows count as committing).
pub fn first_word_rolls_back(statement: &[u8]) -> bool {
    skip_blanks(statement).is_some_and(|text| {
        let first = word(text).0;
        first.eq_ignore_ascii_case(b"rollback") || first.eq_ignore_ascii_case(b"abort")
    })
}

/// PostgreSQL's whitespace (`[ \t\n\r\f\v]`); Rust's ASCII whitespace lacks `\v`.
fn is_space(b: &u8) -> bool {
    b.is_ascii_whitespace() || *b == 0x0b
}

/// A byte that continues an identifier (PostgreSQL's `ident_cont`, with `$`).
fn continues_identifier(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

pub(crate) fn until_nul(sql: &[u8]) -> &[u8] {
    memchr::memchr(0, sql).map_or(sql, |end| &sql[..end])
}

fn trim_end(sql: &[u8]) -> &[u8] {
    let end = sql.iter().rposition(|b| !is_space(b)).map_or(0, |i| i + 1);
    &sql[..end]
}

/// The statement's first word(s), after whitespace and comments, name a commit.
fn first_word_commits(statement: &[u8]) -> bool {
    let Some(text) = skip_blanks(statement) else {
        return true; // an unterminated comment: cannot tell
    };
    let (first, rest) = word(text);
    word_commits(first, rest)
}

/// Whether a statement whose first word is `first`, followed by `rest`, commits.
fn word_commits(first: &[u8], rest: &[u8]) -> bool {
    if first.eq_ignore_ascii_case(b"commit") || first.eq_ignore_ascii_case(b"end") {
        return true;
    }
    if !first.eq_ignore_ascii_case(b"prepare") {
        return false;
    }
    skip_blanks(rest).is_none_or(|rest| word(rest).0.eq_ignore_ascii_case(b"transaction"))
}

/// The leading identifier-like word of `text` and what follows it.
pub(crate) fn word(text: &[u8]) -> (&[u8], &[u8]) {
    let len = text
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
        .unwrap_or(text.len());
    text.split_at(len)
}

/// `text` after leading whitespace and comments; None if a block comment does not end.
pub(crate) fn skip_blanks(mut text: &[u8]) -> Option<&[u8]> {
    loop {
        let start = text.iter().position(|b| !is_space(b)).unwrap_or(text.len());
        text = &text[start..];
        if text.starts_with(b"--") {
            // To the end of the line, or of the text.
            let end = text.iter().position(|&b| b == b'\n' || b == b'\r');
            text = end.map_or(&[][..], |e| &text[e + 1..]);
        } else if text.starts_with(b"/*") {
            text = &text[block_comment_len(text)?..];
        } else {
            return Some(text);
        }
    }
}

/// Length of the (nestable) block comment at the start of `text`, if it ends.
fn block_comment_len(text: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Calls `each` with every statement of `sql` (split at `;` outside quotes, identifiers,
/// dollar quotes and comments). Returns false if the text ends inside one of those.
pub(crate) fn for_each_statement(sql: &[u8], mut each: impl FnMut(&[u8])) -> bool {
    let mut start = 0;
    let mut i = 0;
    while i < sql.len() {
        let skip = match sql[i] {
            b';' => {
                each(&sql[start..i]);
                start = i + 1;
                Some(1)
            }
            b'\'' => string_len(sql, i),
            b'"' => quoted_len(&sql[i..], b'"', false),
            b'-' if sql[i..].starts_with(b"--") => Some(
                sql[i..]
                    .iter()
                    .position(|&b| b == b'\n' || b == b'\r')
                    .map_or(sql.len() - i, |n| n + 1),
            ),
            b'/' if sql[i..].starts_with(b"/*") => block_comment_len(&sql[i..]),
            b'$' => dollar_quote(sql, i).unwrap_or(Some(1)),
            _ => Some(1),
        };
        let Some(n) = skip else {
            return false;
        };
        i += n;
    }
    each(&sql[start..]);
    true
}

/// The string starting at `sql[at]`. In an `E'…'` string a backslash escapes; in a plain one
/// a backslash makes the text a doubt (`standard_conforming_strings` may be off, and an E
/// string continued on the next line keeps its escapes), answered None like an unterminated one.
fn string_len(sql: &[u8], at: usize) -> Option<usize> {
    let e_string = at > 0
        && sql[at - 1].eq_ignore_ascii_case(&b'e')
        && (at < 2 || !continues_identifier(sql[at - 2]));
    let len = quoted_len(&sql[at..], b'\'', e_string)?;
    if !e_string && sql[at..at + len].contains(&b'\\') {
        return None;
    }
    Some(len)
}

/// Length of the quoted text at the start of `text` (a doubled quote is a quote), if it ends.
fn quoted_len(text: &[u8], quote: u8, backslash: bool) -> Option<usize> {
    let mut i = 1;
    while i < text.len() {
        let b = text[i];
        if backslash && b == b'\\' {
            i += 2;
        } else if b == quote {
            if text.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return Some(i + 1);
            }
        } else {
            i += 1;
        }
    }
    None
}

/// The dollar-quoted string starting at `sql[at]` (`$tag$…$tag$`): None when `$` does not open
/// one here (a parameter `$1`, part of an identifier), Some(None) when it never closes, else
/// Some(its length).
fn dollar_quote(sql: &[u8], at: usize) -> Option<Option<usize>> {
    if at > 0 && continues_identifier(sql[at - 1]) {
        return None;
    }
    let rest = &sql[at + 1..];
    let tag_len = rest
        .iter()
        .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b >= 0x80))?;
    if rest[tag_len] != b'$' || rest.first().is_some_and(u8::is_ascii_digit) {
        return None;
    }
    let delim = &sql[at..at + tag_len + 2];
    let body = &sql[at + delim.len()..];
    let end = body.windows(delim.len()).position(|w| w == delim);
    Some(end.map(|e| delim.len() * 2 + e))
}

/// What the relay notes of a request's SQL text, in one pass.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mentions {
    /// It names search_path, in any letter case (`SET SEARCH_PATH ...`).
    pub search_path: bool,
    /// It has the word LISTEN or UNLISTEN, in any case: a LISTEN Switchyard does not follow
    /// (it may make its server connection hear notifications, and the client is told). A false
    /// yes only costs that connection (transaction mode).
    pub listen: bool,
}

/// A Query message's text: its body without the final NUL. (PostgreSQL refuses a Query with
/// a NUL before its end, so nothing after one ever runs; reading past it only adds doubt.)
pub fn query_text(body: &[u8]) -> &[u8] {
    body.strip_suffix(&[0]).unwrap_or(body)
}

/// A Parse message's SQL text: after the statement's name, up to its NUL (the parameter types
/// follow).
pub fn parse_text(body: &[u8]) -> &[u8] {
    let name = until_nul(body);
    until_nul(body.get(name.len() + 1..).unwrap_or_default())
}

/// What one pass over a request's SQL text finds (on the data path for every Query and Parse).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scanned {
    pub mentions: Mentions,
    /// Where the first `;` is, quoted or not (for [`Effect::of_text`]).
    pub first_semicolon: Option<usize>,
}

/// [`Scanned`] of `sql`: looks only around each `;`, `_`, `n` and `N` (search_path has an
/// underscore, LISTEN an n), found eight bytes at a time.
pub fn scan(sql: &[u8]) -> Scanned {
    let mut found = Scanned::default();
    let mut chunks = sql.chunks_exact(8);
    let mut base = 0;
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        for_each_candidate(word, |i| note_candidate(sql, base + i, &mut found));
        base += 8;
    }
    let mut last = [0u8; 8];
    last[..chunks.remainder().len()].copy_from_slice(chunks.remainder());
    // (Zero padding matches none of the bytes looked for.)
    for_each_candidate(u64::from_le_bytes(last), |i| {
        note_candidate(sql, base + i, &mut found)
    });
    found
}

/// Calls `each` with the index of every byte of `word` (little-endian) that is `;`, `_`, `n`
/// or `N`, in order. Hand-written (SWAR) because a vectorised search (memchr) costs more to
/// start than a whole short query takes this way, and most texts are short.
fn for_each_candidate(word: u64, mut each: impl FnMut(usize)) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    // Bit 7 of each byte set where that byte of `x` is zero (exact: no borrow between bytes).
    let zero_bytes = |x: u64| {
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
    };
    let splat = |b: u8| ONES * u64::from(b);
    let mut hits = zero_bytes(word ^ splat(b';'))
        | zero_bytes(word ^ splat(b'_'))
        // Folding case maps only `N` and `n` to `n`.
        | zero_bytes((word | splat(0x20)) ^ splat(b'n'));
    while hits != 0 {
        each((hits.trailing_zeros() / 8) as usize);
        hits &= hits - 1;
    }
}

/// Notes what the `;`, `_` or `n` at `sql[i]` may be part of.
fn note_candidate(sql: &[u8], i: usize, m: &mut Scanned) {
    match sql[i] {
        b';' => {
            m.first_semicolon.get_or_insert(i);
        }
        b'_' => {
            m.mentions.search_path |= i >= 6
                && sql[i - 6..i].eq_ignore_ascii_case(b"search")
                && sql
                    .get(i + 1..i + 5)
                    .is_some_and(|p| p.eq_ignore_ascii_case(b"path"));
        }
        // (The `l` first: most n's are not the end of a LISTEN.)
        b'n' | b'N' if i >= 5 && sql[i - 5] | 0x20 == b'l' => {
            let start = i - 5;
            // (UNLISTEN too: "un" before it is not an identifier's middle.)
            let start = match start.checked_sub(2) {
                Some(un) if sql[un..start].eq_ignore_ascii_case(b"un") => un,
                _ => start,
            };
            let before = start.checked_sub(1).map(|j| sql[j]);
            m.mentions.listen |= sql[i - 5..=i].eq_ignore_ascii_case(b"listen")
                && !before.is_some_and(continues_identifier)
                && !sql.get(i + 1).is_some_and(|&c| continues_identifier(c));
        }
        _ => {}
    }
}

/// True for the text of one statement that only starts a transaction. On the data path for
/// every simple query: the first word decides cheaply; only a `BEGIN`/`START` is looked at whole.
pub fn is_transaction_start(body: &[u8]) -> bool {
    let text = query_text(body);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let text = &text[start..];
    // The keyword by its five bytes, not followed by more of an identifier ("SELECT" is
    // told from "START" at its second letter).
    let keyword = |k: &[u8; 5]| {
        text.get(..5).is_some_and(|w| w.eq_ignore_ascii_case(k))
            && !text.get(5).is_some_and(|&c| continues_identifier(c))
    };
    let begin = keyword(b"begin");
    if !begin && !keyword(b"start") {
        return false;
    }
    let rest = &text[5..];
    let Ok(rest) = std::str::from_utf8(rest) else {
        return false;
    };
    let rest = rest.trim().trim_end_matches(';').trim_end();
    if rest.contains(';') || rest.contains("--") || rest.contains("/*") {
        return false;
    }
    begin
        || rest
            .split_ascii_whitespace()
            .next()
            .is_some_and(|w| w.eq_ignore_ascii_case("transaction"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may_commit(sql: &[u8]) -> bool {
        Effect::of(sql).commits()
    }

    #[test]
    fn commits_in_any_statement_after_any_comment() {
        for yes in [
            "COMMIT",
            "  commit;\0",
            "end",
            "END TRANSACTION",
            "commit and chain",
            "prepare transaction 'x'",
            "COMMIT PREPARED 'x'",
            "/* app=web */ COMMIT",
            "-- trailing\nCOMMIT",
            "/* nested /* deeper */ still */ commit",
            "UPDATE t SET x = 1; COMMIT",
            "UPDATE t SET x = 1; /* a;b */ COMMIT",
            "UPDATE t SET x = 1;\n-- c;d\ncommit;",
            "INSERT INTO t VALUES ('a;b'); END",
            "INSERT INTO t VALUES ($$;$$); COMMIT",
            "INSERT INTO t VALUES ($x$ $$; $x$); COMMIT",
            "INSERT INTO t VALUES (E'\\';'); COMMIT",
            "SELECT \"a;b\" FROM t; COMMIT",
            "BEGIN; INSERT INTO t VALUES (1); COMMIT",
            "UPDATE t SET x=1 -- bump\r; COMMIT\n",
            "-- app\rCOMMIT\n",
            "\x0bCOMMIT",
            "SELECT 1;\x0bCOMMIT",
            "SELECT E'a'\n'\\''; COMMIT; -- '",
            "SELECT 'x\\''; COMMIT; SELECT 'y\\''",
            "SELECT 1 AS a$$$; COMMIT; SELECT 1 AS b$$$",
            "SELECT $\u{e9}$ ' $\u{e9}$; COMMIT; -- '",
            "ROLLBACK; INSERT INTO t VALUES (1)",
            "abort; select 1",
        ] {
            assert!(may_commit(yes.as_bytes()), "{yes:?}");
        }
    }

    #[test]
    fn what_cannot_commit() {
        for no in [
            "select 1",
            "committed_rows",
            "select 1; select 2",
            "INSERT INTO t VALUES ('; COMMIT')",
            "INSERT INTO t VALUES ($$; COMMIT$$); SELECT 1",
            "SELECT 1 /* ; COMMIT */; SELECT 2",
            "SELECT $1; SELECT $2",
            "UPDATE t SET x = 1 -- ; commit\n; SELECT 1",
            "prepare p as select 1",
            "rollback",
            "rollback;",
            "rollback; -- done",
            "select 'it''s; commit'",
        ] {
            assert!(!may_commit(no.as_bytes()), "{no:?}");
        }
    }

    #[test]
    fn text_that_does_not_lex_counts_as_committing() {
        for odd in [
            "SELECT 'open; COMMIT",
            "SELECT 1; /* never closed",
            "SELECT $x$ open; commit",
            "/* never closed",
        ] {
            assert!(may_commit(odd.as_bytes()), "{odd:?}");
        }
    }

    #[test]
    fn first_statement_only() {
        assert!(first_statement_commits(b"COMMIT\0"));
        assert!(first_statement_commits(b"/* x */ end"));
        assert!(!first_statement_commits(b"select 1; commit"));
        assert!(!first_statement_commits(b"-- ping"));
        assert!(!first_statement_commits(b"/* open"));
    }

    /// The one-pass scan finds what a byte-by-byte look finds, wherever the bytes fall in its
    /// eight-byte words (and in the short tail).
    #[test]
    fn scan_agrees_with_a_byte_by_byte_look() {
        fn slow(sql: &[u8]) -> Scanned {
            let mut found = Scanned::default();
            for i in 0..sql.len() {
                note_candidate(sql, i, &mut found);
            }
            found
        }
        let texts: [&[u8]; 10] = [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            b"set search_path = a; LISTEN x",
            b"SET SEARCH_PATH TO public",
            b"unlisten *",
            b"select 'listen'; select listener",
            b"\xc3\xa9n;_n\xffN",
            b"relisten; x_listen",
            b"",
            b";",
            b"LISTEN",
        ];
        for text in texts {
            for pad in 0..9 {
                let mut padded = vec![b' '; pad];
                padded.extend_from_slice(text);
                assert_eq!(
                    scan(&padded),
                    slow(&padded),
                    "{:?}",
                    String::from_utf8_lossy(&padded)
                );
                assert_eq!(
                    scan(&padded).first_semicolon,
                    padded.iter().position(|&b| b == b';')
                );
            }
        }
        assert!(scan(b"  set search_path = x").mentions.search_path);
        assert!(scan(b"select 1;        LISTEN chan").mentions.listen);
        assert!(!scan(b"select relisten").mentions.listen);
    }

    /// With the first `;` known from the scan, a Query's effect is what [`Effect::of`] says.
    #[test]
    fn effect_of_a_scanned_text_is_effect_of() {
        for sql in [
            "COMMIT",
            "commit;",
            "commit ;  ",
            "select 1;;",
            "UPDATE t SET x = 1; COMMIT",
            "ROLLBACK; SELECT 1",
            "SELECT 'a;b'",
            "END",
            "",
        ] {
            let text = sql.as_bytes();
            let scanned = scan(text);
            assert_eq!(
                Effect::of_text(text, scanned.first_semicolon),
                Effect::of(text),
                "{sql}"
            );
        }
        assert_eq!(query_text(b"COMMIT\0"), b"COMMIT");
    }
}
