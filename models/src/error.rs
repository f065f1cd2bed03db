//! Errors returned by this crate.

use std::path::PathBuf;

/// Everything that can go wrong loading, saving, training or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The artifact directory (or a file inside it) does not exist.
    #[error("model artifact not found at {path}")]
    NotFound {
        /// The path that was looked up.
        path: PathBuf,
    },
    /// Reading or writing a file of the artifact failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `manifest.json` is not valid JSON or does not have the expected fields.
    #[error("model manifest {path} could not be parsed: {source}")]
    ManifestParse {
        /// The manifest file.
        path: PathBuf,
        /// The JSON error, with line and column.
        source: serde_json::Error,
    },
    /// `manifest.json` parsed but its contents are inconsistent or unsupported.
    #[error("model manifest {path} is invalid: {reason}")]
    ManifestInvalid {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The weights file is truncated or corrupt (size or checksum differs from the manifest,
    /// or the burnpack container cannot be decoded).
    #[error("model weights {path} are corrupt: {reason}")]
    RecordCorrupt {
        /// The weights file.
        path: PathBuf,
        /// What check failed.
        reason: String,
    },
    /// The weights file decodes but its tensors do not match the shapes the manifest declares.
    #[error("model weights {path} do not match the manifest: {reason}")]
    RecordMismatch {
        /// The weights file.
        path: PathBuf,
        /// Which tensors differ.
        reason: String,
    },
    /// Input features the model needs are not available in the stream.
    #[error(
        "model needs input feature(s) {missing:?} that are not available (available: {available:?})"
    )]
    MissingFeatures {
        /// Features the manifest lists but the caller does not have.
        missing: Vec<String>,
        /// The features the caller offered.
        available: Vec<String>,
    },
    /// An input buffer or argument has the wrong size or an invalid value.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A training or model configuration is invalid.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// Training data is unusable (too short, non-finite values, ...).
    #[error("invalid training data: {0}")]
    InvalidTrainingData(String),
    /// Serialising weights failed.
    #[error("could not serialise model weights: {0}")]
    Serialise(String),
}

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
