//! Session parameters a client expects on every server connection it lands on.
//!
//! A client's settings are what it sent at startup plus what the server later reported through
//! ParameterStatus while serving it (a `SET TimeZone`, say), or what the session read back for
//! the one it does not report (search_path). Before a transaction runs on a server connection
//! whose settings differ, Switchyard brings them in line with `set_config`/`RESET`.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Startup keys that are not settings (`options` is unpacked into settings).
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Unpacks a startup `options` string the way PostgreSQL's `pg_split_opts` does: whitespace
/// separates words, a backslash escapes the next character, and settings come as `-c name=value`
/// (or `-cname=value`, `--name=value`).
pub fn split_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("option -c needs name=value")?
        } else if let Some(rest) = w.strip_prefix("-c").or_else(|| w.strip_prefix("--")) {
            rest.to_string()
        } else {
            return Err(format!(
                "unsupported startup option {w:?}: only -c name=value is supported"
            ));
        };
        let (name, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("option {setting:?} needs name=value"))?;
        settings.push((name.replace('-', "_"), value.to_string()));
    }
    Ok(settings)
}

/// Reported parameters a client cannot set: never part of a sync.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "is_superuser",
    "session_authorization",
    "in_hot_standby",
    "scram_iterations",
];

type Params = BTreeMap<String, String>;

/// A client's few settings that differ from the servers' defaults, packed into one allocation
/// (`name\0value\0name\0value\0`; parameter names and values never hold NUL): at 10,000 idle
/// clients a vector of string pairs costs four allocations each for one `application_name`.
#[derive(Debug, Clone, Default)]
struct Overrides(Option<Box<str>>);

impl Overrides {
    fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut parts = self.0.as_deref().unwrap_or("").split('\0');
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
    }

    fn rebuild<'a>(&mut self, pairs: impl Iterator<Item = (&'a str, &'a str)>) {
        let mut packed = String::new();
        for (k, v) in pairs {
            packed.push_str(k);
            packed.push('\0');
            packed.push_str(v);
            packed.push('\0');
        }
        self.0 = (!packed.is_empty()).then(|| packed.into_boxed_str());
    }

    fn remove(&mut self, k: &str) {
        if self.get(k).is_some() {
            let old = self.0.take();
            let old = Overrides(old);
            self.rebuild(old.iter().filter(|(n, _)| *n != k));
        }
    }

    fn insert(&mut self, k: String, v: String) {
        let old = Overrides(self.0.take());
        let kept = old.iter().filter(|(n, _)| *n != k);
        self.rebuild(kept.chain(std::iter::once((k.as_str(), v.as_str()))));
    }

    fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    /// What servers report at login, shared by every client of a pool.
    base: Arc<Params>,
    /// Where this client's settings differ from `base` (usually a handful or none).
    overrides: Overrides,
    /// A hash of the settable view, never 0; see `ServerConn::settings_fingerprint`.
    fingerprint: u64,
}

/// The server's spelling of a setting name, given the names it reports.
fn canonical(name: &str, reported: &Params) -> String {
    reported
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .unwrap_or_else(|| name.to_ascii_lowercase())
}

