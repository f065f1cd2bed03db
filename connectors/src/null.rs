//! `null` sink: discards its input (the engine still counts rows, bytes and latency).
//! Useful for benchmarks and for pipelines whose point is a side effect upstream.

use arrow::datatypes::SchemaRef;
use isthmus_engine::batch::BatchStream;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Problem, Sink};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::Operator;

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sinks.discard]
type = "null"
inputs = ["sim"]
"#;

/// Discards every row it receives; rows, bytes and latency are still counted in the
/// summary. Takes no settings.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NullSink {}

impl Sink for NullSink {
    fn check(&self, _input: &SchemaRef, _cx: &CheckContext<'_>) -> Result<(), Problem> {
        Ok(())
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let mut delivery = cx.delivery_reporter();
        input.sink(Pipeline, &cx.name, move |(input, frontier)| {
            input.for_each_stamp(|_cap, data| {
                for container in data {
                    container.clear();
                }
            });
            delivery.delivered_through_frontier(&frontier.frontier());
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field};
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::testing::Harness;
    use std::sync::Arc;

    use super::*;

    #[test]
    fn discards_rows() {
        let schema = schema_with_time([Field::new("x", DataType::Int64, false)]);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                time_array(vec![1, 2]),
                Arc::new(Int64Array::from(vec![1, 2])),
            ],
        )
        .unwrap();
        let harness = Harness::default();
        harness.run_sink(&NullSink {}, schema, vec![(1, batch.clone()), (2, batch)]);
        assert_eq!(
            harness
                .metrics
                .dead_letters
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn example_parses() {
        let table: toml::Table = toml::from_str(EXAMPLE).unwrap();
        assert_eq!(table["sinks"]["discard"]["type"].as_str(), Some("null"));
    }
}
