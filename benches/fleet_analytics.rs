//! Fleet analytics: what incrementality buys. Anomaly reports of 10 k and 100 k devices run
//! through `csv → fleet (per plant and line: anomalous devices, reports, mean and max score
//! over a sliding 30 s or 300 s event-time window, updated once per event-time second) → null` on 2
//! workers, next to a from-scratch recomputation of every group's metrics after each
//! event-time second of reports, reading the same CSV, measured in the same run and reported
//! as a ratio.
//!
//! An update is one anomaly report entering the window (it also leaves it 30 s later).
//! `cargo bench --bench fleet_analytics` runs full sizes (3 rounds, median); under
//! `cargo test` it runs tiny sizes once as a smoke test.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_engine::runtime::RunOptions;

/// Reports per event-time second.
const REPORTS_PER_SECOND: usize = 2_000;

struct Sizes {
    /// (devices, window in seconds) pairs.
    cases: Vec<(usize, i64)>,
    seconds: usize,
    rounds: usize,
}

/// Writes `seconds × REPORTS_PER_SECOND` reports of `devices` devices (100 per line, 10
/// lines per plant): `ts,device,plant,line,score`.
fn write_reports(path: &Path, devices: usize, seconds: usize) -> usize {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "ts,device,plant,line,score").unwrap();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut n = 0;
    for s in 0..seconds {
        for i in 0..REPORTS_PER_SECOND {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let device = (x % devices as u64) as usize;
            let line = device / 100;
            let ts =
                1_700_000_000_000i64 + s as i64 * 1000 + (i * 1000 / REPORTS_PER_SECOND) as i64;
            let score = 3.0 + (x >> 40) as f64 / (1u64 << 24) as f64 * 5.0;
            writeln!(f, "{ts},d{device},p{},l{line},{score:.4}", line / 10).unwrap();
            n += 1;
        }
    }
    n
}

fn pipeline(dir: &Path, reports: &Path, window_seconds: i64) -> PathBuf {
    let path = dir.join("fleet.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "cloud"
role = "cloud"

[sources.reports]
type = "csv"
path = "{}"
timestamp_column = "ts"
timestamp_format = "unix_ms"
columns = {{ device = "utf8", plant = "utf8", line = "utf8", score = "float64" }}

[transforms.fleet]
type = "fleet"
inputs = ["reports"]
group_by = ["plant", "line"]
anomalous_for = "{window_seconds}s"
score = "score"
resolution = "1s"

[sinks.out]
type = "null"
inputs = ["fleet"]
"#,
            reports.display(),
        ),
    )
    .unwrap();
    path
}

/// The engine on 2 workers: elapsed time and the source-to-sink p99 latency (µs).
fn engine(pipeline: &Path) -> (Duration, u64) {
    let options = RunOptions {
        workers: 2,
        ..RunOptions::default()
    };
    let started = Instant::now();
    let (_, report) = isthmus::run_files(&[pipeline.to_path_buf()], &options).expect("runs");
    (started.elapsed(), report.nodes[0].latency_p99_us)
}

/// Per group: anomalous devices, reports, mean score, max score.
type Metrics = HashMap<(String, String), (usize, usize, f64, f64)>;

/// From scratch: after each second of reports, every group's metrics recomputed over the
/// reports in the window. Returns the elapsed time and the metrics at the end.
fn from_scratch(reports: &Path, window_seconds: i64) -> (Duration, Metrics) {
    let started = Instant::now();
    let text = std::fs::read_to_string(reports).unwrap();
    let mut window: VecDeque<(i64, String, String, String, f64)> = VecDeque::new();
    let mut current_second = None;
    let recompute = |window: &VecDeque<(i64, String, String, String, f64)>| {
        let mut devices: HashMap<(&str, &str), HashSet<&str>> = HashMap::new();
        let mut stats: HashMap<(&str, &str), (usize, f64, f64)> = HashMap::new();
        for (_, device, plant, line, score) in window {
            devices.entry((plant, line)).or_default().insert(device);
            let s = stats.entry((plant, line)).or_insert((0, 0.0, f64::MIN));
            s.0 += 1;
            s.1 += score;
            s.2 = s.2.max(*score);
        }
        let mut m = Metrics::new();
        for (group, (n, sum, max)) in stats {
            m.insert(
                (group.0.to_string(), group.1.to_string()),
                (devices[&group].len(), n, sum / n as f64, max),
            );
        }
        m
    };
    for line in text.lines().skip(1) {
        let mut f = line.split(',');
        let ts: i64 = f.next().unwrap().parse().unwrap();
        let (device, plant, l) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let score: f64 = f.next().unwrap().parse().unwrap();
        let second = ts / 1000;
        if current_second.is_some_and(|c| c != second) {
            std::hint::black_box(recompute(&window));
        }
        current_second = Some(second);
        while window
            .front()
            .is_some_and(|r| r.0 + window_seconds * 1000 <= ts)
        {
            window.pop_front();
        }
        window.push_back((ts, device.into(), plant.into(), l.into(), score));
    }
    let metrics = recompute(&window);
    (started.elapsed(), metrics)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes = if full {
        Sizes {
            cases: vec![(10_000, 30), (100_000, 30), (10_000, 300)],
            seconds: 120,
            rounds: 3,
        }
    } else {
        Sizes {
            cases: vec![(1_000, 2)],
            seconds: 3,
            rounds: 1,
        }
    };
    let dir = tempfile::tempdir().unwrap();
    println!(
        "fleet analytics, {REPORTS_PER_SECOND} reports per event-time second, updated every second, engine on 2 workers"
    );
    println!(
        "| devices | window | reports | engine updates/s | engine p99 | from scratch updates/s | ratio |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for &(devices, window) in &sizes.cases {
        let reports = dir.path().join(format!("reports-{devices}.csv"));
        let n = write_reports(&reports, devices, sizes.seconds);
        let pipeline = pipeline(dir.path(), &reports, window);
        let (mut engine_times, mut scratch_times, mut p99s) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..sizes.rounds {
            let (t, p99) = engine(&pipeline);
            engine_times.push(t);
            p99s.push(p99);
            let (t, metrics) = from_scratch(&reports, window);
            assert!(!metrics.is_empty());
            scratch_times.push(t);
        }
        p99s.sort();
        let (e, s) = (median(engine_times), median(scratch_times));
        let rate = |d: Duration| n as f64 / d.as_secs_f64();
        println!(
            "| {devices} | {window} s | {n} | {:.0} | {} µs | {:.0} | {:.2}× |",
            rate(e),
            p99s[p99s.len() / 2],
            rate(s),
            rate(e) / rate(s)
        );
    }
}
