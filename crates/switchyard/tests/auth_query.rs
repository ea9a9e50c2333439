//! Users whose password is only in the database (`auth_user` + `auth_query`): they log in with
//! SCRAM (or md5) against the verifier PostgreSQL stores, Switchyard's server logins reuse the
//! keys the client proved (no password anywhere in the config), and a wrong password cannot be
//! told apart from an unknown user.

mod common;

use common::*;
use std::time::{Duration, Instant};
use switchyard_config::PoolMode;
use switchyard_localpg::PasswordKind;
use switchyard_proto::scram::ClientExchange;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DB_USER: &str = "db_only";
const DB_PASSWORD: &str = "only-in-the-database";

/// A proxy with `auth_user = "postgres"` (trust on the fixture) and a role that is not in its
/// config; the server asks that role for its password (md5 rule, SCRAM verifier → SCRAM).
async fn harness(ttl_s: u64) -> Harness {
    let pg = start_pg();
    pg.create_user(DB_USER, DB_PASSWORD, PasswordKind::Scram)
        .expect("role with its password only in the database");
    pg.create_user("db_md5", "md5-only", PasswordKind::Md5)
        .expect("md5 role");
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.proxy.auth_user = "postgres".into();
    config.proxy.auth_cache_ttl = switchyard_config::Duration::secs(ttl_s);
    // The md5 role's server login answers md5 (allowed explicitly, as an operator would).
    config.server.require_auth = vec![
        switchyard_config::ServerAuthMethod::ScramSha256,
        switchyard_config::ServerAuthMethod::Md5,
        switchyard_config::ServerAuthMethod::None,
    ];
    assert!(config.users.iter().all(|u| u.name != DB_USER));
    Harness::from_parts(pg, config).await
}

fn conninfo(h: &Harness, user: &str, password: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user='{user}' password='{password}' dbname=app",
        h.port()
    )
}

