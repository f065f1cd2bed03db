//! Replay machinery shared by the file sources (`csv`, `jsonl`): column types and buffers,
//! event-time parsing, and [`replay_source`], the timely operator that reads records in
//! batches, sends dead letters aside, paces the replay and holds a capability at the
//! watermark.
//!
//! A file source only has to implement [`RecordReader`] (read the next record, parse it into
//! column buffers, give its raw text for a dead letter); batching, pacing, watermarks,
//! capabilities, dead letters and multi-worker behaviour live here.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, SchemaRef};
use chrono::format::{Item, StrftimeItems};
use isthmus_engine::batch::{Batch, BatchStream, Time, time_array};
use isthmus_engine::component::{BuildContext, Outputs};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{DEAD_LETTER, DeadLetters};
use isthmus_engine::telemetry::ComponentMetrics;
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

/// The default `timestamp_format`: `2024-01-31 12:00:00` (fractional seconds are accepted).
pub const DEFAULT_TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// The default `timestamp_column`.
pub fn default_timestamp_column() -> String {
    "timestamp".to_string()
}

/// The default `timestamp_format`.
pub fn default_timestamp_format() -> String {
    DEFAULT_TIME_FORMAT.to_string()
}

/// The default `batch_rows`.
pub fn default_batch_rows() -> usize {
    1024
}

/// The default `max_out_of_orderness` (none).
pub fn default_out_of_orderness() -> isthmus_engine::units::DurationSpec {
    isthmus_engine::units::DurationSpec::default()
}

/// The type of a column read from a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// 64-bit floating point number.
    Float64,
    /// 64-bit signed integer.
    Int64,
    /// UTF-8 text.
    Utf8,
    /// `true` / `false`.
    Bool,
}

impl ColumnType {
    /// The Arrow type of the column.
    pub fn data_type(&self) -> DataType {
        match self {
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Bool => DataType::Boolean,
        }
    }

    /// The column type of an Arrow type, if it is one a file source produces.
    pub fn of(data_type: &DataType) -> Option<Self> {
        match data_type {
            DataType::Float64 => Some(ColumnType::Float64),
            DataType::Int64 => Some(ColumnType::Int64),
            DataType::Utf8 => Some(ColumnType::Utf8),
            DataType::Boolean => Some(ColumnType::Bool),
            _ => None,
        }
    }
}

/// How event times are written in a file (`timestamp_format`).
#[derive(Debug, Clone)]
pub enum TimeFormat {
    /// Integer milliseconds since the Unix epoch (`unix_ms`).
    UnixMs,
    /// Seconds since the Unix epoch, possibly fractional (`unix_s`).
    UnixS,
    /// RFC 3339, e.g. `2024-01-31T12:00:00Z` or with an offset (`rfc3339`).
    Rfc3339,
    /// A chrono strftime pattern; naive times are UTC.
    Pattern {
        /// The pattern as chrono parses it.
        pattern: String,
        /// Whether the pattern carries a UTC offset (`%z`, `%:z`, `%#z`).
        has_offset: bool,
        /// Whether it is the default pattern (fast path, optional fractional seconds).
        default: bool,
    },
}

impl TimeFormat {
    /// Parses a `timestamp_format` value.
    pub fn new(spec: &str) -> Result<Self, String> {
        match spec {
            "unix_ms" => Ok(TimeFormat::UnixMs),
            "unix_s" => Ok(TimeFormat::UnixS),
            "rfc3339" => Ok(TimeFormat::Rfc3339),
            pattern => {
                if pattern.is_empty() {
                    return Err("the timestamp format is empty".into());
                }
                if StrftimeItems::new(pattern).any(|i| matches!(i, Item::Error)) {
                    return Err(format!("`{pattern}` is not a valid strftime pattern"));
                }
                let default = pattern == DEFAULT_TIME_FORMAT;
                Ok(TimeFormat::Pattern {
                    pattern: if default {
                        "%Y-%m-%d %H:%M:%S%.f".to_string()
                    } else {
                        pattern.to_string()
                    },
                    has_offset: pattern.contains("%z")
                        || pattern.contains("%:z")
                        || pattern.contains("%#z"),
                    default,
                })
            }
        }
    }

