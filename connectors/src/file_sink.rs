//! File sinks: `jsonl` (one JSON object per row) and `csv` (with a header line). One worker
//! owns the file: with several workers every batch is routed to worker 0. Every batch is
//! written and flushed as it arrives, so `tail -f` shows rows as they come.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use isthmus_engine::batch::{Batch, BatchStream};
use isthmus_engine::component::{BuildContext, CheckContext, Sink};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::telemetry::ComponentMetrics;
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

/// An example pipeline fragment for the `jsonl` sink.
pub const JSONL_EXAMPLE: &str = r#"[sinks.archive]
type = "jsonl"
inputs = ["sim"]
path = "readings.jsonl"
append = false
"#;

/// An example pipeline fragment for the `csv` sink.
pub const CSV_EXAMPLE: &str = r#"[sinks.table]
type = "csv"
inputs = ["sim"]
path = "readings.csv"
append = true
"#;

/// How `ts` is written by the CSV sink (the `csv` source's default format reads it back).
pub const CSV_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S%.3f";

/// How `ts` is written by the JSON-lines sink (RFC 3339, UTC).
pub const JSONL_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// Writes rows to a JSON-lines file, one JSON object per row.
///
/// `ts` is written as RFC 3339 text in UTC (`2024-01-31T12:00:00.000Z`); null values are left
/// out of their row's object. Rows are written and flushed batch by batch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSink {
    /// Path of the file to write, relative to the pipeline file. Its directory must exist.
    pub path: String,
    /// Whether to add to the end of an existing file. Default `false`: the file is emptied
    /// when the pipeline starts.
    #[serde(default)]
    pub append: bool,
}

/// Writes rows to a CSV file with a header line.
///
/// The header is written once, at the top of a new or emptied file (not when appending to a
/// file that already holds data). `ts` is written as `2024-01-31 12:00:00.000` (UTC), which
/// the `csv` source reads back with its default `timestamp_format`. Rows are written and
/// flushed batch by batch.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CsvSink {
    /// Path of the file to write, relative to the pipeline file. Its directory must exist.
    pub path: String,
    /// Whether to add to the end of an existing file. Default `false`: the file is emptied
    /// when the pipeline starts.
    #[serde(default)]
    pub append: bool,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Jsonl,
    Csv,
}

impl Sink for JsonlSink {
    fn writes_file(&self) -> Option<String> {
        Some(self.path.clone())
    }

    fn check(&self, _input: &SchemaRef, cx: &CheckContext<'_>) -> Result<(), Problem> {
        check_path(&cx.path(&self.path))
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        build_sink(input, cx, cx.path(&self.path), self.append, Format::Jsonl)
    }
}

impl Sink for CsvSink {
    fn writes_file(&self) -> Option<String> {
        Some(self.path.clone())
    }

    fn check(&self, _input: &SchemaRef, cx: &CheckContext<'_>) -> Result<(), Problem> {
        check_path(&cx.path(&self.path))
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        build_sink(input, cx, cx.path(&self.path), self.append, Format::Csv)
    }
}

fn check_path(path: &Path) -> Result<(), Problem> {
    if path.is_dir() {
        return Err(
            Problem::at("path", format!("`{}` is a directory", path.display()))
                .with_help("give the path of a file inside it"),
        );
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Problem::at(
            "path",
            format!("the directory `{}` does not exist", parent.display()),
        )
        .with_help("create it first; paths are relative to the pipeline file"));
    }
    Ok(())
}

/// The one writer of a file (on worker 0).
struct FileWriter {
    file: File,
    path: PathBuf,
    format: Format,
    /// Whether the CSV header is still to be written.
    header: bool,
    buf: Vec<u8>,
    name: String,
    metrics: Arc<ComponentMetrics>,
    errors: u64,
}

