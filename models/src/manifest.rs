//! The artifact manifest: what a saved model is, what it reads and how it was made.
//!
//! `manifest.json` sits next to the weights file (`model.bpk`, Burn's burnpack format, full
//! `f32` precision) in the artifact directory. It is the single source of truth for the
//! network's shape: the weights are checked against it on load.

use serde::{Deserialize, Serialize};

/// Manifest format written by this version of the crate.
pub const FORMAT_VERSION: u32 = 1;

/// File name of the manifest inside an artifact directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// File name of the weights (burnpack record) inside an artifact directory.
pub const WEIGHTS_FILE: &str = "model.bpk";

/// Largest accepted model input (window × features); keeps artifacts small and rejects
/// manifests that would allocate absurd layers.
pub const MAX_INPUT_LEN: usize = 4096;

/// Largest accepted hidden layer width.
pub const MAX_HIDDEN: usize = 1024;

/// Which model an artifact holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// MLP autoencoder; the score is the mean squared reconstruction error of the window.
    Autoencoder,
    /// MLP forecaster over the last `window` readings; the score is the mean absolute
    /// residual of the next reading.
    Forecaster,
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelKind::Autoencoder => "autoencoder",
            ModelKind::Forecaster => "forecaster",
        })
    }
}

/// How raw readings are scaled before they reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NormalisationMethod {
    /// `(x - mean) / std`.
    #[default]
    Zscore,
    /// `(x - median) / (IQR / 1.349)`: robust to outliers left in the training data.
    Robust,
}

/// Per-feature normalisation: `normalised = (raw - center) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalisation {
    /// How `center` and `scale` were estimated.
    pub method: NormalisationMethod,
    /// Per-feature center (mean or median), in `input_features` order.
    pub center: Vec<f32>,
    /// Per-feature scale (std or IQR/1.349), strictly positive.
    pub scale: Vec<f32>,
}

impl Normalisation {
    /// Normalise one raw value of feature `feature`.
    #[inline]
    pub fn apply(&self, feature: usize, raw: f32) -> f32 {
        (raw - self.center[feature]) / self.scale[feature]
    }

    /// Undo [`apply`](Self::apply) for feature `feature`.
    #[inline]
    pub fn invert(&self, feature: usize, normalised: f32) -> f32 {
        normalised * self.scale[feature] + self.center[feature]
    }
}

/// Where the weights came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TrainingInfo {
    /// Free-form description of the training data (file name, query, ...).
    pub data_source: String,
    /// Readings (rows) in the training data.
    pub readings: usize,
    /// Training examples (windows) built from them.
    pub windows: usize,
    /// Epochs run.
    pub epochs: usize,
    /// Minibatch size.
    pub batch_size: usize,
    /// Adam learning rate.
    pub learning_rate: f64,
    /// Mean training loss (normalised MSE) of the last epoch.
    pub final_loss: f32,
    /// Seed of weight initialisation and shuffling.
    pub seed: u64,
    /// Adam steps applied after training by online fine-tuning (0 for a freshly trained model).
    #[serde(default)]
    pub fine_tune_steps: u64,
}

/// Size and checksum of the weights file, so truncation and corruption are caught before
/// the weights are decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsInfo {
    /// File name relative to the artifact directory.
    pub file: String,
    /// Exact size in bytes.
    pub bytes: u64,
    /// FNV-1a 64-bit hash of the file, lowercase hex.
    pub fnv1a64: String,
}

/// Contents of `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Manifest format; this crate reads [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Autoencoder or forecaster.
    pub kind: ModelKind,
    /// Model version chosen by whoever trained it (e.g. `"1"`).
    pub version: String,
    /// Names of the input features, in the order the network sees them.
    pub input_features: Vec<String>,
    /// Readings per key the model looks at (`W`). The autoencoder reconstructs `W` readings;
    /// the forecaster predicts reading `W + 1` from the previous `W`.
    pub window: usize,
    /// Hidden layer widths of the encoder half (autoencoder; mirrored for the decoder, the
    /// last one is the bottleneck) or of the whole MLP (forecaster).
    pub hidden: Vec<usize>,
    /// Input scaling.
    pub normalisation: Normalisation,
    /// Provenance.
    pub training: TrainingInfo,
    /// The weights file.
    pub weights: WeightsInfo,
}

