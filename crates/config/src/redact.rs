//! TOML parse errors without the config's text: the toml crate quotes the offending line, which
//! may hold a password, and a parse error reaches stderr, the reload log and the event log.
//! Only the position, the key (names are not secrets) and the parser's message are kept, with
//! any value the message quotes hidden.

/// A parse error of `text`, safe to log.
pub fn parse_error(e: &toml::de::Error, text: &str) -> String {
    let message = hide_values(e.message().trim());
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    let line_text = text.lines().nth(line - 1).unwrap_or_default();
    match key_of(line_text) {
        Some(key) => format!("line {line}, column {column} (key `{key}`): {message}"),
        None => format!("line {line}, column {column}: {message}"),
    }
}

/// The key a `key = value` line sets, if it looks like one.
fn key_of(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
    (!key.is_empty() && key.chars().all(plain)).then_some(key)
}

/// Replaces the value serde quotes in its messages (`unknown variant \`x\``, `invalid type:
/// string "x"`, `invalid type: integer \`1\``) with a placeholder; what was expected stays.
fn hide_values(message: &str) -> String {
    let mut out = message.to_string();
    for lead in ["unknown variant ", "invalid type: ", "invalid value: "] {
        let Some(at) = out.find(lead) else { continue };
        let from = at + lead.len();
        let Some(open) = out[from..].find(['`', '"']).map(|i| from + i) else {
            continue;
        };
        let quote = out[open..].chars().next().unwrap_or('"');
        if let Some(len) = out[open + 1..].find(quote) {
            out.replace_range(open..open + len + 2, "(value not shown)");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Config;

    fn error_of(text: &str) -> String {
        Config::from_toml(text).expect_err("invalid").to_string()
    }

    #[test]
    fn parse_errors_never_quote_values() {
        let unterminated = "[[users]]\nname = \"x\"\nauth = \"md5\"\npassword = \"hunter2\n";
        let e = error_of(unterminated);
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 4") && e.contains("`password`"), "{e}");

        let variant = "[[users]]\nname = \"x\"\nauth = \"hunter2\"\npassword = \"p\"\n";
        let e = error_of(variant);
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("`auth`") && e.contains("scram-sha-256"), "{e}");

        let typed = "[[users]]\nname = \"x\"\nauth = \"md5\"\npassword = 12345678\n";
        let e = error_of(typed);
        assert!(!e.contains("12345678"), "{e}");
    }
}
