//! TLS to servers through the whole proxy (issue 11): with `[server] tls = "verify-full"` every
//! connection Switchyard makes to PostgreSQL — pooled ones and the probes — is encrypted, as
//! PostgreSQL itself reports (`pg_stat_ssl`); a CA file that cannot be read stops a start and
//! is refused on reload, with its path named, while the running config goes on.

mod common;

use common::served::{Served, to_toml};
use common::*;
use std::sync::Arc;
use switchyard_config::{PoolMode, ServerTls};
use switchyard_localpg::{PgOptions, PgServer, TestCerts};

fn tls_pg(certs: &Arc<TestCerts>) -> PgServer {
    let pg = PgServer::start_with(PgOptions {
        tls: Some(certs.clone()),
        ..PgOptions::default()
    })
    .expect("PostgreSQL with TLS");
    pg.create_database("app", "postgres").expect("app database");
    pg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_connection_is_encrypted_and_checked() {
    let certs = Arc::new(TestCerts::generate(&["127.0.0.1"]).expect("certificates"));
    let pg = tls_pg(&certs);
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.server.tls = ServerTls::VerifyFull;
    config.server.tls_ca_file = certs.ca.display().to_string();
    let h = Harness::from_parts(pg, config).await;
    let c = h.client().await;
    let ssl = first_column(
        &c,
        "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .await;
    assert_eq!(ssl, "t", "the pooled connection is TLS");
    let version = first_column(
        &c,
        "select version from pg_stat_ssl where pid = pg_backend_pid()",
    )
    .await;
    assert!(version.starts_with("TLSv1."), "{version}");
    // Every TCP connection PostgreSQL has (the pooled one and the probe's) is TLS; psql's own,
    // over the unix socket, is not counted.
    let all =
        h.pg.psql(
            "select count(*) || ' ' || count(*) filter (where s.ssl) from pg_stat_ssl s \
             join pg_stat_activity a using (pid) where a.client_addr is not null",
        )
        .expect("psql");
    let (tcp, tls) = all.split_once(' ').expect("two counts");
    assert!(tcp.parse::<u32>().unwrap() >= 2, "pooled and probe: {all}");
    assert_eq!(tcp, tls, "every TCP connection is TLS: {all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_ca_file_stops_a_start_and_is_refused_on_reload() {
    let pg = start_pg();
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.server.tls = ServerTls::VerifyFull;
    config.server.tls_ca_file = "/nonexistent/switchyard-ca.pem".into();
    let e = switchyard::serve::start(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains("/nonexistent/switchyard-ca.pem"),
        "{e:#}"
    );
    // A running proxy keeps its config when a reload names a missing CA file.
    config.server.tls = ServerTls::Prefer;
    config.server.tls_ca_file = String::new();
    let served = Served::start(config.clone()).await;
    config.server.tls = ServerTls::VerifyFull;
    config.server.tls_ca_file = "/nonexistent/switchyard-ca.pem".into();
    config.proxy.listen = format!("127.0.0.1:{}", served.port);
    served.rewrite(&to_toml(&config), false);
    served.signal("HUP").await;
    served
        .wait_log("/nonexistent/switchyard-ca.pem", 1, STEP)
        .await;
    assert!(
        served.log().contains("config reload refused"),
        "{}",
        served.log()
    );
    let c = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        served.port
    ))
    .await
    .expect("still serving");
    assert_eq!(first_column(&c, "select 1").await, "1");
}