    /// Checks a `timestamp_format` config value, as a problem at that key.
    pub fn check(spec: &str) -> Result<Self, Problem> {
        TimeFormat::new(spec).map_err(|e| {
            Problem::at("timestamp_format", e).with_help(
                "use a chrono strftime pattern such as \"%Y-%m-%d %H:%M:%S\", or \"unix_ms\", \"unix_s\" or \"rfc3339\"",
            )
        })
    }

    /// Parses an event time written as text, in milliseconds since the epoch.
    pub fn parse_str(&self, text: &str) -> Result<i64, String> {
        let text = text.trim();
        match self {
            TimeFormat::UnixMs => match text.parse::<i64>() {
                Ok(v) => Ok(v),
                Err(_) => text
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .map(|v| v.round() as i64)
                    .ok_or_else(|| format!("`{text}` is not a number of milliseconds")),
            },
            TimeFormat::UnixS => text
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .map(|v| (v * 1000.0).round() as i64)
                .ok_or_else(|| format!("`{text}` is not a number of seconds")),
            TimeFormat::Rfc3339 => chrono::DateTime::parse_from_rfc3339(text)
                .map(|t| t.timestamp_millis())
                .map_err(|e| format!("`{text}` is not an RFC 3339 time: {e}")),
            TimeFormat::Pattern {
                pattern,
                has_offset,
                default,
            } => {
                if *default && let Some(ms) = parse_default_fast(text.as_bytes()) {
                    return Ok(ms);
                }
                let parsed = if *has_offset {
                    chrono::DateTime::parse_from_str(text, pattern).map(|t| t.timestamp_millis())
                } else {
                    chrono::NaiveDateTime::parse_from_str(text, pattern)
                        .map(|t| t.and_utc().timestamp_millis())
                        .or_else(|e| {
                            chrono::NaiveDate::parse_from_str(text, pattern)
                                .map(|d| {
                                    d.and_time(chrono::NaiveTime::MIN)
                                        .and_utc()
                                        .timestamp_millis()
                                })
                                .map_err(|_| e)
                        })
                };
                let shown = if *default {
                    DEFAULT_TIME_FORMAT
                } else {
                    pattern.as_str()
                };
                parsed.map_err(|e| format!("`{text}` does not match the format `{shown}`: {e}"))
            }
        }
    }

