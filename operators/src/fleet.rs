//! `fleet`: the number of devices currently anomalous, per group (plant and line by
//! default), maintained incrementally with differential dataflow.
//!
//! Every input row is one anomaly report of one device. A device counts as anomalous from
//! the event time of a report until `anomalous_for` after its latest report. Each report
//! becomes two differential updates of `((group, device), time, diff)`: `+1` at its event
//! time and `-1` at `anomalous_for` later; `distinct` turns overlapping reports into "the
//! device is anomalous", and `count` per group gives the number of anomalous devices. The
//! output is differential's stream of changes to that count, as Arrow rows:
//!
//! | ts | group columns… | anomalous_devices | diff |
//! | --- | --- | --- | --- |
//! | when the change happens | the group (Utf8) | the count | `+1` now holds, `-1` no longer holds |
//!
//! A change of a group's count from 2 to 3 at time `t` is two rows at `t`: `(…, 2, -1)` and
//! `(…, 3, +1)`. A count that drops to zero is simply retracted. Accumulating `diff` over the
//! rows with `ts <= t` gives the counts at `t`, for every `t` behind the watermark.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::{can_cast_types, cast, take_record_batch};
use arrow::datatypes::{DataType, Field, SchemaRef};
use differential_dataflow::AsCollection;
use isthmus_engine::batch::{
    Batch, BatchStream, TIME_COLUMN, Time, schema_with_time, time_array, time_type,
};
use isthmus_engine::ops::{self, DeadLetters};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::units::DurationSpec;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Outputs, Problem, Transform};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use timely::dataflow::operators::generic::operator::Operator;

/// Name of the output column holding the number of anomalous devices of a group.
pub const ANOMALOUS_DEVICES: &str = "anomalous_devices";
/// Name of the output column holding `+1` (the row now holds) or `-1` (it no longer holds).
pub const DIFF: &str = "diff";

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[transforms.fleet]
type = "fleet"
inputs = ["sim"]
device = "device"
group_by = ["plant", "line"]
anomalous_for = "60s"
"#;

/// Counts, per group of devices (by default per plant and line), how many devices are
/// anomalous right now, and emits every change of that count as it happens.
///
/// Each input row is one anomaly report (for example the rows an edge node forwards because
/// their score is high). A device is anomalous from the event time of a report until
/// `anomalous_for` after its latest report. The output has the columns `ts`, the `group_by`
/// columns (as strings), `anomalous_devices` (Int64) and `diff` (Int64): a change of a
/// group's count from 2 to 3 at time `t` is the row `(t, …, 2, -1)` (no longer holds) and the
/// row `(t, …, 3, +1)` (now holds); a count that drops to zero is only retracted. Feed it to a
/// `policy` transform to turn counts into policy changes. Group and device columns of any
/// type that converts to text are accepted (numbers, dictionaries) and compared as text.
/// Rows whose device, group or `ts` is null go to the `dead_letter` output. The counting is
/// incremental (differential dataflow) and gives the same result with any number of workers.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// The column holding the device id. Default `"device"`.
    #[serde(default = "default_device")]
    pub device: String,
    /// The columns whose values form a group; devices are counted per distinct combination.
    /// They are copied to the output as strings. An empty list counts the whole fleet.
    /// Default `["plant", "line"]`.
    #[serde(default = "default_group_by")]
    pub group_by: Vec<String>,
    /// How long a device stays anomalous after its latest anomaly report (event time), for
    /// example `"60s"` or `"5m"`. Default `"60s"`.
    #[serde(default = "default_anomalous_for")]
    pub anomalous_for: DurationSpec,
    /// A numeric column holding each report's anomaly score. When given, the output also
    /// has, per group over the reports of the last `anomalous_for` (a sliding event-time
    /// window): `reports` (Int64, their number: the group's anomaly rate per window),
    /// `mean_score` and `max_score` (Float64). Rows with a null, NaN or infinite score go to the
    /// `dead_letter` output. Optional.
    pub score: Option<String>,
    /// The event-time step at which results change, for example `"1s"`: a report counts
    /// from its time rounded up to a multiple of the step until its expiry rounded up, so
    /// a busy group is recomputed and emitted at most once per step instead of once per
    /// report. Default `"1ms"` (every report at its own time).
    #[serde(default = "default_resolution")]
    pub resolution: DurationSpec,
}

fn default_device() -> String {
    "device".to_string()
}

fn default_group_by() -> Vec<String> {
    vec!["plant".to_string(), "line".to_string()]
}

fn default_resolution() -> DurationSpec {
    DurationSpec(std::time::Duration::from_millis(1))
}

fn default_anomalous_for() -> DurationSpec {
    DurationSpec(std::time::Duration::from_secs(60))
}

/// One anomaly report in differential: the group's values, then the device and the score
/// (as [`ordered_bits`]; 0 without a `score` column).
type Report = (Vec<String>, (String, u64));
/// One differential update of the collection of reports in their window.
type ReportUpdate = (Report, Time, isize);
/// A group's metrics: anomalous devices, and with a `score` column the reports, mean score
/// and max score (scores as [`ordered_bits`]).
type GroupMetrics = (i64, Option<(i64, u64, u64)>);
/// One differential update of the per-group metrics.
type MetricsUpdate = ((Vec<String>, GroupMetrics), Time, isize);

/// Name of the output column holding the number of reports in the window.
pub const REPORTS: &str = "reports";
/// Name of the output column holding the mean score of the reports in the window.
pub const MEAN_SCORE: &str = "mean_score";
/// Name of the output column holding the largest score of the reports in the window.
pub const MAX_SCORE: &str = "max_score";

