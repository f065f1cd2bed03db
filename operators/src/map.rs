//! `map`: SQL projections that compute, rename and drop columns.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, SelectItem};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use isthmus_engine::batch::{BatchStream, TIME_COLUMN, time_type};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Transform};
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops;
use isthmus_engine::policy::PolicySnapshot;
use isthmus_engine::telemetry::ComponentMetrics;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::expr::{LiveExpr, compile_template};
use crate::filter::expr_problem;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[transforms.fahrenheit]
type = "map"
inputs = ["sim"]
select = ["ts", "device", "line", "temperature * 1.8 + 32 AS temperature_f", "vibration"]
"#;

/// Computes new columns with SQL expressions; keeps, renames and drops columns.
///
/// Each item of `select` is one output column: `expression [AS name]`, where the
/// expression is SQL over the input columns evaluated by DataFusion, and may contain
/// `${policy.NAME}` references (a policy change applies from the next batch on). Columns not
/// listed are dropped. The output must keep the event-time column `ts`. A batch whose
/// evaluation fails at run time goes, whole, to the `dead_letter` side output.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Map {
    /// The output columns, in order: each `expression [AS name]`, for example
    /// `["ts", "device", "temperature * 1.8 + 32 AS temperature_f"]`. A bare column keeps its
    /// name; another expression without `AS` is named after its text. Must include `ts`.
    pub select: Vec<String>,
}

/// One parsed select item: the SQL template of its expression and its output name.
#[derive(Clone, Debug, PartialEq)]
struct Item {
    template: String,
    name: String,
}

/// Splits `expression [AS name]` (after substituting the policy for parsing only).
fn parse_item(text: &str, policy: &PolicySnapshot) -> Result<Item, String> {
    let sql = policy.substitute_sql(text)?;
    let mut parser = Parser::new(&GenericDialect {})
        .try_with_sql(&sql)
        .map_err(|e| e.to_string())?;
    let item = parser.parse_select_item().map_err(|e| e.to_string())?;
    if parser.peek_token().token != datafusion::sql::sqlparser::tokenizer::Token::EOF {
        return Err(format!(
            "unexpected `{}` after the expression",
            parser.peek_token().token
        ));
    }
    match item {
        SelectItem::UnnamedExpr(expr) => {
            let name = match &expr {
                SqlExpr::Identifier(id) => normalize(id),
                SqlExpr::CompoundIdentifier(ids) => ids.last().map(normalize).unwrap_or_default(),
                _ => text.trim().to_string(),
            };
            Ok(Item {
                template: text.trim().to_string(),
                name,
            })
        }
        SelectItem::ExprWithAlias { alias, .. } => {
            let template = strip_alias(text, &alias.to_string())
                .ok_or_else(|| format!("cannot find the name `{alias}` at the end of `{text}`"))?;
            Ok(Item {
                template,
                name: normalize(&alias),
            })
        }
        _ => Err(
            "expected `expression [AS name]` (wildcards are not supported: list the columns)"
                .into(),
        ),
    }
}

/// The name an identifier stands for: unquoted names are lower-cased, as DataFusion does.
fn normalize(id: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if id.quote_style.is_some() {
        id.value.clone()
    } else {
        id.value.to_lowercase()
    }
}

/// `text` without its trailing `[AS] alias`.
fn strip_alias(text: &str, alias: &str) -> Option<String> {
    let rest = text.trim_end().strip_suffix(alias)?.trim_end();
    let rest = match rest.len().checked_sub(2) {
        Some(i) if rest.is_char_boundary(i) && rest[i..].eq_ignore_ascii_case("as") => {
            let before = &rest[..i];
            if before.ends_with(|c: char| c.is_whitespace() || c == ')') {
                before.trim_end()
            } else {
                rest
            }
        }
        _ => rest,
    };
    (!rest.is_empty()).then(|| rest.to_string())
}