/// A string literal that means `s` whatever standard_conforming_strings says (`E'...'`, with
/// backslashes and quotes doubled).
fn literal(s: &str) -> String {
    format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

impl ClientParams {
    /// From the startup packet, against the parameters servers report at login (`welcome`).
    pub fn from_startup(
        startup: &[(String, String)],
        welcome: &Arc<Params>,
    ) -> Result<Self, String> {
        let mut settings: Vec<(String, String)> = Vec::new();
        for (k, v) in startup {
            if k == "options" {
                settings.extend(split_options(v)?);
            } else if !NOT_SETTINGS.contains(&k.as_str()) {
                settings.push((k.clone(), v.clone()));
            }
        }
        let mut me = Self {
            base: welcome.clone(),
            overrides: Overrides::default(),
            fingerprint: 0,
        };
        for (k, v) in settings {
            if !valid_name(&k) {
                return Err(format!("invalid startup parameter name {k:?}"));
            }
            let name = canonical(&k, welcome);
            // Reported as PostgreSQL spells it, even before a server has been asked.
            let v = match name.as_str() {
                "client_encoding" => crate::encodings::canonical_encoding(&v)
                    .map(str::to_string)
                    .unwrap_or(v),
                _ => v,
            };
            me.set(name, v);
        }
        me.fingerprint = me.compute_fingerprint();
        Ok(me)
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.overrides
            .get(k)
            .or_else(|| self.base.get(k).map(String::as_str))
    }

    fn set(&mut self, k: String, v: String) {
        if self.base.get(&k) == Some(&v) {
            self.overrides.remove(&k);
        } else {
            self.overrides.insert(k, v);
        }
    }

    /// The client's settable settings.
    fn wanted(&self) -> impl Iterator<Item = (&str, &str)> {
        let from_base = self
            .base
            .iter()
            .map(|(k, v)| (k.as_str(), self.overrides.get(k).unwrap_or(v)));
        let extra = self
            .overrides
            .iter()
            .filter(|(k, _)| !self.base.contains_key(*k));
        from_base
            .chain(extra)
            .filter(|(k, _)| !READ_ONLY.contains(k))
    }

    fn compute_fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.wanted().for_each(|kv| kv.hash(&mut h));
        h.finish() | 1
    }

    /// What the client is told at startup.
    pub fn reported(&self) -> impl Iterator<Item = (&str, &str)> {
        self.base
            .iter()
            .map(|(k, v)| (k.as_str(), self.overrides.get(k).unwrap_or(v)))
    }

    /// A ParameterStatus seen while this client used a server.
    pub fn observe(&mut self, name: &str, value: &str) {
        if self.get(name) != Some(value) {
            self.set(name.to_string(), value.to_string());
            self.fingerprint = self.compute_fingerprint();
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// The servers report this setting (ParameterStatus) whenever it changes.
    pub fn is_reported(&self, name: &str) -> bool {
        self.base.contains_key(name)
    }

    /// The client's settings where they differ from the servers', as startup parameters
    /// ([`ClientParams::from_startup`] makes the same client of them).
    pub fn overrides(&self) -> Vec<(String, String)> {
        (self.overrides.iter())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// True when the client wants settings the servers do not start with.
    pub fn has_overrides(&self) -> bool {
        !self.overrides.is_empty()
    }

    /// SQL that makes a server connection with `server` settings match this client, or `None`.
    /// `welcome` tells which settings the server reports (others are ones Switchyard set).
    pub fn sync_sql(&self, server: &Params, welcome: &Params) -> Option<String> {
        let mut sql = String::new();
        for (k, v) in self.wanted() {
            if server.get(k).map(String::as_str) != Some(v) {
                // set_config parses the value as a config file would: a list setting such as
                // search_path keeps its elements (`SET search_path TO 'a, b'` makes one schema
                // named "a, b").
                sql.push_str(&format!(
                    "SELECT set_config({}, {}, false);",
                    literal(k),
                    literal(v)
                ));
            }
        }
        for k in server.keys() {
            if !welcome.contains_key(k) && self.get(k).is_none() {
                sql.push_str(&format!("RESET {k};"));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records on a server's parameter map what a successful `sync_sql` did.
    ///
    /// A setting the server reports keeps the value it reported (its own spelling: `UTF8` for a
    /// client's `utf-8`); the others take the client's.
    pub fn apply_to(&self, server: &mut Params, welcome: &Params) {
        server.retain(|k, _| welcome.contains_key(k) || self.get(k).is_some());
        for (k, v) in self.wanted() {
            if !(welcome.contains_key(k) && server.contains_key(k)) {
                server.insert(k.to_owned(), v.to_owned());
            }
        }
    }

    /// Takes the server's spelling of every reported setting this client changed (after they
    /// were applied to `server`), as PostgreSQL reports them back: `client_encoding=utf-8`
    /// becomes `UTF8`, `DateStyle=iso, mdy` becomes `ISO, MDY`.
    pub fn adopt_server_spelling(&mut self, server: &Params) {
        let changed: Vec<(String, String)> = self
            .overrides
            .iter()
            .filter(|(k, v)| self.base.contains_key(*k) && server.get(*k).is_some_and(|s| s != v))
            .filter_map(|(k, _)| Some((k.to_owned(), server.get(k)?.clone())))
            .collect();
        if changed.is_empty() {
            return;
        }
        for (k, v) in changed {
            self.set(k, v);
        }
        self.fingerprint = self.compute_fingerprint();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_pack_insert_replace_and_remove() {
        let mut o = Overrides::default();
        assert!(o.is_empty());
        o.insert("application_name".into(), "app".into());
        o.insert("TimeZone".into(), "UTC".into());
        o.insert("application_name".into(), "other".into());
        assert_eq!(o.get("application_name"), Some("other"));
        assert_eq!(o.get("TimeZone"), Some("UTC"));
        assert_eq!(o.iter().count(), 2);
        o.remove("TimeZone");
        assert_eq!(o.get("TimeZone"), None);
        o.remove("application_name");
        assert!(o.is_empty(), "nothing left, nothing allocated");
        o.insert("x".into(), String::new());
        assert_eq!(o.get("x"), Some(""), "an empty value is kept");
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sync_sets_differences_and_resets_leftovers() {
        let welcome = map(&[("TimeZone", "UTC"), ("application_name", "")]);
        let startup = vec![
            ("timezone".to_string(), "Europe/Paris".to_string()),
            ("search_path".into(), "a,b".into()),
        ];
        let welcome = Arc::new(welcome);
        let c = ClientParams::from_startup(&startup, &welcome).unwrap();
        let server = map(&[
            ("TimeZone", "UTC"),
            ("application_name", ""),
            ("extra_float_digits", "3"),
        ]);
        let sql = c.sync_sql(&server, &welcome).unwrap();
        assert!(
            sql.contains("SELECT set_config(E'TimeZone', E'Europe/Paris', false);"),
            "{sql}"
        );
        assert!(
            sql.contains("SELECT set_config(E'search_path', E'a,b', false);"),
            "{sql}"
        );
        assert_eq!(literal(r"it's a \ b"), r"E'it''s a \\ b'");
        assert!(sql.contains("RESET extra_float_digits;"), "{sql}");
        let mut s = server.clone();
        // The server reports the reported setting it was given (ParameterStatus, which the
        // connection records); apply_to fills in the rest.
        s.insert("TimeZone".into(), "Europe/Paris".into());
        c.apply_to(&mut s, &welcome);
        assert_eq!(c.sync_sql(&s, &welcome), None);

        assert!(ClientParams::from_startup(&[("bad;name".into(), "x".into())], &welcome).is_err());
    }

    #[test]
    fn the_servers_spelling_of_a_reported_setting_is_adopted() {
        let welcome = Arc::new(map(&[
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
        ]));
        let startup = [
            ("client_encoding".to_string(), "utf-8".to_string()),
            ("DateStyle".to_string(), "iso, dmy".to_string()),
        ];
        let mut c = ClientParams::from_startup(&startup, &welcome).unwrap();
        let server = map(&[("client_encoding", "UTF8"), ("DateStyle", "ISO, DMY")]);
        c.adopt_server_spelling(&server);
        let reported: BTreeMap<&str, &str> = c.reported().collect();
        assert_eq!(reported["client_encoding"], "UTF8");
        assert_eq!(reported["DateStyle"], "ISO, DMY");
        // client_encoding is now what the servers start with: no longer an override.
        assert_eq!(c.sync_sql(&server, &welcome), None);
    }

    #[test]
    fn options_are_split_like_postgres() {
        let got = split_options(
            r"-c search_path=a,b  --statement-timeout=5s -cwork_mem=1MB -c x=with\ space",
        )
        .unwrap();
        let want = [
            ("search_path", "a,b"),
            ("statement_timeout", "5s"),
            ("work_mem", "1MB"),
            ("x", "with space"),
        ];
        assert_eq!(got, want.map(|(k, v)| (k.to_string(), v.to_string())));
        assert!(split_options("-d 5").is_err());
        assert!(split_options("-c").is_err());
        assert!(split_options("-c novalue").is_err());
    }
}
