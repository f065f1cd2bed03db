//! The NAB scorer on the real corpus in `$ISTHMUS_DATA/nab` (skipped if absent).

use std::path::PathBuf;
use std::time::Instant;

use isthmus_eval::nab::{
    Corpus, Profile, Series, load_corpus, load_scoreboard, probation_length, score,
    score_all_profiles, score_series_at,
};

fn nab_dir() -> Option<PathBuf> {
    let dir = isthmus_eval::data_dir().join("nab");
    if dir.join("combined_windows.json").is_file() {
        Some(dir)
    } else {
        println!("skipped: NAB data not found at {}", dir.display());
        None
    }
}

fn load() -> Option<Corpus> {
    nab_dir().map(|dir| load_corpus(&dir).expect("NAB corpus loads"))
}

/// Scores that are 1.0 at the first row of every window and 0.0 elsewhere.
fn perfect_scores(series: &Series) -> Vec<f64> {
    let mut scores = vec![0.0; series.timestamps.len()];
    for &(start, _) in &series.windows {
        let row = series.timestamps.iter().position(|&t| t == start).unwrap();
        scores[row] = 1.0;
    }
    scores
}

/// Pairs each series with its scores.
fn pair<'a>(corpus: &'a Corpus, scores: &'a [Vec<f64>]) -> Vec<(&'a Series, &'a [f64])> {
    corpus
        .series
        .iter()
        .zip(scores)
        .map(|(s, v)| (s, v.as_slice()))
        .collect()
}

#[test]
fn corpus_loads_with_missing_files_reported() {
    let Some(corpus) = load() else { return };
    assert_eq!(corpus.series.len(), 42);
    assert_eq!(corpus.labelled_files(), 58);
    assert_eq!(corpus.window_count(), 69);
    assert_eq!(corpus.row_count(), 197_317);
    assert_eq!(
        corpus.missing_groups(),
        vec![
            ("realAdExchange".to_string(), 6),
            ("realTweets".to_string(), 10)
        ]
    );
    assert_eq!(
        corpus.summary(),
        "scored 42 of 58 labelled files (69 windows, 197317 rows); absent: realAdExchange (6), realTweets (10)"
    );
    let taxi = corpus
        .series
        .iter()
        .find(|s| s.name == "realKnownCause/nyc_taxi.csv")
        .unwrap();
    assert_eq!(taxi.timestamps.len(), 10_320);
    assert_eq!(taxi.values[0], 10844.0);
    assert_eq!(taxi.windows.len(), 5);
    // No window starts inside its series' probationary period.
    for s in &corpus.series {
        let probation = probation_length(s.timestamps.len());
        for &(start, _) in &s.windows {
            let row = s.timestamps.iter().position(|&t| t == start).unwrap();
            assert!(row >= probation, "{}: window starts at row {row}", s.name);
        }
    }
}

#[test]
fn null_scores_zero_and_perfect_scores_hundred() {
    let Some(corpus) = load() else { return };
    let null: Vec<Vec<f64>> = corpus
        .series
        .iter()
        .map(|s| vec![0.0; s.timestamps.len()])
        .collect();
    let perfect: Vec<Vec<f64>> = corpus.series.iter().map(perfect_scores).collect();
    let started = Instant::now();
    let null_results = score_all_profiles(&pair(&corpus, &null)).unwrap();
    println!("three profiles over 197,317 rows: {:?}", started.elapsed());
    let perfect_results = score_all_profiles(&pair(&corpus, &perfect)).unwrap();

    // Raw null = -A_FN * 69 windows: -69, -69, -138 (SCOREBOARD-subset.md gives the same).
    for (result, raw_null) in null_results.iter().zip([-69.0, -69.0, -138.0]) {
        assert_eq!(result.score, 0.0, "{}", result.profile.name);
        assert_eq!(result.raw_score, raw_null, "{}", result.profile.name);
        assert_eq!((result.tp, result.fp, result.fn_), (0, 0, 69));
    }
    // Perfect: one detection at each window start, credit A_TP each: raw 69.
    for result in &perfect_results {
        assert!(
            (result.score - 100.0).abs() < 1e-9,
            "{}: {}",
            result.profile.name,
            result.score
        );
        assert!((result.raw_score - 69.0).abs() < 1e-9);
        assert_eq!((result.tp, result.fp, result.fn_), (69, 0, 0));
        assert_eq!(result.threshold, 1.0);
    }
}

