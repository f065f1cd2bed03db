//! The NAB scorer on tiny hand-worked series.
//!
//! Shared set-up: a series of 40 one-minute rows, so the probationary period is
//! `min(floor(0.15 * 40), 750) = 6` rows, with one window over rows 10..=14 (width 5).
//! `σ(x) = 2 / (1 + e^{5x}) - 1`, `σ(-1) = 0.9866142981514305`.

use isthmus_eval::EvalError;
use isthmus_eval::nab::{
    Profile, Series, probation_length, scaled_sigmoid, score, score_all_profiles, score_series_at,
};

const MINUTE: i64 = 60_000;
const N: usize = 40;

fn series(name: &str, windows: &[(usize, usize)]) -> Series {
    Series {
        name: name.to_string(),
        timestamps: (0..N as i64).map(|i| i * MINUTE).collect(),
        values: vec![0.0; N],
        windows: windows
            .iter()
            .map(|&(a, b)| (a as i64 * MINUTE, b as i64 * MINUTE))
            .collect(),
    }
}

fn with_window() -> Series {
    series("with_window.csv", &[(10, 14)])
}

/// Scores that are 1.0 on `rows` and 0.0 elsewhere.
fn fire_at(rows: &[usize]) -> Vec<f64> {
    let mut scores = vec![0.0; N];
    for &r in rows {
        scores[r] = 1.0;
    }
    scores
}

fn raw(series: &Series, rows: &[usize], profile: &Profile) -> f64 {
    score_series_at(series, &fire_at(rows), profile, 0.5)
        .unwrap()
        .raw_score
}

fn close(actual: f64, expected: f64) {
    assert!(
        (actual - expected).abs() < 1e-9,
        "expected {expected}, got {actual}"
    );
}

#[test]
fn probation_length_follows_nab() {
    assert_eq!(probation_length(40), 6); // floor(6.0)
    assert_eq!(probation_length(4032), 604); // floor(604.8)
    assert_eq!(probation_length(5000), 750);
    assert_eq!(probation_length(22695), 750); // capped at 0.15 * 5000
}

#[test]
fn scaled_sigmoid_values() {
    close(scaled_sigmoid(-1.0), 0.9866142981514305); // 2 / (1 + e^-5) - 1
    close(scaled_sigmoid(0.0), 0.0);
    close(scaled_sigmoid(1.0), -0.9866142981514305);
    close(scaled_sigmoid(3.0), -1.0); // clamped from 3 on
}

#[test]
fn detection_at_window_start_earns_full_tp_weight() {
    // Row 10: p = -(14 - 10 + 1) / 5 = -1, credit σ(-1)/σ(-1) = 1.
    let s = with_window();
    close(raw(&s, &[10], &Profile::STANDARD), 1.0);
    let result = score_series_at(&s, &fire_at(&[10]), &Profile::STANDARD, 0.5).unwrap();
    assert_eq!((result.tp, result.fp, result.fn_), (1, 0, 0));
}

#[test]
fn detection_mid_window() {
    // Row 12: p = -(14 - 12 + 1) / 5 = -0.6, σ(-0.6) = 2 / (1 + e^-3) - 1 = 0.905148...,
    // credit 0.905148 / 0.986614 = 0.917428...
    close(
        raw(&with_window(), &[12], &Profile::STANDARD),
        0.9174286804284079,
    );
}

#[test]
fn detection_at_window_end() {
    // Row 14: p = -(14 - 14 + 1) / 5 = -0.2, σ(-0.2) = 2 / (1 + e^-1) - 1 = 0.462117...,
    // credit 0.462117 / 0.986614 = 0.468386...
    close(
        raw(&with_window(), &[14], &Profile::STANDARD),
        0.46838684390227814,
    );
}

