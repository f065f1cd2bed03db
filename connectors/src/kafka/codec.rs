//! Wire formats of Kafka (and MQTT) messages: rows to message payloads and back.
//!
//! * `json`: one JSON object per row (`ts` as RFC 3339 with milliseconds), readable by kcat
//!   and any Kafka tool.
//! * `csv`: one CSV record per row, no header, columns in schema order (`ts` first).
//! * `arrow`: one Arrow IPC stream per batch (or per key within a batch), compressed with
//!   lz4 (size-prepended block). Columns are matched by name when read.

use arrow::array::{ArrayRef, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use isthmus_engine::batch::TIME_COLUMN;
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::jsonl_source::JsonRowParser;
use crate::replay::{ColumnBuf, ColumnType, TimeFormat};

/// How rows are written in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum WireFormat {
    /// One JSON object per row and message.
    #[default]
    Json,
    /// One CSV record per row and message, columns in schema order, `ts` first.
    Csv,
    /// Arrow IPC compressed with lz4: one message per batch (per key with `key`).
    Arrow,
}

impl WireFormat {
    /// The name used in headers and configs.
    pub fn name(self) -> &'static str {
        match self {
            WireFormat::Json => "json",
            WireFormat::Csv => "csv",
            WireFormat::Arrow => "arrow",
        }
    }
}

/// The time format of `ts` in json and csv messages.
pub const WIRE_TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.3fZ";