async fn whoami(h: &Harness, user: &str, password: &str) -> Result<String, tokio_postgres::Error> {
    let c = connect(&conninfo(h, user, password)).await?;
    let row = within(
        STEP,
        "current_user",
        c.query_one("select current_user::text", &[]),
    )
    .await?;
    Ok(row.get(0))
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| format!("{} {}", d.code().code(), d.message()))
        .unwrap_or_else(|| format!("not a server error: {e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_whose_password_is_only_in_the_database_logs_in_with_scram() {
    let h = harness(10).await;
    // The first login looks the verifier up; the transaction after it needs a server login as
    // the user, which only the keys the client proved can make.
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    let c = connect(&conninfo(&h, DB_USER, DB_PASSWORD)).await.unwrap();
    for _ in 0..3 {
        let n: i64 = within(
            STEP,
            "query",
            c.query_one("select count(*) from pg_class", &[]),
        )
        .await
        .unwrap()
        .get(0);
        assert!(n > 0);
    }
    // A reload keeps the pools of users it does not list (their logins proved them).
    let has_pool = || {
        h.proxy
            .proxy
            .pools
            .all()
            .iter()
            .any(|(k, _)| k.user == DB_USER)
    };
    assert!(has_pool());
    let config = h.proxy.proxy.live.load().config.clone();
    h.proxy.proxy.reload(config).expect("reload");
    assert!(has_pool(), "the reload dropped the auth_query user's pool");
    // Wrong password and unknown user: the same FATAL, in the same words.
    for (user, password) in [(DB_USER, "wrong"), ("nobody_at_all", "wrong")] {
        let e = whoami(&h, user, password).await.expect_err("refused");
        assert_eq!(
            code(&e),
            format!("28P01 switchyard: password authentication failed for user \"{user}\""),
        );
        assert_eq!(e.as_db_error().unwrap().severity(), "FATAL");
    }
    // The right password still works after a failure (which forgot the cached verifier).
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    // A role stored as md5: md5 to the client, and the server login answers from the hash.
    assert_eq!(whoami(&h, "db_md5", "md5-only").await.unwrap(), "db_md5");
    assert!(whoami(&h, "db_md5", "wrong").await.is_err());
    // Configured users are untouched.
    assert_eq!(
        whoami(&h, SCRAM_USER, SCRAM_PASSWORD).await.unwrap(),
        SCRAM_USER
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_in_the_database_takes_effect() {
    // ttl 0: every login asks the database.
    let h = harness(0).await;
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    h.pg.psql(&format!("ALTER ROLE {DB_USER} PASSWORD 'changed-pw'"))
        .expect("change the password");
    let e = whoami(&h, DB_USER, DB_PASSWORD)
        .await
        .expect_err("old password refused");
    assert!(code(&e).starts_with("28P01"), "{}", code(&e));
    assert_eq!(whoami(&h, DB_USER, "changed-pw").await.unwrap(), DB_USER);
    // New server logins prove the new keys (the pool's idle connections were made with the
    // old ones; a new one is needed for a second concurrent client).
    let a = connect(&conninfo(&h, DB_USER, "changed-pw")).await.unwrap();
    let b = connect(&conninfo(&h, DB_USER, "changed-pw")).await.unwrap();
    // `a` holds a server connection in its transaction; `b` needs one more.
    within(STEP, "begin", a.batch_execute("begin; select 1"))
        .await
        .unwrap();
    let n: i32 = within(STEP, "second client", b.query_one("select 1", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    within(STEP, "commit", a.batch_execute("commit"))
        .await
        .unwrap();
}

/// What a client sees of one failed SCRAM login, spoken by hand: the salt and iteration count
/// offered, whether the refusal came only after the proof, and how long it took.
struct Refusal {
    iterations: String,
    refused_after_proof: bool,
    took: Duration,
}

async fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    within(STEP, "message", s.read_exact(&mut head))
        .await
        .unwrap();
    let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
    let mut body = vec![0u8; len];
    within(STEP, "body", s.read_exact(&mut body)).await.unwrap();
    (head[0], body)
}

fn password_message(body: &[u8]) -> Vec<u8> {
    let mut m = vec![b'p'];
    m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

async fn refuse(h: &Harness, user: &str) -> Refusal {
    let started = Instant::now();
    let mut s = TcpStream::connect(h.addr()).await.unwrap();
    s.write_all(&startup_packet(user, &[])).await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &10i32.to_be_bytes()[..]),
        "AuthenticationSASL"
    );
    let (mut exchange, first) = ClientExchange::start("not-the-password");
    let mut initial = b"SCRAM-SHA-256\0".to_vec();
    initial.extend_from_slice(&(first.len() as i32).to_be_bytes());
    initial.extend_from_slice(first.as_bytes());
    s.write_all(&password_message(&initial)).await.unwrap();
    let (tag, body) = read_message(&mut s).await;
    if tag != b'R' {
        return Refusal {
            iterations: String::new(),
            refused_after_proof: false,
            took: started.elapsed(),
        };
    }
    let server_first = String::from_utf8(body[4..].to_vec()).unwrap();
    let iterations = server_first
        .split(',')
        .find_map(|a| a.strip_prefix("i="))
        .unwrap_or_default()
        .to_string();
    let fin = exchange.respond(server_first.as_bytes()).unwrap();
    s.write_all(&password_message(fin.as_bytes()))
        .await
        .unwrap();
    let (tag, body) = read_message(&mut s).await;
    let text = String::from_utf8_lossy(&body).to_string();
    assert_eq!(tag, b'E', "{text}");
    assert!(text.contains("28P01"), "{text}");
    Refusal {
        iterations,
        refused_after_proof: true,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_looks_like_an_unknown_user() {
    let h = harness(10).await;
    // Warm up: the pools of auth_user exist before timing.
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    let (mut wrong, mut unknown) = (Vec::new(), Vec::new());
    for round in 0..5 {
        let a = refuse(&h, DB_USER).await;
        let b = refuse(&h, &format!("ghost_{round}")).await;
        for r in [&a, &b] {
            assert!(
                r.refused_after_proof,
                "the refusal comes only after the proof"
            );
            assert_eq!(
                r.iterations, "4096",
                "the same iteration count as a real verifier"
            );
        }
        wrong.push(a.took);
        unknown.push(b.took);
    }
    wrong.sort();
    unknown.sort();
    let (w, u) = (wrong[2], unknown[2]);
    eprintln!("median refusal: wrong password {w:?}, unknown user {u:?}");
    // Both look the user up and run one exchange: the same order of time. (Slack for a busy
    // machine: a different shape, such as a lookup skipped for one of them, is still caught
    // only as a protocol difference above; here the bound is against gross differences.)
    let (fast, slow) = (w.min(u), w.max(u));
    assert!(
        slow <= fast * 4 + Duration::from_millis(30),
        "wrong password {w:?} vs unknown user {u:?}"
    );
}

/// The README's set-up: a lookup role without superuser rights, through a SECURITY DEFINER
/// function in the client's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_role_without_superuser_rights_works_through_a_function() {
    let pg = start_pg();
    pg.create_user(DB_USER, DB_PASSWORD, PasswordKind::Scram)
        .unwrap();
    pg.create_user("switchyard_auth", "lookup-pw", PasswordKind::Scram)
        .unwrap();
    pg.psql_db(
        "app",
        "CREATE FUNCTION public.user_lookup(i_username text, OUT uname text, OUT phash text) \
         RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS \
         $$ SELECT usename::text, passwd::text FROM pg_shadow WHERE usename = i_username $$; \
         REVOKE ALL ON FUNCTION public.user_lookup(text) FROM public; \
         GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO switchyard_auth;",
    )
    .expect("lookup function");
    let mut config = config_for(&pg, PoolMode::Transaction);
    let lookup: switchyard_config::UserConfig = toml::from_str(
        "name = \"switchyard_auth\"\nauth = \"scram-sha-256\"\npassword = \"lookup-pw\"\n",
    )
    .unwrap();
    config.users.push(lookup);
    config.proxy.auth_user = "switchyard_auth".into();
    config.proxy.auth_query = "SELECT uname, phash FROM public.user_lookup($1)".into();
    let h = Harness::from_parts(pg, config).await;
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    let e = whoami(&h, DB_USER, "wrong").await.expect_err("refused");
    assert!(code(&e).starts_with("28P01"), "{}", code(&e));
}

/// Without a primary the database cannot be asked: a user who logged in before still can (the
/// verifier looked up then stands in), a user never seen cannot, and neither waits long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_users_log_in_while_the_database_cannot_be_asked() {
    let h = harness(0).await;
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    h.pg.kill().expect("crash the only server");
    let started = Instant::now();
    let c = within(
        Duration::from_secs(10),
        "login without a database",
        connect(&conninfo(&h, DB_USER, DB_PASSWORD)),
    )
    .await
    .expect("a known user logs in on the verifier looked up before");
    let unseen = within(
        Duration::from_secs(20),
        "login of an unseen user",
        connect(&conninfo(&h, "db_md5", "md5-only")),
    )
    .await
    .expect_err("nothing to check an unseen user against");
    let unseen = code(&unseen);
    assert!(unseen.starts_with("57P03"), "{unseen}");
    assert!(unseen.contains("auth_query"), "{unseen}");
    eprintln!(
        "logins without a database answered in {:?}",
        started.elapsed()
    );
    h.pg.start_again().expect("restart");
    let row = within(Duration::from_secs(15), "query after the restart", async {
        loop {
            match c.query_one("select current_user::text", &[]).await {
                Ok(r) => return r,
                Err(e) if c.is_closed() => panic!("session lost: {e:?}"),
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await;
    assert_eq!(row.get::<_, String>(0), DB_USER);
}

/// A user the database no longer has a verifier for loses the cached one too: it cannot stand
/// in later, when the database cannot be asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_found_missing_keeps_no_old_verifier() {
    let h = harness(0).await;
    assert_eq!(whoami(&h, DB_USER, DB_PASSWORD).await.unwrap(), DB_USER);
    h.pg.psql(&format!("ALTER ROLE {DB_USER} PASSWORD NULL"))
        .unwrap();
    let e = whoami(&h, DB_USER, DB_PASSWORD).await.expect_err("refused");
    assert!(code(&e).starts_with("28P01"), "{}", code(&e));
    h.pg.kill().expect("crash the only server");
    let e = within(
        Duration::from_secs(20),
        "login without a database",
        connect(&conninfo(&h, DB_USER, DB_PASSWORD)),
    )
    .await
    .expect_err("no verifier left to stand in");
    assert!(code(&e).starts_with("57P03"), "{}", code(&e));
}
