//! End-to-end tests: training, scoring, artifacts, calibration and adaptation.

use std::sync::OnceLock;

use isthmus_models::manifest::{MANIFEST_FILE, WEIGHTS_FILE};
use isthmus_models::{
    Adapter, AdapterConfig, Calibrator, CalibratorConfig, KeyedWindows, LoadedModel, ModelArtifact,
    ModelError, ModelKind, NormalisationMethod, TrainConfig, TrainedModel, TrainingData,
    tail_probability, train,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WINDOW: usize = 16;

/// A sine of period 50 readings plus uniform noise, scaled and offset.
fn sine(len: usize, seed: u64, amplitude: f32, offset: f32, noise: f32) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|t| {
            let phase = t as f32 * std::f32::consts::TAU / 50.0;
            offset + amplitude * phase.sin() + rng.random_range(-noise..noise)
        })
        .collect()
}

fn autoencoder_config(seed: u64) -> TrainConfig {
    TrainConfig {
        hidden: vec![16, 4],
        epochs: 8,
        batch_size: 32,
        learning_rate: 5e-3,
        seed,
        ..TrainConfig::autoencoder(WINDOW)
    }
}

fn train_autoencoder(seed: u64) -> TrainedModel {
    let data = TrainingData::univariate("temp", &sine(2000, 1, 10.0, 20.0, 0.5), "synthetic sine")
        .expect("valid data");
    train(autoencoder_config(seed), &data, |_| {}).expect("training succeeds")
}

/// One autoencoder shared by the tests that only read it.
fn autoencoder() -> &'static TrainedModel {
    static MODEL: OnceLock<TrainedModel> = OnceLock::new();
    MODEL.get_or_init(|| train_autoencoder(7))
}

/// Rows for every full window of `series` (key "k").
fn rows_of(model: &LoadedModel, series: &[f32]) -> (Vec<f32>, usize) {
    let mut windows = model.keyed_windows();
    let mut rows = Vec::new();
    let mut count = 0;
    for v in series {
        if windows
            .push("k", &[*v], &mut rows)
            .expect("valid reading")
            .is_some()
        {
            count += 1;
        }
    }
    (rows, count)
}

#[test]
fn training_loss_falls_and_reports_every_epoch() {
    let trained = autoencoder();
    assert_eq!(trained.history.len(), 8);
    let first = trained.history[0].loss;
    let last = trained.history[7].loss;
    assert!(last < first * 0.5, "loss {first} -> {last} did not halve");
    assert_eq!(trained.model.manifest().training.final_loss, last);
    assert_eq!(trained.model.manifest().training.windows, 2000 - WINDOW + 1);
}

#[test]
fn spike_and_level_shift_score_far_above_normal() {
    let model = &autoencoder().model;
    let mut series = sine(600, 99, 10.0, 20.0, 0.5);
    series[300] += 15.0; // spike
    for v in &mut series[450..] {
        *v += 12.0; // level shift
    }
    let (rows, count) = rows_of(model, &series);
    let scores = model.score_batch(&rows, count).expect("scores");
    // Row i covers readings i..i+WINDOW.
    let normal_max = scores[..300 - WINDOW].iter().cloned().fold(0.0, f32::max);
    let spike = scores[300 - WINDOW + 1..=300]
        .iter()
        .cloned()
        .fold(0.0, f32::max);
    let shift = scores[450 - WINDOW + 1..]
        .iter()
        .cloned()
        .fold(0.0, f32::max);
    assert!(
        spike > 5.0 * normal_max,
        "spike {spike} vs normal max {normal_max}"
    );
    assert!(
        shift > 5.0 * normal_max,
        "shift {shift} vs normal max {normal_max}"
    );
}

