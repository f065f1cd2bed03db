//! `infer`: per-key anomaly scores from a trained Burn model (autoencoder or forecaster),
//! calibrated per key so one threshold means the same on every device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, UInt32Array};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use isthmus_engine::batch::{Batch, BatchStream, TIME_COLUMN, Time};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Transform};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{self, DEAD_LETTER, DeadLetters, dead_letter_schema, rows_as_json};
use isthmus_models::{
    Adapter, AdapterConfig, Calibrator, CalibratorConfig, KeyedWindows, LoadedModel, ModelArtifact,
    ModelError, ModelKind,
};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::filter::require_columns;

/// An example pipeline fragment (the path is relative to the pipeline file).
pub const EXAMPLE: &str = r#"[transforms.score]
type = "infer"
inputs = ["sim"]
model = "models/shipped/sim-autoencoder"
key = ["device"]
calibration = { half_life = 1000, warmup = 50 }
"#;

/// Below this many scoring rows in a batch, the plain-Rust forward pass (same weights) is
/// used instead of Burn: Burn has a fixed cost per call (~8 µs) that only pays off across
/// many rows. Measured with `cargo bench --bench infer_throughput` (crossover between 16 and
/// 64 rows for the shipped model).
pub const DEFAULT_SMALL_BATCH_ROWS: usize = 32;

/// Scores every row with a trained model: how far the key's recent readings are from what
/// the model learned as normal.
///
/// The model is an artifact directory written by `isthmus train` (`manifest.json` +
/// `model.bpk`). For every key (for example every device) `infer` keeps the key's last
/// `window` readings of the model's input features; each new reading completes a window
/// that the model scores: the **autoencoder** by its reconstruction error, the
/// **forecaster** by the residual of the reading against the forecast made from the
/// `window` readings before it. All windows completed by one batch, across keys, are scored
/// in one batched call.
///
/// Raw model errors are not comparable across devices (a noisy pump reconstructs worse
/// than a quiet one), so each key's raw scores are **calibrated** against that key's own
/// recent distribution (an exponentially weighted mean and deviation of the log error):
/// `score` is "how many of this device's usual deviations above its usual error", ≥ 0, so
/// one threshold (for example `score > 4`) means the same on every device.
///
/// The output is the input plus `score` (Float64, never NULL) and, for a forecaster, one
/// `forecast_<column>` column per input feature (the value the model expected for this row,
/// in the column's units; NULL until the key's window is full). A row scores 0 until its key
/// has a full window (`window` readings, `window + 1` for a forecaster) and then during the
/// calibration warm-up (`calibration.warmup` scored rows).
///
/// Rows with a NULL, NaN or infinite value in a feature column cannot be scored: they go to
/// the `NAME.dead_letter` side output with the reason, and do not enter the key's window.
///
/// With `adapt`, each key fine-tunes its own copy of the model on its own recent rows that
/// scored as normal, so the model follows slow drift of that device. Adaptation is bounded
/// by `adapt.max_cpu_share`; with it, results depend on timing (and are no longer identical
/// across runs). Without it, 1 and N workers give the same scores.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Infer {
    /// The model artifact directory (written by `isthmus train`), relative to the pipeline
    /// file, for example `"models/shipped/sim-autoencoder"`. Required.
    pub model: String,
    /// Columns whose values identify the entity that has its own window and calibration,
    /// for example `["device"]`. Default: none (one window for the whole stream).
    #[serde(default)]
    pub key: Vec<String>,
    /// The input column of each model feature, in the order of the model's
    /// `input_features` (see its `manifest.json`). Default: columns named like the features.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// Name of the calibrated score column added. Default: `"score"`.
    #[serde(default = "default_score_column")]
    pub score_column: String,
    /// Per-key calibration of raw model errors. Default: `{ half_life = 1000, warmup = 50 }`.
    #[serde(default)]
    pub calibration: CalibrationSettings,
    /// Online per-key fine-tuning on recent normal rows. Default: off.
    #[serde(default)]
    pub adapt: Option<AdaptSettings>,
    /// Batches with fewer rows to score than this use the plain-Rust forward pass (same
    /// weights), larger ones Burn's batched forward pass; 0 means always Burn. Default: 32.
    #[serde(default = "default_small_batch_rows")]
    pub small_batch_rows: usize,
}

/// Per-key calibration settings of `infer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CalibrationSettings {
    /// Scored rows of a key after which an old error's weight in the key's statistics has
    /// halved. Default: 1000.
    #[serde(default = "default_half_life")]
    pub half_life: f64,
    /// Scored rows per key that only feed the statistics (their score is 0). Default: 50.
    #[serde(default = "default_warmup")]
    pub warmup: u32,
    /// Calibrate the logarithm of the model's error (`"log"`, the default: suits skewed
    /// errors) or the error itself (`"linear"`: a spike stays far from the usual error).
    #[serde(default)]
    pub scale: CalibrationScale,
}

/// The scale `infer` calibrates model errors on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalibrationScale {
    /// The logarithm of the error.
    #[default]
    Log,
    /// The error itself.
    Linear,
}