    /// Converts an event time written as a number (JSON): milliseconds for `unix_ms`, seconds
    /// for `unix_s`; other formats expect text.
    pub fn from_number(&self, value: f64) -> Result<i64, String> {
        if !value.is_finite() {
            return Err(format!("`{value}` is not a time"));
        }
        match self {
            TimeFormat::UnixMs => Ok(value.round() as i64),
            TimeFormat::UnixS => Ok((value * 1000.0).round() as i64),
            _ => Err(format!(
                "the time is the number {value}, but timestamp_format expects text (use \"unix_ms\" or \"unix_s\" for numbers)"
            )),
        }
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS` with an optional `.fraction`, as UTC milliseconds.
fn parse_default_fast(b: &[u8]) -> Option<i64> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let mut v = 0i64;
        for &c in &b[range] {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + (c - b'0') as i64;
        }
        Some(v)
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut millis = 0i64;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() == 20 {
            return None;
        }
        let mut scale = 100;
        for &c in &b[20..] {
            if !c.is_ascii_digit() {
                return None;
            }
            millis += (c - b'0') as i64 * scale;
            scale /= 10;
        }
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month) || day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

/// Values of one column of the batch being read, which can be rolled back to a row count
/// (a record that fails half-way leaves nothing behind).
#[derive(Debug)]
pub enum ColumnBuf {
    /// Float64 values.
    Float64(Vec<f64>, Validity),
    /// Int64 values.
    Int64(Vec<i64>, Validity),
    /// Boolean values.
    Bool(Vec<bool>, Validity),
    /// UTF-8 values: offsets and bytes.
    Utf8 {
        /// `len + 1` offsets into `data`.
        offsets: Vec<i32>,
        /// Concatenated UTF-8 bytes.
        data: Vec<u8>,
        /// Which values are present.
        validity: Validity,
    },
}

/// Which values of a column are present (not null).
#[derive(Debug, Default)]
pub struct Validity {
    valid: Vec<bool>,
    nulls: usize,
}

impl Validity {
    fn push(&mut self, valid: bool) {
        self.valid.push(valid);
        self.nulls += usize::from(!valid);
    }

    fn truncate(&mut self, len: usize) {
        if len < self.valid.len() {
            self.nulls -= self.valid[len..].iter().filter(|v| !**v).count();
            self.valid.truncate(len);
        }
    }

    fn take(&mut self) -> Option<NullBuffer> {
        let valid = std::mem::take(&mut self.valid);
        let nulls = std::mem::take(&mut self.nulls);
        (nulls > 0).then(|| NullBuffer::from(valid))
    }
}

impl ColumnBuf {
    /// An empty buffer for a column of `column_type`.
    pub fn new(column_type: ColumnType) -> Self {
        match column_type {
            ColumnType::Float64 => ColumnBuf::Float64(Vec::new(), Validity::default()),
            ColumnType::Int64 => ColumnBuf::Int64(Vec::new(), Validity::default()),
            ColumnType::Bool => ColumnBuf::Bool(Vec::new(), Validity::default()),
            ColumnType::Utf8 => ColumnBuf::Utf8 {
                offsets: vec![0],
                data: Vec::new(),
                validity: Validity::default(),
            },
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            ColumnBuf::Float64(v, _) => v.len(),
            ColumnBuf::Int64(v, _) => v.len(),
            ColumnBuf::Bool(v, _) => v.len(),
            ColumnBuf::Utf8 { offsets, .. } => offsets.len() - 1,
        }
    }

    /// Whether it holds no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops values beyond the first `len`.
    pub fn truncate(&mut self, len: usize) {
        match self {
            ColumnBuf::Float64(v, n) => {
                v.truncate(len);
                n.truncate(len);
            }
            ColumnBuf::Int64(v, n) => {
                v.truncate(len);
                n.truncate(len);
            }
            ColumnBuf::Bool(v, n) => {
                v.truncate(len);
                n.truncate(len);
            }
            ColumnBuf::Utf8 {
                offsets,
                data,
                validity,
            } => {
                if len + 1 < offsets.len() {
                    data.truncate(offsets[len] as usize);
                    offsets.truncate(len + 1);
                    validity.truncate(len);
                }
            }
        }
    }

    /// Appends a null.
    pub fn push_null(&mut self) {
        match self {
            ColumnBuf::Float64(v, n) => {
                v.push(0.0);
                n.push(false);
            }
            ColumnBuf::Int64(v, n) => {
                v.push(0);
                n.push(false);
            }
            ColumnBuf::Bool(v, n) => {
                v.push(false);
                n.push(false);
            }
            ColumnBuf::Utf8 {
                offsets,
                data,
                validity,
            } => {
                offsets.push(data.len() as i32);
                validity.push(false);
            }
        }
    }

    /// Appends a value written as text (a CSV field): numbers and booleans are parsed, an
    /// empty field is a null for them. The error says what is wrong with the text.
    pub fn push_text(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let ColumnBuf::Utf8 {
            offsets,
            data,
            validity,
        } = self
        {
            if std::str::from_utf8(bytes).is_err() {
                return Err("invalid UTF-8".into());
            }
            data.extend_from_slice(bytes);
            offsets.push(data.len() as i32);
            validity.push(true);
            return Ok(());
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| "invalid UTF-8".to_string())?
            .trim();
        if text.is_empty() {
            self.push_null();
            return Ok(());
        }
        match self {
            ColumnBuf::Float64(v, n) => {
                let x = text
                    .parse::<f64>()
                    .map_err(|_| format!("`{text}` is not a number"))?;
                v.push(x);
                n.push(true);
            }
            ColumnBuf::Int64(v, n) => {
                let x = text
                    .parse::<i64>()
                    .map_err(|_| format!("`{text}` is not an integer"))?;
                v.push(x);
                n.push(true);
            }
            ColumnBuf::Bool(v, n) => {
                let x = parse_bool(text)
                    .ok_or_else(|| format!("`{text}` is not a boolean (true/false)"))?;
                v.push(x);
                n.push(true);
            }
            ColumnBuf::Utf8 { .. } => unreachable!("handled above"),
        }
        Ok(())
    }

    /// Appends a number (JSON). Int64 columns accept integral numbers, Utf8 columns take the
    /// number's text.
    pub fn push_f64(&mut self, x: f64) -> Result<(), String> {
        match self {
            ColumnBuf::Float64(v, n) => {
                v.push(x);
                n.push(true);
            }
            ColumnBuf::Int64(v, n) => {
                if x.fract() != 0.0 || !x.is_finite() || x.abs() > 9.2e18 {
                    return Err(format!("{x} is not an integer"));
                }
                v.push(x as i64);
                n.push(true);
            }
            ColumnBuf::Bool(..) => return Err(format!("expected a boolean, found the number {x}")),
            ColumnBuf::Utf8 { .. } => self.push_display(x),
        }
        Ok(())
    }

    /// Appends an integer (JSON).
    pub fn push_i64(&mut self, x: i64) -> Result<(), String> {
        match self {
            ColumnBuf::Int64(v, n) => {
                v.push(x);
                n.push(true);
                Ok(())
            }
            ColumnBuf::Utf8 { .. } => {
                self.push_display(x);
                Ok(())
            }
            _ => self.push_f64(x as f64),
        }
    }

    /// Appends a boolean (JSON).
    pub fn push_bool(&mut self, x: bool) -> Result<(), String> {
        match self {
            ColumnBuf::Bool(v, n) => {
                v.push(x);
                n.push(true);
            }
            ColumnBuf::Utf8 { .. } => self.push_display(x),
            _ => return Err(format!("expected a number, found `{x}`")),
        }
        Ok(())
    }

    /// Appends a string (JSON): only Utf8 columns accept it.
    pub fn push_str(&mut self, s: &str) -> Result<(), String> {
        match self {
            ColumnBuf::Utf8 {
                offsets,
                data,
                validity,
            } => {
                data.extend_from_slice(s.as_bytes());
                offsets.push(data.len() as i32);
                validity.push(true);
                Ok(())
            }
            ColumnBuf::Bool(..) => Err(format!("expected a boolean, found the string {s:?}")),
            _ => Err(format!("expected a number, found the string {s:?}")),
        }
    }

    fn push_display(&mut self, x: impl std::fmt::Display) {
        if let ColumnBuf::Utf8 {
            offsets,
            data,
            validity,
        } = self
        {
            use std::io::Write;
            let _ = write!(data, "{x}");
            offsets.push(data.len() as i32);
            validity.push(true);
        }
    }

    /// Takes the values as an Arrow array, leaving the buffer empty.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuf::Float64(v, n) => Arc::new(Float64Array::new(
                ScalarBuffer::from(std::mem::take(v)),
                n.take(),
            )),
            ColumnBuf::Int64(v, n) => Arc::new(Int64Array::new(
                ScalarBuffer::from(std::mem::take(v)),
                n.take(),
            )),
            ColumnBuf::Bool(v, n) => {
                let values = BooleanBuffer::from(std::mem::take(v));
                Arc::new(BooleanArray::new(values, n.take()))
            }
            ColumnBuf::Utf8 {
                offsets,
                data,
                validity,
            } => {
                let offs =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                let bytes = Buffer::from_vec(std::mem::take(data));
                Arc::new(StringArray::new(offs, bytes, validity.take()))
            }
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    if text.eq_ignore_ascii_case("true") || text == "1" {
        Some(true)
    } else if text.eq_ignore_ascii_case("false") || text == "0" {
        Some(false)
    } else {
        None
    }
}

/// A file format read record by record. The replay operator calls [`next_record`]
/// (RecordReader::next_record) and then [`parse`](RecordReader::parse) on the current record,
/// possibly more than once (a paced replay parses again a record it held back).
pub trait RecordReader: 'static {
    /// Moves to the next record: `Ok(false)` at the end of the input, `Err` when the input
    /// cannot be read any more (the replay then stops).
    fn next_record(&mut self) -> Result<bool, String>;
    /// Appends the current record's values to `columns` (one buffer per output column after
    /// `ts`) and returns its event time in ms. On error the caller rolls the columns back; the
    /// message says what is wrong and where (line, column).
    fn parse(&mut self, columns: &mut [ColumnBuf]) -> Result<i64, String>;
    /// The current record's raw text, for a dead letter.
    fn raw_text(&mut self) -> String;
}

/// How a file is replayed.
#[derive(Debug, Clone, Copy)]
pub struct ReplayOptions {
    /// Rows per batch.
    pub batch_rows: usize,
    /// Replay speed relative to the recorded pace; `None` reads as fast as possible.
    pub speed: Option<f64>,
    /// The watermark trails the largest event time seen by this much (ms).
    pub max_out_of_orderness_ms: u64,
}

/// Checks `batch_rows` and `speed`.
pub fn check_options(batch_rows: usize, speed: Option<f64>) -> Result<(), Problem> {
    if batch_rows == 0 {
        return Err(Problem::at("batch_rows", "batch_rows must be at least 1")
            .with_help("the default is 1024"));
    }
    if let Some(s) = speed
        && !(s.is_finite() && s > 0.0)
    {
        return Err(Problem::at("speed", format!("speed must be a positive number, not {s}"))
            .with_help("1.0 replays at the recorded pace, 10.0 ten times faster; leave it out to read as fast as possible"));
    }
    Ok(())
}

/// A problem for a timestamp column that is not in the file, with a hint.
pub fn missing_timestamp_problem<'a>(
    column: &str,
    available: impl IntoIterator<Item = &'a str> + Clone,
) -> Problem {
    let list: Vec<&str> = available.clone().into_iter().collect();
    let help = match isthmus_engine::spec::suggest(column, available) {
        Some(s) => format!("did you mean `{s}`? (columns: {})", list.join(", ")),
        None => format!("the columns are: {}", list.join(", ")),
    };
    Problem::at(
        "timestamp_column",
        format!("the file has no column `{column}`"),
    )
    .with_help(help)
}

/// At most this many batches are sent per activation before other operators get to run.
const BATCHES_PER_ACTIVATION: usize = 8;

/// Builds the replay operator for a file source: worker 0 opens the input with `open` and
/// replays it; the other workers produce empty streams. Returns the main output (`schema`,
/// whose first column is `ts`) and the `dead_letter` side output.
pub fn replay_source<'s, R, F>(
    cx: &BuildContext<'s>,
    schema: SchemaRef,
    column_types: Vec<ColumnType>,
    options: ReplayOptions,
    open: F,
) -> Result<Outputs<BatchStream<'s>>, EngineError>
where
    R: RecordReader,
    F: FnOnce() -> Result<R, EngineError>,
{
    let reader = if cx.worker_index() == 0 {
        Some(open()?)
    } else {
        None
    };
    let mut builder = OperatorBuilder::new(format!("Replay({})", cx.name), cx.scope);
    let activator = cx.scope.activator_for(builder.operator_info().address);
    let (main_out, main_stream) = builder.new_output::<Vec<Batch>>();
    let (dead_out, dead_stream) = builder.new_output::<Vec<Batch>>();
    let mut main_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(main_out);
    let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(dead_out);
    let name = cx.name.clone();
    let metrics = cx.metrics.clone();
    let shutdown = cx.shutdown.clone();
    builder.build(move |mut caps| {
        let mut state = reader.map(|reader| {
            let dead_cap = caps.pop().expect("dead-letter capability");
            let main_cap = caps.pop().expect("main capability");
            activator.activate();
            Replay::new(
                reader,
                name,
                metrics,
                schema,
                &column_types,
                options,
                main_cap,
                dead_cap,
            )
        });
        drop(caps);
        move |_frontiers| {
            let Some(replay) = state.as_mut() else { return };
            if shutdown.load(Ordering::Relaxed) {
                state = None;
                return;
            }
            let mut main = main_out.activate();
            let mut dead = dead_out.activate();
            match replay.step(&mut main, &mut dead) {
                Next::Now => activator.activate(),
                Next::After(delay) => activator.activate_after(delay),
                Next::Done => state = None,
            }
        }
    });
    Ok(Outputs::main(main_stream).with_side(DEAD_LETTER, dead_stream))
}

enum Next {
    Now,
    After(Duration),
    Done,
}

struct Pace {
    speed: f64,
    /// Wall-clock instant and event time of the first row.
    origin: Option<(Instant, i64)>,
}

struct Replay<R> {
    reader: R,
    name: String,
    metrics: Arc<ComponentMetrics>,
    schema: SchemaRef,
    options: ReplayOptions,
    main_cap: Capability<Time>,
    dead_cap: Capability<Time>,
    columns: Vec<ColumnBuf>,
    times: Vec<i64>,
    dead: DeadLetters,
    /// A record was read but held back (paced replay): parse it again next time.
    pending: bool,
    max_seen: Option<i64>,
    pace: Option<Pace>,
}

type Session<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Time,
    CapacityContainerBuilder<Vec<Batch>>,
>;

impl<R: RecordReader> Replay<R> {
    #[allow(clippy::too_many_arguments)]
    fn new(
        reader: R,
        name: String,
        metrics: Arc<ComponentMetrics>,
        schema: SchemaRef,
        column_types: &[ColumnType],
        options: ReplayOptions,
        main_cap: Capability<Time>,
        dead_cap: Capability<Time>,
    ) -> Self {
        Replay {
            reader,
            name,
            metrics,
            schema,
            options,
            main_cap,
            dead_cap,
            columns: column_types.iter().map(|t| ColumnBuf::new(*t)).collect(),
            times: Vec::with_capacity(options.batch_rows),
            dead: DeadLetters::default(),
            pending: false,
            max_seen: None,
            pace: options.speed.map(|speed| Pace {
                speed,
                origin: None,
            }),
        }
    }

    /// The largest event time due now (paced replay), if any limit applies.
    fn due_limit(&self) -> Option<i64> {
        let pace = self.pace.as_ref()?;
        let (wall, event) = pace.origin?;
        Some(event.saturating_add((wall.elapsed().as_secs_f64() * 1000.0 * pace.speed) as i64))
    }

    /// How long until a row with event time `ts` is due.
    fn wait_for(&self, ts: i64) -> Duration {
        let Some(Pace {
            speed,
            origin: Some((wall, event)),
        }) = self.pace.as_ref()
        else {
            return Duration::ZERO;
        };
        let due = *wall + Duration::from_secs_f64((ts - event).max(0) as f64 / 1000.0 / speed);
        due.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    fn dead_letter(&mut self, reason: &str) {
        let raw = self.reader.raw_text();
        let t = *self.dead_cap.time();
        self.dead.push(t, &self.name, reason, &raw);
    }

    fn step(&mut self, main: &mut Session<'_>, dead: &mut Session<'_>) -> Next {
        let started = Instant::now();
        for _ in 0..BATCHES_PER_ACTIVATION {
            let mut limit = self.due_limit();
            let mut ended = false;
            let mut wait = None;
            let mut min_ts = i64::MAX;
            while self.times.len() < self.options.batch_rows {
                if !self.pending {
                    match self.reader.next_record() {
                        Ok(true) => {}
                        Ok(false) => {
                            ended = true;
                            break;
                        }
                        Err(e) => {
                            tracing::error!(component = %self.name, "cannot read on: {e}");
                            let t = *self.dead_cap.time();
                            self.dead.push(
                                t,
                                &self.name,
                                &format!("read error, the rest of the input is skipped: {e}"),
                                "",
                            );
                            ended = true;
                            break;
                        }
                    }
                }
                self.pending = false;
                let n = self.times.len();
                match self.reader.parse(&mut self.columns) {
                    Ok(ts) if ts < 0 => {
                        self.rollback(n);
                        self.dead_letter(&format!("event time {ts} ms is before 1970-01-01"));
                    }
                    Ok(ts) => {
                        if let Some(limit) = limit
                            && ts > limit
                        {
                            self.rollback(n);
                            self.pending = true;
                            wait = Some(self.wait_for(ts));
                            break;
                        }
                        if let Some(pace) = self.pace.as_mut()
                            && pace.origin.is_none()
                        {
                            pace.origin = Some((Instant::now(), ts));
                            limit = Some(ts);
                        }
                        self.times.push(ts);
                        min_ts = min_ts.min(ts);
                        self.max_seen = Some(self.max_seen.map_or(ts, |m| m.max(ts)));
                    }
                    Err(reason) => {
                        self.rollback(n);
                        self.dead_letter(&reason);
                    }
                }
            }
            self.emit(main, dead, min_ts);
            if ended {
                return Next::Done;
            }
            if let Some(wait) = wait {
                // Wake up at least every 100 ms so a shutdown is noticed during long gaps.
                return Next::After(wait.min(Duration::from_millis(100)));
            }
            if started.elapsed() > Duration::from_millis(10) {
                break;
            }
        }
        Next::Now
    }

    fn rollback(&mut self, rows: usize) {
        for c in &mut self.columns {
            c.truncate(rows);
        }
    }

    /// Sends the rows read and the dead letters, then moves the capabilities to the watermark.
    fn emit(&mut self, main: &mut Session<'_>, dead: &mut Session<'_>, min_ts: i64) {
        if !self.times.is_empty() {
            let mut arrays = Vec::with_capacity(self.columns.len() + 1);
            let times =
                std::mem::replace(&mut self.times, Vec::with_capacity(self.options.batch_rows));
            arrays.push(time_array(times));
            arrays.extend(self.columns.iter_mut().map(ColumnBuf::finish));
            match RecordBatch::try_new(self.schema.clone(), arrays) {
                Ok(batch) => {
                    let at = (min_ts.max(0) as Time).max(*self.main_cap.time());
                    main.session(&self.main_cap.delayed(&at))
                        .give(Batch::new(batch));
                }
                Err(e) => {
                    // Cannot happen: the buffers follow the schema.
                    tracing::error!(component = %self.name, "cannot build a batch: {e}");
                }
            }
        }
        if let Some(letters) = self.dead.take() {
            ComponentMetrics::add(&self.metrics.dead_letters, letters.num_rows() as u64);
            dead.session(&self.dead_cap).give(letters);
        }
        if let Some(max) = self.max_seen {
            let watermark =
                (max.saturating_sub(self.options.max_out_of_orderness_ms as i64)).max(0) as Time;
            if watermark > *self.main_cap.time() {
                self.main_cap.downgrade(&watermark);
                self.dead_cap.downgrade(&watermark);
            }
        }
    }
}

/// Helpers for the tests of the file connectors.
#[cfg(test)]
pub(crate) mod test_util {
    use std::collections::BTreeMap;
    use std::path::Path;

    use arrow::array::{Array, RecordBatch, TimestampMillisecondArray};
    use arrow::datatypes::SchemaRef;
    use isthmus_engine::component::{CheckContext, Outputs, Source};
    use isthmus_engine::error::Problem;
    use isthmus_engine::policy::PolicySnapshot;
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;

    /// Runs `schemas()` with `dir` as the pipeline directory.
    pub fn schemas(source: &dyn Source, dir: &Path) -> Result<Outputs<SchemaRef>, Problem> {
        let node = NodeSpec {
            id: "test".into(),
            role: Role::Standalone,
        };
        let policy = PolicySnapshot::default();
        let channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &policy,
            base_dir: dir,
            channels: &channels,
        };
        source.schemas(&cx)
    }

    /// A harness whose relative paths resolve in `dir`.
    pub fn harness(dir: &Path) -> Harness {
        Harness {
            base_dir: dir.to_path_buf(),
            ..Default::default()
        }
    }

    /// The `ts` column of a batch as milliseconds.
    pub fn times(batch: &RecordBatch) -> Vec<i64> {
        let ts = batch
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .expect("ts column");
        (0..ts.len()).map(|i| ts.value(i)).collect()
    }

    /// Milliseconds of a UTC date and time.
    pub fn ms(text: &str) -> i64 {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .expect("test time")
            .and_utc()
            .timestamp_millis()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Array;

    #[test]
    fn default_format_fast_path_matches_chrono() {
        let f = TimeFormat::new(DEFAULT_TIME_FORMAT).unwrap();
        for text in [
            "2014-02-28 23:59:59",
            "2000-02-29 00:00:00",
            "1970-01-01 00:00:00",
            "2031-12-31 12:30:05",
        ] {
            let chrono = chrono::NaiveDateTime::parse_from_str(text, DEFAULT_TIME_FORMAT)
                .unwrap()
                .and_utc()
                .timestamp_millis();
            assert_eq!(f.parse_str(text).unwrap(), chrono, "{text}");
        }
        assert_eq!(f.parse_str("1970-01-01 00:00:01.250").unwrap(), 1250);
        assert!(f.parse_str("2014-02-30 00:00:00").is_err());
        assert!(f.parse_str("2014-02-03").is_err());
        assert!(TimeFormat::new("%Q").is_err());
    }

    #[test]
    fn column_buffers_roll_back() {
        let mut c = ColumnBuf::new(ColumnType::Utf8);
        c.push_text(b"ab").unwrap();
        c.push_null();
        c.push_text(b"cd").unwrap();
        c.truncate(2);
        c.push_text(b"e").unwrap();
        let a = c.finish();
        let a = a.as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a.value(0), "ab");
        assert!(a.is_null(1));
        assert_eq!(a.value(2), "e");
        let mut f = ColumnBuf::new(ColumnType::Float64);
        f.push_text(b" 1.5 ").unwrap();
        assert!(f.push_text(b"x").is_err());
        f.push_text(b"").unwrap();
        let a = f.finish();
        assert_eq!(a.null_count(), 1);
        assert!(f.is_empty());
    }
}
