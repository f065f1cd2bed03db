//! `channel` source and sink: an in-process link between pipelines run by one command
//! (for example an edge pipeline feeding a cloud pipeline).
//!
//! Every worker of the writing pipeline is a sender: it sends its batches, then its
//! watermark whenever its input frontier advances, then `Closed` when its input ends. Worker
//! 0 of the reading pipeline receives everything and holds its output at the smallest
//! watermark over all senders, so the reader's frontier follows the writers' event time.

use std::sync::Arc;
use std::time::Duration;

use arrow::datatypes::SchemaRef;
use isthmus_engine::batch::{Batch, BatchStream, Time};
use isthmus_engine::channel::ChannelMessage;
use isthmus_engine::{BuildContext, CheckContext, EngineError, Outputs, Problem, Sink, Source};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::operator::{Operator, source};

/// An example of a channel sink.
pub const SINK_EXAMPLE: &str = r#"[sinks.to_cloud]
type = "channel"
inputs = ["sim"]
channel = "edge-to-cloud"
"#;

/// An example of a channel source (in the reading pipeline).
pub const SOURCE_EXAMPLE: &str = r#"[sources.from_edge]
type = "channel"
channel = "edge-to-cloud"
"#;

/// How long an idle channel source waits before polling again.
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Messages a channel source handles per activation at most, so other operators get to run.
const MESSAGES_PER_ACTIVATION: usize = 4096;

/// Reads the rows that `channel` sinks of other pipelines run in the same command write to
/// the named channel, with their watermarks.
///
/// Its schema is the schema of what the writing sink receives; run or validate the writing
/// pipeline in the same command (`isthmus run edge.toml cloud.toml`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSource {
    /// The channel's name, as written by a `channel` sink, for example `"edge-to-cloud"`.
    pub channel: String,
}

/// Sends its input to the `channel` source of another pipeline run in the same command,
/// with its watermark (counted as forwarded: the rows leave this node).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelSink {
    /// The channel's name, read by exactly one `channel` source, for example
    /// `"edge-to-cloud"`.
    pub channel: String,
}

fn check_name(name: &str) -> Result<(), Problem> {
    if name.trim().is_empty() {
        return Err(Problem::at("channel", "the channel name is empty")
            .with_help("for example `channel = \"edge-to-cloud\"`"));
    }
    Ok(())
}

