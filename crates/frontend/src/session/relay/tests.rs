//! Relay unit tests: message flows built by hand, no sockets.

use super::*;
use crate::statements::Statements;
use switchyard_proto::decode_frame;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    Frame::new(tag, Bytes::copy_from_slice(body))
        .to_bytes()
        .to_vec()
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    frame(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(stmt: &str) -> Vec<u8> {
    frame(b'B', format!("\0{stmt}\0\0\0\0\0\0\0").as_bytes())
}

fn tags(buf: &[u8]) -> String {
    let mut b = BytesMut::from(buf);
    let mut out = String::new();
    while let Some(f) = decode_frame(&mut b, 1 << 20).unwrap() {
        out.push(f.tag as char);
    }
    out
}

struct World {
    relay: Relay,
    st: Statements,
    params: ClientParams,
    server_params: BTreeMap<String, String>,
    prepared: Prepared,
    max_prepared: usize,
    passthrough: u32,
    held_fatal: Option<Frame>,
}

impl World {
    fn new(mode: PoolMode) -> Self {
        Self {
            relay: Relay::new(mode),
            st: Statements::default(),
            params: ClientParams::default(),
            server_params: BTreeMap::new(),
            prepared: Prepared::default(),
            max_prepared: 200,
            passthrough: 0,
            held_fatal: None,
        }
    }

    fn client(&mut self, msgs: &[Vec<u8>]) -> (ClientStep, String) {
        let input = msgs.concat();
        let mut out = BytesMut::new();
        let mut server = ServerSide {
            params: &mut self.server_params,
            prepared: &mut self.prepared,
            max_prepared: self.max_prepared,
            passthrough: &mut self.passthrough,
            built: None,
            held_fatal: &mut self.held_fatal,
        };
        let (step, fwd) = self
            .relay
            .client_to_server(&input, 1 << 20, &mut self.st, &mut server, &mut out)
            .unwrap();
        assert!(fwd.used <= input.len() && fwd.end <= fwd.used);
        (step, tags(fwd.bytes(&input, &out)))
    }

    fn server(&mut self, msgs: &[Vec<u8>]) -> String {
        tags(&self.server_bytes(&msgs.concat()).2)
    }

    /// Relays `input` from the server: whether a ReadyForQuery went by, the bytes used, and
    /// the bytes sent on.
    fn server_bytes(&mut self, input: &[u8]) -> (bool, usize, Vec<u8>) {
        let mut out = BytesMut::new();
        let mut server = ServerSide {
            params: &mut self.server_params,
            prepared: &mut self.prepared,
            max_prepared: self.max_prepared,
            passthrough: &mut self.passthrough,
            built: None,
            held_fatal: &mut self.held_fatal,
        };
        let (ready, fwd) = self
            .relay
            .server_to_client(input, &mut self.params, &mut server, &mut out)
            .unwrap();
        (ready, fwd.used, fwd.bytes(input, &out).to_vec())
    }
}

#[test]
fn prepared_statement_follows_the_client_to_a_new_server() {
    let mut w = World::new(PoolMode::Transaction);
    let (_, sent) = w.client(&[
        parse("s1", "select 1"),
        bind("s1"),
        frame(b'E', b"\0\0\0\0\0"),
        frame(b'S', b""),
    ]);
    assert_eq!(sent, "PBES");
    let got = w.server(&[
        frame(b'1', b""),
        frame(b'2', b""),
        frame(b'C', b"SELECT 1\0"),
        frame(b'Z', b"I"),
    ]);
    assert_eq!(got, "12CZ");
    assert!(w.relay.releases());

    // Next transaction on a fresh server connection: the statement is prepared there first.
    w.prepared.clear();
    w.relay = Relay::new(PoolMode::Transaction);
    let (_, sent) = w.client(&[bind("s1"), frame(b'E', b"\0\0\0\0\0"), frame(b'S', b"")]);
    assert_eq!(sent, "CPBES");
    let got = w.server(&[
        frame(b'3', b""),
        frame(b'1', b""),
        frame(b'2', b""),
        frame(b'C', b"SELECT 1\0"),
        frame(b'Z', b"I"),
    ]);
    assert_eq!(
        got, "2CZ",
        "injected CloseComplete and ParseComplete are hidden"
    );
    assert!(w.relay.releases());
}

#[test]
fn error_drops_expectations_until_sync() {
    let mut w = World::new(PoolMode::Transaction);
    w.client(&[parse("s1", "select 1"), bind("s1"), frame(b'S', b"")]);
    w.prepared.clear();
    w.relay = Relay::new(PoolMode::Transaction);
    let (_, sent) = w.client(&[bind("s1"), frame(b'S', b"")]);
    assert_eq!(sent, "CPBS");
    let got = w.server(&[
        frame(b'3', b""),
        frame(b'E', b"SERROR\0C42P01\0Mgone\0\0"),
        frame(b'Z', b"I"),
    ]);
    assert_eq!(got, "EZ");
    assert!(w.relay.releases());
}

#[test]
fn holds_the_server_inside_a_transaction_and_mid_pipeline() {
    let mut w = World::new(PoolMode::Transaction);
    w.client(&[frame(b'Q', b"begin\0")]);
    w.server(&[frame(b'C', b"BEGIN\0"), frame(b'Z', b"T")]);
    assert!(!w.relay.releases());
    w.client(&[frame(b'Q', b"commit\0"), parse("", "select 1")]);
    w.server(&[frame(b'C', b"COMMIT\0"), frame(b'Z', b"I")]);
    assert!(!w.relay.releases(), "a Parse without Sync keeps the server");
    assert_eq!(w.client(&[frame(b'X', b"")]).0, ClientStep::Terminate);
}

#[test]
fn session_mode_passes_names_through_and_tracks_parameters() {
    let mut w = World::new(PoolMode::Session);
    let (_, sent) = w.client(&[parse("s1", "select 1"), frame(b'S', b"")]);
    assert_eq!(sent, "PS");
    let got = w.server(&[
        frame(b'1', b""),
        frame(b'S', b"TimeZone\0UTC\0"),
        frame(b'Z', b"I"),
    ]);
    assert_eq!(got, "1SZ");
    assert_eq!(
        w.server_params.get("TimeZone").map(String::as_str),
        Some("UTC")
    );
    assert!(!w.relay.releases());
    assert!(w.relay.at_sync_point());
}

#[test]
fn reparse_of_a_statement_the_server_has_hides_the_injected_close() {
    let mut w = World::new(PoolMode::Transaction);
    w.client(&[parse("a", "select 1"), frame(b'S', b"")]);
    w.server(&[frame(b'1', b""), frame(b'Z', b"I")]);
    // A second client name for the same text on the same server connection.
    let (_, sent) = w.client(&[parse("b", "select 1"), frame(b'S', b"")]);
    assert_eq!(sent, "CPS");
    let got = w.server(&[frame(b'3', b""), frame(b'1', b""), frame(b'Z', b"I")]);
    assert_eq!(got, "1Z");
}

fn query(sql: &str) -> Vec<u8> {
    frame(b'Q', format!("{sql}\0").as_bytes())
}

/// A world in transaction mode inside a transaction (BEGIN answered).
fn in_transaction(mode: PoolMode) -> World {
    let mut w = World::new(mode);
    w.client(&[query("BEGIN")]);
    w.server(&[frame(b'C', b"BEGIN\0"), frame(b'Z', b"T")]);
    assert!(!w.relay.commit_in_flight());
    w
}

#[test]
fn a_commit_in_flight_is_seen_whatever_the_protocol() {
    let execute = frame(b'E', b"\0\0\0\0\0");
    let sync = frame(b'S', b"");
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("simple COMMIT", vec![query("COMMIT")]),
        ("a commented COMMIT", vec![query("/* app */ commit")]),
        (
            "UPDATE …; COMMIT",
            vec![query("UPDATE t SET x = 1; COMMIT")],
        ),
        (
            "extended, unnamed",
            vec![parse("", "COMMIT"), bind(""), execute.clone(), sync.clone()],
        ),
        (
            "extended, named, prepared in the same batch",
            vec![
                parse("c", "COMMIT"),
                bind("c"),
                execute.clone(),
                sync.clone(),
            ],
        ),
        (
            "a Bind of a statement the relay never saw",
            vec![bind("unknown"), execute.clone(), sync.clone()],
        ),
    ];
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        for (what, msgs) in &cases {
            let mut w = in_transaction(mode);
            w.client(msgs);
            assert!(w.relay.commit_in_flight(), "{mode:?}: {what}");
        }
    }
    // A named statement prepared in an earlier request, executed later.
    let mut w = in_transaction(PoolMode::Transaction);
    w.client(&[parse("c", "COMMIT"), sync.clone()]);
    w.server(&[frame(b'1', b""), frame(b'Z', b"T")]);
    assert!(!w.relay.commit_in_flight(), "a prepare commits nothing");
    w.client(&[bind("c"), execute.clone(), sync.clone()]);
    assert!(
        w.relay.commit_in_flight(),
        "the named COMMIT executed later"
    );
}

