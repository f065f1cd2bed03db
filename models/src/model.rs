//! Loading, saving, scoring and fine-tuning a model artifact.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::optim::{AdamConfig, GradientsParams};
use burn::store::{ModuleRecord, RecordError};
use burn::tensor::{Bytes, Device};

use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FILE, Manifest, ModelKind, WEIGHTS_FILE, WeightsInfo, fnv1a64};
use crate::nn::{MlpNet, matrix, to_vec};
use crate::plain;
use crate::windows::KeyedWindows;

/// The CPU device used for inference and fine-tuning (Burn's NdArray backend).
#[allow(deprecated)] // NdArray is the backend this crate is specified to run on.
pub fn cpu_device() -> Device {
    Device::ndarray()
}

/// Entry point for reading artifacts from disk.
pub struct ModelArtifact;

impl ModelArtifact {
    /// Read and check only `manifest.json` of the artifact directory `dir` (cheap; for
    /// validate-time checks without loading the weights).
    /// `dir` may also be the path of the `manifest.json` file itself.
    pub fn read_manifest(dir: impl AsRef<Path>) -> Result<Manifest> {
        let dir = artifact_dir(dir.as_ref());
        if !dir.is_dir() {
            return Err(ModelError::NotFound {
                path: dir.to_path_buf(),
            });
        }
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.clone() },
            _ => ModelError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let manifest: Manifest =
            serde_json::from_str(&text).map_err(|source| ModelError::ManifestParse {
                path: path.clone(),
                source,
            })?;
        manifest
            .check()
            .map_err(|reason| ModelError::ManifestInvalid { path, reason })?;
        Ok(manifest)
    }

    /// Load the artifact directory `dir`: manifest, then weights (size and checksum checked
    /// against the manifest, tensor shapes checked against the manifest's layer widths).
    /// `dir` may also be the path of the `manifest.json` file itself.
    pub fn load(dir: impl AsRef<Path>) -> Result<LoadedModel> {
        let dir = artifact_dir(dir.as_ref());
        let manifest = Self::read_manifest(dir)?;
        let path = dir.join(&manifest.weights.file);
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => ModelError::NotFound { path: path.clone() },
            _ => ModelError::Io {
                path: path.clone(),
                source,
            },
        })?;
        if bytes.len() as u64 != manifest.weights.bytes {
            return Err(ModelError::RecordCorrupt {
                path,
                reason: format!(
                    "file is {} bytes but the manifest says {} (truncated or replaced?)",
                    bytes.len(),
                    manifest.weights.bytes
                ),
            });
        }
        let checksum = format!("{:016x}", fnv1a64(&bytes));
        if checksum != manifest.weights.fnv1a64 {
            return Err(ModelError::RecordCorrupt {
                path,
                reason: format!(
                    "checksum {checksum} differs from the manifest's {}",
                    manifest.weights.fnv1a64
                ),
            });
        }
        let device = cpu_device();
        let net = decode_weights(bytes, &manifest, &device).map_err(|err| match err {
            RecordError::Validation(reason) => ModelError::RecordMismatch {
                path: path.clone(),
                reason,
            },
            RecordError::Io(reason) => ModelError::RecordCorrupt {
                path: path.clone(),
                reason,
            },
        })?;
        tracing::debug!(dir = %dir.display(), kind = %manifest.kind, version = %manifest.version, "loaded model");
        Ok(LoadedModel::new(manifest, net, device))
    }
}

/// The artifact directory for a path naming either the directory or its manifest file.
fn artifact_dir(path: &Path) -> &Path {
    match (path.file_name(), path.parent()) {
        (Some(name), Some(parent)) if name == MANIFEST_FILE && path.is_file() => {
            if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            }
        }
        _ => path,
    }
}

/// Decode burnpack bytes into a network of the manifest's shape.
fn decode_weights(
    bytes: Vec<u8>,
    manifest: &Manifest,
    device: &Device,
) -> std::result::Result<MlpNet, RecordError> {
    // The burnpack reader is not guaranteed to reject every malformed input without
    // panicking; the size and checksum checks above already rule out truncation and bit rot,
    // and this guard turns anything left (a well-formed checksum over garbage) into an error.
    let sizes = manifest.layer_sizes();
    let device = device.clone();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))?;
        MlpNet::zeros(&sizes, &device).try_load_record(record)
    }))
    .unwrap_or_else(|_| Err(RecordError::Io("burnpack decoder rejected the data".into())))
}

