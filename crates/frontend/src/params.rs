//! Session parameters a client expects on every server connection it lands on.
//!
//! A client's settings are what it sent at startup plus what the server later reported through
//! ParameterStatus while serving it (a `SET TimeZone`, say). Before a transaction runs on a server
//! connection whose settings differ, Switchyard brings them in line with `SET`/`RESET`.

use std::collections::BTreeMap;

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

#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    /// Setting name (server spelling) → value.
    wanted: BTreeMap<String, String>,
    /// A hash of `wanted`, never 0; see `ServerConn::settings_fingerprint`.
    fingerprint: u64,
}

fn fingerprint(wanted: &BTreeMap<String, String>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    wanted.hash(&mut h);
    h.finish() | 1
}

/// The server's spelling of a setting name, given the names it reports.
fn canonical(name: &str, reported: &BTreeMap<String, String>) -> String {
    reported
        .keys()
        .find(|k| k.eq_ignore_ascii_case(name))
        .cloned()
        .unwrap_or_else(|| name.to_ascii_lowercase())
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
        welcome: &BTreeMap<String, String>,
    ) -> Result<Self, String> {
        let mut wanted = welcome.clone();
        let mut settings: Vec<(String, String)> = Vec::new();
        for (k, v) in startup {
            if k == "options" {
                settings.extend(split_options(v)?);
            } else if !NOT_SETTINGS.contains(&k.as_str()) {
                settings.push((k.clone(), v.clone()));
            }
        }
        for (k, v) in &settings {
            if !valid_name(k) {
                return Err(format!("invalid startup parameter name {k:?}"));
            }
            wanted.insert(canonical(k, welcome), v.clone());
        }
        Ok(Self {
            fingerprint: fingerprint(&wanted),
            wanted,
        })
    }

    /// What the client is told at startup.
    pub fn reported<'a>(
        &'a self,
        welcome: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a String, &'a String)> {
        self.wanted.iter().filter(|(k, _)| welcome.contains_key(*k))
    }

    /// A ParameterStatus seen while this client used a server.
    pub fn observe(&mut self, name: &str, value: &str) {
        if self.wanted.get(name).map(String::as_str) != Some(value) {
            self.wanted.insert(name.to_string(), value.to_string());
            self.fingerprint = fingerprint(&self.wanted);
        }
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// SQL that makes a server connection with `server` settings match this client, or `None`.
    /// `welcome` tells which settings the server reports (others are ones Switchyard set).
    pub fn sync_sql(
        &self,
        server: &BTreeMap<String, String>,
        welcome: &BTreeMap<String, String>,
    ) -> Option<String> {
        let mut sql = String::new();
        for (k, v) in &self.wanted {
            if server.get(k) != Some(v) {
                sql.push_str(&format!("SET {k} TO '{}';", v.replace('\'', "''")));
            }
        }
        for k in server.keys() {
            if !welcome.contains_key(k) && !self.wanted.contains_key(k) {
                sql.push_str(&format!("RESET {k};"));
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records on a server's parameter map what a successful `sync_sql` did.
    pub fn apply_to(
        &self,
        server: &mut BTreeMap<String, String>,
        welcome: &BTreeMap<String, String>,
    ) {
        server.retain(|k, _| welcome.contains_key(k) || self.wanted.contains_key(k));
        for (k, v) in &self.wanted {
            server.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let c = ClientParams::from_startup(&startup, &welcome).unwrap();
        let server = map(&[
            ("TimeZone", "UTC"),
            ("application_name", ""),
            ("extra_float_digits", "3"),
        ]);
        let sql = c.sync_sql(&server, &welcome).unwrap();
        assert!(sql.contains("SET TimeZone TO 'Europe/Paris';"), "{sql}");
        assert!(sql.contains("SET search_path TO 'a,b';"), "{sql}");
        assert!(sql.contains("RESET extra_float_digits;"), "{sql}");
        let mut s = server.clone();
        c.apply_to(&mut s, &welcome);
        assert_eq!(c.sync_sql(&s, &welcome), None);
        assert!(ClientParams::from_startup(&[("bad;name".into(), "x".into())], &welcome).is_err());
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
