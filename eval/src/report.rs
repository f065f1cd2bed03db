//! Markdown tables for evaluation reports: NAB scores next to the published scoreboard,
//! and SKAB per-file and summary metrics.

use crate::nab::{ProfileResult, PublishedScore};
use crate::skab::{SkabFileResult, SkabTotals};

/// One row of the NAB comparison table.
struct NabRow<'a> {
    detector: &'a str,
    source: &'static str,
    scores: [f64; 3],
}

/// NAB scores of our detectors next to the published rows, sorted by standard score
/// (highest first). `ours` pairs a detector name with its results under the three profiles
/// in the order standard, reward_low_FP, reward_low_FN (as [`crate::nab::score_all_profiles`]
/// returns them).
pub fn nab_table(ours: &[(&str, [ProfileResult; 3])], published: &[PublishedScore]) -> String {
    let mut rows: Vec<NabRow> = ours
        .iter()
        .map(|(detector, results)| NabRow {
            detector,
            source: "ours",
            scores: results.map(|r| r.score),
        })
        .chain(published.iter().map(|p| NabRow {
            detector: &p.detector,
            source: "published",
            scores: [p.standard, p.reward_low_fp, p.reward_low_fn],
        }))
        .collect();
    rows.sort_by(|a, b| b.scores[0].total_cmp(&a.scores[0]));
    let mut out = String::from(
        "| Detector | Source | Standard | Reward low FP | Reward low FN |\n|---|---|---:|---:|---:|\n",
    );
    for row in rows {
        let name = if row.source == "ours" {
            format!("**{}**", row.detector)
        } else {
            row.detector.to_string()
        };
        out.push_str(&format!(
            "| {name} | {} | {:.1} | {:.1} | {:.1} |\n",
            row.source, row.scores[0], row.scores[1], row.scores[2]
        ));
    }
    out
}

/// Details of our NAB results: per detector and profile, the optimised threshold, the
/// normalised and raw score, windows detected (TP), false-positive rows (FP) and windows
/// missed (FN).
pub fn nab_detail_table(ours: &[(&str, [ProfileResult; 3])]) -> String {
    let mut out = String::from(
        "| Detector | Profile | Threshold | Score | Raw | TP windows | FP rows | FN windows |\n|---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (detector, results) in ours {
        for r in results {
            out.push_str(&format!(
                "| {detector} | {} | {:.4} | {:.1} | {:.3} | {} | {} | {} |\n",
                r.profile.name, r.threshold, r.score, r.raw_score, r.tp, r.fp, r.fn_
            ));
        }
    }
    out
}

/// Per-file SKAB metrics for one detector: precision, recall, F1, segments detected and
/// the detection delay of each file's first segment.
pub fn skab_file_table(results: &[SkabFileResult]) -> String {
    let mut out = String::from(
        "| File | Precision | Recall | F1 | Segments detected | Delay (s) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let detected = r.segments.iter().filter(|s| s.delay_ms.is_some()).count();
        let delays: Vec<String> = r
            .segments
            .iter()
            .map(|s| {
                s.delay_ms
                    .map_or("missed".to_string(), |d| seconds(d as f64))
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {detected}/{} | {} |\n",
            r.name,
            rate(r.confusion.precision()),
            rate(r.confusion.recall()),
            rate(r.confusion.f1()),
            r.segments.len(),
            if delays.is_empty() {
                "–".to_string()
            } else {
                delays.join(", ")
            },
        ));
    }
    out
}

/// SKAB totals of several detectors: pooled precision, recall and F1, the mean per-file F1,
/// segments detected and the mean and median detection delay.
pub fn skab_summary_table(rows: &[(&str, &SkabTotals)]) -> String {
    let mut out = String::from(
        "| Detector | Files | Precision | Recall | F1 | Mean file F1 | Segments detected | Mean delay (s) | Median delay (s) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (detector, t) in rows {
        out.push_str(&format!(
            "| {detector} | {} | {} | {} | {} | {} | {}/{} | {} | {} |\n",
            t.files,
            rate(t.confusion.precision()),
            rate(t.confusion.recall()),
            rate(t.confusion.f1()),
            rate(t.mean_file_f1),
            t.detected,
            t.segments,
            t.mean_delay_ms.map_or("–".to_string(), seconds),
            t.median_delay_ms.map_or("–".to_string(), seconds),
        ));
    }
    out
}

fn rate(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.3}"))
}

fn seconds(ms: f64) -> String {
    format!("{:.0}", ms / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nab::Profile;
    use crate::skab::evaluate;

    fn result(profile: Profile, score: f64) -> ProfileResult {
        ProfileResult {
            profile,
            threshold: 0.9,
            score,
            raw_score: 1.5,
            tp: 3,
            fp: 2,
            fn_: 1,
        }
    }

    #[test]
    fn nab_table_sorts_ours_among_published() {
        let ours = [(
            "ewma-z",
            [
                result(Profile::STANDARD, 45.04),
                result(Profile::REWARD_LOW_FP, 30.0),
                result(Profile::REWARD_LOW_FN, 50.0),
            ],
        )];
        let published = vec![
            PublishedScore {
                detector: "Perfect".into(),
                id: None,
                standard: 100.0,
                reward_low_fp: 100.0,
                reward_low_fn: 100.0,
            },
            PublishedScore {
                detector: "Null (null)".into(),
                id: Some("null".into()),
                standard: 0.0,
                reward_low_fp: 0.0,
                reward_low_fn: 0.0,
            },
        ];
        let table = nab_table(&ours, &published);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| Detector | Source | Standard | Reward low FP | Reward low FN |"
        );
        assert_eq!(lines[2], "| Perfect | published | 100.0 | 100.0 | 100.0 |");
        assert_eq!(lines[3], "| **ewma-z** | ours | 45.0 | 30.0 | 50.0 |");
        assert_eq!(lines[4], "| Null (null) | published | 0.0 | 0.0 | 0.0 |");

        let details = nab_detail_table(&ours);
        assert!(
            details.contains("| ewma-z | reward_low_FN_rate | 0.9000 | 50.0 | 1.500 | 3 | 2 | 1 |")
        );
    }

    #[test]
    fn skab_tables() {
        let ts = [0, 1000, 2000, 3000];
        let r = evaluate(
            "valve1/0.csv",
            &ts,
            &[false, true, true, false],
            &[false, false, true, true],
        )
        .unwrap();
        let table = skab_file_table(std::slice::from_ref(&r));
        // tp 1, fp 1, fn 1: precision 0.5, recall 0.5, F1 0.5; delay 1 s.
        assert!(
            table.contains("| valve1/0.csv | 0.500 | 0.500 | 0.500 | 1/1 | 1 |"),
            "{table}"
        );
        let totals = crate::skab::totals(&[r]);
        let summary = skab_summary_table(&[("ewma-z", &totals)]);
        assert!(
            summary.contains("| ewma-z | 1 | 0.500 | 0.500 | 0.500 | 0.500 | 1/1 | 1 | 1 |"),
            "{summary}"
        );
    }
}
