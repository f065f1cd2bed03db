//! Building blocks for component authors: per-batch operators with a dead-letter output,
//! exchange of rows by key across workers, and dead-letter batches.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::row::{RowConverter, SortField};
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;

use crate::batch::{Batch, BatchStream, Time, schema_with_time, time_array};

/// Side output name for records that could not be processed.
pub const DEAD_LETTER: &str = "dead_letter";
/// Side output name for rows behind the watermark by more than the allowed lateness.
pub const LATE: &str = "late";

/// The schema of every dead-letter output: when, who, why, and the record itself.
pub fn dead_letter_schema() -> SchemaRef {
    schema_with_time([
        Field::new("component", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("record", DataType::Utf8, false),
    ])
}

/// Collects dead letters and turns them into a batch.
#[derive(Default)]
pub struct DeadLetters {
    ts: Vec<i64>,
    component: StringBuilder,
    reason: StringBuilder,
    record: StringBuilder,
}

impl DeadLetters {
    /// Adds one dead letter.
    pub fn push(&mut self, ts: Time, component: &str, reason: &str, record: &str) {
        self.ts.push(ts as i64);
        self.component.append_value(component);
        self.reason.append_value(reason);
        self.record.append_value(record);
    }

    /// Adds every row of `batch` (as JSON) with the same reason.
    pub fn push_batch(&mut self, ts: Time, component: &str, reason: &str, batch: &RecordBatch) {
        for record in rows_as_json(batch) {
            self.push(ts, component, reason, &record);
        }
    }

    /// Number of dead letters collected.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// Whether none were collected.
    pub fn is_empty(&self) -> bool {
        self.ts.is_empty()
    }

    /// Takes what was collected as a batch (None when empty).
    pub fn take(&mut self) -> Option<Batch> {
        if self.ts.is_empty() {
            return None;
        }
        let columns: Vec<ArrayRef> = vec![
            time_array(std::mem::take(&mut self.ts)),
            Arc::new(self.component.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.record.finish()),
        ];
        Some(Batch::new(
            RecordBatch::try_new(dead_letter_schema(), columns)
                .expect("dead-letter schema matches"),
        ))
    }
}

/// Every row of `batch` as a JSON object.
pub fn rows_as_json(batch: &RecordBatch) -> Vec<String> {
    let mut buf = Vec::new();
    {
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut buf);
        if writer.write(batch).is_err() || writer.finish().is_err() {
            return (0..batch.num_rows())
                .map(|i| format!("{{\"row\":{i}}}"))
                .collect();
        }
    }
    String::from_utf8_lossy(&buf)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Applies `logic` to every batch. `logic` returns the output rows (or `None` to drop the
/// batch), or an error message: the batch then goes to the dead-letter output, whole.
pub fn map_batches<'s, L>(
    stream: BatchStream<'s>,
    name: &str,
    mut logic: L,
) -> (BatchStream<'s>, BatchStream<'s>)
where
    L: FnMut(&Batch) -> Result<Option<RecordBatch>, String> + 'static,
{
    let component = name.to_string();
    let mut builder = OperatorBuilder::new(name.to_string(), stream.scope());
    let mut input = builder.new_input(stream, Pipeline);
    let (main, main_stream) = builder.new_output::<Vec<Batch>>();
    let (dead, dead_stream) = builder.new_output::<Vec<Batch>>();
    let mut main =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Batch>>>::from(main);
    let mut dead =
        OutputBuilder::<_, timely::container::CapacityContainerBuilder<Vec<Batch>>>::from(dead);
    builder.build(move |_| {
        move |_frontiers| {
            let mut main = main.activate();
            let mut dead = dead.activate();
            input.for_each_stamp(|cap, data| {
                let time = cap.least().copied().unwrap_or_default();
                for container in data {
                    for batch in container.drain(..) {
                        match logic(&batch) {
                            Ok(Some(out)) => main
                                .session(&cap)
                                .give(Batch::derived(out, batch.created_ns)),
                            Ok(None) => {}
                            Err(reason) => {
                                let mut letters = DeadLetters::default();
                                letters.push_batch(time, &component, &reason, &batch.data);
                                if let Some(b) = letters.take() {
                                    dead.session(&cap).give(b);
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    (main_stream, dead_stream)
}

/// Hashes the `key` columns of every row (stable across workers and processes).
pub fn key_hashes(batch: &RecordBatch, key: &[String]) -> Result<Vec<u64>, String> {
    if key.is_empty() {
        return Ok(vec![0; batch.num_rows()]);
    }
    let columns: Vec<ArrayRef> = key
        .iter()
        .map(|k| {
            batch
                .column_by_name(k)
                .cloned()
                .ok_or_else(|| format!("missing key column `{k}`"))
        })
        .collect::<Result<_, _>>()?;
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )
    .map_err(|e| e.to_string())?;
    let rows = converter
        .convert_columns(&columns)
        .map_err(|e| e.to_string())?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut h = DefaultHasher::new();
            r.as_ref().hash(&mut h);
            h.finish()
        })
        .collect())
}

/// Holds each timely time's rows until the input frontier passes that time, then emits them
/// as one batch sorted by all columns. Stateful operators whose results depend on the order
/// rows are folded in (floating-point sums, for example) use it after an exchange so that
/// 1 and N workers fold the same rows in the same order. It delays rows until their time
/// is complete, so it belongs in front of operators that wait for the frontier anyway.
pub fn canonical_order<'s>(stream: BatchStream<'s>) -> BatchStream<'s> {
    use std::collections::BTreeMap;
    use timely::dataflow::operators::Capability;
    stream.unary_frontier::<timely::container::CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
        Pipeline,
        "CanonicalOrder",
        |_, _| {
            let mut pending: BTreeMap<Time, (Capability<Time>, Vec<Batch>)> = BTreeMap::new();
            move |(input, frontier), output| {
                input.for_each_stamp(|cap, data| {
                    let Some(cap) = cap.retain_least(output.output_index()) else {
                        return;
                    };
                    let entry = pending
                        .entry(*cap.time())
                        .or_insert_with(|| (cap.clone(), Vec::new()));
                    for container in data {
                        entry.1.append(container);
                    }
                });
                while let Some((&time, _)) = pending.first_key_value() {
                    if frontier.less_equal(&time) {
                        break;
                    }
                    let (cap, batches) = pending.remove(&time).expect("first key exists");
                    if let Some(batch) = sorted(batches) {
                        output.session(&cap).give(batch);
                    }
                }
            }
        },
    )
}

/// The rows of `batches` (one schema) as one batch sorted by every column.
fn sorted(batches: Vec<Batch>) -> Option<Batch> {
    let first = batches.first()?;
    let schema = first.data.schema();
    let created_ns = batches.iter().map(|b| b.created_ns).min().unwrap_or(0);
    let data: Vec<RecordBatch> = batches.into_iter().map(|b| b.data).collect();
    let all = arrow::compute::concat_batches(&schema, &data)
        .expect("batches of one stream share its schema");
    let fields = all
        .columns()
        .iter()
        .map(|c| SortField::new(c.data_type().clone()))
        .collect();
    let Ok(converter) = RowConverter::new(fields) else {
        return Some(Batch::derived(all, created_ns));
    };
    let Ok(rows) = converter.convert_columns(all.columns()) else {
        return Some(Batch::derived(all, created_ns));
    };
    let mut order: Vec<u32> = (0..all.num_rows() as u32).collect();
    order.sort_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    let taken = take_record_batch(&all, &UInt32Array::from(order)).expect("row indices in bounds");
    Some(Batch::derived(taken, created_ns))
}

/// Sends every row to the worker that owns its key, so keyed state lives in one place.
/// With one worker the stream is returned as it is.
pub fn exchange_by_key<'s>(stream: BatchStream<'s>, key: Vec<String>) -> BatchStream<'s> {
    let peers = stream.scope().peers();
    if peers == 1 {
        return stream;
    }
    let split = stream
        .unary::<timely::container::CapacityContainerBuilder<Vec<(u64, Batch)>>, _, _, _>(
            Pipeline,
            "PartitionByKey",
            move |_, _| {
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        let mut session = output.session(&cap);
                        for container in data {
                            for batch in container.drain(..) {
                                // Validation guarantees the key columns exist.
                                let hashes =
                                    key_hashes(&batch.data, &key).expect("key columns validated");
                                let mut parts: Vec<Vec<u32>> = vec![Vec::new(); peers];
                                for (row, h) in hashes.iter().enumerate() {
                                    parts[(*h % peers as u64) as usize].push(row as u32);
                                }
                                for (target, rows) in parts.into_iter().enumerate() {
                                    if rows.is_empty() {
                                        continue;
                                    }
                                    let part = if rows.len() == batch.num_rows() {
                                        batch.data.clone()
                                    } else {
                                        take_record_batch(&batch.data, &UInt32Array::from(rows))
                                            .expect("row indices in bounds")
                                    };
                                    session.give((
                                        target as u64,
                                        Batch::derived(part, batch.created_ns),
                                    ));
                                }
                            }
                        }
                    });
                }
            },
        );
    split.unary::<timely::container::CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
        Exchange::new(|item: &(u64, Batch)| item.0),
        "ExchangeByKey",
        |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for container in data {
                        for (_, batch) in container.drain(..) {
                            session.give(batch);
                        }
                    }
                });
            }
        },
    )
}
