//! The Numenta Anomaly Benchmark (NAB) score, written from NAB's published definition
//! (Lavin & Ahmad 2015 and NAB v1.1's sweeper).
//!
//! A detector emits one anomaly score in `[0, 1]` per row; a row is a *detection* when its
//! score is at least the threshold. Per series:
//!
//! * the first `min(floor(0.15 n), 750)` rows are the probationary period and are ignored;
//! * each labelled window detected at least once earns `A_TP * σ(p) / σ(-1)` for its
//!   earliest detection, where `p = -(right - i + 1) / width` and
//!   `σ(x) = 2 / (1 + e^{5x}) - 1` (so `1 * A_TP` at the window's first row, falling towards
//!   0 at its last row); later detections in the same window add nothing;
//! * a window with no detection costs `-A_FN`;
//! * a detection outside every window costs `A_FP * σ(p)` with
//!   `p = (i - right_prev) / (width_prev - 1)` measured from the preceding window's last row
//!   (σ is -1 from `p >= 3` on), or `-A_FP` if no window precedes it.
//!
//! The corpus raw score is the sum over series; it is normalised as
//! `100 * (raw - null) / (perfect - null)`, where `null` is the raw score of a detector that
//! never fires (`-A_FN` per window) and `perfect = A_TP * windows`. The threshold is chosen
//! per profile by sweeping every distinct anomaly score over the whole corpus.

mod corpus;
mod scoreboard;
mod scorer;

pub use corpus::{Corpus, Series, load_corpus, load_series_csv};
pub use scoreboard::{PublishedScore, load_scoreboard, parse_scoreboard};
pub use scorer::{
    PROBATION_FRACTION, Profile, ProfileResult, SeriesScore, probation_length, scaled_sigmoid,
    score, score_all_profiles, score_series_at,
};
