//! `jsonl` source: replays a JSON-lines file (one JSON object per line) as a stream, with the
//! event time taken from one key. The schema is given (`columns`) or inferred from the first
//! lines.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use arrow::datatypes::{Field, SchemaRef};
use isthmus_engine::batch::{BatchStream, TIME_COLUMN, schema_with_time};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Source};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{DEAD_LETTER, dead_letter_schema};
use isthmus_engine::units::DurationSpec;
use schemars::JsonSchema;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::replay::{
    ColumnBuf, ColumnType, RecordReader, ReplayOptions, TimeFormat, check_options,
    default_batch_rows, default_out_of_orderness, default_timestamp_column,
    default_timestamp_format, missing_timestamp_problem, replay_source,
};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sources.events]
type = "jsonl"
path = "pipelines/examples/data/events.jsonl"
timestamp_column = "time"
timestamp_format = "unix_ms"
columns = { device = "utf8", temperature = "float64", ok = "bool" }
max_out_of_orderness = "5s"
"#;

/// Lines read to infer column types when `columns` is not given.
const INFER_LINES: usize = 1000;

/// Replays a JSON-lines file (one JSON object per line) as a stream, with the event time taken from one key.
///
/// The output has `ts` first, then the columns. Missing keys are nulls. A line that is not a
/// JSON object, holds a value of the wrong type or a bad timestamp goes to the `dead_letter`
/// side output with the reason and the line.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlSource {
    /// Path of the JSON-lines file, relative to the pipeline file.
    pub path: String,
    /// The key holding each row's event time; it becomes `ts`. Default `"timestamp"`.
    #[serde(default = "default_timestamp_column")]
    pub timestamp_column: String,
    /// How the event time is written: a chrono strftime pattern (naive times are UTC), or
    /// `"unix_ms"` (milliseconds, as a number or text), `"unix_s"` (seconds) or `"rfc3339"`.
    /// Default `"%Y-%m-%d %H:%M:%S"` (fractional seconds accepted).
    #[serde(default = "default_timestamp_format")]
    pub timestamp_format: String,
    /// The keys to read and their types (`"float64"`, `"int64"`, `"utf8"` or `"bool"`); other
    /// keys are ignored. Default: every scalar key of the first 1000 lines, in order of first
    /// appearance (numbers: float64, booleans: bool, strings or mixed: utf8; nested objects
    /// and arrays are not read).
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

#[derive(Debug, Clone)]
struct JsonlPlan {
    schema: SchemaRef,
    names: Vec<String>,
    types: Vec<ColumnType>,
    time_format: TimeFormat,
}

const NUMBER: u8 = 1;
const BOOL: u8 = 2;
const STRING: u8 = 4;
const NESTED: u8 = 8;

