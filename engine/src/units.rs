//! Config values with units: durations (`"500ms"`, `"10s"`, `"5m"`) and sizes (`"4MiB"`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, de};

/// A duration written with its unit, for example `"250ms"`, `"10s"`, `"5m"`, `"2h"`, `"1d"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct DurationSpec(pub Duration);

impl DurationSpec {
    /// The duration in whole milliseconds.
    pub fn as_millis(&self) -> u64 {
        self.0.as_millis() as u64
    }

    /// Parses `"<number><unit>"` with unit `us`, `ms`, `s`, `m`, `h` or `d`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!(
                    "bad duration `{text}`: missing unit (use us, ms, s, m, h or d, e.g. \"10s\")"
                )
            })?;
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad duration `{text}`: `{number}` is not a number"))?;
        let nanos_per_unit: f64 = match unit.trim() {
            "us" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" | "min" => 60e9,
            "h" => 3600e9,
            "d" => 86_400e9,
            other => {
                return Err(format!(
                    "bad duration `{text}`: unknown unit `{other}` (use us, ms, s, m, h or d)"
                ));
            }
        };
        Ok(DurationSpec(Duration::from_nanos(
            (value * nanos_per_unit).round() as u64,
        )))
    }
}

impl fmt::Display for DurationSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) && ms > 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl<'de> Deserialize<'de> for DurationSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        DurationSpec::parse(&text).map_err(de::Error::custom)
    }
}

impl serde::Serialize for DurationSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// A size in bytes written with its unit, for example `"512KiB"`, `"4MiB"`, `"1GB"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `"<number><unit>"` with unit `B`, `KB`, `MB`, `GB`, `KiB`, `MiB` or `GiB`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| {
                format!("bad size `{text}`: missing unit (use B, KiB, MiB, GiB, KB, MB or GB)")
            })?;
        let (number, unit) = t.split_at(split);
        let value: f64 = number
            .parse()
            .map_err(|_| format!("bad size `{text}`: `{number}` is not a number"))?;
        let scale: f64 = match unit.trim() {
            "B" => 1.0,
            "KB" | "kB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => {
                return Err(format!(
                    "bad size `{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB or GB)"
                ));
            }
        };
        Ok(ByteSize((value * scale).round() as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ByteSize::parse(&text).map_err(de::Error::custom)
    }
}

impl serde::Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}B", self.0))
    }
}

impl schemars::JsonSchema for DurationSpec {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "DurationSpec".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A duration with its unit: us, ms, s, m, h or d (e.g. \"10s\")."
        })
    }
}

impl schemars::JsonSchema for ByteSize {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ByteSize".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A size with its unit: B, KiB, MiB, GiB, KB, MB or GB (e.g. \"4MiB\")."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(DurationSpec::parse("250ms").unwrap().as_millis(), 250);
        assert_eq!(DurationSpec::parse("10s").unwrap().as_millis(), 10_000);
        assert_eq!(DurationSpec::parse("1.5m").unwrap().as_millis(), 90_000);
        assert_eq!(DurationSpec::parse("2h").unwrap().as_millis(), 7_200_000);
        assert!(
            DurationSpec::parse("10")
                .unwrap_err()
                .contains("missing unit")
        );
        assert!(
            DurationSpec::parse("10 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(ByteSize::parse("4MiB").unwrap().0, 4 * 1024 * 1024);
        assert_eq!(ByteSize::parse("1KB").unwrap().0, 1000);
        assert!(ByteSize::parse("4 potatoes").is_err());
    }
}
