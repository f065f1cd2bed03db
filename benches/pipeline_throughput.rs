//! Events per second per core through the engine, each next to a hand-written Rust loop
//! doing the same work, measured in the same run and reported as a ratio:
//!
//! 1. simulator → filter → null sink, against a loop that generates the same readings
//!    (same generator, same daily drift and noise model) and tests the same predicate;
//! 2. csv → detect → filter → null sink, against a loop that reads the same CSV with the
//!    `csv` crate, parses timestamps and numbers, keeps the same per-device EWMA state and
//!    tests the same threshold.
//!
//! `cargo bench --bench pipeline_throughput` runs full sizes (5 rounds, median); under
//! `cargo test` it runs tiny sizes once as a smoke test. One worker: figures are per core.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_engine::runtime::RunOptions;

struct Sizes {
    sim_devices: usize,
    sim_seconds: usize,
    csv_rows: usize,
    rounds: usize,
}

fn run_engine(pipeline: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let (_, report) = isthmus::run_files(&[pipeline.to_path_buf()], &RunOptions::default())
        .expect("pipeline runs");
    (started.elapsed(), report.nodes[0].events_in)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

// ---- 1. simulator → filter → null -------------------------------------------------------

/// The hand-written equivalent of simulator → `temperature > 70.0` → discard: the same
/// readings through the simulator's own per-device model, no engine.
fn sim_filter_loop(devices: usize, seconds: usize) -> (Duration, u64, u64) {
    let started = Instant::now();
    let (mut events, mut kept) = (0u64, 0u64);
    let mut out: Vec<(i64, usize, f64, f64, f64, f64)> = Vec::with_capacity(1024);
    let simulator = isthmus_connectors::simulator::SimulatorSource {
        devices,
        duration: isthmus_engine::units::DurationSpec(Duration::from_secs(seconds as u64)),
        seed: 42,
        ..Default::default()
    };
    let generated = simulator.for_each_reading(|ts, device, r| {
        events += 1;
        if r.temperature > 70.0 {
            kept += 1;
            out.push((
                ts,
                device,
                r.temperature,
                r.vibration,
                r.pressure,
                r.current,
            ));
            if out.len() == out.capacity() {
                std::hint::black_box(&out);
                out.clear();
            }
        }
    });
    generated.expect("valid simulator config");
    std::hint::black_box(&out);
    (started.elapsed(), events, kept)
}

fn sim_pipeline(dir: &Path, devices: usize, seconds: usize) -> PathBuf {
    let path = dir.join("sim_filter.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "bench-sim"
[sources.sim]
type = "simulator"
devices = {devices}
duration = "{seconds}s"
seed = 42
[transforms.hot]
type = "filter"
inputs = ["sim"]
predicate = "temperature > 70.0"
[sinks.discard]
type = "null"
inputs = ["hot"]
"#
        ),
    )
    .unwrap();
    path
}

// ---- 2. csv → detect → filter → null ----------------------------------------------------

