//! Training a model on normal-operation data with Burn autodiff and Adam.

use std::path::Path;
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use crate::error::{ModelError, Result};
use crate::manifest::{
    FORMAT_VERSION, Manifest, ModelKind, Normalisation, NormalisationMethod, TrainingInfo,
    WEIGHTS_FILE, WeightsInfo, check_shape, layer_sizes,
};
use crate::model::{LoadedModel, cpu_device, split_rows};
use crate::nn::{MlpNet, matrix};

/// How to train a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Autoencoder or forecaster.
    pub kind: ModelKind,
    /// Readings per window (`W`); use 1 to score each multivariate row on its own.
    pub window: usize,
    /// Hidden widths: encoder widths ending with the bottleneck (autoencoder), or all hidden
    /// layers (forecaster).
    pub hidden: Vec<usize>,
    /// Passes over the training windows.
    pub epochs: usize,
    /// Windows per Adam step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Seed of weight initialisation and shuffling: same data + same config ⇒ same weights.
    pub seed: u64,
    /// Input scaling estimated from the training data.
    pub normalisation: NormalisationMethod,
    /// Version string written to the manifest.
    pub version: String,
    /// Upper bound on training windows; longer data is subsampled at an even stride.
    pub max_windows: usize,
}

impl TrainConfig {
    /// Defaults for an autoencoder over `window` readings: hidden `[32, 8]`, 20 epochs,
    /// batch 64, learning rate 1e-3, seed 0, z-score normalisation.
    pub fn autoencoder(window: usize) -> Self {
        Self {
            kind: ModelKind::Autoencoder,
            window,
            hidden: vec![32, 8],
            epochs: 20,
            batch_size: 64,
            learning_rate: 1e-3,
            seed: 0,
            normalisation: NormalisationMethod::Zscore,
            version: "1".to_string(),
            max_windows: 200_000,
        }
    }

    /// Defaults for a forecaster over the last `window` readings: hidden `[32, 16]`, otherwise
    /// as [`autoencoder`](Self::autoencoder).
    pub fn forecaster(window: usize) -> Self {
        Self {
            kind: ModelKind::Forecaster,
            hidden: vec![32, 16],
            ..Self::autoencoder(window)
        }
    }
}

/// Normal-operation readings to train on: one or more time-ordered series (e.g. one per
/// device or file) of `features` values per reading. Windows never span two series.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingData {
    feature_names: Vec<String>,
    source: String,
    /// All readings, row-major (`reading × feature`).
    readings: Vec<f32>,
    /// Readings per series, in order.
    series_lengths: Vec<usize>,
}

impl TrainingData {
    /// Empty data with the given feature names; `source` describes where it came from and
    /// is recorded in the manifest.
    pub fn new(feature_names: Vec<String>, source: impl Into<String>) -> Result<Self> {
        if feature_names.is_empty() {
            return Err(ModelError::InvalidTrainingData(
                "at least one feature name is needed".into(),
            ));
        }
        Ok(Self {
            feature_names,
            source: source.into(),
            readings: Vec::new(),
            series_lengths: Vec::new(),
        })
    }

    /// One univariate series.
    pub fn univariate(feature: &str, values: &[f32], source: impl Into<String>) -> Result<Self> {
        let mut data = Self::new(vec![feature.to_string()], source)?;
        data.push_series(values)?;
        Ok(data)
    }