impl FileWriter {
    fn open(
        path: PathBuf,
        append: bool,
        format: Format,
        cx: &BuildContext<'_>,
    ) -> Result<Self, EngineError> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| {
                EngineError::io(format!("cannot open `{}` for writing", path.display()), e)
            })?;
        let len = file
            .metadata()
            .map_err(|e| {
                EngineError::io(format!("cannot read the size of `{}`", path.display()), e)
            })?
            .len();
        Ok(FileWriter {
            file,
            path,
            format,
            header: format == Format::Csv && len == 0,
            buf: Vec::new(),
            name: cx.name.clone(),
            metrics: cx.metrics.clone(),
            errors: 0,
        })
    }

    fn encode(&mut self, batch: &RecordBatch) -> Result<(), arrow::error::ArrowError> {
        self.buf.clear();
        match self.format {
            Format::Jsonl => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_timestamp_format(JSONL_TIME_FORMAT.to_string())
                    .build::<_, arrow::json::writer::LineDelimited>(&mut self.buf);
                w.write(batch)?;
                w.finish()?;
            }
            Format::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(self.header)
                    .with_timestamp_format(CSV_TIME_FORMAT.to_string())
                    .build(&mut self.buf);
                w.write(batch)?;
            }
        }
        Ok(())
    }

    /// Writes one batch and flushes it. A failure is logged and its rows counted as dead
    /// letters: the pipeline goes on.
    fn write(&mut self, batch: &RecordBatch) {
        if batch.num_rows() == 0 {
            return;
        }
        let result = self.encode(batch).map_err(|e| e.to_string()).and_then(|_| {
            self.file
                .write_all(&self.buf)
                .and_then(|_| self.file.flush())
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(()) => self.header = false,
            Err(e) => {
                self.errors += 1;
                ComponentMetrics::add(&self.metrics.dead_letters, batch.num_rows() as u64);
                if self.errors.is_power_of_two() {
                    tracing::error!(
                        component = %self.name,
                        failures = self.errors,
                        "cannot write {} rows to `{}`: {e}",
                        batch.num_rows(),
                        self.path.display()
                    );
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Err(e) = self.file.flush().and_then(|_| self.file.sync_data()) {
            tracing::warn!(component = %self.name, "cannot flush `{}`: {e}", self.path.display());
        }
    }
}

fn build_sink<'s>(
    input: BatchStream<'s>,
    cx: &BuildContext<'s>,
    path: PathBuf,
    append: bool,
    format: Format,
) -> Result<(), EngineError> {
    let mut writer = if cx.worker_index() == 0 {
        Some(FileWriter::open(path, append, format, cx)?)
    } else {
        None
    };
    let name = match format {
        Format::Jsonl => "JsonlSink",
        Format::Csv => "CsvSink",
    };
    let mut delivery = cx.delivery_reporter();
    input.sink(
        Exchange::new(|_: &Batch| 0u64),
        name,
        move |(input, frontier)| {
            input.for_each_stamp(|_cap, data| {
                for container in data {
                    for batch in container.drain(..) {
                        if let Some(w) = writer.as_mut() {
                            w.write(&batch.data);
                        }
                    }
                }
            });
            if frontier.is_empty()
                && let Some(mut w) = writer.take()
            {
                w.finish();
            }
            // Rows are written to the file (unbuffered) as they arrive.
            delivery.delivered_through_frontier(&frontier.frontier());
        },
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Float64Type};
    use isthmus_engine::batch::{Time, schema_with_time, time_array};

    use super::*;
    use crate::csv_source::CsvSource;
    use crate::jsonl_source::JsonlSource;
    use crate::replay::test_util::{harness, times};

    fn input() -> (SchemaRef, Vec<(Time, RecordBatch)>) {
        let schema = schema_with_time([
            Field::new("device", DataType::Utf8, true),
            Field::new("value", DataType::Float64, true),
            Field::new("count", DataType::Int64, true),
        ]);
        let batch = |ts: Vec<i64>, d: Vec<Option<&str>>, v: Vec<f64>, c: Vec<i64>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    time_array(ts),
                    Arc::new(StringArray::from(d)),
                    Arc::new(Float64Array::from(v)),
                    Arc::new(Int64Array::from(c)),
                ],
            )
            .unwrap()
        };
        let batches = vec![
            (
                1000,
                batch(
                    vec![1000, 1500],
                    vec![Some("a"), Some("b, with comma")],
                    vec![1.5, -2.25],
                    vec![1, 2],
                ),
            ),
            (2000, batch(vec![2000], vec![Some("c")], vec![3.0], vec![3])),
        ];
        (schema, batches)
    }

    #[test]
    fn examples_parse() {
        for (example, name) in [(JSONL_EXAMPLE, "archive"), (CSV_EXAMPLE, "table")] {
            let table: toml::Table = toml::from_str(example).unwrap();
            let mut cfg = table["sinks"][name].as_table().unwrap().clone();
            cfg.remove("type");
            cfg.remove("inputs");
            if name == "archive" {
                let _: JsonlSink = cfg.try_into().unwrap();
            } else {
                let _: CsvSink = cfg.try_into().unwrap();
            }
        }
    }

    #[test]
    fn csv_round_trip_with_one_header_when_appending() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, batches) = input();
        let h = harness(dir.path());
        let sink: CsvSink = toml::from_str("path = \"out.csv\"").unwrap();
        h.run_sink(&sink, schema.clone(), batches.clone());
        let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
        assert_eq!(
            text,
            "ts,device,value,count\n1970-01-01 00:00:01.000,a,1.5,1\n1970-01-01 00:00:01.500,\"b, with comma\",-2.25,2\n1970-01-01 00:00:02.000,c,3.0,3\n"
        );
        // Appending adds rows without a second header.
        let append: CsvSink = toml::from_str("path = \"out.csv\"\nappend = true").unwrap();
        h.run_sink(&append, schema.clone(), batches.clone());
        let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
        assert_eq!(text.matches("ts,device").count(), 1);
        // Read back with the csv source.
        let source: CsvSource =
            toml::from_str("path = \"out.csv\"\ntimestamp_column = \"ts\"").unwrap();
        let b = h.run_source(&source).main_batch().unwrap();
        assert_eq!(times(&b), vec![1000, 1500, 2000, 1000, 1500, 2000]);
        assert_eq!(
            b.column_by_name("device")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "b, with comma"
        );
        assert_eq!(
            b.column_by_name("value")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
            vec![1.5, -2.25, 3.0, 1.5, -2.25, 3.0]
        );
        // Without append the file starts over.
        h.run_sink(&sink, schema, batches);
        let text = std::fs::read_to_string(dir.path().join("out.csv")).unwrap();
        assert_eq!(text.lines().count(), 4);
    }

    #[test]
    fn jsonl_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (schema, batches) = input();
        let h = harness(dir.path());
        let sink: JsonlSink = toml::from_str("path = \"out.jsonl\"").unwrap();
        h.run_sink(&sink, schema, batches);
        let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["ts"], "1970-01-01T00:00:01.000Z");
        assert_eq!(first["value"], 1.5);
        assert_eq!(first["count"], 1);
        let source: JsonlSource = toml::from_str(
            "path = \"out.jsonl\"\ntimestamp_column = \"ts\"\ntimestamp_format = \"rfc3339\"\ncolumns = { device = \"utf8\", value = \"float64\", count = \"int64\" }",
        )
        .unwrap();
        let got = h.run_source(&source);
        assert_eq!(got.side_rows("dead_letter"), 0);
        let b = got.main_batch().unwrap();
        assert_eq!(times(&b), vec![1000, 1500, 2000]);
        assert_eq!(
            b.column_by_name("device")
                .unwrap()
                .as_string::<i32>()
                .value(1),
            "b, with comma"
        );
        assert_eq!(
            b.column_by_name("value")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec(),
            vec![1.5, -2.25, 3.0]
        );
    }

    #[test]
    fn check_requires_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_path(&dir.path().join("x.csv")).is_ok());
        let p = check_path(&dir.path().join("nope/x.csv")).unwrap_err();
        assert_eq!(p.key.as_deref(), Some("path"));
        assert_eq!(
            check_path(dir.path()).unwrap_err().key.as_deref(),
            Some("path")
        );
    }

    /// Runs csv source -> jsonl sink on `workers` timely workers and returns the file's lines.
    fn run_csv_to_jsonl(dir: &Path, workers: usize) -> Vec<String> {
        use isthmus_engine::channel::ChannelHub;
        use isthmus_engine::component::{Kind, Source};
        use isthmus_engine::policy::PolicyStore;
        use isthmus_engine::spec::{NodeSpec, Role};

        let source: CsvSource = toml::from_str("path = \"in.csv\"\nbatch_rows = 7").unwrap();
        let sink: JsonlSink = toml::from_str(&format!("path = \"out{workers}.jsonl\"")).unwrap();
        let base = dir.to_path_buf();
        let metrics = Arc::new(ComponentMetrics::new("t", Kind::Source, "csv", false));
        let policy = Arc::new(PolicyStore::new(Default::default(), Default::default()));
        let hub = Arc::new(ChannelHub::new());
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            worker.dataflow::<Time, _, _>(|scope| {
                let cx = BuildContext {
                    scope,
                    name: "t".into(),
                    node: Arc::new(NodeSpec {
                        id: "n".into(),
                        role: Role::Standalone,
                    }),
                    policy: policy.clone(),
                    metrics: metrics.clone(),
                    channels: hub.clone(),
                    shutdown: Default::default(),
                    input_schema: None,
                    base_dir: base.clone(),
                    delivery: Arc::new(isthmus_engine::delivery::DeliveryTracker::new(0)),
                };
                let out = source.build(&cx).unwrap();
                sink.build(out.main, &cx).unwrap();
            });
        })
        .unwrap();
        for g in guards.join() {
            g.unwrap();
        }
        let text = std::fs::read_to_string(dir.join(format!("out{workers}.jsonl"))).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn one_and_two_workers_write_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::from("timestamp,value\n");
        for i in 0..100 {
            text.push_str(&format!("2024-01-01 00:00:{:02},{i}\n", (i * 37) % 50));
        }
        std::fs::write(dir.path().join("in.csv"), text).unwrap();
        let one = run_csv_to_jsonl(dir.path(), 1);
        let two = run_csv_to_jsonl(dir.path(), 2);
        assert_eq!(one.len(), 100);
        assert_eq!(one, two);
    }
}