/// Output of [`LoadedModel::forecast_batch`].
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    /// Predicted next reading per row, in raw units (`rows × features`, row-major).
    pub predicted: Vec<f32>,
    /// Anomaly score per row: mean absolute normalised residual.
    pub scores: Vec<f32>,
}

/// Outcome of [`LoadedModel::fine_tune`].
#[derive(Debug, Clone, PartialEq)]
pub struct FineTuneReport {
    /// Training loss (normalised MSE) on the given rows before the steps.
    pub loss_before: f32,
    /// Training loss on the same rows after the steps.
    pub loss_after: f32,
    /// Adam steps run.
    pub steps: usize,
    /// Rows (windows) used.
    pub rows: usize,
    /// Whether the new weights were kept. They are discarded (the model is unchanged) if the
    /// loss got worse or stopped being finite.
    pub accepted: bool,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// A model ready for inference on the CPU.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    manifest: Manifest,
    net: MlpNet,
    plain: plain::Mlp,
    device: Device,
}

impl LoadedModel {
    pub(crate) fn new(manifest: Manifest, net: MlpNet, device: Device) -> Self {
        let plain = plain::Mlp::from_net(&net);
        Self {
            manifest,
            net,
            plain,
            device,
        }
    }

    /// The manifest (kind, features, window, normalisation, provenance).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Autoencoder or forecaster.
    pub fn kind(&self) -> ModelKind {
        self.manifest.kind
    }

    /// Values per scoring row given to [`score_batch`](Self::score_batch):
    /// `window × features`, plus `features` for the forecaster (the actual next reading).
    pub fn row_len(&self) -> usize {
        self.manifest.row_len()
    }

    /// Check that the stream offers every input feature the model needs.
    pub fn validate_features(&self, available: &[&str]) -> Result<()> {
        self.manifest.validate_features(available)
    }

    /// A per-key window buffer shaped for this model (normalises raw readings with the
    /// manifest's statistics and emits rows of [`row_len`](Self::row_len) values).
    pub fn keyed_windows(&self) -> KeyedWindows {
        KeyedWindows::for_manifest(&self.manifest)
    }

    /// The same weights as a plain-Rust MLP (the benchmark floor).
    pub fn plain(&self) -> &plain::Mlp {
        &self.plain
    }

    /// The Burn network (on the NdArray CPU device).
    pub fn net(&self) -> &MlpNet {
        &self.net
    }

    /// Score `rows` normalised rows (`rows × row_len`, row-major, as produced by
    /// [`KeyedWindows`]) with the Burn forward pass. Autoencoder: mean squared reconstruction
    /// error; forecaster: mean absolute residual of the next reading. Higher is more anomalous.
    pub fn score_batch(&self, inputs: &[f32], rows: usize) -> Result<Vec<f32>> {
        let outputs = self.forward_burn(inputs, rows)?;
        Ok(self.scores_from_outputs(inputs, rows, &outputs))
    }

    /// [`score_batch`](Self::score_batch) computed with the plain-Rust forward pass instead
    /// of Burn (same weights, same maths).
    pub fn score_batch_plain(&self, inputs: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.check_rows(inputs, rows)?;
        let network_inputs = self.network_inputs(inputs, rows);
        let mut outputs = Vec::new();
        self.plain
            .forward_batch(&network_inputs, rows, &mut outputs);
        Ok(self.scores_from_outputs(inputs, rows, &outputs))
    }

    /// Forecaster only: predicted next reading (raw units) and score for each row.
    pub fn forecast_batch(&self, inputs: &[f32], rows: usize) -> Result<Forecast> {
        if self.manifest.kind != ModelKind::Forecaster {
            return Err(ModelError::InvalidInput(format!(
                "forecast_batch needs a forecaster, this model is an {}",
                self.manifest.kind
            )));
        }
        let outputs = self.forward_burn(inputs, rows)?;
        let scores = self.scores_from_outputs(inputs, rows, &outputs);
        let features = self.manifest.feature_count();
        let norm = &self.manifest.normalisation;
        let predicted = outputs
            .iter()
            .enumerate()
            .map(|(i, v)| norm.invert(i % features, *v))
            .collect();
        Ok(Forecast { predicted, scores })
    }

