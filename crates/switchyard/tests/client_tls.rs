//! TLS from clients (issue 11), with a real libpq (18, bundled with psycopg 3): an SSLRequest
//! is answered `S` when a certificate is configured, PostgreSQL 17's direct TLS works, each
//! `client_tls` mode admits and refuses what it names, client certificates are checked (and can
//! be the only credential: `auth = "cert"`), and a renewed certificate file is picked up
//! without a signal and without dropping the clients already connected.

mod common;
#[path = "clients/json.rs"]
mod json;
#[path = "clients/programs.rs"]
#[allow(dead_code)]
mod programs;

use common::served::Served;
use common::*;
use json::Json;
use programs::run_python;
use std::path::Path;
use std::time::Duration;
use switchyard_config::{ClientTls, Config, PoolMode, UserConfig};
use switchyard_localpg::TestCerts;

const SCRIPT_LIMIT: Duration = Duration::from_secs(60);

/// A config in front of `pg` offering TLS with `certs`' server certificate in `mode`, with a
/// user `cert_user` who logs in by certificate alone (as `postgres` on the server).
fn tls_config(pg: &switchyard_localpg::PgServer, certs: &TestCerts, mode: ClientTls) -> Config {
    let mut config = config_for(pg, PoolMode::Transaction);
    config.proxy.tls_cert_file = certs.cert.display().to_string();
    config.proxy.tls_key_file = certs.key.display().to_string();
    config.proxy.client_tls = mode;
    config.proxy.client_tls_ca_file = certs.ca.display().to_string();
    if matches!(mode, ClientTls::VerifyCa | ClientTls::VerifyFull) {
        config.users.push(UserConfig {
            name: "cert_user".into(),
            auth: switchyard_config::AuthMethod::Cert,
            password: None,
            server_password: None,
            server_user: Some("postgres".into()),
        });
    }
    config
}

/// Runs the cases (name → libpq connection string, to which the address is added).
async fn attempt(port: u16, cases: &[(&str, String)]) -> Json {
    let map: serde_json::Map<String, serde_json::Value> = cases
        .iter()
        .map(|(name, extra)| {
            let conninfo = format!("host=127.0.0.1 port={port} dbname=app {extra}");
            (name.to_string(), serde_json::Value::String(conninfo))
        })
        .collect();
    let arg = serde_json::Value::Object(map).to_string();
    run_python("psycopg_tls.py", &[&arg], SCRIPT_LIMIT).await
}

fn verified(ca: &Path) -> String {
    format!("sslmode=verify-full sslrootcert={}", ca.display())
}

fn assert_tls(r: &Json, case: &str) {
    let c = r.get(case);
    assert!(c.get("ok").as_bool(), "{case}: {r}");
    assert!(c.get("tls").as_bool(), "{case} is TLS: {r}");
}

