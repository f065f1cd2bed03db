//! The unit of data that flows through a pipeline: an Arrow [`RecordBatch`] plus the
//! wall-clock instant its oldest row entered the engine (for end-to-end latency).
//!
//! Timely timestamps are **event time** in milliseconds since the Unix epoch ([`Time`]).
//! Every stream carries its event time in a column named [`TIME_COLUMN`] of Arrow type
//! `Timestamp(Millisecond, None)`. A batch is sent at a timely time that is at most the
//! event time of its rows, except for rows that arrive behind the watermark (late rows).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Event time: milliseconds since the Unix epoch. A stream's timely frontier is its watermark.
pub type Time = u64;

/// The name of the event-time column every stream carries.
pub const TIME_COLUMN: &str = "ts";

/// A timely scope whose timestamps are event times.
pub type Scope<'s> = timely::dataflow::Scope<'s, Time>;

/// A timely stream of batches.
pub type BatchStream<'s> = timely::dataflow::Stream<'s, Time, Vec<Batch>>;

/// The Arrow type of the event-time column.
pub fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, None)
}

/// The Arrow field of the event-time column.
pub fn time_field() -> Field {
    Field::new(TIME_COLUMN, time_type(), false)
}

/// A batch of rows in flight, with the wall-clock time (ns since the epoch) at which its
/// oldest row was read by a source.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The rows.
    pub data: RecordBatch,
    /// Wall-clock nanoseconds since the Unix epoch when the oldest row entered the engine.
    pub created_ns: u64,
}

impl Batch {
    /// Wraps rows that enter the engine now.
    pub fn new(data: RecordBatch) -> Self {
        Batch {
            data,
            created_ns: now_ns(),
        }
    }

    /// Wraps derived rows, keeping the entry time of the rows they came from.
    pub fn derived(data: RecordBatch, created_ns: u64) -> Self {
        Batch { data, created_ns }
    }

    /// Number of rows.
    pub fn num_rows(&self) -> usize {
        self.data.num_rows()
    }

    /// Bytes of Arrow buffers the rows occupy (the uncompressed columnar size).
    pub fn byte_size(&self) -> usize {
        batch_bytes(&self.data)
    }

    /// The event-time column, if the batch has one of the right type.
    pub fn times(&self) -> Option<&TimestampMillisecondArray> {
        self.data
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
    }
}

/// Bytes of Arrow buffers that the rows of `batch` occupy (slices count only their part).
pub fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum()
}

/// Wall-clock nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> Time {
    now_ns() / 1_000_000
}

/// Builds a schema that starts with the event-time column followed by `fields`.
pub fn schema_with_time(fields: impl IntoIterator<Item = Field>) -> SchemaRef {
    let mut all = vec![time_field()];
    all.extend(fields);
    Arc::new(Schema::new(all))
}

/// Builds an event-time column from millisecond values.
pub fn time_array(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(values))
}

#[derive(Serialize, Deserialize)]
struct WireBatch {
    created_ns: u64,
    ipc: Vec<u8>,
}

impl Serialize for Batch {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ipc = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut ipc, &self.data.schema())
                .map_err(serde::ser::Error::custom)?;
            writer
                .write(&self.data)
                .map_err(serde::ser::Error::custom)?;
            writer.finish().map_err(serde::ser::Error::custom)?;
        }
        WireBatch {
            created_ns: self.created_ns,
            ipc,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = WireBatch::deserialize(deserializer)?;
        let mut reader = StreamReader::try_new(std::io::Cursor::new(wire.ipc), None)
            .map_err(serde::de::Error::custom)?;
        let data = reader
            .next()
            .ok_or_else(|| serde::de::Error::custom("empty Arrow IPC stream"))?
            .map_err(serde::de::Error::custom)?;
        Ok(Batch {
            data,
            created_ns: wire.created_ns,
        })
    }
}
