//! `window`: keyed tumbling and sliding windows on event time, with aggregates.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Float64Builder, Int64Array, RecordBatch, UInt32Array,
};
use arrow::compute::{cast, take_record_batch};
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use isthmus_engine::batch::{Batch, BatchStream, TIME_COLUMN, Time, time_field, time_type};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Transform};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops;
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::units::DurationSpec;
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::detect::FxBuild;
use crate::filter::require_columns;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[transforms.per_line_10s]
type = "window"
inputs = ["sim"]
key = ["plant", "line"]
size = "10s"
slide = "5s"
allowed_lateness = "2s"
aggregates = { temperature = ["avg", "max", "stddev"], vibration = ["max"], fault = ["count"] }
"#;

/// The name of the window-end column of the output.
pub const WINDOW_END: &str = "window_end";

/// Keyed tumbling or sliding windows on event time, with aggregates per window and key.
///
/// Windows are aligned on the Unix epoch: a tumbling window of `size` covers
/// `[start, start + size)` with `start` a multiple of `size`; with `slide`, a window starts
/// at every multiple of `slide`, so each row belongs to about `size / slide` windows. A
/// window is emitted once, when the input's watermark passes its end plus
/// `allowed_lateness` (or at the end of the input). A row that arrives after every window
/// it belongs to was closed is late: it goes to the `late` side output (with the input's
/// schema) and is counted, never dropped silently.
///
/// Output columns: `ts` (window start), `window_end`, the `key` columns, `count` (rows in
/// the window), then `<column>_<function>` for every aggregate, in the alphabetical order
/// of the columns and the listed order of the functions. `count` is an Int64; `sum`,
/// `avg`, `min`, `max` and `stddev` are Float64 and NULL when the window has no non-NULL
/// value (`stddev` is the sample standard deviation, NULL below two values).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Columns whose values identify a group, for example `["plant", "line"]`. Default:
    /// none (one window sequence for the whole stream).
    #[serde(default)]
    pub key: Vec<String>,
    /// Length of a window, for example `"10s"`.
    pub size: DurationSpec,
    /// Distance between the starts of consecutive windows, at most `size` (sliding
    /// windows). Default: equal to `size` (tumbling windows).
    #[serde(default)]
    pub slide: Option<DurationSpec>,
    /// How long after a window's end (in event time) rows for it are still accepted.
    /// Default: `"0s"`.
    #[serde(default)]
    pub allowed_lateness: DurationSpec,
    /// Aggregates by input column: a table `column = ["avg", "max", …]` of functions among
    /// `count` (non-NULL values), `sum`, `avg`, `min`, `max` and `stddev`. NULL values are
    /// skipped. Default: none (only the row `count`).
    #[serde(default)]
    pub aggregates: BTreeMap<String, Vec<Aggregate>>,
}

/// An aggregate function of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// Number of non-NULL values (Int64).
    Count,
    /// Sum of the values (Float64).
    Sum,
    /// Mean of the values (Float64).
    Avg,
    /// Smallest value (Float64).
    Min,
    /// Largest value (Float64).
    Max,
    /// Sample standard deviation (Float64; NULL for fewer than two values).
    Stddev,
}

impl Aggregate {
    /// The function's name in configs and output column names.
    pub fn name(&self) -> &'static str {
        match self {
            Aggregate::Count => "count",
            Aggregate::Sum => "sum",
            Aggregate::Avg => "avg",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Stddev => "stddev",
        }
    }
}

/// Running statistics of one column in one window and group.
#[derive(Clone, Copy, Debug)]
struct ColumnStats {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
    mean: f64,
    m2: f64,
}

impl Default for ColumnStats {
    fn default() -> Self {
        ColumnStats {
            n: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
        }
    }
}

