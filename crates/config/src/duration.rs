//! Durations written as `"250ms"`, `"5s"`, `"10m"`, `"1h"` (or a bare integer of seconds).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn secs(s: u64) -> Self {
        Self(std::time::Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Self(std::time::Duration::from_millis(ms))
    }

    pub fn get(self) -> std::time::Duration {
        self.0
    }

    /// The duration as a limit: `None` for zero, which turns a timeout off.
    pub fn limit(self) -> Option<std::time::Duration> {
        (!self.0.is_zero()).then_some(self.0)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {text:?}: expected e.g. \"5s\""))?;
        let ms = match unit.trim() {
            "ms" => n,
            "" | "s" => n.saturating_mul(1000),
            "m" | "min" => n.saturating_mul(60_000),
            "h" => n.saturating_mul(3_600_000),
            "d" => n.saturating_mul(86_400_000),
            u => {
                return Err(format!(
                    "invalid duration unit {u:?} in {text:?}: use ms, s, m, h or d"
                ));
            }
        };
        Ok(Self::millis(ms))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(Self::secs(s)),
            Raw::Text(t) => Self::parse(&t).map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(Duration::parse("250ms").unwrap(), Duration::millis(250));
        assert_eq!(Duration::parse("5s").unwrap(), Duration::secs(5));
        assert_eq!(Duration::parse("2m").unwrap(), Duration::secs(120));
        assert_eq!(Duration::parse("7").unwrap(), Duration::secs(7));
        assert!(Duration::parse("5 parsecs").is_err());
        assert!(Duration::parse("s").is_err());
        assert_eq!(Duration::millis(1500).to_string(), "1500ms");
    }
}
