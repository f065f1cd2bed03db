//! Online per-key score calibration.
//!
//! Raw anomaly scores are not comparable across devices: a noisy pump reconstructs worse
//! than a quiet one, so one raw threshold either floods the noisy device with alerts or
//! misses faults on the quiet one. [`Calibrator`] rescales each key's scores by that key's
//! own recent score distribution.
//!
//! **Choice.** Reconstruction errors and absolute residuals are positive and right-skewed
//! (a squared error of Gaussian noise is χ²-like); their logarithm is close to symmetric. So
//! per key we track an exponentially weighted mean and variance of `ln(score + ε)` and emit
//! `z = (ln(score + ε) − mean) / std`, clamped at 0 from below: "how many of this device's
//! usual standard deviations above its usual error". A z of 4 means the same on every device,
//! and [`tail_probability`] turns it into a Gaussian tail probability when a value in `[0, 1]`
//! is preferred. This costs O(1) time and three numbers per key, unlike a streaming quantile
//! sketch, and adapts with a configurable half-life.
//!
//! * **Warm-up:** the first `warmup` scores of a key only feed the estimate (exact running
//!   mean/variance), and calibrate to 0.
//! * **Robustness:** after warm-up, each update is winsorised at `mean ± clip_z · std`, so
//!   a burst of anomalies can neither drag the mean up quickly nor inflate the variance and
//!   hide itself; a lasting change of regime is still absorbed, slowly.
//! * **Floor:** the std is at least `min_std` (in log units), so a key whose scores are
//!   nearly constant does not turn tiny fluctuations into huge z values.

/// Settings of a [`Calibrator`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CalibratorConfig {
    /// Events after which an old score's weight has halved.
    pub half_life: f32,
    /// Scores per key used only to estimate the distribution before z values are emitted.
    pub warmup: u32,
    /// Winsorisation bound of updates, in standard deviations.
    pub clip_z: f32,
    /// Smallest standard deviation of the (log) score.
    pub min_std: f32,
    /// Calibrate `ln(score)` (true, the default: errors are right-skewed, and their log is
    /// close to symmetric) or the score itself (false: keeps a spike ten times the usual
    /// error ten deviations away, where the log puts it about two away).
    pub log_scale: bool,
}

impl Default for CalibratorConfig {
    fn default() -> Self {
        Self {
            half_life: 1000.0,
            warmup: 50,
            clip_z: 3.0,
            min_std: 0.05,
            log_scale: true,
        }
    }
}

/// Offset added before the logarithm so a perfect reconstruction (score 0) stays finite.
const LOG_EPSILON: f32 = 1e-6;

/// Largest z emitted (also the value for an infinite raw score).
pub const MAX_Z: f32 = 1e3;

/// Running state of one key.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    count: u32,
    mean: f32,
    /// Variance (after warm-up) or Welford's sum of squared deviations (during warm-up).
    spread: f32,
}

/// Per-key calibration of raw scores into comparable z values; see the module docs.
#[derive(Debug, Clone)]
pub struct Calibrator {
    config: CalibratorConfig,
    alpha: f32,
    keys: Vec<KeyState>,
}

impl Calibrator {
    /// A calibrator with the given settings (a non-positive half-life is treated as 1 event).
    pub fn new(config: CalibratorConfig) -> Self {
        let half_life = if config.half_life.is_finite() && config.half_life > 1.0 {
            config.half_life
        } else {
            1.0
        };
        Self {
            config,
            alpha: 1.0 - 0.5f32.powf(1.0 / half_life),
            keys: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &CalibratorConfig {
        &self.config
    }

    /// Scores seen so far for key `key`.
    pub fn count(&self, key: usize) -> u32 {
        self.keys.get(key).map_or(0, |s| s.count)
    }

    /// Whether key `key` has finished its warm-up.
    pub fn is_warm(&self, key: usize) -> bool {
        self.count(key) >= self.config.warmup
    }

    /// Calibrate the raw score of key `key` (a dense index, e.g. from
    /// [`KeyedWindows`](crate::KeyedWindows)) and fold it into the key's statistics.
    /// Returns 0 during warm-up, then `z ≥ 0`. A NaN score returns 0 and is not learned;
    /// `+∞` returns [`MAX_Z`].
    pub fn calibrate(&mut self, key: usize, raw: f32) -> f32 {
        if raw.is_nan() {
            return 0.0;
        }
        if raw == f32::INFINITY {
            return if self.is_warm(key) { MAX_Z } else { 0.0 };
        }
        if key >= self.keys.len() {
            self.keys.resize(key + 1, KeyState::default());
        }
        let x = if self.config.log_scale {
            (raw.max(0.0) + LOG_EPSILON).ln()
        } else {
            raw.max(0.0)
        };
        let config = self.config;
        let alpha = self.alpha;
        let state = &mut self.keys[key];
        if state.count < config.warmup {
            // Welford's exact running mean and sum of squares.
            state.count += 1;
            let delta = x - state.mean;
            state.mean += delta / state.count as f32;
            state.spread += delta * (x - state.mean);
            if state.count == config.warmup {
                state.spread /= state.count as f32; // switch to a variance
            }
            return 0.0;
        }
        if config.warmup == 0 && state.count == 0 {
            state.mean = x;
        }
        let std = state.spread.max(0.0).sqrt().max(config.min_std);
        let z = (x - state.mean) / std;
        let clipped = state.mean + z.clamp(-config.clip_z, config.clip_z) * std;
        let delta = clipped - state.mean;
        state.mean += alpha * delta;
        state.spread = (1.0 - alpha) * (state.spread + alpha * delta * delta);
        state.count = state.count.saturating_add(1);
        z.clamp(0.0, MAX_Z)
    }
}

/// Upper-tail probability `P(Z > z)` of a standard normal: maps a calibrated z to `[0, 1]`
/// (small = anomalous). Accurate to about 1e-7 (Abramowitz & Stegun 7.1.26 for `erfc`).
pub fn tail_probability(z: f32) -> f32 {
    let x = f64::from(z) / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc_abs = poly * (-x * x).exp();
    let erfc = if x >= 0.0 { erfc_abs } else { 2.0 - erfc_abs };
    (0.5 * erfc) as f32
}
