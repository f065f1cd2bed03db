//! `policy_acks` source: the acknowledgements of this node's `reconfigure` sinks, one row
//! per remote policy change received (applied, or refused with the reason), so they can be
//! sent back to the cloud, which then knows which policy version every node runs.
//!
//! Event time is the wall-clock time the change was applied or refused. The source ends
//! when every `reconfigure` sink of the node has ended.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use isthmus_engine::batch::{Batch, BatchStream, Time, schema_with_time, time_array};
use isthmus_engine::policy::PolicyAck;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Outputs, Problem, Source};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;

/// An example: acknowledgements sent back to the cloud over Kafka.
pub const EXAMPLE: &str = r#"[sources.acks]
type = "policy_acks"

[sinks.acks_to_cloud]
type = "kafka"
inputs = ["acks"]
brokers = "127.0.0.1:9092"
topic = "isthmus.policy-acks"
format = "json"
key = "node"
"#;

/// How often the source looks for new acknowledgements.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Emits one row per remote policy change addressed to this node (or to every node) that its
/// `reconfigure` sinks received: the
/// node, the change (`policy`, `scope_key`, `scope_value`, `value`, `diff`, `version`), its
/// `status` (`applied` or `refused`) and, for a refusal, the `reason` (for example a bad
/// signature, an untrusted key, a replay, a stale version or a tunable not in `[policy]
/// remote`). `ts` is the wall-clock time (ms) of the decision. Send it to the cloud (for
/// example with a `kafka` sink keyed by `node`) so the cloud knows which version each node
/// runs. The source ends when the node's `reconfigure` sinks end.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyAcksSource {}

/// The schema of acknowledgements.
pub fn ack_schema() -> SchemaRef {
    schema_with_time([
        Field::new("node", DataType::Utf8, false),
        Field::new("policy", DataType::Utf8, false),
        Field::new("scope_key", DataType::Utf8, true),
        Field::new("scope_value", DataType::Utf8, true),
        Field::new("value", DataType::Utf8, false),
        Field::new("diff", DataType::Int64, false),
        Field::new("version", DataType::Int64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, true),
    ])
}

/// Encodes acknowledgements of `node` at wall-clock time `ts`.
pub fn acks_to_batch(node: &str, acks: &[PolicyAck], ts: Time) -> RecordBatch {
    let scope = |f: fn(&isthmus_engine::policy::PolicyScope) -> &str| {
        StringArray::from_iter(acks.iter().map(|a| a.change.scope.as_ref().map(f)))
    };
    let columns: Vec<ArrayRef> = vec![
        time_array(vec![ts as i64; acks.len()]),
        Arc::new(StringArray::from_iter_values(acks.iter().map(|_| node))),
        Arc::new(StringArray::from_iter_values(
            acks.iter().map(|a| a.change.name.as_str()),
        )),
        Arc::new(scope(|s| s.key.as_str())),
        Arc::new(scope(|s| s.value.as_str())),
        Arc::new(StringArray::from_iter_values(
            acks.iter().map(|a| a.change.value.to_string()),
        )),
        Arc::new(Int64Array::from_iter_values(
            acks.iter().map(|a| a.change.diff),
        )),
        Arc::new(Int64Array::from_iter_values(
            acks.iter().map(|a| a.change.version as i64),
        )),
        Arc::new(StringArray::from_iter_values(acks.iter().map(|a| {
            if a.refusal.is_none() {
                "applied"
            } else {
                "refused"
            }
        }))),
        Arc::new(StringArray::from_iter(
            acks.iter()
                .map(|a| a.refusal.as_ref().map(|r| r.to_string())),
        )),
    ];
    RecordBatch::try_new(ack_schema(), columns).expect("ack schema matches")
}

fn now_ms() -> Time {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as Time)
        .unwrap_or_default()
}

impl Source for PolicyAcksSource {
    fn schemas(&self, _cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        Ok(Outputs::main(ack_schema()))
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let policy = cx.policy.clone();
        policy.enable_acks();
        let node = cx.node.id.clone();
        let name = cx.name.clone();
        let reads = cx.worker_index() == 0;
        let scope = cx.scope;
        let stream = source::<_, CapacityContainerBuilder<Vec<Batch>>, _, _>(
            cx.scope,
            &cx.name,
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = reads.then_some(cap);
                let mut first = true;
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    let now = now_ms().max(*c.time());
                    c.downgrade(&now);
                    let (acks, writers_open) = policy.take_acks();
                    if !acks.is_empty() {
                        output
                            .session(&*c)
                            .give(Batch::new(acks_to_batch(&node, &acks, now)));
                    }
                    if !writers_open {
                        if first {
                            tracing::warn!(component = %name, "this node has no `reconfigure` sink: there is nothing to acknowledge");
                        }
                        cap = None;
                        return;
                    }
                    first = false;
                    activator.activate_after(POLL_INTERVAL);
                }
            },
        );
        Ok(Outputs::main(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use isthmus_engine::policy::{PolicyChange, PolicyScope, PolicyValue, Refusal};

    #[test]
    fn acks_carry_the_change_and_the_outcome() {
        let change = PolicyChange {
            name: "threshold".into(),
            scope: Some(PolicyScope {
                key: "line".into(),
                value: "p1-l1".into(),
            }),
            value: PolicyValue::Float(3.0),
            diff: 1,
            version: 17,
        };
        let acks = [
            PolicyAck {
                change: change.clone(),
                refusal: None,
            },
            PolicyAck {
                change,
                refusal: Some(Refusal::Replay("threshold".into())),
            },
        ];
        let batch = acks_to_batch("edge-1", &acks, 5);
        let text = arrow::util::pretty::pretty_format_batches(&[batch])
            .unwrap()
            .to_string();
        assert!(text.contains("| edge-1 | threshold | line      | p1-l1       | 3.0   | 1    | 17      | applied |"), "{text}");
        assert!(
            text.contains("refused | replay: this change to `threshold` was already applied |"),
            "{text}"
        );
    }

    #[test]
    fn config_is_empty() {
        assert!(toml::from_str::<PolicyAcksSource>("").is_ok());
        assert!(toml::from_str::<PolicyAcksSource>("topic = \"x\"").is_err());
    }
}
