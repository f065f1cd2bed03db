//! `detect`: an online per-key anomaly score (EWMA z-score), the baseline that learned
//! models must beat.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Float64Type, Schema, SchemaRef};
use arrow::row::{RowConverter, SortField};
use isthmus_engine::batch::{Batch, BatchStream};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Transform};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops;
use isthmus_engine::policy::{Param, PolicyStore};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

use crate::filter::require_columns;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[transforms.score]
type = "detect"
inputs = ["sim"]
key = ["device"]
columns = ["temperature", "vibration", "pressure", "current"]
alpha = 0.05
warmup_rows = 30
"#;

/// The name of the column `detect` adds.
pub const SCORE_COLUMN: &str = "score";

/// Scores every row by how unusual it is for its key: an online EWMA z-score.
///
/// For each key (for example each device) and each listed column, `detect` keeps an
/// exponentially weighted mean and variance of the value and (with `changes = true`) of
/// its change from the key's previous value. A row's score is the largest, over the
/// columns, of `|x - mean| / std` of the value and of its change, computed with the
/// statistics *before* the row; the row then updates them. Scoring changes catches
/// faults that stay within the normal range but move unusually fast. The first value of a
/// column sets its mean. Rows are never dropped: the output is the input plus a `score`
/// column (Float64, never NULL). NULL, NaN and infinite values are skipped (a row without
/// any valid value scores 0). A key scores 0 until it has seen `warmup_rows` rows.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    /// Columns whose values identify the entity that has its own statistics, for example
    /// `["device"]`. Default: none (one set of statistics for the whole stream).
    #[serde(default)]
    pub key: Vec<String>,
    /// Numeric columns to score, for example `["temperature", "vibration"]`. Required.
    pub columns: Vec<String>,
    /// EWMA smoothing factor of the mean and variance, in (0, 1]: larger adapts faster.
    /// A number or a `"${policy.NAME}"` reference (changes apply from the next batch).
    /// Default: 0.05.
    #[serde(default = "default_alpha")]
    pub alpha: Param<f64>,
    /// Rows a key must have seen before its rows are scored (scores are 0.0 until then).
    /// Default: 30.
    #[serde(default = "default_warmup_rows")]
    pub warmup_rows: u64,
    /// Floor of the standard deviation, relative to the mean's magnitude (the absolute
    /// floor is 1e-9), so that near-constant series do not score huge on tiny changes.
    /// Default: 0.001.
    #[serde(default = "default_min_std")]
    pub min_std: f64,
    /// Also score each value's change from the key's previous value (its own EWMA
    /// statistics, with the same floor as the value's). Default: true.
    #[serde(default = "default_changes")]
    pub changes: bool,
}

fn default_changes() -> bool {
    true
}

fn default_alpha() -> Param<f64> {
    Param::Literal(0.05)
}

fn default_warmup_rows() -> u64 {
    30
}

fn default_min_std() -> f64 {
    0.001
}

/// The absolute floor of the standard deviation.
const ABS_MIN_STD: f64 = 1e-9;

/// Whether `alpha` is usable.
fn valid_alpha(alpha: f64) -> bool {
    alpha > 0.0 && alpha <= 1.0
}

/// A fast, deterministic hasher for keys (FxHash), shared by the keyed operators.
#[derive(Clone, Copy, Default)]
pub(crate) struct FxBuild;

/// The hasher of [`FxBuild`].
pub(crate) struct FxHasher(u64);

