//! `policy`: rules over fleet results that emit only the policies that changed.
//!
//! The input is a stream of additions and retractions (`diff` = `+1` / `-1`), normally the
//! output of a `fleet` transform. The operator keeps the rows that currently hold, per value
//! of the `scope` column (a multiset: `ts` and `diff` are not part of a row's identity). For
//! each event time, once the watermark has passed it, it re-evaluates the rules for the
//! scope values whose rows changed at that time: the first rule whose `when` holds for one
//! of the scope's rows gives the policies the scope should have. These are compared with
//! what the operator emitted before, and only the differences go out, as a policy stream
//! (`isthmus_engine::policy::policy_change_schema`): `-1` for a value that no longer holds,
//! `+1` for a new one, with `version` = the event time in milliseconds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::{can_cast_types, cast, take_record_batch};
use arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMillisecondType};
use arrow::row::{OwnedRow, Row, RowConverter, SortField};
use isthmus_engine::batch::{Batch, BatchStream, TIME_COLUMN, Time, time_array, time_type};
use isthmus_engine::ops::{self, DeadLetters};
use isthmus_engine::policy::{
    PolicyChange, PolicyScope, PolicyValue, changes_to_batch, policy_change_schema,
    signed_changes_to_batch, signed_policy_change_schema,
};
use isthmus_engine::signing::{ALL_NODES, PolicySigner};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Outputs, Problem, Transform};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::expr::CompiledExpr;

/// The input column holding `+1` (the row now holds) or `-1` (it no longer holds).
pub const DIFF: &str = "diff";

/// An example pipeline fragment (with the `fleet` transform it reads).
pub const EXAMPLE: &str = r#"[transforms.fleet_for_policy]
type = "fleet"
inputs = ["sim"]
group_by = ["plant", "line"]
anomalous_for = "60s"

[transforms.policy]
type = "policy"
inputs = ["fleet_for_policy"]
scope = "line"

[[transforms.policy.rules]]
when = "anomalous_devices >= 3"
set = { threshold = 2.5, sample_every = 1 }

[[transforms.policy.rules]]
when = "anomalous_devices >= 1"
set = { threshold = 3.5 }
"#;

/// Turns fleet results into policy changes for the edge: rules map the current anomaly
/// counts of each line (or plant, or device) to policies, and only changes are emitted.
///
/// The input is a stream of additions and retractions with a `diff` column (`+1`/`-1`),
/// normally the output of a `fleet` transform. For every value of the `scope` column, the
/// rules are tried in order against the rows that currently hold for that value; the first
/// rule whose `when` is true for at least one of them sets its policies for that scope
/// (scope key = the `scope` column's name, scope value = the column's value). When no rule
/// matches (or the scope has no rows left, e.g. its fleet count dropped to zero and was
/// retracted), the scope has no policies. Whenever that outcome changes, the output (a policy
/// stream for a `reconfigure` sink, usually through a channel) retracts the old value
/// (`diff = -1`) and sets the new one (`diff = +1`); `version` is the event time in
/// milliseconds. Nothing is emitted while nothing changes. A rule's optional `action` goes
/// to the `actions` side output while that rule is the one matching a scope. Rows with a
/// null scope, `diff` or
/// `ts` go to the `dead_letter` output.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRules {
    /// The input column whose value scopes a policy, for example `"line"`: the edge applies
    /// an override to the rows whose column of that name has that value. Required.
    pub scope: String,
    /// The rules, as an array of tables (`[[transforms.NAME.rules]]`), tried in order for
    /// each scope value: the first one that matches wins. At least one.
    pub rules: Vec<PolicyRule>,
    /// An ed25519 secret key file made by `isthmus keygen` (relative to the pipeline file):
    /// every change is signed with it, and edges whose `[policy] trusted_keys` list its
    /// public key accept only changes it signed. The output then also has the columns
    /// `node`, `signer` (the public key) and `signature`. Optional.
    pub signing_key: Option<String>,
    /// The node the changes are addressed to, written in the `node` column (edges skip
    /// changes addressed to other nodes; a `kafka` sink can key messages by it). Default
    /// `"*"`: every node. Setting it (or `signing_key`) adds the columns `node`, `signer`
    /// and `signature` to the output.
    pub node: Option<String>,
}

/// One rule of a `policy` transform: a condition and the policies it sets.
#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// A SQL boolean expression over the input columns (DataFusion syntax), for example
    /// `"anomalous_devices >= 3"`. It matches a scope when it is true for one of the scope's
    /// current rows (`diff` then holds the row's multiplicity, normally 1, and `ts` the time
    /// of evaluation).
    pub when: String,
    /// The policies to set while the rule matches: tunable name → value (a boolean, number
    /// or string), for example `{ threshold = 2.5 }`. At least one.
    #[schemars(with = "BTreeMap<String, ScalarSchema>")]
    #[serde(default)]
    pub set: BTreeMap<String, PolicyValue>,
    /// A remediation action, for example `"open a work order: inspect the line"`: while the
    /// rule is the one that matches a scope, the `actions` side output holds a row for it
    /// (`+1` when it starts, `-1` when it ends), to send to a work-order topic. Optional;
    /// a rule needs `set`, `action` or both.
    pub action: Option<String>,
}