#[test]
fn false_positive_far_from_window() {
    // Row 30: p = (30 - 14) / (5 - 1) = 4 >= 3, σ = -1; the window is missed (-A_FN).
    // standard: -1 - 0.11 = -1.11; reward_low_FP: -1 - 0.22; reward_low_FN: -2 - 0.11.
    let s = with_window();
    close(raw(&s, &[30], &Profile::STANDARD), -1.11);
    close(raw(&s, &[30], &Profile::REWARD_LOW_FP), -1.22);
    close(raw(&s, &[30], &Profile::REWARD_LOW_FN), -2.11);
    let result = score_series_at(&s, &fire_at(&[30]), &Profile::STANDARD, 0.5).unwrap();
    assert_eq!((result.tp, result.fp, result.fn_), (0, 1, 1));
}

#[test]
fn false_positive_right_after_window_costs_less() {
    // Row 15: p = (15 - 14) / (5 - 1) = 0.25, σ(0.25) = 2 / (1 + e^1.25) - 1 = -0.554599...
    // raw = -1 (missed window) + 0.11 * -0.554599 = -1.061005...
    close(
        raw(&with_window(), &[15], &Profile::STANDARD),
        -1.061005969458432,
    );
}

#[test]
fn false_positive_before_any_window_costs_full_weight() {
    // Row 8 is after the probationary period and before the window: -1 * A_FP.
    close(raw(&with_window(), &[8], &Profile::STANDARD), -1.11);
}

#[test]
fn detection_in_probationary_period_is_ignored() {
    // Row 2 < 6: ignored; the window is missed: -A_FN.
    let s = with_window();
    close(raw(&s, &[2], &Profile::STANDARD), -1.0);
    let result = score_series_at(&s, &fire_at(&[2]), &Profile::STANDARD, 0.5).unwrap();
    assert_eq!((result.tp, result.fp, result.fn_), (0, 0, 1));
}

#[test]
fn series_without_windows() {
    // artificialNoAnomaly-like: no window, so nothing to miss; row 20 is an FP before any
    // window (-0.11) and row 3 is probationary (ignored).
    let s = series("no_anomaly.csv", &[]);
    close(raw(&s, &[], &Profile::STANDARD), 0.0);
    close(raw(&s, &[3], &Profile::STANDARD), 0.0);
    close(raw(&s, &[3, 20], &Profile::STANDARD), -0.11);
}

#[test]
fn several_detections_in_one_window_count_once() {
    // Rows 12, 13, 14: only the earliest (row 12, credit 0.917428...) counts.
    close(
        raw(&with_window(), &[12, 13, 14], &Profile::STANDARD),
        0.9174286804284079,
    );
}

#[test]
fn corpus_sweep_picks_best_threshold_and_normalises() {
    // A = with_window: 0.9 at row 10 (window start), 0.8 at row 30 (far FP).
    // B = no windows: 0.95 at row 20 (FP, no window before), 0.7 at row 21 (FP).
    // Standard, raw by threshold: 1.1 → -1 (missed window); 0.95 → -1.11;
    // 0.9 → -0.11 + 1 = 0.89; 0.8 → 0.78; 0.7 → 0.67; 0.0 → far worse.
    // Best 0.89 at 0.9. null = -1, perfect = +1: 100 * (0.89 + 1) / 2 = 94.5.
    let a = with_window();
    let b = series("b.csv", &[]);
    let mut a_scores = vec![0.0; N];
    a_scores[10] = 0.9;
    a_scores[30] = 0.8;
    let mut b_scores = vec![0.0; N];
    b_scores[20] = 0.95;
    b_scores[21] = 0.7;
    let corpus: Vec<(&Series, &[f64])> = vec![(&a, &a_scores), (&b, &b_scores)];

    let standard = score(&corpus, &Profile::STANDARD).unwrap();
    close(standard.threshold, 0.9);
    close(standard.raw_score, 0.89);
    close(standard.score, 94.5);
    assert_eq!((standard.tp, standard.fp, standard.fn_), (1, 1, 0));

    let [std2, low_fp, low_fn] = score_all_profiles(&corpus).unwrap();
    assert_eq!(std2, standard);
    // reward_low_FP: 0.9 → -0.22 + 1 = 0.78; normalised 100 * (0.78 + 1) / 2 = 89.
    close(low_fp.threshold, 0.9);
    close(low_fp.score, 89.0);
    // reward_low_FN: null = -2, perfect = 1: 0.9 → 0.89; 100 * (0.89 + 2) / 3 = 96.333...
    close(low_fn.threshold, 0.9);
    close(low_fn.score, 100.0 * 2.89 / 3.0);
}

