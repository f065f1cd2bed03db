//! Timestamp parsing shared by the NAB and SKAB loaders.

use chrono::NaiveDateTime;

/// Parses a naive `YYYY-MM-DD HH:MM:SS` timestamp, optionally with a fractional-second
/// suffix such as NAB's `.000000`, into milliseconds since the Unix epoch (the naive time
/// is read as UTC). Returns `None` if the text is not such a timestamp.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%d %H:%M:%S%.f")
        .ok()
        .map(|t| t.and_utc().timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_fraction() {
        // 2014-07-01 00:30:00 UTC = 1404174600 s.
        assert_eq!(
            parse_timestamp_ms("2014-07-01 00:30:00"),
            Some(1_404_174_600_000)
        );
        assert_eq!(
            parse_timestamp_ms("2014-07-01 00:30:00.000000"),
            Some(1_404_174_600_000)
        );
        assert_eq!(
            parse_timestamp_ms("2014-07-01 00:30:00.250"),
            Some(1_404_174_600_250)
        );
        assert_eq!(parse_timestamp_ms("2014-07-01"), None);
        assert_eq!(parse_timestamp_ms("not a time"), None);
    }
}
