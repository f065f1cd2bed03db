//! `reconfigure` sink: applies a policy stream (the output of a `policy` transform,
//! usually received from the cloud over a channel) to this node's live `[policy]`.
//!
//! Changes take effect atomically, from the next batch of every operator that reads the
//! policy. Changes to tunables not declared by this node, or not listed in `[policy]
//! remote`, are refused: each refusal is logged and counted as a dead letter.

use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use isthmus_engine::batch::{Batch, BatchStream, Time};
use isthmus_engine::policy::{
    PolicyChange, PolicySnapshot, PolicyValue, batch_to_changes, policy_change_schema,
};
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
/// Only tunables listed in `[policy] remote` may be changed; other changes are refused,
/// logged as warnings and counted as dead letters.
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

impl Sink for ReconfigureSink {
    fn check(&self, input: &SchemaRef, _cx: &CheckContext<'_>) -> Result<(), Problem> {
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
        Ok(())
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let policy = cx.policy.clone();
        let metrics: Arc<ComponentMetrics> = cx.metrics.clone();
        let name = cx.name.clone();
        let log_changes = self.log_changes;
        let mut pending: Vec<(Time, Batch)> = Vec::new();
        let mut delivery = cx.delivery_reporter();
        // One worker applies every change, in the order of their times.
        input.sink(Exchange::new(|_: &Batch| 0), &cx.name, move |(input, frontier)| {
            input.for_each_stamp(|cap, data| {
                let time = cap.least().copied().unwrap_or_default();
                for container in data {
                    pending.extend(container.drain(..).map(|b| (time, b)));
                }
            });
            if pending.is_empty() {
                delivery.delivered_through_frontier(&frontier.frontier());
                return;
            }
            pending.sort_by_key(|(t, _)| *t);
            for (_, batch) in pending.drain(..) {
                let mut changes = match batch_to_changes(&batch.data) {
                    Ok(changes) => changes,
                    Err(e) => {
                        ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
                        tracing::warn!(component = %name, "policy batch of {} rows ignored: {e}", batch.num_rows());
                        continue;
                    }
                };
                if changes.is_empty() {
                    continue;
                }
                coerce(&mut changes, &policy.snapshot());
                let report = policy.apply(&changes);
                if log_changes && report.applied > 0 {
                    let refused: Vec<&PolicyChange> = report.refused.iter().map(|(c, _)| c).collect();
                    for change in changes.iter().filter(|c| !refused.contains(c)) {
                        tracing::info!(component = %name, version = policy.version(), "policy change applied: {}", describe(change));
                    }
                }
                for (change, reason) in &report.refused {
                    tracing::warn!(component = %name, "policy change refused: {}: {reason}", describe(change));
                }
                ComponentMetrics::add(&metrics.dead_letters, report.refused.len() as u64);
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
    use isthmus_engine::policy::{PolicyScope, PolicyStore, changes_to_batch};
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
    }

    #[test]
    fn config_may_be_empty() {
        let s: ReconfigureSink = toml::from_str("").unwrap();
        assert!(s.log_changes);
        assert!(toml::from_str::<ReconfigureSink>("bogus = 1").is_err());
    }
}