#[test]
fn statements_that_cannot_commit_leave_the_transaction_retryable() {
    let execute = frame(b'E', b"\0\0\0\0\0");
    let sync = frame(b'S', b"");
    let mut w = in_transaction(PoolMode::Transaction);
    w.client(&[query("INSERT INTO t VALUES ('; COMMIT')")]);
    assert!(!w.relay.commit_in_flight());
    w.server(&[frame(b'C', b"INSERT 0 1\0"), frame(b'Z', b"T")]);
    w.client(&[
        parse("ins", "INSERT INTO t VALUES (1)"),
        bind("ins"),
        execute,
        sync,
    ]);
    assert!(!w.relay.commit_in_flight());
    // Once everything sent is answered, an earlier commit is no longer in flight.
    let mut w = in_transaction(PoolMode::Session);
    w.client(&[query("COMMIT AND CHAIN")]);
    assert!(w.relay.commit_in_flight());
    w.server(&[frame(b'C', b"COMMIT\0"), frame(b'Z', b"T")]);
    assert!(!w.relay.commit_in_flight(), "answered");
}

#[test]
fn knows_which_batches_change_nothing() {
    let msg = |tag: u8, body: &[u8]| {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    };
    let query = |text: &str| msg(b'Q', format!("{text}\0").as_bytes());
    for yes in [
        "BEGIN",
        "begin;",
        "  BEGIN ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION READ ONLY",
        "Begin\n",
        "start\ttransaction",
    ] {
        assert!(changes_nothing(&query(yes)), "{yes}");
    }
    for no in [
        "BEGIN; INSERT INTO t VALUES (1)",
        "START",
        "select 1",
        "begin -- comment\n; drop table t",
        "beginning",
        "begin$x",
        "started transaction",
        "SELECT 1",
        "",
    ] {
        assert!(!changes_nothing(&query(no)), "{no}");
    }
    let mut two = query("BEGIN");
    two.extend(query("BEGIN"));
    assert!(!changes_nothing(&two), "two queries");
    assert!(!changes_nothing(b"Q\0\0"), "truncated");
    assert!(!changes_nothing(b""), "nothing");

    let parse = msg(b'P', b"s0\0select 1\0\0\0");
    let describe = msg(b'D', b"Ss0\0");
    let sync = msg(b'S', b"");
    let prepare = [parse.clone(), describe, sync.clone()].concat();
    assert!(changes_nothing(&prepare), "a driver's prepare");
    let bind = msg(b'B', b"\0s0\0\0\0\0\0\0\0");
    let execute = msg(b'E', b"\0\0\0\0\0");
    let run = [parse, bind, execute, sync].concat();
    assert!(!changes_nothing(&run), "an Execute may write");
}