/// A 64-bit fingerprint of a schema's column names and types (hex), sent in a header so
/// readers can tell producers' schemas apart.
pub fn schema_fingerprint(schema: &Schema) -> String {
    let mut h = DefaultHasher::new();
    for f in schema.fields() {
        f.name().hash(&mut h);
        f.data_type().to_string().hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

/// One message to produce: an optional key and the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The message key (from the `key` column), if any.
    pub key: Option<Vec<u8>>,
    /// The encoded rows.
    pub payload: Vec<u8>,
    /// Rows in the payload.
    pub rows: usize,
}

/// Encodes batches into messages.
pub struct Encoder {
    format: WireFormat,
    key_column: Option<String>,
}

impl Encoder {
    /// An encoder writing `format`, keying messages by `key_column` when given.
    pub fn new(format: WireFormat, key_column: Option<String>) -> Self {
        Encoder { format, key_column }
    }

    /// Appends the messages for `batch` to `out`.
    pub fn encode(&self, batch: &RecordBatch, out: &mut Vec<OutMessage>) -> Result<(), String> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys = match &self.key_column {
            Some(k) => Some(row_keys(batch, k)?),
            None => None,
        };
        match self.format {
            WireFormat::Json => {
                let mut buf = Vec::with_capacity(batch.num_rows() * 64);
                let mut w = arrow::json::WriterBuilder::new()
                    .with_timestamp_format(WIRE_TIME_FORMAT.to_string())
                    .build::<_, arrow::json::writer::LineDelimited>(&mut buf);
                w.write(batch).map_err(|e| e.to_string())?;
                w.finish().map_err(|e| e.to_string())?;
                let lines = buf.split(|b| *b == b'\n').filter(|l| !l.is_empty());
                for (row, line) in lines.enumerate() {
                    out.push(OutMessage {
                        key: keys.as_ref().map(|k| k[row].clone().into_bytes()),
                        payload: line.to_vec(),
                        rows: 1,
                    });
                }
            }
            WireFormat::Csv => {
                for row in 0..batch.num_rows() {
                    let mut buf = Vec::with_capacity(64);
                    let mut w = arrow::csv::WriterBuilder::new()
                        .with_header(false)
                        .with_timestamp_format(WIRE_TIME_FORMAT.to_string())
                        .build(&mut buf);
                    w.write(&batch.slice(row, 1)).map_err(|e| e.to_string())?;
                    drop(w);
                    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                        buf.pop();
                    }
                    out.push(OutMessage {
                        key: keys.as_ref().map(|k| k[row].clone().into_bytes()),
                        payload: buf,
                        rows: 1,
                    });
                }
            }
            WireFormat::Arrow => match keys {
                None => out.push(OutMessage {
                    key: None,
                    payload: arrow_payload(batch)?,
                    rows: batch.num_rows(),
                }),
                Some(keys) => {
                    let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
                    let mut index: HashMap<&str, usize> = HashMap::new();
                    for (row, key) in keys.iter().enumerate() {
                        let i = *index.entry(key.as_str()).or_insert_with(|| {
                            groups.push((key.clone(), Vec::new()));
                            groups.len() - 1
                        });
                        groups[i].1.push(row as u32);
                    }
                    for (key, rows) in groups {
                        let indices = UInt32Array::from(rows);
                        let columns: Vec<ArrayRef> = batch
                            .columns()
                            .iter()
                            .map(|c| arrow::compute::take(c, &indices, None))
                            .collect::<Result<_, _>>()
                            .map_err(|e| e.to_string())?;
                        let part = RecordBatch::try_new(batch.schema(), columns)
                            .map_err(|e| e.to_string())?;
                        out.push(OutMessage {
                            key: Some(key.into_bytes()),
                            payload: arrow_payload(&part)?,
                            rows: part.num_rows(),
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

/// The `key` column's value of every row, as text (empty for nulls).
fn row_keys(batch: &RecordBatch, column: &str) -> Result<Vec<String>, String> {
    let array = batch
        .column_by_name(column)
        .ok_or_else(|| format!("the rows have no key column `{column}`"))?;
    let formatter = arrow::util::display::ArrayFormatter::try_new(
        array.as_ref(),
        &arrow::util::display::FormatOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    Ok((0..batch.num_rows())
        .map(|row| {
            if array.is_null(row) {
                String::new()
            } else {
                formatter.value(row).to_string()
            }
        })
        .collect())
}

/// Arrow IPC stream of one batch, lz4-compressed with its size prepended.
fn arrow_payload(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut ipc = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())
            .map_err(|e| e.to_string())?;
        w.write(batch).map_err(|e| e.to_string())?;
        w.finish().map_err(|e| e.to_string())?;
    }
    Ok(lz4_flex::compress_prepend_size(&ipc))
}

/// Decodes message payloads into batches of a declared schema (`ts` first).
pub struct Decoder {
    format: WireFormat,
    schema: SchemaRef,
    columns: Vec<ColumnBuf>,
    times: Vec<i64>,
    json: JsonRowParser,
    time_format: TimeFormat,
    /// Arrow batches decoded so far (already in `schema`).
    decoded: Vec<RecordBatch>,
    rows: usize,
}

impl Decoder {
    /// A decoder into `schema` (whose first column is `ts`, then `types`); json and csv
    /// read the event time from `ts_key` written as `time_format`.
    pub fn new(
        format: WireFormat,
        schema: SchemaRef,
        types: &[ColumnType],
        ts_key: String,
        time_format: TimeFormat,
    ) -> Self {
        let names: Vec<String> = schema
            .fields()
            .iter()
            .skip(1)
            .map(|f| f.name().clone())
            .collect();
        Decoder {
            format,
            columns: types.iter().map(|t| ColumnBuf::new(*t)).collect(),
            times: Vec::new(),
            json: JsonRowParser::new(names, ts_key, time_format.clone()),
            time_format,
            schema,
            decoded: Vec::new(),
            rows: 0,
        }
    }

    /// Rows decoded and not yet taken.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Decodes one payload; returns the event times of its rows (min, max). On error
    /// nothing is kept and the message says what is wrong.
    pub fn push(&mut self, payload: &[u8]) -> Result<(i64, i64), String> {
        let n = self.times.len();
        let result = match self.format {
            WireFormat::Json => self.json.parse(payload, &mut self.columns).map(|t| (t, t)),
            WireFormat::Csv => self.push_csv(payload).map(|t| (t, t)),
            WireFormat::Arrow => return self.push_arrow(payload),
        };
        match result {
            Ok((t, _)) if t < 0 => {
                self.rollback(n);
                Err(format!("event time {t} ms is before 1970-01-01"))
            }
            Ok((t, _)) => {
                self.times.push(t);
                self.rows += 1;
                Ok((t, t))
            }
            Err(e) => {
                self.rollback(n);
                Err(e)
            }
        }
    }

    fn rollback(&mut self, rows: usize) {
        for c in &mut self.columns {
            c.truncate(rows);
        }
    }

    fn push_csv(&mut self, payload: &[u8]) -> Result<i64, String> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(payload);
        let mut record = csv::ByteRecord::new();
        match reader.read_byte_record(&mut record) {
            Ok(true) => {}
            Ok(false) => return Err("empty CSV message".into()),
            Err(e) => return Err(format!("bad CSV: {e}")),
        }
        let expected = self.columns.len() + 1;
        if record.len() != expected {
            return Err(format!(
                "{} fields, expected {expected} (ts, then the columns in order)",
                record.len()
            ));
        }
        let ts_text = std::str::from_utf8(&record[0]).map_err(|_| "ts is not UTF-8".to_string())?;
        let ts = self.time_format.parse_str(ts_text)?;
        for (i, col) in self.columns.iter_mut().enumerate() {
            let field = &record[i + 1];
            if field.is_empty() {
                col.push_null();
            } else {
                col.push_text(field)
                    .map_err(|e| format!("column {}: {e}", i + 2))?;
            }
        }
        Ok(ts)
    }

    fn push_arrow(&mut self, payload: &[u8]) -> Result<(i64, i64), String> {
        let ipc = lz4_flex::decompress_size_prepended(payload)
            .map_err(|e| format!("not an lz4 block: {e}"))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(|e| format!("not an Arrow IPC stream: {e}"))?;
        let mut parts = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| format!("bad Arrow IPC batch: {e}"))?;
            parts.push(self.project(&batch)?);
        }
        let mut lo = i64::MAX;
        let mut hi = i64::MIN;
        for part in &parts {
            if let Some(ts) = part
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::TimestampMillisecondArray>()
            {
                for t in ts.iter().flatten() {
                    lo = lo.min(t);
                    hi = hi.max(t);
                }
            }
        }
        if lo < 0 {
            return Err(format!("event time {lo} ms is before 1970-01-01"));
        }
        for part in parts {
            self.rows += part.num_rows();
            self.decoded.push(part);
        }
        if lo > hi {
            return Err("the Arrow message has no rows".into());
        }
        Ok((lo, hi))
    }

    /// Takes the columns of our schema from `batch`, by name.
    fn project(&self, batch: &RecordBatch) -> Result<RecordBatch, String> {
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for field in self.schema.fields() {
            let Some(col) = batch.column_by_name(field.name()) else {
                if field.name() == TIME_COLUMN {
                    return Err(format!("the Arrow message has no `{TIME_COLUMN}` column"));
                }
                columns.push(arrow::array::new_null_array(
                    field.data_type(),
                    batch.num_rows(),
                ));
                continue;
            };
            if col.data_type() != field.data_type() {
                // Timestamps only from timestamps (a number has no unit); others by Arrow's casts.
                let castable = if matches!(field.data_type(), DataType::Timestamp(..)) {
                    matches!(col.data_type(), DataType::Timestamp(..))
                } else {
                    arrow::compute::can_cast_types(col.data_type(), field.data_type())
                };
                if !castable {
                    return Err(format!(
                        "column `{}` is {} in the message, {} here",
                        field.name(),
                        col.data_type(),
                        field.data_type()
                    ));
                }
                columns
                    .push(arrow::compute::cast(col, field.data_type()).map_err(|e| e.to_string())?);
            } else {
                columns.push(col.clone());
            }
        }
        let options =
            arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)
            .map_err(|e| e.to_string())
    }

    /// The rows decoded so far as one batch.
    pub fn take(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        let mut parts = std::mem::take(&mut self.decoded);
        if !self.times.is_empty() {
            let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len() + 1);
            arrays.push(isthmus_engine::batch::time_array(std::mem::take(
                &mut self.times,
            )));
            arrays.extend(self.columns.iter_mut().map(ColumnBuf::finish));
            match RecordBatch::try_new(self.schema.clone(), arrays) {
                Ok(b) => parts.push(b),
                Err(e) => tracing::error!("cannot build a batch: {e}"),
            }
        }
        if parts.len() == 1 {
            return parts.pop();
        }
        arrow::compute::concat_batches(&self.schema, &parts)
            .map_err(|e| tracing::error!("cannot join batches: {e}"))
            .ok()
    }
}

/// A schema from a `columns` table, `ts` first.
pub fn declared_schema(columns: &[(String, ColumnType)]) -> SchemaRef {
    isthmus_engine::batch::schema_with_time(
        columns
            .iter()
            .map(|(k, t)| arrow::datatypes::Field::new(k.clone(), t.data_type(), true)),
    )
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringArray};
    use std::sync::Arc;

    use isthmus_engine::batch::time_array;

    use super::*;

    fn sample() -> RecordBatch {
        let schema = declared_schema(&[
            ("device".into(), ColumnType::Utf8),
            ("value".into(), ColumnType::Float64),
        ]);
        RecordBatch::try_new(
            schema,
            vec![
                time_array(vec![
                    1_700_000_000_000,
                    1_700_000_000_500,
                    1_700_000_001_000,
                ]),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    Some("b,\"x\"\nz"),
                    Some("a"),
                ])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-2.0)])),
            ],
        )
        .unwrap()
    }

    fn round_trip(format: WireFormat, key: Option<&str>) -> (Vec<OutMessage>, RecordBatch) {
        let batch = sample();
        let mut out = Vec::new();
        Encoder::new(format, key.map(String::from))
            .encode(&batch, &mut out)
            .unwrap();
        let mut d = Decoder::new(
            format,
            batch.schema(),
            &[ColumnType::Utf8, ColumnType::Float64],
            "ts".into(),
            TimeFormat::Rfc3339,
        );
        for m in &out {
            d.push(&m.payload).unwrap();
        }
        (out, d.take().unwrap())
    }

    #[test]
    fn json_is_one_readable_object_per_row() {
        let (out, back) = round_trip(WireFormat::Json, Some("device"));
        assert_eq!(out.len(), 3);
        assert_eq!(
            String::from_utf8(out[0].payload.clone()).unwrap(),
            r#"{"ts":"2023-11-14T22:13:20.000Z","device":"a","value":1.5}"#
        );
        assert_eq!(out[1].key.as_deref(), Some("b,\"x\"\nz".as_bytes()));
        assert_eq!(back, sample());
    }

    #[test]
    fn csv_quotes_and_round_trips() {
        let (out, back) = round_trip(WireFormat::Csv, None);
        assert_eq!(out.len(), 3);
        assert_eq!(
            String::from_utf8(out[0].payload.clone()).unwrap(),
            "2023-11-14T22:13:20.000Z,a,1.5"
        );
        assert_eq!(back, sample());
    }

    #[test]
    fn arrow_groups_by_key_and_round_trips() {
        let (out, back) = round_trip(WireFormat::Arrow, Some("device"));
        assert_eq!(out.len(), 2, "one message per key");
        assert_eq!(out[0].rows, 2);
        assert_eq!(back.num_rows(), 3);
        let (out, back) = round_trip(WireFormat::Arrow, None);
        assert_eq!(out.len(), 1);
        assert_eq!(back, sample());
    }

    #[test]
    fn bad_payloads_are_reasons_not_panics() {
        let schema = declared_schema(&[("value".into(), ColumnType::Float64)]);
        for format in [WireFormat::Json, WireFormat::Csv, WireFormat::Arrow] {
            let mut d = Decoder::new(
                format,
                schema.clone(),
                &[ColumnType::Float64],
                "ts".into(),
                TimeFormat::Rfc3339,
            );
            for bad in [
                &b""[..],
                b"{",
                b"\xff\xfe",
                b"garbage,1,2,3",
                b"{\"value\":1}",
            ] {
                assert!(d.push(bad).is_err(), "{format:?} accepted {bad:?}");
            }
            assert_eq!(d.rows(), 0);
            assert!(d.take().is_none());
        }
    }

    #[test]
    fn fingerprint_depends_on_names_and_types() {
        let a = sample().schema();
        let b = declared_schema(&[("device".into(), ColumnType::Utf8)]);
        assert_ne!(schema_fingerprint(&a), schema_fingerprint(&b));
        assert_eq!(
            schema_fingerprint(&a),
            schema_fingerprint(&sample().schema())
        );
    }
}
