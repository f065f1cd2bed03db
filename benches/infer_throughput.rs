//! `infer` with the shipped Burn model (`models/shipped/sim-autoencoder`), one worker:
//!
//! 1. throughput (events/s/core) and per-event latency p50/p99/p99.9 from source read to
//!    sink, for simulator → infer → null with source batches of 1, 64 and 1024 rows, each
//!    next to the same model scoring the same number of rows in batches of that size
//!    outside the engine (a) with Burn's forward pass on NdArray tensors and (b) with the
//!    plain-Rust MLP of the same shape and weights, measured in the same run, as ratios;
//! 2. a paced run at 100 000 events/s (1000 devices at 100 Hz, real time): latency p99
//!    against the 300 µs target.
//!
//! `cargo bench --bench infer_throughput` runs full sizes; under `cargo test` it runs tiny
//! sizes once as a smoke test (the figures are then not benchmarks).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use isthmus_engine::runtime::{Node, RunOptions};
use isthmus_models::{LoadedModel, ModelArtifact};

struct Sizes {
    devices: usize,
    seconds: usize,
    paced_seconds: usize,
    rounds: usize,
}

fn model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/shipped/sim-autoencoder")
}

/// Engine figures of one run.
struct EngineRun {
    elapsed: Duration,
    events: u64,
    p50: u64,
    p99: u64,
    p999: u64,
}

fn pipeline(dir: &Path, name: &str, source: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "bench-infer"
[sources.sim]
type = "simulator"
seed = 42
{source}
[transforms.score]
type = "infer"
inputs = ["sim"]
model = {model:?}
key = ["device"]
[sinks.discard]
type = "null"
inputs = ["score"]
"#,
            model = model_dir().display().to_string()
        ),
    )
    .unwrap();
    path
}

fn run_engine(path: &Path) -> EngineRun {
    let plans = isthmus::load(&[path.to_path_buf()]).expect("bench pipeline validates");
    let nodes: Vec<Node> = plans.into_iter().map(Node::new).collect();
    let started = Instant::now();
    let report = isthmus_engine::runtime::run(&nodes, &RunOptions::default()).expect("runs");
    let elapsed = started.elapsed();
    let sink = nodes[0].component_metrics("discard").expect("sink metrics");
    EngineRun {
        elapsed,
        events: report.nodes[0].events_in,
        p50: sink.latency_quantile_us(0.5),
        p99: sink.latency_quantile_us(0.99),
        p999: sink.latency_quantile_us(0.999),
    }
}

/// Scoring rows of the simulator readings the engine sees (one per reading once a device's
/// window is full), normalised as `infer` does.
fn scoring_rows(model: &LoadedModel, devices: usize, seconds: usize) -> (Vec<f32>, usize) {
    let sim = isthmus_connectors::simulator::SimulatorSource {
        devices,
        duration: isthmus_engine::units::DurationSpec(Duration::from_secs(seconds as u64)),
        seed: 42,
        ..Default::default()
    };
    let mut windows = model.keyed_windows();
    let mut rows = Vec::new();
    let mut count = 0;
    let keys: Vec<String> = (0..devices).map(|d| format!("d{d}")).collect();
    sim.for_each_reading(|_, device, r| {
        let reading = [
            r.temperature as f32,
            r.vibration as f32,
            r.pressure as f32,
            r.current as f32,
        ];
        if let Ok(Some(_)) = windows.push(&keys[device], &reading, &mut rows) {
            count += 1;
        }
    })
    .expect("valid simulator");
    (rows, count)
}

/// Time to score `count` rows in calls of `batch` rows, with Burn or the plain MLP.
fn direct(model: &LoadedModel, rows: &[f32], count: usize, batch: usize, burn: bool) -> Duration {
    let row_len = model.row_len();
    let started = Instant::now();
    for chunk in rows[..count * row_len].chunks(batch * row_len) {
        let n = chunk.len() / row_len;
        let scores = if burn {
            model.score_batch(chunk, n)
        } else {
            model.score_batch_plain(chunk, n)
        };
        std::hint::black_box(scores.expect("valid rows"));
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes = if bench {
        Sizes {
            devices: 1000,
            seconds: 600,
            paced_seconds: 10,
            rounds: 3,
        }
    } else {
        println!(
            "smoke run (tiny sizes, test profile): the figures below are not benchmarks; run `cargo bench --bench infer_throughput`"
        );
        Sizes {
            devices: 50,
            seconds: 60,
            paced_seconds: 1,
            rounds: 1,
        }
    };
    let model = ModelArtifact::load(model_dir()).expect("the shipped model loads");
    let dir = tempfile::tempdir().unwrap();
    let (rows, count) = scoring_rows(&model, sizes.devices, sizes.seconds);
    println!(
        "model: {} window {} × {} features, layers {:?}; {} devices × {} s = {} events",
        model.kind(),
        model.manifest().window,
        model.manifest().feature_count(),
        model.manifest().layer_sizes(),
        sizes.devices,
        sizes.seconds,
        sizes.devices * sizes.seconds
    );
    println!(
        "{:>6} | {:>14} | {:>9} {:>9} {:>9} | {:>14} {:>7} | {:>14} {:>7}",
        "batch",
        "engine ev/s",
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "Burn direct",
        "ratio",
        "plain direct",
        "ratio"
    );
    for batch in [1usize, 64, 1024] {
        let path = pipeline(
            dir.path(),
            &format!("batch{batch}"),
            &format!(
                "devices = {}\nduration = \"{}s\"\nbatch_rows = {batch}",
                sizes.devices, sizes.seconds
            ),
        );
        let (mut engine, mut burn, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        let mut last = None;
        for _ in 0..sizes.rounds {
            let run = run_engine(&path);
            engine.push(run.elapsed);
            burn.push(direct(&model, &rows, count, batch, true));
            plain.push(direct(&model, &rows, count, batch, false));
            last = Some(run);
        }
        let run = last.expect("at least one round");
        let engine_rate = run.events as f64 / median(engine).as_secs_f64();
        let burn_rate = count as f64 / median(burn).as_secs_f64();
        let plain_rate = count as f64 / median(plain).as_secs_f64();
        println!(
            "{batch:>6} | {engine_rate:>14.0} | {:>9} {:>9} {:>9} | {burn_rate:>14.0} {:>6.2}x | {plain_rate:>14.0} {:>6.2}x",
            run.p50,
            run.p99,
            run.p999,
            burn_rate / engine_rate,
            plain_rate / engine_rate,
        );
    }
    println!("(ratio = direct events/s ÷ engine events/s: the engine's cost over the bare model)");

    // Paced: 1000 devices at 100 Hz = 100 000 events/s of real time.
    let devices = if bench { 1000 } else { 100 };
    let path = pipeline(
        dir.path(),
        "paced",
        &format!(
            "devices = {devices}\nrate_hz = 100.0\nduration = \"{}s\"\nrealtime_speed = 1.0",
            sizes.paced_seconds
        ),
    );
    let run = run_engine(&path);
    println!(
        "paced {} events/s for {} s: {} events, latency p50 {} µs, p99 {} µs, p99.9 {} µs (target p99 ≤ 300 µs)",
        devices * 100,
        sizes.paced_seconds,
        run.events,
        run.p50,
        run.p99,
        run.p999
    );
}
