//! The node's policy: named tunables with defaults (`[policy]` in TOML), scoped overrides
//! applied at run time, and the `${policy.NAME}` references that operators resolve live.
//!
//! Operators read a [`PolicySnapshot`] between batches: a change is atomic (one write of
//! one `Arc`) and takes effect from the next batch on, without a restart and without
//! touching operator state. Only tunables named in `remote` may be changed by the cloud;
//! other changes are refused, logged and counted.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Deserializer, Serialize};

/// The value of a tunable: a TOML scalar.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum PolicyValue {
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
}

impl PolicyValue {
    /// The value as a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            PolicyValue::Int(i) => Some(*i as f64),
            PolicyValue::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value written as a SQL literal.
    pub fn to_sql(&self) -> String {
        match self {
            PolicyValue::Bool(b) => b.to_string(),
            PolicyValue::Int(i) => i.to_string(),
            PolicyValue::Float(f) if f.is_finite() && f.fract() == 0.0 => format!("{f:.1}"),
            PolicyValue::Float(f) => format!("{f}"),
            PolicyValue::Str(s) => format!("'{}'", s.replace('\'', "''")),
        }
    }

    /// Parses the textual form used on policy streams: a number, `true`/`false`, or a string.
    pub fn parse_text(text: &str) -> PolicyValue {
        if let Ok(i) = text.parse::<i64>() {
            PolicyValue::Int(i)
        } else if let Ok(f) = text.parse::<f64>() {
            PolicyValue::Float(f)
        } else if let Ok(b) = text.parse::<bool>() {
            PolicyValue::Bool(b)
        } else {
            PolicyValue::Str(text.to_string())
        }
    }
}

impl PolicyValue {
    /// A name for the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PolicyValue::Bool(_) => "boolean",
            PolicyValue::Int(_) | PolicyValue::Float(_) => "number",
            PolicyValue::Str(_) => "string",
        }
    }
}

impl fmt::Display for PolicyValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyValue::Bool(b) => write!(f, "{b}"),
            PolicyValue::Int(i) => write!(f, "{i}"),
            PolicyValue::Float(x) => write!(f, "{x:?}"),
            PolicyValue::Str(s) => write!(f, "{s}"),
        }
    }
}

/// Where an override applies: the rows whose column `key` equals `value` (a line, a plant,
/// a device).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyScope {
    /// The column that selects the rows, for example `line`.
    pub key: String,
    /// The value of that column, for example `plant-1/line-2`.
    pub value: String,
}

/// One tunable: its default and the overrides in force for some scopes.
#[derive(Clone, Debug, PartialEq)]
pub struct Tunable {
    /// The value from the pipeline file (or the latest unscoped change).
    pub value: PolicyValue,
    /// Scoped overrides.
    pub overrides: BTreeMap<PolicyScope, PolicyValue>,
}

/// An immutable view of the policy at one version.
#[derive(Clone, Debug, Default)]
pub struct PolicySnapshot {
    /// Incremented by every applied change.
    pub version: u64,
    /// Tunables by name.
    pub tunables: BTreeMap<String, Tunable>,
}

impl PolicySnapshot {
    /// The unscoped value of a tunable.
    pub fn get(&self, name: &str) -> Option<&PolicyValue> {
        self.tunables.get(name).map(|t| &t.value)
    }

    /// Replaces every `${policy.NAME}` in `template` with the tunable's value as a SQL
    /// literal; a tunable with scoped overrides becomes a `CASE` over the scope column, so
    /// that each row sees the value of its own line, plant or device.
    pub fn substitute_sql(&self, template: &str) -> Result<String, String> {
        substitute(template, |name| {
            let tunable = self
                .tunables
                .get(name)
                .ok_or_else(|| format!("unknown policy `{name}`"))?;
            if tunable.overrides.is_empty() {
                return Ok(tunable.value.to_sql());
            }
            let mut sql = String::from("(CASE");
            for (scope, value) in &tunable.overrides {
                sql.push_str(&format!(
                    " WHEN \"{}\" = {} THEN {}",
                    scope.key.replace('"', "\"\""),
                    PolicyValue::Str(scope.value.clone()).to_sql(),
                    value.to_sql()
                ));
            }
            sql.push_str(&format!(" ELSE {} END)", tunable.value.to_sql()));
            Ok(sql)
        })
    }
}

