//! NAB scoring: per-row sweep scores, the corpus-wide threshold sweep and normalisation.

use super::corpus::Series;
use crate::{EvalError, Result};

/// Fraction of each series (at most 15 % of 5000 rows) that is NAB's probationary period.
pub const PROBATION_FRACTION: f64 = 0.15;

/// Threshold NAB starts its sweep at: above every score in `[0, 1]`, so nothing fires.
const NEVER_FIRE_THRESHOLD: f64 = 1.1;

/// A NAB application profile: the weights of the cost matrix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// NAB's profile name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub name: &'static str,
    /// `A_TP`: credit for a window detected at its very first row.
    pub tp_weight: f64,
    /// `A_FP`: cost of a false positive far from any window.
    pub fp_weight: f64,
    /// `A_FN`: cost of a window with no detection.
    pub fn_weight: f64,
}

impl Profile {
    /// NAB's `standard` profile.
    pub const STANDARD: Profile = Profile {
        name: "standard",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 1.0,
    };
    /// NAB's `reward_low_FP_rate` profile: false positives cost twice as much.
    pub const REWARD_LOW_FP: Profile = Profile {
        name: "reward_low_FP_rate",
        tp_weight: 1.0,
        fp_weight: 0.22,
        fn_weight: 1.0,
    };
    /// NAB's `reward_low_FN_rate` profile: missed windows cost twice as much.
    pub const REWARD_LOW_FN: Profile = Profile {
        name: "reward_low_FN_rate",
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 2.0,
    };

    /// The three NAB profiles, in the order standard, reward_low_FP, reward_low_FN.
    pub const ALL: [Profile; 3] = [Self::STANDARD, Self::REWARD_LOW_FP, Self::REWARD_LOW_FN];
}

/// The best score of one detector under one profile, over the whole corpus.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProfileResult {
    /// The profile scored.
    pub profile: Profile,
    /// The optimised threshold: a row is a detection when its score is `>=` this.
    /// `1.1` (NAB's starting point) when never firing scores best.
    pub threshold: f64,
    /// Normalised score: 0 for the detector that never fires, 100 for a perfect one.
    pub score: f64,
    /// Raw (unnormalised) score: the sum of window credits, FP costs and FN costs.
    pub raw_score: f64,
    /// Windows with at least one detection.
    pub tp: usize,
    /// Detections (rows) outside every window, after the probationary period.
    pub fp: usize,
    /// Windows with no detection.
    pub fn_: usize,
}

/// The raw score of one series at a fixed threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesScore {
    /// The series name.
    pub name: String,
    /// Raw score of this series (its share of the corpus raw score).
    pub raw_score: f64,
    /// Windows with at least one detection.
    pub tp: usize,
    /// Detections (rows) outside every window, after the probationary period.
    pub fp: usize,
    /// Windows with no detection (only windows with rows after the probationary period).
    pub fn_: usize,
}

/// NAB's probationary period for a series of `rows` rows: `min(floor(0.15 n), 0.15 * 5000)`.
/// Rows with a smaller index are ignored by the score.
pub fn probation_length(rows: usize) -> usize {
    let by_fraction = (PROBATION_FRACTION * rows as f64).floor();
    let cap = (PROBATION_FRACTION * 5000.0).floor();
    by_fraction.min(cap) as usize
}

/// NAB's scaled sigmoid of a position relative to a window: `2 / (1 + e^{5x}) - 1`, and
/// exactly -1 from `x >= 3` on. It is 0.98661 at -1 (a window's left edge), 0 at 0 and
/// tends to -1 far past a window.
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * relative_position).exp()) - 1.0
    }
}

/// What a detection on one row would be worth, before the profile weights.
#[derive(Debug, Clone, Copy, PartialEq)]
enum RowKind {
    /// Inside the probationary period: ignored.
    Probation,
    /// Inside window `window` (index in the series): credit `σ(p) / σ(-1)`, in `(0, 1]`.
    Window { window: usize, credit: f64 },
    /// Outside every window: `σ(p)`, in `[-1, 0)`, to be multiplied by `A_FP`.
    Outside { penalty: f64 },
}

/// A series' rows classified for scoring.
struct ClassifiedSeries {
    rows: Vec<RowKind>,
    /// Windows that contain at least one row after the probationary period.
    scorable_windows: usize,
}