impl JsonlSource {
    fn plan(&self, path: &Path) -> Result<JsonlPlan, Problem> {
        let time_format = TimeFormat::check(&self.timestamp_format)?;
        check_options(self.batch_rows, self.speed)?;
        let file = File::open(path).map_err(|e| {
            Problem::at("path", format!("cannot read `{}`: {e}", path.display()))
                .with_help("paths are relative to the pipeline file")
        })?;
        // Keys of the first lines, in order of appearance, with the kinds of values seen.
        let mut keys: Vec<(String, u8)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut objects = 0;
        let mut lines = BufReader::new(file);
        let mut buf = Vec::new();
        let mut read = 0;
        while read < INFER_LINES {
            buf.clear();
            match lines.read_until(b'\n', &mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(Problem::at(
                        "path",
                        format!("cannot read `{}`: {e}", path.display()),
                    ));
                }
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            read += 1;
            let mut seen: Vec<(String, u8)> = Vec::new();
            let mut de = serde_json::Deserializer::from_slice(&buf);
            if InferSeed(&mut seen).deserialize(&mut de).is_ok() && de.end().is_ok() {
                objects += 1;
                for (k, kind) in seen {
                    match index.get(&k) {
                        Some(&i) => keys[i].1 |= kind,
                        None => {
                            index.insert(k.clone(), keys.len());
                            keys.push((k, kind));
                        }
                    }
                }
            }
        }
        if objects > 0 && !index.contains_key(&self.timestamp_column) {
            return Err(missing_timestamp_problem(
                &self.timestamp_column,
                keys.iter().map(|(k, _)| k.as_str()),
            ));
        }
        let columns: Vec<(String, ColumnType)> = match &self.columns {
            Some(given) => {
                if given.contains_key(&self.timestamp_column) {
                    return Err(Problem::at(
                        "columns",
                        format!("`{}` is the timestamp column", self.timestamp_column),
                    )
                    .with_help(
                        "the timestamp column always becomes `ts`; leave it out of `columns`",
                    ));
                }
                given.iter().map(|(k, t)| (k.clone(), *t)).collect()
            }
            None => {
                if objects == 0 {
                    return Err(Problem::at(
                        "path",
                        format!("`{}` has no JSON object in its first lines", path.display()),
                    )
                    .with_help("give `columns` to read a file that is still empty"));
                }
                keys.iter()
                    .filter(|(k, kind)| *k != self.timestamp_column && kind & NESTED == 0)
                    .map(|(k, kind)| {
                        let t = match *kind {
                            NUMBER => ColumnType::Float64,
                            BOOL => ColumnType::Bool,
                            _ => ColumnType::Utf8,
                        };
                        (k.clone(), t)
                    })
                    .collect()
            }
        };
        if columns.iter().any(|(k, _)| k == TIME_COLUMN) {
            return Err(Problem::at(
                if self.columns.is_some() { "columns" } else { "timestamp_column" },
                format!("the key `{TIME_COLUMN}` clashes with the event-time column `{TIME_COLUMN}`"),
            )
            .with_help(format!("use `{TIME_COLUMN}` as timestamp_column, or list the keys to read in `columns` without it")));
        }
        let schema = schema_with_time(
            columns
                .iter()
                .map(|(k, t)| Field::new(k.clone(), t.data_type(), true)),
        );
        Ok(JsonlPlan {
            schema,
            names: columns.iter().map(|(k, _)| k.clone()).collect(),
            types: columns.iter().map(|(_, t)| *t).collect(),
            time_format,
        })
    }
}

impl Source for JsonlSource {
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
        let ts_key = self.timestamp_column.clone();
        replay_source(
            cx,
            plan.schema.clone(),
            plan.types.clone(),
            options,
            move || JsonlRecords::open(path, plan, ts_key),
        )
    }
}

/// Parses one JSON object per record into column buffers: the columns named in `names`
/// (other keys are ignored, missing ones are null) and the event time under `ts_key`.
/// Shared by the JSON-lines file source and the Kafka and MQTT sources.
pub struct JsonRowParser {
    keys: HashMap<String, usize>,
    names: Vec<String>,
    ts_key: String,
    time_format: TimeFormat,
    seen: Vec<bool>,
}

impl JsonRowParser {
    /// A parser for objects with the keys `names` (in column order) and the time `ts_key`.
    pub fn new(names: Vec<String>, ts_key: String, time_format: TimeFormat) -> Self {
        let keys = names
            .iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect();
        JsonRowParser {
            keys,
            seen: vec![false; names.len()],
            names,
            ts_key,
            time_format,
        }
    }

    /// Appends one object's values to `columns` and returns its event time (ms). On error
    /// the columns may hold a partial row: the caller truncates them back.
    pub fn parse(&mut self, bytes: &[u8], columns: &mut [ColumnBuf]) -> Result<i64, String> {
        self.seen.fill(false);
        let mut ts: Option<i64> = None;
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let seed = RowSeed {
            keys: &self.keys,
            names: &self.names,
            ts_key: &self.ts_key,
            time_format: &self.time_format,
            columns,
            seen: &mut self.seen,
            ts: &mut ts,
        };
        seed.deserialize(&mut de)
            .and_then(|_| de.end())
            .map_err(|e| json_reason(&e))?;
        for (col, seen) in columns.iter_mut().zip(&self.seen) {
            if !seen {
                col.push_null();
            }
        }
        ts.ok_or_else(|| format!("no timestamp `{}`", self.ts_key))
    }
}

/// Reads JSON lines one by one for the replay operator.
struct JsonlRecords {
    reader: BufReader<File>,
    path: PathBuf,
    line: Vec<u8>,
    line_no: u64,
    parser: JsonRowParser,
}

impl JsonlRecords {
    fn open(path: PathBuf, plan: JsonlPlan, ts_key: String) -> Result<Self, EngineError> {
        let file = File::open(&path)
            .map_err(|e| EngineError::io(format!("cannot open `{}`", path.display()), e))?;
        Ok(JsonlRecords {
            reader: BufReader::with_capacity(1 << 16, file),
            path,
            line: Vec::new(),
            line_no: 0,
            parser: JsonRowParser::new(plan.names, ts_key, plan.time_format),
        })
    }
}