/// The case was refused with `text` in the message (libpq reports no SQLSTATE for an error
/// during connection setup; the FATAL's text is in the message).
fn assert_refused(r: &Json, case: &str, text: &str) {
    let c = r.get(case);
    assert!(!c.get("ok").as_bool(), "{case} must be refused: {r}");
    assert!(c.get("message").as_str().contains(text), "{case}: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_offers_tls_direct_tls_too_and_still_admits_plain_text() {
    let certs = TestCerts::generate(&["127.0.0.1", "localhost"]).expect("certificates");
    let other = TestCerts::generate(&["127.0.0.1"]).expect("another CA");
    let pg = start_pg();
    let config = tls_config(&pg, &certs, ClientTls::Prefer);
    let h = Harness::from_parts(pg, config).await;
    let r = attempt(
        h.port(),
        &[
            ("plain", "user=postgres sslmode=disable".into()),
            ("verified", format!("user=postgres {}", verified(&certs.ca))),
            (
                "direct",
                format!(
                    "user=postgres sslnegotiation=direct {}",
                    verified(&certs.ca)
                ),
            ),
            (
                "scram_over_tls",
                format!(
                    "user={SCRAM_USER} password={SCRAM_PASSWORD} {}",
                    verified(&certs.ca)
                ),
            ),
            ("other_ca", format!("user=postgres {}", verified(&other.ca))),
        ],
    )
    .await;
    assert!(r.get("plain").get("ok").as_bool(), "{r}");
    assert!(!r.get("plain").get("tls").as_bool(), "{r}");
    assert_tls(&r, "verified");
    assert_tls(&r, "direct");
    assert_tls(&r, "scram_over_tls");
    assert_eq!(
        r.get("scram_over_tls").get("current_user").as_str(),
        SCRAM_USER
    );
    assert_refused(&r, "other_ca", "SSL error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_plain_text_login() {
    let certs = TestCerts::generate(&["127.0.0.1"]).expect("certificates");
    let pg = start_pg();
    let config = tls_config(&pg, &certs, ClientTls::Require);
    let h = Harness::from_parts(pg, config).await;
    let r = attempt(
        h.port(),
        &[
            ("plain", "user=postgres sslmode=disable".into()),
            ("tls", "user=postgres sslmode=require".into()),
        ],
    )
    .await;
    assert_refused(&r, "plain", "TLS is required");
    assert_tls(&r, "tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_wants_a_certificate_naming_the_user_and_cert_auth_needs_nothing_else() {
    let certs = TestCerts::generate(&["127.0.0.1"]).expect("certificates");
    let (pg_cert, pg_key) = certs.client("postgres").expect("client certificate");
    let (cu_cert, cu_key) = certs.client("cert_user").expect("client certificate");
    let stranger = TestCerts::generate(&["127.0.0.1"]).expect("another CA");
    let (st_cert, st_key) = stranger.client("postgres").expect("untrusted certificate");
    let with = |user: &str, cert: &Path, key: &Path| {
        format!(
            "user={user} sslcert={} sslkey={} {}",
            cert.display(),
            key.display(),
            verified(&certs.ca)
        )
    };
    let pg = start_pg();
    let config = tls_config(&pg, &certs, ClientTls::VerifyFull);
    let h = Harness::from_parts(pg, config).await;
    let r = attempt(
        h.port(),
        &[
            (
                "no_certificate",
                format!("user=postgres {}", verified(&certs.ca)),
            ),
            ("postgres", with("postgres", &pg_cert, &pg_key)),
            ("cert_user", with("cert_user", &cu_cert, &cu_key)),
            ("someone_elses", with("cert_user", &pg_cert, &pg_key)),
            ("untrusted_ca", with("postgres", &st_cert, &st_key)),
        ],
    )
    .await;
    assert_refused(&r, "no_certificate", "certificate");
    assert_tls(&r, "postgres");
    assert_eq!(r.get("postgres").get("current_user").as_str(), "postgres");
    assert_tls(&r, "cert_user");
    assert_refused(
        &r,
        "someone_elses",
        "certificate authentication failed for user \"cert_user\"",
    );
    assert_refused(&r, "untrusted_ca", "SSL error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_a_renewed_certificate_without_dropping_clients() {
    let first = TestCerts::generate(&["127.0.0.1"]).expect("certificates");
    let renewed = TestCerts::generate(&["127.0.0.1"]).expect("renewed certificates");
    let pg = start_pg();
    let files = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (
        files.path().join("proxy.crt"),
        files.path().join("proxy.key"),
    );
    let install = |from: &TestCerts| {
        std::fs::copy(&from.cert, &cert).expect("copy certificate");
        std::fs::copy(&from.key, &key).expect("copy key");
    };
    install(&first);
    let mut config = config_for(&pg, PoolMode::Transaction);
    config.proxy.tls_cert_file = cert.display().to_string();
    config.proxy.tls_key_file = key.display().to_string();
    let served = Served::start(config.clone()).await;
    let connected = connect(&format!(
        "host=127.0.0.1 port={} user=postgres dbname=app",
        served.port
    ))
    .await
    .expect("a client before the renewal");
    let before = attempt(
        served.port,
        &[("first", format!("user=postgres {}", verified(&first.ca)))],
    )
    .await;
    assert_tls(&before, "first");
    // The files change, the config does not: the change alone is noticed.
    install(&renewed);
    served.wait_log("config reloaded", 1, STEP).await;
    let after = attempt(
        served.port,
        &[
            (
                "renewed",
                format!("user=postgres {}", verified(&renewed.ca)),
            ),
            ("old_ca", format!("user=postgres {}", verified(&first.ca))),
        ],
    )
    .await;
    assert_tls(&after, "renewed");
    assert_refused(&after, "old_ca", "SSL error");
    assert_eq!(
        first_column(&connected, "select 1").await,
        "1",
        "the client connected before the reload is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_file_is_a_config_error_naming_it() {
    let certs = TestCerts::generate(&["127.0.0.1"]).expect("certificates");
    let pg = start_pg();
    let mut config = tls_config(&pg, &certs, ClientTls::Prefer);
    config.proxy.tls_key_file = "/nonexistent/switchyard.key".into();
    let e = switchyard::serve::start(config)
        .await
        .err()
        .expect("refused");
    assert!(
        format!("{e:#}").contains("/nonexistent/switchyard.key"),
        "{e:#}"
    );
}