impl FxHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            self.add(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

impl BuildHasher for FxBuild {
    type Hasher = FxHasher;
    fn build_hasher(&self) -> FxHasher {
        FxHasher(0)
    }
}

/// Maps the key of every row to a dense group number.
enum KeyIndex {
    /// No key: one group.
    Global,
    /// One Utf8 key column: groups by string (NULL has its own group).
    Str {
        column: String,
        groups: HashMap<String, u32, FxBuild>,
        null_group: Option<u32>,
    },
    /// Any other key: groups by the row encoding of the key columns.
    Rows {
        columns: Vec<String>,
        converter: RowConverter,
        groups: HashMap<Vec<u8>, u32, FxBuild>,
    },
}

impl KeyIndex {
    fn new(key: &[String], schema: &SchemaRef) -> Result<Self, String> {
        if key.is_empty() {
            return Ok(KeyIndex::Global);
        }
        let fields: Vec<&Field> = key
            .iter()
            .map(|k| schema.field_with_name(k))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        if fields.len() == 1 && fields[0].data_type() == &DataType::Utf8 {
            return Ok(KeyIndex::Str {
                column: key[0].clone(),
                groups: HashMap::default(),
                null_group: None,
            });
        }
        let converter = RowConverter::new(
            fields
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| e.to_string())?;
        Ok(KeyIndex::Rows {
            columns: key.to_vec(),
            converter,
            groups: HashMap::default(),
        })
    }

    /// Writes the group of every row of `batch` into `out`; `next` is the number of groups
    /// so far and grows with new keys.
    fn groups(
        &mut self,
        batch: &RecordBatch,
        next: &mut u32,
        out: &mut Vec<u32>,
    ) -> Result<(), String> {
        out.clear();
        let n = batch.num_rows();
        match self {
            KeyIndex::Global => {
                if *next == 0 {
                    *next = 1;
                }
                out.resize(n, 0);
            }
            KeyIndex::Str {
                column,
                groups,
                null_group,
            } => {
                let col = batch
                    .column_by_name(column)
                    .ok_or_else(|| format!("missing key column `{column}`"))?;
                let strings = col
                    .as_string_opt::<i32>()
                    .ok_or_else(|| format!("key column `{column}` is not Utf8"))?;
                out.reserve(n);
                for i in 0..n {
                    let g = if strings.is_null(i) {
                        *null_group.get_or_insert_with(|| new_group(next))
                    } else {
                        let s = strings.value(i);
                        match groups.get(s) {
                            Some(g) => *g,
                            None => {
                                let g = new_group(next);
                                groups.insert(s.to_string(), g);
                                g
                            }
                        }
                    };
                    out.push(g);
                }
            }
            KeyIndex::Rows {
                columns,
                converter,
                groups,
            } => {
                let cols: Vec<ArrayRef> = columns
                    .iter()
                    .map(|k| {
                        batch
                            .column_by_name(k)
                            .cloned()
                            .ok_or_else(|| format!("missing key column `{k}`"))
                    })
                    .collect::<Result<_, _>>()?;
                let rows = converter
                    .convert_columns(&cols)
                    .map_err(|e| e.to_string())?;
                out.reserve(n);
                for row in rows.iter() {
                    let bytes = row.data();
                    let g = match groups.get(bytes) {
                        Some(g) => *g,
                        None => {
                            let g = new_group(next);
                            groups.insert(bytes.to_vec(), g);
                            g
                        }
                    };
                    out.push(g);
                }
            }
        }
        Ok(())
    }
}

fn new_group(next: &mut u32) -> u32 {
    let g = *next;
    *next += 1;
    g
}

/// Exponentially weighted statistics of one column for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ewma {
    /// Valid values seen.
    pub n: u64,
    /// Weighted mean.
    pub mean: f64,
    /// Weighted variance.
    pub var: f64,
}

impl Ewma {
    /// The z-score of `x` against the current statistics (0 before any value).
    #[inline]
    pub fn z(&self, x: f64, min_std: f64) -> f64 {
        if self.n == 0 {
            return 0.0;
        }
        let floor = (min_std * self.mean.abs()).max(ABS_MIN_STD);
        let z = (x - self.mean).abs() / self.var.sqrt().max(floor);
        if z.is_finite() { z } else { f64::MAX }
    }

