//! `csv` source: replays a CSV file as a stream, with the event time taken from a timestamp
//! column. The schema is given (`columns`) or inferred from the header and the first rows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use arrow::datatypes::{Field, SchemaRef};
use csv::ByteRecord;
use isthmus_engine::batch::{BatchStream, TIME_COLUMN, schema_with_time};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Source};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{DEAD_LETTER, dead_letter_schema};
use isthmus_engine::units::DurationSpec;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::replay::{
    ColumnBuf, ColumnType, RecordReader, ReplayOptions, TimeFormat, check_options,
    default_batch_rows, default_out_of_orderness, default_timestamp_column,
    default_timestamp_format, missing_timestamp_problem, replay_source,
};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sources.machine]
type = "csv"
path = "pipelines/examples/data/machine_temperature.csv"
timestamp_column = "timestamp"
timestamp_format = "%Y-%m-%d %H:%M:%S"
columns = { value = "float64" }
speed = 3600.0
max_out_of_orderness = "10m"
"#;

/// Rows read to infer column types when `columns` is not given.
const INFER_ROWS: usize = 1000;

/// Replays a CSV file as a stream, one row per record, with the event time taken from a timestamp column.
///
/// The output has `ts` first, then the other columns in file order (names as in the header).
/// Records that cannot be parsed (wrong number of fields, a bad number or timestamp, invalid
/// UTF-8) go to the `dead_letter` side output with the reason and the raw line.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSource {
    /// Path of the CSV file, relative to the pipeline file.
    pub path: String,
    /// Field separator: a single character such as `","`, `";"` or `"\t"`. Default `","`.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Whether the first line holds the column names. Default `true`. Without a header the
    /// columns are named `column_1`, `column_2`, ….
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// The column holding each row's event time; it becomes `ts`. Default `"timestamp"`.
    #[serde(default = "default_timestamp_column")]
    pub timestamp_column: String,
    /// How the event time is written: a chrono strftime pattern (naive times are UTC), or
    /// `"unix_ms"`, `"unix_s"` or `"rfc3339"`. Default `"%Y-%m-%d %H:%M:%S"` (fractional
    /// seconds accepted).
    #[serde(default = "default_timestamp_format")]
    pub timestamp_format: String,
    /// The columns to read and their types (`"float64"`, `"int64"`, `"utf8"` or `"bool"`), by
    /// name; other columns are skipped. Default: every column, typed from the first 1000
    /// rows (all numbers: float64, otherwise utf8). Empty numeric fields are nulls.
    #[serde(default)]
    pub columns: Option<BTreeMap<String, ColumnType>>,
    /// Rows per batch. Default 1024.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// Replay speed relative to the recorded pace: `1.0` replays in real time, `10.0` ten
    /// times faster. Default: as fast as possible.
    #[serde(default)]
    pub speed: Option<f64>,
    /// How far behind the largest event time seen rows may still arrive: the watermark is
    /// that time minus this. Older rows are still sent; downstream windows decide whether
    /// they are late. Default `"0s"`.
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness: DurationSpec,
}

fn default_delimiter() -> String {
    ",".to_string()
}

fn default_true() -> bool {
    true
}

/// What the header and the config resolve to.
#[derive(Debug, Clone)]
struct CsvPlan {
    schema: SchemaRef,
    /// Output column types after `ts`.
    types: Vec<ColumnType>,
    /// File field index of each output column after `ts`.
    fields: Vec<usize>,
    /// Names of the output columns after `ts` (for messages).
    names: Vec<String>,
    ts_index: usize,
    /// Name of the timestamp column.
    ts_name: String,
    field_count: usize,
    time_format: TimeFormat,
    delimiter: u8,
}

fn open_problem(path: &Path, e: impl std::fmt::Display) -> Problem {
    Problem::at("path", format!("cannot read `{}`: {e}", path.display()))
        .with_help("paths are relative to the pipeline file")
}

fn strip_bom(name: &[u8]) -> &[u8] {
    name.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(name)
}

