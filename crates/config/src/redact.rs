//! TOML parse errors without the config's text: the toml crate quotes the offending line, which
//! may hold a password, and a parse error reaches stderr, the reload log and the event log.
//! Only the position and the parser's message are kept, with any value the message quotes
//! hidden. (Not even the key: the line an error points at may be inside a multi-line string.)

/// A parse error of `text`, safe to log.
pub fn parse_error(e: &toml::de::Error, text: &str) -> String {
    let message = hide_values(e.message().trim());
    let Some(span) = e.span() else {
        return message;
    };
    let before = text.get(..span.start).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}: {message}")
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
        // To the last quote before what was expected: a value may hold quotes itself.
        let end = out[open..]
            .find(", expected")
            .map_or(out.len(), |e| open + e);
        if let Some(close) = out[open + 1..end].rfind(['`', '"']) {
            out.replace_range(open..open + 1 + close + 1, "(value not shown)");
        } else {
            out.replace_range(open..end, "(value not shown)");
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
        assert!(e.contains("line 4"), "{e}");

        let variant = "[[users]]\nname = \"x\"\nauth = \"hunter2\"\npassword = \"p\"\n";
        let e = error_of(variant);
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("line 3") && e.contains("scram-sha-256"), "{e}");

        let quoted = "[[users]]\nname = \"x\"\nauth = \"hun`ter2\"\npassword = \"p\"\n";
        let e = error_of(quoted);
        assert!(!e.contains("ter2") && !e.contains("hun"), "{e}");

        let multiline =
            "[[users]]\nname = \"x\"\nauth = \"md5\"\npassword = \"\"\"\ns3cr=et\\q\"\"\"\n";
        let e = error_of(multiline);
        assert!(!e.contains("s3cr"), "{e}");

        let typed = "[[users]]\nname = \"x\"\nauth = \"md5\"\npassword = 12345678\n";
        let e = error_of(typed);
        assert!(!e.contains("12345678"), "{e}");
    }
}