#[test]
fn sweep_prefers_earliest_detection_even_with_lower_score() {
    // Row 13 scores 0.9 (credit σ(-0.4)/σ(-1) = 0.771926...), row 10 scores 0.6 (credit 1).
    // At 0.6 the window's credit rises to 1: best raw 1.0 at threshold 0.6 → score 100.
    let a = with_window();
    let mut scores = vec![0.0; N];
    scores[13] = 0.9;
    scores[10] = 0.6;
    let result = score(&[(&a, &scores[..])], &Profile::STANDARD).unwrap();
    close(result.threshold, 0.6);
    close(result.score, 100.0);
    // At 0.9 only row 13 counts: 100 * (0.771926... + 1) / 2.
    let at_09 = score_series_at(&a, &scores, &Profile::STANDARD, 0.9).unwrap();
    close(at_09.raw_score, 0.7719269398210883);
}

#[test]
fn sweep_keeps_highest_threshold_on_ties() {
    // 0.9 at row 10 and 0.5 at row 12: lowering to 0.5 adds nothing (the window already has
    // its earliest detection), so the higher threshold 0.9 is kept, as in NAB.
    let a = with_window();
    let mut scores = vec![0.0; N];
    scores[10] = 0.9;
    scores[12] = 0.5;
    let result = score(&[(&a, &scores[..])], &Profile::STANDARD).unwrap();
    close(result.threshold, 0.9);
    close(result.score, 100.0);
}

#[test]
fn never_firing_detector_scores_zero_with_threshold_above_all_scores() {
    let a = with_window();
    let scores = vec![0.5; N]; // firing everywhere is worse than never firing
    let result = score(&[(&a, &scores[..])], &Profile::STANDARD).unwrap();
    close(result.threshold, 1.1);
    close(result.score, 0.0);
    assert_eq!((result.tp, result.fp, result.fn_), (0, 0, 1));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let a = with_window();
    let short = vec![0.0; N - 1];
    let err = score(&[(&a, &short[..])], &Profile::STANDARD).unwrap_err();
    assert!(
        err.to_string().contains("39 anomaly scores for 40 rows"),
        "{err}"
    );

    let mut nan = vec![0.0; N];
    nan[5] = f64::NAN;
    let err = score(&[(&a, &nan[..])], &Profile::STANDARD).unwrap_err();
    assert!(err.to_string().contains("row 5 is not finite"), "{err}");

    let mut outside = with_window();
    outside.windows = vec![(100 * MINUTE, 110 * MINUTE)];
    let err = score(&[(&outside, &vec![0.0; N][..])], &Profile::STANDARD).unwrap_err();
    assert!(err.to_string().contains("contains no row"), "{err}");

    let b = series("b.csv", &[]);
    let err = score(&[(&b, &vec![0.0; N][..])], &Profile::STANDARD).unwrap_err();
    assert!(matches!(err, EvalError::NoWindows), "{err}");
}

#[test]
fn window_bounds_between_rows_snap_to_rows_inside() {
    // Window from 9.5 to 14.5 minutes covers rows 10..=14, same as the exact window.
    let mut s = with_window();
    s.windows = vec![(9 * MINUTE + 30_000, 14 * MINUTE + 30_000)];
    close(raw(&s, &[10], &Profile::STANDARD), 1.0);
    close(raw(&s, &[14], &Profile::STANDARD), 0.46838684390227814);
}