impl Map {
    fn items(&self, policy: &PolicySnapshot) -> Result<Vec<Item>, Problem> {
        if self.select.is_empty() {
            return Err(Problem::at("select", "`select` is empty")
                .with_help("list the output columns, starting with `ts`"));
        }
        let mut items = Vec::with_capacity(self.select.len());
        let mut names = BTreeSet::new();
        for text in &self.select {
            let item = parse_item(text, policy).map_err(|e| {
                Problem::at("select", format!("cannot read select item `{text}`: {e}"))
            })?;
            if !names.insert(item.name.clone()) {
                return Err(Problem::at(
                    "select",
                    format!("two select items are named `{}`", item.name),
                )
                .with_help("give one of them another name with `AS name`"));
            }
            items.push(item);
        }
        Ok(items)
    }

    /// The output schema (checked like at validation time).
    fn output_schema(
        &self,
        input: &SchemaRef,
        policy: &PolicySnapshot,
    ) -> Result<(Vec<Item>, SchemaRef), Problem> {
        let items = self.items(policy)?;
        let mut fields = Vec::with_capacity(items.len());
        for item in &items {
            let compiled = compile_template(&item.template, input, policy)
                .map_err(|e| expr_problem("select", &item.template, input, policy, &e))?;
            let nullable = compiled.nullable(input);
            fields.push(Field::new(&item.name, compiled.data_type.clone(), nullable));
        }
        match fields.iter().find(|f| f.name() == TIME_COLUMN) {
            None => {
                return Err(
                    Problem::at("select", "the output has no event-time column `ts`").with_help(
                        "add \"ts\" to `select` (every stream carries its event time in `ts`)",
                    ),
                );
            }
            Some(f) if f.data_type() != &time_type() => {
                return Err(Problem::at("select", format!("`ts` is {}, not the event-time type {}", f.data_type(), time_type()))
                    .with_help("keep `ts` as it is, or cast it: `CAST(x AS TIMESTAMP) AS ts` (millisecond precision)"));
            }
            Some(_) => {}
        }
        Ok((items, Arc::new(Schema::new(fields))))
    }
}

impl Transform for Map {
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem> {
        let (_, schema) = self.output_schema(input, cx.policy)?;
        Ok(Outputs::main(schema).with_side(ops::DEAD_LETTER, ops::dead_letter_schema()))
    }

    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let in_schema = cx.required_input_schema()?;
        let (items, out_schema) = self
            .output_schema(&in_schema, &cx.policy.snapshot())
            .map_err(|p| cx.error(format!("select: {}", p.message)))?;
        let mut exprs = items
            .iter()
            .map(|item| LiveExpr::new(&item.template, in_schema.clone(), cx.policy.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| cx.error(format!("select: {e}")))?;
        let metrics = cx.metrics.clone();
        let name = cx.name.clone();
        let (main, dead) = ops::map_batches(input, &cx.name, move |batch| {
            let result = project(&mut exprs, &out_schema, &batch.data, &name);
            if result.is_err() {
                ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
            }
            result
        });
        Ok(Outputs::main(main).with_side(ops::DEAD_LETTER, dead))
    }
}

