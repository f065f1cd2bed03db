//! Parsing the published NAB scoreboard (`SCOREBOARD-subset.md`) for side-by-side reports.

use std::path::Path;

use crate::{EvalError, Result, read_to_string};

/// One published detector's normalised NAB scores.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedScore {
    /// Detector as written in the table, without backticks, e.g. `CAD OSE (contextOSE)`.
    pub detector: String,
    /// NAB's results id when the table gives one in backticks (`contextOSE`).
    pub id: Option<String>,
    /// Score under the standard profile.
    pub standard: f64,
    /// Score under reward_low_FP_rate.
    pub reward_low_fp: f64,
    /// Score under reward_low_FN_rate.
    pub reward_low_fn: f64,
}

/// Reads and parses a scoreboard markdown file (see [`parse_scoreboard`]).
pub fn load_scoreboard(path: &Path) -> Result<Vec<PublishedScore>> {
    parse_scoreboard(&read_to_string(path)?).map_err(|message| EvalError::Parse {
        path: path.to_path_buf(),
        line: 0,
        message,
    })
}

/// Parses the first markdown table whose header has the columns `Standard`,
/// `Reward low FP` and `Reward low FN`; the first column names the detector. Rows whose
/// scores are not single numbers (such as the ranges `70.5–69.7` in the full-corpus
/// scoreboard) are skipped. Errors if no such table or no parsable row is found.
pub fn parse_scoreboard(markdown: &str) -> std::result::Result<Vec<PublishedScore>, String> {
    let mut lines = markdown.lines().map(str::trim);
    let columns = loop {
        let Some(line) = lines.next() else {
            return Err(
                "no table with columns Standard, Reward low FP and Reward low FN".to_string(),
            );
        };
        if !line.starts_with('|') {
            continue;
        }
        let header = cells(line);
        let find = |name: &str| header.iter().position(|c| c.eq_ignore_ascii_case(name));
        if let (Some(s), Some(fp), Some(fn_)) = (
            find("Standard"),
            find("Reward low FP"),
            find("Reward low FN"),
        ) {
            break [s, fp, fn_];
        }
    };
    let mut rows = Vec::new();
    for line in lines {
        if !line.starts_with('|') {
            break;
        }
        let row = cells(line);
        if row
            .iter()
            .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':')))
        {
            continue; // the |---|---| separator
        }
        let number = |col: usize| row.get(col).and_then(|c| c.parse::<f64>().ok());
        let (Some(standard), Some(reward_low_fp), Some(reward_low_fn)) =
            (number(columns[0]), number(columns[1]), number(columns[2]))
        else {
            continue;
        };
        let name_cell = row.first().copied().unwrap_or_default();
        let id = name_cell.split('`').nth(1).map(str::to_string);
        rows.push(PublishedScore {
            detector: name_cell.replace('`', ""),
            id,
            standard,
            reward_low_fp,
            reward_low_fn,
        });
    }
    if rows.is_empty() {
        return Err("the scoreboard table has no row with numeric scores".to_string());
    }
    Ok(rows)
}

/// Splits a markdown table row into trimmed cells.
fn cells(line: &str) -> Vec<&str> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner.split('|').map(str::trim).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_subset_style_table() {
        let md = "# Title\n\ntext\n\n| Detector (results/ id) | Standard | Reward low FP | Reward low FN |\n|---|---|---|---|\n| Perfect | 100.0 | 100.0 | 100.0 |\n| CAD OSE (`contextOSE`) | 67.6 | 63.3 | 71.7 |\n| Null (`null`) | 0.0 | 0.0 | 0.0 |\n\nAfter.\n";
        let rows = parse_scoreboard(md).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].detector, "CAD OSE (contextOSE)");
        assert_eq!(rows[1].id.as_deref(), Some("contextOSE"));
        assert_eq!(
            (
                rows[1].standard,
                rows[1].reward_low_fp,
                rows[1].reward_low_fn
            ),
            (67.6, 63.3, 71.7)
        );
        assert_eq!(rows[0].id, None);
    }

    #[test]
    fn skips_range_rows_and_reports_missing_table() {
        let md = "| Detector | id | Standard | Reward low FP | Reward low FN | Where |\n|---|---|---|---|---|---|\n| HTM | – | 70.5–69.7 | 62.6–61.7 | 75.2–74.2 | README |\n| Null | null | 0.0 | 0.0 | 0.0 | JSON |\n";
        let rows = parse_scoreboard(md).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].detector, "Null");
        assert!(parse_scoreboard("no table here").is_err());
    }
}