    /// Adds `x` with smoothing factor `alpha`.
    #[inline]
    pub fn update(&mut self, x: f64, alpha: f64) {
        if self.n == 0 {
            self.mean = x;
            self.var = 0.0;
        } else {
            let d = x - self.mean;
            self.mean += alpha * d;
            self.var = (1.0 - alpha) * (self.var + alpha * d * d);
        }
        self.n += 1;
    }
}

/// Per-key EWMA scoring state of one worker.
pub struct Scorer {
    columns: Vec<String>,
    warmup_rows: u64,
    min_std: f64,
    keys: KeyIndex,
    groups: u32,
    /// Rows seen per group.
    rows_seen: Vec<u64>,
    /// Statistics per group and column (`group * columns + column`).
    stats: Vec<Ewma>,
    /// Whether changes are scored too.
    changes: bool,
    /// Statistics of the change from the previous value, per group and column.
    change_stats: Vec<Ewma>,
    /// The previous valid value, per group and column (NaN before the first).
    last: Vec<f64>,
    scratch_groups: Vec<u32>,
    scratch_seen: Vec<u64>,
}

impl Scorer {
    /// A scorer of `columns` of batches with `schema`, keyed by `key`.
    pub fn new(
        key: &[String],
        columns: &[String],
        warmup_rows: u64,
        min_std: f64,
        schema: &SchemaRef,
    ) -> Result<Self, String> {
        Ok(Scorer {
            columns: columns.to_vec(),
            warmup_rows,
            min_std,
            keys: KeyIndex::new(key, schema)?,
            groups: 0,
            rows_seen: Vec::new(),
            stats: Vec::new(),
            changes: false,
            change_stats: Vec::new(),
            last: Vec::new(),
            scratch_groups: Vec::new(),
            scratch_seen: Vec::new(),
        })
    }

    /// Also scores each value's change from the key's previous value.
    pub fn with_changes(mut self, changes: bool) -> Self {
        self.changes = changes;
        self
    }

    /// Scores every row of `batch` (in order) and updates the statistics.
    pub fn score(&mut self, batch: &RecordBatch, alpha: f64) -> Result<Float64Array, String> {
        let n = batch.num_rows();
        let n_cols = self.columns.len();
        self.keys
            .groups(batch, &mut self.groups, &mut self.scratch_groups)?;
        let groups = self.groups as usize;
        self.rows_seen.resize(groups, 0);
        self.stats.resize(groups * n_cols, Ewma::default());
        if self.changes {
            self.change_stats.resize(groups * n_cols, Ewma::default());
            self.last.resize(groups * n_cols, f64::NAN);
        }
        self.scratch_seen.clear();
        self.scratch_seen
            .extend(self.scratch_groups.iter().map(|&g| {
                let seen = &mut self.rows_seen[g as usize];
                *seen += 1;
                *seen - 1
            }));
        let mut scores = vec![0.0f64; n];
        for (c, name) in self.columns.iter().enumerate() {
            let col = batch
                .column_by_name(name)
                .ok_or_else(|| format!("missing column `{name}`"))?;
            let values = if col.data_type() == &DataType::Float64 {
                col.clone()
            } else {
                cast(col, &DataType::Float64)
                    .map_err(|e| format!("cannot read `{name}` as numbers: {e}"))?
            };
            let values = values.as_primitive::<Float64Type>();
            let nulls = values.logical_nulls();
            let (warmup, min_std) = (self.warmup_rows, self.min_std);
            for (i, (&x, (&g, &seen))) in values
                .values()
                .iter()
                .zip(self.scratch_groups.iter().zip(&self.scratch_seen))
                .enumerate()
            {
                if !x.is_finite() || nulls.as_ref().is_some_and(|nb| nb.is_null(i)) {
                    continue;
                }
                let slot = g as usize * n_cols + c;
                let stats = &mut self.stats[slot];
                if seen >= warmup {
                    let z = stats.z(x, min_std);
                    if z > scores[i] {
                        scores[i] = z;
                    }
                }
                if self.changes {
                    let last = self.last[slot];
                    if last.is_finite() {
                        let change = x - last;
                        let change_stats = &mut self.change_stats[slot];
                        if seen >= warmup && change_stats.n > 0 {
                            let floor = (min_std * stats.mean.abs()).max(ABS_MIN_STD);
                            let z = (change - change_stats.mean).abs()
                                / change_stats.var.sqrt().max(floor);
                            let z = if z.is_finite() { z } else { f64::MAX };
                            if z > scores[i] {
                                scores[i] = z;
                            }
                        }
                        change_stats.update(change, alpha);
                    }
                    self.last[slot] = x;
                }
                stats.update(x, alpha);
            }
        }
        Ok(Float64Array::from(scores))
    }
}