/// Evaluates every select item over `batch`.
fn project(
    exprs: &mut [LiveExpr],
    schema: &SchemaRef,
    batch: &RecordBatch,
    component: &str,
) -> Result<Option<RecordBatch>, String> {
    if batch.num_rows() == 0 {
        return Ok(None);
    }
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(exprs.len());
    for (expr, field) in exprs.iter_mut().zip(schema.fields()) {
        if let Err(e) = expr.current() {
            tracing::warn!(component = %component, "policy change makes `{}` invalid, keeping the previous expression: {e}", field.name());
        }
        let mut values = expr.current()?.evaluate(batch)?;
        if values.data_type() != field.data_type() {
            values =
                cast(&values, field.data_type()).map_err(|e| format!("`{}`: {e}", field.name()))?;
        }
        columns.push(values);
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::{AsArray, Float64Array, StringArray};
    use arrow::datatypes::{DataType, Float64Type};
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::policy::{PolicyStore, PolicyValue};
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;

    use super::*;

    fn schema() -> SchemaRef {
        schema_with_time([
            Field::new("device", DataType::Utf8, false),
            Field::new("temperature", DataType::Float64, false),
        ])
    }

    fn batch() -> RecordBatch {
        RecordBatch::try_new(
            schema(),
            vec![
                time_array(vec![1, 2]),
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(Float64Array::from(vec![0.0, 100.0])),
            ],
        )
        .unwrap()
    }

    fn snapshot() -> PolicySnapshot {
        PolicyStore::new(
            BTreeMap::from([("offset".to_string(), PolicyValue::Float(1.5))]),
            Default::default(),
        )
        .snapshot()
        .as_ref()
        .clone()
    }

    fn check(m: &Map) -> Result<SchemaRef, Problem> {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let snap = snapshot();
        let channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &snap,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        m.schemas(&schema(), &cx).map(|o| o.main)
    }

    fn map(items: &[&str]) -> Map {
        Map {
            select: items.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn splits_items() {
        let p = snapshot();
        assert_eq!(
            parse_item("ts", &p).unwrap(),
            Item {
                template: "ts".into(),
                name: "ts".into()
            }
        );
        assert_eq!(
            parse_item("temperature * 1.8 + 32 AS Temp_F", &p).unwrap(),
            Item {
                template: "temperature * 1.8 + 32".into(),
                name: "temp_f".into()
            }
        );
        assert_eq!(
            parse_item("temperature + ${policy.offset} as \"Hot Temp\"", &p).unwrap(),
            Item {
                template: "temperature + ${policy.offset}".into(),
                name: "Hot Temp".into()
            }
        );
        assert_eq!(
            parse_item("(temperature)as t", &p).unwrap().template,
            "(temperature)"
        );
        assert_eq!(
            parse_item("temperature + 1", &p).unwrap().name,
            "temperature + 1"
        );
        assert!(parse_item("*", &p).is_err());
        assert!(parse_item("a b c", &p).is_err());
    }

    #[test]
    fn computes_renames_and_drops() {
        let m = map(&[
            "ts",
            "device AS id",
            "temperature * 1.8 + 32 AS temperature_f",
            "temperature + ${policy.offset} AS t2",
        ]);
        let out_schema = check(&m).unwrap();
        let names: Vec<&str> = out_schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["ts", "id", "temperature_f", "t2"]);
        assert!(!out_schema.field(0).is_nullable());
        let h = Harness {
            policy: Arc::new(PolicyStore::new(
                BTreeMap::from([("offset".to_string(), PolicyValue::Float(1.5))]),
                Default::default(),
            )),
            ..Harness::default()
        };
        let out = h.run_transform(&m, schema(), vec![(0, batch())]);
        let b = out.main_batch().unwrap();
        assert_eq!(b.schema(), out_schema);
        assert_eq!(
            b.column(2).as_primitive::<Float64Type>().values().to_vec(),
            vec![32.0, 212.0]
        );
        assert_eq!(
            b.column(3).as_primitive::<Float64Type>().values().to_vec(),
            vec![1.5, 101.5]
        );
        assert_eq!(b.column(1).as_string::<i32>().value(1), "d2");
    }

    #[test]
    fn check_problems() {
        let e = check(&map(&["device", "temperature"])).unwrap_err();
        assert!(e.message.contains("`ts`"), "{e:?}");
        let e = check(&map(&["CAST(ts AS BIGINT) AS ts"])).unwrap_err();
        assert!(e.message.contains("not the event-time type"), "{e:?}");
        let e = check(&map(&["ts", "device", "temperature AS device"])).unwrap_err();
        assert!(
            e.message.contains("two select items are named `device`"),
            "{e:?}"
        );
        let e = check(&map(&["ts", "temperatur * 2 AS x"])).unwrap_err();
        assert_eq!(e.key.as_deref(), Some("select"));
        assert!(e.help.unwrap().contains("did you mean `temperature`"));
    }

    #[test]
    fn runtime_errors_go_to_dead_letter() {
        let m = map(&["ts", "CAST(device AS INT) AS n"]);
        let h = Harness::default();
        let out = h.run_transform(&m, schema(), vec![(0, batch())]);
        assert_eq!(out.main_rows(), 0);
        assert_eq!(out.side_rows(ops::DEAD_LETTER), 2);
        assert_eq!(ComponentMetrics::get(&h.metrics.dead_letters), 2);
    }
}
