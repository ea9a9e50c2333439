//! The `[admin]` section: the HTTP listener (metrics, JSON API, status page), who may use the
//! admin console, where incidents are kept, when an incident counts as resolved, and the
//! webhooks told of every incident transition.

use crate::Duration;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Operator-facing surfaces.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the HTTP listener (`/metrics`, `/livez`, `/readyz`, `/api/…`, `/`); empty
    /// string: no HTTP listener (restart to change).
    pub listen: String,
    /// If set, every HTTP request but `/livez` and `/readyz` needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Users (from `[[users]]`) who may connect to the virtual database `switchyard` for the
    /// admin console and run every command (PgBouncer's `admin_users`).
    pub users: Vec<String>,
    /// Users who may use the admin console to look only: `SHOW …`, but no PAUSE, RESUME,
    /// RELOAD, RECONNECT, SHUTDOWN, FENCE or UNFENCE (PgBouncer's `stats_users`).
    pub stats_users: Vec<String>,
    /// File incidents are kept in across restarts (JSON); empty string: memory only.
    pub incidents_file: String,
    /// How long traffic must flow on the new primary before an incident is Resolved.
    pub resolve_after: Duration,
    /// Incident notifications: every webhook is POSTed every incident stage change, from a
    /// bounded background queue (restart to change).
    pub webhooks: Vec<WebhookConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9930".into(),
            token: None,
            users: Vec::new(),
            stats_users: Vec::new(),
            incidents_file: "switchyard-incidents.json".into(),
            resolve_after: Duration::secs(60),
            webhooks: Vec::new(),
        }
    }
}

/// One webhook, told of every incident transition.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://…` or `https://…` (rustls; the system's CA certificates) URL the notification
    /// is POSTed to. Delivery states and logs show it redacted to scheme, host and port, since
    /// webhook paths often hold the hook's secret.
    pub url: String,
    /// `json` (default: `{"event": "incident.<stage>", "incident": {…}}`) or `slack`
    /// (`{"text": …}`, a one-line summary, for Slack-compatible hooks).
    #[serde(default)]
    pub format: WebhookFormat,
    /// Longest one delivery attempt may take (default 5 s); a 2xx answer within it is success.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Duration,
    /// Attempts per notification before it is given up (default 5), with backoff between
    /// them: 0.5 s, doubling, at most 10 s.
    #[serde(default = "default_webhook_attempts")]
    pub attempts: u32,
}

fn default_webhook_timeout() -> Duration {
    Duration::secs(5)
}

fn default_webhook_attempts() -> u32 {
    5
}

/// The body of a webhook notification.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl AdminConfig {
    pub(crate) fn validate(&self, user_names: &[&str], errs: &mut Vec<String>) {
        match self.listen.parse::<SocketAddr>() {
            Err(_) if !self.listen.is_empty() => errs.push(format!(
                "admin.listen {:?} is not an address like 127.0.0.1:9930 (or \"\" for none)",
                self.listen
            )),
            // The status page, metrics and events say a lot about the service: beyond this
            // host they need a token.
            Ok(addr) if !addr.ip().is_loopback() && self.token.is_none() => errs.push(format!(
                "admin.listen {:?} is reachable from other hosts: set admin.token (every request \
                 but /livez and /readyz then needs it), or listen on 127.0.0.1",
                self.listen
            )),
            _ => {}
        }
        if self.token.as_deref() == Some("") {
            errs.push("admin.token is empty: remove it, or set a secret".into());
        }
        for (list, names) in [("users", &self.users), ("stats_users", &self.stats_users)] {
            for u in names {
                if !user_names.contains(&u.as_str()) {
                    errs.push(format!(
                        "admin.{list} names {u:?}, which is not in [[users]]"
                    ));
                }
            }
        }
        for (i, w) in self.webhooks.iter().enumerate() {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) {
                errs.push(format!(
                    "admin.webhooks[{i}].url {:?} must start with http:// or https://",
                    w.url
                ));
            }
            if w.attempts == 0 {
                errs.push(format!("admin.webhooks[{i}].attempts must be at least 1"));
            }
        }
    }
}