#[test]
fn unchanged_traffic_goes_straight_from_the_input_and_rewrites_keep_the_order() {
    let mut w = World::new(PoolMode::Transaction);
    let mut out = BytesMut::new();
    let mut server = ServerSide {
        params: &mut w.server_params,
        prepared: &mut w.prepared,
        max_prepared: w.max_prepared,
        passthrough: &mut w.passthrough,
        built: None,
        held_fatal: &mut w.held_fatal,
    };
    // A simple query and its answer: nothing is copied.
    let query = frame(b'Q', b"select 1\0");
    let (_, fwd) = w
        .relay
        .client_to_server(&query, 1 << 20, &mut w.st, &mut server, &mut out)
        .unwrap();
    assert!(fwd.verbatim && fwd.used == query.len() && fwd.end == query.len());
    assert!(out.is_empty());
    let answer = [
        frame(b'T', b"\0\0"),
        frame(b'D', b"\0\0"),
        frame(b'C', b"SELECT 1\0"),
        frame(b'Z', b"I"),
    ]
    .concat();
    let (ready, fwd) = w
        .relay
        .server_to_client(&answer, &mut w.params, &mut server, &mut out)
        .unwrap();
    assert!(ready && fwd.verbatim && fwd.used == answer.len());
    assert!(out.is_empty());
    // A partial message stays for the next read.
    let partial = [frame(b'Z', b"I"), frame(b'C', b"SELECT 1\0")[..4].to_vec()].concat();
    w.relay
        .client_to_server(&query, 1 << 20, &mut w.st, &mut server, &mut out)
        .unwrap();
    let (_, fwd) = w
        .relay
        .server_to_client(&partial, &mut w.params, &mut server, &mut out)
        .unwrap();
    assert_eq!(fwd.used, 6, "one whole message");
    // A rewrite after plain frames: everything goes through `out`, in order.
    let batch = [
        frame(b'Q', b"select 2\0"),
        parse("s9", "select 9"),
        frame(b'S', b""),
    ];
    let (_, fwd) = w
        .relay
        .client_to_server(&batch.concat(), 1 << 20, &mut w.st, &mut server, &mut out)
        .unwrap();
    assert!(!fwd.verbatim);
    assert_eq!(tags(fwd.bytes(&batch.concat(), &out)), "QPS");
    // Terminate is consumed, never sent.
    let bye = [frame(b'Q', b"select 3\0"), frame(b'X', b"")].concat();
    let (step, fwd) = w
        .relay
        .client_to_server(&bye, 1 << 20, &mut w.st, &mut server, &mut BytesMut::new())
        .unwrap();
    assert_eq!(step, ClientStep::Terminate);
    assert_eq!((fwd.used, fwd.end), (bye.len(), bye.len() - 5));
}

