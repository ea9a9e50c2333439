//! Incident notifications: every incident stage change is POSTed to each configured webhook,
//! off the data path.
//!
//! - [`Notifier::notify`] (called by the tracker) never waits: it `try_send`s the incident into
//!   a queue of [`QUEUE`]; when the queue is full the notification is dropped and recorded as a
//!   Failed delivery ("queue full").
//! - One dispatcher task (running until `stop`) spawns one task per (incident, webhook), at most
//!   [`OUTSTANDING`] unfinished (beyond that the dispatcher waits and the queue fills), with at
//!   most [`CONCURRENT`] attempts in flight. Deliveries of one incident to one webhook go in
//!   stage order (each waits for the one before it); different webhooks and different incidents
//!   do not wait for each other, and a delivery holds an attempt slot only while it attempts.
//! - A delivery makes up to `attempts` attempts, each bounded by the webhook's `timeout`, with
//!   [`backoff`] between them. A 2xx answer is success; any other status, a transport error or
//!   a timeout is a failed attempt. Its state (Pending while retrying, then Delivered or Failed)
//!   is recorded on the incident after every attempt, through [`AdminState::record_delivery`].
//! - `body`: `json` is `{"event": "incident.<stage>", "incident": {…}}`; `slack` is
//!   `{"text": "…"}` with a one-line summary ([`summary`]).
//! - `client`: hyper's client, with rustls (aws-lc-rs) and the system's CA certificates for
//!   `https://`. URLs are shown redacted ([`redact`]): webhook paths often carry the secret.

mod body;
mod client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Uri;
use switchyard_config::{WebhookConfig, WebhookFormat};
use switchyard_topology::counters::unix_ms;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use body::{body, event, summary};
use client::HttpClient;
pub use client::redact;

use crate::incident::{Delivery, DeliveryState, Incident};
use crate::state::AdminState;

/// Incident transitions waiting for the dispatcher.
pub const QUEUE: usize = 256;
/// Deliveries not finished yet (waiting their turn, attempting or backing off).
pub const OUTSTANDING: usize = 256;
/// Attempts in flight at once (across webhooks and incidents).
pub const CONCURRENT: usize = 16;
/// The wait after the first failed attempt; it doubles after each one, up to [`BACKOFF_CAP`].
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);

/// Hands incident transitions to the delivery queue without ever waiting.
pub struct Notifier {
    tx: mpsc::Sender<Arc<Incident>>,
    hooks: Arc<[Hook]>,
    state: Arc<AdminState>,
}

/// One configured webhook, ready to use.
struct Hook {
    /// The parsed URL, or why it does not parse.
    uri: Result<Uri, String>,
    /// How the URL is shown in delivery states and logs.
    shown: String,
    format: WebhookFormat,
    timeout: Duration,
    attempts: u32,
}

/// One notification of one incident stage to one webhook.
struct Job {
    incident: Arc<Incident>,
    hooks: Arc<[Hook]>,
    /// Which of `hooks`.
    index: usize,
    client: HttpClient,
    /// Attempt slots ([`CONCURRENT`]).
    slots: Arc<Semaphore>,
    state: Arc<AdminState>,
    stop: CancellationToken,
}

