//! The HTTP listener (axum routes on hyper connections): `/livez`, `/readyz`, `/metrics`,
//! `/api/clusters`, `/api/incidents`, `/api/events` and the status page `/`. With `admin.token`
//! set, everything but `/livez` and `/readyz` needs `Authorization: Bearer TOKEN`.
//!
//! Every connection has deadlines: its request headers must arrive within
//! [`HEADER_READ_TIMEOUT`], and it is closed after [`CONNECTION_LIFETIME`] whatever it does, so
//! a slow or silent client cannot hold one open. (Hence hyper's connection builder here rather
//! than `axum::serve`, which has no such settings.)

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use serde::Deserialize;
use switchyard_topology::counters::unix_ms;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::state::AdminState;
use crate::{metrics, page, snapshot};

type Shared = Arc<AdminState>;

/// Longest a client may take to send a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest one connection (keep-alive included) stays open.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Most HTTP connections open at once; more are closed at once (the listener serves operators
/// and a scraper or two, and must not become a way to exhaust the process's file descriptors).
pub const MAX_CONNECTIONS: usize = 64;

/// Serves on `listener` until `stop`.
pub async fn serve(listener: TcpListener, state: Shared, stop: CancellationToken) {
    let protected = Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/api/clusters", get(api_clusters))
        .route("/api/incidents", get(api_incidents))
        .route("/api/events", get(api_events))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let app = Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .with_state(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "admin HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin HTTP: {MAX_CONNECTIONS} connections open; closing a new one");
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::timeout(CONNECTION_LIFETIME, connection) => {}
                () = stop.cancelled() => {}
            }
            drop(slot);
        });
    }
}

async fn require_token(
    State(state): State<Shared>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = &state.token else {
        return next.run(request).await;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| switchyard_proto::secrets_equal(g.as_bytes(), token.as_bytes())) {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "switchyard: a bearer token is required\n",
        )
            .into_response()
    }
}

/// 200 when every cluster has a primary and the proxy is not shutting down; 503 with the
/// reasons otherwise.
async fn readyz(State(state): State<Shared>) -> Response {
    let clusters = snapshot::clusters(&state);
    let mut reasons: Vec<String> = clusters
        .iter()
        .filter(|c| c.state != "primary")
        .map(|c| format!("cluster {}: {}", c.name, c.state))
        .collect();
    if state.proxy.shutdown.is_cancelled() {
        reasons.push("shutting down".into());
    }
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", reasons.join("; ")),
        )
            .into_response()
    }
}

async fn metrics_text(State(state): State<Shared>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&state),
    )
        .into_response()
}

async fn api_clusters(State(state): State<Shared>) -> Response {
    let clusters = snapshot::clusters(&state);
    let sites = snapshot::sites(&state, &clusters);
    Json(serde_json::json!({ "clusters": clusters, "sites": sites })).into_response()
}

async fn api_incidents(State(state): State<Shared>) -> Response {
    Json(serde_json::json!({ "incidents": state.incidents() })).into_response()
}

#[derive(Deserialize)]
struct EventsQuery {
    limit: Option<usize>,
}

async fn api_events(State(state): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(200).min(crate::events::MAX_EVENTS);
    Json(serde_json::json!({ "events": state.events(limit) })).into_response()
}

async fn status_page(State(state): State<Shared>) -> Html<String> {
    let clusters = snapshot::clusters(&state);
    let sites = snapshot::sites(&state, &clusters);
    Html(page::render(
        &clusters,
        &sites,
        &state.incidents(),
        unix_ms(),
    ))
}