/// A float's bits, mapped so that integer order is the float order (for keys and values of
/// differential collections, which need `Ord`).
fn ordered_bits(x: f64) -> u64 {
    let b = x.to_bits();
    if b >> 63 == 1 { !b } else { b | (1 << 63) }
}

/// The inverse of [`ordered_bits`].
fn from_ordered_bits(b: u64) -> f64 {
    f64::from_bits(if b >> 63 == 1 { b & !(1 << 63) } else { !b })
}

impl Fleet {
    /// The output schema: `ts`, the group columns (Utf8), `anomalous_devices`, `diff`.
    pub fn output_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .group_by
            .iter()
            .map(|g| Field::new(g, DataType::Utf8, false))
            .collect();
        fields.push(Field::new(ANOMALOUS_DEVICES, DataType::Int64, false));
        if self.score.is_some() {
            fields.push(Field::new(REPORTS, DataType::Int64, false));
            fields.push(Field::new(MEAN_SCORE, DataType::Float64, false));
            fields.push(Field::new(MAX_SCORE, DataType::Float64, false));
        }
        fields.push(Field::new(DIFF, DataType::Int64, false));
        schema_with_time(fields)
    }

    fn check_input(&self, input: &SchemaRef) -> Result<(), Problem> {
        let available = || {
            let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            format!("the input has the columns {}", names.join(", "))
        };
        match input.field_with_name(TIME_COLUMN) {
            Ok(f) if *f.data_type() == time_type() => {}
            _ => {
                return Err(Problem::general(format!(
                    "the input has no event-time column `{TIME_COLUMN}` of type Timestamp(Millisecond)"
                )));
            }
        }
        let text_column = |key: &str, name: &str| -> Result<(), Problem> {
            let field = input.field_with_name(name).map_err(|_| {
                Problem::at(key, format!("the input has no column `{name}`")).with_help(available())
            })?;
            if field.data_type().is_nested() || !can_cast_types(field.data_type(), &DataType::Utf8)
            {
                return Err(Problem::at(
                    key,
                    format!(
                        "column `{name}` has type {} which cannot be converted to text",
                        field.data_type()
                    ),
                ));
            }
            Ok(())
        };
        text_column("device", &self.device)?;
        for (i, g) in self.group_by.iter().enumerate() {
            text_column("group_by", g)?;
            if self.group_by[..i].contains(g) {
                return Err(Problem::at(
                    "group_by",
                    format!("column `{g}` is listed twice"),
                ));
            }
            if *g == self.device {
                return Err(Problem::at(
                    "group_by",
                    format!("`{g}` is the device column; it cannot also be a group column"),
                )
                .with_help(
                    "devices are counted per group; group by plant, line or another attribute",
                ));
            }
            if [
                TIME_COLUMN,
                ANOMALOUS_DEVICES,
                DIFF,
                REPORTS,
                MEAN_SCORE,
                MAX_SCORE,
            ]
            .contains(&g.as_str())
            {
                return Err(Problem::at(
                    "group_by",
                    format!(
                        "`{g}` cannot be a group column: the output already has a column of that name"
                    ),
                ));
            }
        }
        if let Some(score) = &self.score {
            let field = input.field_with_name(score).map_err(|_| {
                Problem::at("score", format!("the input has no column `{score}`"))
                    .with_help(available())
            })?;
            if !field.data_type().is_numeric() {
                return Err(Problem::at(
                    "score",
                    format!(
                        "column `{score}` has type {}, not a number",
                        field.data_type()
                    ),
                ));
            }
        }
        if self.anomalous_for.as_millis() == 0 {
            return Err(Problem::at("anomalous_for", "must be longer than 0ms")
                .with_help("for example \"60s\""));
        }
        if self.resolution.as_millis() == 0
            || self.resolution.as_millis() > self.anomalous_for.as_millis()
        {
            return Err(Problem::at(
                "resolution",
                format!(
                    "must be at least 1ms and at most `anomalous_for` ({}ms)",
                    self.anomalous_for.as_millis()
                ),
            )
            .with_help("for example \"1s\""));
        }
        Ok(())
    }
}

/// Converts a column to Utf8 (a cheap clone when it already is).
fn to_text(column: &ArrayRef) -> Result<ArrayRef, String> {
    if *column.data_type() == DataType::Utf8 {
        Ok(column.clone())
    } else {
        cast(column, &DataType::Utf8).map_err(|e| format!("cannot convert column to text: {e}"))
    }
}

/// Turns the rows of one batch into differential updates; rows with nulls go to `dead`.
struct Reports {
    device: String,
    group_by: Vec<String>,
    score: Option<String>,
    anomalous_for: Time,
    /// Results change at multiples of this (ms, at least 1).
    resolution: Time,
    name: String,
}