#[test]
fn search_path_is_read_back_only_when_it_may_have_changed() {
    let names = |sql: &[u8]| crate::sql::scan(sql).mentions.search_path;
    assert!(names(b"SET search_path TO a"));
    assert!(names(b"set SEARCH_Path = a"));
    assert!(!names(b"select * from pgbench_accounts"));
    assert!(!names(b"_path search_ search"));
    let listens = |sql: &[u8]| crate::sql::scan(sql).mentions.listen;
    assert!(listens(b"BEGIN; LISTEN jobs"));
    assert!(listens(b"listen x"));
    assert!(listens(b"SELECT 1; UNLISTEN x"));
    for no in [
        &b"select listen_port"[..],
        b"relisten",
        b"SELECT 1",
        b"unlistening",
    ] {
        assert!(!listens(no), "{}", String::from_utf8_lossy(no));
    }
    let done = |w: &mut World, tag: &[u8]| {
        let mut body = tag.to_vec();
        body.push(0);
        w.server(&[frame(b'C', &body), frame(b'Z', b"I")]);
        std::mem::take(&mut w.relay.read_back_search_path)
    };
    let mut w = World::new(PoolMode::Transaction);
    w.client(&[frame(b'Q', b"SET LOCAL statement_timeout = 5\0")]);
    assert!(!done(&mut w, b"SET"), "a SET of something else");
    w.client(&[frame(b'Q', b"set search_path to a\0")]);
    assert!(done(&mut w, b"SET"));
    for tag in [&b"RESET"[..], b"DISCARD ALL"] {
        w.relay.reset();
        w.client(&[frame(b'Q', b"anything\0")]);
        assert!(done(&mut w, tag), "{tag:?}");
    }
    w.relay.reset();
    w.client(&[parse("", "SET search_path = b"), frame(b'S', b"")]);
    w.server(&[frame(b'1', b"")]);
    assert!(done(&mut w, b"SET"), "extended protocol");
}

#[test]
fn a_connection_keeps_at_most_max_prepared_statements_least_recently_used_out_first() {
    let mut w = World::new(PoolMode::Transaction);
    w.max_prepared = 2;
    let sync = frame(b'S', b"");
    for (name, sql) in [("a", "select 1"), ("b", "select 2")] {
        w.prepared.begin_attachment(); // each request its own transaction
        let (_, sent) = w.client(&[parse(name, sql), sync.clone()]);
        assert_eq!(sent, "PS", "{name}");
        w.server(&[frame(b'1', b""), frame(b'Z', b"I")]);
    }
    // `a` used again: `b` is now the least recently used.
    w.prepared.begin_attachment();
    let (_, sent) = w.client(&[bind("a"), sync.clone()]);
    assert_eq!(sent, "BS");
    w.server(&[frame(b'2', b""), frame(b'Z', b"I")]);
    w.prepared.begin_attachment();
    let (_, sent) = w.client(&[parse("c", "select 3"), sync.clone()]);
    assert_eq!(
        sent, "CPS",
        "b is closed on the server before c is prepared"
    );
    let got = w.server(&[frame(b'3', b""), frame(b'1', b""), frame(b'Z', b"I")]);
    assert_eq!(got, "1Z", "the injected CloseComplete is not the client's");
    assert_eq!(w.prepared.len(), 2);
    // The client's `b` still works: prepared again where it is missing.
    w.prepared.begin_attachment();
    let (_, sent) = w.client(&[bind("b"), sync]);
    assert!(
        sent.ends_with("PBS"),
        "b prepared again before its Bind: {sent}"
    );
}