impl Default for CalibrationSettings {
    fn default() -> Self {
        Self {
            half_life: default_half_life(),
            warmup: default_warmup(),
            scale: CalibrationScale::default(),
        }
    }
}

/// Online adaptation settings of `infer`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdaptSettings {
    /// A key fine-tunes its model after this many of its rows were scored. Default: 10000.
    #[serde(default = "default_every_rows")]
    pub every_rows: u64,
    /// Recent normal rows (windows) kept per key and used by each fine-tune. Default: 256.
    #[serde(default = "default_buffer_rows")]
    pub buffer_rows: usize,
    /// Adam steps per fine-tune. Default: 5.
    #[serde(default = "default_steps")]
    pub steps: usize,
    /// Adam learning rate of fine-tuning. Default: 0.0001.
    #[serde(default = "default_learning_rate")]
    pub learning_rate: f64,
    /// A row is kept for fine-tuning only if its calibrated score is below this. Default: 2.0.
    #[serde(default = "default_normal_below")]
    pub normal_below: f64,
    /// Largest share of the worker's wall time spent fine-tuning, in (0, 1]; a due
    /// fine-tune is postponed while the share is exceeded. One fine-tune of 256 rows × 5
    /// steps costs about 2 ms. Default: 0.05.
    #[serde(default = "default_max_cpu_share")]
    pub max_cpu_share: f64,
}

fn default_score_column() -> String {
    "score".into()
}
fn default_small_batch_rows() -> usize {
    DEFAULT_SMALL_BATCH_ROWS
}
fn default_half_life() -> f64 {
    1000.0
}
fn default_warmup() -> u32 {
    50
}
fn default_every_rows() -> u64 {
    10_000
}
fn default_buffer_rows() -> usize {
    256
}
fn default_steps() -> usize {
    5
}
fn default_learning_rate() -> f64 {
    1e-4
}
fn default_normal_below() -> f64 {
    2.0
}
fn default_max_cpu_share() -> f64 {
    0.05
}

/// The help text for a model that cannot be loaded.
fn model_help(error: &ModelError) -> String {
    match error {
        ModelError::NotFound { .. } => "the path is relative to the pipeline file; train a model \
             with `isthmus train --out DIR ...` or point `model` at an artifact directory \
             holding manifest.json and model.bpk"
            .into(),
        ModelError::ManifestParse { .. } | ModelError::ManifestInvalid { .. } => {
            "manifest.json is not a valid model manifest; restore it or re-train the model \
             with `isthmus train`"
                .into()
        }
        ModelError::RecordCorrupt { .. } | ModelError::RecordMismatch { .. } => {
            "the weights file does not match manifest.json; restore both files together or \
             re-train the model with `isthmus train`"
                .into()
        }
        _ => "re-train the model with `isthmus train`".into(),
    }
}

impl Infer {
    /// The input column of every model feature, in manifest order.
    fn feature_columns(&self, features: &[String]) -> Vec<String> {
        self.columns.clone().unwrap_or_else(|| features.to_vec())
    }

    /// Loads the model from `path` (turning errors into a problem at `model`).
    fn load(&self, path: &std::path::Path) -> Result<LoadedModel, Problem> {
        ModelArtifact::load(path).map_err(|e| {
            let help = model_help(&e);
            Problem::at("model", e.to_string()).with_help(help)
        })
    }

    fn output_schema(&self, input: &SchemaRef, kind: ModelKind, columns: &[String]) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(&self.score_column, DataType::Float64, false));
        if kind == ModelKind::Forecaster {
            fields.extend(
                columns
                    .iter()
                    .map(|c| Field::new(format!("forecast_{c}"), DataType::Float64, true)),
            );
        }
        Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
    }

    /// Checks everything but the model against `input` given the loaded model's manifest.
    fn check(&self, input: &SchemaRef, model: &LoadedModel) -> Result<Vec<String>, Problem> {
        let manifest = model.manifest();
        require_columns("key", &self.key, input)?;
        let columns = self.feature_columns(&manifest.input_features);
        if columns.len() != manifest.feature_count() {
            return Err(Problem::at(
                "columns",
                format!(
                    "{} column(s) given but the model reads {} feature(s): {:?}",
                    columns.len(),
                    manifest.feature_count(),
                    manifest.input_features
                ),
            )
            .with_help("list one input column per model feature, in the manifest's order"));
        }
        if self.columns.is_none() {
            let available: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            if let Err(e) = manifest.validate_features(&available) {
                return Err(Problem::at("columns", e.to_string()).with_help(format!(
                    "map the model's features {:?} to input columns with `columns = [...]`, \
                     in that order, or rename the columns with a `map` transform",
                    manifest.input_features
                )));
            }
        }
        require_columns("columns", &columns, input)?;
        for c in &columns {
            let (_, f) = input.column_with_name(c).expect("checked above");
            if !f.data_type().is_numeric() {
                return Err(Problem::at(
                    "columns",
                    format!("`{c}` is {}, not a number", f.data_type()),
                )
                .with_help("the model reads numeric columns only"));
            }
        }
        let out = self.output_schema(input, manifest.kind, &columns);
        let new_fields = &out.fields()[input.fields().len()..];
        for f in new_fields {
            if input.column_with_name(f.name()).is_some() {
                return Err(Problem::at(
                    "score_column",
                    format!("the input already has a column `{}`", f.name()),
                )
                .with_help("choose another `score_column` or drop the column with a `map`"));
            }
        }
        let cal = &self.calibration;
        if !(cal.half_life.is_finite() && cal.half_life >= 1.0) {
            return Err(Problem::at(
                "calibration",
                format!("half_life must be at least 1 row, not {}", cal.half_life),
            )
            .with_help("for example calibration = { half_life = 1000, warmup = 50 }"));
        }
        if let Some(a) = &self.adapt {
            let problem = if a.every_rows == 0 || a.buffer_rows == 0 || a.steps == 0 {
                Some("every_rows, buffer_rows and steps must be at least 1".to_string())
            } else if !(a.learning_rate.is_finite() && a.learning_rate > 0.0) {
                Some(format!(
                    "learning_rate must be > 0, not {}",
                    a.learning_rate
                ))
            } else if !(a.max_cpu_share > 0.0 && a.max_cpu_share <= 1.0) {
                Some(format!(
                    "max_cpu_share must be in (0, 1], not {}",
                    a.max_cpu_share
                ))
            } else if !(a.normal_below.is_finite() && a.normal_below > 0.0) {
                Some(format!("normal_below must be > 0, not {}", a.normal_below))
            } else {
                None
            };
            if let Some(message) = problem {
                return Err(Problem::at("adapt", message).with_help(
                    "for example adapt = { every_rows = 10000, steps = 5, max_cpu_share = 0.05 }",
                ));
            }
        }
        Ok(columns)
    }
}

