//! `isthmus eval` on the real NAB and SKAB data (`../shared/data`, or `ISTHMUS_DATA`):
//! detectors run through the engine as streams, and the benchmark scores that come out.
//! Where the data is absent these tests say so and skip; CI requires it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use isthmus::eval::{
    Detector, EvalRunError, Likelihood, Recording, default_threads, eval_nab, eval_skab,
    run_detector,
};
use isthmus_eval::nab::score_all_profiles;
use isthmus_models::ModelKind;

fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ISTHMUS_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    if dir.join("nab").is_dir() && dir.join("skab").is_dir() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: real data not found at {} (set ISTHMUS_DATA to the folder holding nab/ and skab/)",
            dir.display()
        );
        None
    }
}

#[test]
fn nab_scores_detect_run_through_the_engine() {
    let Some(data) = data_dir() else { return };
    let started = Instant::now();
    let eval = eval_nab(&data.join("nab"), &Detector::detect(), default_threads()).unwrap();
    eprintln!(
        "NAB: {} rows through the engine in {:.1} s ({:.1} s in all)",
        eval.corpus.row_count(),
        eval.engine_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    assert_eq!(eval.corpus.series.len(), 42);
    assert_eq!(eval.corpus.window_count(), 69);
    for (series, likelihoods) in eval.corpus.series.iter().zip(&eval.likelihoods) {
        assert_eq!(
            likelihoods.len(),
            series.timestamps.len(),
            "{}",
            series.name
        );
        assert!(
            likelihoods.iter().all(|l| (0.0..=1.0).contains(l)),
            "{}: a likelihood outside [0, 1]",
            series.name
        );
    }
    let [standard, low_fp, low_fn] = eval.results;
    for r in &eval.results {
        assert!(
            r.score.is_finite() && (-100.0..=100.0).contains(&r.score),
            "{}: {}",
            r.profile.name,
            r.score
        );
        assert!(r.threshold <= 1.0, "{}: never fires", r.profile.name);
        assert_eq!(r.tp + r.fn_, 69, "{}", r.profile.name);
    }
    eprintln!(
        "NAB detect: standard {:.1}, reward_low_FP {:.1}, reward_low_FN {:.1}",
        standard.score, low_fp.score, low_fn.score
    );
    // The EWMA z-score beats never firing under every profile, and cannot beat the
    // published leader (ARTime, 71.9) on the standard profile.
    assert!(standard.score > 0.0 && standard.score < 71.9);
    assert!(low_fp.score > 0.0 && low_fn.score > 0.0);
    // Missed windows cost twice as much under reward_low_FN: its threshold is no higher.
    assert!(low_fn.threshold <= standard.threshold);

    // The scorer's anchors on the same corpus: never firing is 0, firing once at the first
    // row of every window is 100.
    let null: Vec<Vec<f64>> = eval
        .corpus
        .series
        .iter()
        .map(|s| vec![0.0; s.timestamps.len()])
        .collect();
    let perfect: Vec<Vec<f64>> = eval
        .corpus
        .series
        .iter()
        .map(|s| {
            let mut scores = vec![0.0; s.timestamps.len()];
            for &(start, _) in &s.windows {
                let first = s.timestamps.iter().position(|&t| t >= start).unwrap();
                scores[first] = 1.0;
            }
            scores
        })
        .collect();
    for (scores, expected) in [(null, 0.0), (perfect, 100.0)] {
        let corpus: Vec<_> = eval
            .corpus
            .series
            .iter()
            .zip(&scores)
            .map(|(s, l)| (s, l.as_slice()))
            .collect();
        for r in score_all_profiles(&corpus).unwrap() {
            assert!(
                (r.score - expected).abs() < 1e-9,
                "{}: {} instead of {expected}",
                r.profile.name,
                r.score
            );
        }
    }

    let report = eval.markdown();
    assert!(
        report.contains("scored 42 of 58 labelled files"),
        "{report}"
    );
    assert!(report.contains("| **isthmus detect** | ours |"), "{report}");
    assert!(
        report.contains("| ARTime (ARTime) | published | 71.9 |"),
        "{report}"
    );
    assert!(
        report.contains("| isthmus detect | reward_low_FN_rate |"),
        "{report}"
    );
}

#[test]
fn skab_scores_detect_over_all_sensors() {
    let Some(data) = data_dir() else { return };
    let started = Instant::now();
    let eval = eval_skab(&data.join("skab"), &Detector::detect(), default_threads()).unwrap();
    eprintln!(
        "SKAB: through the engine in {:.1} s ({:.1} s in all)",
        eval.engine_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(eval.fault_free_rows > 9000, "{}", eval.fault_free_rows);
    let main = eval.main_outcome();
    assert_eq!(main.files.len(), 34);
    assert_eq!(main.totals.files, 34);
    assert!(main.threshold > 0.0 && main.threshold.is_finite());
    // The max of the fault-free scores is at least their 99.9th percentile.
    assert!(eval.outcomes[1].threshold >= main.threshold);
    let t = &main.totals;
    assert!(t.segments >= 34, "{}", t.segments);
    assert!(t.detected > 0 && t.detected <= t.segments);
    let (precision, recall, f1) = (
        t.confusion.precision().unwrap(),
        t.confusion.recall().unwrap(),
        t.confusion.f1().unwrap(),
    );
    eprintln!(
        "SKAB detect (threshold {:.3}): precision {precision:.3}, recall {recall:.3}, F1 {f1:.3}, {}/{} segments",
        main.threshold, t.detected, t.segments
    );
    // Alerts are far more often right than a coin flip would be (about a third of SKAB's
    // rows are anomalous), yet a z-score that adapts to the fault misses most of it.
    assert!(precision > 0.5 && precision <= 1.0, "{precision}");
    assert!(recall > 0.0 && recall < 0.5, "{recall}");

    let report = eval.markdown();
    assert!(report.contains("| valve1/0.csv |"), "{report}");
    assert!(
        report.contains("| isthmus detect (threshold p99.9) | 34 |"),
        "{report}"
    );
}

/// The Burn models (`infer`), each trained per recording by the evaluation: on NAB on each
/// series' probationary period, on SKAB on the fault-free recording. Their scores are
/// printed next to `detect`'s (`cargo test --test eval -- --nocapture`).
#[test]
fn burn_detectors_are_scored_on_nab_and_skab() {
    let Some(data) = data_dir() else { return };
    for kind in [ModelKind::Autoencoder, ModelKind::Forecaster] {
        let detector = Detector::infer(kind);
        let nab = eval_nab(&data.join("nab"), &detector, default_threads()).unwrap();
        let [standard, low_fp, low_fn] = nab.results;
        eprintln!(
            "NAB {}: standard {:.1}, reward_low_FP {:.1}, reward_low_FN {:.1}",
            detector.label, standard.score, low_fp.score, low_fn.score
        );
        for r in &nab.results {
            assert_eq!(r.tp + r.fn_, 69, "{}", r.profile.name);
            assert!(
                (0.0..=100.0).contains(&r.score),
                "{}: {}",
                r.profile.name,
                r.score
            );
        }
        // It fires inside some windows at its best threshold: better than never firing.
        assert!(standard.score > 0.0 && standard.tp > 0, "{standard:?}");
        assert!(
            nab.markdown()
                .contains(&format!("| **{}** | ours |", detector.label))
        );

        let skab = eval_skab(&data.join("skab"), &detector, default_threads()).unwrap();
        let main = skab.main_outcome();
        let t = &main.totals;
        let (precision, recall, f1) = (
            t.confusion.precision().unwrap(),
            t.confusion.recall().unwrap(),
            t.confusion.f1().unwrap(),
        );
        eprintln!(
            "SKAB {} (threshold {:.3}): precision {precision:.3}, recall {recall:.3}, F1 {f1:.3}, {}/{} segments",
            detector.label, main.threshold, t.detected, t.segments
        );
        assert_eq!(main.files.len(), 34);
        assert!(t.detected > 0, "no SKAB fault detected");
        assert!(precision > 0.5, "{precision}");
    }
}

/// A detector is a pipeline fragment: several transforms, any score column and mapping.
#[test]
fn a_detector_is_a_pipeline_fragment() {
    let Some(data) = data_dir() else { return };
    let path = data.join("nab/artificialWithAnomaly/art_daily_jumpsup.csv");
    let recording = Recording {
        name: "artificialWithAnomaly/art_daily_jumpsup.csv",
        path: &path,
        delimiter: ',',
        timestamp_column: "timestamp",
        value_columns: &["value"],
        model: None,
    };
    let doubled = Detector {
        name: "detect-doubled".into(),
        label: "detect, doubled".into(),
        fragment: "[transforms.z]\ntype = \"detect\"\ninputs = [\"{input}\"]\ncolumns = {value_columns}\n\n\
                   [transforms.twice]\ntype = \"map\"\ninputs = [\"z\"]\nselect = [\"ts\", \"score * 2 AS doubled\"]\n"
            .into(),
        output: "twice".into(),
        score_column: "doubled".into(),
        likelihood: Likelihood::Clamped,
        training: None,
    };
    let work = std::env::temp_dir().join(format!("isthmus-eval-test-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let plain = run_detector(&Detector::detect(), &recording, &work).unwrap();
    let twice = run_detector(&doubled, &recording, &work).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    assert_eq!(plain.len(), 4032);
    assert_eq!(plain.len(), twice.len());
    for ((ts_a, a), (ts_b, b)) in plain.iter().zip(&twice) {
        assert_eq!(ts_a, ts_b);
        assert_eq!(*b, 2.0 * a);
    }
    assert!(plain.iter().any(|(_, s)| *s > 3.0));

    // A fragment naming a transform type that does not exist is refused before anything
    // runs, with the generated pipeline to read the located error against.
    let missing = Detector {
        fragment: "[transforms.model]\ntype = \"no-such-model\"\ninputs = [\"{input}\"]\n".into(),
        output: "model".into(),
        ..Detector::detect()
    };
    match run_detector(&missing, &recording, Path::new("/nonexistent")) {
        Err(e @ EvalRunError::Pipeline { .. }) => {
            let message = e.to_string();
            assert!(message.contains("no-such-model"), "{message}");
            assert!(message.contains("--- generated pipeline ---"), "{message}");
        }
        other => panic!("expected a pipeline error, got {other:?}"),
    }
}