impl CsvSource {
    fn delimiter_byte(&self) -> Result<u8, Problem> {
        let d = match self.delimiter.as_str() {
            "\\t" | "tab" => "\t",
            d => d,
        };
        match d.as_bytes() {
            [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
            _ => Err(Problem::at(
                "delimiter",
                format!(
                    "the delimiter must be one ASCII character, not {:?}",
                    self.delimiter
                ),
            )
            .with_help("for example \",\", \";\" or \"\\t\"")),
        }
    }

    fn reader_builder(delimiter: u8) -> csv::ReaderBuilder {
        let mut b = csv::ReaderBuilder::new();
        b.delimiter(delimiter)
            .has_headers(false)
            .flexible(true)
            .buffer_capacity(1 << 16);
        b
    }

    /// Reads the header (and, for inference, the first rows) and resolves the output schema.
    fn plan(&self, path: &Path) -> Result<CsvPlan, Problem> {
        let delimiter = self.delimiter_byte()?;
        let time_format = TimeFormat::check(&self.timestamp_format)?;
        check_options(self.batch_rows, self.speed)?;
        let file = File::open(path).map_err(|e| open_problem(path, e))?;
        let mut reader = Self::reader_builder(delimiter).from_reader(file);
        let mut record = ByteRecord::new();
        let first = reader
            .read_byte_record(&mut record)
            .map_err(|e| open_problem(path, e))?;
        if !first {
            return Err(
                Problem::at("path", format!("`{}` is empty", path.display()))
                    .with_help("the CSV source needs a header line and rows"),
            );
        }
        let names: Vec<String> = if self.has_header {
            record
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let f = if i == 0 { strip_bom(f) } else { f };
                    String::from_utf8_lossy(f).into_owned()
                })
                .collect()
        } else {
            (1..=record.len()).map(|i| format!("column_{i}")).collect()
        };
        let field_count = names.len();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(Problem::at(
                    "path",
                    format!("the header names the column `{n}` twice"),
                )
                .with_help("give the columns distinct names"));
            }
        }
        let Some(ts_index) = names.iter().position(|n| *n == self.timestamp_column) else {
            return Err(missing_timestamp_problem(
                &self.timestamp_column,
                names.iter().map(String::as_str),
            ));
        };
        let mut out: Vec<(usize, ColumnType)> = Vec::new();
        match &self.columns {
            Some(given) => {
                for (name, t) in given {
                    if *name == self.timestamp_column {
                        return Err(Problem::at(
                            "columns",
                            format!("`{name}` is the timestamp column"),
                        )
                        .with_help(
                            "the timestamp column always becomes `ts`; leave it out of `columns`",
                        ));
                    }
                    match names.iter().position(|n| n == name) {
                        Some(i) => out.push((i, *t)),
                        None => {
                            let hint = match isthmus_engine::spec::suggest(
                                name,
                                names.iter().map(String::as_str),
                            ) {
                                Some(s) => {
                                    format!("did you mean `{s}`? (columns: {})", names.join(", "))
                                }
                                None => format!("the columns are: {}", names.join(", ")),
                            };
                            return Err(Problem::at(
                                "columns",
                                format!("the file has no column `{name}`"),
                            )
                            .with_help(hint));
                        }
                    }
                }
                out.sort_by_key(|(i, _)| *i);
            }
            None => {
                // A column is float64 when every non-empty value of the first rows is a number.
                let mut numeric = vec![true; field_count];
                let mut seen = vec![false; field_count];
                let mut rows = 0;
                if !self.has_header {
                    observe(&record, &mut numeric, &mut seen);
                    rows += 1;
                }
                while rows < INFER_ROWS {
                    match reader.read_byte_record(&mut record) {
                        Ok(true) => {
                            if record.len() == field_count {
                                observe(&record, &mut numeric, &mut seen);
                            }
                            rows += 1;
                        }
                        Ok(false) => break,
                        Err(e) => return Err(open_problem(path, e)),
                    }
                }
                if rows == 0 && self.has_header {
                    return Err(Problem::at(
                        "path",
                        format!("`{}` has a header but no rows", path.display()),
                    )
                    .with_help("give `columns` to read a file that is still empty"));
                }
                for i in (0..field_count).filter(|i| *i != ts_index) {
                    let t = if numeric[i] && seen[i] {
                        ColumnType::Float64
                    } else {
                        ColumnType::Utf8
                    };
                    out.push((i, t));
                }
            }
        }
        if out.iter().any(|(i, _)| names[*i] == TIME_COLUMN) {
            return Err(Problem::at(
                if self.columns.is_some() { "columns" } else { "timestamp_column" },
                format!("the column `{TIME_COLUMN}` clashes with the event-time column `{TIME_COLUMN}`"),
            )
            .with_help(format!(
                "use `{TIME_COLUMN}` as timestamp_column, or list the columns to read in `columns` without it"
            )));
        }
        let schema = schema_with_time(
            out.iter()
                .map(|(i, t)| Field::new(names[*i].clone(), t.data_type(), true)),
        );
        Ok(CsvPlan {
            schema,
            types: out.iter().map(|(_, t)| *t).collect(),
            fields: out.iter().map(|(i, _)| *i).collect(),
            names: out.iter().map(|(i, _)| names[*i].clone()).collect(),
            ts_index,
            ts_name: self.timestamp_column.clone(),
            field_count,
            time_format,
            delimiter,
        })
    }
}