impl Reports {
    fn convert(
        &self,
        batch: &RecordBatch,
        msg_time: Time,
        out: &mut Vec<ReportUpdate>,
        dead: &mut DeadLetters,
    ) {
        let n = batch.num_rows();
        if n == 0 {
            return;
        }
        let columns = (|| -> Result<_, String> {
            let times = batch
                .column_by_name(TIME_COLUMN)
                .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
                .ok_or_else(|| {
                    format!("batch lacks a `{TIME_COLUMN}` column of type Timestamp(Millisecond)")
                })?
                .clone();
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| format!("batch lacks column `{name}`"))
                    .and_then(to_text)
            };
            let device = column(&self.device)?;
            let groups = self
                .group_by
                .iter()
                .map(|g| column(g))
                .collect::<Result<Vec<_>, _>>()?;
            let score = match &self.score {
                Some(name) => Some(
                    batch
                        .column_by_name(name)
                        .ok_or_else(|| format!("batch lacks column `{name}`"))
                        .and_then(|c| {
                            cast(c, &DataType::Float64).map_err(|e| {
                                format!("cannot read column `{name}` as a number: {e}")
                            })
                        })?,
                ),
                None => None,
            };
            Ok((times, device, groups, score))
        })();
        let (times, device, groups, score) = match columns {
            Ok(c) => c,
            Err(reason) => {
                dead.push_batch(msg_time, &self.name, &reason, batch);
                return;
            }
        };
        let device = device
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        let groups: Vec<&StringArray> = groups
            .iter()
            .map(|g| {
                g.as_any()
                    .downcast_ref::<StringArray>()
                    .expect("cast to Utf8")
            })
            .collect();
        let score = score.as_ref().map(|s| {
            s.as_any()
                .downcast_ref::<Float64Array>()
                .expect("cast to Float64")
        });
        let mut bad: Vec<u32> = Vec::new();
        out.reserve(2 * n);
        for row in 0..n {
            let score_bad = score.is_some_and(|s| s.is_null(row) || !s.value(row).is_finite());
            if times.is_null(row)
                || device.is_null(row)
                || groups.iter().any(|g| g.is_null(row))
                || score_bad
            {
                bad.push(row as u32);
                continue;
            }
            let t = (times.value(row).max(0) as Time).max(msg_time);
            let group: Vec<String> = groups.iter().map(|g| g.value(row).to_string()).collect();
            let bits = score.map_or(0, |s| ordered_bits(s.value(row)));
            let report = (group, (device.value(row).to_string(), bits));
            let step = |t: Time| t.div_ceil(self.resolution).saturating_mul(self.resolution);
            out.push((report.clone(), step(t), 1));
            out.push((report, step(t.saturating_add(self.anomalous_for)), -1));
        }
        if !bad.is_empty() {
            let rows =
                take_record_batch(batch, &UInt32Array::from(bad)).expect("row indices in bounds");
            let reason = if self.score.is_some() {
                "null device, group, ts or score (or a score that is not a finite number)"
            } else {
                "null device, group or ts"
            };
            dead.push_batch(msg_time, &self.name, reason, &rows);
        }
    }
}

/// Builds the Arrow rows of metric updates that share one time.
fn metrics_to_batch(schema: &SchemaRef, groups: usize, updates: &[MetricsUpdate]) -> RecordBatch {
    let n = updates.len();
    let mut builders: Vec<StringBuilder> = (0..groups)
        .map(|_| StringBuilder::with_capacity(n, n * 8))
        .collect();
    let mut ts = Vec::with_capacity(n);
    let mut counts = Vec::with_capacity(n);
    let (mut reports, mut means, mut maxes) = (Vec::new(), Vec::new(), Vec::new());
    let mut diffs = Vec::with_capacity(n);
    for ((group, (devices, scored)), t, diff) in updates {
        ts.push(*t as i64);
        for (b, v) in builders.iter_mut().zip(group) {
            b.append_value(v);
        }
        counts.push(*devices);
        if let Some((n, mean, max)) = scored {
            reports.push(*n);
            means.push(from_ordered_bits(*mean));
            maxes.push(from_ordered_bits(*max));
        }
        diffs.push(*diff as i64);
    }
    let mut columns: Vec<ArrayRef> = vec![time_array(ts)];
    columns.extend(
        builders
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef),
    );
    columns.push(Arc::new(Int64Array::from(counts)));
    if schema.index_of(REPORTS).is_ok() {
        columns.push(Arc::new(Int64Array::from(reports)));
        columns.push(Arc::new(Float64Array::from(means)));
        columns.push(Arc::new(Float64Array::from(maxes)));
    }
    columns.push(Arc::new(Int64Array::from(diffs)));
    RecordBatch::try_new(schema.clone(), columns).expect("fleet output schema matches")
}

/// A group's metrics from its reports in the window: `(device, score bits)` with their
/// multiplicities, sorted (as differential's `reduce` gives them).
fn group_metrics(reports: &[(&(String, u64), isize)]) -> GroupMetrics {
    let mut devices = 0i64;
    let mut previous: Option<&str> = None;
    let (mut n, mut sum, mut max) = (0i64, 0.0f64, f64::NEG_INFINITY);
    for ((device, bits), m) in reports {
        if previous != Some(device.as_str()) {
            devices += 1;
            previous = Some(device);
        }
        let score = from_ordered_bits(*bits);
        n += *m as i64;
        sum += score * *m as f64;
        max = max.max(score);
    }
    let mean = if n > 0 { sum / n as f64 } else { 0.0 };
    (devices, Some((n, ordered_bits(mean), ordered_bits(max))))
}