/// The live value of `alpha`, re-read only when the policy changes.
struct LiveAlpha {
    param: Param<f64>,
    policy: Arc<PolicyStore>,
    version: u64,
    value: f64,
}

impl LiveAlpha {
    fn new(param: Param<f64>, policy: Arc<PolicyStore>) -> Result<Self, String> {
        let value = param
            .resolve(&policy.snapshot())
            .filter(|a| valid_alpha(*a))
            .ok_or_else(|| format!("alpha {param:?} is not a number in (0, 1]"))?;
        Ok(LiveAlpha {
            version: policy.version(),
            param,
            policy,
            value,
        })
    }

    fn current(&mut self, component: &str) -> f64 {
        let version = self.policy.version();
        if version != self.version {
            self.version = version;
            match self
                .param
                .resolve(&self.policy.snapshot())
                .filter(|a| valid_alpha(*a))
            {
                Some(a) => self.value = a,
                None => tracing::warn!(
                    component,
                    "policy change gives alpha no number in (0, 1]; keeping {}",
                    self.value
                ),
            }
        }
        self.value
    }
}

impl Detect {
    fn output_schema(&self, input: &SchemaRef) -> SchemaRef {
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(SCORE_COLUMN, DataType::Float64, false));
        Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
    }
}

impl Transform for Detect {
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        require_columns("key", &self.key, input)?;
        if self.columns.is_empty() {
            return Err(Problem::at("columns", "no column to score")
                .with_help("list numeric columns, for example [\"temperature\"]"));
        }
        require_columns("columns", &self.columns, input)?;
        for c in &self.columns {
            let (_, f) = input.column_with_name(c).expect("checked above");
            if !f.data_type().is_numeric() {
                return Err(Problem::at(
                    "columns",
                    format!("`{c}` is {}, not a number", f.data_type()),
                )
                .with_help("score numeric columns only"));
            }
        }
        match &self.alpha {
            Param::Literal(a) if !valid_alpha(*a) => {
                return Err(
                    Problem::at("alpha", format!("alpha must be in (0, 1], not {a}"))
                        .with_help("for example 0.05"),
                );
            }
            Param::Policy(name) => match cx.policy.get(name).and_then(|v| v.as_f64()) {
                Some(a) if valid_alpha(a) => {}
                _ => {
                    return Err(Problem::at(
                        "alpha",
                        format!("policy `{name}` must be a number in (0, 1]"),
                    )
                    .with_help(format!("declare `{name} = 0.05` under [policy.tunables]")));
                }
            },
            Param::Literal(_) => {}
        }
        if !(self.min_std.is_finite() && self.min_std >= 0.0) {
            return Err(Problem::at(
                "min_std",
                format!(
                    "min_std must be a non-negative number, not {}",
                    self.min_std
                ),
            ));
        }
        if input.column_with_name(SCORE_COLUMN).is_some() {
            return Err(Problem::general("the input already has a column `score`")
                .with_help("drop or rename it with a `map` transform before `detect`"));
        }
        Ok(Outputs::main(self.output_schema(input)))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let schema = cx.required_input_schema()?;
        let out_schema = self.output_schema(&schema);
        let mut scorer = Scorer::new(
            &self.key,
            &self.columns,
            self.warmup_rows,
            self.min_std,
            &schema,
        )
        .map_err(|e| cx.error(e))?
        .with_changes(self.changes);
        let mut alpha =
            LiveAlpha::new(self.alpha.clone(), cx.policy.clone()).map_err(|e| cx.error(e))?;
        let name = cx.name.clone();
        let input = ops::exchange_by_key(input, self.key.clone());
        let output = input.unary::<CapacityContainerBuilder<Vec<Batch>>, _, _, _>(Pipeline, "Detect", move |_, _| {
            move |input, output| {
                input.for_each_stamp(|cap, data| {
                    let mut session = output.session(&cap);
                    for container in data {
                        for batch in container.drain(..) {
                            if batch.num_rows() == 0 {
                                continue;
                            }
                            let a = alpha.current(&name);
                            let scores = scorer.score(&batch.data, a).unwrap_or_else(|e| {
                                // Cannot happen after validation; keep the rows, unscored.
                                tracing::error!(component = %name, "cannot score a batch: {e}");
                                Float64Array::from(vec![0.0; batch.num_rows()])
                            });
                            let mut columns = batch.data.columns().to_vec();
                            columns.push(Arc::new(scores));
                            match RecordBatch::try_new(out_schema.clone(), columns) {
                                Ok(out) => session.give(Batch::derived(out, batch.created_ns)),
                                Err(e) => tracing::error!(component = %name, "cannot build the scored batch: {e}"),
                            }
                        }
                    }
                });
            }
        });
        Ok(Outputs::main(output))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use arrow::array::{Int64Array, StringArray};
    use isthmus_engine::batch::{Time, schema_with_time, time_array};
    use isthmus_engine::policy::{PolicyChange, PolicyValue};
    use isthmus_engine::spec::{NodeSpec, Role};

