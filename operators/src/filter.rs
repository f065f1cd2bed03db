//! `filter`: keeps the rows for which a SQL predicate is true.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, SchemaRef};
use isthmus_engine::batch::BatchStream;
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Transform};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops;
use isthmus_engine::policy::PolicySnapshot;
use isthmus_engine::spec::suggest;
use isthmus_engine::telemetry::ComponentMetrics;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::expr::{CompiledExpr, LiveExpr, compile_template, missing_column};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[transforms.hot]
type = "filter"
inputs = ["sim"]
predicate = "temperature > 80.0 AND fault = 'none'"
"#;

/// Keeps the rows for which a SQL predicate is true; drops the others.
///
/// The predicate is a SQL boolean expression over the input columns, evaluated by
/// DataFusion on whole batches. It may contain `${policy.NAME}` references: a policy change
/// applies from the next batch on, and scoped overrides (per line, plant or device) apply
/// to the rows of their scope. Rows for which the predicate is false or NULL are dropped.
/// A batch whose evaluation fails at run time goes, whole, to the `dead_letter` side
/// output. The output has the input's schema.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// SQL boolean expression over the input columns, for example
    /// `"temperature > ${policy.max_temp} AND fault = 'none'"`. Rows where it is true are
    /// kept; false or NULL drops the row.
    pub predicate: String,
}

/// The problem with the SQL template at `key`: a missing column (with close names), or
/// DataFusion's own message.
pub(crate) fn expr_problem(
    key: &str,
    template: &str,
    schema: &SchemaRef,
    policy: &PolicySnapshot,
    err: &str,
) -> Problem {
    if let Ok(sql) = policy.substitute_sql(template)
        && let Some(column) = missing_column(&sql, schema)
    {
        return missing_column_problem(key, &column, schema);
    }
    Problem::at(key, format!("invalid SQL expression `{template}`: {err}"))
}

/// A problem for a column that the input lacks, with a help listing close names.
pub(crate) fn missing_column_problem(key: &str, column: &str, schema: &SchemaRef) -> Problem {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let list = names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let help = match suggest(column, names.iter().copied()) {
        Some(close) => format!("did you mean `{close}`? input columns: {list}"),
        None => format!("input columns: {list}"),
    };
    Problem::at(key, format!("the input has no column `{column}`")).with_help(help)
}

/// Checks that every name in `columns` is an input column, reporting at `key`.
pub(crate) fn require_columns<'a>(
    key: &str,
    columns: impl IntoIterator<Item = &'a String>,
    schema: &SchemaRef,
) -> Result<(), Problem> {
    for column in columns {
        if schema.column_with_name(column).is_none() {
            return Err(missing_column_problem(key, column, schema));
        }
    }
    Ok(())
}

/// Keeps the rows of `batch` where `predicate` is true (None when no row is kept).
pub fn apply_predicate(
    predicate: &CompiledExpr,
    batch: &RecordBatch,
) -> Result<Option<RecordBatch>, String> {
    let values = predicate.evaluate(batch)?;
    let mask = values.as_boolean_opt().ok_or_else(|| {
        format!(
            "the predicate yields {} values, not booleans",
            values.data_type()
        )
    })?;
    let kept = mask.true_count();
    if kept == 0 {
        Ok(None)
    } else if kept == batch.num_rows() && mask.null_count() == 0 {
        Ok(Some(batch.clone()))
    } else {
        filter_record_batch(batch, mask)
            .map(Some)
            .map_err(|e| format!("cannot filter the batch: {e}"))
    }
}

impl Transform for Filter {
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        let compiled = compile_template(&self.predicate, input, cx.policy)
            .map_err(|e| expr_problem("predicate", &self.predicate, input, cx.policy, &e))?;
        if compiled.data_type != DataType::Boolean {
            return Err(Problem::at(
                "predicate",
                format!(
                    "the predicate yields {} values, not booleans",
                    compiled.data_type
                ),
            )
            .with_help("write a condition, for example `temperature > 80.0`"));
        }
        Ok(Outputs::main(input.clone()).with_side(ops::DEAD_LETTER, ops::dead_letter_schema()))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let schema = cx.required_input_schema()?;
        let mut live = LiveExpr::new(&self.predicate, schema, cx.policy.clone())
            .map_err(|e| cx.error(format!("predicate `{}`: {e}", self.predicate)))?;
        let metrics = cx.metrics.clone();
        let name = cx.name.clone();
        let (main, dead) = ops::map_batches(input, &cx.name, move |batch| {
            if let Err(e) = live.current() {
                tracing::warn!(component = %name, "policy change makes the predicate invalid, keeping the previous one: {e}");
            }
            let result = live
                .current()
                .and_then(|predicate| apply_predicate(predicate, &batch.data));
            if result.is_err() {
                ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
            }
            result
        });
        Ok(Outputs::main(main).with_side(ops::DEAD_LETTER, dead))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use arrow::array::{ArrayRef, BooleanArray, Float64Array, StringArray};
    use arrow::datatypes::Field;
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::policy::{PolicyChange, PolicyScope, PolicyStore, PolicyValue};
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;

    use super::*;