#[test]
fn plain_forward_matches_burn_forward() {
    let model = &autoencoder().model;
    let (rows, count) = rows_of(model, &sine(300, 5, 10.0, 20.0, 2.0));
    let burn = model.score_batch(&rows, count).unwrap();
    let plain = model.score_batch_plain(&rows, count).unwrap();
    assert_eq!(burn.len(), count);
    for (b, p) in burn.iter().zip(&plain) {
        assert!((b - p).abs() <= 1e-4 * b.abs().max(1.0), "{b} vs {p}");
    }
    // Raw network outputs too, not only the scores.
    let mut outputs = Vec::new();
    model.plain().forward_batch(&rows, count, &mut outputs);
    assert_eq!(outputs.len(), count * WINDOW);
}

#[test]
fn save_then_load_gives_identical_scores_and_a_small_artifact() {
    let trained = autoencoder();
    let dir = tempfile::tempdir().unwrap();
    let written = trained.save(dir.path()).unwrap();
    let loaded = ModelArtifact::load(dir.path()).unwrap();
    assert_eq!(loaded.manifest(), &written);
    let via_manifest = ModelArtifact::load(dir.path().join(MANIFEST_FILE)).unwrap();
    assert_eq!(via_manifest.manifest(), &written);
    assert_eq!(loaded.kind(), ModelKind::Autoencoder);
    assert_eq!(loaded.manifest().input_features, vec!["temp".to_string()]);
    let (rows, count) = rows_of(&loaded, &sine(200, 3, 10.0, 20.0, 0.5));
    assert_eq!(
        trained.model.score_batch(&rows, count).unwrap(),
        loaded.score_batch(&rows, count).unwrap()
    );
    let size = std::fs::metadata(dir.path().join(WEIGHTS_FILE))
        .unwrap()
        .len();
    assert!(size < 100_000, "weights file is {size} bytes");
    let manifest_text = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
    assert!(manifest_text.contains("\"kind\": \"autoencoder\""));
}

#[test]
fn same_seed_gives_identical_weights_and_file_different_seed_does_not() {
    let a = train_autoencoder(7);
    let b = autoencoder();
    assert_eq!(a.model.plain(), b.model.plain());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let manifest_a = a.save(dir_a.path()).unwrap();
    let manifest_b = b.save(dir_b.path()).unwrap();
    assert_eq!(manifest_a.weights, manifest_b.weights);
    let c = train_autoencoder(8);
    assert_ne!(a.model.plain(), c.model.plain());
}

#[test]
fn missing_and_corrupt_artifacts_are_clear_errors() {
    let trained = autoencoder();
    let root = tempfile::tempdir().unwrap();

    let missing = root.path().join("nope");
    assert!(matches!(
        ModelArtifact::load(&missing),
        Err(ModelError::NotFound { .. })
    ));

    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = ModelArtifact::load(&empty).unwrap_err();
    assert!(matches!(err, ModelError::NotFound { ref path } if path.ends_with(MANIFEST_FILE)));

    let fresh = |name: &str| {
        let dir = root.path().join(name);
        trained.save(&dir).unwrap();
        dir
    };

    let bad_json = fresh("bad_json");
    std::fs::write(bad_json.join(MANIFEST_FILE), "{ \"kind\": ").unwrap();
    let err = ModelArtifact::load(&bad_json).unwrap_err();
    assert!(matches!(err, ModelError::ManifestParse { .. }), "{err}");
    assert!(err.to_string().contains("manifest.json"), "{err}");

    let edit_manifest = |dir: &std::path::Path, from: &str, to: &str| {
        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE)).unwrap();
        assert!(text.contains(from), "manifest lacks {from}");
        std::fs::write(dir.join(MANIFEST_FILE), text.replacen(from, to, 1)).unwrap();
    };

    let future = fresh("future");
    edit_manifest(&future, "\"format_version\": 1", "\"format_version\": 99");
    let err = ModelArtifact::load(&future).unwrap_err();
    assert!(matches!(err, ModelError::ManifestInvalid { .. }), "{err}");

    // The manifest declares another bottleneck: weights no longer fit.
    let reshaped = fresh("reshaped");
    edit_manifest(
        &reshaped,
        "\"hidden\": [\n    16,\n    4\n  ]",
        "\"hidden\": [\n    16,\n    5\n  ]",
    );
    let err = ModelArtifact::load(&reshaped).unwrap_err();
    assert!(matches!(err, ModelError::RecordMismatch { .. }), "{err}");
    assert!(err.to_string().contains("shape mismatch"), "{err}");

    let truncated = fresh("truncated");
    let weights = std::fs::read(truncated.join(WEIGHTS_FILE)).unwrap();
    std::fs::write(truncated.join(WEIGHTS_FILE), &weights[..weights.len() / 2]).unwrap();
    let err = ModelArtifact::load(&truncated).unwrap_err();
    assert!(matches!(err, ModelError::RecordCorrupt { .. }), "{err}");

    let flipped = fresh("flipped");
    let mut weights = std::fs::read(flipped.join(WEIGHTS_FILE)).unwrap();
    let middle = weights.len() / 2;
    weights[middle] ^= 0x40;
    std::fs::write(flipped.join(WEIGHTS_FILE), &weights).unwrap();
    let err = ModelArtifact::load(&flipped).unwrap_err();
    assert!(matches!(err, ModelError::RecordCorrupt { .. }), "{err}");

    let no_weights = fresh("no_weights");
    std::fs::remove_file(no_weights.join(WEIGHTS_FILE)).unwrap();
    assert!(matches!(
        ModelArtifact::load(&no_weights),
        Err(ModelError::NotFound { .. })
    ));
}

