//! The edge pipeline over real sensor recordings (NAB and SKAB, `../shared/data`): every
//! row comes out (rows in = rows out + dead-lettered + late), and `detect` raises an alert
//! inside every labelled anomaly window of the industrial machine-temperature series.
//!
//! The data is found through one setting, `ISTHMUS_DATA` (default `../shared/data` next to
//! this repository). Where it is absent these tests say so and skip; CI requires it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;
use isthmus_engine::runtime::RunOptions;
use serde_json::Value;

/// Score above which `detect` raises an alert in these tests.
const THRESHOLD: f64 = 4.0;

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ISTHMUS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("nab").is_dir() && dir.join("skab").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: real data not found at {} (set ISTHMUS_DATA to the folder holding nab/ and skab/)",
            dir.display()
        );
        None
    }
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(csv_files(&path));
        } else if path.extension().is_some_and(|e| e == "csv") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn data_rows(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
        - 1
}

struct Scored {
    rows: Vec<Value>,
    dead_letters: usize,
    late: u64,
}

/// Runs csv → detect → jsonl over one file and reads everything back.
fn score_file(
    work: &Path,
    csv: &Path,
    delimiter: &str,
    timestamp_column: &str,
    columns: &[&str],
) -> Scored {
    let out = work.join("scored.jsonl");
    let dead = work.join("dead.jsonl");
    let columns: Vec<String> = columns.iter().map(|c| format!("{c:?}")).collect();
    let pipeline = format!(
        r#"
[node]
id = "edge-real-data"
role = "edge"

[sources.recording]
type = "csv"
path = {path:?}
delimiter = {delimiter:?}
timestamp_column = {timestamp_column:?}

[transforms.score]
type = "detect"
inputs = ["recording"]
columns = [{columns}]

[sinks.scored]
type = "jsonl"
inputs = ["score"]
path = {out:?}

[sinks.rejected]
type = "jsonl"
inputs = ["recording.dead_letter"]
path = {dead:?}
"#,
        path = csv.display().to_string(),
        columns = columns.join(", "),
        out = out.display().to_string(),
        dead = dead.display().to_string(),
    );
    let file = work.join("pipeline.toml");
    std::fs::write(&file, pipeline).unwrap();
    let (_, report) = isthmus::run_files(&[file], &RunOptions::default()).expect("pipeline runs");
    let rows = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dead_letters = std::fs::read_to_string(&dead).unwrap().lines().count();
    Scored {
        rows,
        dead_letters,
        late: report.nodes[0].late,
    }
}

fn parse_time(text: &str) -> NaiveDateTime {
    for format in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text.trim_end_matches('Z'), format) {
            return t;
        }
    }
    panic!("unparseable time {text}");
}

fn score_of(row: &Value) -> f64 {
    row["score"].as_f64().expect("score column")
}