/// Dense key index of every row.
fn key_indices(
    batch: &RecordBatch,
    key: &[String],
    windows: &mut KeyedWindows,
    out: &mut Vec<usize>,
) -> Result<(), String> {
    out.clear();
    let n = batch.num_rows();
    if key.is_empty() {
        let index = windows.key_index("");
        out.resize(n, index);
        return Ok(());
    }
    let columns: Vec<&ArrayRef> = key
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .ok_or_else(|| format!("missing key column `{k}`"))
        })
        .collect::<Result<_, _>>()?;
    if let [column] = columns.as_slice()
        && let Some(strings) = column.as_string_opt::<i32>()
    {
        for i in 0..n {
            let k = if strings.is_null(i) {
                "\u{0}null"
            } else {
                strings.value(i)
            };
            out.push(windows.key_index(k));
        }
        return Ok(());
    }
    let options = FormatOptions::default().with_null("\u{0}null");
    let formatters: Vec<ArrayFormatter<'_>> = columns
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut k = String::new();
    for i in 0..n {
        k.clear();
        for (j, f) in formatters.iter().enumerate() {
            if j > 0 {
                k.push('\u{1f}');
            }
            k.push_str(&f.value(i).to_string());
        }
        out.push(windows.key_index(&k));
    }
    Ok(())
}

/// What scoring one batch produced.
struct Scored {
    /// Rows that were scored (all rows but the dead letters), in input order.
    kept: Vec<u32>,
    /// Calibrated score per kept row.
    scores: Vec<f64>,
    /// Forecaster only: the forecast per feature per kept row.
    forecasts: Vec<Vec<Option<f64>>>,
    /// Rows that could not be scored, with the reason.
    dead: Vec<(u32, String)>,
}

/// Per-key scoring state of one worker.
struct Scorer {
    model: LoadedModel,
    key: Vec<String>,
    columns: Vec<String>,
    windows: KeyedWindows,
    calibrator: Calibrator,
    small_batch_rows: usize,
    adapt: Option<(AdapterConfig, f64)>,
    /// Per key: its adapter (with `adapt`).
    adapters: Vec<Option<Adapter>>,
    /// Per key: its own fine-tuned model, once it has one.
    own_models: Vec<Option<LoadedModel>>,
    started: Instant,
    tuning: Duration,
    scratch_keys: Vec<usize>,
    scratch_rows: Vec<f32>,
}

/// Raw scores (and, for forecasters, predictions) of `count` rows.
fn run_model(
    model: &LoadedModel,
    rows: &[f32],
    count: usize,
    small_batch_rows: usize,
) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
    let plain = count < small_batch_rows;
    match (model.kind(), plain) {
        (ModelKind::Autoencoder, true) => Ok((model.score_batch_plain(rows, count)?, Vec::new())),
        (ModelKind::Autoencoder, false) => Ok((model.score_batch(rows, count)?, Vec::new())),
        (ModelKind::Forecaster, true) => {
            let f = model.forecast_batch_plain(rows, count)?;
            Ok((f.scores, f.predicted))
        }
        (ModelKind::Forecaster, false) => {
            let f = model.forecast_batch(rows, count)?;
            Ok((f.scores, f.predicted))
        }
    }
}

