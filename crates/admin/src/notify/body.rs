//! Webhook bodies: `json` is `{"event": "incident.<stage>", "incident": {…}}` (the incident as
//! the JSON API shows it); `slack` is `{"text": "…"}` with a one-line summary for people.

use bytes::Bytes;
use serde::Serialize;
use switchyard_config::WebhookFormat;

use crate::incident::Incident;

#[derive(Serialize)]
struct JsonBody<'a> {
    event: String,
    incident: &'a Incident,
}

#[derive(Serialize)]
struct SlackBody {
    text: String,
}

/// The body of the notification of `inc`'s current stage in `format`.
pub fn body(format: WebhookFormat, inc: &Incident) -> serde_json::Result<Bytes> {
    let bytes = match format {
        WebhookFormat::Json => serde_json::to_vec(&JsonBody {
            event: event(inc),
            incident: inc,
        })?,
        WebhookFormat::Slack => serde_json::to_vec(&SlackBody {
            text: slack_escape(&summary(inc)),
        })?,
    };
    Ok(Bytes::from(bytes))
}

/// `incident.investigating`, `incident.identified`, `incident.monitoring`, `incident.resolved`.
pub fn event(inc: &Incident) -> String {
    format!("incident.{}", inc.stage.name().to_lowercase())
}

/// One line for people: `[Switchyard] #3 Identified — Primary a:1 unresponsive (cluster main):
/// b:2 was promoted and is the primary. 12 held, 3 rolled back (40001), 1 outcome unknown
/// (08007).`
pub fn summary(inc: &Incident) -> String {
    let note = inc.timeline.last().map_or("", |t| t.note.as_str());
    let s = &inc.scope;
    let impact: Vec<String> = s
        .caught
        .outcomes()
        .iter()
        .filter(|o| o.count > 0)
        .map(|o| format!("{} {}", o.count, o.heading))
        .collect();
    let impact = if impact.is_empty() {
        "No request affected so far.".to_owned()
    } else {
        impact.join(", ") + "."
    };
    let sites = if s.sites.is_empty() {
        String::new()
    } else {
        format!(" Sites: {}.", s.sites.join(", "))
    };
    format!(
        "[Switchyard] #{} {} — {} (cluster {}): {note}. {impact}{sites}",
        inc.id,
        inc.stage.name(),
        inc.title,
        inc.cluster
    )
}

/// Slack's three control characters in text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{Scope, Stage, Transition};
    use serde_json::Value;
    use switchyard_topology::CaughtTotals;

    fn identified() -> Incident {
        Incident {
            id: 3,
            cluster: "main".into(),
            title: "Primary 127.0.0.1:5433 unresponsive".into(),
            stage: Stage::Identified,
            opened_ms: 1_000,
            resolved_ms: None,
            timeline: vec![
                Transition {
                    stage: Stage::Investigating,
                    at_ms: 1_000,
                    note: "the primary failed its probes".into(),
                },
                Transition {
                    stage: Stage::Identified,
                    at_ms: 4_000,
                    note: "127.0.0.1:5434 was promoted and is the primary".into(),
                },
            ],
            old_primary: Some("127.0.0.1:5433".into()),
            new_primary: Some("127.0.0.1:5434".into()),
            detection_ms: Some(900),
            at_risk_lag_bytes: Some(0),
            scope: Scope {
                caught: CaughtTotals {
                    held: 12,
                    rolled_back: 3,
                    unknown: 1,
                    ..CaughtTotals::default()
                },
                ..Scope::default()
            },
            notifications: Vec::new(),
        }
    }

    #[test]
    fn json_wraps_the_incident_with_its_event() {
        let inc = identified();
        let v: Value = serde_json::from_slice(&body(WebhookFormat::Json, &inc).unwrap()).unwrap();
        assert_eq!(v["event"], "incident.identified");
        assert_eq!(v["incident"]["id"], 3);
        assert_eq!(v["incident"]["stage"], "Identified");
        assert_eq!(v["incident"]["new_primary"], "127.0.0.1:5434");
        assert_eq!(v["incident"]["scope"]["held"], 12);
        let back: Incident = serde_json::from_value(v["incident"].clone()).unwrap();
        assert_eq!(back, inc);
    }

    #[test]
    fn every_stage_has_its_event() {
        let mut inc = identified();
        let mut events = Vec::new();
        for stage in [
            Stage::Investigating,
            Stage::Identified,
            Stage::Monitoring,
            Stage::Resolved,
        ] {
            inc.stage = stage;
            events.push(event(&inc));
        }
        assert_eq!(
            events,
            [
                "incident.investigating",
                "incident.identified",
                "incident.monitoring",
                "incident.resolved"
            ]
        );
    }

    #[test]
    fn slack_is_one_line_of_text() {
        let inc = identified();
        let v: Value = serde_json::from_slice(&body(WebhookFormat::Slack, &inc).unwrap()).unwrap();
        assert_eq!(
            v["text"],
            "[Switchyard] #3 Identified — Primary 127.0.0.1:5433 unresponsive (cluster main): \
             127.0.0.1:5434 was promoted and is the primary. 12 held, 3 rolled back (40001), 1 \
             outcome unknown (08007)."
        );
        assert_eq!(v.as_object().unwrap().len(), 1, "only `text`");
    }

    #[test]
    fn summary_without_impact_and_with_sites() {
        let mut inc = identified();
        inc.scope = Scope::default();
        assert!(
            summary(&inc).ends_with("is the primary. No request affected so far."),
            "{}",
            summary(&inc)
        );
        inc.scope.caught.gate_timeouts = 2;
        inc.scope.sites = vec!["app".into(), "shop".into()];
        assert!(
            summary(&inc).ends_with("primary. 2 gate timeouts (57P03). Sites: app, shop."),
            "{}",
            summary(&inc)
        );
    }

    #[test]
    fn slack_escapes_its_control_characters() {
        let mut inc = identified();
        inc.title = "a <b> & c".into();
        let v: Value = serde_json::from_slice(&body(WebhookFormat::Slack, &inc).unwrap()).unwrap();
        assert!(
            v["text"].as_str().unwrap().contains("a &lt;b&gt; &amp; c"),
            "{v}"
        );
    }
}