/// The name of the side output carrying remediation actions.
pub const ACTIONS: &str = "actions";

/// The schema of the `actions` side output: one row per action that starts (`diff = +1`)
/// or ends (`-1`) for a scope, with the index of the rule and the version (event time, ms).
pub fn actions_schema() -> SchemaRef {
    isthmus_engine::batch::schema_with_time([
        arrow::datatypes::Field::new("scope_key", DataType::Utf8, false),
        arrow::datatypes::Field::new("scope_value", DataType::Utf8, false),
        arrow::datatypes::Field::new("rule", DataType::Int64, false),
        arrow::datatypes::Field::new("action", DataType::Utf8, false),
        arrow::datatypes::Field::new("diff", DataType::Int64, false),
        arrow::datatypes::Field::new("version", DataType::Int64, false),
    ])
}

/// One action starting or ending for a scope value: (scope value, rule, action, diff).
type ActionChange = (String, usize, String, i64);

fn actions_to_batch(scope_key: &str, changes: &[ActionChange], time: Time) -> RecordBatch {
    let n = changes.len();
    RecordBatch::try_new(
        actions_schema(),
        vec![
            time_array(vec![time as i64; n]),
            Arc::new(arrow::array::StringArray::from_iter_values(
                changes.iter().map(|_| scope_key),
            )),
            Arc::new(arrow::array::StringArray::from_iter_values(
                changes.iter().map(|c| c.0.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                changes.iter().map(|c| c.1 as i64),
            )),
            Arc::new(arrow::array::StringArray::from_iter_values(
                changes.iter().map(|c| c.2.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.3))),
            Arc::new(Int64Array::from_iter_values(
                changes.iter().map(|_| time as i64),
            )),
        ],
    )
    .expect("actions schema matches")
}

/// The JSON schema of a policy value: a TOML scalar.
#[derive(schemars::JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)]
enum ScalarSchema {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
}

/// Where the columns the operator needs are in the input.
struct Layout {
    ts: usize,
    diff: usize,
    scope: usize,
    /// Every column but `ts` and `diff`: a row's identity.
    identity: Vec<usize>,
}

impl PolicyRules {
    /// Checks the input schema and compiles every condition against it.
    fn compile(&self, input: &SchemaRef) -> Result<(Layout, Vec<CompiledExpr>), Problem> {
        let names = || {
            let names: Vec<&str> = input.fields().iter().map(|f| f.name().as_str()).collect();
            format!("the input has the columns {}", names.join(", "))
        };
        let ts = match input.index_of(TIME_COLUMN) {
            Ok(i) if *input.field(i).data_type() == time_type() => i,
            _ => {
                return Err(Problem::general(format!(
                    "the input has no event-time column `{TIME_COLUMN}` of type Timestamp(Millisecond)"
                )));
            }
        };
        let diff = match input.index_of(DIFF) {
            Ok(i) if *input.field(i).data_type() == DataType::Int64 => i,
            Ok(i) => {
                return Err(Problem::general(format!(
                    "the input column `{DIFF}` has type {}, expected Int64",
                    input.field(i).data_type()
                ))
                .with_help("read the output of a `fleet` transform"));
            }
            Err(_) => {
                return Err(Problem::general(format!(
                    "the input has no `{DIFF}` column (+1 for rows that now hold, -1 for rows that no longer hold)"
                ))
                .with_help("read the output of a `fleet` transform"));
            }
        };
        let scope = input.index_of(&self.scope).map_err(|_| {
            Problem::at("scope", format!("the input has no column `{}`", self.scope))
                .with_help(names())
        })?;
        if scope == ts || scope == diff {
            return Err(Problem::at(
                "scope",
                format!("`{}` cannot be the scope column", self.scope),
            )
            .with_help("use a column such as `line`, `plant` or `device`"));
        }
        if input.field(scope).data_type().is_nested()
            || !can_cast_types(input.field(scope).data_type(), &DataType::Utf8)
        {
            return Err(Problem::at(
                "scope",
                format!(
                    "column `{}` has type {} which cannot be converted to text",
                    self.scope,
                    input.field(scope).data_type()
                ),
            ));
        }
        let identity: Vec<usize> = (0..input.fields().len())
            .filter(|&i| i != ts && i != diff)
            .collect();
        let fields: Vec<SortField> = identity
            .iter()
            .map(|&i| SortField::new(input.field(i).data_type().clone()))
            .collect();
        if !RowConverter::supports_fields(&fields) {
            return Err(Problem::general(
                "the input has columns of a type that cannot be compared (nested types)",
            ));
        }
        if self.rules.is_empty() {
            return Err(Problem::at(
                "rules",
                "no rules: add at least one [[rules]] table with `when` and `set`",
            ));
        }
        let mut compiled = Vec::with_capacity(self.rules.len());
        for (i, rule) in self.rules.iter().enumerate() {
            let expr = CompiledExpr::compile(&rule.when, input).map_err(|e| {
                Problem::at(
                    "rules",
                    format!("rule {i}: `when = \"{}\"`: {e}", rule.when),
                )
                .with_help(names())
            })?;
            if expr.data_type != DataType::Boolean {
                return Err(Problem::at(
                    "rules",
                    format!(
                        "rule {i}: `when = \"{}\"` yields {}, not a boolean",
                        rule.when, expr.data_type
                    ),
                )
                .with_help("write a condition, for example \"anomalous_devices >= 3\""));
            }
            if rule.set.is_empty() && rule.action.is_none() {
                return Err(Problem::at("rules", format!("rule {i}: neither `set` nor `action`"))
                    .with_help("name at least one policy, for example set = { threshold = 2.5 }, or an action"));
            }
            if let Some(name) = rule.set.keys().find(|k| k.trim().is_empty()) {
                return Err(Problem::at(
                    "rules",
                    format!("rule {i}: `set` has an empty policy name `{name}`"),
                ));
            }
            compiled.push(expr);
        }
        Ok((
            Layout {
                ts,
                diff,
                scope,
                identity,
            },
            compiled,
        ))
    }
}

fn to_text(column: &ArrayRef) -> Result<ArrayRef, String> {
    if *column.data_type() == DataType::Utf8 {
        Ok(column.clone())
    } else {
        cast(column, &DataType::Utf8)
            .map_err(|e| format!("cannot convert the scope column to text: {e}"))
    }
}

/// The per-worker state of the operator.
struct RuleState {
    name: String,
    scope_key: String,
    schema: SchemaRef,
    layout: Layout,
    converter: RowConverter,
    rules: Vec<(CompiledExpr, BTreeMap<String, PolicyValue>)>,
    /// The rows that currently hold, with their multiplicity, per scope value.
    rows: BTreeMap<String, BTreeMap<OwnedRow, i64>>,
    /// The policies emitted and not retracted, per scope value.
    emitted: BTreeMap<String, BTreeMap<String, PolicyValue>>,
    /// Each rule's action, if it has one.
    actions: Vec<Option<String>>,
    /// The action in force per scope value: the rule's index.
    active_actions: BTreeMap<String, usize>,
}

impl RuleState {
    /// Checks a batch as it arrives. Returns the rows to keep (the ones with nulls in `ts`,
    /// `diff` or the scope go to `dead`).
    fn admit(
        &self,
        batch: RecordBatch,
        msg_time: Time,
        dead: &mut DeadLetters,
    ) -> Option<RecordBatch> {
        let matches = batch.num_columns() == self.schema.fields().len()
            && batch
                .columns()
                .iter()
                .zip(self.schema.fields())
                .all(|(c, f)| c.data_type() == f.data_type());
        if !matches {
            dead.push_batch(
                msg_time,
                &self.name,
                "batch does not match the input schema",
                &batch,
            );
            return None;
        }
        let l = &self.layout;
        let nulls = batch.column(l.ts).null_count()
            + batch.column(l.diff).null_count()
            + batch.column(l.scope).null_count();
        if nulls == 0 {
            return Some(batch);
        }
        let (ts, diff, scope) = (
            batch.column(l.ts),
            batch.column(l.diff),
            batch.column(l.scope),
        );
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for i in 0..batch.num_rows() as u32 {
            let row = i as usize;
            if ts.is_null(row) || diff.is_null(row) || scope.is_null(row) {
                bad.push(i)
            } else {
                good.push(i)
            }
        }
        let bad_rows =
            take_record_batch(&batch, &UInt32Array::from(bad)).expect("row indices in bounds");
        dead.push_batch(msg_time, &self.name, "null ts, diff or scope", &bad_rows);
        Some(take_record_batch(&batch, &UInt32Array::from(good)).expect("row indices in bounds"))
    }

    /// Applies the rows of time `time` and returns the policy changes they cause.
    fn process(
        &mut self,
        time: Time,
        batches: &[RecordBatch],
        dead: &mut DeadLetters,
    ) -> (Vec<PolicyChange>, Vec<ActionChange>) {
        let mut changed: BTreeSet<String> = BTreeSet::new();
        for batch in batches {
            let l = &self.layout;
            let scope = match to_text(batch.column(l.scope)) {
                Ok(s) => s,
                Err(reason) => {
                    dead.push_batch(time, &self.name, &reason, batch);
                    continue;
                }
            };
            let scope = scope.as_string::<i32>();
            let diffs = batch.column(l.diff).as_primitive::<Int64Type>();
            let columns: Vec<ArrayRef> = l
                .identity
                .iter()
                .map(|&i| batch.column(i).clone())
                .collect();
            let rows = match self.converter.convert_columns(&columns) {
                Ok(r) => r,
                Err(e) => {
                    dead.push_batch(time, &self.name, &format!("cannot encode rows: {e}"), batch);
                    continue;
                }
            };
            for i in 0..batch.num_rows() {
                let diff = diffs.value(i);
                if diff == 0 {
                    continue;
                }
                let value = scope.value(i);
                if !self.rows.contains_key(value) {
                    self.rows.insert(value.to_string(), BTreeMap::new());
                }
                let bucket = self.rows.get_mut(value).expect("inserted above");
                match bucket.entry(rows.row(i).owned()) {
                    std::collections::btree_map::Entry::Occupied(mut o) => {
                        *o.get_mut() += diff;
                        if *o.get() == 0 {
                            o.remove();
                        }
                    }
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert(diff);
                    }
                }
                if !changed.contains(value) {
                    changed.insert(value.to_string());
                }
            }
        }
        if changed.is_empty() {
            return (Vec::new(), Vec::new());
        }

        // The current rows of the changed scopes, in one batch; every rule evaluated once.
        let mut eval_rows: Vec<Row<'_>> = Vec::new();
        let mut multiplicity: Vec<i64> = Vec::new();
        let mut ranges: Vec<(usize, usize)> = Vec::with_capacity(changed.len());
        for value in &changed {
            let start = eval_rows.len();
            if let Some(bucket) = self.rows.get(value) {
                for (row, m) in bucket.iter().filter(|(_, m)| **m > 0) {
                    eval_rows.push(row.row());
                    multiplicity.push(*m);
                }
            }
            ranges.push((start, eval_rows.len()));
        }
        let mut matched: Vec<Option<arrow::array::BooleanArray>> = vec![None; self.rules.len()];
        if !eval_rows.is_empty() {
            match self.evaluation_batch(time, eval_rows, multiplicity) {
                Ok(batch) => {
                    for (r, (expr, _)) in self.rules.iter().enumerate() {
                        match expr.evaluate(&batch) {
                            Ok(values) => matched[r] = values.as_boolean_opt().cloned(),
                            Err(e) => dead.push_batch(
                                time,
                                &self.name,
                                &format!("rule {r}: `when` failed: {e}"),
                                &batch,
                            ),
                        }
                    }
                }
                Err(e) => {
                    tracing::error!(component = %self.name, "policy rules: cannot decode rows: {e}")
                }
            }
        }

        let mut changes = Vec::new();
        let mut action_changes = Vec::new();
        for (value, (start, end)) in changed.iter().zip(ranges) {
            let winner = matched.iter().position(|m| {
                m.as_ref()
                    .is_some_and(|m| (start..end).any(|i| m.is_valid(i) && m.value(i)))
            });
            let action = winner.filter(|r| self.actions[*r].is_some());
            let previous = self.active_actions.get(value).copied();
            if previous != action {
                if let Some(r) = previous {
                    let text = self.actions[r].clone().unwrap_or_default();
                    action_changes.push((value.clone(), r, text, -1));
                    self.active_actions.remove(value);
                }
                if let Some(r) = action {
                    let text = self.actions[r].clone().unwrap_or_default();
                    action_changes.push((value.clone(), r, text, 1));
                    self.active_actions.insert(value.clone(), r);
                }
            }
            let desired = winner.map(|r| &self.rules[r].1);
            let empty = BTreeMap::new();
            let before = self.emitted.get(value).unwrap_or(&empty);
            let after = desired.unwrap_or(&empty);
            let scope = || {
                Some(PolicyScope {
                    key: self.scope_key.clone(),
                    value: value.clone(),
                })
            };
            for (name, old) in before {
                if after.get(name) != Some(old) {
                    changes.push(PolicyChange {
                        name: name.clone(),
                        scope: scope(),
                        value: old.clone(),
                        diff: -1,
                        version: time,
                    });
                }
            }
            for (name, new) in after {
                if before.get(name) != Some(new) {
                    changes.push(PolicyChange {
                        name: name.clone(),
                        scope: scope(),
                        value: new.clone(),
                        diff: 1,
                        version: time,
                    });
                }
            }
            if after.is_empty() {
                self.emitted.remove(value);
            } else if before != after {
                self.emitted.insert(value.clone(), after.clone());
            }
            if self.rows.get(value).is_some_and(|b| b.is_empty()) {
                self.rows.remove(value);
            }
        }
        (changes, action_changes)
    }

    /// Rebuilds input-shaped rows (ts = `time`, diff = multiplicity) to evaluate the rules on.
    fn evaluation_batch(
        &self,
        time: Time,
        rows: Vec<Row<'_>>,
        multiplicity: Vec<i64>,
    ) -> Result<RecordBatch, String> {
        let n = rows.len();
        let mut decoded = self
            .converter
            .convert_rows(rows)
            .map_err(|e| e.to_string())?
            .into_iter();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        let mut multiplicity = Some(multiplicity);
        for i in 0..self.schema.fields().len() {
            if i == self.layout.ts {
                columns.push(time_array(vec![time as i64; n]));
            } else if i == self.layout.diff {
                columns.push(Arc::new(Int64Array::from(
                    multiplicity.take().unwrap_or_default(),
                )));
            } else {
                columns.push(decoded.next().ok_or("row decoding lost a column")?);
            }
        }
        RecordBatch::try_new(self.schema.clone(), columns).map_err(|e| e.to_string())
    }
}