impl Source for ChannelSource {
    fn schemas(&self, cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        check_name(&self.channel)?;
        match cx.channels.get(&self.channel) {
            Some(schema) => Ok(Outputs::main(schema.clone())),
            None => Err(Problem::at("channel", format!("no pipeline run together writes channel `{}`", self.channel))
                .with_help(format!(
                    "run or validate the pipeline with a `channel` sink writing `{}` in the same command, for example `isthmus run edge.toml cloud.toml`",
                    self.channel
                ))),
        }
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let receiving = if cx.worker_index() == 0 {
            let (rx, expected) = cx.channels.receiver(&self.channel).ok_or_else(|| {
                cx.error(format!("no pipeline writes channel `{}`", self.channel))
            })?;
            Some((rx, expected))
        } else {
            None
        };
        let scope = cx.scope;
        let name = self.channel.clone();
        let stream = source::<_, CapacityContainerBuilder<Vec<Batch>>, _, _>(
            cx.scope,
            &cx.name,
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                // Other workers produce nothing: drop the capability at once.
                let (rx, expected) = match receiving {
                    Some((rx, expected)) => (Some(rx), expected),
                    None => (None, 0),
                };
                let mut cap = (rx.is_some() && expected > 0).then_some(cap);
                // Per sender: its watermark and whether it has closed.
                let mut watermarks: Vec<Time> = vec![0; expected];
                let mut closed: Vec<bool> = vec![false; expected];
                move |output| {
                    let (Some(c), Some(rx)) = (cap.as_mut(), rx.as_ref()) else {
                        return;
                    };
                    let mut handled = 0;
                    while handled < MESSAGES_PER_ACTIVATION {
                        let Ok(message) = rx.try_recv() else { break };
                        handled += 1;
                        match message {
                            ChannelMessage::Batch(batch) => output.session(&*c).give(batch),
                            ChannelMessage::Watermark { sender, time } => {
                                if sender >= watermarks.len() {
                                    watermarks.resize(sender + 1, 0);
                                    closed.resize(sender + 1, false);
                                }
                                watermarks[sender] = watermarks[sender].max(time);
                            }
                            ChannelMessage::Closed { sender } => {
                                if sender >= closed.len() {
                                    watermarks.resize(sender + 1, 0);
                                    closed.resize(sender + 1, false);
                                }
                                closed[sender] = true;
                            }
                        }
                    }
                    let open = watermarks
                        .iter()
                        .zip(&closed)
                        .filter(|(_, closed)| !**closed)
                        .map(|(w, _)| *w);
                    match open.min() {
                        None => {
                            tracing::debug!(channel = %name, "every sender closed");
                            cap = None;
                            return;
                        }
                        Some(low) if low > *c.time() => c.downgrade(&low),
                        Some(_) => {}
                    }
                    // No early stop on shutdown: a channel source drains until every
                    // sender has closed (they close once their own sources finish), so
                    // nothing in flight between pipelines is lost on Ctrl-C.
                    if handled == MESSAGES_PER_ACTIVATION {
                        activator.activate();
                    } else {
                        activator.activate_after(POLL_INTERVAL);
                    }
                }
            },
        );
        Ok(Outputs::main(stream))
    }

    fn reads_channel(&self) -> Option<String> {
        Some(self.channel.clone())
    }
}

impl Sink for ChannelSink {
    fn check(&self, _input: &SchemaRef, _cx: &CheckContext<'_>) -> Result<(), Problem> {
        check_name(&self.channel)
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let (sender, tx) = cx.channels.sender(&self.channel).ok_or_else(|| {
            cx.error(format!(
                "channel `{}` was not declared: no pipeline run together reads it",
                self.channel
            ))
        })?;
        let name = Arc::new(self.channel.clone());
        let mut watermark: Time = 0;
        let mut done = false;
        let mut disconnected = false;
        let mut delivery = cx.delivery_reporter();
        input.sink(Pipeline, &cx.name, move |(input, frontier)| {
            input.for_each_stamp(|_cap, data| {
                for container in data {
                    for batch in container.drain(..) {
                        if !disconnected && tx.send(ChannelMessage::Batch(batch)).is_err() {
                            disconnected = true;
                            tracing::warn!(channel = %name, "channel receiver is gone; rows are dropped");
                        }
                    }
                }
            });
            // Handed to the reading pipeline in this process.
            delivery.delivered_through_frontier(&frontier.frontier());
            if done {
                return;
            }
            match frontier.frontier().iter().min() {
                Some(&time) if time > watermark => {
                    watermark = time;
                    let _ = tx.send(ChannelMessage::Watermark { sender, time });
                }
                Some(_) => {}
                None => {
                    done = true;
                    let _ = tx.send(ChannelMessage::Closed { sender });
                }
            }
        });
        Ok(())
    }

    fn forwards(&self) -> bool {
        true
    }