    /// Append a time-ordered series (`readings × features` values, row-major).
    pub fn push_series(&mut self, values: &[f32]) -> Result<()> {
        let features = self.feature_names.len();
        if !values.len().is_multiple_of(features) {
            return Err(ModelError::InvalidTrainingData(format!(
                "series has {} values, not a multiple of {features} features",
                values.len()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidTrainingData(format!(
                "value {i} of the series (reading {}, feature {:?}) is not finite",
                i / features,
                self.feature_names[i % features]
            )));
        }
        if !values.is_empty() {
            self.readings.extend_from_slice(values);
            self.series_lengths.push(values.len() / features);
        }
        Ok(())
    }

    /// Feature names, in column order.
    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    /// Total readings over all series.
    pub fn reading_count(&self) -> usize {
        self.readings.len() / self.feature_names.len()
    }

    /// Where the data came from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Per-feature normalisation statistics of all readings.
    pub fn fit_normalisation(&self, method: NormalisationMethod) -> Normalisation {
        let features = self.feature_names.len();
        let mut center = Vec::with_capacity(features);
        let mut scale = Vec::with_capacity(features);
        for f in 0..features {
            let column: Vec<f64> = self
                .readings
                .iter()
                .skip(f)
                .step_by(features)
                .map(|v| f64::from(*v))
                .collect();
            let (c, s) = match method {
                NormalisationMethod::Zscore => mean_std(&column),
                NormalisationMethod::Robust => median_iqr_scale(column),
            };
            // A constant feature gets scale 1 so normalising never divides by ~0.
            let s = if s.is_finite() && s > 1e-9 * c.abs().max(1.0) {
                s
            } else {
                1.0
            };
            center.push(c as f32);
            scale.push(s as f32);
        }
        Normalisation {
            method,
            center,
            scale,
        }
    }

    /// Normalised scoring rows of `readings_per_row` consecutive readings (every start
    /// position of every series, subsampled at an even stride to at most `max_rows`).
    pub fn windows(
        &self,
        normalisation: &Normalisation,
        readings_per_row: usize,
        max_rows: usize,
    ) -> (Vec<f32>, usize) {
        let features = self.feature_names.len();
        let mut starts = Vec::new();
        let mut offset = 0;
        for len in &self.series_lengths {
            if *len >= readings_per_row {
                starts.extend((0..=len - readings_per_row).map(|t| offset + t));
            }
            offset += len;
        }
        if starts.len() > max_rows.max(1) {
            let keep = max_rows.max(1);
            let total = starts.len();
            starts = (0..keep).map(|i| starts[i * total / keep]).collect();
        }
        let row_len = readings_per_row * features;
        let mut rows = Vec::with_capacity(starts.len() * row_len);
        for start in &starts {
            let raw = &self.readings[start * features..(start + readings_per_row) * features];
            rows.extend(
                raw.iter()
                    .enumerate()
                    .map(|(i, v)| normalisation.apply(i % features, *v)),
            );
        }
        (rows, starts.len())
    }
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn median_iqr_scale(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let quantile = |q: f64| -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let pos = q * (values.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        values[lo] + (values[hi] - values[lo]) * (pos - lo as f64)
    };
    // For a Gaussian, IQR = 1.349 σ.
    (quantile(0.5), (quantile(0.75) - quantile(0.25)) / 1.349)
}

/// Progress of one training epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochReport {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Total epochs configured.
    pub epochs: usize,
    /// Mean training loss (normalised MSE) over the epoch's minibatches.
    pub loss: f32,
    /// Wall time of the epoch.
    pub elapsed: Duration,
}

/// A freshly trained model and its loss history.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// The model, ready to score or save.
    pub model: LoadedModel,
    /// One report per epoch.
    pub history: Vec<EpochReport>,
}

impl TrainedModel {
    /// Write the artifact directory (weights + manifest); returns the manifest written.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<Manifest> {
        self.model.save(dir)
    }
}