#[test]
fn a_sync_sent_during_copy_in_expects_no_answer() {
    let mut w = World::new(PoolMode::Transaction);
    // As tokio-postgres and libpq do: Sync right after the Execute that starts COPY FROM STDIN.
    w.client(&[
        parse("", "copy t from stdin"),
        bind(""),
        frame(b'E', b"\0\0\0\0\0"),
        frame(b'S', b""),
    ]);
    w.server(&[frame(b'1', b""), frame(b'2', b""), frame(b'G', b"\0\0\0")]);
    w.client(&[frame(b'd', b"1\n"), frame(b'c', b""), frame(b'S', b"")]);
    // PostgreSQL ignores a Sync in copy-in mode: one ReadyForQuery for both.
    w.server(&[frame(b'C', b"COPY 1\0"), frame(b'Z', b"I")]);
    assert_eq!(w.relay.outstanding_requests(), 0, "no answer owed");
    assert!(w.relay.releases(), "the transaction is over");
}

#[test]
fn an_error_that_skips_a_parse_leaves_no_false_record() {
    let mut w = World::new(PoolMode::Transaction);
    // The client's Bind fails, so the server skips the Parse pipelined after it.
    w.client(&[
        bind("missing"),
        parse("later", "select 7"),
        frame(b'S', b""),
    ]);
    assert_eq!(w.prepared.len(), 1, "recorded as sent");
    let error = frame(b'E', b"SERROR\0C26000\0Mno such statement\0\0");
    w.server(&[error, frame(b'Z', b"I")]);
    assert!(
        w.prepared.is_empty(),
        "the skipped Parse is not taken for done"
    );
    // A Parse of a name the server may still have closes it first.
    let (_, sent) = w.client(&[parse("again", "select 8"), frame(b'S', b"")]);
    assert_eq!(sent, "CPS");
    let got = w.server(&[frame(b'3', b""), frame(b'1', b""), frame(b'Z', b"I")]);
    assert_eq!(got, "1Z", "the injected CloseComplete is hidden");
}

#[test]
fn a_large_row_goes_through_in_pieces_and_a_small_one_whole() {
    let mut w = World::new(PoolMode::Transaction);
    // A small partial row waits for the rest of it.
    let small = frame(b'D', &[b'x'; 1000]);
    assert_eq!(w.server_bytes(&small[..500]), (false, 0, vec![]));
    // A large one: what has come goes on now, and the rest as it comes.
    let large = frame(b'D', &vec![b'y'; 300_000]);
    let (head, rest) = large.split_at(100_000);
    assert_eq!(w.server_bytes(head), (false, head.len(), head.to_vec()));
    assert_eq!(w.passthrough as usize, rest.len());
    let (middle, end) = rest.split_at(150_000);
    assert_eq!(
        w.server_bytes(middle),
        (false, middle.len(), middle.to_vec())
    );
    // The end of it, then whole messages again.
    let input = [end, &small, &frame(b'Z', b"I")].concat();
    assert_eq!(w.server_bytes(&input), (true, input.len(), input.clone()));
    assert_eq!(w.passthrough, 0);
}

#[test]
fn only_messages_naming_a_statement_are_rewritten() {
    let n = names_a_statement;
    assert!(!n(b'P', b"\0select 1\0\0\0"));
    assert!(n(b'P', b"s1\0select 1\0\0\0"));
    assert!(!n(b'B', b"\0\0\0\0\0\0\0\0"));
    assert!(!n(b'B', b"portal\0\0\0\0\0\0\0\0"));
    assert!(n(b'B', b"\0s1\0\0\0\0\0\0\0"));
    for tag in [b'D', b'C'] {
        assert!(!n(tag, b"S\0"), "the unnamed statement");
        assert!(!n(tag, b"P\0") && !n(tag, b"Pcursor\0"), "portals");
        assert!(n(tag, b"Ss1\0"));
        // Malformed: left to the decoder, which refuses them.
        assert!(n(tag, b"P") && n(tag, b"X\0") && n(tag, b""));
    }
    assert!(n(b'P', b"") && n(b'B', b"\0"), "malformed Parse and Bind");
}