    fn writes_channel(&self) -> Option<String> {
        Some(self.channel.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::rc::Rc;
    use std::sync::atomic::AtomicBool;

    use arrow::array::{Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field};
    use isthmus_engine::batch::{schema_with_time, time_array};
    use isthmus_engine::channel::ChannelHub;
    use isthmus_engine::policy::{PolicySnapshot, PolicyStore};
    use isthmus_engine::spec::{NodeSpec, Role};
    use isthmus_engine::telemetry::ComponentMetrics;
    use isthmus_engine::{Kind, Scope};
    use timely::dataflow::operators::{Input, Inspect, Probe};
    use timely::dataflow::{InputHandle, ProbeHandle};

    use super::*;

    /// Batches received: the time each was sent at and its `x` values.
    type Received = Rc<RefCell<Vec<(Time, Vec<i64>)>>>;

    fn context<'s>(scope: Scope<'s>, hub: &Arc<ChannelHub>, kind: Kind) -> BuildContext<'s> {
        BuildContext {
            scope,
            name: "chan".into(),
            node: Arc::new(NodeSpec {
                id: "test".into(),
                role: Role::Standalone,
            }),
            policy: Arc::new(PolicyStore::new(Default::default(), Default::default())),
            metrics: Arc::new(ComponentMetrics::new(
                "chan",
                kind,
                "channel",
                kind == Kind::Sink,
            )),
            channels: hub.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
            input_schema: None,
            base_dir: PathBuf::from("."),
            delivery: Arc::new(isthmus_engine::delivery::DeliveryTracker::new(0)),
        }
    }