impl Transform for Fleet {
    fn schemas(
        &self,
        input: &SchemaRef,
        _cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        self.check_input(input)?;
        Ok(Outputs::main(self.output_schema())
            .with_side(ops::DEAD_LETTER, ops::dead_letter_schema()))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        if let Some(schema) = &cx.input_schema {
            self.check_input(schema).map_err(|p| cx.error(p.message))?;
        }
        let reports = Reports {
            device: self.device.clone(),
            group_by: self.group_by.clone(),
            score: self.score.clone(),
            anomalous_for: self.anomalous_for.as_millis(),
            resolution: self.resolution.as_millis().max(1),
            name: cx.name.clone(),
        };
        let metrics = cx.metrics.clone();

        // Anomaly reports → updates of the (group, device) collection, plus dead letters.
        let mut builder = OperatorBuilder::new(format!("{}.Reports", cx.name), input.scope());
        let mut rows_in = builder.new_input(input, Pipeline);
        let (updates_out, updates) = builder.new_output::<Vec<ReportUpdate>>();
        let (dead_out, dead) = builder.new_output::<Vec<Batch>>();
        let mut updates_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<ReportUpdate>>>::from(updates_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(dead_out);
        builder.build(move |_| {
            let mut buffer: Vec<ReportUpdate> = Vec::new();
            move |_frontiers| {
                let mut updates_out = updates_out.activate();
                let mut dead_out = dead_out.activate();
                rows_in.for_each_stamp(|cap, data| {
                    let Some(&msg_time) = cap.least() else { return };
                    let mut letters = DeadLetters::default();
                    for container in data {
                        for batch in container.drain(..) {
                            reports.convert(&batch.data, msg_time, &mut buffer, &mut letters);
                        }
                    }
                    if !buffer.is_empty() {
                        updates_out
                            .session(&cap)
                            .give_container(&mut std::mem::take(&mut buffer));
                    }
                    if let Some(letters) = letters.take() {
                        ComponentMetrics::add(&metrics.dead_letters, letters.num_rows() as u64);
                        dead_out.session(&cap).give(letters);
                    }
                });
            }
        });

        // Devices currently anomalous (distinct over overlapping reports), counted per group;
        // with scores, one reduction per group gives every metric.
        let reports_in_window = updates.as_collection();
        let metrics_updates = if self.score.is_some() {
            reports_in_window
                .reduce(|_group, reports, output| output.push((group_metrics(reports), 1isize)))
                .inner
        } else {
            reports_in_window
                .map(|(group, (device, _))| (group, device))
                .distinct()
                .map(|(group, _device)| group)
                .count()
                .map(|(group, n)| (group, (n as i64, None)))
                .inner
        };

        // Count updates → Arrow rows, sent at their own time.
        let schema = self.output_schema();
        let groups = self.group_by.len();
        let main = metrics_updates.unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(
            Pipeline,
            &format!("{}.ToArrow", cx.name),
            move |_, _| {
                let mut pending: Vec<MetricsUpdate> = Vec::new();
                move |input, output| {
                    input.for_each_stamp(|cap, data| {
                        for container in data {
                            pending.append(container);
                        }
                        pending.sort_unstable_by(|a, b| (a.1, &a.0, a.2).cmp(&(b.1, &b.0, b.2)));
                        for chunk in pending.chunk_by(|a, b| a.1 == b.1) {
                            let time = chunk[0].1;
                            let at = cap.delayed(&time, 0);
                            output
                                .session(&at)
                                .give(Batch::new(metrics_to_batch(&schema, groups, chunk)));
                        }
                        pending.clear();
                    });
                }
            },
        );
        Ok(Outputs::main(main).with_side(ops::DEAD_LETTER, dead))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;
    use isthmus_engine::policy::{PolicySnapshot, PolicyStore};
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;

    use super::*;

    /// Runs `transform` on `workers` timely workers; worker 0 sends `input` (times
    /// non-decreasing). Returns what the main output produced, as (timely time, rows).
    pub(crate) fn run_workers(
        workers: usize,
        transform: Arc<dyn Transform>,
        schema: SchemaRef,
        input: Vec<(Time, RecordBatch)>,
    ) -> Vec<(Time, RecordBatch)> {
        let policy = Arc::new(PolicyStore::new(Default::default(), Default::default()));
        crate::window::testkit::run(transform, schema, input, workers, policy).main
    }

    /// The problem of a failed check.
    pub(crate) fn problem(result: Result<Outputs<SchemaRef>, Problem>) -> Problem {
        match result {
            Err(p) => p,
            Ok(_) => panic!("expected a problem"),
        }
    }

    pub(crate) fn check_cx<R>(f: impl FnOnce(&CheckContext<'_>) -> R) -> R {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Cloud,
        };
        let policy = PolicySnapshot::default();
        let channels = BTreeMap::new();
        f(&CheckContext {
            node: &node,
            policy: &policy,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        })
    }

    /// The schema of forwarded anomaly rows.
    pub(crate) fn anomaly_schema() -> SchemaRef {
        schema_with_time([
            Field::new("device", DataType::Utf8, true),
            Field::new("plant", DataType::Utf8, true),
            Field::new("line", DataType::Utf8, true),
            Field::new("score", DataType::Float64, false),
        ])
    }

    /// A batch of anomaly rows (ts, device, plant, line).
    pub(crate) fn anomalies(rows: &[(i64, &str, &str, &str)]) -> RecordBatch {
        RecordBatch::try_new(
            anomaly_schema(),
            vec![
                time_array(rows.iter().map(|r| r.0).collect()),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(arrow::array::Float64Array::from(vec![5.0; rows.len()])),
            ],
        )
        .unwrap()
    }

    /// Output rows as sorted tuples (ts, groups, count, diff).
    pub(crate) fn fleet_rows(out: &[(Time, RecordBatch)]) -> Vec<(i64, Vec<String>, i64, i64)> {
        let mut rows = Vec::new();
        for (time, b) in out {
            let schema = b.schema();
            let ts = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            let n_groups = schema.fields().len() - 3;
            let groups: Vec<&StringArray> = (1..=n_groups)
                .map(|i| b.column(i).as_string::<i32>())
                .collect();
            let count = b
                .column_by_name(ANOMALOUS_DEVICES)
                .unwrap()
                .as_primitive::<Int64Type>();
            let diff = b.column_by_name(DIFF).unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                assert!(
                    ts.value(i) as Time >= *time,
                    "row sent at a time after its ts"
                );
                rows.push((
                    ts.value(i),
                    groups.iter().map(|g| g.value(i).to_string()).collect(),
                    count.value(i),
                    diff.value(i),
                ));
            }
        }
        rows.sort();
        rows
    }

    fn fleet(anomalous_for: &str) -> Fleet {
        toml::from_str(&format!("anomalous_for = \"{anomalous_for}\"")).unwrap()
    }

    fn line(s: &str) -> Vec<String> {
        vec!["P1".to_string(), s.to_string()]
    }

    #[test]
    fn example_and_defaults_parse() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["fleet"].as_table().unwrap().clone();
        assert_eq!(t.remove("type").unwrap().as_str(), Some("fleet"));
        t.remove("inputs");
        let f: Fleet = t.try_into().unwrap();
        assert_eq!(f.anomalous_for.as_millis(), 60_000);
        let d: Fleet = toml::from_str("").unwrap();
        assert_eq!(d.device, "device");
        assert_eq!(d.group_by, vec!["plant", "line"]);
        assert_eq!(d.anomalous_for.as_millis(), 60_000);
        assert!(toml::from_str::<Fleet>("window = \"1s\"").is_err());
    }