/// Rows of one time waiting for the watermark, with capabilities for the main and the
/// dead-letter output.
type Pending = (
    Capability<Time>,
    Capability<Time>,
    Capability<Time>,
    Vec<RecordBatch>,
);

/// Splits a batch by effective time (max of the row's `ts` and the message time).
fn split_by_time(batch: RecordBatch, ts: usize, msg_time: Time) -> Vec<(Time, RecordBatch)> {
    let times = batch.column(ts).as_primitive::<TimestampMillisecondType>();
    let effective = |i: usize| (times.value(i).max(0) as Time).max(msg_time);
    if batch.num_rows() == 0 {
        return Vec::new();
    }
    let first = effective(0);
    if (1..batch.num_rows()).all(|i| effective(i) == first) {
        return vec![(first, batch)];
    }
    let mut by_time: BTreeMap<Time, Vec<u32>> = BTreeMap::new();
    for i in 0..batch.num_rows() {
        by_time.entry(effective(i)).or_default().push(i as u32);
    }
    by_time
        .into_iter()
        .map(|(t, rows)| {
            (
                t,
                take_record_batch(&batch, &UInt32Array::from(rows)).expect("row indices in bounds"),
            )
        })
        .collect()
}

impl PolicyRules {
    /// Whether the output carries `node`, `signer` and `signature`.
    fn addressed(&self) -> bool {
        self.signing_key.is_some() || self.node.is_some()
    }