    fn batch(ts: &[i64]) -> RecordBatch {
        let schema = schema_with_time([Field::new("x", DataType::Int64, false)]);
        RecordBatch::try_new(
            schema,
            vec![
                time_array(ts.to_vec()),
                Arc::new(Int64Array::from(ts.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn rows_and_watermarks_cross_the_channel() {
        let hub = Arc::new(ChannelHub::new());
        hub.declare_senders("link", 1);
        let mut worker = timely::worker::Worker::new(
            timely::WorkerConfig::default(),
            timely::communication::Allocator::Thread(
                timely::communication::allocator::thread::Thread::default(),
            ),
            Some(std::time::Instant::now()),
        );
        let received: Received = Default::default();
        let mut input: InputHandle<Time, CapacityContainerBuilder<Vec<Batch>>> = InputHandle::new();
        let probe = ProbeHandle::new();
        // The writing pipeline.
        worker.dataflow::<Time, _, _>(|scope| {
            let stream = scope.input_from(&mut input);
            ChannelSink {
                channel: "link".into(),
            }
            .build(stream, &context(scope, &hub, Kind::Sink))
            .unwrap();
        });
        // The reading pipeline.
        worker.dataflow::<Time, _, _>(|scope| {
            let source = ChannelSource {
                channel: "link".into(),
            };
            let out = source.build(&context(scope, &hub, Kind::Source)).unwrap();
            let r = received.clone();
            out.main
                .inspect_core(move |event| {
                    if let Ok((stamp, data)) = event {
                        let t = *stamp.least().unwrap();
                        for b in data.iter() {
                            let xs = b
                                .data
                                .column(1)
                                .as_any()
                                .downcast_ref::<Int64Array>()
                                .unwrap();
                            r.borrow_mut().push((t, xs.values().to_vec()));
                        }
                    }
                })
                .probe_with(&probe);
        });

        input.advance_to(1000);
        input.send(Batch::new(batch(&[1000, 1500])));
        input.advance_to(2000);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while probe.less_than(&2000) {
            assert!(
                std::time::Instant::now() < deadline,
                "watermark never crossed the channel"
            );
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        // The reader's frontier follows the writer's watermark.
        assert!(!probe.less_than(&2000));
        assert!(probe.less_equal(&2000));
        assert_eq!(received.borrow().len(), 1);
        assert_eq!(received.borrow()[0].1, vec![1000, 1500]);
        assert!(received.borrow()[0].0 <= 1000);

        input.send(Batch::new(batch(&[2500])));
        input.advance_to(3000);
        input.send(Batch::new(batch(&[3000, 3100])));
        drop(input);
        while worker.has_dataflows() {
            assert!(
                std::time::Instant::now() < deadline,
                "channel source never finished"
            );
            worker.step_or_park(Some(Duration::from_millis(1)));
        }
        let got = received.borrow().clone();
        let rows: Vec<i64> = got.iter().flat_map(|(_, xs)| xs.clone()).collect();
        assert_eq!(rows, vec![1000, 1500, 2500, 3000, 3100]);
        // Every batch is sent at a time no later than its rows.
        for (t, xs) in &got {
            assert!(
                *t <= *xs.iter().min().unwrap() as u64,
                "batch at {t} holds {xs:?}"
            );
        }
        assert!(got[1].0 >= 1000 && got[1].0 <= 2500);
    }

    #[test]
    fn source_needs_a_writer_and_sink_reports_its_channel() {
        let node = NodeSpec {
            id: "n".into(),
            role: Role::Standalone,
        };
        let policy = PolicySnapshot::default();
        let mut channels = BTreeMap::new();
        let cx = CheckContext {
            node: &node,
            policy: &policy,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        let source = ChannelSource {
            channel: "up".into(),
        };
        let problem = source.schemas(&cx).err().unwrap();
        assert_eq!(problem.key.as_deref(), Some("channel"));
        assert!(
            problem
                .message
                .contains("no pipeline run together writes channel `up`")
        );
        assert!(problem.help.unwrap().contains("same command"));
        let schema = batch(&[1]).schema();
        channels.insert("up".to_string(), schema.clone());
        let cx = CheckContext {
            node: &node,
            policy: &policy,
            base_dir: std::path::Path::new("."),
            channels: &channels,
        };
        assert_eq!(source.schemas(&cx).unwrap().main, schema);
        assert_eq!(source.reads_channel().as_deref(), Some("up"));
        let sink = ChannelSink {
            channel: "up".into(),
        };
        assert!(sink.forwards());
        assert_eq!(sink.writes_channel().as_deref(), Some("up"));
        assert!(sink.check(&schema, &cx).is_ok());
        assert!(
            ChannelSink {
                channel: " ".into()
            }
            .check(&schema, &cx)
            .is_err()
        );
    }

    fn run_linked(workers: usize) -> (u64, u64, u64) {
        use isthmus_engine::runtime::{Node, RunOptions, run};
        use isthmus_engine::{Registry, spec::parse_str, validate::validate_all};

        let mut registry = Registry::new();
        registry
            .source::<crate::simulator::SimulatorSource>("simulator", crate::simulator::EXAMPLE)
            .source::<ChannelSource>("channel", SOURCE_EXAMPLE)
            .sink::<ChannelSink>("channel", SINK_EXAMPLE)
            .sink::<crate::null::NullSink>("null", crate::null::EXAMPLE);
        let base = "[sources.sim]\ntype = \"simulator\"\ndevices = 7\nduration = \"10m\"\n";
        let edge = format!("[node]\nid = \"edge\"\n\n{base}\n{SINK_EXAMPLE}");
        let cloud = format!(
            "[node]\nid = \"cloud\"\n\n{SOURCE_EXAMPLE}\n[sinks.discard]\ntype = \"null\"\ninputs = [\"from_edge\"]\n"
        );
        let specs = vec![
            parse_str(&edge, std::path::Path::new("edge.toml"), &registry).unwrap(),
            parse_str(&cloud, std::path::Path::new("cloud.toml"), &registry).unwrap(),
        ];
        let plans = validate_all(specs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            plans[1].schemas["from_edge"],
            crate::simulator::simulator_schema()
        );
        let nodes: Vec<Node> = plans.into_iter().map(Node::new).collect();
        run(
            &nodes,
            &RunOptions {
                workers,
                ..RunOptions::default()
            },
        )
        .unwrap();
        let get = |node: &Node, name: &str, out: bool| {
            let m = node.component_metrics(name).unwrap();
            ComponentMetrics::get(if out { &m.rows_out } else { &m.rows_in })
        };
        (
            get(&nodes[0], "sim", true),
            get(&nodes[0], "to_cloud", false),
            get(&nodes[1], "discard", false),
        )
    }

    #[test]
    fn examples_link_two_pipelines_with_one_and_two_workers() {
        for workers in [1, 2] {
            let (produced, sent, received) = run_linked(workers);
            assert!(produced > 7 * 500, "{produced} rows");
            assert_eq!(sent, produced, "{workers} workers");
            assert_eq!(received, produced, "{workers} workers");
        }
    }
}