#[test]
fn garbage_weights_with_a_matching_checksum_are_rejected_without_panicking() {
    let trained = autoencoder();
    let dir = tempfile::tempdir().unwrap();
    trained.save(dir.path()).unwrap();
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(dir.path().join(WEIGHTS_FILE), &garbage).unwrap();
    // Rewrite size and checksum so only the decoder can notice.
    let mut manifest = ModelArtifact::read_manifest(dir.path()).unwrap();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in &garbage {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    manifest.weights.bytes = garbage.len() as u64;
    manifest.weights.fnv1a64 = format!("{hash:016x}");
    std::fs::write(
        dir.path().join(MANIFEST_FILE),
        serde_json::to_string(&manifest).unwrap(),
    )
    .unwrap();
    let err = ModelArtifact::load(dir.path()).unwrap_err();
    assert!(matches!(err, ModelError::RecordCorrupt { .. }), "{err}");
}

#[test]
fn feature_validation_names_what_is_missing() {
    let model = &autoencoder().model;
    model.validate_features(&["humidity", "temp"]).unwrap();
    let err = model.validate_features(&["humidity"]).unwrap_err();
    match err {
        ModelError::MissingFeatures { missing, .. } => assert_eq!(missing, vec!["temp"]),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn wrong_input_sizes_are_errors() {
    let model = &autoencoder().model;
    assert!(matches!(
        model.score_batch(&[0.0; 10], 1),
        Err(ModelError::InvalidInput(_))
    ));
    assert!(model.score_batch(&[], 0).unwrap().is_empty());
    assert!(model.forecast_batch(&[0.0; WINDOW], 1).is_err());
    let mut windows = model.keyed_windows();
    let mut rows = Vec::new();
    assert!(windows.push("k", &[1.0, 2.0], &mut rows).is_err());
    assert!(windows.push("k", &[f32::NAN], &mut rows).is_err());
}

#[test]
fn keyed_windows_emit_full_windows_in_order_per_key() {
    let norm = isthmus_models::Normalisation {
        method: NormalisationMethod::Zscore,
        center: vec![0.0, 10.0],
        scale: vec![1.0, 2.0],
    };
    let mut windows = KeyedWindows::new(3, norm);
    let mut rows = Vec::new();
    let mut emitted = Vec::new();
    for t in 0..5 {
        for key in ["a", "b"] {
            let base = if key == "a" { 0.0 } else { 100.0 };
            let reading = [base + t as f32, 10.0 + 2.0 * t as f32];
            if let Some(k) = windows.push(key, &reading, &mut rows).unwrap() {
                emitted.push((k, t));
            }
        }
    }
    assert_eq!(
        emitted,
        vec![(0, 2), (1, 2), (0, 3), (1, 3), (0, 4), (1, 4)]
    );
    assert_eq!(windows.row_len(), 6);
    // Key a at t = 4: readings 2, 3, 4, oldest first; feature 2 normalised to t.
    assert_eq!(&rows[24..30], &[2.0, 2.0, 3.0, 3.0, 4.0, 4.0]);
    // Key b at t = 2.
    assert_eq!(&rows[6..12], &[100.0, 0.0, 101.0, 1.0, 102.0, 2.0]);
    assert_eq!(windows.key_name(1), Some("b"));
    windows.reset("a");
    assert_eq!(windows.push("a", &[0.0, 0.0], &mut rows).unwrap(), None);
}

#[test]
fn forecaster_predicts_the_next_reading_and_flags_a_level_shift() {
    let data =
        TrainingData::univariate("flow", &sine(2000, 2, 5.0, 50.0, 0.2), "synthetic").unwrap();
    let config = TrainConfig {
        hidden: vec![16],
        epochs: 6,
        batch_size: 32,
        learning_rate: 5e-3,
        normalisation: NormalisationMethod::Robust,
        ..TrainConfig::forecaster(8)
    };
    let trained = train(config, &data, |_| {}).unwrap();
    assert!(trained.history[5].loss < trained.history[0].loss);
    let model = &trained.model;
    assert_eq!(model.row_len(), 9);
    let mut series = sine(300, 4, 5.0, 50.0, 0.2);
    for v in &mut series[200..] {
        *v += 8.0;
    }
    let (rows, count) = rows_of(model, &series);
    let forecast = model.forecast_batch(&rows, count).unwrap();
    // Row i predicts reading i + 8.
    let typical_error: f32 = (0..150)
        .map(|i| (forecast.predicted[i] - series[i + 8]).abs())
        .sum::<f32>()
        / 150.0;
    assert!(
        typical_error < 1.0,
        "mean absolute error {typical_error} in raw units"
    );
    let normal_max = forecast.scores[..190].iter().cloned().fold(0.0, f32::max);
    let at_shift = forecast.scores[200 - 8];
    assert!(
        at_shift > 3.0 * normal_max,
        "shift {at_shift} vs normal max {normal_max}"
    );
    let dir = tempfile::tempdir().unwrap();
    trained.save(dir.path()).unwrap();
    let loaded = ModelArtifact::load(dir.path()).unwrap();
    assert_eq!(loaded.forecast_batch(&rows, count).unwrap(), forecast);
}

#[test]
fn multivariate_rows_with_window_one() {
    let mut rng = StdRng::seed_from_u64(11);
    let mut values = Vec::new();
    for _ in 0..1500 {
        // Three correlated features: b = 2a, c = a + b.
        let a: f32 = rng.random_range(-1.0..1.0);
        let b = 2.0 * a + rng.random_range(-0.05..0.05);
        values.extend_from_slice(&[a, b, a + b]);
    }
    let mut data =
        TrainingData::new(vec!["a".into(), "b".into(), "c".into()], "synthetic").unwrap();
    data.push_series(&values).unwrap();
    let config = TrainConfig {
        hidden: vec![8, 2],
        epochs: 15,
        batch_size: 32,
        learning_rate: 1e-2,
        ..TrainConfig::autoencoder(1)
    };
    let model = train(config, &data, |_| {}).unwrap().model;
    let mut windows = model.keyed_windows();
    let mut rows = Vec::new();
    windows.push("pump", &[0.5, 1.0, 1.5], &mut rows).unwrap();
    windows.push("pump", &[0.5, -1.0, -0.5], &mut rows).unwrap(); // breaks b = 2a
    let scores = model.score_batch(&rows, 2).unwrap();
    assert!(scores[1] > 5.0 * scores[0], "{scores:?}");
}

#[test]
fn fine_tune_adapts_to_a_new_normal_and_rolls_back_when_worse() {
    let mut model = autoencoder().model.clone();
    // New normal: larger amplitude.
    let (rows, count) = rows_of(&model, &sine(400, 21, 14.0, 20.0, 0.5));
    let report = model.fine_tune(&rows, count, 20, 2e-3).unwrap();
    assert!(report.accepted);
    assert!(report.loss_after < report.loss_before, "{report:?}");
    assert_eq!(model.manifest().training.fine_tune_steps, 20);
    // A huge learning rate makes things worse: the model stays as it was.
    let before = model.plain().clone();
    let report = model.fine_tune(&rows, count, 3, 10.0).unwrap();
    if !report.accepted {
        assert_eq!(model.plain(), &before);
    }
    // Fine-tuning a model loaded from disk works too.
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let mut loaded = ModelArtifact::load(dir.path()).unwrap();
    let report = loaded.fine_tune(&rows, count, 5, 1e-3).unwrap();
    assert!(report.loss_after < report.loss_before, "{report:?}");
}

#[test]
fn adapter_fine_tunes_every_n_rows_on_normal_rows_only() {
    let mut model = autoencoder().model.clone();
    let (rows, count) = rows_of(&model, &sine(300, 8, 10.0, 20.0, 0.5));
    let config = AdapterConfig {
        every_rows: 100,
        buffer_rows: 32,
        steps: 2,
        learning_rate: 1e-4,
        normal_below: 2.0,
    };
    let mut adapter = Adapter::new(config, model.row_len());
    let mut reports = 0;
    for row in rows.chunks_exact(model.row_len()).take(count) {
        adapter.observe(row, 0.5);
        adapter.observe(row, 9.0); // anomalous: counted, not kept
        if adapter.maybe_fine_tune(&mut model).unwrap().is_some() {
            reports += 1;
        }
    }
    assert_eq!(adapter.buffered_rows(), 32);
    assert_eq!(reports, 2 * count / 100);
}

#[test]
fn calibrator_makes_keys_with_different_ranges_comparable() {
    let mut calibrator = Calibrator::new(CalibratorConfig {
        warmup: 100,
        ..CalibratorConfig::default()
    });
    let mut rng = StdRng::seed_from_u64(3);
    // Key 0 errors around 0.01, key 1 around 5.0 (500× larger).
    for i in 0..2000 {
        for (key, scale) in [(0usize, 0.01f32), (1, 5.0)] {
            let raw = scale * rng.random_range(0.5..1.5);
            let z = calibrator.calibrate(key, raw);
            if i < 100 {
                assert_eq!(z, 0.0, "warm-up must emit 0");
            } else {
                assert!(z < 4.0, "normal score calibrated to {z}");
            }
        }
    }
    assert!(calibrator.is_warm(0) && calibrator.is_warm(1));
    // The same relative jump (×20) gives nearly the same z on both keys.
    let z0 = calibrator.calibrate(0, 0.2);
    let z1 = calibrator.calibrate(1, 100.0);
    assert!(z0 > 6.0 && z1 > 6.0, "{z0} {z1}");
    assert!((z0 - z1).abs() < 0.25 * z0, "{z0} vs {z1}");
    // A raw value that is anomalous for key 0 is perfectly normal for key 1.
    assert!(calibrator.calibrate(1, 5.0) < 3.0);
    // A burst of anomalies does not immediately become the new normal.
    for _ in 0..20 {
        calibrator.calibrate(0, 0.2);
    }
    assert!(calibrator.calibrate(0, 0.2) > 4.0);
    assert_eq!(calibrator.calibrate(0, f32::NAN), 0.0);
    assert!(tail_probability(0.0) > 0.49 && tail_probability(0.0) < 0.51);
    assert!((tail_probability(3.0) - 0.001_35).abs() < 1e-5);
}

#[test]
fn runtime_types_can_move_between_threads() {
    fn assert_send<T: Send + 'static>() {}
    assert_send::<LoadedModel>();
    assert_send::<KeyedWindows>();
    assert_send::<Calibrator>();
    assert_send::<Adapter>();
    assert_send::<ModelError>();
}