#[test]
fn always_firing_and_graded_detectors_on_the_real_corpus() {
    let Some(corpus) = load() else { return };
    // A detector that fires on every row scores worse than never firing, so the sweep keeps
    // the never-fire threshold; at threshold 0 (forced) it scores hugely negative.
    let ones: Vec<Vec<f64>> = corpus
        .series
        .iter()
        .map(|s| vec![1.0; s.timestamps.len()])
        .collect();
    let corpus_scores = pair(&corpus, &ones);
    let result = score(&corpus_scores, &Profile::STANDARD).unwrap();
    assert_eq!(result.threshold, 1.1);
    assert_eq!(result.score, 0.0);
    let forced: f64 = corpus_scores
        .iter()
        .map(|(s, v)| {
            score_series_at(s, v, &Profile::STANDARD, 1.0)
                .unwrap()
                .raw_score
        })
        .sum();
    assert!(
        forced < -1000.0,
        "raw score when firing everywhere: {forced}"
    );

    // A detector with graded scores: pseudo-random scores below 0.95 on every row and a
    // score in [0.96, 1) at the middle row of each window. The sweep's best threshold fires
    // only in windows; its raw score equals the sum of the per-series raw scores there.
    let graded: Vec<Vec<f64>> = corpus
        .series
        .iter()
        .map(|s| {
            let mut scores: Vec<f64> = (0..s.timestamps.len())
                .map(|i| (i as f64 * 0.618_033_988_7).fract() * 0.95)
                .collect();
            for (k, &(start, end)) in s.windows.iter().enumerate() {
                let first = s.timestamps.iter().position(|&t| t == start).unwrap();
                let last = s.timestamps.iter().position(|&t| t == end).unwrap();
                scores[(first + last) / 2] = 0.96 + 0.0005 * k as f64;
            }
            scores
        })
        .collect();
    let corpus_scores = pair(&corpus, &graded);
    for result in score_all_profiles(&corpus_scores).unwrap() {
        let per_series: Vec<_> = corpus_scores
            .iter()
            .map(|(s, v)| score_series_at(s, v, &result.profile, result.threshold).unwrap())
            .collect();
        let raw: f64 = per_series.iter().map(|s| s.raw_score).sum();
        assert!(
            (raw - result.raw_score).abs() < 1e-6,
            "{}: {raw} vs {}",
            result.profile.name,
            result.raw_score
        );
        assert_eq!(per_series.iter().map(|s| s.tp).sum::<usize>(), result.tp);
        assert_eq!(per_series.iter().map(|s| s.fp).sum::<usize>(), result.fp);
        assert_eq!(per_series.iter().map(|s| s.fn_).sum::<usize>(), result.fn_);
        assert_eq!((result.tp, result.fp, result.fn_), (69, 0, 0));
        assert!(result.threshold >= 0.96, "{}", result.threshold);
        // Each window is caught halfway: credit ≈ σ(-0.5)/σ(-1) = 0.84828/0.98661 = 0.8598.
        let mean_credit = result.raw_score / 69.0;
        assert!((mean_credit - 0.8598).abs() < 0.005, "{mean_credit}");
        let null = -69.0 * result.profile.fn_weight;
        let expected = 100.0 * (result.raw_score - null) / (69.0 - null);
        assert!((result.score - expected).abs() < 1e-9);
    }
}

#[test]
fn published_subset_scoreboard_parses() {
    let Some(dir) = nab_dir() else { return };
    let rows = load_scoreboard(&dir.join("SCOREBOARD-subset.md")).unwrap();
    assert_eq!(rows.len(), 17);
    assert_eq!(rows[0].detector, "Perfect");
    let wg = rows
        .iter()
        .find(|r| r.id.as_deref() == Some("windowedGaussian"))
        .unwrap();
    assert_eq!(
        (wg.standard, wg.reward_low_fp, wg.reward_low_fn),
        (30.6, 16.4, 37.3)
    );
    // The full-corpus scoreboard parses too; its range rows (NuPIC 1.0) are skipped.
    let full = load_scoreboard(&dir.join("SCOREBOARD.md")).unwrap();
    assert!(
        full.iter()
            .any(|r| r.detector == "CAD OSE" && r.standard == 69.9)
    );
    assert!(
        !full
            .iter()
            .any(|r| r.detector.starts_with("Numenta HTM (NuPIC 1.0"))
    );
}
