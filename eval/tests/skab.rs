//! SKAB metrics on hand-worked cases and on the real files (skipped if absent).

use isthmus_eval::skab::{
    SENSOR_COLUMNS, Segment, evaluate, evaluate_file, load_skab_dir, load_skab_file, totals,
};

const SECOND: i64 = 1000;

fn close(actual: Option<f64>, expected: f64) {
    let actual = actual.expect("defined");
    assert!(
        (actual - expected).abs() < 1e-12,
        "expected {expected}, got {actual}"
    );
}

/// Ten rows one second apart; anomalous rows 3..=6 and 8..=9; alerts on rows 1, 5 and 6.
fn hand_case() -> isthmus_eval::skab::SkabFileResult {
    let ts: Vec<i64> = (0..10).map(|i| 1_000_000 + i * SECOND).collect();
    let labels = [
        false, false, false, true, true, true, true, false, true, true,
    ];
    let alerts = [
        false, true, false, false, false, true, true, false, false, false,
    ];
    evaluate("hand.csv", &ts, &labels, &alerts).unwrap()
}

#[test]
fn pointwise_counts_and_rates() {
    let r = hand_case();
    // tp: rows 5, 6; fp: row 1; fn: rows 3, 4, 8, 9; tn: rows 0, 2, 7.
    let c = r.confusion;
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (2, 1, 4, 3));
    close(c.precision(), 2.0 / 3.0); // 2 / (2 + 1)
    close(c.recall(), 1.0 / 3.0); // 2 / (2 + 4)
    close(c.f1(), 4.0 / 9.0); // 2*2 / (2*2 + 1 + 4) = 2 * (2/3 * 1/3) / (2/3 + 1/3)
}

#[test]
fn detection_delay_per_segment() {
    let r = hand_case();
    assert_eq!(
        r.segments,
        vec![
            // Segment rows 3..=6, first alert inside at row 5: 2 rows, 2 s.
            Segment {
                first_row: 3,
                last_row: 6,
                delay_ms: Some(2 * SECOND),
                delay_rows: Some(2),
            },
            // Segment rows 8..=9 has no alert: missed.
            Segment {
                first_row: 8,
                last_row: 9,
                delay_ms: None,
                delay_rows: None,
            },
        ]
    );
}

#[test]
fn totals_pool_counts_and_delays() {
    let ts: Vec<i64> = (0..4).map(|i| i * SECOND).collect();
    // Second file: anomalous rows 1..=3, alerts on rows 1..=3: perfect, delay 0.
    let perfect = evaluate(
        "perfect.csv",
        &ts,
        &[false, true, true, true],
        &[false, true, true, true],
    )
    .unwrap();
    let t = totals(&[hand_case(), perfect]);
    assert_eq!(t.files, 2);
    let c = t.confusion;
    // Pooled: tp 2 + 3, fp 1 + 0, fn 4 + 0, tn 3 + 1.
    assert_eq!((c.tp, c.fp, c.fn_, c.tn), (5, 1, 4, 4));
    close(c.f1(), 10.0 / 15.0); // 2*5 / (2*5 + 1 + 4)
    close(t.mean_file_f1, (4.0 / 9.0 + 1.0) / 2.0);
    assert_eq!((t.segments, t.detected), (3, 2));
    close(t.mean_delay_ms, 1000.0); // (2000 + 0) / 2
    close(t.median_delay_ms, 1000.0);
}

#[test]
fn undefined_rates_are_none() {
    let ts = [0, SECOND, 2 * SECOND];
    let r = evaluate("quiet.csv", &ts, &[false; 3], &[false; 3]).unwrap();
    assert_eq!(r.confusion.precision(), None); // nothing alerted
    assert_eq!(r.confusion.recall(), None); // nothing anomalous
    assert_eq!(r.confusion.f1(), None);
    let t = totals(&[r]);
    assert_eq!((t.mean_delay_ms, t.mean_file_f1), (None, None));
}

#[test]
fn length_mismatch_is_an_error() {
    let err = evaluate("x.csv", &[0, 1], &[false, true], &[true]).unwrap_err();
    assert!(
        err.to_string()
            .contains("2 timestamps, 2 labels and 1 alerts"),
        "{err}"
    );
}

#[test]
fn loader_reads_semicolon_files_and_rejects_bad_ones() {
    let dir = std::env::temp_dir().join(format!("isthmus-eval-skab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let header = format!("datetime;{};anomaly;changepoint", SENSOR_COLUMNS.join(";"));
    let good = dir.join("good.csv");
    std::fs::write(
        &good,
        format!(
            "{header}\n2020-03-09 10:34:33;0.027;0.039;0.87;0.054;75.5;25.8;244.1;32.0;0.0;0.0\n2020-03-09 10:34:34;0.028;0.038;1.30;-0.27;75.5;25.8;224.2;32.0;1.0;1.0\n"
        ),
    )
    .unwrap();
    let file = load_skab_file(&good, "good.csv").unwrap();
    assert_eq!(file.timestamps[1] - file.timestamps[0], 1000);
    assert_eq!(file.sensors[1][3], -0.27);
    assert_eq!(file.anomaly, Some(vec![false, true]));
    assert_eq!(file.changepoint, Some(vec![false, true]));

    let bad = dir.join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{header}\n2020-03-09 10:34:33;0.027;oops;0.87;0.054;75.5;25.8;244.1;32.0;0.0;0.0\n"
        ),
    )
    .unwrap();
    let err = load_skab_file(&bad, "bad.csv").unwrap_err();
    assert!(
        err.to_string()
            .contains(":2: bad number `oops` in column Accelerometer2RMS"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn real_skab_files_smoke_test() {
    let dir = isthmus_eval::data_dir().join("skab");
    if !dir.join("valve1").is_dir() {
        println!("skipped: SKAB data not found at {}", dir.display());
        return;
    }
    let files = load_skab_dir(&dir).unwrap();
    assert_eq!(files.len(), 35);
    assert_eq!(
        files.iter().map(|f| f.timestamps.len()).sum::<usize>(),
        46_806
    );
    assert_eq!(files[0].name, "anomaly-free/anomaly-free.csv");
    assert!(files[0].anomaly.is_none());
    assert_eq!(files[1].name, "other/1.csv");
    assert_eq!(files[15].name, "valve1/0.csv");
    assert_eq!(files.last().unwrap().name, "valve2/3.csv");

    // Alerting exactly on the labels: F1 1 and zero delay on each file's single segment.
    let mut results = Vec::new();
    for file in &files {
        let r = evaluate_file(file, &file.labels()).unwrap();
        if file.anomaly.is_some() {
            assert_eq!(r.segments.len(), 1, "{}", file.name);
            assert_eq!(r.segments[0].delay_ms, Some(0));
            close(r.confusion.f1(), 1.0);
        } else {
            assert!(r.segments.is_empty());
        }
        results.push(r);
    }
    let t = totals(&results);
    assert_eq!((t.files, t.segments, t.detected), (35, 34, 34));
    close(t.confusion.f1(), 1.0);

    // Alerting on every row: recall 1, precision = the share of anomalous rows.
    let all: Vec<_> = files
        .iter()
        .map(|f| evaluate_file(f, &vec![true; f.timestamps.len()]).unwrap())
        .collect();
    let t = totals(&all);
    let anomalous = t.confusion.tp;
    close(t.confusion.recall(), 1.0);
    close(t.confusion.precision(), anomalous as f64 / 46_806.0);
    println!(
        "SKAB: {anomalous} of 46806 rows anomalous; all-alert F1 {:.3}",
        t.confusion.f1().unwrap()
    );
}
