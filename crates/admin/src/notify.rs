//! Incident notifications (webhooks): not written yet — a placeholder with the interface the
//! tracker uses.

use std::sync::Arc;

use switchyard_config::WebhookConfig;
use tokio_util::sync::CancellationToken;

use crate::incident::Incident;
use crate::state::AdminState;

/// Hands incident transitions to the delivery queue without ever waiting.
pub struct Notifier {}

impl Notifier {
    /// Starts the delivery task; `None` when no webhook is configured.
    pub fn start(
        hooks: Vec<WebhookConfig>,
        _state: Arc<AdminState>,
        _stop: CancellationToken,
    ) -> Option<Notifier> {
        (!hooks.is_empty()).then_some(Notifier {})
    }

    /// Queues `incident`'s current stage for every webhook.
    pub fn notify(&self, _incident: &Incident) {}
}
