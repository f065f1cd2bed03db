//! Loading the NAB corpus: the series CSVs and `combined_windows.json`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::{EvalError, Result, parse_timestamp_ms, read_to_string};

/// One NAB series with its labelled anomaly windows.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Path relative to the NAB directory, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: String,
    /// Row timestamps in milliseconds since the epoch (naive time read as UTC), in file order.
    pub timestamps: Vec<i64>,
    /// Row values, in file order.
    pub values: Vec<f64>,
    /// Inclusive anomaly windows `(start_ms, end_ms)`, in chronological order.
    pub windows: Vec<(i64, i64)>,
}

/// The NAB series found on disk, plus the labelled files that are not.
#[derive(Debug, Clone, PartialEq)]
pub struct Corpus {
    /// Every labelled series present on disk, sorted by name.
    pub series: Vec<Series>,
    /// Labelled files (keys of `combined_windows.json`) absent from disk, sorted.
    pub missing: Vec<String>,
}

impl Corpus {
    /// Number of files named in the label file (present or not).
    pub fn labelled_files(&self) -> usize {
        self.series.len() + self.missing.len()
    }

    /// Total number of anomaly windows over the series present.
    pub fn window_count(&self) -> usize {
        self.series.iter().map(|s| s.windows.len()).sum()
    }

    /// Total number of rows over the series present.
    pub fn row_count(&self) -> usize {
        self.series.iter().map(|s| s.timestamps.len()).sum()
    }

    /// Missing files grouped by their top directory: `(directory, file count)`, sorted.
    pub fn missing_groups(&self) -> Vec<(String, usize)> {
        let mut groups: BTreeMap<String, usize> = BTreeMap::new();
        for name in &self.missing {
            let dir = name.split('/').next().unwrap_or(name).to_string();
            *groups.entry(dir).or_default() += 1;
        }
        groups.into_iter().collect()
    }

    /// One line for reports, e.g.
    /// `scored 42 of 58 labelled files (69 windows); absent: realAdExchange (6), realTweets (10)`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "scored {} of {} labelled files ({} windows, {} rows)",
            self.series.len(),
            self.labelled_files(),
            self.window_count(),
            self.row_count()
        );
        let groups = self.missing_groups();
        if !groups.is_empty() {
            let absent: Vec<String> = groups
                .iter()
                .map(|(dir, n)| format!("{dir} ({n})"))
                .collect();
            line.push_str("; absent: ");
            line.push_str(&absent.join(", "));
        }
        line
    }
}

/// Loads the NAB corpus from `nab_dir`: reads `combined_windows.json` and every labelled CSV
/// present, and records the labelled files that are absent.
pub fn load_corpus(nab_dir: &Path) -> Result<Corpus> {
    let labels_path = nab_dir.join("combined_windows.json");
    let labels = parse_windows_json(&labels_path, &read_to_string(&labels_path)?)?;
    let mut series = Vec::new();
    let mut missing = Vec::new();
    for (name, windows) in labels {
        let csv_path = nab_dir.join(&name);
        if !csv_path.is_file() {
            missing.push(name);
            continue;
        }
        let (timestamps, values) = load_series_csv(&csv_path)?;
        series.push(Series {
            name,
            timestamps,
            values,
            windows,
        });
    }
    Ok(Corpus { series, missing })
}

/// Reads one NAB CSV (`timestamp,value` header) into timestamps (ms) and values.
pub fn load_series_csv(path: &Path) -> Result<(Vec<i64>, Vec<f64>)> {
    let text = read_to_string(path)?;
    let parse_error = |line: usize, message: String| EvalError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, header)) if header.trim() == "timestamp,value" => {}
        Some((_, header)) => {
            return Err(parse_error(
                1,
                format!("expected header `timestamp,value`, found `{header}`"),
            ));
        }
        None => return Err(parse_error(0, "empty file".to_string())),
    }
    let mut timestamps = Vec::new();
    let mut values = Vec::new();
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let (ts, value) = line
            .split_once(',')
            .ok_or_else(|| parse_error(line_no, format!("expected `timestamp,value`: `{line}`")))?;
        let ts = parse_timestamp_ms(ts)
            .ok_or_else(|| parse_error(line_no, format!("bad timestamp `{ts}`")))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| parse_error(line_no, format!("bad value `{value}`")))?;
        timestamps.push(ts);
        values.push(value);
    }
    Ok((timestamps, values))
}

/// Parses `combined_windows.json`: `{file: [[start, end], ...]}` into windows in ms.
fn parse_windows_json(path: &Path, text: &str) -> Result<BTreeMap<String, Vec<(i64, i64)>>> {
    let parse_error = |message: String| EvalError::Parse {
        path: path.to_path_buf(),
        line: 0,
        message,
    };
    let raw: BTreeMap<String, Vec<Vec<String>>> =
        serde_json::from_str(text).map_err(|e| parse_error(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, windows) in raw {
        let mut parsed = Vec::with_capacity(windows.len());
        for window in windows {
            let [start, end] = window.as_slice() else {
                return Err(parse_error(format!(
                    "{name}: a window must be [start, end], found {window:?}"
                )));
            };
            let bound = |text: &str| {
                parse_timestamp_ms(text)
                    .ok_or_else(|| parse_error(format!("{name}: bad window bound `{text}`")))
            };
            let (start, end) = (bound(start)?, bound(end)?);
            if end < start {
                return Err(parse_error(format!("{name}: window ends before it starts")));
            }
            parsed.push((start, end));
        }
        parsed.sort_unstable();
        out.insert(name, parsed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn parses_window_json_with_microsecond_suffix() {
        let json = r#"{"a/x.csv": [["2014-01-01 00:00:00.000000", "2014-01-01 01:00:00.000000"]], "b/y.csv": []}"#;
        let parsed = parse_windows_json(&PathBuf::from("w.json"), json).unwrap();
        assert_eq!(
            parsed["a/x.csv"],
            vec![(1_388_534_400_000, 1_388_538_000_000)]
        );
        assert!(parsed["b/y.csv"].is_empty());
    }

    #[test]
    fn rejects_malformed_window() {
        let json = r#"{"a/x.csv": [["2014-01-01 00:00:00.000000"]]}"#;
        let err = parse_windows_json(&PathBuf::from("w.json"), json).unwrap_err();
        assert!(
            err.to_string().contains("a window must be [start, end]"),
            "{err}"
        );
    }
}