impl Scorer {
    fn new(config: &Infer, model: LoadedModel, columns: Vec<String>) -> Self {
        let windows = model.keyed_windows();
        let calibrator = Calibrator::new(CalibratorConfig {
            half_life: config.calibration.half_life as f32,
            warmup: config.calibration.warmup,
            log_scale: config.calibration.scale == CalibrationScale::Log,
            ..CalibratorConfig::default()
        });
        let adapt = config.adapt.as_ref().map(|a| {
            (
                AdapterConfig {
                    every_rows: a.every_rows,
                    buffer_rows: a.buffer_rows,
                    steps: a.steps,
                    learning_rate: a.learning_rate,
                    normal_below: a.normal_below as f32,
                },
                a.max_cpu_share,
            )
        });
        Scorer {
            model,
            key: config.key.clone(),
            columns,
            windows,
            calibrator,
            small_batch_rows: config.small_batch_rows,
            adapt,
            adapters: Vec::new(),
            own_models: Vec::new(),
            started: Instant::now(),
            tuning: Duration::ZERO,
            scratch_keys: Vec::new(),
            scratch_rows: Vec::new(),
        }
    }

    fn score(&mut self, batch: &RecordBatch) -> Result<Scored, String> {
        let n = batch.num_rows();
        let mut keys = std::mem::take(&mut self.scratch_keys);
        key_indices(batch, &self.key, &mut self.windows, &mut keys)?;
        let values: Vec<Float64Array> = self
            .columns
            .iter()
            .map(|name| {
                let col = batch
                    .column_by_name(name)
                    .ok_or_else(|| format!("missing column `{name}`"))?;
                let col = cast(col, &DataType::Float64)
                    .map_err(|e| format!("cannot read `{name}` as numbers: {e}"))?;
                Ok(col.as_primitive::<Float64Type>().clone())
            })
            .collect::<Result<_, String>>()?;

        let features = self.columns.len();
        let mut rows = std::mem::take(&mut self.scratch_rows);
        rows.clear();
        let mut reading = vec![0.0f32; features];
        let mut kept = Vec::with_capacity(n);
        let mut dead = Vec::new();
        // (kept position, key) of every completed window, in row order.
        let mut windows_done: Vec<(usize, usize)> = Vec::new();
        'rows: for (i, &key) in keys.iter().enumerate() {
            for (f, v) in values.iter().enumerate() {
                let reason = if v.is_null(i) {
                    "is NULL"
                } else if !v.value(i).is_finite() {
                    "is not a finite number"
                } else {
                    reading[f] = v.value(i) as f32;
                    continue;
                };
                dead.push((
                    i as u32,
                    format!("feature column `{}` {reason}", self.columns[f]),
                ));
                continue 'rows;
            }
            match self.windows.push_index(key, &reading, &mut rows) {
                Ok(Some(_)) => windows_done.push((kept.len(), key)),
                Ok(None) => {}
                Err(e) => {
                    // A finite value can still overflow f32.
                    dead.push((i as u32, e.to_string()));
                    continue;
                }
            }
            kept.push(i as u32);
        }
        self.scratch_keys = keys;