fn write_csv(dir: &Path, rows: usize) -> PathBuf {
    let path = dir.join("readings.csv");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    writeln!(f, "timestamp,device,value").unwrap();
    let mut state = 0x1234_5678_u64;
    let start = chrono::NaiveDate::from_ymd_opt(2026, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    for i in 0..rows {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let noise = ((state >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
        let device = i % 100;
        let spike = if i % 9973 == 0 { 25.0 } else { 0.0 };
        let t = start + chrono::Duration::seconds((i / 100) as i64);
        writeln!(
            f,
            "{},d{device:03},{:.4}",
            t.format("%Y-%m-%d %H:%M:%S"),
            50.0 + device as f64 * 0.1 + noise + spike
        )
        .unwrap();
    }
    f.flush().unwrap();
    path
}

fn csv_pipeline(dir: &Path, csv: &Path) -> PathBuf {
    let path = dir.join("csv_detect.toml");
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "bench-csv"
[sources.file]
type = "csv"
path = {csv:?}
[transforms.score]
type = "detect"
inputs = ["file"]
key = ["device"]
columns = ["value"]
[transforms.alerts]
type = "filter"
inputs = ["score"]
predicate = "score > 4.0"
[sinks.discard]
type = "null"
inputs = ["alerts"]
"#,
            csv = csv.display().to_string()
        ),
    )
    .unwrap();
    path
}

/// Per-device EWMA z-scores of the value and of its change, as `detect` defines them
/// (alpha 0.05, warm-up 30 rows, means starting at the first value).
#[derive(Default)]
struct Ewma {
    n: u64,
    mean: f64,
    var: f64,
    last: f64,
    change_n: u64,
    change_mean: f64,
    change_var: f64,
}

/// The hand-written equivalent of csv → detect → filter → discard.
fn csv_detect_loop(csv: &Path) -> (Duration, u64, u64) {
    let started = Instant::now();
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(csv)
        .unwrap();
    let mut record = csv::ByteRecord::new();
    let mut state: HashMap<Vec<u8>, Ewma> = HashMap::new();
    let (mut events, mut alerts) = (0u64, 0u64);
    let alpha = 0.05;
    while reader.read_byte_record(&mut record).unwrap() {
        events += 1;
        let ts = chrono::NaiveDateTime::parse_from_str(
            std::str::from_utf8(&record[0]).unwrap(),
            "%Y-%m-%d %H:%M:%S",
        )
        .unwrap()
        .and_utc()
        .timestamp_millis();
        let value: f64 = std::str::from_utf8(&record[2]).unwrap().parse().unwrap();
        let s = match state.get_mut(&record[1]) {
            Some(s) => s,
            None => state.entry(record[1].to_vec()).or_default(),
        };
        if s.n == 0 {
            s.mean = value;
        }
        let floor = (s.mean.abs() * 0.001).max(1e-9);
        let mut score = if s.n >= 30 {
            (value - s.mean).abs() / s.var.sqrt().max(floor)
        } else {
            0.0
        };
        if s.n > 0 {
            let change = value - s.last;
            if s.n >= 30 && s.change_n > 0 {
                score = score.max((change - s.change_mean).abs() / s.change_var.sqrt().max(floor));
            }
            if s.change_n == 0 {
                s.change_mean = change;
            } else {
                let d = change - s.change_mean;
                s.change_mean += alpha * d;
                s.change_var = (1.0 - alpha) * (s.change_var + alpha * d * d);
            }
            s.change_n += 1;
        }
        s.last = value;
        let delta = value - s.mean;
        s.mean += alpha * delta;
        s.var = (1.0 - alpha) * (s.var + alpha * delta * delta);
        s.n += 1;
        if score > 4.0 {
            alerts += 1;
            std::hint::black_box((ts, value, score));
        }
    }
    (started.elapsed(), events, alerts)
}

fn report(name: &str, engine: Duration, baseline: Duration, events: u64) {
    let per_s = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "{name:<34} engine {:>12.0} ev/s/core | hand-written loop {:>12.0} ev/s/core | engine/loop time ratio {:.2}x",
        per_s(engine),
        per_s(baseline),
        engine.as_secs_f64() / baseline.as_secs_f64()
    );
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes = if bench {
        Sizes {
            sim_devices: 1000,
            sim_seconds: 5000,
            csv_rows: 2_000_000,
            rounds: 5,
        }
    } else {
        Sizes {
            sim_devices: 50,
            sim_seconds: 200,
            csv_rows: 20_000,
            rounds: 1,
        }
    };
    if !bench {
        println!(
            "smoke run (tiny sizes, test profile): the figures below are not benchmarks; run `cargo bench --bench pipeline_throughput`"
        );
    }
    let dir = tempfile::tempdir().unwrap();

    let sim = sim_pipeline(dir.path(), sizes.sim_devices, sizes.sim_seconds);
    let (mut engine_t, mut loop_t, mut events) = (Vec::new(), Vec::new(), 0);
    for _ in 0..sizes.rounds {
        let (t, n) = run_engine(&sim);
        engine_t.push(t);
        let (lt, ln, _) = sim_filter_loop(sizes.sim_devices, sizes.sim_seconds);
        loop_t.push(lt);
        assert_eq!(n, ln, "engine and loop saw different numbers of events");
        events = n;
    }
    report(
        "simulator → filter → null",
        median(engine_t),
        median(loop_t),
        events,
    );

    let csv = write_csv(dir.path(), sizes.csv_rows);
    let pipeline = csv_pipeline(dir.path(), &csv);
    let (mut engine_t, mut loop_t, mut events) = (Vec::new(), Vec::new(), 0);
    for _ in 0..sizes.rounds {
        let (t, n) = run_engine(&pipeline);
        engine_t.push(t);
        let (lt, ln, _) = csv_detect_loop(&csv);
        loop_t.push(lt);
        assert_eq!(n, ln);
        events = n;
    }
    report(
        "csv → detect → filter → null",
        median(engine_t),
        median(loop_t),
        events,
    );
}