impl Notifier {
    /// Starts the delivery task; `None` when no webhook is configured.
    pub fn start(
        hooks: Vec<WebhookConfig>,
        state: Arc<AdminState>,
        stop: CancellationToken,
    ) -> Option<Notifier> {
        if hooks.is_empty() {
            return None;
        }
        let hooks: Arc<[Hook]> = prepare(&hooks).into();
        let https = hooks.iter().any(|h| h.shown.starts_with("https://"));
        let client = client::new_client(https);
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(rx, hooks.clone(), client, state.clone(), stop));
        Some(Notifier { tx, hooks, state })
    }

    /// Queues `incident`'s current stage for every webhook; never waits. When the queue is
    /// full, the notification is dropped and recorded as Failed.
    pub fn notify(&self, incident: &Incident) {
        let mut snapshot = incident.clone();
        // Other webhooks' delivery states (and their URLs) are nobody else's business.
        snapshot.notifications.clear();
        match self.tx.try_send(Arc::new(snapshot)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(dropped)) => {
                tracing::warn!(
                    incident = dropped.id,
                    "webhook queue full: notification dropped"
                );
                for hook in self.hooks.iter() {
                    let d = delivery(hook, &dropped, DeliveryState::Failed, 0, Some("queue full"));
                    let (state, id) = (self.state.clone(), dropped.id);
                    // The store writes a file: not on the caller's thread.
                    match tokio::runtime::Handle::try_current() {
                        Ok(rt) => drop(rt.spawn_blocking(move || state.record_delivery(id, d))),
                        Err(_) => state.record_delivery(id, d),
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {} // stopping
        }
    }
}

/// Parses and names the configured webhooks (same-looking redacted URLs get their number).
fn prepare(hooks: &[WebhookConfig]) -> Vec<Hook> {
    let redacted: Vec<String> = hooks.iter().map(|h| redact(&h.url)).collect();
    hooks
        .iter()
        .enumerate()
        .map(|(index, h)| {
            let same = redacted.iter().filter(|r| **r == redacted[index]).count();
            Hook {
                uri: h.url.parse::<Uri>().map_err(|e| format!("bad URL: {e}")),
                shown: if same > 1 {
                    format!("{} (webhook {})", redacted[index], index + 1)
                } else {
                    redacted[index].clone()
                },
                format: h.format,
                timeout: h.timeout.get(),
                attempts: h.attempts.max(1),
            }
        })
        .collect()
}

/// Runs until `stop`: takes queued incidents and spawns their deliveries.
async fn dispatch(
    mut rx: mpsc::Receiver<Arc<Incident>>,
    hooks: Arc<[Hook]>,
    client: HttpClient,
    state: Arc<AdminState>,
    stop: CancellationToken,
) {
    let outstanding = Arc::new(Semaphore::new(OUTSTANDING));
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    // The latest delivery per (webhook, incident): the next one waits for it.
    let mut lanes: HashMap<(usize, u64), JoinHandle<()>> = HashMap::new();
    loop {
        let incident = tokio::select! {
            () = stop.cancelled() => return,
            next = rx.recv() => match next {
                Some(incident) => incident,
                None => return,
            },
        };
        lanes.retain(|_, h| !h.is_finished());
        for index in 0..hooks.len() {
            let permit = tokio::select! {
                () = stop.cancelled() => return,
                p = outstanding.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return, // never closed
                },
            };
            let key = (index, incident.id);
            let before = lanes.remove(&key);
            let job = Job {
                incident: incident.clone(),
                hooks: hooks.clone(),
                index,
                client: client.clone(),
                slots: slots.clone(),
                state: state.clone(),
                stop: stop.clone(),
            };
            lanes.insert(key, tokio::spawn(deliver(job, before, permit)));
        }
    }
}

/// Why a delivery cut short by `stop` failed.
const STOPPED: &str = "Switchyard stopped before delivery";

/// Delivers one notification: waits for the one before it on the same lane, then attempts
/// with backoff, recording the state after every attempt.
async fn deliver(job: Job, before: Option<JoinHandle<()>>, _outstanding: OwnedSemaphorePermit) {
    let hook = &job.hooks[job.index];
    let inc = &job.incident;
    if let Some(before) = before {
        tokio::select! {
            () = job.stop.cancelled() => return job.record_now(DeliveryState::Failed, 0, STOPPED),
            _ = before => {}
        }
    }
    job.record(DeliveryState::Pending, 0, None).await;
    let body = match body(hook.format, inc) {
        Ok(b) => b,
        Err(e) => {
            let e = format!("cannot encode the body: {e}");
            return job.record(DeliveryState::Failed, 0, Some(&e)).await;
        }
    };
    for attempt in 1..=hook.attempts {
        let result = tokio::select! {
            () = job.stop.cancelled() => {
                return job.record_now(DeliveryState::Failed, attempt - 1, STOPPED);
            }
            r = job.attempt(body.clone()) => r,
        };
        let error = match result {
            Ok(()) => {
                tracing::info!(incident = inc.id, url = %hook.shown, attempt, "webhook delivered");
                return job.record(DeliveryState::Delivered, attempt, None).await;
            }
            Err(e) => e,
        };
        if attempt == hook.attempts {
            tracing::warn!(incident = inc.id, url = %hook.shown, attempt, %error, "webhook failed");
            return job
                .record(DeliveryState::Failed, attempt, Some(&error))
                .await;
        }
        tracing::debug!(incident = inc.id, url = %hook.shown, attempt, %error, "webhook retry");
        job.record(DeliveryState::Pending, attempt, Some(&error))
            .await;
        tokio::select! {
            () = job.stop.cancelled() => {
                return job.record_now(DeliveryState::Failed, attempt, STOPPED);
            }
            () = tokio::time::sleep(backoff(attempt)) => {}
        }
    }
}

