//! `reconfigure` sink: applies a policy stream (the output of a `policy` transform,
//! received from the cloud over Kafka or a channel) to this node's live `[policy]`.
//!
//! Changes take effect atomically, from the next batch of every operator that reads the
//! policy. When the node lists `[policy] trusted_keys`, a change must carry a valid
//! signature by one of them. Changes addressed to another node are skipped. Changes that are
//! unsigned, forged, signed by an untrusted key, stale, replayed, or to tunables not
//! declared by this node or not listed in `[policy] remote` are refused: each refusal is
//! logged and counted as a dead letter. Every change received is acknowledged to the node's
//! `policy_acks` source, if it has one.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use isthmus_engine::batch::{Batch, BatchStream, Time};
use isthmus_engine::policy::{
    NODE_COLUMN, PolicyAck, PolicyChange, PolicySnapshot, PolicyStore, PolicyValue, Refusal,
    SIGNATURE_COLUMN, SIGNER_COLUMN, batch_to_changes, policy_change_schema,
};
use isthmus_engine::signing::{ALL_NODES, SignedFields};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Problem, Sink, TIME_COLUMN};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Exchange;
use timely::dataflow::operators::generic::operator::Operator;

/// An example pipeline fragment: fleet counts turned into a policy stream by a `policy`
/// transform, applied to this node (usually the policy stream comes from the cloud over a
/// `channel`).
pub const EXAMPLE: &str = r#"[transforms.line_health]
type = "fleet"
inputs = ["sim"]
group_by = ["plant", "line"]
anomalous_for = "60s"

[transforms.line_policy]
type = "policy"
inputs = ["line_health"]
scope = "line"

[[transforms.line_policy.rules]]
when = "anomalous_devices >= 2"
set = { threshold = 2.5 }

[sinks.apply_policy]
type = "reconfigure"
inputs = ["line_policy"]
log_changes = true
"#;

/// Applies a policy stream (the output of a `policy` transform) to this node's live
/// `[policy]`: operators using `${policy.NAME}` see a change from their next batch on.
///
/// Only tunables listed in `[policy] remote` may be changed. When the node lists `[policy]
/// trusted_keys`, only changes signed by one of them apply (the input then needs the
/// `signer` and `signature` columns of a signing `policy` transform). A change older than
/// the version already applied to its tunable and scope (stale) or applied before (replay)
/// is refused too. Refusals are logged as warnings and counted as dead letters; rows whose
/// `node` column names another node are skipped. A `policy_acks` source in the same node
/// emits what happened to each change.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconfigureSink {
    /// Log every applied change at info level. Default true.
    #[serde(default = "default_log_changes")]
    pub log_changes: bool,
}

fn default_log_changes() -> bool {
    true
}

impl Default for ReconfigureSink {
    fn default() -> Self {
        ReconfigureSink { log_changes: true }
    }
}

fn describe(change: &PolicyChange) -> String {
    let scope = change
        .scope
        .as_ref()
        .map(|s| format!(" for {} = {}", s.key, s.value))
        .unwrap_or_default();
    let verb = if change.diff > 0 { "set" } else { "retract" };
    format!(
        "{verb} {}{scope} = {} (version {})",
        change.name, change.value, change.version
    )
}

/// Gives each value the type of the tunable it changes: the text form of a policy stream
/// reads `5.0` back as the integer 5, and `"7"` as a number.
fn coerce(changes: &mut [PolicyChange], snapshot: &PolicySnapshot) {
    for change in changes {
        let value = match (snapshot.get(&change.name), &change.value) {
            (Some(PolicyValue::Float(_)), PolicyValue::Int(i)) => PolicyValue::Float(*i as f64),
            (Some(PolicyValue::Str(_)), v) if !matches!(v, PolicyValue::Str(_)) => {
                PolicyValue::Str(v.to_string())
            }
            _ => continue,
        };
        change.value = value;
    }
}