        let row_len = self.model.row_len();
        let (raw, predicted) = self.raw_scores(&rows, &windows_done)?;
        let mut scores = vec![0.0f64; kept.len()];
        let forecasting = self.model.kind() == ModelKind::Forecaster;
        let mut forecasts = if forecasting {
            vec![vec![None; kept.len()]; features]
        } else {
            Vec::new()
        };
        for (w, &(position, key)) in windows_done.iter().enumerate() {
            let z = self.calibrator.calibrate(key, raw[w]);
            scores[position] = f64::from(z);
            if forecasting {
                for (f, column) in forecasts.iter_mut().enumerate() {
                    column[position] = Some(f64::from(predicted[w * features + f]));
                }
            }
            if let Some((config, _)) = &self.adapt {
                if key >= self.adapters.len() {
                    self.adapters.resize_with(key + 1, || None);
                }
                self.adapters[key]
                    .get_or_insert_with(|| Adapter::new(*config, row_len))
                    .observe(&rows[w * row_len..(w + 1) * row_len], z);
            }
        }
        self.scratch_rows = rows;
        if self.adapt.is_some() {
            self.adapt_keys(&windows_done);
        }
        Ok(Scored {
            kept,
            scores,
            forecasts,
            dead,
        })
    }

    /// Raw scores and predictions of every completed window, with the shared model or the
    /// key's own fine-tuned one.
    fn raw_scores(
        &self,
        rows: &[f32],
        windows_done: &[(usize, usize)],
    ) -> Result<(Vec<f32>, Vec<f32>), String> {
        let count = windows_done.len();
        let has_own = |key: usize| self.own_models.get(key).is_some_and(Option::is_some);
        if !windows_done.iter().any(|(_, k)| has_own(*k)) {
            return run_model(&self.model, rows, count, self.small_batch_rows)
                .map_err(|e| e.to_string());
        }
        // Some keys have their own weights: score the shared rows together, then each
        // adapted key's rows with its model.
        let row_len = self.model.row_len();
        let features = self.columns.len();
        let forecasting = self.model.kind() == ModelKind::Forecaster;
        let mut raw = vec![0.0f32; count];
        let mut predicted = if forecasting {
            vec![0.0f32; count * features]
        } else {
            Vec::new()
        };
        let mut groups: std::collections::BTreeMap<Option<usize>, Vec<usize>> = Default::default();
        for (w, (_, key)) in windows_done.iter().enumerate() {
            groups
                .entry(has_own(*key).then_some(*key))
                .or_default()
                .push(w);
        }
        for (owner, members) in groups {
            let model = match owner {
                Some(key) => self.own_models[key].as_ref().expect("has_own checked"),
                None => &self.model,
            };
            let mut group_rows = Vec::with_capacity(members.len() * row_len);
            for w in &members {
                group_rows.extend_from_slice(&rows[w * row_len..(w + 1) * row_len]);
            }
            let (s, p) = run_model(model, &group_rows, members.len(), self.small_batch_rows)
                .map_err(|e| e.to_string())?;
            for (j, w) in members.iter().enumerate() {
                raw[*w] = s[j];
                if forecasting {
                    predicted[w * features..(w + 1) * features]
                        .copy_from_slice(&p[j * features..(j + 1) * features]);
                }
            }
        }
        Ok((raw, predicted))
    }

    /// Fine-tunes the keys whose adapter is due, within the CPU budget.
    fn adapt_keys(&mut self, windows_done: &[(usize, usize)]) {
        let Some((_, max_share)) = self.adapt else {
            return;
        };
        let mut touched: Vec<usize> = windows_done.iter().map(|(_, k)| *k).collect();
        touched.sort_unstable();
        touched.dedup();
        for key in touched {
            let budget = self.started.elapsed().as_secs_f64() * max_share;
            if self.tuning.as_secs_f64() > budget {
                return;
            }
            let Some(Some(adapter)) = self.adapters.get_mut(key) else {
                continue;
            };
            if !adapter.is_due() {
                continue;
            }
            let mut model = self
                .own_models
                .get(key)
                .and_then(Option::clone)
                .unwrap_or_else(|| self.model.clone());
            match adapter.maybe_fine_tune(&mut model) {
                Ok(Some(report)) => {
                    self.tuning += report.elapsed;
                    tracing::debug!(
                        key = self.windows.key_name(key),
                        ?report,
                        "infer: fine-tuned"
                    );
                    if report.accepted {
                        if key >= self.own_models.len() {
                            self.own_models.resize_with(key + 1, || None);
                        }
                        self.own_models[key] = Some(model);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("infer: fine-tuning failed: {e}"),
            }
        }
    }
}

/// The event time of row `row`, or `fallback`.
fn row_time(batch: &RecordBatch, row: usize, fallback: Time) -> Time {
    batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| {
            c.as_primitive_opt::<arrow::datatypes::TimestampMillisecondType>()
                .map(|t| t.value(row).max(0) as Time)
        })
        .unwrap_or(fallback)
}

impl Transform for Infer {
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        let model = self.load(&cx.path(&self.model))?;
        let columns = self.check(input, &model)?;
        Ok(
            Outputs::main(self.output_schema(input, model.kind(), &columns))
                .with_side(DEAD_LETTER, dead_letter_schema()),
        )
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let schema = cx.required_input_schema()?;
        let model = self
            .load(&cx.path(&self.model))
            .map_err(|p| cx.error(p.message))?;
        let columns = self
            .check(&schema, &model)
            .map_err(|p| cx.error(p.message))?;
        let out_schema = self.output_schema(&schema, model.kind(), &columns);
        let mut scorer = Scorer::new(self, model, columns);
        let name = cx.name.clone();
        let input = ops::exchange_by_key(input, self.key.clone());

        let mut builder = OperatorBuilder::new("Infer".to_string(), input.scope());
        let mut input = builder.new_input(input, Pipeline);
        let (main, main_stream) = builder.new_output::<Vec<Batch>>();
        let (dead, dead_stream) = builder.new_output::<Vec<Batch>>();
        let mut main =
            OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Batch>>>::from(main);
        let mut dead =
            OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Batch>>>::from(dead);
        builder.build(move |_| {
            move |_frontiers| {
                let mut main = main.activate();
                let mut dead = dead.activate();
                input.for_each_stamp(|cap, data| {
                    let time = cap.least().copied().unwrap_or_default();
                    for container in data {
                        for batch in container.drain(..) {
                            if batch.num_rows() == 0 {
                                continue;
                            }
                            let mut letters = DeadLetters::default();
                            match scorer.score(&batch.data) {
                                Ok(scored) => {
                                    for (row, reason) in &scored.dead {
                                        let row = *row as usize;
                                        let record = rows_as_json(&batch.data.slice(row, 1));
                                        letters.push(
                                            row_time(&batch.data, row, time),
                                            &name,
                                            reason,
                                            record.first().map_or("{}", String::as_str),
                                        );
                                    }
                                    match scored_batch(&batch.data, &out_schema, scored) {
                                        Ok(Some(out)) => main
                                            .session(&cap)
                                            .give(Batch::derived(out, batch.created_ns)),
                                        Ok(None) => {}
                                        Err(e) => letters.push_batch(
                                            time,
                                            &name,
                                            &format!("cannot build the scored batch: {e}"),
                                            &batch.data,
                                        ),
                                    }
                                }
                                Err(e) => letters.push_batch(
                                    time,
                                    &name,
                                    &format!("cannot score the batch: {e}"),
                                    &batch.data,
                                ),
                            }
                            if let Some(b) = letters.take() {
                                dead.session(&cap).give(b);
                            }
                        }
                    }
                });
            }
        });
        Ok(Outputs::main(main_stream).with_side(DEAD_LETTER, dead_stream))
    }
}

