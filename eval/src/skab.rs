//! The Skoltech Anomaly Benchmark (SKAB): a loader for its semicolon-separated files and
//! pointwise precision / recall / F1 plus detection delay per labelled anomaly segment.

use std::path::Path;

use crate::{EvalError, Result, parse_timestamp_ms, read_to_string};

/// The eight sensor columns of every SKAB file, in file order.
pub const SENSOR_COLUMNS: [&str; 8] = [
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
];

/// One SKAB experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabFile {
    /// Path relative to the SKAB directory, e.g. `valve1/3.csv`.
    pub name: String,
    /// Row timestamps in milliseconds since the epoch (naive time read as UTC).
    pub timestamps: Vec<i64>,
    /// One `[f64; 8]` per row, in the order of [`SENSOR_COLUMNS`].
    pub sensors: Vec<[f64; 8]>,
    /// The `anomaly` label per row; `None` for `anomaly-free.csv`, which has no labels.
    pub anomaly: Option<Vec<bool>>,
    /// The `changepoint` label per row; `None` when the file has no labels.
    pub changepoint: Option<Vec<bool>>,
}

impl SkabFile {
    /// The anomaly label per row, all `false` for a file without labels (the fault-free run).
    pub fn labels(&self) -> Vec<bool> {
        self.anomaly
            .clone()
            .unwrap_or_else(|| vec![false; self.timestamps.len()])
    }
}

/// Loads one SKAB CSV; `name` is what the result is called (usually the relative path).
pub fn load_skab_file(path: &Path, name: &str) -> Result<SkabFile> {
    let text = read_to_string(path)?;
    let parse_error = |line: usize, message: String| EvalError::Parse {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut lines = text.lines().enumerate();
    let header: Vec<&str> = match lines.next() {
        Some((_, header)) => header.trim().split(';').collect(),
        None => return Err(parse_error(0, "empty file".to_string())),
    };
    let labelled = match header.as_slice() {
        ["datetime", sensors @ .., "anomaly", "changepoint"] if *sensors == SENSOR_COLUMNS => true,
        ["datetime", sensors @ ..] if *sensors == SENSOR_COLUMNS => false,
        _ => {
            return Err(parse_error(
                1,
                format!(
                    "expected header `datetime;{}[;anomaly;changepoint]`",
                    SENSOR_COLUMNS.join(";")
                ),
            ));
        }
    };
    let width = header.len();
    let mut file = SkabFile {
        name: name.to_string(),
        timestamps: Vec::new(),
        sensors: Vec::new(),
        anomaly: labelled.then(Vec::new),
        changepoint: labelled.then(Vec::new),
    };
    for (index, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let line_no = index + 1;
        let fields: Vec<&str> = line.trim().split(';').collect();
        if fields.len() != width {
            return Err(parse_error(
                line_no,
                format!("expected {width} fields, found {}", fields.len()),
            ));
        }
        let ts = parse_timestamp_ms(fields[0])
            .ok_or_else(|| parse_error(line_no, format!("bad datetime `{}`", fields[0])))?;
        let number = |col: usize| {
            fields[col].trim().parse::<f64>().map_err(|_| {
                parse_error(
                    line_no,
                    format!("bad number `{}` in column {}", fields[col], header[col]),
                )
            })
        };
        let mut sensors = [0.0; 8];
        for (k, value) in sensors.iter_mut().enumerate() {
            *value = number(k + 1)?;
        }
        file.timestamps.push(ts);
        file.sensors.push(sensors);
        if let (Some(anomaly), Some(changepoint)) = (&mut file.anomaly, &mut file.changepoint) {
            anomaly.push(number(9)? >= 0.5);
            changepoint.push(number(10)? >= 0.5);
        }
    }
    Ok(file)
}

/// Loads every `*.csv` one directory below `skab_dir` (`valve1/`, `valve2/`, `other/`,
/// `anomaly-free/`), sorted by directory and then by file number.
pub fn load_skab_dir(skab_dir: &Path) -> Result<Vec<SkabFile>> {
    let read_dir = |dir: &Path| {
        std::fs::read_dir(dir).map_err(|source| EvalError::Io {
            path: dir.to_path_buf(),
            source,
        })
    };
    let mut paths = Vec::new();
    for entry in read_dir(skab_dir)? {
        let dir = entry
            .map_err(|source| EvalError::Io {
                path: skab_dir.to_path_buf(),
                source,
            })?
            .path();
        if !dir.is_dir() {
            continue;
        }
        for file in read_dir(&dir)? {
            let path = file
                .map_err(|source| EvalError::Io {
                    path: dir.clone(),
                    source,
                })?
                .path();
            if path.extension().is_some_and(|e| e == "csv") {
                paths.push(path);
            }
        }
    }
    let sort_key = |path: &Path| {
        let dir = path
            .parent()
            .and_then(Path::file_name)
            .map(|d| d.to_string_lossy().into_owned())
            .unwrap_or_default();
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        (dir, stem.parse::<u64>().unwrap_or(u64::MAX), stem)
    };
    paths.sort_by_key(|p| sort_key(p));
    paths
        .iter()
        .map(|path| {
            let (dir, _, _) = sort_key(path);
            let file = path.file_name().unwrap_or_default().to_string_lossy();
            load_skab_file(path, &format!("{dir}/{file}"))
        })
        .collect()
}

/// One contiguous run of anomalous rows and how quickly it was detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// First anomalous row (index).
    pub first_row: usize,
    /// Last anomalous row (index, inclusive).
    pub last_row: usize,
    /// Time from the segment's first row to the first alert inside it; `None` if missed.
    pub delay_ms: Option<i64>,
    /// Rows from the segment's first row to the first alert inside it; `None` if missed.
    pub delay_rows: Option<usize>,
}

