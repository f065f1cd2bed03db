//! `stdout` sink: prints rows as JSON lines or as tables.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use isthmus_engine::batch::{Batch, BatchStream};
use isthmus_engine::{BuildContext, CheckContext, EngineError, Problem, Sink};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sinks.console]
type = "stdout"
inputs = ["sim"]
format = "table"
max_rows = 20
"#;

/// How the `stdout` sink prints rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StdoutFormat {
    /// One JSON object per row and line.
    #[default]
    Json,
    /// An aligned text table per batch.
    Table,
}

/// Prints the rows it receives on standard output, as JSON lines (default) or as tables.
///
/// With several workers, all rows are printed by one of them, so lines never interleave.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdoutSink {
    /// `"json"` (one JSON object per line, the default) or `"table"`.
    #[serde(default)]
    pub format: StdoutFormat,
    /// Print at most this many rows; the rest are counted and a final line says how many
    /// were not shown. Default: no limit.
    #[serde(default)]
    pub max_rows: Option<u64>,
}

/// Formats batches for printing, up to a row limit.
#[derive(Debug)]
pub struct Printer {
    format: StdoutFormat,
    max_rows: Option<u64>,
    shown: u64,
    hidden: u64,
    buf: Vec<u8>,
}

impl Printer {
    /// A printer in `format` that shows at most `max_rows` rows.
    pub fn new(format: StdoutFormat, max_rows: Option<u64>) -> Self {
        Printer {
            format,
            max_rows,
            shown: 0,
            hidden: 0,
            buf: Vec::new(),
        }
    }

    /// Writes the rows of `batch` that are still within the limit to `out`.
    pub fn write_batch(
        &mut self,
        batch: &RecordBatch,
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let rows = batch.num_rows() as u64;
        let show = match self.max_rows {
            Some(max) => rows.min(max.saturating_sub(self.shown)),
            None => rows,
        };
        self.hidden += rows - show;
        if show == 0 {
            return Ok(());
        }
        self.shown += show;
        let part = if show == rows {
            batch.clone()
        } else {
            batch.slice(0, show as usize)
        };
        self.buf.clear();
        match self.format {
            StdoutFormat::Json => {
                let mut writer = arrow::json::LineDelimitedWriter::new(&mut self.buf);
                writer.write(&part).map_err(std::io::Error::other)?;
                writer.finish().map_err(std::io::Error::other)?;
            }
            StdoutFormat::Table => {
                let table = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(&part))
                    .map_err(std::io::Error::other)?;
                writeln!(self.buf, "{table}")?;
            }
        }
        out.write_all(&self.buf)
    }

    /// Writes the final note on rows not shown, if any.
    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.hidden > 0 {
            writeln!(out, "… {} more rows not shown", self.hidden)?;
        }
        out.flush()
    }

    /// Rows printed so far.
    pub fn shown(&self) -> u64 {
        self.shown
    }

    /// Rows received but not printed so far.
    pub fn hidden(&self) -> u64 {
        self.hidden
    }
}

impl Sink for StdoutSink {
    fn check(&self, _input: &SchemaRef, _cx: &CheckContext<'_>) -> Result<(), Problem> {
        Ok(())
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let mut printer = Printer::new(self.format, self.max_rows);
        let name = cx.name.clone();
        let mut failed = false;
        let mut finished = false;
        let mut delivery = cx.delivery_reporter();
        input.sink(Exchange::new(|_: &Batch| 0), &cx.name, move |(input, frontier)| {
            input.for_each_stamp(|_cap, data| {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                for container in data {
                    for batch in container.drain(..) {
                        if failed {
                            continue;
                        }
                        if let Err(e) = printer.write_batch(&batch.data, &mut out) {
                            failed = true;
                            tracing::warn!(component = %name, "cannot write to stdout, rows are no longer printed: {e}");
                        }
                    }
                }
            });
            if !finished && frontier.is_empty() {
                finished = true;
                if !failed && let Err(e) = printer.finish(&mut std::io::stdout().lock()) {
                    tracing::warn!(component = %name, "cannot write to stdout: {e}");
                }
            }
            delivery.delivered_through_frontier(&frontier.frontier());
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field};
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::testing::Harness;

    use super::*;

    fn batch(xs: &[i64]) -> RecordBatch {
        let schema = schema_with_time([
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]);
        RecordBatch::try_new(
            schema,
            vec![
                time_array(xs.iter().map(|x| x * 1000).collect()),
                Arc::new(Int64Array::from(xs.to_vec())),
                Arc::new(StringArray::from_iter_values(
                    xs.iter().map(|x| format!("v{x}")),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_lines_with_limit() {
        let mut p = Printer::new(StdoutFormat::Json, Some(3));
        let mut out = Vec::new();
        p.write_batch(&batch(&[1, 2]), &mut out).unwrap();
        p.write_batch(&batch(&[3, 4, 5]), &mut out).unwrap();
        p.write_batch(&batch(&[6]), &mut out).unwrap();
        p.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(
            lines[0].contains("\"x\":1") && lines[0].contains("\"s\":\"v1\""),
            "{}",
            lines[0]
        );
        assert!(lines[2].contains("\"x\":3"));
        assert_eq!(lines[3], "… 3 more rows not shown");
        assert_eq!((p.shown(), p.hidden()), (3, 3));
    }

    #[test]
    fn tables() {
        let mut p = Printer::new(StdoutFormat::Table, None);
        let mut out = Vec::new();
        p.write_batch(&batch(&[7, 8]), &mut out).unwrap();
        p.finish(&mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("+"), "{text}");
        assert!(text.contains("| x ") && text.contains("| v8 "), "{text}");
        assert!(!text.contains("not shown"));
    }

    #[test]
    fn runs_as_a_sink() {
        let sink: StdoutSink = toml::from_str("format = \"json\"\nmax_rows = 1").unwrap();
        assert_eq!(sink.max_rows, Some(1));
        let b = batch(&[1, 2]);
        Harness::default().run_sink(&sink, b.schema(), vec![(1000, b)]);
        assert!(toml::from_str::<StdoutSink>("format = \"xml\"").is_err());
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut body = table["sinks"]["console"].as_table().unwrap().clone();
        body.remove("type");
        body.remove("inputs");
        let s: StdoutSink = body.try_into().unwrap();
        assert_eq!(s.format, StdoutFormat::Table);
    }
}