    fn output_schema(&self) -> SchemaRef {
        if self.addressed() {
            signed_policy_change_schema()
        } else {
            policy_change_schema()
        }
    }

    /// Reads the signing key, if any.
    fn signer(
        &self,
        resolve: impl Fn(&str) -> std::path::PathBuf,
    ) -> Result<Option<PolicySigner>, Problem> {
        let Some(path) = &self.signing_key else {
            return Ok(None);
        };
        if PolicySigner::is_secret_text(path) {
            return Err(Problem::at(
                "signing_key",
                "this is the secret key itself: give the path of the `.key` file instead (and keep the key out of pipeline files)",
            ));
        }
        PolicySigner::from_file(&resolve(path))
            .map(Some)
            .map_err(|e| {
                Problem::at("signing_key", e.to_string())
                    .with_help("make a key pair with `isthmus keygen --out DIR --name NAME`")
            })
    }
}

impl Transform for PolicyRules {
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        self.compile(input)?;
        self.signer(|p| cx.path(p))?;
        if self.node.as_deref().is_some_and(|n| n.trim().is_empty()) {
            return Err(Problem::at("node", "the node is empty")
                .with_help("name a node id, or leave `node` out to address every node (`*`)"));
        }
        Ok(Outputs::main(self.output_schema())
            .with_side(ops::DEAD_LETTER, ops::dead_letter_schema())
            .with_side(ACTIONS, actions_schema()))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let schema = cx.required_input_schema()?;
        let (layout, compiled) = self.compile(&schema).map_err(|p| cx.error(p.message))?;
        let fields = layout
            .identity
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let converter = RowConverter::new(fields).map_err(|e| cx.error(e))?;
        let mut state = RuleState {
            name: cx.name.clone(),
            scope_key: self.scope.clone(),
            schema,
            layout,
            converter,
            rules: compiled
                .into_iter()
                .zip(self.rules.iter().map(|r| r.set.clone()))
                .collect(),
            rows: BTreeMap::new(),
            emitted: BTreeMap::new(),
            actions: self.rules.iter().map(|r| r.action.clone()).collect(),
            active_actions: BTreeMap::new(),
        };
        let metrics = cx.metrics.clone();
        let signer = self
            .signer(|p| cx.path(p))
            .map_err(|p| cx.error(p.message))?;
        let addressed = self.addressed();
        let node = self.node.clone().unwrap_or_else(|| ALL_NODES.to_string());