/// Maps each window `(start_ms, end_ms)` to inclusive row indices `(first, last)`.
///
/// As NAB does, a window starts at the first row (in file order, after the previous
/// window) whose timestamp equals its start and ends at the first following row whose
/// timestamp equals its end. Bounds that match no timestamp fall back to the first row at
/// or after the start and the last row at or before the end.
fn window_rows(series: &Series) -> Result<Vec<(usize, usize)>> {
    let ts = &series.timestamps;
    let invalid = |message: String| EvalError::InvalidInput {
        series: series.name.clone(),
        message,
    };
    let mut windows = series.windows.clone();
    windows.sort_unstable();
    let mut resolved = Vec::with_capacity(windows.len());
    let mut cursor = 0;
    for (start, end) in windows {
        let rest = ts.get(cursor..).unwrap_or(&[]);
        let first = rest
            .iter()
            .position(|&t| t == start)
            .or_else(|| rest.iter().position(|&t| t >= start))
            .map(|p| p + cursor);
        let Some(first) = first.filter(|&i| ts[i] <= end) else {
            return Err(invalid(format!(
                "anomaly window [{start}, {end}] (ms) contains no row after the previous window"
            )));
        };
        let after = &ts[first..];
        let last = match after.iter().position(|&t| t == end) {
            Some(p) => first + p,
            None => first + after.iter().take_while(|&&t| t <= end).count() - 1,
        };
        resolved.push((first, last));
        cursor = last + 1;
    }
    Ok(resolved)
}

/// Classifies every row of `series` by what a detection there is worth.
fn classify(series: &Series) -> Result<ClassifiedSeries> {
    let n = series.timestamps.len();
    let windows = window_rows(series)?;
    let probation = probation_length(n);
    let max_tp = scaled_sigmoid(-1.0);
    let mut rows = Vec::with_capacity(n);
    let mut scorable = vec![false; windows.len()];
    let mut next_window = 0;
    // (last row, width) of the most recent window that ended before the current row.
    let mut previous: Option<(usize, usize)> = None;
    for i in 0..n {
        while next_window < windows.len() && windows[next_window].1 < i {
            let (first, last) = windows[next_window];
            previous = Some((last, last - first + 1));
            next_window += 1;
        }
        let kind = match windows.get(next_window) {
            Some(&(first, last)) if first <= i => {
                let width = (last - first + 1) as f64;
                let position = -((last - i + 1) as f64) / width;
                RowKind::Window {
                    window: next_window,
                    credit: scaled_sigmoid(position) / max_tp,
                }
            }
            _ => {
                let position = match previous {
                    // A one-row window gives 0/0 or x/0: treated as far past it (-1).
                    Some((last, width)) => (i - last) as f64 / (width as f64 - 1.0),
                    None => 3.0,
                };
                let position = if position.is_nan() { 3.0 } else { position };
                RowKind::Outside {
                    penalty: scaled_sigmoid(position),
                }
            }
        };
        if i < probation {
            rows.push(RowKind::Probation);
        } else {
            if let RowKind::Window { window, .. } = kind {
                scorable[window] = true;
            }
            rows.push(kind);
        }
    }
    Ok(ClassifiedSeries {
        rows,
        scorable_windows: scorable.iter().filter(|&&s| s).count(),
    })
}

/// Checks that `scores` fits `series`: one finite score per row.
fn check_scores(series: &Series, scores: &[f64]) -> Result<()> {
    let invalid = |message: String| EvalError::InvalidInput {
        series: series.name.clone(),
        message,
    };
    if scores.len() != series.timestamps.len() {
        return Err(invalid(format!(
            "{} anomaly scores for {} rows",
            scores.len(),
            series.timestamps.len()
        )));
    }
    if let Some(row) = scores.iter().position(|s| !s.is_finite()) {
        return Err(invalid(format!(
            "anomaly score at row {row} is not finite ({})",
            scores[row]
        )));
    }
    Ok(())
}

/// Raw score of one series when rows with `score >= threshold` are detections.
pub fn score_series_at(
    series: &Series,
    scores: &[f64],
    profile: &Profile,
    threshold: f64,
) -> Result<SeriesScore> {
    check_scores(series, scores)?;
    let classified = classify(series)?;
    let mut best_credit: Vec<Option<f64>> = vec![None; series.windows.len()];
    let mut fp_cost = 0.0;
    let mut fp = 0;
    for (kind, &score) in classified.rows.iter().zip(scores) {
        if score < threshold {
            continue;
        }
        match *kind {
            RowKind::Probation => {}
            RowKind::Window { window, credit } => {
                let best = best_credit[window].get_or_insert(credit);
                *best = best.max(credit);
            }
            RowKind::Outside { penalty } => {
                fp += 1;
                fp_cost += penalty * profile.fp_weight;
            }
        }
    }
    let tp = best_credit.iter().flatten().count();
    let credit: f64 = best_credit.iter().flatten().sum();
    let fn_ = classified.scorable_windows - tp;
    Ok(SeriesScore {
        name: series.name.clone(),
        raw_score: credit * profile.tp_weight + fp_cost - fn_ as f64 * profile.fn_weight,
        tp,
        fp,
        fn_,
    })
}

/// One scorable row of the corpus, for the threshold sweep.
#[derive(Debug, Clone, Copy)]
struct SweepRow {
    score: f64,
    kind: SweepKind,
}