fn observe(record: &ByteRecord, numeric: &mut [bool], seen: &mut [bool]) {
    for (i, f) in record.iter().enumerate() {
        let Ok(text) = std::str::from_utf8(f) else {
            numeric[i] = false;
            continue;
        };
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        seen[i] = true;
        if numeric[i] && text.parse::<f64>().is_err() {
            numeric[i] = false;
        }
    }
}

impl Source for CsvSource {
    fn reads_file(&self) -> Option<String> {
        Some(self.path.clone())
    }

    fn schemas(&self, cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        let plan = self.plan(&cx.path(&self.path))?;
        Ok(Outputs::main(plan.schema).with_side(DEAD_LETTER, dead_letter_schema()))
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let path = cx.path(&self.path);
        let plan = self.plan(&path).map_err(|p| cx.error(p.message))?;
        let options = ReplayOptions {
            batch_rows: self.batch_rows,
            speed: self.speed,
            max_out_of_orderness_ms: self.max_out_of_orderness.as_millis(),
        };
        let has_header = self.has_header;
        replay_source(
            cx,
            plan.schema.clone(),
            plan.types.clone(),
            options,
            move || CsvRecords::open(path, plan, has_header),
        )
    }
}

/// Reads CSV records one by one for the replay operator.
struct CsvRecords {
    reader: csv::Reader<File>,
    record: ByteRecord,
    plan: CsvPlan,
    path: PathBuf,
    /// Byte range of the current record in the file (for its raw text).
    span: (u64, u64),
    raw_file: Option<File>,
}

impl CsvRecords {
    fn open(path: PathBuf, plan: CsvPlan, has_header: bool) -> Result<Self, EngineError> {
        let file = File::open(&path)
            .map_err(|e| EngineError::io(format!("cannot open `{}`", path.display()), e))?;
        let mut reader = CsvSource::reader_builder(plan.delimiter).from_reader(file);
        let mut record = ByteRecord::new();
        if has_header {
            reader.read_byte_record(&mut record).map_err(|e| {
                EngineError::component(
                    "csv",
                    format!("cannot read the header of `{}`: {e}", path.display()),
                )
            })?;
        }
        Ok(CsvRecords {
            reader,
            record,
            plan,
            path,
            span: (0, 0),
            raw_file: None,
        })
    }

    fn line(&self) -> u64 {
        self.record.position().map(|p| p.line()).unwrap_or(0)
    }
}

impl RecordReader for CsvRecords {
    fn next_record(&mut self) -> Result<bool, String> {
        match self.reader.read_byte_record(&mut self.record) {
            Ok(more) => {
                let start = self.record.position().map(|p| p.byte()).unwrap_or(0);
                self.span = (start, self.reader.position().byte());
                Ok(more)
            }
            Err(e) => Err(format!("`{}`: {e}", self.path.display())),
        }
    }

    fn parse(&mut self, columns: &mut [ColumnBuf]) -> Result<i64, String> {
        let record = &self.record;
        let plan = &self.plan;
        if record.len() != plan.field_count {
            return Err(format!(
                "line {}: expected {} fields, found {}",
                self.line(),
                plan.field_count,
                record.len()
            ));
        }
        let raw_ts = &record[plan.ts_index];
        let ts = std::str::from_utf8(raw_ts)
            .map_err(|_| "invalid UTF-8".to_string())
            .and_then(|text| plan.time_format.parse_str(text))
            .map_err(|e| {
                format!(
                    "line {}, column `{}`: bad timestamp: {e}",
                    self.line(),
                    plan.ts_name
                )
            })?;
        for ((col, &field), name) in columns.iter_mut().zip(&plan.fields).zip(&plan.names) {
            col.push_text(&record[field])
                .map_err(|e| format!("line {}, column `{name}`: {e}", self.line()))?;
        }
        Ok(ts)
    }