impl Job {
    /// One attempt, in an attempt slot (waiting for a slot is not bounded by the timeout).
    /// Cancel safe: dropping it abandons the request, which `deliver` then records as such.
    async fn attempt(&self, body: bytes::Bytes) -> Result<(), String> {
        let hook = &self.hooks[self.index];
        let uri = hook.uri.clone()?;
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        client::post(&self.client, uri, hook.timeout, body).await
    }

    /// Records the delivery's state off the async workers (the store writes a file).
    async fn record(&self, state: DeliveryState, attempts: u32, error: Option<&str>) {
        let d = delivery(
            &self.hooks[self.index],
            &self.incident,
            state,
            attempts,
            error,
        );
        let (admin, id) = (self.state.clone(), self.incident.id);
        // A failed blocking task has nothing to tell: the state is simply not recorded.
        let _ = tokio::task::spawn_blocking(move || admin.record_delivery(id, d)).await;
    }

    /// Records at once (when stopping, the blocking pool may be going away).
    fn record_now(&self, state: DeliveryState, attempts: u32, error: &str) {
        let d = delivery(
            &self.hooks[self.index],
            &self.incident,
            state,
            attempts,
            Some(error),
        );
        self.state.record_delivery(self.incident.id, d);
    }
}

fn delivery(
    hook: &Hook,
    inc: &Incident,
    state: DeliveryState,
    attempts: u32,
    error: Option<&str>,
) -> Delivery {
    Delivery {
        url: hook.shown.clone(),
        stage: inc.stage,
        state,
        attempts,
        at_ms: unix_ms(),
        error: error.map(str::to_owned),
    }
}

/// The wait after failed attempt number `attempt` (1-based): 0.5 s, 1 s, 2 s, … up to 10 s.
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    BACKOFF_FIRST
        .saturating_mul(1 << doublings)
        .min(BACKOFF_CAP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_ten() {
        let waits: Vec<u128> = (1..=8).map(|a| backoff(a).as_millis()).collect();
        assert_eq!(
            waits,
            [500, 1_000, 2_000, 4_000, 8_000, 10_000, 10_000, 10_000]
        );
        assert_eq!(backoff(u32::MAX), BACKOFF_CAP);
        assert_eq!(backoff(0), BACKOFF_FIRST);
    }

    fn hook(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            format: WebhookFormat::Json,
            timeout: switchyard_config::Duration::millis(300),
            attempts: 0,
        }
    }

    #[test]
    fn hooks_are_shown_redacted_and_told_apart() {
        let hooks = prepare(&[
            hook("https://hooks.slack.com/services/A/B/SECRET"),
            hook("https://hooks.slack.com/services/C/D/OTHER"),
            hook("http://127.0.0.1:9000"),
        ]);
        let shown: Vec<&str> = hooks.iter().map(|h| h.shown.as_str()).collect();
        assert_eq!(
            shown,
            [
                "https://hooks.slack.com/… (webhook 1)",
                "https://hooks.slack.com/… (webhook 2)",
                "http://127.0.0.1:9000"
            ]
        );
        assert!(
            hooks.iter().all(|h| h.attempts == 1),
            "at least one attempt"
        );
        assert!(hooks.iter().all(|h| h.uri.is_ok()));
    }
}