/// A scorable row's value: a window credit (window id across the corpus) or an FP penalty.
#[derive(Debug, Clone, Copy)]
enum SweepKind {
    Window { window: usize, credit: f64 },
    Outside { penalty: f64 },
}

/// The corpus prepared once for sweeping thresholds under any profile.
struct Sweep {
    /// Scorable rows, highest anomaly score first.
    rows: Vec<SweepRow>,
    /// Windows over all series (NAB's `perfect` counts these).
    total_windows: usize,
    /// Windows with a row after the probationary period (NAB's `null` counts these).
    scorable_windows: usize,
    /// Threshold at which nothing fires.
    never_fire: f64,
}

impl Sweep {
    fn new(corpus_scores: &[(&Series, &[f64])]) -> Result<Sweep> {
        let mut rows = Vec::new();
        let mut total_windows = 0;
        let mut scorable_windows = 0;
        let mut max_score = f64::NEG_INFINITY;
        for &(series, scores) in corpus_scores {
            check_scores(series, scores)?;
            let classified = classify(series)?;
            for (kind, &score) in classified.rows.iter().zip(scores) {
                max_score = max_score.max(score);
                let kind = match *kind {
                    RowKind::Probation => continue,
                    RowKind::Window { window, credit } => SweepKind::Window {
                        window: total_windows + window,
                        credit,
                    },
                    RowKind::Outside { penalty } => SweepKind::Outside { penalty },
                };
                rows.push(SweepRow { score, kind });
            }
            total_windows += series.windows.len();
            scorable_windows += classified.scorable_windows;
        }
        rows.sort_by(|a, b| b.score.total_cmp(&a.score));
        let never_fire = if max_score < NEVER_FIRE_THRESHOLD {
            NEVER_FIRE_THRESHOLD
        } else {
            max_score.next_up()
        };
        Ok(Sweep {
            rows,
            total_windows,
            scorable_windows,
            never_fire,
        })
    }

    /// Sweeps thresholds from high to low and keeps the best raw score (the highest
    /// threshold among equal scores, as NAB's stable sort does).
    fn best(&self, profile: &Profile) -> Result<ProfileResult> {
        let null = -(self.scorable_windows as f64) * profile.fn_weight;
        let perfect = self.total_windows as f64 * profile.tp_weight;
        if self.total_windows == 0 {
            return Err(EvalError::NoWindows);
        }
        let mut best_credit: Vec<Option<f64>> = vec![None; self.total_windows];
        let (mut window_part, mut fp_part) = (null, 0.0);
        let (mut tp, mut fp) = (0, 0);
        let mut best = (self.never_fire, null, 0, 0);
        let mut i = 0;
        while i < self.rows.len() {
            let threshold = self.rows[i].score;
            while i < self.rows.len() && self.rows[i].score == threshold {
                match self.rows[i].kind {
                    SweepKind::Window { window, credit } => {
                        let credit = credit * profile.tp_weight;
                        match best_credit[window] {
                            None => {
                                window_part += profile.fn_weight + credit;
                                best_credit[window] = Some(credit);
                                tp += 1;
                            }
                            Some(old) if credit > old => {
                                window_part += credit - old;
                                best_credit[window] = Some(credit);
                            }
                            Some(_) => {}
                        }
                    }
                    SweepKind::Outside { penalty } => {
                        fp_part += penalty * profile.fp_weight;
                        fp += 1;
                    }
                }
                i += 1;
            }
            let raw = window_part + fp_part;
            if raw > best.1 {
                best = (threshold, raw, tp, fp);
            }
        }
        let (threshold, raw_score, tp, fp) = best;
        Ok(ProfileResult {
            profile: *profile,
            threshold,
            score: 100.0 * (raw_score - null) / (perfect - null),
            raw_score,
            tp,
            fp,
            fn_: self.scorable_windows - tp,
        })
    }
}

/// Scores a detector over a corpus under one profile, with the threshold optimised over
/// the whole corpus as NAB does. `corpus_scores` pairs each series with the detector's
/// anomaly score for each of its rows.
pub fn score(corpus_scores: &[(&Series, &[f64])], profile: &Profile) -> Result<ProfileResult> {
    Sweep::new(corpus_scores)?.best(profile)
}

/// [`score`] under the three NAB profiles (standard, reward_low_FP, reward_low_FN), sorting
/// the corpus's rows only once.
pub fn score_all_profiles(corpus_scores: &[(&Series, &[f64])]) -> Result<[ProfileResult; 3]> {
    let sweep = Sweep::new(corpus_scores)?;
    Ok([
        sweep.best(&Profile::ALL[0])?,
        sweep.best(&Profile::ALL[1])?,
        sweep.best(&Profile::ALL[2])?,
    ])
}