/// Pointwise confusion counts and derived rates.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Confusion {
    /// Anomalous rows with an alert.
    pub tp: usize,
    /// Normal rows with an alert.
    pub fp: usize,
    /// Anomalous rows without an alert.
    pub fn_: usize,
    /// Normal rows without an alert.
    pub tn: usize,
}

impl Confusion {
    /// `tp / (tp + fp)`; `None` when nothing was alerted.
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }

    /// `tp / (tp + fn)`; `None` when no row is anomalous.
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2 tp / (2 tp + fp + fn)` (the harmonic mean of precision and recall); `None` when
    /// there are neither anomalous rows nor alerts.
    pub fn f1(&self) -> Option<f64> {
        ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    fn add(&mut self, other: &Confusion) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
        self.tn += other.tn;
    }
}

fn ratio(numerator: usize, denominator: usize) -> Option<f64> {
    (denominator > 0).then(|| numerator as f64 / denominator as f64)
}

/// A detector's result on one SKAB file.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabFileResult {
    /// The file name.
    pub name: String,
    /// Pointwise counts over all rows.
    pub confusion: Confusion,
    /// Every labelled anomaly segment, in order, with its detection delay.
    pub segments: Vec<Segment>,
}

/// Scores alerts (one bool per row) against anomaly labels (one bool per row).
pub fn evaluate(
    name: &str,
    timestamps: &[i64],
    labels: &[bool],
    alerts: &[bool],
) -> Result<SkabFileResult> {
    if labels.len() != timestamps.len() || alerts.len() != timestamps.len() {
        return Err(EvalError::InvalidInput {
            series: name.to_string(),
            message: format!(
                "{} timestamps, {} labels and {} alerts: one of each per row expected",
                timestamps.len(),
                labels.len(),
                alerts.len()
            ),
        });
    }
    let mut confusion = Confusion::default();
    for (&label, &alert) in labels.iter().zip(alerts) {
        match (label, alert) {
            (true, true) => confusion.tp += 1,
            (false, true) => confusion.fp += 1,
            (true, false) => confusion.fn_ += 1,
            (false, false) => confusion.tn += 1,
        }
    }
    let mut segments = Vec::new();
    let mut row = 0;
    while row < labels.len() {
        if !labels[row] {
            row += 1;
            continue;
        }
        let first_row = row;
        while row < labels.len() && labels[row] {
            row += 1;
        }
        let last_row = row - 1;
        let hit = (first_row..=last_row).find(|&r| alerts[r]);
        segments.push(Segment {
            first_row,
            last_row,
            delay_ms: hit.map(|r| timestamps[r] - timestamps[first_row]),
            delay_rows: hit.map(|r| r - first_row),
        });
    }
    Ok(SkabFileResult {
        name: name.to_string(),
        confusion,
        segments,
    })
}

/// [`evaluate`] on a loaded file; a file without labels counts every row as normal.
pub fn evaluate_file(file: &SkabFile, alerts: &[bool]) -> Result<SkabFileResult> {
    evaluate(&file.name, &file.timestamps, &file.labels(), alerts)
}

/// A detector's results summed over SKAB files.
#[derive(Debug, Clone, PartialEq)]
pub struct SkabTotals {
    /// Files scored.
    pub files: usize,
    /// Pointwise counts pooled over all files.
    pub confusion: Confusion,
    /// Mean of the per-file F1 over files where it is defined.
    pub mean_file_f1: Option<f64>,
    /// Labelled anomaly segments.
    pub segments: usize,
    /// Segments with at least one alert inside.
    pub detected: usize,
    /// Mean detection delay over detected segments, in milliseconds.
    pub mean_delay_ms: Option<f64>,
    /// Median detection delay over detected segments, in milliseconds.
    pub median_delay_ms: Option<f64>,
}

/// Sums per-file results into totals.
pub fn totals(results: &[SkabFileResult]) -> SkabTotals {
    let mut confusion = Confusion::default();
    let mut file_f1 = Vec::new();
    let mut delays = Vec::new();
    let mut segments = 0;
    for result in results {
        confusion.add(&result.confusion);
        file_f1.extend(result.confusion.f1());
        segments += result.segments.len();
        delays.extend(result.segments.iter().filter_map(|s| s.delay_ms));
    }
    delays.sort_unstable();
    let median_delay_ms = match delays.len() {
        0 => None,
        n if n % 2 == 1 => Some(delays[n / 2] as f64),
        n => Some((delays[n / 2 - 1] + delays[n / 2]) as f64 / 2.0),
    };
    SkabTotals {
        files: results.len(),
        confusion,
        mean_file_f1: (!file_f1.is_empty())
            .then(|| file_f1.iter().sum::<f64>() / file_f1.len() as f64),
        segments,
        detected: delays.len(),
        mean_delay_ms: (!delays.is_empty())
            .then(|| delays.iter().sum::<i64>() as f64 / delays.len() as f64),
        median_delay_ms,
    }
}
