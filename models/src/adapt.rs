//! Online adaptation: periodically fine-tune a model on recent rows that scored as normal.

use crate::error::Result;
use crate::model::{FineTuneReport, LoadedModel};

/// Settings of an [`Adapter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterConfig {
    /// Run a fine-tune after this many observed rows.
    pub every_rows: u64,
    /// Recent normal rows kept (and used per fine-tune).
    pub buffer_rows: usize,
    /// Adam steps per fine-tune.
    pub steps: usize,
    /// Adam learning rate of fine-tuning (smaller than training's, to drift slowly).
    pub learning_rate: f64,
    /// A row counts as normal (and is kept) only if its calibrated score is below this.
    pub normal_below: f32,
}

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            every_rows: 100_000,
            buffer_rows: 256,
            steps: 5,
            learning_rate: 1e-4,
            normal_below: 2.0,
        }
    }
}

/// Keeps a ring of recent normal scoring rows and fine-tunes the model every
/// `every_rows` rows. With the defaults a fine-tune costs a few milliseconds (see the crate
/// docs), i.e. far below 1 % of a core at any realistic event rate.
#[derive(Debug, Clone)]
pub struct Adapter {
    config: AdapterConfig,
    row_len: usize,
    buffer: Vec<f32>,
    next: usize,
    filled: usize,
    since_last: u64,
}

impl Adapter {
    /// An adapter for rows of `row_len` values (see [`LoadedModel::row_len`]).
    pub fn new(config: AdapterConfig, row_len: usize) -> Self {
        let buffer_rows = config.buffer_rows.max(1);
        Self {
            config: AdapterConfig {
                buffer_rows,
                ..config
            },
            row_len,
            buffer: vec![0.0; buffer_rows * row_len],
            next: 0,
            filled: 0,
            since_last: 0,
        }
    }

    /// Rows currently buffered.
    pub fn buffered_rows(&self) -> usize {
        self.filled
    }

    /// Record one scored row and its calibrated score; rows of the wrong length are ignored.
    pub fn observe(&mut self, row: &[f32], calibrated: f32) {
        self.since_last = self.since_last.saturating_add(1);
        if row.len() != self.row_len
            || calibrated.is_nan()
            || calibrated >= self.config.normal_below
        {
            return;
        }
        let start = self.next * self.row_len;
        self.buffer[start..start + self.row_len].copy_from_slice(row);
        self.next = (self.next + 1) % self.config.buffer_rows;
        self.filled = (self.filled + 1).min(self.config.buffer_rows);
    }

    /// Whether [`maybe_fine_tune`](Self::maybe_fine_tune) would fine-tune now: `every_rows`
    /// rows observed since the last fine-tune and the buffer full.
    pub fn is_due(&self) -> bool {
        self.since_last >= self.config.every_rows && self.filled >= self.config.buffer_rows
    }

    /// If `every_rows` rows were observed since the last fine-tune and the buffer is full,
    /// fine-tune `model` on the buffered rows and return the report.
    pub fn maybe_fine_tune(&mut self, model: &mut LoadedModel) -> Result<Option<FineTuneReport>> {
        if self.since_last < self.config.every_rows || self.filled < self.config.buffer_rows {
            return Ok(None);
        }
        self.since_last = 0;
        let report = model.fine_tune(
            &self.buffer,
            self.config.buffer_rows,
            self.config.steps,
            self.config.learning_rate,
        )?;
        Ok(Some(report))
    }
}
