//! `/`: the status page, in the spirit of a hosted service's status page — the state of each
//! cluster and site now, the open incident with its timeline and scope, and the history.
//! Server-rendered HTML that reloads itself every 2 seconds; no script, no external assets.

use std::fmt::Write;

use crate::incident::{Incident, Stage};
use crate::snapshot::{ClusterSnapshot, SiteSnapshot};

/// Escapes text for HTML.
fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `HH:MM:SS UTC` of a Unix-ms time.
pub fn utc(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, (s / 60) % 60, s % 60)
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1000px;color:#222}\
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:1.6em}\
.banner{padding:1em;border-radius:6px;font-weight:600;color:#fff}\
.ok{background:#2e7d32}.warn{background:#ef6c00}.bad{background:#c62828}\
table{border-collapse:collapse;width:100%;margin:.5em 0}td,th{border-bottom:1px solid #ddd;padding:.35em .5em;text-align:left;font-size:.95em}\
.pill{padding:.1em .6em;border-radius:1em;color:#fff;font-size:.85em}\
.operational,.Up,.primary,.Resolved{background:#2e7d32}.degraded,.Suspect,.Monitoring,.Identified{background:#ef6c00}\
.outage,.Down,.no_primary,.conflict,.Investigating{background:#c62828}.Unknown,.standby,.unknown{background:#607d8b}.writable_not_primary{background:#8e24aa}\
.timeline li{margin:.3em 0}.muted{color:#777;font-size:.9em}";

fn pill(class: &str, text: &str) -> String {
    format!("<span class=\"pill {}\">{}</span>", esc(class), esc(text))
}

/// The whole page.
pub fn render(
    clusters: &[ClusterSnapshot],
    sites: &[SiteSnapshot],
    incidents: &[Incident],
    now_ms: u64,
) -> String {
    let mut out = String::with_capacity(8192);
    let _ = write!(
        out,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>Switchyard status</title><style>{STYLE}</style></head><body><h1>Switchyard status</h1>"
    );
    let open: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.stage != Stage::Resolved)
        .collect();
    let (class, text) = match open.first() {
        None => ("ok", "All systems operational".to_owned()),
        Some(i) if i.stage == Stage::Investigating => {
            ("bad", format!("{}: {}", i.stage.name(), i.title))
        }
        Some(i) => ("warn", format!("{}: {}", i.stage.name(), i.title)),
    };
    let _ = write!(
        out,
        "<div class=\"banner {class}\" id=\"banner\">{}</div><p class=\"muted\">As of {}</p>",
        esc(&text),
        utc(now_ms)
    );
    for inc in &open {
        incident(&mut out, inc, now_ms);
    }
    out.push_str("<h2>Sites</h2><table><tr><th>database</th><th>cluster</th><th>status</th></tr>");
    for s in sites {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.database),
            esc(&s.cluster),
            pill(s.status, s.status)
        );
    }
    out.push_str("</table>");
    for c in clusters {
        cluster(&mut out, c);
    }
    out.push_str("<h2>Incident history</h2>");
    let past: Vec<&Incident> = incidents
        .iter()
        .filter(|i| i.stage == Stage::Resolved)
        .take(20)
        .collect();
    if past.is_empty() {
        out.push_str("<p class=\"muted\">No incidents.</p>");
    }
    for inc in past {
        incident(&mut out, inc, now_ms);
    }
    out.push_str("</body></html>");
    out
}

fn cluster(out: &mut String, c: &ClusterSnapshot) {
    let _ = write!(
        out,
        "<h2>Cluster {} {}</h2><p>primary: <b>{}</b> · generation {} · {} transactions</p>\
         <table><tr><th>member</th><th>role</th><th>health</th><th>timeline</th><th>lag (bytes)</th><th>probes ok / failed</th><th>last probe</th></tr>",
        esc(&c.name),
        pill(c.state, &c.state.replace('_', " ")),
        esc(c.primary.as_deref().unwrap_or("none")),
        c.generation,
        c.transactions
    );
    for m in &c.members {
        let fenced = if m.fenced { " (fenced)" } else { "" };
        let _ = write!(
            out,
            "<tr><td>{}{fenced}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{:.1} ms</td></tr>",
            esc(&m.addr),
            pill(m.role, m.role),
            pill(&m.health, &m.health),
            m.timeline.map_or("–".into(), |t| t.to_string()),
            m.lag_bytes.map_or("–".into(), |l| l.to_string()),
            m.probes_ok,
            m.probes_failed,
            m.last_probe_ms
        );
    }
    out.push_str("</table>");
}

fn incident(out: &mut String, inc: &Incident, now_ms: u64) {
    let _ = write!(
        out,
        "<div class=\"incident\" id=\"incident-{}\"><h2>#{} {} {}</h2><p class=\"muted\">cluster {} · opened {} ({:.0} s ago)",
        inc.id,
        inc.id,
        esc(&inc.title),
        pill(inc.stage.name(), inc.stage.name()),
        esc(&inc.cluster),
        utc(inc.opened_ms),
        now_ms.saturating_sub(inc.opened_ms) as f64 / 1000.0
    );
    if let Some(d) = inc.detection_ms {
        let _ = write!(
            out,
            " · detected {:.1} s after the last good probe",
            d as f64 / 1000.0
        );
    }
    out.push_str("</p><ul class=\"timeline\">");
    for t in &inc.timeline {
        let _ = write!(
            out,
            "<li><b>{}</b> {} (+{:.1} s) — {}</li>",
            t.stage.name(),
            utc(t.at_ms),
            t.at_ms.saturating_sub(inc.opened_ms) as f64 / 1000.0,
            esc(&t.note)
        );
    }
    let s = &inc.scope;
    let sites = if s.sites.is_empty() {
        "none".to_owned()
    } else {
        s.sites.join(", ")
    };
    let outcomes = s.caught.outcomes();
    out.push_str("</ul><table class=\"scope\"><tr><th>sites affected</th>");
    for o in &outcomes {
        let _ = write!(out, "<th>{}</th>", o.heading);
    }
    let _ = write!(
        out,
        "<th>longest hold</th></tr><tr><td>{}</td>",
        esc(&sites)
    );
    for o in &outcomes {
        let _ = write!(out, "<td>{}</td>", o.count);
    }
    let _ = write!(
        out,
        "<td>{:.1} s</td></tr></table>",
        s.caught.longest_hold_ms as f64 / 1000.0
    );
    if let Some(lag) = inc.at_risk_lag_bytes {
        let _ = write!(
            out,
            "<p class=\"muted\">replication lag last seen before the fault: {lag} bytes</p>"
        );
    }
    if !inc.notifications.is_empty() {
        out.push_str("<p class=\"muted\">notifications: ");
        for d in &inc.notifications {
            let _ = write!(
                out,
                "{} {} {:?} ({} attempts); ",
                esc(&d.url),
                d.stage.name(),
                d.state,
                d.attempts
            );
        }
        out.push_str("</p>");
    }
    out.push_str("</div>");
}