/// Applies the changes of one policy-stream batch addressed to `node` (or to every node),
/// after checking their signatures when the node trusts keys, and returns what happened to
/// each of them. Changes addressed to other nodes are skipped without an acknowledgement.
fn receive(
    batch: &RecordBatch,
    node: &str,
    policy: &PolicyStore,
    snapshot: &PolicySnapshot,
) -> Result<Vec<PolicyAck>, String> {
    let mut changes = batch_to_changes(batch)?;
    let text = |name: &str| -> Result<Option<&StringArray>, String> {
        match batch.column_by_name(name) {
            None => Ok(None),
            Some(c) => c
                .as_any()
                .downcast_ref::<StringArray>()
                .map(Some)
                .ok_or_else(|| format!("policy stream column `{name}` is not text")),
        }
    };
    let nodes = text(NODE_COLUMN)?;
    let signers = text(SIGNER_COLUMN)?;
    let signatures = text(SIGNATURE_COLUMN)?;
    let values = text("value")?.ok_or("policy stream lacks column `value`")?;
    fn cell(column: Option<&StringArray>, i: usize) -> Option<&str> {
        column.and_then(|c| (!c.is_null(i)).then(|| c.value(i)))
    }
    let scope_keys = text("scope_key")?;
    let scope_values = text("scope_value")?;
    let versions = batch
        .column_by_name("version")
        .map(|c| arrow::compute::cast(c, &DataType::Int64))
        .transpose()
        .map_err(|e| format!("policy stream column `version`: {e}"))?;
    let versions = versions.as_ref().map(|c| c.as_primitive::<Int64Type>());
    let malformed = |i: usize, change: &PolicyChange| -> Option<String> {
        if change.diff != 1 && change.diff != -1 {
            return Some(format!("diff must be +1 or -1, not {}", change.diff));
        }
        if cell(scope_keys, i).is_some() != cell(scope_values, i).is_some() {
            return Some("scope_key and scope_value must be given together".into());
        }
        if versions.is_none_or(|v| v.is_null(i) || v.value(i) < 0) {
            return Some("version must be a non-negative integer".into());
        }
        match change.value {
            PolicyValue::Float(f) if !f.is_finite() => {
                Some(format!("value `{f}` is not a finite number"))
            }
            _ => None,
        }
    };
    let trusted = policy.trusted_keys();
    // Per change addressed here: `None` to apply, or why it is refused unseen.
    let mut mine: Vec<(PolicyChange, Option<Refusal>)> = Vec::new();
    for (i, change) in changes.drain(..).enumerate() {
        let to = cell(nodes, i).unwrap_or(ALL_NODES);
        if to != ALL_NODES && to != node {
            continue;
        }
        let refusal = if let Some(problem) = malformed(i, &change) {
            Some(Refusal::Malformed(problem))
        } else if trusted.is_empty() {
            None
        } else {
            let fields = SignedFields::of_change(to, &change, values.value(i));
            trusted
                .verify(&fields, cell(signers, i), cell(signatures, i))
                .err()
                .map(Refusal::from)
        };
        mine.push((change, refusal));
    }
    let mut to_apply: Vec<PolicyChange> = mine
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(c, _)| c.clone())
        .collect();
    coerce(&mut to_apply, snapshot);
    let report = policy.apply(&to_apply);
    let mut outcomes = to_apply.into_iter().zip(report.outcomes);
    let unseen = mine.iter().filter(|(_, r)| r.is_some()).count();
    policy.count_refused(unseen as u64);
    Ok(mine
        .into_iter()
        .map(|(change, refusal)| match refusal {
            Some(refusal) => PolicyAck {
                change,
                refusal: Some(refusal),
            },
            None => {
                let (change, refusal) = outcomes.next().expect("one outcome per change");
                PolicyAck { change, refusal }
            }
        })
        .collect())
}