        // Each scope value lives on one worker.
        let input = ops::exchange_by_key(input, vec![self.scope.clone()]);

        let mut builder = OperatorBuilder::new(format!("{}.PolicyRules", cx.name), input.scope());
        let mut rows_in = builder.new_input(input, Pipeline);
        let (main_out, main) = builder.new_output::<Vec<Batch>>();
        let (dead_out, dead) = builder.new_output::<Vec<Batch>>();
        let (actions_out, actions) = builder.new_output::<Vec<Batch>>();
        let mut main_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(main_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(dead_out);
        let mut actions_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(actions_out);
        let scope_key = self.scope.clone();
        builder.build(move |_| {
            // Rows waiting for the watermark to pass their time, with capabilities for both outputs.
            let mut pending: BTreeMap<Time, Pending> = BTreeMap::new();
            move |frontiers| {
                let mut main_out = main_out.activate();
                let mut dead_out = dead_out.activate();
                let mut actions_out = actions_out.activate();
                rows_in.for_each_stamp(|cap, data| {
                    let Some(&msg_time) = cap.least() else { return };
                    let mut letters = DeadLetters::default();
                    for container in data {
                        for batch in container.drain(..) {
                            let Some(kept) = state.admit(batch.data, msg_time, &mut letters) else {
                                continue;
                            };
                            for (t, part) in split_by_time(kept, state.layout.ts, msg_time) {
                                pending
                                    .entry(t)
                                    .or_insert_with(|| {
                                        (
                                            cap.delayed(&t, 0),
                                            cap.delayed(&t, 1),
                                            cap.delayed(&t, 2),
                                            Vec::new(),
                                        )
                                    })
                                    .3
                                    .push(part);
                            }
                        }
                    }
                    if let Some(letters) = letters.take() {
                        ComponentMetrics::add(&metrics.dead_letters, letters.num_rows() as u64);
                        dead_out.session(&cap).give(letters);
                    }
                });
                while let Some(entry) = pending.first_entry() {
                    if frontiers[0].less_equal(entry.key()) {
                        break;
                    }
                    let (time, (main_cap, dead_cap, actions_cap, batches)) = entry.remove_entry();
                    let mut letters = DeadLetters::default();
                    let (changes, action_changes) = state.process(time, &batches, &mut letters);
                    if !action_changes.is_empty() {
                        actions_out
                            .session(&actions_cap)
                            .give(Batch::new(actions_to_batch(
                                &scope_key,
                                &action_changes,
                                time,
                            )));
                    }
                    if !changes.is_empty() {
                        let batch = if addressed {
                            let nodes = vec![node.clone(); changes.len()];
                            signed_changes_to_batch(&changes, &nodes, signer.as_ref(), time)
                        } else {
                            changes_to_batch(&changes, time)
                        };
                        main_out.session(&main_cap).give(Batch::new(batch));
                    }
                    if let Some(letters) = letters.take() {
                        ComponentMetrics::add(&metrics.dead_letters, letters.num_rows() as u64);
                        dead_out.session(&dead_cap).give(letters);
                    }
                }
            }
        });
        Ok(Outputs::main(main)
            .with_side(ops::DEAD_LETTER, dead)
            .with_side(ACTIONS, actions))
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::StringArray;
    use isthmus_engine::batch::schema_with_time;
    use isthmus_engine::policy::batch_to_changes;
    use isthmus_engine::testing::Harness;

    use super::*;
    use crate::fleet::Fleet;
    use crate::fleet::tests::{anomalies, anomaly_schema, check_cx, problem, run_workers};

    /// A change as a comparable tuple: (ts, name, scope value, value, diff).
    type Row = (i64, String, String, String, i64);

    fn rules(toml_text: &str) -> PolicyRules {
        toml::from_str(toml_text).unwrap()
    }

    fn two_rules() -> PolicyRules {
        rules(
            r#"scope = "line"
[[rules]]
when = "anomalous_devices >= 3"
set = { threshold = 2.5, sample_every = 1 }
[[rules]]
when = "anomalous_devices >= 1"
set = { threshold = 3.5 }
"#,
        )
    }

    fn fleet_schema() -> SchemaRef {
        toml::from_str::<Fleet>("").unwrap().output_schema()
    }

    /// Fleet-shaped rows (ts, line, anomalous_devices, diff) in plant P1.
    fn fleet_rows(rows: &[(i64, &str, i64, i64)]) -> RecordBatch {
        RecordBatch::try_new(
            fleet_schema(),
            vec![
                time_array(rows.iter().map(|r| r.0).collect()),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|_| "P1"))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
        )
        .unwrap()
    }