impl Manifest {
    /// Number of input features (`F`).
    pub fn feature_count(&self) -> usize {
        self.input_features.len()
    }

    /// Length of the network input: `window × features` normalised values.
    pub fn input_len(&self) -> usize {
        self.window * self.feature_count()
    }

    /// Length of one scoring row given to `score_batch`: the network input for the
    /// autoencoder, the network input followed by the actual next reading (`F` values) for
    /// the forecaster.
    pub fn row_len(&self) -> usize {
        match self.kind {
            ModelKind::Autoencoder => self.input_len(),
            ModelKind::Forecaster => self.input_len() + self.feature_count(),
        }
    }

    /// Readings per key that make one scoring row (`W`, or `W + 1` for the forecaster).
    pub fn readings_per_row(&self) -> usize {
        match self.kind {
            ModelKind::Autoencoder => self.window,
            ModelKind::Forecaster => self.window + 1,
        }
    }

    /// Widths of every layer boundary, input first and output last.
    pub fn layer_sizes(&self) -> Vec<usize> {
        layer_sizes(
            self.kind,
            self.input_len(),
            self.feature_count(),
            &self.hidden,
        )
    }

    /// Check that every feature the model needs is in `available`.
    pub fn validate_features(&self, available: &[&str]) -> Result<(), crate::ModelError> {
        let missing: Vec<String> = self
            .input_features
            .iter()
            .filter(|f| !available.contains(&f.as_str()))
            .cloned()
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(crate::ModelError::MissingFeatures {
                missing,
                available: available.iter().map(|s| s.to_string()).collect(),
            })
        }
    }

    /// Check internal consistency; the error text says which field is wrong.
    pub fn check(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this build reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        check_shape(self.kind, self.window, &self.input_features, &self.hidden)?;
        let f = self.feature_count();
        let n = &self.normalisation;
        if n.center.len() != f || n.scale.len() != f {
            return Err(format!(
                "normalisation has {} centers and {} scales but there are {f} input features",
                n.center.len(),
                n.scale.len()
            ));
        }
        if let Some(i) = n.center.iter().position(|c| !c.is_finite()) {
            return Err(format!("normalisation center of feature {i} is not finite"));
        }
        if let Some(i) = n.scale.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(format!(
                "normalisation scale of feature {i} must be finite and > 0"
            ));
        }
        if self.weights.file.is_empty()
            || self.weights.file.contains('/')
            || self.weights.file.contains('\\')
            || self.weights.file == ".."
        {
            return Err(format!(
                "weights.file {:?} must be a plain file name inside the artifact directory",
                self.weights.file
            ));
        }
        Ok(())
    }
}

/// Layer widths for a model of `kind` (input first, output last).
pub(crate) fn layer_sizes(
    kind: ModelKind,
    input_len: usize,
    features: usize,
    hidden: &[usize],
) -> Vec<usize> {
    let mut sizes = vec![input_len];
    sizes.extend_from_slice(hidden);
    match kind {
        ModelKind::Autoencoder => {
            sizes.extend(hidden.iter().rev().skip(1));
            sizes.push(input_len);
        }
        ModelKind::Forecaster => sizes.push(features),
    }
    sizes
}

/// Shape checks shared by the manifest and the training configuration.
pub(crate) fn check_shape(
    kind: ModelKind,
    window: usize,
    features: &[String],
    hidden: &[usize],
) -> Result<(), String> {
    if features.is_empty() {
        return Err("input_features is empty".into());
    }
    for (i, name) in features.iter().enumerate() {
        if features[..i].contains(name) {
            return Err(format!("input feature {name:?} is listed twice"));
        }
    }
    if window == 0 {
        return Err("window must be at least 1".into());
    }
    let input_len = window.saturating_mul(features.len());
    if input_len > MAX_INPUT_LEN {
        return Err(format!(
            "window × features = {input_len} exceeds the limit of {MAX_INPUT_LEN}"
        ));
    }
    if hidden.is_empty() {
        return Err(format!("{kind} needs at least one hidden layer width"));
    }
    if let Some(h) = hidden.iter().find(|h| **h == 0 || **h > MAX_HIDDEN) {
        return Err(format!("hidden width {h} is out of range 1..={MAX_HIDDEN}"));
    }
    Ok(())
}

/// FNV-1a 64-bit hash, used as the weights checksum.
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