/// Train a model on `data` with Adam, calling `progress` after every epoch.
///
/// Deterministic: the weights are initialised and the windows shuffled from `config.seed`,
/// and the CPU backend runs single-threaded, so the same data and config give bit-identical
/// weights (and an identical weights file).
pub fn train(
    config: TrainConfig,
    data: &TrainingData,
    mut progress: impl FnMut(EpochReport),
) -> Result<TrainedModel> {
    check_shape(
        config.kind,
        config.window,
        &data.feature_names,
        &config.hidden,
    )
    .map_err(ModelError::InvalidConfig)?;
    if config.epochs == 0 || config.batch_size == 0 {
        return Err(ModelError::InvalidConfig(
            "epochs and batch_size must be at least 1".into(),
        ));
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "learning rate must be finite and > 0, got {}",
            config.learning_rate
        )));
    }
    let features = data.feature_names.len();
    let readings_per_row = match config.kind {
        ModelKind::Autoencoder => config.window,
        ModelKind::Forecaster => config.window + 1,
    };
    let normalisation = data.fit_normalisation(config.normalisation);
    let (rows, row_count) = data.windows(&normalisation, readings_per_row, config.max_windows);
    if row_count == 0 {
        return Err(ModelError::InvalidTrainingData(format!(
            "no series has the {readings_per_row} readings one training window needs"
        )));
    }

    let mut manifest = Manifest {
        format_version: FORMAT_VERSION,
        kind: config.kind,
        version: config.version.clone(),
        input_features: data.feature_names.clone(),
        window: config.window,
        hidden: config.hidden.clone(),
        normalisation,
        training: TrainingInfo {
            data_source: data.source.clone(),
            readings: data.reading_count(),
            windows: row_count,
            epochs: config.epochs,
            batch_size: config.batch_size,
            learning_rate: config.learning_rate,
            final_loss: f32::NAN,
            seed: config.seed,
            fine_tune_steps: 0,
        },
        weights: WeightsInfo {
            file: WEIGHTS_FILE.to_string(),
            bytes: 0,
            fnv1a64: String::new(),
        },
    };
    let (inputs, targets) = split_rows(&manifest, &rows, row_count);
    let input_len = manifest.input_len();
    let target_len = targets.len() / row_count;

    let device = cpu_device();
    let autodiff = device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let sizes = layer_sizes(config.kind, input_len, features, &config.hidden);
    let mut net = MlpNet::init(&sizes, &mut rng, &autodiff);
    let mut optimizer = AdamConfig::new().init();
    let mut order: Vec<usize> = (0..row_count).collect();
    let mut history = Vec::with_capacity(config.epochs);
    let mut batch_inputs = Vec::with_capacity(config.batch_size * input_len);
    let mut batch_targets = Vec::with_capacity(config.batch_size * target_len);

    for epoch in 1..=config.epochs {
        let started = Instant::now();
        order.shuffle(&mut rng);
        let mut weighted_loss = 0.0f64;
        for batch in order.chunks(config.batch_size) {
            batch_inputs.clear();
            batch_targets.clear();
            for &i in batch {
                batch_inputs.extend_from_slice(&inputs[i * input_len..(i + 1) * input_len]);
                batch_targets.extend_from_slice(&targets[i * target_len..(i + 1) * target_len]);
            }
            let x = matrix(&batch_inputs, batch.len(), input_len, &autodiff);
            let y = matrix(&batch_targets, batch.len(), target_len, &autodiff);
            let loss = (net.forward(x) - y).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            weighted_loss += f64::from(loss.into_scalar::<f32>()) * batch.len() as f64;
            net = optimizer.step(config.learning_rate, net, grads);
        }
        let loss = (weighted_loss / row_count as f64) as f32;
        if !loss.is_finite() {
            return Err(ModelError::InvalidTrainingData(format!(
                "training diverged at epoch {epoch} (loss {loss}); lower the learning rate"
            )));
        }
        let report = EpochReport {
            epoch,
            epochs: config.epochs,
            loss,
            elapsed: started.elapsed(),
        };
        tracing::debug!(epoch, loss, "training epoch done");
        progress(report.clone());
        history.push(report);
    }
    manifest.training.final_loss = history.last().map_or(f32::NAN, |r| r.loss);
    let net = net.valid().fork(&device);
    Ok(TrainedModel {
        model: LoadedModel::new(manifest, net, device),
        history,
    })
}