impl ColumnStats {
    #[inline]
    fn add(&mut self, x: f64) {
        self.n += 1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    fn value(&self, f: Aggregate) -> Option<f64> {
        match f {
            Aggregate::Count => Some(self.n as f64),
            _ if self.n == 0 => None,
            Aggregate::Sum => Some(self.sum),
            Aggregate::Avg => Some(self.sum / self.n as f64),
            Aggregate::Min => Some(self.min),
            Aggregate::Max => Some(self.max),
            Aggregate::Stddev if self.n < 2 => None,
            Aggregate::Stddev => Some((self.m2.max(0.0) / (self.n - 1) as f64).sqrt()),
        }
    }
}

/// Rows and column statistics of one group in one window.
struct GroupState {
    rows: u64,
    columns: Vec<ColumnStats>,
}

/// A window that has not been emitted yet.
struct Pending {
    cap: Capability<Time>,
    /// When the oldest of its rows entered the engine (for end-to-end latency).
    created_ns: u64,
    groups: HashMap<Vec<u8>, GroupState, FxBuild>,
}

/// Resolved settings shared by the operator and the check.
#[derive(Clone, Debug)]
struct Plan {
    key: Vec<String>,
    size: i64,
    slide: i64,
    lateness: i64,
    /// Aggregated input columns, in order.
    columns: Vec<String>,
    /// Output aggregates: (index into `columns`, function).
    outputs: Vec<(usize, Aggregate)>,
    output_schema: SchemaRef,
}

impl Window {
    fn plan(&self, input: &SchemaRef) -> Result<Plan, Problem> {
        let size = self.size.as_millis() as i64;
        if size <= 0 {
            return Err(Problem::at("size", "the window size must be at least 1ms")
                .with_help("for example size = \"10s\""));
        }
        let slide = match self.slide {
            None => size,
            Some(s) => {
                let slide = s.as_millis() as i64;
                if slide <= 0 || slide > size {
                    return Err(Problem::at("slide", format!("slide must be between 1ms and the window size ({})", self.size))
                        .with_help("remove `slide` for tumbling windows, or use a divisor of `size`, for example half of it"));
                }
                if size / slide > MAX_WINDOWS_PER_ROW {
                    return Err(Problem::at(
                        "slide",
                        format!("each row would fall into {} windows (size / slide); at most {MAX_WINDOWS_PER_ROW} are allowed", size / slide),
                    )
                    .with_help("use a larger `slide` or a smaller `size`"));
                }
                slide
            }
        };
        match input.column_with_name(TIME_COLUMN) {
            Some((_, f)) if f.data_type() == &time_type() => {}
            _ => {
                return Err(Problem::general(format!(
                    "the input has no event-time column `ts` of type {}",
                    time_type()
                )));
            }
        }
        require_columns("key", &self.key, input)?;
        require_columns("aggregates", self.aggregates.keys(), input)?;

        let mut fields = vec![time_field(), Field::new(WINDOW_END, time_type(), false)];
        for k in &self.key {
            if k == TIME_COLUMN {
                return Err(
                    Problem::at("key", "`ts` cannot be a key: windows are on event time")
                        .with_help("key on columns such as `device` or `line`"),
                );
            }
            let (_, f) = input.column_with_name(k).expect("checked above");
            fields.push(f.as_ref().clone());
        }
        fields.push(Field::new("count", DataType::Int64, false));
        let mut columns = Vec::new();
        let mut outputs = Vec::new();
        for (column, functions) in &self.aggregates {
            if functions.is_empty() {
                return Err(Problem::at(
                    "aggregates",
                    format!("no function listed for `{column}`"),
                )
                .with_help("list some of count, sum, avg, min, max, stddev"));
            }
            let (_, field) = input.column_with_name(column).expect("checked above");
            let numeric = field.data_type().is_numeric();
            columns.push(column.clone());
            for f in functions {
                if !numeric && *f != Aggregate::Count {
                    return Err(Problem::at(
                        "aggregates",
                        format!(
                            "`{column}` is {}: `{}` needs a numeric column",
                            field.data_type(),
                            f.name()
                        ),
                    )
                    .with_help("only `count` applies to non-numeric columns"));
                }
                outputs.push((columns.len() - 1, *f));
                let data_type = if *f == Aggregate::Count {
                    DataType::Int64
                } else {
                    DataType::Float64
                };
                fields.push(Field::new(
                    format!("{column}_{}", f.name()),
                    data_type,
                    *f != Aggregate::Count,
                ));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &fields {
            if !seen.insert(f.name().as_str()) {
                let key = if self.key.contains(f.name()) {
                    "key"
                } else {
                    "aggregates"
                };
                return Err(Problem::at(key, format!("two output columns would be named `{}`", f.name()))
                    .with_help("each aggregate is listed once per column, and keys must not be named `window_end`, `count` or `<column>_<function>`"));
            }
        }
        Ok(Plan {
            key: self.key.clone(),
            size,
            slide,
            lateness: self.allowed_lateness.as_millis() as i64,
            columns,
            outputs,
            output_schema: Arc::new(Schema::new(fields)),
        })
    }
}

/// The most windows one row may belong to (`size / slide`): beyond it a sliding window
/// costs more than it can be worth.
const MAX_WINDOWS_PER_ROW: i64 = 1000;

/// The starts of the windows that contain event time `ts`, latest first.
#[inline]
fn window_starts(ts: i64, size: i64, slide: i64) -> impl Iterator<Item = i64> {
    let last = ts.div_euclid(slide) * slide;
    std::iter::successors(Some(last), move |s| Some(s - slide)).take_while(move |s| *s > ts - size)
}

/// The operator's state on one worker.
struct WindowState {
    plan: Plan,
    converter: Option<RowConverter>,
    pending: BTreeMap<i64, Pending>,
    late_rows: Vec<u32>,
}

impl WindowState {
    fn new(plan: Plan, input: &SchemaRef) -> Result<Self, String> {
        let converter = if plan.key.is_empty() {
            None
        } else {
            let fields = plan
                .key
                .iter()
                .map(|k| {
                    input
                        .field_with_name(k)
                        .map(|f| SortField::new(f.data_type().clone()))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            Some(RowConverter::new(fields).map_err(|e| e.to_string())?)
        };
        Ok(WindowState {
            plan,
            converter,
            pending: BTreeMap::new(),
            late_rows: Vec::new(),
        })
    }

    /// Adds the rows of `batch`, received at input time `time`, to their open windows;
    /// returns the late rows (if any).
    fn absorb(
        &mut self,
        batch: &RecordBatch,
        time: Time,
        created_ns: u64,
        mut delayed: impl FnMut(Time) -> Capability<Time>,
    ) -> Result<Option<RecordBatch>, String> {
        let n = batch.num_rows();
        if n == 0 {
            return Ok(None);
        }
        let ts = batch
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::TimestampMillisecondType>())
            .ok_or("the batch has no event-time column `ts`")?;
        let rows = match &self.converter {
            Some(conv) => {
                let cols: Vec<ArrayRef> = self
                    .plan
                    .key
                    .iter()
                    .map(|k| {
                        batch
                            .column_by_name(k)
                            .cloned()
                            .ok_or_else(|| format!("missing key column `{k}`"))
                    })
                    .collect::<Result<_, _>>()?;
                Some(conv.convert_columns(&cols).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        let values: Vec<Float64Array> = self
            .plan
            .columns
            .iter()
            .map(|c| {
                let col = batch
                    .column_by_name(c)
                    .ok_or_else(|| format!("missing column `{c}`"))?;
                if col.data_type().is_numeric() {
                    cast(col, &DataType::Float64)
                        .map(|a| a.as_primitive::<Float64Type>().clone())
                        .map_err(|e| e.to_string())
                } else {
                    // Only counted: any value stands for "present".
                    Ok(Float64Array::new(
                        vec![0.0; col.len()].into(),
                        col.logical_nulls(),
                    ))
                }
            })
            .collect::<Result<_, String>>()?;
        let (size, slide, lateness) = (self.plan.size, self.plan.slide, self.plan.lateness);
        let now = time as i64;
        let n_cols = values.len();
        self.late_rows.clear();
        for row in 0..n {
            if ts.is_null(row) {
                self.late_rows.push(row as u32);
                continue;
            }
            let t = ts.value(row);
            let key: &[u8] = rows.as_ref().map(|r| r.row(row).data()).unwrap_or(&[]);
            let mut placed = false;
            for start in window_starts(t, size, slide) {
                if start + size + lateness <= now {
                    // Closed: this and every earlier window (they end earlier).
                    break;
                }
                placed = true;
                let cap_time = start.max(now) as Time;
                let pending = self.pending.entry(start).or_insert_with(|| Pending {
                    cap: delayed(cap_time),
                    created_ns,
                    groups: HashMap::default(),
                });
                if *pending.cap.time() > cap_time {
                    pending.cap = delayed(cap_time);
                }
                pending.created_ns = pending.created_ns.min(created_ns);
                let group = match pending.groups.get_mut(key) {
                    Some(g) => g,
                    None => pending
                        .groups
                        .entry(key.to_vec())
                        .or_insert_with(|| GroupState {
                            rows: 0,
                            columns: vec![ColumnStats::default(); n_cols],
                        }),
                };
                group.rows += 1;
                for (stats, col) in group.columns.iter_mut().zip(&values) {
                    if col.is_valid(row) {
                        let x = col.value(row);
                        if !x.is_nan() {
                            stats.add(x);
                        }
                    }
                }
            }
            if !placed {
                self.late_rows.push(row as u32);
            }
        }
        if self.late_rows.is_empty() {
            return Ok(None);
        }
        let indices = UInt32Array::from(std::mem::take(&mut self.late_rows));
        take_record_batch(batch, &indices)
            .map(Some)
            .map_err(|e| e.to_string())
    }

    /// Removes the windows that close at `frontier` (every window when it is `None`: the
    /// input ended) and returns their rows, with the capability to send them at.
    fn close(
        &mut self,
        frontier: Option<Time>,
    ) -> Result<Option<(Capability<Time>, Batch)>, String> {
        let (size, lateness) = (self.plan.size, self.plan.lateness);
        let mut ready = Vec::new();
        while let Some(entry) = self.pending.first_entry() {
            let start = *entry.key();
            if let Some(f) = frontier
                && start + size + lateness > f as i64
            {
                break;
            }
            ready.push((start, entry.remove()));
        }
        let Some(cap) = ready
            .iter()
            .map(|(_, p)| &p.cap)
            .min_by_key(|c| *c.time())
            .cloned()
        else {
            return Ok(None);
        };
        let rows: usize = ready.iter().map(|(_, p)| p.groups.len()).sum();
        let created_ns = ready
            .iter()
            .map(|(_, p)| p.created_ns)
            .min()
            .unwrap_or_default();
        let mut starts = Vec::with_capacity(rows);
        let mut ends = Vec::with_capacity(rows);
        let mut counts = Vec::with_capacity(rows);
        let mut keys: Vec<Vec<u8>> =
            Vec::with_capacity(if self.converter.is_some() { rows } else { 0 });
        let mut aggs: Vec<Float64Builder> = self
            .plan
            .outputs
            .iter()
            .map(|_| Float64Builder::with_capacity(rows))
            .collect();
        for (start, pending) in ready {
            for (key, group) in pending.groups {
                starts.push(start);
                ends.push(start + size);
                counts.push(group.rows as i64);
                for ((column, f), builder) in self.plan.outputs.iter().zip(aggs.iter_mut()) {
                    builder.append_option(group.columns[*column].value(*f));
                }
                if self.converter.is_some() {
                    keys.push(key);
                }
            }
        }
        let mut columns: Vec<ArrayRef> = vec![
            isthmus_engine::batch::time_array(starts),
            isthmus_engine::batch::time_array(ends),
        ];
        if let Some(conv) = &self.converter {
            let parser = conv.parser();
            columns.extend(
                conv.convert_rows(keys.iter().map(|k| parser.parse(k)))
                    .map_err(|e| e.to_string())?,
            );
        }
        columns.push(Arc::new(Int64Array::from(counts)));
        for ((_, f), mut builder) in self.plan.outputs.iter().zip(aggs) {
            let values = builder.finish();
            columns.push(if *f == Aggregate::Count {
                cast(&values, &DataType::Int64).map_err(|e| e.to_string())?
            } else {
                Arc::new(values)
            });
        }
        let batch = RecordBatch::try_new(self.plan.output_schema.clone(), columns)
            .map_err(|e| e.to_string())?;
        Ok(Some((cap, Batch::derived(batch, created_ns))))
    }
}

impl Transform for Window {
    fn schemas(
        &self,
        input: &SchemaRef,
        _cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        let plan = self.plan(input)?;
        Ok(Outputs::main(plan.output_schema).with_side(ops::LATE, input.clone()))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let schema = cx.required_input_schema()?;
        let plan = self.plan(&schema).map_err(|p| cx.error(p.message))?;
        let mut state = WindowState::new(plan, &schema).map_err(|e| cx.error(e))?;
        // Fold rows in one canonical order per time, so float sums are the same on 1 and N
        // workers (the exchange interleaves workers' rows in no fixed order).
        let input = ops::canonical_order(ops::exchange_by_key(input, self.key.clone()));
        let metrics = cx.metrics.clone();
        let name = cx.name.clone();

        let mut builder = OperatorBuilder::new(cx.name.clone(), cx.scope);
        let mut input = builder.new_input(input, Pipeline);
        let (main, main_stream) = builder.new_output::<Vec<Batch>>();
        let (late, late_stream) = builder.new_output::<Vec<Batch>>();
        let mut main = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(main);
        let mut late = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(late);
        builder.build(move |_initial_caps| {
            move |frontiers| {
                let mut main = main.activate();
                let mut late = late.activate();
                input.for_each_stamp(|cap, data| {
                    let Some(time) = cap.least().copied() else { return };
                    for container in data {
                        for batch in container.drain(..) {
                            match state.absorb(&batch.data, time, batch.created_ns, |t| cap.delayed(&t, 0)) {
                                Ok(None) => {}
                                Ok(Some(rows)) => {
                                    ComponentMetrics::add(&metrics.late, rows.num_rows() as u64);
                                    late.session(&cap).give(Batch::derived(rows, batch.created_ns));
                                }
                                Err(e) => {
                                    // Cannot happen after validation; never lose the rows.
                                    tracing::error!(component = %name, "cannot window a batch, sending it to `late`: {e}");
                                    ComponentMetrics::add(&metrics.late, batch.num_rows() as u64);
                                    late.session(&cap).give(batch);
                                }
                            }
                        }
                    }
                });
                let frontier = frontiers[0].frontier().first().copied();
                match state.close(frontier) {
                    Ok(Some((cap, rows))) => main.session(&cap).give(rows),
                    Ok(None) => {}
                    Err(e) => tracing::error!(component = %name, "cannot emit windows: {e}"),
                }
            }
        });
        Ok(Outputs::main(main_stream).with_side(ops::LATE, late_stream))
    }
}

/// Test support shared by the transforms' tests: runs a transform on N timely workers.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use arrow::array::RecordBatch;
    use arrow::datatypes::SchemaRef;
    use isthmus_engine::batch::{Batch, Time};
    use isthmus_engine::channel::ChannelHub;
    use isthmus_engine::component::{BuildContext, Kind, Transform};
    use isthmus_engine::policy::PolicyStore;
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::telemetry::ComponentMetrics;
    use timely::dataflow::InputHandle;
    use timely::dataflow::operators::{Input, Inspect, Probe};

    /// Main and side outputs (all workers) with the metrics.
    pub(crate) struct Run {
        pub main: Vec<(Time, RecordBatch)>,
        pub side: Vec<(String, Time, RecordBatch)>,
        pub metrics: Arc<ComponentMetrics>,
    }

    /// Runs `transform` on `workers` workers; worker 0 sends `input` (time, batch) in order.
    pub(crate) fn run(
        transform: Arc<dyn Transform>,
        schema: SchemaRef,
        input: Vec<(Time, RecordBatch)>,
        workers: usize,
        policy: Arc<PolicyStore>,
    ) -> Run {
        let main = Arc::new(Mutex::new(Vec::new()));
        let side = Arc::new(Mutex::new(Vec::new()));
        let metrics = Arc::new(ComponentMetrics::new(
            "under_test",
            Kind::Transform,
            "test",
            false,
        ));
        let input = Arc::new(input);
        let (m, s, mx) = (main.clone(), side.clone(), metrics.clone());
        let config = if workers == 1 {
            timely::Config::thread()
        } else {
            timely::Config::process(workers)
        };
        let guards = timely::execute(config, move |worker| {
            let mut handle: InputHandle<
                Time,
                timely::container::CapacityContainerBuilder<Vec<Batch>>,
            > = InputHandle::new();
            let probe = timely::dataflow::ProbeHandle::new();
            worker.dataflow::<Time, _, _>(|scope| {
                let stream = scope.input_from(&mut handle);
                let cx = BuildContext {
                    scope,
                    name: "under_test".into(),
                    node: Arc::new(NodeSpec {
                        id: "test-node".into(),
                        role: Role::Standalone,
                    }),
                    policy: policy.clone(),
                    metrics: mx.clone(),
                    channels: Arc::new(ChannelHub::new()),
                    shutdown: Arc::new(AtomicBool::new(false)),
                    input_schema: Some(schema.clone()),
                    base_dir: ".".into(),
                    delivery: Arc::new(isthmus_engine::delivery::DeliveryTracker::new(0)),
                };
                let outputs = transform.build(stream, &cx).expect("transform builds");
                let m = m.clone();
                outputs
                    .main
                    .inspect_core(move |event| {
                        if let Ok((stamp, data)) = event {
                            let t = stamp.least().copied().unwrap_or_default();
                            m.lock()
                                .unwrap()
                                .extend(data.iter().map(|b: &Batch| (t, b.data.clone())));
                        }
                    })
                    .probe_with(&probe);
                for (name, stream) in outputs.side {
                    let s = s.clone();
                    stream
                        .inspect_core(move |event| {
                            if let Ok((stamp, data)) = event {
                                let t = stamp.least().copied().unwrap_or_default();
                                s.lock().unwrap().extend(
                                    data.iter()
                                        .map(|b: &Batch| (name.to_string(), t, b.data.clone())),
                                );
                            }
                        })
                        .probe_with(&probe);
                }
            });
            if worker.index() == 0 {
                for (time, batch) in input.iter() {
                    if *time > *handle.time() {
                        handle.advance_to(*time);
                    }
                    handle.send(Batch::new(batch.clone()));
                    worker.step();
                }
            }
            drop(handle);
            while worker.has_dataflows() {
                worker.step_or_park(Some(std::time::Duration::from_millis(1)));
            }
        })
        .expect("timely starts");
        for r in guards.join() {
            r.expect("worker succeeds");
        }
        let main = std::mem::take(&mut *main.lock().unwrap());
        let side = std::mem::take(&mut *side.lock().unwrap());
        Run {
            main,
            side,
            metrics,
        }
    }

    /// A tiny deterministic RNG (SplitMix64).
    pub(crate) struct Rng(pub u64);

    impl Rng {
        pub(crate) fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform in `0..n`.
        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{StringArray, TimestampMillisecondArray};
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::policy::PolicyStore;

    use super::testkit::{Rng, run};
    use super::*;

    fn schema() -> SchemaRef {
        schema_with_time([
            Field::new("device", DataType::Utf8, false),
            Field::new("temperature", DataType::Float64, true),
            Field::new("level", DataType::Int64, false),
        ])
    }

    fn batch(rows: &[(i64, &str, Option<f64>, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                time_array(rows.iter().map(|r| r.0).collect()),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn window(slide: Option<u64>, lateness: u64, key: &[&str]) -> Window {
        Window {
            key: key.iter().map(|s| s.to_string()).collect(),
            size: DurationSpec(std::time::Duration::from_millis(100)),
            slide: slide.map(|s| DurationSpec(std::time::Duration::from_millis(s))),
            allowed_lateness: DurationSpec(std::time::Duration::from_millis(lateness)),
            aggregates: BTreeMap::from([
                (
                    "temperature".to_string(),
                    vec![
                        Aggregate::Avg,
                        Aggregate::Min,
                        Aggregate::Max,
                        Aggregate::Stddev,
                        Aggregate::Count,
                    ],
                ),
                ("level".to_string(), vec![Aggregate::Sum]),
            ]),
        }
    }

    /// One output row: (start, end, key, count, temperature aggs, level sum), floats as bits
    /// after rounding so that rows compare exactly.
    type Row = (i64, i64, String, i64, Vec<Option<i64>>);

    fn rows_of(batches: &[(Time, RecordBatch)], keyed: bool) -> Vec<Row> {
        let mut out = Vec::new();
        for (_, b) in batches {
            let start = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            let end = b
                .column(1)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            let first_agg = if keyed { 3 } else { 2 };
            for i in 0..b.num_rows() {
                let key = if keyed {
                    b.column(2).as_string::<i32>().value(i).to_string()
                } else {
                    String::new()
                };
                let count = b
                    .column(first_agg)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(i);
                let aggs = (first_agg + 1..b.num_columns())
                    .map(|c| {
                        let col = cast(b.column(c), &DataType::Float64).unwrap();
                        let col = col.as_primitive::<Float64Type>();
                        col.is_valid(i).then(|| (col.value(i) * 1e6).round() as i64)
                    })
                    .collect();
                out.push((start.value(i), end.value(i), key, count, aggs));
            }
        }
        out.sort();
        out
    }

    /// A row's (temperature, level) as the oracle keeps it.
    type OracleValue = (Option<f64>, i64);

    /// Brute force: the windows each row belongs to (only those still open when it arrives),
    /// and the late rows.
    fn oracle(w: &Window, input: &[(Time, RecordBatch)]) -> (Vec<Row>, usize, usize) {
        let plan = w.plan(&schema()).unwrap();
        let mut windows: BTreeMap<(i64, String), Vec<OracleValue>> = BTreeMap::new();
        let (mut late, mut placed) = (0, 0);
        for (time, b) in input {
            let ts = b
                .column(0)
                .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
            let dev = b.column(1).as_string::<i32>();
            let temp = b.column(2).as_primitive::<Float64Type>();
            let level = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                let t = ts.value(i);
                let mut any = false;
                // Every start that is a multiple of slide with start <= t < start + size.
                let mut s = t - t.rem_euclid(plan.slide);
                while s > t - plan.size {
                    if s + plan.size + plan.lateness > *time as i64 {
                        any = true;
                        let key = if w.key.is_empty() {
                            String::new()
                        } else {
                            dev.value(i).to_string()
                        };
                        windows
                            .entry((s, key))
                            .or_default()
                            .push((temp.is_valid(i).then(|| temp.value(i)), level.value(i)));
                    }
                    s -= plan.slide;
                }
                if any { placed += 1 } else { late += 1 }
            }
        }
        let mut rows = Vec::new();
        for ((s, key), vals) in windows {
            let xs: Vec<f64> = vals.iter().filter_map(|v| v.0).collect();
            let n = xs.len() as f64;
            let r = |x: f64| Some((x * 1e6).round() as i64);
            let avg = if xs.is_empty() {
                None
            } else {
                r(xs.iter().sum::<f64>() / n)
            };
            let min = xs.iter().copied().reduce(f64::min).and_then(r);
            let max = xs.iter().copied().reduce(f64::max).and_then(r);
            let sd = if xs.len() < 2 {
                None
            } else {
                let m = xs.iter().sum::<f64>() / n;
                r((xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)).sqrt())
            };
            let level_sum = r(vals.iter().map(|v| v.1 as f64).sum());
            // Output order: level_sum, then temperature avg, min, max, stddev, count.
            rows.push((
                s,
                s + plan.size,
                key,
                vals.len() as i64,
                vec![level_sum, avg, min, max, sd, r(n)],
            ));
        }
        rows.sort();
        (rows, placed, late)
    }

    fn random_input(seed: u64) -> Vec<(Time, RecordBatch)> {
        let mut rng = Rng(seed);
        let mut input = Vec::new();
        let mut time: i64 = 1_000;
        let devices = ["a", "b", "c", "d", "e"];
        for _ in 0..(5 + rng.below(20)) {
            time += rng.below(80) as i64;
            let mut rows = Vec::new();
            for _ in 0..rng.below(30) {
                // Mostly ahead of the watermark, some behind it (late or within lateness).
                let ts = time + rng.below(150) as i64 - 60;
                let temp = if rng.below(10) == 0 {
                    None
                } else {
                    Some(rng.below(1000) as f64 / 8.0)
                };
                rows.push((
                    ts,
                    devices[rng.below(5) as usize],
                    temp,
                    rng.below(100) as i64 - 50,
                ));
            }
            input.push((time as Time, batch(&rows)));
        }
        input
    }

    fn policy() -> Arc<PolicyStore> {
        Arc::new(PolicyStore::new(Default::default(), Default::default()))
    }

    #[test]
    fn matches_brute_force_on_random_out_of_order_input() {
        let configs = [
            window(None, 0, &["device"]),
            window(None, 30, &["device"]),
            window(Some(25), 10, &["device"]),
            window(Some(40), 0, &[]),
        ];
        for seed in 0..12 {
            let input = random_input(seed);
            let rows_in: usize = input.iter().map(|(_, b)| b.num_rows()).sum();
            for (ci, w) in configs.iter().enumerate() {
                let (expected, placed, late) = oracle(w, &input);
                assert_eq!(placed + late, rows_in);
                let keyed = !w.key.is_empty();
                let mut previous: Option<Vec<Row>> = None;
                for workers in [1, 2] {
                    let out = run(
                        Arc::new(w.clone()),
                        schema(),
                        input.clone(),
                        workers,
                        policy(),
                    );
                    let got = rows_of(&out.main, keyed);
                    assert_eq!(got, expected, "seed {seed} config {ci} workers {workers}");
                    let late_rows: usize = out
                        .side
                        .iter()
                        .filter(|(n, _, _)| n == ops::LATE)
                        .map(|(_, _, b)| b.num_rows())
                        .sum();
                    assert_eq!(late_rows, late, "seed {seed} config {ci}");
                    assert_eq!(ComponentMetrics::get(&out.metrics.late), late as u64);
                    if w.slide.is_none() {
                        // Tumbling: every row is either aggregated once or late.
                        let aggregated: i64 = got.iter().map(|r| r.3).sum();
                        assert_eq!(aggregated as usize + late_rows, rows_in);
                    }
                    if let Some(p) = &previous {
                        assert_eq!(p, &got);
                    }
                    previous = Some(got);
                }
            }
        }
    }

    #[test]
    fn emits_each_window_once_when_the_watermark_passes() {
        let w = Window {
            aggregates: BTreeMap::new(),
            ..window(None, 0, &["device"])
        };
        let input = vec![
            (
                0,
                batch(&[
                    (10, "a", Some(1.0), 1),
                    (20, "b", Some(2.0), 1),
                    (150, "a", Some(3.0), 1),
                ]),
            ),
            (120, batch(&[(130, "a", Some(1.0), 1)])),
            // Behind the watermark: window [0, 100) closed at 100.
            (
                210,
                batch(&[(50, "a", Some(1.0), 1), (205, "a", Some(1.0), 1)]),
            ),
        ];
        let out = run(Arc::new(w), schema(), input, 1, policy());
        // First window [0,100): emitted at time 0 (its capability), before the rest.
        let mut by_time: Vec<(Time, i64, String, i64)> = Vec::new();
        for (t, b) in &out.main {
            for i in 0..b.num_rows() {
                by_time.push((
                    *t,
                    b.column(0)
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .value(i),
                    b.column(2).as_string::<i32>().value(i).to_string(),
                    b.column(3)
                        .as_primitive::<arrow::datatypes::Int64Type>()
                        .value(i),
                ));
            }
        }
        by_time.sort();
        assert_eq!(
            by_time,
            vec![
                (0, 0, "a".into(), 1),
                (0, 0, "b".into(), 1),
                (100, 100, "a".into(), 2),
                (210, 200, "a".into(), 1),
            ]
        );
        let late: Vec<&RecordBatch> = out.side.iter().map(|(_, _, b)| b).collect();
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].schema(), schema());
        let ts: &TimestampMillisecondArray = late[0].column(0).as_primitive();
        assert_eq!(ts.values().to_vec(), vec![50]);
    }

    #[test]
    fn check_problems() {
        let s = schema();
        let mut w = window(Some(200), 0, &["device"]);
        assert_eq!(w.plan(&s).unwrap_err().key.as_deref(), Some("slide"));
        w.slide = None;
        w.key = vec!["devce".into()];
        let e = w.plan(&s).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("key"));
        assert!(e.help.unwrap().contains("did you mean `device`"));
        w.key = vec!["device".into()];
        w.aggregates.insert("temp".into(), vec![Aggregate::Avg]);
        assert_eq!(w.plan(&s).unwrap_err().key.as_deref(), Some("aggregates"));
        w.aggregates.remove("temp");
        w.aggregates.insert("device".into(), vec![Aggregate::Avg]);
        assert!(w.plan(&s).unwrap_err().message.contains("numeric"));
        w.aggregates.insert("device".into(), vec![Aggregate::Count]);
        let plan = w.plan(&s).unwrap();
        let names: Vec<&str> = plan
            .output_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(
            names,
            [
                "ts",
                "window_end",
                "device",
                "count",
                "device_count",
                "level_sum",
                "temperature_avg",
                "temperature_min",
                "temperature_max",
                "temperature_stddev",
                "temperature_count"
            ]
        );
        w.aggregates
            .insert("level".into(), vec![Aggregate::Sum, Aggregate::Sum]);
        assert!(
            w.plan(&s)
                .unwrap_err()
                .message
                .contains("two output columns")
        );
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["per_line_10s"]
            .as_table()
            .unwrap()
            .clone();
        t.remove("type");
        t.remove("inputs");
        let w: Window = t.try_into().unwrap();
        assert_eq!(w.size.as_millis(), 10_000);
        assert_eq!(
            w.aggregates["temperature"],
            vec![Aggregate::Avg, Aggregate::Max, Aggregate::Stddev]
        );
    }
}