impl Sink for ReconfigureSink {
    fn check(&self, input: &SchemaRef, cx: &CheckContext<'_>) -> Result<(), Problem> {
        let expected = policy_change_schema();
        for field in expected.fields().iter().filter(|f| f.name() != TIME_COLUMN) {
            let found = input.field_with_name(field.name()).ok();
            let problem = match found {
                None => format!(
                    "the input has no `{}` column: it is not a policy stream",
                    field.name()
                ),
                Some(f)
                    if f.data_type() != field.data_type()
                        && !(field.name() == "version" && f.data_type() == &DataType::Int64) =>
                {
                    format!(
                        "column `{}` of the input is {}, a policy stream has {}",
                        field.name(),
                        f.data_type(),
                        field.data_type()
                    )
                }
                Some(_) => continue,
            };
            return Err(Problem::at("inputs", problem).with_help(
                "feed it the output of a `policy` transform (columns ts, policy, scope_key, scope_value, value, diff, version), for example through a `channel`",
            ));
        }
        if cx.policy.requires_signatures {
            for column in [NODE_COLUMN, SIGNER_COLUMN, SIGNATURE_COLUMN] {
                match input.field_with_name(column) {
                    Ok(f) if f.data_type() == &DataType::Utf8 => {}
                    _ => {
                        return Err(Problem::at(
                            "inputs",
                            format!("this node lists [policy] trusted_keys, but its policy stream has no text column `{column}`: every change would be refused"),
                        )
                        .with_help("read the output of a `policy` transform with a `signing_key`; from Kafka declare `node`, `signer` and `signature` as \"utf8\" columns"));
                    }
                }
            }
        }
        Ok(())
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let policy = cx.policy.clone();
        let metrics: Arc<ComponentMetrics> = cx.metrics.clone();
        let name = cx.name.clone();
        let log_changes = self.log_changes;
        let mut pending: Vec<(Time, Batch)> = Vec::new();
        let mut delivery = cx.delivery_reporter();
        let node = cx.node.id.clone();
        policy.open_ack_writer();
        let mut closed = false;
        // One worker applies every change, in the order of their times.
        input.sink(Exchange::new(|_: &Batch| 0), &cx.name, move |(input, frontier)| {
            input.for_each_stamp(|cap, data| {
                let time = cap.least().copied().unwrap_or_default();
                for container in data {
                    pending.extend(container.drain(..).map(|b| (time, b)));
                }
            });
            if pending.is_empty() {
                if frontier.frontier().is_empty() && !closed {
                    closed = true;
                    policy.close_ack_writer();
                }
                delivery.delivered_through_frontier(&frontier.frontier());
                return;
            }
            pending.sort_by_key(|(t, _)| *t);
            for (_, batch) in pending.drain(..) {
                let snapshot = policy.snapshot();
                let acks = match receive(&batch.data, &node, &policy, &snapshot) {
                    Ok(acks) => acks,
                    Err(e) => {
                        ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
                        tracing::warn!(component = %name, "policy batch of {} rows ignored: {e}", batch.num_rows());
                        continue;
                    }
                };
                let mut refused = 0;
                for ack in &acks {
                    match &ack.refusal {
                        None if log_changes => {
                            tracing::info!(component = %name, version = policy.version(), "policy change applied: {}", describe(&ack.change));
                        }
                        None => {}
                        Some(reason) => {
                            refused += 1;
                            tracing::warn!(component = %name, "policy change refused: {}: {reason}", describe(&ack.change));
                        }
                    }
                }
                ComponentMetrics::add(&metrics.dead_letters, refused);
                policy.record_acks(acks);
            }
            if frontier.frontier().is_empty() && !closed {
                closed = true;
                policy.close_ack_writer();
            }
            delivery.delivered_through_frontier(&frontier.frontier());
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::atomic::Ordering;

    use arrow::datatypes::{DataType, Field, Schema};
    use isthmus_engine::policy::{
        PolicyScope, changes_to_batch, signed_changes_to_batch, signed_policy_change_schema,
    };
    use isthmus_engine::signing::{PolicySigner, TrustedKeys};
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::testing::Harness;

    use super::*;

    fn change(name: &str, line: Option<&str>, value: f64, diff: i64) -> PolicyChange {
        PolicyChange {
            name: name.into(),
            scope: line.map(|l| PolicyScope {
                key: "line".into(),
                value: l.into(),
            }),
            value: PolicyValue::Float(value),
            diff,
            version: 3,
        }
    }

    #[test]
    fn applies_and_refuses_changes() {
        let defaults = BTreeMap::from([
            ("threshold".to_string(), PolicyValue::Float(4.0)),
            ("sample_every".to_string(), PolicyValue::Int(10)),
        ]);
        let harness = Harness {
            policy: Arc::new(PolicyStore::new(
                defaults,
                BTreeSet::from(["threshold".to_string()]),
            )),
            ..Harness::default()
        };
        let first = changes_to_batch(
            &[
                change("threshold", Some("p1-l2"), 2.5, 1),
                change("sample_every", None, 1.0, 1),
            ],
            1000,
        );
        let second = changes_to_batch(
            &[
                change("threshold", None, 5.0, 1),
                change("unknown", None, 1.0, 1),
            ],
            2000,
        );
        harness.run_sink(
            &ReconfigureSink::default(),
            policy_change_schema(),
            vec![(1000, first), (2000, second)],
        );

        let snap = harness.policy.snapshot();
        let threshold = &snap.tunables["threshold"];
        assert_eq!(threshold.value, PolicyValue::Float(5.0));
        let scope = PolicyScope {
            key: "line".into(),
            value: "p1-l2".into(),
        };
        assert_eq!(
            threshold.overrides.get(&scope),
            Some(&PolicyValue::Float(2.5))
        );
        assert_eq!(snap.tunables["sample_every"].value, PolicyValue::Int(10));
        assert_eq!(snap.version, 2);
        assert_eq!(harness.policy.applied_count(), 2);
        assert_eq!(harness.policy.refused_count(), 2);
        assert_eq!(harness.metrics.dead_letters.load(Ordering::Relaxed), 2);
        assert_eq!(
            snap.substitute_sql("score > ${policy.threshold}").unwrap(),
            "score > (CASE WHEN \"line\" = 'p1-l2' THEN 2.5 ELSE 5.0 END)"
        );
    }

    #[test]
    fn retraction_removes_an_override() {
        let defaults = BTreeMap::from([("threshold".to_string(), PolicyValue::Float(4.0))]);
        let harness = Harness {
            policy: Arc::new(PolicyStore::new(
                defaults,
                BTreeSet::from(["threshold".to_string()]),
            )),
            ..Harness::default()
        };
        let set = changes_to_batch(&[change("threshold", Some("p1-l1"), 2.0, 1)], 1000);
        let retract = changes_to_batch(&[change("threshold", Some("p1-l1"), 2.0, -1)], 5000);
        harness.run_sink(
            &ReconfigureSink { log_changes: false },
            policy_change_schema(),
            vec![(1000, set), (5000, retract)],
        );
        assert!(
            harness.policy.snapshot().tunables["threshold"]
                .overrides
                .is_empty()
        );
        assert_eq!(harness.metrics.dead_letters.load(Ordering::Relaxed), 0);
    }

    /// Runs a reconfigure sink on a node `test-node` that trusts `trusted`, over `input`.
    fn run_signed(
        trusted: &PolicySigner,
        input: Vec<(Time, RecordBatch)>,
    ) -> (Harness, Vec<PolicyAck>) {
        let defaults = BTreeMap::from([
            ("threshold".to_string(), PolicyValue::Float(4.0)),
            ("sample_every".to_string(), PolicyValue::Int(10)),
        ]);
        let keys = TrustedKeys::new(vec![
            TrustedKeys::parse(&trusted.public_key(), std::path::Path::new(".")).unwrap(),
        ]);
        let store = PolicyStore::new(defaults, BTreeSet::from(["threshold".to_string()]))
            .with_trusted_keys(keys);
        store.enable_acks();
        let harness = Harness {
            policy: Arc::new(store),
            ..Harness::default()
        };
        harness.run_sink(
            &ReconfigureSink { log_changes: false },
            signed_policy_change_schema(),
            input,
        );
        let (acks, writers_open) = harness.policy.take_acks();
        assert!(!writers_open, "the sink closed its acknowledgements");
        (harness, acks)
    }

    fn refusal(ack: &PolicyAck) -> String {
        ack.refusal
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_else(|| "applied".into())
    }

    #[test]
    fn signed_changes_apply_and_forged_replayed_stale_and_out_of_scope_ones_are_refused() {
        let cloud = PolicySigner::generate();
        let intruder = PolicySigner::generate();
        let here = |c: &[PolicyChange]| vec!["test-node".to_string(); c.len()];
        let set_l1 = [change("threshold", Some("l1"), 2.5, 1)];
        let first = signed_changes_to_batch(&set_l1, &here(&set_l1), Some(&cloud), 1000);
        // The same message again (a replay), a change signed by an untrusted key, a change to
        // a tunable the cloud may not touch, an unsigned one, and one for another node.
        let mut untrusted = change("threshold", None, 0.1, 1);
        untrusted.version = 9;
        let mut local = change("sample_every", None, 1.0, 1);
        local.version = 9;
        let for_other = [change("threshold", None, 7.0, 1)];
        let second = arrow::compute::concat_batches(
            &signed_policy_change_schema(),
            &[
                first.clone(),
                signed_changes_to_batch(
                    &[untrusted.clone()],
                    &here(&[untrusted]),
                    Some(&intruder),
                    2000,
                ),
                signed_changes_to_batch(&[local.clone()], &here(&[local]), Some(&cloud), 2000),
                signed_changes_to_batch(&for_other, &["edge-9".to_string()], Some(&cloud), 2000),
            ],
        )
        .unwrap();
        // Forged: a signed change whose value was altered on the way.
        let mut forged = signed_changes_to_batch(
            &[change("threshold", Some("l1"), 2.0, 1)],
            &["*".to_string()],
            Some(&cloud),
            3000,
        );
        let mut columns = forged.columns().to_vec();
        columns[4] = Arc::new(arrow::array::StringArray::from(vec!["0.5"]));
        forged = RecordBatch::try_new(forged.schema(), columns).unwrap();
        let unsigned = signed_changes_to_batch(
            &[change("threshold", Some("l3"), 1.0, 1)],
            &["*".to_string()],
            None,
            3000,
        );
        // Stale: an older version of the l1 override, correctly signed.
        let mut old = change("threshold", Some("l1"), 9.0, 1);
        old.version = 1;
        let stale = signed_changes_to_batch(&[old], &["*".to_string()], Some(&cloud), 4000);
        let (harness, acks) = run_signed(
            &cloud,
            vec![
                (1000, first),
                (2000, second),
                (3000, forged),
                (3500, unsigned),
                (4000, stale),
            ],
        );
        let outcomes: Vec<String> = acks.iter().map(refusal).collect();
        assert_eq!(outcomes.len(), 7, "{outcomes:#?}");
        assert_eq!(outcomes[0], "applied");
        assert!(outcomes[1].starts_with("replay"), "{}", outcomes[1]);
        assert!(
            outcomes[2].starts_with("signed by an untrusted key"),
            "{}",
            outcomes[2]
        );
        assert!(
            outcomes[3].contains("may not be changed remotely"),
            "{}",
            outcomes[3]
        );
        assert!(outcomes[4].starts_with("bad signature"), "{}", outcomes[4]);
        assert!(outcomes[5].starts_with("unsigned"), "{}", outcomes[5]);
        assert!(
            outcomes[6].starts_with("stale: version 1 is older than version 3"),
            "{}",
            outcomes[6]
        );
        let snap = harness.policy.snapshot();
        assert_eq!(snap.tunables["threshold"].value, PolicyValue::Float(4.0));
        assert_eq!(snap.tunables["sample_every"].value, PolicyValue::Int(10));
        let l1 = PolicyScope {
            key: "line".into(),
            value: "l1".into(),
        };
        assert_eq!(
            snap.tunables["threshold"].overrides.get(&l1),
            Some(&PolicyValue::Float(2.5))
        );
        assert_eq!(snap.tunables["threshold"].overrides.len(), 1);
        assert_eq!(harness.policy.applied_count(), 1);
        assert_eq!(harness.policy.refused_count(), 6);
        assert_eq!(harness.metrics.dead_letters.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn malformed_changes_are_refused() {
        let defaults = BTreeMap::from([("threshold".to_string(), PolicyValue::Float(4.0))]);
        let store = PolicyStore::new(defaults, BTreeSet::from(["threshold".to_string()]));
        store.enable_acks();
        let harness = Harness {
            policy: Arc::new(store),
            ..Harness::default()
        };
        let mut zero = change("threshold", Some("l1"), 2.0, 0);
        zero.diff = 0;
        let infinite = change("threshold", None, f64::INFINITY, 1);
        let mut batch = changes_to_batch(
            &[zero, infinite, change("threshold", Some("l2"), 2.0, 1)],
            1000,
        );
        // Half a scope on the last row.
        let mut columns = batch.columns().to_vec();
        columns[2] = Arc::new(arrow::array::StringArray::from(vec![
            Some("line"),
            None,
            None,
        ]));
        batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
        harness.run_sink(
            &ReconfigureSink { log_changes: false },
            policy_change_schema(),
            vec![(1000, batch)],
        );
        let (acks, _) = harness.policy.take_acks();
        let reasons: Vec<String> = acks.iter().map(refusal).collect();
        assert_eq!(reasons.len(), 3);
        assert!(
            reasons[0].contains("diff must be +1 or -1"),
            "{}",
            reasons[0]
        );
        assert!(reasons[1].contains("not a finite number"), "{}", reasons[1]);
        assert!(
            reasons[2].contains("scope_key and scope_value"),
            "{}",
            reasons[2]
        );
        assert_eq!(harness.policy.version(), 0);
    }

    #[test]
    fn check_requires_a_policy_stream() {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let policy = PolicySnapshot::default();
        let channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &policy,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        let sink = ReconfigureSink::default();
        assert!(sink.check(&policy_change_schema(), &cx).is_ok());
        let sim = crate::simulator::simulator_schema();
        let p = sink.check(&sim, &cx).unwrap_err();
        assert!(p.message.contains("no `policy` column"), "{}", p.message);
        assert!(p.help.unwrap().contains("`policy` transform"));
        let mut fields: Vec<Field> = policy_change_schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[5] = Field::new("diff", DataType::Utf8, false);
        let p = sink.check(&Arc::new(Schema::new(fields)), &cx).unwrap_err();
        assert!(p.message.contains("`diff`"), "{}", p.message);
        // A node that trusts keys needs the signature columns.
        let signed_only = PolicySnapshot {
            requires_signatures: true,
            ..PolicySnapshot::default()
        };
        let cx = CheckContext {
            policy: &signed_only,
            ..cx
        };
        let p = sink.check(&policy_change_schema(), &cx).unwrap_err();
        assert!(p.message.contains("trusted_keys"), "{}", p.message);
        assert!(sink.check(&signed_policy_change_schema(), &cx).is_ok());
    }

    #[test]
    fn config_may_be_empty() {
        let s: ReconfigureSink = toml::from_str("").unwrap();
        assert!(s.log_changes);
        assert!(toml::from_str::<ReconfigureSink>("bogus = 1").is_err());
    }
}
