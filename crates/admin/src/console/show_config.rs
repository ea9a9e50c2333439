//! SHOW CONFIG: the running config, one setting a row, with PgBouncer's columns: `key`
//! (`section.field`), `value`, `default`, and `changeable` (`yes` when a reload applies it
//! without a restart). Secrets are never shown: `admin.token` shows as `(set)`, webhooks by
//! count, users by name only.

use serde::Serialize;
use serde_json::Value as Json;
use switchyard_config::{
    AdminConfig, Config, FailoverConfig, PoolDefaults, ProxyConfig, ServerConfig,
};
use switchyard_proto::backend::ColumnType;

use super::Ctx;
use super::table::{TEXT, Table, Value, text};

static COLUMNS: [(&str, ColumnType); 4] = [
    ("key", TEXT),
    ("value", TEXT),
    ("default", TEXT),
    ("changeable", TEXT),
];

/// Settings a reload does not apply (the README's "live" column says "no").
const RESTART_ONLY: [&str; 8] = [
    "proxy.listen",
    "proxy.shutdown_timeout",
    "proxy.worker_threads",
    "admin.listen",
    "admin.token",
    "admin.incidents_file",
    "admin.resolve_after",
    "admin.webhooks",
];

pub fn table(ctx: &Ctx<'_>) -> Table {
    let live = ctx.proxy().live.load();
    let c = &live.config;
    let mut t = Table::new(&COLUMNS);
    section(&mut t, "proxy", &c.proxy, &ProxyConfig::default());
    section(&mut t, "pool", &c.pool, &PoolDefaults::default());
    section(&mut t, "server", &c.server, &ServerConfig::default());
    section(&mut t, "failover", &c.failover, &FailoverConfig::default());
    section(
        &mut t,
        "admin",
        &redacted(&c.admin),
        &redacted(&AdminConfig::default()),
    );
    lists(&mut t, c);
    t
}

/// `admin` without its secrets.
fn redacted(a: &AdminConfig) -> Json {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        let token = a.token.as_ref().map(|_| "(set)");
        o.insert("token".into(), token.into());
        let hooks = format!("{} webhook(s)", a.webhooks.len());
        o.insert("webhooks".into(), hooks.into());
    }
    v
}

/// One row per field of a section.
fn section(t: &mut Table, name: &str, value: &impl Serialize, default: &impl Serialize) {
    let value = serde_json::to_value(value).unwrap_or_default();
    let default = serde_json::to_value(default).unwrap_or_default();
    let Some(fields) = value.as_object() else {
        return;
    };
    for (field, v) in fields {
        let key = format!("{name}.{field}");
        let changeable = if RESTART_ONLY.contains(&key.as_str()) {
            "no"
        } else {
            "yes"
        };
        let d = default.get(field).and_then(show);
        t.row(vec![text(key), show(v), d, text(changeable)]);
    }
}

/// Clusters, sites and users: what they are, not their secrets.
fn lists(t: &mut Table, c: &Config) {
    for (name, cluster) in &c.clusters {
        t.row(vec![
            text(format!("clusters.{name}.members")),
            text(cluster.members.join(",")),
            None,
            text("yes"),
        ]);
    }
    let sites: Vec<String> = c
        .sites
        .iter()
        .map(|s| format!("{}@{}", s.database, s.cluster))
        .collect();
    t.row(vec![
        text("sites"),
        text(sites.join(",")),
        None,
        text("yes"),
    ]);
    let users: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
    t.row(vec![
        text("users"),
        text(users.join(",")),
        None,
        text("yes"),
    ]);
}

/// A setting as text: strings bare, lists comma-separated, nothing as NULL.
fn show(v: &Json) -> Value {
    match v {
        Json::Null => None,
        Json::String(s) => text(s.clone()),
        Json::Array(items) => {
            let items: Vec<String> = items.iter().filter_map(show).collect();
            text(items.join(","))
        }
        other => text(other.to_string()),
    }
}
