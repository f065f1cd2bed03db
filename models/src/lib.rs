//! Burn models for edge anomaly scoring.
//!
//! * [`train`] an MLP **autoencoder** (score: mean squared reconstruction error of a window)
//!   or **forecaster** (score: mean absolute residual of the next reading) on normal data,
//!   deterministically from a seed, and [`TrainedModel::save`] it as an artifact directory:
//!   `model.bpk` (Burn burnpack record, full `f32`) + `manifest.json` ([`Manifest`]).
//! * [`ModelArtifact::load`] it back with clear errors for anything missing or corrupt.
//! * At run time, [`KeyedWindows`] turns per-key raw readings into normalised rows,
//!   [`LoadedModel::score_batch`] scores a batch of them on the CPU (Burn NdArray backend),
//!   and [`Calibrator`] makes scores comparable across keys.
//! * [`LoadedModel::fine_tune`] / [`Adapter`] adapt the weights online on recent normal rows.
//! * [`plain::Mlp`] is the same forward pass in plain Rust, the benchmark floor.
//!
//! Rows are row-major `f32` slices: the autoencoder row is `window × features` values
//! (oldest reading first, features in manifest order within a reading); the forecaster row
//! adds the actual next reading (`features` values) at the end.

pub mod adapt;
pub mod calibrate;
pub mod error;
pub mod manifest;
pub mod model;
pub mod nn;
pub mod plain;
pub mod train;
pub mod windows;

pub use adapt::{Adapter, AdapterConfig};
pub use calibrate::{Calibrator, CalibratorConfig, tail_probability};
pub use error::{ModelError, Result};
pub use manifest::{Manifest, ModelKind, Normalisation, NormalisationMethod, TrainingInfo};
pub use model::{FineTuneReport, Forecast, LoadedModel, ModelArtifact, cpu_device};
pub use train::{EpochReport, TrainConfig, TrainedModel, TrainingData, train};
pub use windows::KeyedWindows;