    #[test]
    fn check_reports_missing_and_unusable_columns() {
        let schema = anomaly_schema();
        check_cx(|cx| {
            let ok = Fleet::default_for_test();
            let outputs = ok.schemas(&schema, cx).unwrap();
            let names: Vec<&str> = outputs
                .main
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(names, ["ts", "plant", "line", "anomalous_devices", "diff"]);
            assert_eq!(outputs.side[0].0, ops::DEAD_LETTER);

            let bad: Fleet = toml::from_str("device = \"machine\"").unwrap();
            let p = problem(bad.schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("device"));
            assert!(p.message.contains("`machine`"), "{}", p.message);

            let bad: Fleet = toml::from_str("group_by = [\"plant\", \"hall\"]").unwrap();
            let p = problem(bad.schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("group_by"));
            assert!(p.message.contains("`hall`"));

            let bad: Fleet = toml::from_str("group_by = [\"line\", \"line\"]").unwrap();
            assert!(problem(bad.schemas(&schema, cx)).message.contains("twice"));

            let bad: Fleet = toml::from_str("group_by = [\"device\"]").unwrap();
            assert_eq!(
                problem(bad.schemas(&schema, cx)).key.as_deref(),
                Some("group_by")
            );

            let bad: Fleet = toml::from_str("score = \"nope\"").unwrap();
            let p = problem(bad.schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("score"));
            assert!(p.message.contains("no column `nope`"), "{}", p.message);
            let bad: Fleet = toml::from_str("score = \"line\"").unwrap();
            let p = problem(bad.schemas(&schema, cx));
            assert!(p.message.contains("not a number"), "{}", p.message);

            let bad: Fleet = toml::from_str("anomalous_for = \"0s\"").unwrap();
            assert_eq!(
                problem(bad.schemas(&schema, cx)).key.as_deref(),
                Some("anomalous_for")
            );

            // A numeric group column is accepted and compared as text.
            let numeric = schema_with_time([
                Field::new("device", DataType::Int64, false),
                Field::new("plant", DataType::Utf8, false),
                Field::new("line", DataType::Int32, false),
            ]);
            assert!(ok.schemas(&numeric, cx).is_ok());
            let binary = schema_with_time([
                Field::new("device", DataType::Utf8, false),
                Field::new("plant", DataType::Utf8, false),
                Field::new(
                    "line",
                    DataType::List(Arc::new(Field::new("x", DataType::Int32, true))),
                    false,
                ),
            ]);
            assert_eq!(
                problem(ok.schemas(&binary, cx)).key.as_deref(),
                Some("group_by")
            );
        });
    }

    impl Fleet {
        fn default_for_test() -> Fleet {
            toml::from_str("").unwrap()
        }
    }