    fn raw_text(&mut self) -> String {
        let (start, end) = self.span;
        let len = (end.saturating_sub(start)).min(1 << 20) as usize;
        if self.raw_file.is_none() {
            self.raw_file = File::open(&self.path).ok();
        }
        let mut buf = vec![0u8; len];
        let read = self
            .raw_file
            .as_mut()
            .map(|f| {
                f.seek(SeekFrom::Start(start))
                    .and_then(|_| f.read_exact(&mut buf))
                    .is_ok()
            })
            .unwrap_or(false);
        if !read {
            // Fall back to the fields joined by the delimiter.
            let sep = [self.plan.delimiter];
            let parts: Vec<&[u8]> = self.record.iter().collect();
            buf = parts.join(&sep[..]);
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    use isthmus_engine::batch::time_type;
    use isthmus_engine::telemetry::ComponentMetrics;

    use super::*;
    use crate::replay::test_util::{harness, ms, schemas, times};

    fn source(toml_text: &str) -> CsvSource {
        toml::from_str(toml_text).expect("config parses")
    }

    fn write(dir: &Path, name: &str, content: &[u8]) {
        std::fs::write(dir.join(name), content).unwrap();
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut cfg = table["sources"]["machine"].as_table().unwrap().clone();
        cfg.remove("type");
        let _: CsvSource = cfg.try_into().unwrap();
    }

    #[test]
    fn infers_the_schema_and_reads_every_row() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.csv",
            b"timestamp,value,label,count\n2024-01-01 00:00:00,1.5,a,1\n2024-01-01 00:00:05,-2e-3,b,\n2024-01-01 00:00:10,3,c,7\n",
        );
        let s = source("path = \"a.csv\"");
        let out = schemas(&s, dir.path()).unwrap();
        let names: Vec<_> = out
            .main
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("ts".into(), time_type()),
                ("value".into(), DataType::Float64),
                ("label".into(), DataType::Utf8),
                ("count".into(), DataType::Float64)
            ]
        );
        assert_eq!(out.side[0].0, "dead_letter");
        let got = harness(dir.path()).run_source(&s);
        let b = got.main_batch().unwrap();
        assert_eq!(b.schema(), out.main);
        assert_eq!(
            times(&b),
            vec![
                ms("2024-01-01 00:00:00"),
                ms("2024-01-01 00:00:05"),
                ms("2024-01-01 00:00:10")
            ]
        );
        assert_eq!(
            b.column(1).as_primitive::<Float64Type>().values().to_vec(),
            vec![1.5, -2e-3, 3.0]
        );
        assert_eq!(b.column(2).as_string::<i32>().value(1), "b");
        let count = b.column(3).as_primitive::<Float64Type>();
        assert!(count.is_null(1));
        assert_eq!(count.value(2), 7.0);
        assert_eq!(got.side_rows("dead_letter"), 0);
    }

    #[test]
    fn given_columns_select_and_type() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "a.csv",
            b"timestamp,name,n,ok\n2024-01-01 00:00:00,x,10,true\n2024-01-01 00:00:01,y,-3,false\n",
        );
        let s = source("path = \"a.csv\"\ncolumns = { ok = \"bool\", n = \"int64\" }");
        let out = schemas(&s, dir.path()).unwrap();
        let names: Vec<_> = out
            .main
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, vec!["ts", "n", "ok"]);
        let b = harness(dir.path()).run_source(&s).main_batch().unwrap();
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>().values().to_vec(),
            vec![10, -3]
        );
        assert_eq!(
            b.column(2).as_boolean().iter().collect::<Vec<_>>(),
            vec![Some(true), Some(false)]
        );
    }

    #[test]
    fn semicolon_file_like_skab() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "skab.csv",
            b"datetime;Accelerometer1RMS;Volume Flow RateRMS;anomaly;changepoint\n\
2020-03-09 10:14:33;0.0266;32.0;0.0;0.0\n2020-03-09 10:14:34;0.0271;32.5;1.0;1.0\n",
        );
        let s = source("path = \"skab.csv\"\ndelimiter = \";\"\ntimestamp_column = \"datetime\"");
        let out = schemas(&s, dir.path()).unwrap();
        let names: Vec<_> = out
            .main
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            vec![
                "ts",
                "Accelerometer1RMS",
                "Volume Flow RateRMS",
                "anomaly",
                "changepoint"
            ]
        );
        let b = harness(dir.path()).run_source(&s).main_batch().unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.column_by_name("Volume Flow RateRMS")
                .unwrap()
                .as_primitive::<Float64Type>()
                .value(1),
            32.5
        );
        assert_eq!(times(&b)[1], ms("2020-03-09 10:14:34"));
    }

    #[test]
    fn timestamp_formats() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &str, &str); 4] = [
            ("unix_ms", "1700000000000", "1700000000500"),
            ("unix_s", "1700000000", "1700000000.5"),
            (
                "rfc3339",
                "2023-11-14T22:13:20Z",
                "2023-11-15T00:13:20.5+02:00",
            ),
            (
                "%d/%m/%Y %H:%M:%S%.f",
                "14/11/2023 22:13:20",
                "14/11/2023 22:13:20.5",
            ),
        ];
        for (format, a, b) in cases {
            write(
                dir.path(),
                "t.csv",
                format!("t,v\n{a},1\n{b},2\n").as_bytes(),
            );
            let s = source(&format!(
                "path = \"t.csv\"\ntimestamp_column = \"t\"\ntimestamp_format = \"{format}\""
            ));
            let got = harness(dir.path()).run_source(&s);
            assert_eq!(got.side_rows("dead_letter"), 0, "{format}");
            assert_eq!(
                times(&got.main_batch().unwrap()),
                vec![1_700_000_000_000, 1_700_000_000_500],
                "{format}"
            );
        }
    }

    #[test]
    fn malformed_records_become_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        let mut content = b"timestamp,value,name\n2024-01-01 00:00:00,1,a\n2024-01-01 00:00:01,2\n\
2024-01-01 00:00:02,abc,c\nnot a time,4,d\n2024-01-01 00:00:04,5,"
            .to_vec();
        content.extend_from_slice(b"\xff\xfe\n2024-01-01 00:00:05,6,f\n");
        write(dir.path(), "bad.csv", &content);
        let s = source("path = \"bad.csv\"\ncolumns = { value = \"float64\", name = \"utf8\" }");
        let h = harness(dir.path());
        let got = h.run_source(&s);
        assert_eq!(got.main_rows(), 2);
        assert_eq!(got.side_rows("dead_letter"), 4);
        assert_eq!(ComponentMetrics::get(&h.metrics.dead_letters), 4);
        let dead: Vec<RecordBatch> = got.side["dead_letter"]
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        let dead = arrow::compute::concat_batches(&dead[0].schema(), &dead).unwrap();
        let reasons = dead.column_by_name("reason").unwrap().as_string::<i32>();
        let records = dead.column_by_name("record").unwrap().as_string::<i32>();
        assert_eq!(reasons.value(0), "line 3: expected 3 fields, found 2");
        assert_eq!(records.value(0), "2024-01-01 00:00:01,2");
        assert!(
            reasons
                .value(1)
                .contains("line 4, column `value`: `abc` is not a number"),
            "{}",
            reasons.value(1)
        );
        assert_eq!(records.value(1), "2024-01-01 00:00:02,abc,c");
        assert!(
            reasons
                .value(2)
                .contains("line 5, column `timestamp`: bad timestamp"),
            "{}",
            reasons.value(2)
        );
        assert!(
            reasons
                .value(3)
                .contains("line 6, column `name`: invalid UTF-8"),
            "{}",
            reasons.value(3)
        );
        assert_eq!(
            dead.column_by_name("component")
                .unwrap()
                .as_string::<i32>()
                .value(0),
            "under_test"
        );
        // Rows out + dead letters = rows in.
        assert_eq!(got.main_rows() + got.side_rows("dead_letter"), 6);
    }

    #[test]
    fn out_of_order_rows_are_kept_and_times_hold() {
        let dir = tempfile::tempdir().unwrap();
        let rows = [1000, 5000, 3000, 7000, 2000, 9000, 8500];
        let mut text = String::from("t,v\n");
        for (i, t) in rows.iter().enumerate() {
            text.push_str(&format!("{t},{i}\n"));
        }
        write(dir.path(), "o.csv", text.as_bytes());
        for (ooo, batch_rows) in [("0s", 1), ("3s", 1), ("0s", 3)] {
            let s = source(&format!(
                "path = \"o.csv\"\ntimestamp_column = \"t\"\ntimestamp_format = \"unix_ms\"\nmax_out_of_orderness = \"{ooo}\"\nbatch_rows = {batch_rows}"
            ));
            let ooo_ms = DurationSpec::parse(ooo).unwrap().as_millis() as i64;
            let got = harness(dir.path()).run_source(&s);
            // (row index in the file, event time, batch time)
            let mut all: Vec<(usize, i64, i64)> = Vec::new();
            for (time, batch) in &got.main {
                let index = batch.column(1).as_primitive::<Float64Type>();
                for (row, ts) in times(batch).into_iter().enumerate() {
                    all.push((index.value(row) as usize, ts, *time as i64));
                }
            }
            all.sort();
            assert_eq!(
                all.iter().map(|r| r.1).collect::<Vec<_>>(),
                rows.to_vec(),
                "every row comes out"
            );
            for &(i, ts, t) in &all {
                // Only rows behind the watermark may be sent after their event time.
                let watermark = rows[..i].iter().max().map_or(0, |m| m - ooo_ms);
                assert!(
                    t <= ts || ts < watermark,
                    "row {ts} sent at {t} (watermark {watermark})"
                );
                assert!(
                    t <= ts.max(watermark),
                    "row {ts} sent at {t}, after the watermark {watermark}"
                );
            }
        }
    }

    #[test]
    fn paced_replay_takes_the_expected_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("timestamp,v\n");
        for i in 0..21 {
            text.push_str(&format!("{},{i}\n", 1_700_000_000 + i * 10));
        }
        write(dir.path(), "p.csv", text.as_bytes());
        // 200 s of recorded time at 1000x: about 200 ms.
        let s = source("path = \"p.csv\"\ntimestamp_format = \"unix_s\"\nspeed = 1000.0");
        let started = Instant::now();
        let got = harness(dir.path()).run_source(&s);
        let elapsed = started.elapsed();
        assert_eq!(got.main_rows(), 21);
        assert!(elapsed.as_millis() >= 180, "too fast: {elapsed:?}");
        assert!(elapsed.as_millis() < 3000, "too slow: {elapsed:?}");
        assert!(
            got.main.len() > 5,
            "rows are sent as they fall due, not in one batch"
        );
    }

    #[test]
    fn check_time_problems_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "h.csv",
            b"Timestamp,value\n2024-01-01 00:00:00,1\n",
        );
        write(dir.path(), "empty.csv", b"");
        let key = |toml_text: &str| {
            schemas(&source(toml_text), dir.path())
                .err()
                .map(|p| (p.key.unwrap_or_default(), p.message, p.help))
        };
        let (k, m, _) = key("path = \"missing.csv\"").unwrap();
        assert_eq!(k, "path");
        assert!(m.contains("missing.csv"));
        let (k, _, help) = key("path = \"h.csv\"").unwrap();
        assert_eq!(k, "timestamp_column");
        assert!(help.unwrap().contains("did you mean `Timestamp`"));
        let (k, m, _) = key(
            "path = \"h.csv\"\ntimestamp_column = \"Timestamp\"\ncolumns = { valu = \"float64\" }",
        )
        .unwrap();
        assert_eq!(k, "columns");
        assert!(m.contains("valu"));
        assert_eq!(key("path = \"empty.csv\"").unwrap().0, "path");
        assert_eq!(
            key("path = \"h.csv\"\ndelimiter = \";;\"").unwrap().0,
            "delimiter"
        );
        assert_eq!(
            key("path = \"h.csv\"\ntimestamp_format = \"%Q\"")
                .unwrap()
                .0,
            "timestamp_format"
        );
        assert_eq!(
            key("path = \"h.csv\"\ntimestamp_column = \"Timestamp\"\nspeed = 0.0")
                .unwrap()
                .0,
            "speed"
        );
        assert!(key("path = \"h.csv\"\ntimestamp_column = \"Timestamp\"").is_none());
    }

    #[test]
    fn without_header_columns_are_numbered() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "n.csv", b"1000,1.5\n2000,2.5\n");
        let s = source(
            "path = \"n.csv\"\nhas_header = false\ntimestamp_column = \"column_1\"\ntimestamp_format = \"unix_ms\"",
        );
        let out = schemas(&s, dir.path()).unwrap();
        assert_eq!(out.main.field(1).name(), "column_2");
        let b = harness(dir.path()).run_source(&s).main_batch().unwrap();
        assert_eq!(times(&b), vec![1000, 2000]);
    }
}
