//! Per-key sliding windows: the state the `infer` transform keeps between events.

use std::collections::HashMap;

use crate::error::{ModelError, Result};
use crate::manifest::{Manifest, Normalisation};

/// Keeps, for every key (device), the last `readings_per_row` normalised readings in a ring
/// buffer, and emits a scoring row as soon as a key's window is full.
///
/// Rows are appended to a caller-owned buffer so a batch of events across many keys turns
/// into one contiguous `rows × row_len` matrix for
/// [`LoadedModel::score_batch`](crate::LoadedModel::score_batch) without per-row allocation.
///
/// Forecaster rows hold `W + 1` readings: the row emitted for a reading scores *that*
/// reading against the forecast made from the `W` before it.
#[derive(Debug, Clone)]
pub struct KeyedWindows {
    features: usize,
    readings_per_row: usize,
    normalisation: Normalisation,
    index_of: HashMap<String, usize>,
    names: Vec<String>,
    rings: Vec<Ring>,
}

/// One key's ring buffer of normalised readings.
#[derive(Debug, Clone)]
struct Ring {
    values: Vec<f32>,
    /// Slot the next reading goes to (the oldest slot once full).
    next: usize,
    /// Readings held, saturating at the window length.
    filled: usize,
}

impl KeyedWindows {
    /// Windows shaped for the model described by `manifest` (`W` readings per row for the
    /// autoencoder, `W + 1` for the forecaster: `W` of context and the actual next reading).
    pub fn for_manifest(manifest: &Manifest) -> Self {
        Self::new(manifest.readings_per_row(), manifest.normalisation.clone())
    }

    /// Windows of `readings_per_row` readings of `normalisation.center.len()` features each.
    /// A zero `readings_per_row` is treated as 1.
    pub fn new(readings_per_row: usize, normalisation: Normalisation) -> Self {
        Self {
            features: normalisation.center.len(),
            readings_per_row: readings_per_row.max(1),
            normalisation,
            index_of: HashMap::new(),
            names: Vec::new(),
            rings: Vec::new(),
        }
    }

    /// Values per emitted row (`readings_per_row × features`).
    pub fn row_len(&self) -> usize {
        self.readings_per_row * self.features
    }

    /// Number of distinct keys seen.
    pub fn key_count(&self) -> usize {
        self.names.len()
    }

    /// The key with index `index`, if any.
    pub fn key_name(&self, index: usize) -> Option<&str> {
        self.names.get(index).map(String::as_str)
    }

    /// The dense index of `key`, registering it on first sight. Indices start at 0 and are
    /// stable, so they can index per-key state such as a [`Calibrator`](crate::Calibrator).
    pub fn key_index(&mut self, key: &str) -> usize {
        if let Some(index) = self.index_of.get(key) {
            return *index;
        }
        let index = self.names.len();
        self.index_of.insert(key.to_string(), index);
        self.names.push(key.to_string());
        self.rings.push(Ring {
            values: vec![0.0; self.row_len()],
            next: 0,
            filled: 0,
        });
        index
    }

    /// Add one raw reading (`features` values, manifest order) for `key`. If the key's window
    /// is now full, append its row (oldest reading first) to `rows` and return the key index.
    ///
    /// A reading with the wrong number of values or a non-finite value is rejected with an
    /// error and leaves the window unchanged.
    pub fn push(
        &mut self,
        key: &str,
        reading: &[f32],
        rows: &mut Vec<f32>,
    ) -> Result<Option<usize>> {
        let index = self.key_index(key);
        self.push_index(index, reading, rows)
    }

    /// [`push`](Self::push) for a key already registered with [`key_index`](Self::key_index).
    pub fn push_index(
        &mut self,
        index: usize,
        reading: &[f32],
        rows: &mut Vec<f32>,
    ) -> Result<Option<usize>> {
        if reading.len() != self.features {
            return Err(ModelError::InvalidInput(format!(
                "reading has {} values, the model reads {} features",
                reading.len(),
                self.features
            )));
        }
        if let Some(i) = reading.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::InvalidInput(format!(
                "reading value of feature {i} is not finite"
            )));
        }
        let features = self.features;
        let slots = self.readings_per_row;
        let ring = self
            .rings
            .get_mut(index)
            .ok_or_else(|| ModelError::InvalidInput(format!("no key with index {index}")))?;
        let start = ring.next * features;
        for (f, (slot, raw)) in ring.values[start..start + features]
            .iter_mut()
            .zip(reading)
            .enumerate()
        {
            *slot = self.normalisation.apply(f, *raw);
        }
        ring.next = (ring.next + 1) % slots;
        ring.filled = (ring.filled + 1).min(slots);
        if ring.filled < slots {
            return Ok(None);
        }
        let split = ring.next * features;
        rows.extend_from_slice(&ring.values[split..]);
        rows.extend_from_slice(&ring.values[..split]);
        Ok(Some(index))
    }

    /// Forget `key`'s readings (e.g. after a gap in the data); its index stays valid.
    pub fn reset(&mut self, key: &str) {
        if let Some(index) = self.index_of.get(key)
            && let Some(ring) = self.rings.get_mut(*index)
        {
            ring.next = 0;
            ring.filled = 0;
        }
    }
}