    #[test]
    fn counts_devices_and_retracts_after_anomalous_for() {
        let f = fleet("10s");
        let input = vec![
            (
                1_000,
                anomalies(&[(1_000, "d1", "P1", "L1"), (1_500, "d2", "P1", "L1")]),
            ),
            // d1 again: stays anomalous until 15s; d3 on another line.
            (
                5_000,
                anomalies(&[(5_000, "d1", "P1", "L1"), (5_000, "d3", "P1", "L2")]),
            ),
        ];
        let out = Harness::default().run_transform(&f, anomaly_schema(), input);
        let rows = fleet_rows(&out.main);
        let expected = vec![
            (1_000, line("L1"), 1, 1),
            (1_500, line("L1"), 1, -1),
            (1_500, line("L1"), 2, 1),
            (5_000, line("L2"), 1, 1),
            (11_500, line("L1"), 1, 1), // d2 expires at 11.5s
            (11_500, line("L1"), 2, -1),
            (15_000, line("L1"), 1, -1), // d1 expires at 15s
            (15_000, line("L2"), 1, -1), // d3 expires at 15s
        ];
        assert_eq!(rows, expected);
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 0);
    }

    #[test]
    fn rows_with_null_keys_go_to_dead_letters_and_late_rows_are_clamped() {
        let f = fleet("10s");
        let batch = RecordBatch::try_new(
            anomaly_schema(),
            vec![
                time_array(vec![2_000, 2_000, 500]),
                Arc::new(StringArray::from(vec![Some("d1"), None, Some("d2")])),
                Arc::new(StringArray::from(vec!["P1", "P1", "P1"])),
                Arc::new(StringArray::from(vec!["L1", "L1", "L1"])),
                Arc::new(arrow::array::Float64Array::from(vec![5.0; 3])),
            ],
        )
        .unwrap();
        let harness = Harness::default();
        let out = harness.run_transform(&f, anomaly_schema(), vec![(1_000, batch)]);
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 1);
        assert_eq!(
            harness
                .metrics
                .dead_letters
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // d2's report at 500 arrived at watermark 1000: it counts from 1000 (until 11000).
        let rows = fleet_rows(&out.main);
        assert_eq!(
            rows,
            vec![
                (1_000, line("L1"), 1, 1),
                (2_000, line("L1"), 1, -1),
                (2_000, line("L1"), 2, 1),
                (11_000, line("L1"), 1, 1),
                (11_000, line("L1"), 2, -1),
                (12_000, line("L1"), 1, -1),
            ]
        );
    }

    /// Deterministic pseudo-random numbers (xorshift), so that no dev-dependency is needed.
    pub(crate) struct Rng(u64);

    impl Rng {
        pub(crate) fn new(seed: u64) -> Self {
            Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Random anomaly reports in batches at non-decreasing times; some rows are late (their
    /// ts is before the batch's time).
    fn random_input(seed: u64) -> Vec<(Time, RecordBatch)> {
        let mut rng = Rng::new(seed);
        let mut input = Vec::new();
        let mut now: i64 = 0;
        for _ in 0..40 {
            now += rng.below(3_000) as i64;
            let rows: Vec<(i64, String, String, String)> = (0..rng.below(6))
                .map(|_| {
                    let late = rng.below(10) == 0;
                    let ts = if late {
                        now - rng.below(2_000) as i64
                    } else {
                        now + rng.below(4_000) as i64
                    };
                    let device = format!("d{}", rng.below(8));
                    let plant = format!("P{}", rng.below(2));
                    let line = format!("L{}", rng.below(3));
                    (ts.max(0), device, plant, line)
                })
                .collect();
            let refs: Vec<(i64, &str, &str, &str)> = rows
                .iter()
                .map(|r| (r.0, r.1.as_str(), r.2.as_str(), r.3.as_str()))
                .collect();
            input.push((now as Time, anomalies(&refs)));
        }
        input
    }

    /// Brute force: for time `x`, the number of anomalous devices per group.
    fn oracle(input: &[(Time, RecordBatch)], d: Time, x: Time) -> BTreeMap<Vec<String>, i64> {
        let mut anomalous: BTreeSet<(Vec<String>, String)> = BTreeSet::new();
        for (msg_time, b) in input {
            let ts = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            for i in 0..b.num_rows() {
                let t = (ts.value(i) as Time).max(*msg_time);
                if t <= x && x < t + d {
                    let group = vec![
                        b.column(2).as_string::<i32>().value(i).to_string(),
                        b.column(3).as_string::<i32>().value(i).to_string(),
                    ];
                    anomalous.insert((group, b.column(1).as_string::<i32>().value(i).to_string()));
                }
            }
        }
        let mut counts = BTreeMap::new();
        for (g, _) in anomalous {
            *counts.entry(g).or_insert(0) += 1;
        }
        counts
    }

    /// Accumulates the output diffs up to time `x`.
    fn accumulate(rows: &[(i64, Vec<String>, i64, i64)], x: Time) -> BTreeMap<Vec<String>, i64> {
        let mut acc: BTreeMap<(Vec<String>, i64), i64> = BTreeMap::new();
        for (ts, g, count, diff) in rows {
            if *ts as Time <= x {
                *acc.entry((g.clone(), *count)).or_insert(0) += diff;
            }
        }
        let mut counts = BTreeMap::new();
        for ((g, count), m) in acc {
            if m != 0 {
                assert_eq!(
                    m, 1,
                    "group {g:?} holds count {count} with multiplicity {m} at {x}"
                );
                assert!(
                    counts.insert(g.clone(), count).is_none(),
                    "group {g:?} has two counts at {x}"
                );
            }
        }
        counts
    }

    #[test]
    fn matches_brute_force_oracle_with_one_and_two_workers() {
        let d: Time = 5_000;
        let f: Arc<dyn Transform> = Arc::new(fleet("5s"));
        for seed in 1..=4 {
            let input = random_input(seed);
            let one = fleet_rows(&run_workers(1, f.clone(), anomaly_schema(), input.clone()));
            let two = fleet_rows(&run_workers(2, f.clone(), anomaly_schema(), input.clone()));
            assert_eq!(one, two, "1 and 2 workers differ (seed {seed})");
            let harness = fleet_rows(
                &Harness::default()
                    .run_transform(f.as_ref(), anomaly_schema(), input.clone())
                    .main,
            );
            assert_eq!(one, harness);
            assert!(!one.is_empty());
            // Check at every time a count may change, and just before.
            let mut points: BTreeSet<Time> = BTreeSet::new();
            for (msg_time, b) in &input {
                let ts = b
                    .column(0)
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
                for i in 0..b.num_rows() {
                    let t = (ts.value(i) as Time).max(*msg_time);
                    points.extend([t.saturating_sub(1), t, t + d - 1, t + d]);
                }
            }
            for x in points {
                assert_eq!(
                    accumulate(&one, x),
                    oracle(&input, d, x),
                    "seed {seed}, time {x}"
                );
            }
            // Everything expires in the end.
            assert!(accumulate(&one, Time::MAX).is_empty());
        }
    }

    #[test]
    fn a_resolution_rounds_update_times_up_to_its_step() {
        let f: Fleet = toml::from_str("anomalous_for = \"5s\"\nresolution = \"1s\"").unwrap();
        let input = vec![(
            0,
            anomalies(&[(100, "d1", "P1", "L1"), (1_200, "d2", "P1", "L1")]),
        )];
        let rows = fleet_rows(
            &Harness::default()
                .run_transform(&f, anomaly_schema(), input)
                .main,
        );
        assert_eq!(
            rows,
            vec![
                (1_000, line("L1"), 1, 1),
                (2_000, line("L1"), 1, -1),
                (2_000, line("L1"), 2, 1),
                (6_000, line("L1"), 1, 1),
                (6_000, line("L1"), 2, -1),
                (7_000, line("L1"), 1, -1),
            ]
        );
        let bad: Fleet = toml::from_str("anomalous_for = \"5s\"\nresolution = \"10s\"").unwrap();
        let p = problem(check_cx(|cx| bad.schemas(&anomaly_schema(), cx)));
        assert_eq!(p.key.as_deref(), Some("resolution"), "{}", p.message);
    }

    #[test]
    fn empty_group_by_counts_the_whole_fleet() {
        let f: Fleet = toml::from_str("group_by = []\nanomalous_for = \"1s\"").unwrap();
        let input = vec![(
            0,
            anomalies(&[
                (0, "d1", "P1", "L1"),
                (100, "d2", "P2", "L2"),
                (200, "d1", "P1", "L1"),
            ]),
        )];
        let out = Harness::default().run_transform(&f, anomaly_schema(), input);
        let b = out.main_batch().unwrap();
        assert_eq!(b.num_columns(), 3);
        let rows = fleet_rows(&out.main);
        assert_eq!(
            rows,
            vec![
                (0, vec![], 1, 1),
                (100, vec![], 1, -1),
                (100, vec![], 2, 1),
                (1_100, vec![], 1, 1),
                (1_100, vec![], 2, -1),
                (1_200, vec![], 1, -1),
            ]
        );
    }
}

/// Property test: with a `score` column, the incremental metrics equal a from-scratch
/// DataFusion SQL recomputation over all input so far, at every time a result may change,
/// on random out-of-order input (late rows), with one and two workers. Failing cases are
/// kept in `proptest-regressions/fleet.txt` and replayed first.
#[cfg(test)]
mod oracle {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{AsArray, Float64Array};
    use arrow::datatypes::{Float64Type, Int64Type, TimestampMillisecondType};
    use datafusion::prelude::SessionContext;
    use proptest::prelude::*;

    use super::tests::{anomaly_schema, run_workers};
    use super::*;

    /// The window of the tested transform, in milliseconds.
    const WINDOW: Time = 5_000;

    /// One input batch: how far time advances before it, then its rows as (ts offset from
    /// the batch time, device, plant, line, score); a negative offset is a late row.
    type BatchPlan = (u64, Vec<(i64, u8, u8, u8, u8)>);

    fn to_input(plan: &[BatchPlan]) -> Vec<(Time, RecordBatch)> {
        let mut now: i64 = 0;
        plan.iter()
            .map(|(advance, rows)| {
                now += *advance as i64;
                let ts: Vec<i64> = rows.iter().map(|r| (now + r.0).max(0)).collect();
                let text = |f: fn(&(i64, u8, u8, u8, u8)) -> String| {
                    Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef
                };
                let batch = RecordBatch::try_new(
                    anomaly_schema(),
                    vec![
                        time_array(ts),
                        text(|r| format!("d{}", r.1)),
                        text(|r| format!("P{}", r.2)),
                        text(|r| format!("L{}", r.3)),
                        Arc::new(Float64Array::from_iter_values(
                            rows.iter().map(|r| r.4 as f64 / 8.0 - 4.0),
                        )),
                    ],
                )
                .unwrap();
                (now as Time, batch)
            })
            .collect()
    }

    /// A group's metrics at a time: (plant, line) → (devices, reports, mean, max).
    type Metrics = BTreeMap<(String, String), (i64, i64, f64, f64)>;

    /// Accumulates the output's diffs at every time in `points`.
    fn incremental(out: &[(Time, RecordBatch)], points: &[Time]) -> BTreeMap<Time, Metrics> {
        let mut rows = Vec::new();
        for (_, b) in out {
            let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
            let text = |i: usize| b.column(i).as_string::<i32>();
            let int = |name: &str| b.column_by_name(name).unwrap().as_primitive::<Int64Type>();
            let float = |name: &str| {
                b.column_by_name(name)
                    .unwrap()
                    .as_primitive::<Float64Type>()
            };
            for i in 0..b.num_rows() {
                rows.push((
                    ts.value(i) as Time,
                    (text(1).value(i).to_string(), text(2).value(i).to_string()),
                    (
                        int(ANOMALOUS_DEVICES).value(i),
                        int(REPORTS).value(i),
                        float(MEAN_SCORE).value(i).to_bits(),
                        float(MAX_SCORE).value(i).to_bits(),
                    ),
                    int(DIFF).value(i),
                ));
            }
        }
        let mut result = BTreeMap::new();
        for &x in points {
            let mut acc: BTreeMap<_, i64> = BTreeMap::new();
            for (t, group, metrics, diff) in &rows {
                if *t <= x {
                    *acc.entry((group.clone(), *metrics)).or_default() += diff;
                }
            }
            let mut at = Metrics::new();
            for ((group, m), mult) in acc {
                if mult == 0 {
                    continue;
                }
                assert_eq!(mult, 1, "{group:?} holds {m:?} {mult} times at {x}");
                let value = (m.0, m.1, f64::from_bits(m.2), f64::from_bits(m.3));
                assert!(
                    at.insert(group.clone(), value).is_none(),
                    "{group:?} twice at {x}"
                );
            }
            result.insert(x, at);
        }
        result
    }

    /// The same metrics recomputed from scratch with SQL over every report, for every time in
    /// `points` at once.
    fn from_scratch(input: &[(Time, RecordBatch)], points: &[Time]) -> BTreeMap<Time, Metrics> {
        // Effective event time of a report: its ts, or the batch's time for a late row.
        let reports: Vec<RecordBatch> = input
            .iter()
            .map(|(t, b)| {
                let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
                let effective = Int64Array::from_iter_values(
                    ts.values().iter().map(|v| (*v as Time).max(*t) as i64),
                );
                let mut columns = b.columns().to_vec();
                columns[0] = Arc::new(effective);
                let mut fields: Vec<Field> = b
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields[0] = Field::new("t", DataType::Int64, false);
                RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
                    .unwrap()
            })
            .collect();
        let xs = RecordBatch::try_from_iter([(
            "x",
            Arc::new(Int64Array::from_iter_values(
                points.iter().map(|p| *p as i64),
            )) as ArrayRef,
        )])
        .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let batches = runtime.block_on(async {
            let cx = SessionContext::new();
            cx.register_batch("points", xs).unwrap();
            let schema = reports[0].schema();
            let all = arrow::compute::concat_batches(&schema, &reports).unwrap();
            cx.register_batch("reports", all).unwrap();
            let sql = format!(
                "SELECT x, plant, line, COUNT(DISTINCT device) AS devices, COUNT(*) AS reports, \
                 AVG(score) AS mean_score, MAX(score) AS max_score \
                 FROM points JOIN reports ON t <= x AND x < t + {WINDOW} \
                 GROUP BY x, plant, line"
            );
            cx.sql(&sql).await.unwrap().collect().await.unwrap()
        });
        let mut result: BTreeMap<Time, Metrics> =
            points.iter().map(|p| (*p, Metrics::new())).collect();
        for b in batches {
            let x = b.column(0).as_primitive::<Int64Type>();
            let text = |i: usize| b.column(i).as_string::<i32>();
            let int = |i: usize| b.column(i).as_primitive::<Int64Type>();
            let float = |i: usize| b.column(i).as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                result.get_mut(&(x.value(i) as Time)).unwrap().insert(
                    (text(1).value(i).to_string(), text(2).value(i).to_string()),
                    (
                        int(3).value(i),
                        int(4).value(i),
                        float(5).value(i),
                        float(6).value(i),
                    ),
                );
            }
        }
        result
    }

    fn assert_same(got: &BTreeMap<Time, Metrics>, want: &BTreeMap<Time, Metrics>) {
        assert_eq!(got.len(), want.len());
        for ((x, g), (_, w)) in got.iter().zip(want) {
            let keys = |m: &Metrics| m.keys().cloned().collect::<Vec<_>>();
            assert_eq!(keys(g), keys(w), "groups at time {x}");
            for (group, a) in g {
                let b = &w[group];
                assert_eq!((a.0, a.1, a.3), (b.0, b.1, b.3), "{group:?} at {x}");
                assert!(
                    (a.2 - b.2).abs() <= 1e-9 * b.2.abs().max(1.0),
                    "mean of {group:?} at {x}: {} vs {}",
                    a.2,
                    b.2
                );
            }
        }
    }

    fn plan() -> impl Strategy<Value = Vec<BatchPlan>> {
        let row = (-3_000i64..4_000, 0u8..6, 0u8..2, 0u8..3, 0u8..64);
        prop::collection::vec((0u64..3_000, prop::collection::vec(row, 0..6)), 1..30)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn incremental_metrics_equal_a_sql_recomputation(plan in plan()) {
            let input = to_input(&plan);
            prop_assume!(input.iter().any(|(_, b)| b.num_rows() > 0));
            let fleet: Fleet = toml::from_str("anomalous_for = \"5s\"\nscore = \"score\"").unwrap();
            let fleet: Arc<dyn Transform> = Arc::new(fleet);
            let one = run_workers(1, fleet.clone(), anomaly_schema(), input.clone());
            let two = run_workers(2, fleet, anomaly_schema(), input.clone());
            // Every time a result may change, and just before it.
            let mut points: BTreeSet<Time> = BTreeSet::new();
            for (t, b) in &input {
                let ts = b.column(0).as_primitive::<TimestampMillisecondType>();
                for v in ts.values() {
                    let e = (*v as Time).max(*t);
                    points.extend([e.saturating_sub(1), e, e + WINDOW - 1, e + WINDOW]);
                }
            }
            let points: Vec<Time> = points.into_iter().collect();
            let want = from_scratch(&input, &points);
            assert_same(&incremental(&one, &points), &want);
            assert_same(&incremental(&two, &points), &want);
            // Everything expires in the end.
            assert!(incremental(&one, &[Time::MAX])[&Time::MAX].is_empty());
        }
    }
}
