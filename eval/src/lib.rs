//! Scoring anomaly detectors on labelled benchmark data.
//!
//! * [`nab`]: the Numenta Anomaly Benchmark score (Lavin & Ahmad 2015), with NAB's three
//!   application profiles, its probationary period, window-relative sigmoid credit and
//!   corpus-wide threshold optimisation, plus a loader for the NAB corpus and a parser for
//!   the published scoreboard.
//! * [`skab`]: pointwise precision, recall and F1 plus detection delay on the Skoltech
//!   Anomaly Benchmark, and a loader for its files.
//! * [`report`]: markdown tables of both.

pub mod nab;
pub mod report;
pub mod skab;
mod time;

use std::path::PathBuf;

pub use time::parse_timestamp_ms;

/// Everything that can go wrong while loading benchmark data or scoring a detector.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A data or label file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse {
        /// The file being parsed.
        path: PathBuf,
        /// 1-based line number (0 when the error concerns the whole file).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The inputs handed to a scorer are inconsistent (lengths, non-finite scores,
    /// windows that match no row, ...).
    #[error("{series}: {message}")]
    InvalidInput {
        /// The series (file) concerned.
        series: String,
        /// What is wrong.
        message: String,
    },
    /// A corpus score cannot be normalised because no series has an anomaly window.
    #[error("cannot normalise a NAB score: the scored series have no anomaly window")]
    NoWindows,
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, EvalError>;

/// The shared benchmark data directory: `$ISTHMUS_DATA` if set, else `shared/data` next to
/// the workspace (`<workspace>/../shared/data`). It holds `nab/` and `skab/`.
pub fn data_dir() -> PathBuf {
    match std::env::var_os("ISTHMUS_DATA") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")),
    }
}

/// Reads a whole file, naming it in the error.
fn read_to_string(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| EvalError::Io {
        path: path.to_path_buf(),
        source,
    })
}