    /// Decodes the policy stream, checking that each row's version and ts agree with the
    /// time its batch was sent at.
    fn changes(out: &[(Time, RecordBatch)]) -> Vec<Row> {
        let mut rows = Vec::new();
        for (time, batch) in out {
            let ts = batch.column(0).as_primitive::<TimestampMillisecondType>();
            for (i, c) in batch_to_changes(batch).unwrap().into_iter().enumerate() {
                assert_eq!(ts.value(i) as Time, *time);
                assert_eq!(c.version, *time);
                let scope = c.scope.expect("scoped");
                assert_eq!(scope.key, "line");
                rows.push((
                    ts.value(i),
                    c.name,
                    scope.value,
                    c.value.to_string(),
                    c.diff,
                ));
            }
        }
        rows
    }

    fn row(ts: i64, name: &str, line: &str, value: &str, diff: i64) -> Row {
        (
            ts,
            name.to_string(),
            line.to_string(),
            value.to_string(),
            diff,
        )
    }

    fn sorted(mut rows: Vec<Row>) -> Vec<Row> {
        rows.sort_by(|a, b| (a.0, &a.2, a.4, &a.1).cmp(&(b.0, &b.2, b.4, &b.1)));
        rows
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["policy"].as_table().unwrap().clone();
        assert_eq!(t.remove("type").unwrap().as_str(), Some("policy"));
        t.remove("inputs");
        let p: PolicyRules = t.try_into().unwrap();
        assert_eq!(p.scope, "line");
        assert_eq!(p.rules.len(), 2);
        assert_eq!(p.rules[0].set["threshold"], PolicyValue::Float(2.5));
        assert_eq!(p.rules[0].set["sample_every"], PolicyValue::Int(1));
        check_cx(|cx| {
            let outputs = p
                .schemas(&fleet_schema(), cx)
                .unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(outputs.main, policy_change_schema());
            assert_eq!(outputs.side[0].0, ops::DEAD_LETTER);
        });
    }

    #[test]
    fn json_schemas_describe_the_keys() {
        let schema = schemars::schema_for!(PolicyRules).as_value().to_string();
        for key in [
            "scope",
            "rules",
            "when",
            "set",
            "first one that matches wins",
        ] {
            assert!(schema.contains(key), "{key} missing from {schema}");
        }
        let schema = schemars::schema_for!(Fleet).as_value().to_string();
        for key in [
            "device",
            "group_by",
            "anomalous_for",
            "How long a device stays anomalous",
        ] {
            assert!(schema.contains(key), "{key} missing from {schema}");
        }
    }

