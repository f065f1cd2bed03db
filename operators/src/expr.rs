//! SQL expressions over Arrow batches, evaluated by DataFusion's expression engine.
//!
//! Filter predicates, map projections and policy conditions are SQL text that may contain
//! `${policy.NAME}` references. [`LiveExpr`] substitutes the node's current policy and
//! recompiles only when the policy version changes, so a reconfiguration takes effect at
//! the next batch.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use isthmus_engine::policy::{PolicySnapshot, PolicyStore};

/// A SQL expression compiled against one schema.
#[derive(Clone, Debug)]
pub struct CompiledExpr {
    expr: Arc<dyn PhysicalExpr>,
    /// The type of the value it yields.
    pub data_type: DataType,
}

impl CompiledExpr {
    /// Parses and plans `sql` against `schema` (type coercion included).
    pub fn compile(sql: &str, schema: &SchemaRef) -> Result<Self, String> {
        let ctx = SessionContext::new();
        let df_schema = DFSchema::try_from(schema.as_ref().clone()).map_err(|e| e.to_string())?;
        let logical = ctx
            .parse_sql_expr(sql, &df_schema)
            .map_err(|e| clean(e.to_string()))?;
        let expr = ctx
            .create_physical_expr(logical, &df_schema)
            .map_err(|e| clean(e.to_string()))?;
        let data_type = expr.data_type(schema).map_err(|e| clean(e.to_string()))?;
        Ok(CompiledExpr { expr, data_type })
    }

    /// Whether it may yield nulls over rows of `schema` (conservatively `true` when unsure).
    pub fn nullable(&self, schema: &arrow::datatypes::Schema) -> bool {
        self.expr.nullable(schema).unwrap_or(true)
    }

    /// Evaluates over every row of `batch`.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<ArrayRef, String> {
        self.expr
            .evaluate(batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(|e| clean(e.to_string()))
    }
}

/// The first column that `sql` references but `schema` lacks, if planning fails for that
/// reason (so that config checks can point at the column and suggest close names).
pub fn missing_column(sql: &str, schema: &SchemaRef) -> Option<String> {
    use datafusion::common::SchemaError;
    use datafusion::error::DataFusionError;
    let ctx = SessionContext::new();
    let df_schema = DFSchema::try_from(schema.as_ref().clone()).ok()?;
    let err = match ctx.parse_sql_expr(sql, &df_schema) {
        Ok(logical) => ctx.create_physical_expr(logical, &df_schema).err()?,
        Err(e) => e,
    };
    match err.find_root() {
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            SchemaError::FieldNotFound { field, .. } => Some(field.name.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// Shortens DataFusion's messages for people reading a config error.
fn clean(message: String) -> String {
    message
        .replace("Schema error: ", "")
        .replace("Error during planning: ", "")
        .replace("SQL error: ", "")
        .trim()
        .to_string()
}

/// A SQL template with `${policy.NAME}` references, recompiled when the policy changes.
pub struct LiveExpr {
    template: String,
    schema: SchemaRef,
    policy: Arc<PolicyStore>,
    version: u64,
    current: CompiledExpr,
}

impl LiveExpr {
    /// Compiles `template` with the policy as it is now.
    pub fn new(
        template: &str,
        schema: SchemaRef,
        policy: Arc<PolicyStore>,
    ) -> Result<Self, String> {
        let version = policy.version();
        let current = compile_template(template, &schema, &policy.snapshot())?;
        Ok(LiveExpr {
            template: template.to_string(),
            schema,
            policy,
            version,
            current,
        })
    }

    /// The expression under the current policy (recompiled if the policy changed). If the
    /// new policy makes the expression invalid, the previous one stays in force and the
    /// error is returned once.
    pub fn current(&mut self) -> Result<&CompiledExpr, String> {
        let version = self.policy.version();
        if version != self.version {
            self.version = version;
            let compiled = compile_template(&self.template, &self.schema, &self.policy.snapshot())?;
            self.current = compiled;
        }
        Ok(&self.current)
    }
}

/// Substitutes the policy into `template` and compiles it.
pub fn compile_template(
    template: &str,
    schema: &SchemaRef,
    policy: &PolicySnapshot,
) -> Result<CompiledExpr, String> {
    let sql = policy.substitute_sql(template)?;
    CompiledExpr::compile(&sql, schema)
}