    pub(crate) fn schema() -> SchemaRef {
        schema_with_time([
            Field::new("line", DataType::Utf8, false),
            Field::new("temperature", DataType::Float64, true),
            Field::new("fault", DataType::Boolean, false),
        ])
    }

    fn batch(ts: &[i64], line: &[&str], temp: &[Option<f64>]) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            time_array(ts.to_vec()),
            Arc::new(StringArray::from(line.to_vec())),
            Arc::new(Float64Array::from(temp.to_vec())),
            Arc::new(BooleanArray::from(vec![false; ts.len()])),
        ];
        RecordBatch::try_new(schema(), cols).unwrap()
    }

    fn policy(threshold: f64) -> PolicyStore {
        PolicyStore::new(
            BTreeMap::from([("threshold".to_string(), PolicyValue::Float(threshold))]),
            BTreeSet::from(["threshold".to_string()]),
        )
    }

    fn check(f: &Filter, policy: &PolicyStore) -> Result<SchemaRef, Problem> {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let snapshot = policy.snapshot();
        let channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &snapshot,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        f.schemas(&schema(), &cx).map(|o| o.main)
    }

    fn temps(out: &[(u64, RecordBatch)]) -> Vec<f64> {
        out.iter()
            .flat_map(|(_, b)| {
                b.column_by_name("temperature")
                    .unwrap()
                    .as_primitive::<arrow::datatypes::Float64Type>()
                    .values()
                    .to_vec()
            })
            .collect()
    }

    #[test]
    fn keeps_true_rows_and_drops_false_and_null() {
        let f = Filter {
            predicate: "temperature > 50".into(),
        };
        let h = Harness::default();
        let input = vec![
            (
                0,
                batch(
                    &[0, 1, 2, 3],
                    &["a", "a", "b", "b"],
                    &[Some(10.0), Some(60.0), None, Some(70.0)],
                ),
            ),
            (5, batch(&[5], &["a"], &[Some(1.0)])),
            (6, batch(&[6, 7], &["a", "b"], &[Some(99.0), Some(98.0)])),
        ];
        let out = h.run_transform(&f, schema(), input);
        assert_eq!(temps(&out.main), vec![60.0, 70.0, 99.0, 98.0]);
        // The batch with no kept row sends nothing.
        assert_eq!(out.main.len(), 2);
        assert_eq!(out.main[0].1.schema(), schema());
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 0);
    }

    #[test]
    fn policy_changes_apply_from_the_next_batch_with_scopes() {
        let f = Filter {
            predicate: "temperature > ${policy.threshold}".into(),
        };
        let h = Harness {
            policy: Arc::new(policy(50.0)),
            ..Harness::default()
        };
        let store = h.policy.clone();
        let out = h.run_transform(
            &f,
            schema(),
            vec![(0, batch(&[0, 1], &["a", "b"], &[Some(40.0), Some(60.0)]))],
        );
        assert_eq!(temps(&out.main), vec![60.0]);
        store.apply(&[PolicyChange {
            name: "threshold".into(),
            scope: Some(PolicyScope {
                key: "line".into(),
                value: "a".into(),
            }),
            value: PolicyValue::Float(30.0),
            diff: 1,
            version: 1,
        }]);
        let out = h.run_transform(
            &f,
            schema(),
            vec![(
                0,
                batch(
                    &[0, 1, 2],
                    &["a", "b", "b"],
                    &[Some(40.0), Some(45.0), Some(60.0)],
                ),
            )],
        );
        assert_eq!(temps(&out.main), vec![40.0, 60.0]);
    }

    #[test]
    fn check_reports_bad_predicates() {
        let p = policy(50.0);
        assert!(
            check(
                &Filter {
                    predicate: "temperature > ${policy.threshold}".into()
                },
                &p
            )
            .is_ok()
        );
        let e = check(
            &Filter {
                predicate: "temprature > 3".into(),
            },
            &p,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("predicate"));
        assert!(e.message.contains("temprature"), "{e:?}");
        assert!(
            e.help
                .as_deref()
                .unwrap()
                .contains("did you mean `temperature`"),
            "{e:?}"
        );
        let e = check(
            &Filter {
                predicate: "temperature + 1".into(),
            },
            &p,
        )
        .unwrap_err();
        assert!(e.message.contains("not booleans"), "{e:?}");
        let e = check(
            &Filter {
                predicate: "temperature >".into(),
            },
            &p,
        )
        .unwrap_err();
        assert_eq!(e.key.as_deref(), Some("predicate"));
    }

    #[test]
    fn runtime_errors_go_to_dead_letter() {
        // Casting a non-numeric string fails at run time only.
        let f = Filter {
            predicate: "CAST(line AS INT) > 1".into(),
        };
        let h = Harness::default();
        let out = h.run_transform(
            &f,
            schema(),
            vec![(0, batch(&[0, 1], &["x", "2"], &[Some(1.0), Some(2.0)]))],
        );
        assert_eq!(out.main_rows(), 0);
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 2);
        assert_eq!(ComponentMetrics::get(&h.metrics.dead_letters), 2);
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        let mut t = table["transforms"]["hot"].as_table().unwrap().clone();
        t.remove("type");
        t.remove("inputs");
        let f: Filter = t.try_into().unwrap();
        assert_eq!(f.predicate, "temperature > 80.0 AND fault = 'none'");
    }
}