    /// [`forecast_batch`](Self::forecast_batch) computed with the plain-Rust forward pass
    /// (same weights, same maths; faster for a few rows).
    pub fn forecast_batch_plain(&self, inputs: &[f32], rows: usize) -> Result<Forecast> {
        if self.manifest.kind != ModelKind::Forecaster {
            return Err(ModelError::InvalidInput(format!(
                "forecast_batch_plain needs a forecaster, this model is an {}",
                self.manifest.kind
            )));
        }
        self.check_rows(inputs, rows)?;
        let network_inputs = self.network_inputs(inputs, rows);
        let mut outputs = Vec::new();
        self.plain
            .forward_batch(&network_inputs, rows, &mut outputs);
        let scores = self.scores_from_outputs(inputs, rows, &outputs);
        let features = self.manifest.feature_count();
        let norm = &self.manifest.normalisation;
        let predicted = outputs
            .iter()
            .enumerate()
            .map(|(i, v)| norm.invert(i % features, *v))
            .collect();
        Ok(Forecast { predicted, scores })
    }

    fn check_rows(&self, inputs: &[f32], rows: usize) -> Result<()> {
        let row_len = self.row_len();
        if rows.checked_mul(row_len) != Some(inputs.len()) {
            return Err(ModelError::InvalidInput(format!(
                "expected {rows} rows × {row_len} values = {} values, got {}",
                rows.saturating_mul(row_len),
                inputs.len()
            )));
        }
        Ok(())
    }

    /// The part of each row the network reads (the whole row for the autoencoder, the first
    /// `window × features` values for the forecaster).
    fn network_inputs<'a>(&self, inputs: &'a [f32], rows: usize) -> std::borrow::Cow<'a, [f32]> {
        match self.manifest.kind {
            ModelKind::Autoencoder => std::borrow::Cow::Borrowed(inputs),
            ModelKind::Forecaster => {
                let (row_len, input_len) = (self.row_len(), self.manifest.input_len());
                let mut context = Vec::with_capacity(rows * input_len);
                for row in inputs.chunks_exact(row_len) {
                    context.extend_from_slice(&row[..input_len]);
                }
                std::borrow::Cow::Owned(context)
            }
        }
    }

    fn forward_burn(&self, inputs: &[f32], rows: usize) -> Result<Vec<f32>> {
        self.check_rows(inputs, rows)?;
        if rows == 0 {
            return Ok(Vec::new());
        }
        let network_inputs = self.network_inputs(inputs, rows);
        let x = matrix(
            &network_inputs,
            rows,
            self.manifest.input_len(),
            &self.device,
        );
        Ok(to_vec(self.net.forward(x)))
    }

    fn scores_from_outputs(&self, inputs: &[f32], rows: usize, outputs: &[f32]) -> Vec<f32> {
        let row_len = self.row_len();
        let input_len = self.manifest.input_len();
        match self.manifest.kind {
            ModelKind::Autoencoder => inputs
                .chunks_exact(row_len)
                .zip(outputs.chunks_exact(input_len))
                .take(rows)
                .map(|(x, y)| {
                    let sum: f32 = x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum();
                    sum / input_len as f32
                })
                .collect(),
            ModelKind::Forecaster => {
                let features = self.manifest.feature_count();
                inputs
                    .chunks_exact(row_len)
                    .zip(outputs.chunks_exact(features))
                    .take(rows)
                    .map(|(row, predicted)| {
                        let actual = &row[input_len..];
                        let sum: f32 = actual
                            .iter()
                            .zip(predicted)
                            .map(|(a, p)| (a - p).abs())
                            .sum();
                        sum / features as f32
                    })
                    .collect()
            }
        }
    }

    /// Run `steps` full-batch Adam steps (learning rate `lr`) on `rows` recent normal rows
    /// (`rows × row_len`, the same layout as [`score_batch`](Self::score_batch)), on the CPU.
    ///
    /// The weights are replaced only if the loss on those rows does not get worse; the
    /// report says whether they were. Cost grows linearly with `steps × rows`; see the crate
    /// docs for measured figures and how to budget calls.
    pub fn fine_tune(
        &mut self,
        recent_normal: &[f32],
        rows: usize,
        steps: usize,
        lr: f64,
    ) -> Result<FineTuneReport> {
        let started = Instant::now();
        self.check_rows(recent_normal, rows)?;
        if rows == 0 {
            return Err(ModelError::InvalidInput(
                "fine_tune needs at least one row".into(),
            ));
        }
        if !(lr.is_finite() && lr > 0.0) {
            return Err(ModelError::InvalidConfig(format!(
                "learning rate must be finite and > 0, got {lr}"
            )));
        }
        if let Some(i) = recent_normal.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidInput(format!(
                "fine_tune row value at index {i} is not finite"
            )));
        }
        let (inputs, targets) = split_rows(&self.manifest, recent_normal, rows);
        let target_len = targets.len() / rows;
        let input_len = self.manifest.input_len();

        let loss_before = loss_of(
            &self.net,
            &inputs,
            &targets,
            rows,
            input_len,
            target_len,
            &self.device,
        );
        let autodiff = self.device.clone().autodiff();
        let mut net = self.net.clone().fork(&autodiff).train();
        let mut optimizer = AdamConfig::new().init();
        let x = matrix(&inputs, rows, input_len, &autodiff);
        let y = matrix(&targets, rows, target_len, &autodiff);
        for _ in 0..steps {
            let loss = (net.forward(x.clone()) - y.clone()).square().mean();
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = optimizer.step(lr, net, grads);
        }
        let tuned = net.valid().fork(&self.device);
        let loss_after = loss_of(
            &tuned,
            &inputs,
            &targets,
            rows,
            input_len,
            target_len,
            &self.device,
        );
        let accepted = loss_after.is_finite() && loss_after <= loss_before;
        if accepted {
            self.plain = plain::Mlp::from_net(&tuned);
            self.net = tuned;
            self.manifest.training.fine_tune_steps += steps as u64;
        }
        let report = FineTuneReport {
            loss_before,
            loss_after,
            steps,
            rows,
            accepted,
            elapsed: started.elapsed(),
        };
        tracing::debug!(?report, "fine-tuned model");
        Ok(report)
    }

    /// Write the artifact (weights `model.bpk` + `manifest.json`) into `dir`, creating it.
    ///
    /// Files are written under temporary names and renamed, weights first, so a reader never
    /// sees a manifest whose weights are not in place.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<Manifest> {
        let dir = dir.as_ref();
        fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let bytes = self
            .net
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|err| ModelError::Serialise(err.to_string()))?;
        let bytes: &[u8] = &bytes;
        let mut manifest = self.manifest.clone();
        manifest.weights = WeightsInfo {
            file: WEIGHTS_FILE.to_string(),
            bytes: bytes.len() as u64,
            fnv1a64: format!("{:016x}", fnv1a64(bytes)),
        };
        let json = serde_json::to_string_pretty(&manifest)
            .map_err(|err| ModelError::Serialise(err.to_string()))?;
        write_atomically(&dir.join(WEIGHTS_FILE), bytes)?;
        write_atomically(&dir.join(MANIFEST_FILE), json.as_bytes())?;
        Ok(manifest)
    }
}