/// Replaces `${policy.NAME}` references in `text` with what `lookup` gives for NAME.
pub fn substitute(
    text: &str,
    mut lookup: impl FnMut(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed `${{` in `{text}`"))?;
        let reference = &after[..end];
        let name = reference.strip_prefix("policy.").ok_or_else(|| {
            format!("`${{{reference}}}`: only `${{policy.NAME}}` references are supported")
        })?;
        out.push_str(&lookup(name)?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The policy names referenced by `${policy.NAME}` in `text`.
pub fn references(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let _ = substitute(text, |name| {
        names.push(name.to_string());
        Ok(String::new())
    });
    names
}

/// A change to one tunable, as carried by a policy stream.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyChange {
    /// The tunable's name.
    pub name: String,
    /// The scope, or `None` for the tunable's unscoped value.
    pub scope: Option<PolicyScope>,
    /// The new value (`diff = +1`), or the value being retracted (`diff = -1`).
    pub value: PolicyValue,
    /// `+1` sets the value, `-1` retracts it (an override goes away; unscoped values stay).
    pub diff: i64,
    /// The version the cloud gave this change.
    pub version: u64,
}

/// The schema of a policy stream (the output of a `policy` transform, the input of a
/// `reconfigure` sink): one row per change.
pub fn policy_change_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field};
    crate::batch::schema_with_time([
        Field::new("policy", DataType::Utf8, false),
        Field::new("scope_key", DataType::Utf8, true),
        Field::new("scope_value", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, false),
        Field::new("diff", DataType::Int64, false),
        Field::new("version", DataType::UInt64, false),
    ])
}

/// Encodes changes as a policy-stream batch at event time `ts`.
pub fn changes_to_batch(
    changes: &[PolicyChange],
    ts: crate::batch::Time,
) -> arrow::array::RecordBatch {
    use arrow::array::{ArrayRef, Int64Array, StringArray, UInt64Array};
    let columns: Vec<ArrayRef> = vec![
        crate::batch::time_array(vec![ts as i64; changes.len()]),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.name.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            changes
                .iter()
                .map(|c| c.scope.as_ref().map(|s| s.key.as_str())),
        )),
        Arc::new(StringArray::from_iter(
            changes
                .iter()
                .map(|c| c.scope.as_ref().map(|s| s.value.as_str())),
        )),
        Arc::new(StringArray::from_iter_values(
            changes.iter().map(|c| c.value.to_string()),
        )),
        Arc::new(Int64Array::from_iter_values(changes.iter().map(|c| c.diff))),
        Arc::new(UInt64Array::from_iter_values(
            changes.iter().map(|c| c.version),
        )),
    ];
    arrow::array::RecordBatch::try_new(policy_change_schema(), columns)
        .expect("policy schema matches")
}

/// Decodes a policy-stream batch.
pub fn batch_to_changes(batch: &arrow::array::RecordBatch) -> Result<Vec<PolicyChange>, String> {
    use arrow::array::{Array, Int64Array, StringArray, UInt64Array};
    fn col<'a, A: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> Result<&'a A, String> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<A>())
            .ok_or_else(|| format!("policy stream lacks column `{name}` of the right type"))
    }
    let name = col::<StringArray>(batch, "policy")?;
    let key = col::<StringArray>(batch, "scope_key")?;
    let scope_value = col::<StringArray>(batch, "scope_value")?;
    let value = col::<StringArray>(batch, "value")?;
    let diff = col::<Int64Array>(batch, "diff")?;
    // A policy stream read back from JSON (Kafka) has a signed version: accept it.
    let version_column = batch
        .column_by_name("version")
        .ok_or("policy stream lacks column `version`")?;
    let version_column = arrow::compute::cast(version_column, &arrow::datatypes::DataType::UInt64)
        .map_err(|e| format!("policy stream column `version`: {e}"))?;
    let version = version_column
        .as_any()
        .downcast_ref::<UInt64Array>()
        .ok_or("policy stream column `version` is not a number")?;
    Ok((0..batch.num_rows())
        .map(|i| PolicyChange {
            name: name.value(i).to_string(),
            scope: (!key.is_null(i) && !scope_value.is_null(i)).then(|| PolicyScope {
                key: key.value(i).to_string(),
                value: scope_value.value(i).to_string(),
            }),
            value: PolicyValue::parse_text(value.value(i)),
            diff: diff.value(i),
            version: version.value(i),
        })
        .collect())
}

/// Why a change was not applied.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The tunable is not declared in `[policy.tunables]`.
    #[error("policy `{0}` is not declared by this node")]
    Unknown(String),
    /// The tunable is declared but not in `[policy] remote`.
    #[error("policy `{0}` may not be changed remotely (not in [policy] remote)")]
    NotRemote(String),
    /// The value's type differs from the declared default's.
    #[error("policy `{name}` takes a {expected}, not `{value}`")]
    WrongType {
        /// The tunable.
        name: String,
        /// The type of its default.
        expected: &'static str,
        /// The refused value.
        value: String,
    },
}

