//! Throughput of model scoring: Burn `score_batch` vs the plain-Rust MLP, at batch sizes
//! 1, 64 and 1024, plus the per-key window path and the cost of an online fine-tune.
//!
//! Run: `cargo bench -p isthmus-models --bench forward`. Prints events (rows) per second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use isthmus_models::{Calibrator, CalibratorConfig, LoadedModel, TrainConfig, TrainingData, train};

const WINDOW: usize = 32;

fn series(len: usize) -> Vec<f32> {
    (0..len)
        .map(|t| {
            let t = t as f32;
            20.0 + 10.0 * (t * 0.125).sin() + 0.5 * (t * 1.7).sin()
        })
        .collect()
}

/// Run `f` (which processes `events` events) repeatedly for about `budget`; events/s.
fn rate(budget: Duration, events: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm up
    let started = Instant::now();
    let mut runs = 0u64;
    while started.elapsed() < budget {
        f();
        runs += 1;
    }
    (runs as f64 * events as f64) / started.elapsed().as_secs_f64()
}

fn main() {
    let data = TrainingData::univariate("temp", &series(4000), "bench sine").expect("data");
    let config = TrainConfig {
        hidden: vec![32, 8],
        epochs: 2,
        ..TrainConfig::autoencoder(WINDOW)
    };
    let model: LoadedModel = train(config, &data, |_| {}).expect("train").model;
    let sizes = model.manifest().layer_sizes();
    println!("autoencoder layers {sizes:?}, window {WINDOW}");

    // Rows of normalised windows.
    let mut windows = model.keyed_windows();
    let mut rows = Vec::new();
    for v in series(1024 + WINDOW) {
        windows.push("k", &[v], &mut rows).expect("reading");
    }
    let row_len = model.row_len();
    let budget = Duration::from_millis(1500);
    println!(
        "{:>6} {:>16} {:>16} {:>16}",
        "batch", "burn events/s", "plain events/s", "plain fwd only"
    );
    for batch in [1usize, 64, 1024] {
        let inputs = &rows[..batch * row_len];
        let burn = rate(budget, batch, || {
            black_box(model.score_batch(black_box(inputs), batch).expect("score"));
        });
        let plain = rate(budget, batch, || {
            black_box(
                model
                    .score_batch_plain(black_box(inputs), batch)
                    .expect("score"),
            );
        });
        let mut out = Vec::new();
        let forward_only = rate(budget, batch, || {
            model
                .plain()
                .forward_batch(black_box(inputs), batch, &mut out);
            black_box(&out);
        });
        println!("{batch:>6} {burn:>16.0} {plain:>16.0} {forward_only:>16.0}");
    }

    // The whole hot path for 1024 events over 100 keys: window push, score, calibrate.
    let readings = series(1024);
    let mut windows = model.keyed_windows();
    let mut calibrator = Calibrator::new(CalibratorConfig::default());
    let keys: Vec<String> = (0..100).map(|k| format!("device-{k}")).collect();
    let mut batch_rows = Vec::new();
    let mut batch_keys = Vec::new();
    let mut t = 0usize;
    let mut pipeline = |plain: bool| {
        batch_rows.clear();
        batch_keys.clear();
        for reading in &readings {
            let key = &keys[t % keys.len()];
            t += 1;
            if let Some(k) = windows
                .push(key, &[*reading], &mut batch_rows)
                .expect("reading")
            {
                batch_keys.push(k);
            }
        }
        let scores = if plain {
            model.score_batch_plain(&batch_rows, batch_keys.len())
        } else {
            model.score_batch(&batch_rows, batch_keys.len())
        }
        .expect("score");
        for (k, s) in batch_keys.iter().zip(scores) {
            black_box(calibrator.calibrate(*k, s));
        }
    };
    let burn_path = rate(budget, readings.len(), || pipeline(false));
    let plain_path = rate(budget, readings.len(), || pipeline(true));
    println!(
        "end-to-end (100 keys, batch 1024: windows + score + calibrate): burn {burn_path:.0} events/s, plain {plain_path:.0} events/s"
    );

    // Online fine-tune cost.
    for (steps, rows_used) in [(1usize, 256usize), (5, 256), (5, 1024)] {
        let mut tuned = model.clone();
        let started = Instant::now();
        let report = tuned
            .fine_tune(&rows[..rows_used * row_len], rows_used, steps, 1e-4)
            .expect("fine-tune");
        println!(
            "fine_tune: {steps} steps on {rows_used} windows took {:.2} ms (accepted {})",
            started.elapsed().as_secs_f64() * 1e3,
            report.accepted
        );
    }
}
