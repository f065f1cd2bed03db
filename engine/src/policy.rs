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
    /// Whether remote changes must be signed (the node lists `[policy] trusted_keys`).
    pub requires_signatures: bool,
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

/// The column of a policy stream naming the node a change is for (`*`: every node).
pub const NODE_COLUMN: &str = "node";
/// The column holding the signer's public key (base64).
pub const SIGNER_COLUMN: &str = "signer";
/// The column holding the change's ed25519 signature (base64).
pub const SIGNATURE_COLUMN: &str = "signature";

/// The schema of an addressed, signed policy stream (what a `policy` transform with a
/// `signing_key` or a `node` emits): [`policy_change_schema`] plus `node`, `signer` and
/// `signature`.
pub fn signed_policy_change_schema() -> arrow::datatypes::SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields: Vec<Field> = policy_change_schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(NODE_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(SIGNER_COLUMN, DataType::Utf8, true));
    fields.push(Field::new(SIGNATURE_COLUMN, DataType::Utf8, true));
    Arc::new(Schema::new(fields))
}

/// Encodes changes addressed to `nodes` (one per change) as a signed policy-stream batch
/// at event time `ts`; without a signer the signature columns are null.
pub fn signed_changes_to_batch(
    changes: &[PolicyChange],
    nodes: &[String],
    signer: Option<&crate::signing::PolicySigner>,
    ts: crate::batch::Time,
) -> arrow::array::RecordBatch {
    use arrow::array::{ArrayRef, StringArray};
    let plain = changes_to_batch(changes, ts);
    let signatures: Vec<Option<String>> = changes
        .iter()
        .zip(nodes)
        .map(|(c, node)| {
            let value = c.value.to_string();
            signer.map(|s| s.sign(&crate::signing::SignedFields::of_change(node, c, &value)))
        })
        .collect();
    let public = signer.map(|s| s.public_key());
    let mut columns = plain.columns().to_vec();
    columns.push(Arc::new(StringArray::from_iter_values(nodes)) as ArrayRef);
    columns.push(Arc::new(StringArray::from_iter(
        changes.iter().map(|_| public.as_deref()),
    )));
    columns.push(Arc::new(StringArray::from_iter(signatures)));
    arrow::array::RecordBatch::try_new(signed_policy_change_schema(), columns)
        .expect("signed policy schema matches")
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
    /// The change is older than one already applied to the same tunable and scope (the
    /// last writer, by version, wins).
    #[error(
        "stale: version {version} is older than version {current}, already applied to `{name}`"
    )]
    Stale {
        /// The tunable.
        name: String,
        /// The refused change's version.
        version: u64,
        /// The version in force.
        current: u64,
    },
    /// The very same change was already applied.
    #[error("replay: this change to `{0}` was already applied")]
    Replay(String),
    /// The change itself is malformed (a diff other than ±1, half a scope, a negative
    /// version, a value that is not a finite number).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The change's signature is missing, untrusted or wrong.
    #[error(transparent)]
    Signature(#[from] crate::signing::SignatureProblem),
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
    /// For each change given, in order: `None` if applied, or why it was refused.
    pub outcomes: Vec<Option<Refusal>>,
}

/// What a node did with one remote change: the acknowledgement it sends back.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyAck {
    /// The change.
    pub change: PolicyChange,
    /// `None` if applied, or why it was refused.
    pub refusal: Option<Refusal>,
}

/// Acknowledgements waiting for a `policy_acks` source, and whether anything still writes
/// them.
#[derive(Debug, Default)]
struct AckQueue {
    /// Set by a `policy_acks` source: acknowledgements are kept only when someone reads them.
    enabled: bool,
    /// `reconfigure` sinks that have not finished.
    writers_open: usize,
    pending: Vec<PolicyAck>,
}

/// What a node knows of one tunable and scope, to make the last writer (by version) win.
#[derive(Debug, Default)]
struct ScopeVersions {
    /// The newest version applied (a set or a retraction).
    newest: u64,
    /// The changes applied at `newest` (value text, diff), to refuse replays.
    seen: BTreeSet<(String, i64)>,
    /// The version of the value in force, if a change set it.
    value_version: Option<u64>,
}

/// Per tunable and scope: the versions applied.
type Applied = BTreeMap<(String, Option<PolicyScope>), ScopeVersions>;