/// What one [`PolicyStore::apply`] call did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ApplyReport {
    /// Changes that took effect.
    pub applied: u64,
    /// Changes refused, with the reason.
    pub refused: Vec<(PolicyChange, Refusal)>,
}

/// The live policy of one node, shared by all its workers.
#[derive(Debug)]
pub struct PolicyStore {
    remote: BTreeSet<String>,
    current: RwLock<Arc<PolicySnapshot>>,
    version: AtomicU64,
    applied: AtomicU64,
    refused: AtomicU64,
}

impl PolicyStore {
    /// A store holding the declared defaults, of which `remote` may change remotely.
    pub fn new(defaults: BTreeMap<String, PolicyValue>, remote: BTreeSet<String>) -> Self {
        let tunables = defaults
            .into_iter()
            .map(|(name, value)| {
                (
                    name,
                    Tunable {
                        value,
                        overrides: BTreeMap::new(),
                    },
                )
            })
            .collect();
        PolicyStore {
            remote,
            current: RwLock::new(Arc::new(PolicySnapshot {
                version: 0,
                tunables,
            })),
            version: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// The current version: cheap to poll on every batch.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The current policy.
    pub fn snapshot(&self) -> Arc<PolicySnapshot> {
        self.current.read().expect("policy lock poisoned").clone()
    }

    /// Total changes applied since start.
    pub fn applied_count(&self) -> u64 {
        self.applied.load(Ordering::Relaxed)
    }

    /// Total changes refused since start.
    pub fn refused_count(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Applies remote changes atomically: readers see all of them or none.
    ///
    /// A retraction (`diff < 0`) of a scoped override removes it only if it still holds the
    /// retracted value, so additions and retractions of the same time may come in any order.
    pub fn apply(&self, changes: &[PolicyChange]) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut guard = self.current.write().expect("policy lock poisoned");
        let mut next = (**guard).clone();
        for change in changes {
            let Some(tunable) = next.tunables.get_mut(&change.name) else {
                report
                    .refused
                    .push((change.clone(), Refusal::Unknown(change.name.clone())));
                continue;
            };
            if !self.remote.contains(&change.name) {
                report
                    .refused
                    .push((change.clone(), Refusal::NotRemote(change.name.clone())));
                continue;
            }
            if change.value.type_name() != tunable.value.type_name() {
                let refusal = Refusal::WrongType {
                    name: change.name.clone(),
                    expected: tunable.value.type_name(),
                    value: change.value.to_string(),
                };
                report.refused.push((change.clone(), refusal));
                continue;
            }
            match (&change.scope, change.diff > 0) {
                (Some(scope), true) => {
                    tunable
                        .overrides
                        .insert(scope.clone(), change.value.clone());
                }
                (Some(scope), false) => {
                    if tunable.overrides.get(scope) == Some(&change.value) {
                        tunable.overrides.remove(scope);
                    }
                }
                (None, true) => tunable.value = change.value.clone(),
                (None, false) => {}
            }
            report.applied += 1;
        }
        if report.applied > 0 {
            next.version += 1;
            *guard = Arc::new(next);
            self.version.fetch_add(1, Ordering::Release);
        }
        self.applied.fetch_add(report.applied, Ordering::Relaxed);
        self.refused
            .fetch_add(report.refused.len() as u64, Ordering::Relaxed);
        report
    }
}

/// An operator parameter that is either a literal or a live `${policy.NAME}` reference.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Param<T> {
    /// A fixed value.
    Literal(T),
    /// The current unscoped value of the named tunable.
    Policy(String),
}

impl<T: Clone + TryFrom<PolicyValue>> Param<T> {
    /// The value under `snapshot` (the literal, or the tunable's unscoped value).
    pub fn resolve(&self, snapshot: &PolicySnapshot) -> Option<T> {
        match self {
            Param::Literal(v) => Some(v.clone()),
            Param::Policy(name) => snapshot.get(name).and_then(|v| T::try_from(v.clone()).ok()),
        }
    }
}

impl<T: schemars::JsonSchema> schemars::JsonSchema for Param<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Param_{}", T::schema_name()).into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let inner = generator.subschema_for::<T>();
        schemars::json_schema!({
            "description": "A value, or a live `${policy.NAME}` reference to a tunable.",
            "anyOf": [inner, { "type": "string", "pattern": "^\\$\\{policy\\.[A-Za-z0-9_]+\\}$" }]
        })
    }
}