/// Split scoring rows into network inputs and training targets.
pub(crate) fn split_rows(
    manifest: &Manifest,
    rows_data: &[f32],
    rows: usize,
) -> (Vec<f32>, Vec<f32>) {
    match manifest.kind {
        ModelKind::Autoencoder => (rows_data.to_vec(), rows_data.to_vec()),
        ModelKind::Forecaster => {
            let (row_len, input_len) = (manifest.row_len(), manifest.input_len());
            let mut inputs = Vec::with_capacity(rows * input_len);
            let mut targets = Vec::with_capacity(rows * (row_len - input_len));
            for row in rows_data.chunks_exact(row_len) {
                inputs.extend_from_slice(&row[..input_len]);
                targets.extend_from_slice(&row[input_len..]);
            }
            (inputs, targets)
        }
    }
}

/// Mean squared error of `net` on the given rows (no gradients).
fn loss_of(
    net: &MlpNet,
    inputs: &[f32],
    targets: &[f32],
    rows: usize,
    input_len: usize,
    target_len: usize,
    device: &Device,
) -> f32 {
    let x = matrix(inputs, rows, input_len, device);
    let y = matrix(targets, rows, target_len, device);
    (net.forward(x) - y).square().mean().into_scalar::<f32>()
}

fn io_error(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp: PathBuf = path.to_path_buf().into_os_string().into();
    tmp.as_mut_os_string().push(".tmp");
    fs::write(&tmp, bytes).map_err(|source| io_error(&tmp, source))?;
    fs::rename(&tmp, path).map_err(|source| io_error(path, source))
}
