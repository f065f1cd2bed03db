//! Burn models for edge anomaly scoring.
//!
//! * [`train()`] an MLP **autoencoder** (score: mean squared reconstruction error of a window)
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
//!
//! # Performance (measured with `cargo bench -p isthmus-models --bench forward`)
//!
//! Autoencoder with window 32, layers `[32, 32, 8, 32, 32]`, one shared 2-core machine under
//! load, events (rows) per second on one core:
//!
//! | batch | `score_batch` (Burn NdArray) | `score_batch_plain` |
//! | ----: | ---------------------------: | ------------------: |
//! | 1     | 0.12 M                       | 1.5 M               |
//! | 64    | 2.6 M                        | 1.8 M               |
//! | 1024  | 3.8 M                        | 1.8 M               |
//!
//! The whole hot path (100 keys, [`KeyedWindows::push`] + `score_batch` + [`Calibrator`])
//! runs at 3.1 M events/s at batch 1024. Burn has a fixed per-call cost (~8 µs), so batch
//! across keys; for batches of a few rows `score_batch_plain` (same weights) is faster.
//!
//! # Budgeting online adaptation
//!
//! [`LoadedModel::fine_tune`] costs about 1 ms for 1 step and 1.8 ms for 5 steps on 256
//! windows, 10.5 ms for 5 steps on 1024 windows (same model). Its CPU share is
//! `cost × event_rate / every_n_events`: to stay under 5 % of a core with a 2 ms fine-tune,
//! run it at most every `0.04 × event_rate` events (every 4 000 events at 100 k events/s).
//! [`Adapter`]'s defaults (5 steps on 256 windows every 100 000 rows) use < 0.2 % at
//! 100 k events/s.

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