impl TryFrom<PolicyValue> for f64 {
    type Error = ();
    fn try_from(v: PolicyValue) -> Result<f64, ()> {
        v.as_f64().ok_or(())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Param<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw<T> {
            Text(String),
            Value(T),
        }
        match Raw::<T>::deserialize(deserializer)? {
            Raw::Text(text) => {
                let refs = references(&text);
                if refs.len() == 1 && text.trim() == format!("${{policy.{}}}", refs[0]) {
                    Ok(Param::Policy(refs[0].clone()))
                } else {
                    Err(serde::de::Error::custom(format!(
                        "expected a value or a `${{policy.NAME}}` reference, found \"{text}\""
                    )))
                }
            }
            Raw::Value(v) => Ok(Param::Literal(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> PolicyStore {
        let defaults = BTreeMap::from([
            ("threshold".to_string(), PolicyValue::Float(4.0)),
            ("local_only".to_string(), PolicyValue::Int(1)),
        ]);
        PolicyStore::new(defaults, BTreeSet::from(["threshold".to_string()]))
    }

    fn change(name: &str, line: Option<&str>, value: f64, diff: i64) -> PolicyChange {
        PolicyChange {
            name: name.into(),
            scope: line.map(|l| PolicyScope {
                key: "line".into(),
                value: l.into(),
            }),
            value: PolicyValue::Float(value),
            diff,
            version: 1,
        }
    }

    #[test]
    fn substitution_uses_defaults_then_scoped_overrides() {
        let store = store();
        let sql = store
            .snapshot()
            .substitute_sql("score > ${policy.threshold}")
            .unwrap();
        assert_eq!(sql, "score > 4.0");
        store.apply(&[change("threshold", Some("L1"), 2.5, 1)]);
        let sql = store
            .snapshot()
            .substitute_sql("score > ${policy.threshold}")
            .unwrap();
        assert_eq!(
            sql,
            "score > (CASE WHEN \"line\" = 'L1' THEN 2.5 ELSE 4.0 END)"
        );
    }

    #[test]
    fn retraction_and_addition_commute() {
        let store = store();
        store.apply(&[change("threshold", Some("L1"), 2.5, 1)]);
        // A new value and the retraction of the old one, in the "wrong" order.
        store.apply(&[
            change("threshold", Some("L1"), 3.0, 1),
            change("threshold", Some("L1"), 2.5, -1),
        ]);
        let snap = store.snapshot();
        let scope = PolicyScope {
            key: "line".into(),
            value: "L1".into(),
        };
        assert_eq!(
            snap.tunables["threshold"].overrides.get(&scope),
            Some(&PolicyValue::Float(3.0))
        );
        store.apply(&[change("threshold", Some("L1"), 3.0, -1)]);
        assert!(store.snapshot().tunables["threshold"].overrides.is_empty());
    }

    #[test]
    fn refuses_values_of_another_type() {
        let store = store();
        let mut c = change("threshold", None, 1.0, 1);
        c.value = PolicyValue::Str("low".into());
        let report = store.apply(&[c]);
        assert_eq!(report.applied, 0);
        assert!(matches!(report.refused[0].1, Refusal::WrongType { .. }));
        assert_eq!(
            store.snapshot().get("threshold"),
            Some(&PolicyValue::Float(4.0))
        );
    }

    #[test]
    fn refuses_unknown_and_local_tunables() {
        let store = store();
        let report = store.apply(&[
            change("local_only", None, 9.0, 1),
            change("nope", None, 1.0, 1),
        ]);
        assert_eq!(report.applied, 0);
        assert_eq!(report.refused.len(), 2);
        assert_eq!(store.version(), 0);
        assert_eq!(store.refused_count(), 2);
    }

    #[test]
    fn params_read_literals_and_references() {
        let p: Param<f64> =
            toml::from_str::<BTreeMap<String, Param<f64>>>("x = \"${policy.threshold}\"").unwrap()
                ["x"]
                .clone();
        assert_eq!(p, Param::Policy("threshold".into()));
        assert_eq!(p.resolve(&store().snapshot()), Some(4.0));
        let q: BTreeMap<String, Param<f64>> = toml::from_str("x = 2.5").unwrap();
        assert_eq!(q["x"], Param::Literal(2.5));
        assert!(toml::from_str::<BTreeMap<String, Param<f64>>>("x = \"hello\"").is_err());
    }
}