    #[test]
    fn check_reports_problems_with_the_rule_index() {
        let schema = fleet_schema();
        check_cx(|cx| {
            let p = problem(
                rules("scope = \"hall\"\n[[rules]]\nwhen = \"true\"\nset = { a = 1 }")
                    .schemas(&schema, cx),
            );
            assert_eq!(p.key.as_deref(), Some("scope"));
            assert!(p.message.contains("`hall`"));

            let p = problem(rules("scope = \"line\"\nrules = []").schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("rules"));

            let text = "scope = \"line\"\n[[rules]]\nwhen = \"anomalous_devices > 1\"\nset = { a = 1 }\n[[rules]]\nwhen = \"anomalous_devices + 1\"\nset = { a = 2 }";
            let p = problem(rules(text).schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("rules"));
            assert!(
                p.message.starts_with("rule 1:") && p.message.contains("not a boolean"),
                "{}",
                p.message
            );

            let text =
                "scope = \"line\"\n[[rules]]\nwhen = \"anomalus_devices > 1\"\nset = { a = 1 }";
            let p = problem(rules(text).schemas(&schema, cx));
            assert_eq!(p.key.as_deref(), Some("rules"));
            assert!(p.message.starts_with("rule 0:"), "{}", p.message);

            let text = "scope = \"line\"\n[[rules]]\nwhen = \"anomalous_devices > 1\"\nset = {}";
            let p = problem(rules(text).schemas(&schema, cx));
            assert!(
                p.message.contains("rule 0: neither `set` nor `action`"),
                "{}",
                p.message
            );

            let no_diff =
                schema_with_time([arrow::datatypes::Field::new("line", DataType::Utf8, false)]);
            let p = problem(
                rules("scope = \"line\"\n[[rules]]\nwhen = \"true\"\nset = { a = 1 }")
                    .schemas(&no_diff, cx),
            );
            assert!(p.message.contains("`diff`"), "{}", p.message);
        });
        assert!(toml::from_str::<PolicyRules>("scope = \"line\"\nrules = []\nextra = 1").is_err());
    }

    #[test]
    fn emits_only_changes_when_crossing_a_threshold() {
        let p = rules(
            "scope = \"line\"\n[[rules]]\nwhen = \"anomalous_devices >= 3\"\nset = { threshold = 2.5 }",
        );
        let input = vec![
            (1_000, fleet_rows(&[(1_000, "L1", 1, 1)])),
            (
                2_000,
                fleet_rows(&[(2_000, "L1", 1, -1), (2_000, "L1", 3, 1)]),
            ), // crosses up
            (
                3_000,
                fleet_rows(&[(3_000, "L1", 3, -1), (3_000, "L1", 4, 1)]),
            ), // still above: nothing
            (
                4_000,
                fleet_rows(&[(4_000, "L1", 4, -1), (4_000, "L1", 2, 1)]),
            ), // crosses down
            (
                5_000,
                fleet_rows(&[(5_000, "L1", 2, -1), (5_000, "L1", 5, 1)]),
            ), // up again
            (6_000, fleet_rows(&[(6_000, "L1", 5, -1)])), // group retracted
        ];
        let out = Harness::default().run_transform(&p, fleet_schema(), input);
        assert_eq!(
            changes(&out.main),
            vec![
                row(2_000, "threshold", "L1", "2.5", 1),
                row(4_000, "threshold", "L1", "2.5", -1),
                row(5_000, "threshold", "L1", "2.5", 1),
                row(6_000, "threshold", "L1", "2.5", -1),
            ]
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let input = vec![
            (1_000, fleet_rows(&[(1_000, "L1", 1, 1)])),
            (
                2_000,
                fleet_rows(&[(2_000, "L1", 1, -1), (2_000, "L1", 3, 1)]),
            ),
            (
                3_000,
                fleet_rows(&[(3_000, "L1", 3, -1), (3_000, "L1", 2, 1)]),
            ),
            (4_000, fleet_rows(&[(4_000, "L1", 2, -1)])),
        ];
        let out = Harness::default().run_transform(&two_rules(), fleet_schema(), input);
        assert_eq!(
            sorted(changes(&out.main)),
            vec![
                row(1_000, "threshold", "L1", "3.5", 1),
                row(2_000, "threshold", "L1", "3.5", -1),
                row(2_000, "sample_every", "L1", "1", 1),
                row(2_000, "threshold", "L1", "2.5", 1),
                row(3_000, "sample_every", "L1", "1", -1),
                row(3_000, "threshold", "L1", "2.5", -1),
                row(3_000, "threshold", "L1", "3.5", 1),
                row(4_000, "threshold", "L1", "3.5", -1),
            ]
        );
    }

    #[test]
    fn rows_of_one_time_split_across_batches_and_null_scopes() {
        // The retraction and the addition of time 2000 arrive in separate batches, the
        // second one early (at watermark 1000); a row with a null line is a dead letter.
        let p = rules(
            "scope = \"line\"\n[[rules]]\nwhen = \"anomalous_devices >= 3\"\nset = { threshold = 2.5 }",
        );
        let nullable = Arc::new(arrow::datatypes::Schema::new(
            fleet_schema()
                .fields()
                .iter()
                .map(|f| f.as_ref().clone().with_nullable(true))
                .collect::<Vec<_>>(),
        ));
        let with_null = RecordBatch::try_new(
            nullable,
            vec![
                time_array(vec![2_000, 2_000]),
                Arc::new(StringArray::from(vec!["P1", "P1"])),
                Arc::new(StringArray::from(vec![Some("L1"), None])),
                Arc::new(Int64Array::from(vec![3, 7])),
                Arc::new(Int64Array::from(vec![1, 1])),
            ],
        )
        .unwrap();
        let input = vec![
            (1_000, fleet_rows(&[(1_000, "L1", 3, 1)])),
            (1_000, with_null),
            (2_000, fleet_rows(&[(2_000, "L1", 3, -1)])),
        ];
        let harness = Harness::default();
        let out = harness.run_transform(&p, fleet_schema(), input);
        // At 2000 the count is still 3 (one retraction, one addition): no change.
        assert_eq!(
            changes(&out.main),
            vec![row(1_000, "threshold", "L1", "2.5", 1)]
        );
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 1);
    }