/// A serde_json error without its " at line 1 column N" suffix (each line is parsed alone).
fn json_reason(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => format!("{} (at character {})", &text[..i], e.column()),
        None => text,
    }
}

impl RecordReader for JsonlRecords {
    fn next_record(&mut self) -> Result<bool, String> {
        loop {
            self.line.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.line)
                .map_err(|e| format!("`{}`: {e}", self.path.display()))?;
            if n == 0 {
                return Ok(false);
            }
            self.line_no += 1;
            while self.line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                self.line.pop();
            }
            if !self.line.iter().all(u8::is_ascii_whitespace) {
                return Ok(true);
            }
        }
    }

    fn parse(&mut self, columns: &mut [ColumnBuf]) -> Result<i64, String> {
        let line_no = self.line_no;
        self.parser
            .parse(&self.line, columns)
            .map_err(|e| format!("line {line_no}: {e}"))
    }

    fn raw_text(&mut self) -> String {
        String::from_utf8_lossy(&self.line).into_owned()
    }
}

/// Parses one line into the column buffers.
struct RowSeed<'a> {
    keys: &'a HashMap<String, usize>,
    names: &'a [String],
    ts_key: &'a str,
    time_format: &'a TimeFormat,
    columns: &'a mut [ColumnBuf],
    seen: &'a mut [bool],
    ts: &'a mut Option<i64>,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeySeed {
            keys: self.keys,
            ts_key: self.ts_key,
        })? {
            match key {
                Key::Time => {
                    let t = map.next_value_seed(TimeSeed {
                        format: self.time_format,
                        key: self.ts_key,
                    })?;
                    *self.ts = Some(t);
                }
                Key::Column(i) => {
                    let name = &self.names[i];
                    if self.seen[i] {
                        return Err(de::Error::custom(format_args!(
                            "key `{name}` appears twice"
                        )));
                    }
                    self.seen[i] = true;
                    map.next_value_seed(ValueSeed {
                        column: &mut self.columns[i],
                        name,
                    })?;
                }
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

enum Key {
    Time,
    Column(usize),
    Other,
}

struct KeySeed<'a> {
    keys: &'a HashMap<String, usize>,
    ts_key: &'a str,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Key, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Key;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(if v == self.ts_key {
            Key::Time
        } else {
            self.keys.get(v).map_or(Key::Other, |i| Key::Column(*i))
        })
    }
}

/// Parses the event time.
struct TimeSeed<'a> {
    format: &'a TimeFormat,
    key: &'a str,
}

impl<'de> DeserializeSeed<'de> for TimeSeed<'_> {
    type Value = i64;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<i64, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl TimeSeed<'_> {
    fn err<E: de::Error>(&self, e: String) -> E {
        E::custom(format_args!("column `{}`: bad timestamp: {e}", self.key))
    }
}

impl<'de> Visitor<'de> for TimeSeed<'_> {
    type Value = i64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a timestamp in `{}`", self.key)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<i64, E> {
        self.format.parse_str(v).map_err(|e| self.err(e))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<i64, E> {
        match self.format {
            TimeFormat::UnixMs => Ok(v),
            TimeFormat::UnixS => Ok(v.saturating_mul(1000)),
            _ => self.format.from_number(v as f64).map_err(|e| self.err(e)),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<i64, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<i64, E> {
        self.format.from_number(v).map_err(|e| self.err(e))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<i64, E> {
        Err(self.err(format!("expected a time, found `{v}`")))
    }

    fn visit_unit<E: de::Error>(self) -> Result<i64, E> {
        Err(self.err("the time is null".into()))
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<i64, A::Error> {
        Err(self.err("expected a time, found an object".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<i64, A::Error> {
        Err(self.err("expected a time, found an array".into()))
    }
}

/// Appends one value to a column buffer.
struct ValueSeed<'a> {
    column: &'a mut ColumnBuf,
    name: &'a str,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl ValueSeed<'_> {
    fn err<E: de::Error>(&self, e: String) -> E {
        E::custom(format_args!("column `{}`: {e}", self.name))
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a value for `{}`", self.name)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.column.push_bool(v).map_err(|e| self.err(e))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.column.push_i64(v).map_err(|e| self.err(e))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => self.visit_f64(v as f64),
        }
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.column.push_f64(v).map_err(|e| self.err(e))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.column.push_str(v).map_err(|e| self.err(e))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.column.push_null();
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.err("expected a scalar value, found an object".into()))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(self.err("expected a scalar value, found an array".into()))
    }
}

/// Collects the keys of one object with the kind of their values (schema inference).
struct InferSeed<'a>(&'a mut Vec<(String, u8)>);

impl<'de> DeserializeSeed<'de> for InferSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for InferSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let kind = map.next_value::<KindOf>()?.0;
            self.0.push((key, kind));
        }
        Ok(())
    }
}

