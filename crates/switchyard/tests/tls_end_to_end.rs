//! TLS end to end with the clients people use (issue 11): a PostgreSQL that accepts TCP
//! connections only over TLS (`hostssl`), its certificate from a CA the test made, Switchyard
//! checking it (`verify-full`) and requiring TLS from its own clients; psql and pgbench
//! (libpq 15) and psycopg (libpq 18, also with `sslnegotiation=direct`) connect with
//! `sslmode=verify-full` and work.

mod common;
#[path = "clients/json.rs"]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::*;
use programs::{pg_program, run, run_python};
use std::sync::Arc;
use std::time::Duration;
use switchyard_config::{ClientTls, PoolMode, ServerTls};
use switchyard_localpg::{PgOptions, PgServer, TestCerts};

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_pgbench_and_psycopg_reach_a_tls_only_server_with_verify_full() {
    let certs = Arc::new(TestCerts::generate(&["127.0.0.1", "localhost"]).expect("certificates"));
    let pg = PgServer::start_with(PgOptions {
        tls: Some(certs.clone()),
        tls_only: true,
        ..PgOptions::default()
    })
    .expect("PostgreSQL requiring TLS");
    pg.create_database("app", "postgres").expect("app database");
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.server.tls = ServerTls::VerifyFull;
    config.server.tls_ca_file = certs.ca.display().to_string();
    config.proxy.tls_cert_file = certs.cert.display().to_string();
    config.proxy.tls_key_file = certs.key.display().to_string();
    config.proxy.client_tls = ClientTls::Require;
    let h = Harness::from_parts(pg, config).await;
    let verified = |port: u16| {
        format!(
            "host=127.0.0.1 port={port} dbname=app user=postgres sslmode=verify-full sslrootcert={}",
            certs.ca.display()
        )
    };

    // PostgreSQL itself refuses plain text: the TLS below is not optional anywhere.
    let mut plain = pg_program("psql");
    plain.args([
        "-X",
        "-c",
        "select 1",
        &format!(
            "host=127.0.0.1 port={} dbname=app user=postgres sslmode=disable",
            h.pg.port()
        ),
    ]);
    let ran = run(plain, None, LIMIT, "plain psql to PostgreSQL").await;
    assert!(!ran.status.success(), "{}", ran.stdout);
    assert!(ran.stderr.contains("no encryption"), "{}", ran.stderr);

    let mut psql = pg_program("psql");
    psql.args([
        "-X",
        "-A",
        "-t",
        "-c",
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
        &verified(h.port()),
    ]);
    let ran = run(psql, None, LIMIT, "psql through Switchyard")
        .await
        .expect_success("psql");
    assert_eq!(ran.stdout.trim(), "t", "the server connection is TLS too");

    let mut init = pg_program("pgbench");
    init.args(["-i", "-q", "-s", "1", &verified(h.port())]);
    run(init, None, LIMIT, "pgbench -i")
        .await
        .expect_success("pgbench -i");
    let mut bench = pg_program("pgbench");
    bench.args([
        "-n",
        "-S",
        "-c",
        "4",
        "-j",
        "2",
        "-t",
        "200",
        &verified(h.port()),
    ]);
    let ran = run(bench, None, LIMIT, "pgbench -S")
        .await
        .expect_success("pgbench");
    assert!(
        ran.stdout
            .contains("number of transactions actually processed: 800/800"),
        "{}",
        ran.stdout
    );

    let cases = serde_json::json!({
        "verified": verified(h.port()),
        "direct": format!("{} sslnegotiation=direct", verified(h.port())),
    });
    let r = run_python("psycopg_tls.py", &[&cases.to_string()], LIMIT).await;
    for case in ["verified", "direct"] {
        assert!(r.get(case).get("ok").as_bool(), "{case}: {r}");
        assert!(r.get(case).get("tls").as_bool(), "{case}: {r}");
    }
}