    /// Anomaly reports of two lines: L1 reaches 3 devices, L2 has 1.
    fn two_lines() -> Vec<(Time, RecordBatch)> {
        vec![
            (1_000, anomalies(&[(1_000, "d1", "P1", "L1")])),
            (
                2_000,
                anomalies(&[(2_000, "d2", "P1", "L1"), (2_000, "d4", "P1", "L2")]),
            ),
            (
                3_000,
                anomalies(&[(3_000, "d3", "P1", "L1"), (3_500, "d1", "P1", "L1")]),
            ),
        ]
    }

    fn expected_two_lines() -> Vec<Row> {
        sorted(vec![
            row(1_000, "threshold", "L1", "3.5", 1),
            row(2_000, "threshold", "L2", "3.5", 1),
            row(3_000, "threshold", "L1", "3.5", -1),
            row(3_000, "threshold", "L1", "2.5", 1),
            row(3_000, "sample_every", "L1", "1", 1),
            // d2 expires at 12s (d1 was seen again at 3.5s, so it stays until 13.5s).
            row(12_000, "threshold", "L1", "2.5", -1),
            row(12_000, "sample_every", "L1", "1", -1),
            row(12_000, "threshold", "L1", "3.5", 1),
            row(12_000, "threshold", "L2", "3.5", -1),
            // d3 at 13s leaves L1 with d1; d1 expires at 13.5s.
            row(13_500, "threshold", "L1", "3.5", -1),
        ])
    }

    #[test]
    fn fleet_then_policy_for_two_lines() {
        let fleet: Fleet = toml::from_str("anomalous_for = \"10s\"").unwrap();
        let harness = Harness::default();
        let mut counts = harness
            .run_transform(&fleet, anomaly_schema(), two_lines())
            .main;
        counts.sort_by_key(|(t, _)| *t);
        let out = harness.run_transform(&two_rules(), fleet.output_schema(), counts);
        assert_eq!(sorted(changes(&out.main)), expected_two_lines());
    }

    #[test]
    fn an_action_starts_and_ends_with_its_rule() {
        let fleet: Fleet = toml::from_str("anomalous_for = \"10s\"").unwrap();
        let harness = Harness::default();
        let mut counts = harness
            .run_transform(&fleet, anomaly_schema(), two_lines())
            .main;
        counts.sort_by_key(|(t, _)| *t);
        let with_action = rules(
            r#"scope = "line"
[[rules]]
when = "anomalous_devices >= 3"
action = "open a work order: inspect the line"
[[rules]]
when = "anomalous_devices >= 1"
set = { threshold = 3.5 }
"#,
        );
        let out = harness.run_transform(&with_action, fleet.output_schema(), counts);
        let mut rows = Vec::new();
        for (_, b) in &out.side[ACTIONS] {
            assert_eq!(b.schema(), actions_schema());
            for i in 0..b.num_rows() {
                rows.push((
                    b.column(0)
                        .as_primitive::<TimestampMillisecondType>()
                        .value(i),
                    b.column(2).as_string::<i32>().value(i).to_string(),
                    b.column(3).as_primitive::<Int64Type>().value(i),
                    b.column(4).as_string::<i32>().value(i).to_string(),
                    b.column(5).as_primitive::<Int64Type>().value(i),
                ));
            }
        }
        rows.sort();
        let action = "open a work order: inspect the line".to_string();
        assert_eq!(
            rows,
            vec![
                (3_000, "L1".to_string(), 0, action.clone(), 1),
                (12_000, "L1".to_string(), 0, action, -1),
            ]
        );
        // While the action holds, rule 1's threshold for L1 is retracted (rule 0 sets none).
        let changes = sorted(changes(&out.main));
        assert!(
            changes.contains(&row(3_000, "threshold", "L1", "3.5", -1)),
            "{changes:?}"
        );
        assert!(
            changes.contains(&row(12_000, "threshold", "L1", "3.5", 1)),
            "{changes:?}"
        );
    }

    #[test]
    fn one_and_two_workers_agree() {
        let fleet: Fleet = toml::from_str("anomalous_for = \"10s\"").unwrap();
        let mut counts = Harness::default()
            .run_transform(&fleet, anomaly_schema(), two_lines())
            .main;
        counts.sort_by_key(|(t, _)| *t);
        let policy: Arc<dyn Transform> = Arc::new(two_rules());
        for workers in [1, 2] {
            let out = run_workers(
                workers,
                policy.clone(),
                fleet.output_schema(),
                counts.clone(),
            );
            assert_eq!(
                sorted(changes(&out)),
                expected_two_lines(),
                "{workers} workers"
            );
        }
    }
}