/// The live policy of one node, shared by all its workers.
#[derive(Debug)]
pub struct PolicyStore {
    remote: BTreeSet<String>,
    current: RwLock<Arc<PolicySnapshot>>,
    version: AtomicU64,
    applied: AtomicU64,
    refused: AtomicU64,
    trusted_keys: crate::signing::TrustedKeys,
    last_applied: std::sync::Mutex<Applied>,
    acks: std::sync::Mutex<AckQueue>,
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
                requires_signatures: false,
            })),
            version: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            trusted_keys: Default::default(),
            last_applied: Default::default(),
            acks: Default::default(),
        }
    }

    /// The same store, accepting remote changes only when signed by one of `keys` (an empty
    /// set accepts unsigned changes).
    pub fn with_trusted_keys(mut self, keys: crate::signing::TrustedKeys) -> Self {
        let current = self.current.get_mut().expect("policy lock poisoned");
        Arc::make_mut(current).requires_signatures = !keys.is_empty();
        self.trusted_keys = keys;
        self
    }

    /// The keys remote changes must be signed by (none: unsigned changes are accepted).
    pub fn trusted_keys(&self) -> &crate::signing::TrustedKeys {
        &self.trusted_keys
    }

    /// Counts changes refused before they reached [`PolicyStore::apply`] (for example for
    /// their signature).
    pub fn count_refused(&self, n: u64) {
        self.refused.fetch_add(n, Ordering::Relaxed);
    }

    /// Starts keeping acknowledgements for a reader (a `policy_acks` source).
    pub fn enable_acks(&self) {
        self.acks.lock().expect("ack lock poisoned").enabled = true;
    }

    /// Registers a writer of acknowledgements (a `reconfigure` sink) until
    /// [`PolicyStore::close_ack_writer`].
    pub fn open_ack_writer(&self) {
        self.acks.lock().expect("ack lock poisoned").writers_open += 1;
    }

    /// A writer of acknowledgements has finished.
    pub fn close_ack_writer(&self) {
        let mut acks = self.acks.lock().expect("ack lock poisoned");
        acks.writers_open = acks.writers_open.saturating_sub(1);
    }

    /// Queues acknowledgements, if a reader asked for them.
    pub fn record_acks(&self, new: impl IntoIterator<Item = PolicyAck>) {
        let mut acks = self.acks.lock().expect("ack lock poisoned");
        if acks.enabled {
            acks.pending.extend(new);
        }
    }

    /// Takes the queued acknowledgements, and tells whether a writer may still add more.
    pub fn take_acks(&self) -> (Vec<PolicyAck>, bool) {
        let mut acks = self.acks.lock().expect("ack lock poisoned");
        (std::mem::take(&mut acks.pending), acks.writers_open > 0)
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

    /// Why `change` may not be applied on top of `next`, if it may not.
    fn refusal(
        &self,
        next: &PolicySnapshot,
        last_applied: &Applied,
        change: &PolicyChange,
    ) -> Option<Refusal> {
        let Some(tunable) = next.tunables.get(&change.name) else {
            return Some(Refusal::Unknown(change.name.clone()));
        };
        if !self.remote.contains(&change.name) {
            return Some(Refusal::NotRemote(change.name.clone()));
        }
        if change.value.type_name() != tunable.value.type_name() {
            return Some(Refusal::WrongType {
                name: change.name.clone(),
                expected: tunable.value.type_name(),
                value: change.value.to_string(),
            });
        }
        let known = last_applied.get(&(change.name.clone(), change.scope.clone()))?;
        if change.version < known.newest {
            return Some(Refusal::Stale {
                name: change.name.clone(),
                version: change.version,
                current: known.newest,
            });
        }
        let identity = (change.value.to_string(), change.diff);
        (change.version == known.newest && known.seen.contains(&identity))
            .then(|| Refusal::Replay(change.name.clone()))
    }

    /// Applies remote changes atomically: readers see all of them or none.
    ///
    /// Per tunable and scope the last writer wins by version: a change older than one
    /// already applied is refused as stale, and the same change applied twice as a replay.
    ///
    /// A retraction (`diff < 0`) of a scoped override removes it if it holds the retracted
    /// value or a value of an older version, so additions and retractions may come in any
    /// order and the node still ends with each scope's latest value.
    pub fn apply(&self, changes: &[PolicyChange]) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut guard = self.current.write().expect("policy lock poisoned");
        let mut last_applied = self.last_applied.lock().expect("policy lock poisoned");
        let mut next = (**guard).clone();
        for change in changes {
            let refusal = self.refusal(&next, &last_applied, change);
            report.outcomes.push(refusal.clone());
            if let Some(refusal) = refusal {
                report.refused.push((change.clone(), refusal));
                continue;
            }
            let tunable = next.tunables.get_mut(&change.name).expect("checked");
            let known = last_applied
                .entry((change.name.clone(), change.scope.clone()))
                .or_default();
            if known.newest < change.version {
                known.newest = change.version;
                known.seen.clear();
            }
            known.seen.insert((change.value.to_string(), change.diff));
            match (&change.scope, change.diff > 0) {
                (Some(scope), true) => {
                    tunable
                        .overrides
                        .insert(scope.clone(), change.value.clone());
                    known.value_version = Some(change.version);
                }
                (Some(scope), false) => {
                    // A retraction removes the value it names, or any value set before it
                    // (that value's own retraction may still be on its way).
                    let holds = tunable.overrides.get(scope) == Some(&change.value);
                    let older = known.value_version.is_some_and(|v| v < change.version);
                    if holds || older {
                        tunable.overrides.remove(scope);
                        known.value_version = None;
                    }
                }
                (None, true) => {
                    tunable.value = change.value.clone();
                    known.value_version = Some(change.version);
                }
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
    fn the_last_writer_by_version_wins_and_replays_are_refused() {
        let store = store();
        let mut newer = change("threshold", Some("L1"), 2.0, 1);
        newer.version = 10;
        let mut older = change("threshold", Some("L1"), 3.0, 1);
        older.version = 5;
        assert_eq!(store.apply(&[newer.clone()]).applied, 1);
        let report = store.apply(&[older, newer]);
        assert!(matches!(
            report.outcomes[..],
            [
                Some(Refusal::Stale {
                    version: 5,
                    current: 10,
                    ..
                }),
                Some(Refusal::Replay(_))
            ]
        ));
        let scope = PolicyScope {
            key: "line".into(),
            value: "L1".into(),
        };
        assert_eq!(
            store.snapshot().tunables["threshold"].overrides.get(&scope),
            Some(&PolicyValue::Float(2.0))
        );
        // Another scope has its own versions.
        let mut other = change("threshold", Some("L2"), 3.0, 1);
        other.version = 1;
        assert_eq!(store.apply(&[other]).applied, 1);
    }

    mod convergence {
        use proptest::prelude::*;

        use super::*;

        /// The changes a `policy` transform emits for one scope whose desired value goes
        /// through `history` (one entry per version; `None`: no override).
        fn changes_of(line: &str, history: &[Option<u8>]) -> Vec<PolicyChange> {
            let mut out = Vec::new();
            let mut before: Option<u8> = None;
            for (i, after) in history.iter().enumerate() {
                let version = 10 * (i as u64 + 1);
                if before != *after {
                    let mut push = |v: u8, diff| {
                        let mut c = change("threshold", Some(line), f64::from(v), diff);
                        c.version = version;
                        out.push(c);
                    };
                    if let Some(old) = before {
                        push(old, -1);
                    }
                    if let Some(new) = after {
                        push(*new, 1);
                    }
                }
                before = *after;
            }
            out
        }

        proptest! {
            /// Edge and cloud converge: whatever order the changes arrive in (a partition
            /// heals, a consumer re-reads, messages are duplicated), a node ends with each
            /// scope's latest value.
            #[test]
            fn any_delivery_order_with_duplicates_converges_to_the_latest_values(
                histories in prop::collection::vec(prop::collection::vec(prop::option::of(0u8..4), 1..8), 1..4),
                order in prop::collection::vec(any::<u32>(), 64),
                duplicates in prop::collection::vec(any::<u16>(), 0..6),
            ) {
                let mut changes = Vec::new();
                for (i, h) in histories.iter().enumerate() {
                    changes.extend(changes_of(&format!("L{i}"), h));
                }
                prop_assume!(!changes.is_empty());
                for d in &duplicates {
                    changes.push(changes[*d as usize % changes.len()].clone());
                }
                // A random permutation.
                let mut keyed: Vec<(u32, PolicyChange)> = changes
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| (order[i % order.len()].wrapping_add((i as u32).wrapping_mul(2_654_435_761)), c))
                    .collect();
                keyed.sort_by_key(|(k, _)| *k);
                let store = store();
                for (_, c) in &keyed {
                    store.apply(std::slice::from_ref(c));
                }
                let snapshot = store.snapshot();
                let overrides = &snapshot.tunables["threshold"].overrides;
                for (i, h) in histories.iter().enumerate() {
                    let scope = PolicyScope { key: "line".into(), value: format!("L{i}") };
                    let latest = h.last().copied().flatten().map(|v| PolicyValue::Float(f64::from(v)));
                    prop_assert_eq!(overrides.get(&scope), latest.as_ref(), "L{}: {:?}", i, h);
                }
            }
        }
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