#[test]
fn every_nab_row_goes_through_and_machine_temperature_windows_are_detected() {
    let Some(data) = data_dir() else { return };
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(
        &std::fs::read_to_string(data.join("nab/combined_windows.json")).unwrap(),
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    for csv in csv_files(&data.join("nab")) {
        let key = csv
            .strip_prefix(data.join("nab"))
            .unwrap()
            .display()
            .to_string();
        let scored = score_file(work.path(), &csv, ",", "timestamp", &["value"]);
        let rows_in = data_rows(&csv);
        assert_eq!(
            rows_in,
            scored.rows.len() + scored.dead_letters + scored.late as usize,
            "{key}: rows in != rows out + dead-lettered + late"
        );
        let file_windows: Vec<(NaiveDateTime, NaiveDateTime)> = windows
            .get(&key)
            .map(|w| {
                w.iter()
                    .map(|(a, b)| (parse_time(a), parse_time(b)))
                    .collect()
            })
            .unwrap_or_default();
        let alerts: Vec<NaiveDateTime> = scored
            .rows
            .iter()
            .filter(|r| score_of(r) > THRESHOLD)
            .map(|r| parse_time(r["ts"].as_str().unwrap()))
            .collect();
        let inside = alerts
            .iter()
            .filter(|t| file_windows.iter().any(|(a, b)| *t >= a && *t <= b))
            .count();
        let detected = file_windows
            .iter()
            .filter(|(a, b)| alerts.iter().any(|t| t >= a && t <= b))
            .count();
        let precision = if alerts.is_empty() {
            f64::NAN
        } else {
            inside as f64 / alerts.len() as f64
        };
        let recall = if file_windows.is_empty() {
            f64::NAN
        } else {
            detected as f64 / file_windows.len() as f64
        };
        report.push(format!(
            "{key:<60} rows {rows_in:>6} alerts {:>5} windows {detected}/{} precision {precision:.2} recall {recall:.2}",
            alerts.len(),
            file_windows.len()
        ));
        if key == "realKnownCause/machine_temperature_system_failure.csv" {
            assert_eq!(
                file_windows.len(),
                4,
                "the label file has 4 windows for this series"
            );
            assert_eq!(
                detected,
                file_windows.len(),
                "detect must alert inside every labelled window"
            );
        }
    }
    assert_eq!(report.len(), 42, "our NAB copy has 42 series");
    println!(
        "NAB, detect (EWMA z-score) with threshold {THRESHOLD}:\n{}",
        report.join("\n")
    );
}

#[test]
fn every_skab_row_goes_through_with_pointwise_precision_and_recall() {
    let Some(data) = data_dir() else { return };
    let sensors = [
        "Accelerometer1RMS",
        "Accelerometer2RMS",
        "Current",
        "Pressure",
        "Temperature",
        "Thermocouple",
        "Voltage",
        "Volume Flow RateRMS",
    ];
    let work = tempfile::tempdir().unwrap();
    let mut report = Vec::new();
    let files = csv_files(&data.join("skab"));
    assert_eq!(files.len(), 35, "our SKAB copy has 35 files");
    let (mut tp_all, mut fp_all, mut fn_all) = (0usize, 0usize, 0usize);
    for csv in files {
        let key = csv
            .strip_prefix(data.join("skab"))
            .unwrap()
            .display()
            .to_string();
        let scored = score_file(work.path(), &csv, ";", "datetime", &sensors);
        let rows_in = data_rows(&csv);
        assert_eq!(
            rows_in,
            scored.rows.len() + scored.dead_letters + scored.late as usize,
            "{key}: rows lost"
        );
        if scored
            .rows
            .first()
            .is_none_or(|r| r.get("anomaly").is_none())
        {
            report.push(format!("{key:<30} rows {rows_in:>5} (no labels)"));
            continue;
        }
        let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
        for r in &scored.rows {
            let label = r["anomaly"].as_f64().unwrap_or(0.0) > 0.5;
            let alert = score_of(r) > THRESHOLD;
            match (alert, label) {
                (true, true) => tp += 1,
                (true, false) => fp += 1,
                (false, true) => fn_ += 1,
                _ => {}
            }
        }
        tp_all += tp;
        fp_all += fp;
        fn_all += fn_;
        let precision = tp as f64 / (tp + fp).max(1) as f64;
        let recall = tp as f64 / (tp + fn_).max(1) as f64;
        report.push(format!(
            "{key:<30} rows {rows_in:>5} precision {precision:.2} recall {recall:.2}"
        ));
    }
    let precision = tp_all as f64 / (tp_all + fp_all).max(1) as f64;
    let recall = tp_all as f64 / (tp_all + fn_all).max(1) as f64;
    println!(
        "SKAB, detect (EWMA z-score) with threshold {THRESHOLD}:\n{}\nall files: precision {precision:.3} recall {recall:.3}",
        report.join("\n")
    );
    assert!(tp_all > 0, "detect should flag some labelled anomalies");
}