/// The kind of a JSON value (0 for null).
struct KindOf(u8);

impl<'de> Deserialize<'de> for KindOf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KindOf;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<KindOf, E> {
                Ok(KindOf(BOOL))
            }
            fn visit_i64<E>(self, _: i64) -> Result<KindOf, E> {
                Ok(KindOf(NUMBER))
            }
            fn visit_u64<E>(self, _: u64) -> Result<KindOf, E> {
                Ok(KindOf(NUMBER))
            }
            fn visit_f64<E>(self, _: f64) -> Result<KindOf, E> {
                Ok(KindOf(NUMBER))
            }
            fn visit_str<E>(self, _: &str) -> Result<KindOf, E> {
                Ok(KindOf(STRING))
            }
            fn visit_unit<E>(self) -> Result<KindOf, E> {
                Ok(KindOf(0))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KindOf, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(KindOf(NESTED))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KindOf, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(KindOf(NESTED))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Array, AsArray, RecordBatch};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};
    use isthmus_engine::telemetry::ComponentMetrics;

    use super::*;
    use crate::replay::test_util::{harness, schemas, times};

    fn source(toml_text: &str) -> JsonlSource {
        toml::from_str(toml_text).expect("config parses")
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut cfg = table["sources"]["events"].as_table().unwrap().clone();
        cfg.remove("type");
        let _: JsonlSource = cfg.try_into().unwrap();
    }

    #[test]
    fn infers_the_schema_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("e.jsonl"),
            "{\"time\": 1000, \"temp\": 20.5, \"ok\": true, \"dev\": \"a\", \"tags\": [1]}\n\n\
{\"time\": 2000, \"temp\": 21, \"dev\": \"b\", \"extra\": null}\n\
{\"dev\": \"c\", \"time\": 3000, \"temp\": null, \"ok\": false}\n",
        )
        .unwrap();
        let s = source(
            "path = \"e.jsonl\"\ntimestamp_column = \"time\"\ntimestamp_format = \"unix_ms\"",
        );
        let out = schemas(&s, dir.path()).unwrap();
        let names: Vec<_> = out
            .main
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect();
        assert_eq!(
            names[1..],
            [
                ("temp", DataType::Float64),
                ("ok", DataType::Boolean),
                ("dev", DataType::Utf8),
                ("extra", DataType::Utf8)
            ]
        );
        let got = harness(dir.path()).run_source(&s);
        let b = got.main_batch().unwrap();
        assert_eq!(got.side_rows("dead_letter"), 0);
        assert_eq!(times(&b), vec![1000, 2000, 3000]);
        let temp = b.column(1).as_primitive::<Float64Type>();
        assert_eq!(
            (temp.value(0), temp.value(1), temp.is_null(2)),
            (20.5, 21.0, true)
        );
        assert_eq!(
            b.column(2).as_boolean().iter().collect::<Vec<_>>(),
            vec![Some(true), None, Some(false)]
        );
        assert_eq!(b.column(3).as_string::<i32>().value(2), "c");
    }

    #[test]
    fn given_columns_and_text_times() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("e.jsonl"),
            "{\"timestamp\": \"2024-01-01 00:00:01\", \"n\": 5, \"s\": \"x\"}\n{\"timestamp\": \"2024-01-01 00:00:02\", \"n\": -7}\n",
        )
        .unwrap();
        let s = source(
            "path = \"e.jsonl\"\ncolumns = { n = \"int64\", s = \"utf8\", missing = \"float64\" }",
        );
        let b = harness(dir.path()).run_source(&s).main_batch().unwrap();
        assert_eq!(
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            vec!["ts", "missing", "n", "s"]
        );
        assert_eq!(times(&b), vec![1_704_067_201_000, 1_704_067_202_000]);
        assert_eq!(
            b.column(2).as_primitive::<Int64Type>().values().to_vec(),
            vec![5, -7]
        );
        assert_eq!(b.column(1).null_count(), 2);
        assert!(b.column(3).is_null(1));
    }

    #[test]
    fn rfc3339_and_unix_seconds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("r.jsonl"),
            "{\"t\": \"2023-11-14T22:13:20.5Z\", \"v\": 1}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("s.jsonl"),
            "{\"t\": 1700000000.5, \"v\": 1}\n{\"t\": \"1700000001\", \"v\": 2}\n",
        )
        .unwrap();
        let r =
            source("path = \"r.jsonl\"\ntimestamp_column = \"t\"\ntimestamp_format = \"rfc3339\"");
        assert_eq!(
            times(&harness(dir.path()).run_source(&r).main_batch().unwrap()),
            vec![1_700_000_000_500]
        );
        let s =
            source("path = \"s.jsonl\"\ntimestamp_column = \"t\"\ntimestamp_format = \"unix_s\"");
        assert_eq!(
            times(&harness(dir.path()).run_source(&s).main_batch().unwrap()),
            vec![1_700_000_000_500, 1_700_000_001_000]
        );
    }

    #[test]
    fn malformed_lines_become_dead_letters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.jsonl"),
            "{\"t\": 1000, \"v\": 1.0}\n\
not json\n\
[1, 2]\n\
{\"t\": 2000, \"v\": \"high\"}\n\
{\"t\": \"yesterday\", \"v\": 2.0}\n\
{\"v\": 3.0}\n\
{\"t\": 3000, \"v\": 4.0} trailing\n\
{\"t\": 4000, \"v\": 5.0}\n",
        )
        .unwrap();
        let s = source(
            "path = \"bad.jsonl\"\ntimestamp_column = \"t\"\ntimestamp_format = \"unix_ms\"\ncolumns = { v = \"float64\" }",
        );
        let h = harness(dir.path());
        let got = h.run_source(&s);
        assert_eq!(got.main_rows(), 2);
        assert_eq!(got.side_rows("dead_letter"), 6);
        assert_eq!(ComponentMetrics::get(&h.metrics.dead_letters), 6);
        assert_eq!(got.main_rows() + got.side_rows("dead_letter"), 8);
        let dead: Vec<RecordBatch> = got.side["dead_letter"]
            .iter()
            .map(|(_, b)| b.clone())
            .collect();
        let dead = arrow::compute::concat_batches(&dead[0].schema(), &dead).unwrap();
        let reasons: Vec<&str> = dead
            .column_by_name("reason")
            .unwrap()
            .as_string::<i32>()
            .iter()
            .map(Option::unwrap)
            .collect();
        let records = dead.column_by_name("record").unwrap().as_string::<i32>();
        assert!(reasons[0].starts_with("line 2: "), "{}", reasons[0]);
        assert_eq!(records.value(0), "not json");
        assert!(
            reasons[1].contains("expected a JSON object"),
            "{}",
            reasons[1]
        );
        assert!(
            reasons[2].contains("line 4: column `v`: expected a number"),
            "{}",
            reasons[2]
        );
        assert!(
            reasons[3].contains("line 5: column `t`: bad timestamp"),
            "{}",
            reasons[3]
        );
        assert!(
            reasons[4].contains("line 6: no timestamp `t`"),
            "{}",
            reasons[4]
        );
        assert!(reasons[5].starts_with("line 7: trailing"), "{}", reasons[5]);
        assert_eq!(records.value(5), "{\"t\": 3000, \"v\": 4.0} trailing");
        let b = got.main_batch().unwrap();
        assert_eq!(
            b.column(1).as_primitive::<Float64Type>().values().to_vec(),
            vec![1.0, 5.0]
        );
    }

    #[test]
    fn check_time_problems() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("e.jsonl"), "{\"Time\": 1, \"v\": 1}\n").unwrap();
        std::fs::write(dir.path().join("empty.jsonl"), "").unwrap();
        let problem = |t: &str| schemas(&source(t), dir.path()).err().unwrap();
        assert_eq!(
            problem("path = \"nope.jsonl\"").key.as_deref(),
            Some("path")
        );
        let p = problem("path = \"e.jsonl\"\ntimestamp_column = \"time\"");
        assert_eq!(p.key.as_deref(), Some("timestamp_column"));
        assert!(p.help.unwrap().contains("`Time`"));
        assert_eq!(
            problem("path = \"empty.jsonl\"").key.as_deref(),
            Some("path")
        );
        // With the columns given, an empty file is fine.
        let s = source("path = \"empty.jsonl\"\ncolumns = { v = \"float64\" }");
        assert!(schemas(&s, dir.path()).is_ok());
        assert_eq!(harness(dir.path()).run_source(&s).main_rows(), 0);
    }
}