    use super::*;
    use crate::window::testkit::{Rng, run};

    fn schema() -> SchemaRef {
        schema_with_time([
            Field::new("device", DataType::Utf8, true),
            Field::new("temperature", DataType::Float64, true),
            Field::new("level", DataType::Int64, true),
        ])
    }

    fn batch(rows: &[(i64, &str, Option<f64>, Option<i64>)]) -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                time_array(rows.iter().map(|r| r.0).collect()),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| Some(r.1)).collect::<Vec<_>>(),
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

    fn detect(key: &[&str], warmup: u64) -> Detect {
        Detect {
            key: key.iter().map(|s| s.to_string()).collect(),
            columns: vec!["temperature".into(), "level".into()],
            alpha: Param::Literal(0.05),
            warmup_rows: warmup,
            min_std: 0.001,
            changes: false,
        }
    }

    fn assert_close(got: &[f64], expected: &[f64]) {
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() <= 1e-9 * e.abs().max(1.0),
                "{got:?} != {expected:?}"
            );
        }
    }

    fn scorer(d: &Detect) -> Scorer {
        Scorer::new(&d.key, &d.columns, d.warmup_rows, d.min_std, &schema()).unwrap()
    }

    #[test]
    fn follows_the_formula() {
        let mut s = scorer(&detect(&[], 1));
        let b = batch(&[
            (0, "a", Some(1.0), None),
            (1, "a", Some(3.0), None),
            (2, "a", Some(2.0), None),
            (3, "a", Some(4.0), None),
        ]);
        let scores = s.score(&b, 0.5).unwrap();
        // Row 0: warm-up. Row 1: |3-1| / max(0, 0.001*1); then mean 2, var 1. Row 2: 0;
        // then var 0.5. Row 3: |4-2| / sqrt(0.5).
        assert_close(scores.values(), &[0.0, 2000.0, 0.0, 2.0 / 0.5f64.sqrt()]);
        // Ints are scored too; a row with no valid value scores 0.
        let b = batch(&[(4, "a", None, Some(7)), (5, "a", None, None)]);
        assert_eq!(s.score(&b, 0.5).unwrap().values().to_vec(), vec![0.0, 0.0]);
    }

    #[test]
    fn step_change_scores_high_and_constants_stay_finite() {
        let mut s = scorer(&detect(&["device"], 30));
        let mut rows = Vec::new();
        for i in 0..200 {
            let noise = if i % 2 == 0 { 0.1 } else { -0.1 };
            let temp = if i < 150 { 20.0 + noise } else { 30.0 + noise };
            rows.push((i, "a", Some(temp), Some(5)));
        }
        let scores = s.score(&batch(&rows[..100]), 0.05).unwrap();
        let mut all = scores.values().to_vec();
        all.extend(s.score(&batch(&rows[100..]), 0.05).unwrap().values().iter());
        assert!(all[..30].iter().all(|z| *z == 0.0));
        assert!(all[30..150].iter().all(|z| *z < 3.0), "{:?}", &all[30..150]);
        assert!(all[150] > 10.0, "{}", all[150]);
        assert!(all.iter().all(|z| z.is_finite()));

        // Constant series (zero and non-zero) never give NaN or infinity.
        let mut s = scorer(&detect(&[], 0));
        let zeros: Vec<_> = (0..50).map(|i| (i, "z", Some(0.0), Some(0))).collect();
        let scores = s.score(&batch(&zeros), 0.05).unwrap();
        assert!(scores.values().iter().all(|z| *z == 0.0));
        let mut s = scorer(&detect(&[], 0));
        let mut rows: Vec<_> = (0..50).map(|i| (i, "z", Some(7.5), Some(3))).collect();
        rows.push((50, "z", Some(f64::NAN), Some(3)));
        rows.push((51, "z", Some(f64::INFINITY), Some(3)));
        let scores = s.score(&batch(&rows), 0.05).unwrap();
        assert!(scores.values().iter().all(|z| *z == 0.0), "{:?}", scores);
    }

    #[test]
    fn state_is_per_key() {
        let d = detect(&["device"], 5);
        let mut s = scorer(&d);
        let rows: Vec<_> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    (i, "small", Some(10.0 + (i % 4) as f64 * 0.1), Some(1))
                } else {
                    (i, "big", Some(1000.0 + (i % 3) as f64), Some(1))
                }
            })
            .collect();
        let scores = s.score(&batch(&rows), 0.1).unwrap();
        assert!(scores.values().iter().all(|z| *z < 5.0), "{scores:?}");
        // A multi-column key (row encoding) groups the same way.
        let d2 = Detect {
            key: vec!["device".into(), "level".into()],
            ..d
        };
        let mut s2 = scorer(&d2);
        assert_eq!(s2.score(&batch(&rows), 0.1).unwrap(), scores);
    }

    #[test]
    fn alpha_follows_the_policy() {
        let policy = Arc::new(PolicyStore::new(
            BTreeMap::from([("alpha".to_string(), PolicyValue::Float(0.5))]),
            BTreeSet::from(["alpha".to_string()]),
        ));
        let mut live = LiveAlpha::new(Param::Policy("alpha".into()), policy.clone()).unwrap();
        assert_eq!(live.current("t"), 0.5);
        let change = |v: f64| PolicyChange {
            name: "alpha".into(),
            scope: None,
            value: PolicyValue::Float(v),
            diff: 1,
            version: 2,
        };
        policy.apply(&[change(0.25)]);
        assert_eq!(live.current("t"), 0.25);
        policy.apply(&[change(7.0)]);
        assert_eq!(live.current("t"), 0.25);

        // End to end: alpha 0.5 from the policy gives the hand-computed scores.
        policy.apply(&[change(0.5)]);
        let d = Detect {
            alpha: Param::Policy("alpha".into()),
            ..detect(&[], 1)
        };
        let b = batch(&[
            (0, "a", Some(1.0), None),
            (1, "a", Some(3.0), None),
            (2, "a", Some(2.0), None),
            (3, "a", Some(4.0), None),
        ]);
        let out = run(Arc::new(d), schema(), vec![(0, b)], 1, policy);
        let scores: Vec<f64> = out
            .main
            .iter()
            .flat_map(|(_, b)| b.column(4).as_primitive::<Float64Type>().values().to_vec())
            .collect();
        assert_close(&scores, &[0.0, 2000.0, 0.0, 2.0 / 0.5f64.sqrt()]);
    }

    #[test]
    fn check_problems() {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let snapshot = PolicyStore::new(
            BTreeMap::from([("a".to_string(), PolicyValue::Str("x".into()))]),
            BTreeSet::new(),
        )
        .snapshot();
        let channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &snapshot,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        let ok = detect(&["device"], 3).schemas(&schema(), &cx).unwrap();
        assert_eq!(ok.main.field(4).name(), "score");
        let e = Detect {
            columns: vec!["temprature".into()],
            ..detect(&[], 3)
        }
        .schemas(&schema(), &cx)
        .map(|o| o.main)
        .expect_err("a problem");
        assert_eq!(e.key.as_deref(), Some("columns"));
        assert!(e.help.unwrap().contains("did you mean `temperature`"));
        let e = detect(&["devices"], 3)
            .schemas(&schema(), &cx)
            .map(|o| o.main)
            .expect_err("a problem");
        assert_eq!(e.key.as_deref(), Some("key"));
        let e = Detect {
            columns: vec!["device".into()],
            ..detect(&[], 3)
        }
        .schemas(&schema(), &cx)
        .map(|o| o.main)
        .expect_err("a problem");
        assert!(e.message.contains("not a number"));
        let e = Detect {
            alpha: Param::Literal(1.5),
            ..detect(&[], 3)
        }
        .schemas(&schema(), &cx)
        .map(|o| o.main)
        .expect_err("a problem");
        assert_eq!(e.key.as_deref(), Some("alpha"));
        let e = Detect {
            alpha: Param::Policy("a".into()),
            ..detect(&[], 3)
        }
        .schemas(&schema(), &cx)
        .map(|o| o.main)
        .expect_err("a problem");
        assert_eq!(e.key.as_deref(), Some("alpha"));
    }

    #[test]
    fn one_and_two_workers_agree() {
        let mut rng = Rng(7);
        let devices = ["d0", "d1", "d2", "d3", "d4", "d5", "d6"];
        let mut input: Vec<(Time, RecordBatch)> = Vec::new();
        let mut ts = 0i64;
        for _ in 0..20 {
            let rows: Vec<_> = (0..50)
                .map(|_| {
                    ts += 1;
                    let d = rng.below(devices.len() as u64) as usize;
                    let temp = (d as f64) * 10.0
                        + rng.below(100) as f64 / 10.0
                        + if rng.below(50) == 0 { 40.0 } else { 0.0 };
                    (ts, devices[d], Some(temp), Some(rng.below(5) as i64))
                })
                .collect();
            input.push((rows[0].0 as Time, batch(&rows)));
        }
        let d = Arc::new(detect(&["device"], 10));
        let mut results = Vec::new();
        for workers in [1, 2] {
            let out = run(
                d.clone(),
                schema(),
                input.clone(),
                workers,
                Arc::new(PolicyStore::new(Default::default(), Default::default())),
            );
            let mut rows: Vec<(i64, u64)> = Vec::new();
            for (_, b) in &out.main {
                let ts = b
                    .column(0)
                    .as_primitive::<arrow::datatypes::TimestampMillisecondType>();
                let score = b.column(4).as_primitive::<Float64Type>();
                rows.extend((0..b.num_rows()).map(|i| (ts.value(i), score.value(i).to_bits())));
            }
            rows.sort();
            assert_eq!(rows.len(), 1000);
            results.push(rows);
        }
        assert_eq!(results[0], results[1]);
        assert!(results[0].iter().any(|(_, s)| f64::from_bits(*s) > 5.0));
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["score"].as_table().unwrap().clone();
        t.remove("type");
        t.remove("inputs");
        let d: Detect = t.try_into().unwrap();
        assert_eq!(d.alpha, Param::Literal(0.05));
        assert_eq!(d.columns.len(), 4);
    }
}