/// The kept rows of `input` with the score (and forecast) columns appended.
fn scored_batch(
    input: &RecordBatch,
    schema: &SchemaRef,
    scored: Scored,
) -> Result<Option<RecordBatch>, arrow::error::ArrowError> {
    if scored.kept.is_empty() {
        return Ok(None);
    }
    let rows = if scored.kept.len() == input.num_rows() {
        input.clone()
    } else {
        take_record_batch(input, &UInt32Array::from(scored.kept))?
    };
    let mut columns = rows.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(scored.scores)));
    for forecast in scored.forecasts {
        columns.push(Arc::new(Float64Array::from(forecast)));
    }
    RecordBatch::try_new(schema.clone(), columns).map(Some)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::OnceLock;

    use arrow::array::StringArray;
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::policy::PolicyStore;
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;
    use isthmus_models::{TrainConfig, TrainingData, train};

    use super::*;
    use crate::window::testkit::{Rng, run};

    const WINDOW: usize = 4;

    /// A normal reading of device `d` at step `t`: two correlated features, a slow sine and
    /// a little noise; each device has its own level and noise.
    fn normal(d: usize, t: usize, rng: &mut Rng) -> (f64, f64) {
        let noise = (rng.below(1000) as f64 / 1000.0 - 0.5) * (0.2 + 0.1 * d as f64);
        let x = 20.0 + 5.0 * d as f64 + 3.0 * (t as f64 * 0.2).sin() + noise;
        (x, 0.5 * x + 1.0 + noise * 0.5)
    }

    /// A tiny autoencoder trained once on normal readings of three devices.
    fn model_dir() -> &'static Path {
        static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
        DIR.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let mut data =
                TrainingData::new(vec!["temp".into(), "load".into()], "test sines").unwrap();
            let mut rng = Rng(3);
            for d in 0..3 {
                let series: Vec<f32> = (0..600)
                    .flat_map(|t| {
                        let (x, y) = normal(d, t, &mut rng);
                        [x as f32, y as f32]
                    })
                    .collect();
                data.push_series(&series).unwrap();
            }
            let config = TrainConfig {
                hidden: vec![8, 3],
                epochs: 15,
                batch_size: 32,
                learning_rate: 5e-3,
                seed: 1,
                ..TrainConfig::autoencoder(WINDOW)
            };
            train(config, &data, |_| {})
                .unwrap()
                .save(dir.path().join("ae"))
                .unwrap();
            dir
        })
        .path()
    }

    fn schema() -> SchemaRef {
        schema_with_time([
            Field::new("device", DataType::Utf8, true),
            Field::new("temperature", DataType::Float64, true),
            Field::new("load", DataType::Float64, true),
            Field::new("label", DataType::Utf8, true),
        ])
    }

    fn batch(rows: &[(i64, String, Option<f64>, Option<f64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                time_array(rows.iter().map(|r| r.0).collect()),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| Some(r.1.clone())).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(vec![Some("x"); rows.len()])),
            ],
        )
        .unwrap()
    }

    fn infer() -> Infer {
        Infer {
            model: model_dir().join("ae").display().to_string(),
            key: vec!["device".into()],
            columns: Some(vec!["temperature".into(), "load".into()]),
            score_column: "score".into(),
            calibration: CalibrationSettings {
                half_life: 500.0,
                warmup: 30,
                scale: CalibrationScale::Log,
            },
            adapt: None,
            small_batch_rows: DEFAULT_SMALL_BATCH_ROWS,
        }
    }

    /// `steps` readings of devices d0..d2 interleaved, in batches of 50 rows; device d1 has
    /// a spike of +8 °C at step `spike`.
    fn stream(steps: usize, spike: usize, seed: u64) -> Vec<(Time, RecordBatch)> {
        let mut rng = Rng(seed);
        let mut rows = Vec::new();
        for t in 0..steps {
            for d in 0..3 {
                let (mut x, y) = normal(d, t, &mut rng);
                if d == 1 && t == spike {
                    x += 8.0;
                }
                rows.push(((t * 3 + d) as i64, format!("d{d}"), Some(x), Some(y)));
            }
        }
        rows.chunks(50)
            .map(|c| (c[0].0 as Time, batch(c)))
            .collect()
    }

    fn column(out: &RecordBatch, name: &str) -> Vec<f64> {
        out.column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .values()
            .to_vec()
    }

    fn check_cx<'a>(
        node: &'a NodeSpec,
        snapshot: &'a isthmus_engine::policy::PolicySnapshot,
        channels: &'a BTreeMap<String, SchemaRef>,
    ) -> CheckContext<'a> {
        CheckContext {
            node,
            policy: snapshot,
            base_dir: Path::new("."),
            channels,
        }
    }

    #[test]
    fn spike_scores_high_and_normal_rows_low() {
        let out = Harness::default().run_transform(&infer(), schema(), stream(400, 300, 9));
        let all = out.main_batch().unwrap();
        assert_eq!(all.num_rows(), 1200);
        assert_eq!(out.side_rows(DEAD_LETTER), 0);
        let scores = column(&all, "score");
        let devices = all.column(1).as_string::<i32>();
        let ts = all
            .column(0)
            .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
        // Rows before a key's window is full and during warm-up score 0.
        assert!(scores[..3 * (WINDOW + 30 - 1)].iter().all(|s| *s == 0.0));
        let spike_ts = (300 * 3 + 1) as i64;
        let spike = (0..all.num_rows())
            .find(|&i| ts.value(i) == spike_ts)
            .unwrap();
        assert_eq!(devices.value(spike), "d1");
        assert!(scores[spike] > 4.0, "spike scores {}", scores[spike]);
        // Normal rows of every device (outside the spike's windows) mostly score low.
        let normal: Vec<f64> = (0..all.num_rows())
            .filter(|&i| {
                let t = ts.value(i) / 3;
                !(devices.value(i) == "d1" && (300..300 + WINDOW as i64).contains(&t))
            })
            .map(|i| scores[i])
            .collect();
        let high = normal.iter().filter(|s| **s > 4.0).count();
        assert!(
            high * 100 < normal.len(),
            "{high} of {} normal rows score > 4",
            normal.len()
        );
        assert!(scores.iter().all(|s| s.is_finite() && *s >= 0.0));
    }

    #[test]
    fn bad_values_go_to_the_dead_letter_output() {
        let mut input = stream(60, 1000, 4);
        let rows: Vec<(i64, String, Option<f64>, Option<f64>)> = vec![
            (500, "d0".into(), None, Some(1.0)),
            (501, "d1".into(), Some(f64::NAN), Some(1.0)),
            (502, "d2".into(), Some(20.0), Some(f64::INFINITY)),
            (503, "d2".into(), Some(30.0), Some(16.0)),
        ];
        input.push((500, batch(&rows)));
        let out = Harness::default().run_transform(&infer(), schema(), input);
        assert_eq!(out.main_rows(), 181);
        assert_eq!(out.side_rows(DEAD_LETTER), 3);
        let dead = &out.side[DEAD_LETTER][0].1;
        let reasons = dead.column_by_name("reason").unwrap().as_string::<i32>();
        assert!(
            reasons.value(0).contains("`temperature` is NULL"),
            "{}",
            reasons.value(0)
        );
        assert!(reasons.value(1).contains("`temperature` is not a finite"));
        assert!(reasons.value(2).contains("`load` is not a finite"));
        let records = dead.column_by_name("record").unwrap().as_string::<i32>();
        assert!(records.value(0).contains("\"device\":\"d0\""));
    }

    #[test]
    fn one_and_two_workers_agree() {
        let input = stream(200, 150, 5);
        let policy = || Arc::new(PolicyStore::new(Default::default(), Default::default()));
        let scores = |config: Infer, workers: usize| {
            let out = run(Arc::new(config), schema(), input.clone(), workers, policy());
            let mut rows: Vec<(i64, f64)> = Vec::new();
            for (_, b) in &out.main {
                let ts = b
                    .column(0)
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
                let score = column(b, "score");
                rows.extend((0..b.num_rows()).map(|i| (ts.value(i), score[i])));
            }
            rows.sort_by_key(|r| r.0);
            assert_eq!(rows.len(), 600);
            rows
        };
        // One code path (Burn for every batch): bit-identical.
        let burn_only = Infer {
            small_batch_rows: 0,
            ..infer()
        };
        let one = scores(burn_only.clone(), 1);
        assert_eq!(one, scores(burn_only, 2));
        assert!(one.iter().any(|(_, s)| *s > 4.0));
        // Automatic choice of path by batch size: the paths round differently, so equal
        // to float precision.
        let auto_one = scores(infer(), 1);
        let auto_two = scores(infer(), 2);
        for ((t1, a), (t2, b)) in auto_one.iter().zip(&auto_two) {
            assert_eq!(t1, t2);
            assert!((a - b).abs() <= 1e-3 * a.abs().max(1.0), "{t1}: {a} vs {b}");
        }
    }

    #[test]
    fn forecaster_adds_forecast_columns() {
        let dir = tempfile::tempdir().unwrap();
        let mut data = TrainingData::new(vec!["temp".into(), "load".into()], "test").unwrap();
        let mut rng = Rng(8);
        for d in 0..3 {
            let series: Vec<f32> = (0..600)
                .flat_map(|t| {
                    let (x, y) = normal(d, t, &mut rng);
                    [x as f32, y as f32]
                })
                .collect();
            data.push_series(&series).unwrap();
        }
        let config = TrainConfig {
            hidden: vec![8],
            epochs: 10,
            batch_size: 32,
            learning_rate: 5e-3,
            ..TrainConfig::forecaster(WINDOW)
        };
        train(config, &data, |_| {})
            .unwrap()
            .save(dir.path().join("fc"))
            .unwrap();
        let config = Infer {
            model: dir.path().join("fc").display().to_string(),
            ..infer()
        };
        let out = Harness::default().run_transform(&config, schema(), stream(100, 1000, 2));
        let all = out.main_batch().unwrap();
        let forecast = all
            .column_by_name("forecast_temperature")
            .unwrap()
            .as_primitive::<Float64Type>();
        let actual = column(&all, "temperature");
        // Null until the key has window + 1 readings, then close to the actual value.
        assert!(forecast.is_null(0));
        let last = all.num_rows() - 1;
        assert!((forecast.value(last) - actual[last]).abs() < 3.0);
        assert!(all.column_by_name("forecast_load").is_some());
    }

    #[test]
    fn adaptation_fine_tunes_per_key_within_budget() {
        let config = Infer {
            adapt: Some(AdaptSettings {
                every_rows: 100,
                buffer_rows: 64,
                steps: 3,
                learning_rate: 1e-3,
                normal_below: 3.0,
                max_cpu_share: 1.0,
            }),
            ..infer()
        };
        let model = config.load(Path::new(&config.model)).unwrap();
        let mut scorer = Scorer::new(&config, model, vec!["temperature".into(), "load".into()]);
        for (_, b) in stream(300, 1000, 6) {
            let scored = scorer.score(&b).unwrap();
            assert!(scored.scores.iter().all(|s| s.is_finite()));
        }
        let tuned = scorer.own_models.iter().flatten().count();
        assert!(tuned > 0, "some key fine-tuned its own model");
        assert!(scorer.tuning > Duration::ZERO);
        assert_eq!(scorer.model.manifest().training.fine_tune_steps, 0);
    }

    #[test]
    fn check_problems() {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let snapshot = PolicyStore::new(Default::default(), Default::default()).snapshot();
        let channels = BTreeMap::new();
        let cx = check_cx(&node, &snapshot, &channels);
        let ok = infer().schemas(&schema(), &cx).unwrap();
        assert_eq!(ok.main.field(5).name(), "score");
        assert_eq!(ok.side[0].0, DEAD_LETTER);
        let problem = |config: Infer| {
            config
                .schemas(&schema(), &cx)
                .map(|o| o.main)
                .expect_err("a problem")
        };

        // Missing model directory.
        let e = problem(Infer {
            model: "no/such/model".into(),
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("model"));
        assert!(e.message.contains("not found"), "{}", e.message);
        assert!(e.help.unwrap().contains("isthmus train"));

        // Corrupt manifest, and weights that do not match it.
        let dir = tempfile::tempdir().unwrap();
        let copy = |name: &str| {
            let to = dir.path().join(name);
            std::fs::create_dir_all(&to).unwrap();
            for f in ["manifest.json", "model.bpk"] {
                std::fs::copy(model_dir().join("ae").join(f), to.join(f)).unwrap();
            }
            to
        };
        let broken = copy("broken");
        std::fs::write(broken.join("manifest.json"), "{ \"kind\": ").unwrap();
        let e = problem(Infer {
            model: broken.display().to_string(),
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("model"));
        assert!(e.message.contains("could not be parsed"), "{}", e.message);
        assert!(e.help.unwrap().contains("manifest.json"));
        let truncated = copy("truncated");
        let bytes = std::fs::read(truncated.join("model.bpk")).unwrap();
        std::fs::write(truncated.join("model.bpk"), &bytes[..bytes.len() / 2]).unwrap();
        let e = problem(Infer {
            model: truncated.display().to_string(),
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("model"));
        assert!(e.message.contains("corrupt"), "{}", e.message);

        // Features: default names missing from the input, a missing mapped column, a
        // non-numeric column, the wrong count.
        let e = problem(Infer {
            columns: None,
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("columns"));
        assert!(e.message.contains("\"temp\""), "{}", e.message);
        assert!(e.help.unwrap().contains("columns = ["));
        let e = problem(Infer {
            columns: Some(vec!["temprature".into(), "load".into()]),
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("columns"));
        assert!(e.help.unwrap().contains("did you mean `temperature`"));
        let e = problem(Infer {
            columns: Some(vec!["label".into(), "load".into()]),
            ..infer()
        });
        assert!(e.message.contains("not a number"), "{}", e.message);
        let e = problem(Infer {
            columns: Some(vec!["load".into()]),
            ..infer()
        });
        assert!(e.message.contains("reads 2 feature(s)"), "{}", e.message);

        // Key and output names.
        let e = problem(Infer {
            key: vec!["devices".into()],
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("key"));
        let e = problem(Infer {
            score_column: "label".into(),
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("score_column"));
        let e = problem(Infer {
            calibration: CalibrationSettings {
                half_life: 0.0,
                warmup: 1,
                scale: CalibrationScale::Log,
            },
            ..infer()
        });
        assert_eq!(e.key.as_deref(), Some("calibration"));
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["score"].as_table().unwrap().clone();
        t.remove("type");
        t.remove("inputs");
        let config: Infer = t.try_into().unwrap();
        assert_eq!(config.calibration.warmup, 50);
        assert_eq!(config.score_column, "score");
        assert!(config.adapt.is_none());
    }
}
