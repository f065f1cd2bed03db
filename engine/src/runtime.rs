//! Compiles validated pipelines into timely dataflows and runs them.
//!
//! Each pipeline (node) runs as its own timely computation with `workers` worker threads;
//! several pipelines in one process talk through in-process channels. The same graph runs
//! with 1 or N workers and gives the same result: keyed operators exchange rows by key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use timely::dataflow::operators::{Concatenate, Inspect};

use crate::batch::{Batch, BatchStream, Time, now_ns};
use crate::channel::ChannelHub;
use crate::component::{BuildContext, ComponentConfig, Kind, Outputs};
use crate::delivery::DeliveryTracker;
use crate::error::EngineError;
use crate::policy::PolicyStore;
use crate::spec::NodeSpec;
use crate::telemetry::{ComponentMetrics, NodeSummary};
use crate::validate::Plan;

/// Options of a run.
#[derive(Clone)]
pub struct RunOptions {
    /// Timely worker threads per pipeline.
    pub workers: usize,
    /// Print a progress line per node this often (to stderr); `None` for quiet.
    pub progress_every: Option<Duration>,
    /// Set to ask every source to finish (Ctrl-C).
    pub shutdown: Arc<AtomicBool>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            workers: 1,
            progress_every: None,
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A pipeline ready to run: its plan, live policy and counters.
pub struct Node {
    /// The validated pipeline.
    pub plan: Arc<Plan>,
    /// Its `[node]`.
    pub spec: Arc<NodeSpec>,
    /// Its live policy.
    pub policy: Arc<PolicyStore>,
    /// Counters per component, aligned with `plan.spec.components`.
    pub metrics: Vec<Arc<ComponentMetrics>>,
}

impl Node {
    /// Prepares a validated pipeline.
    pub fn new(plan: Plan) -> Self {
        let policy = Arc::new(
            PolicyStore::new(plan.spec.policy_defaults.clone(), plan.spec.remote.clone())
                .with_trusted_keys(plan.spec.trusted_keys.clone()),
        );
        let metrics = plan
            .spec
            .components
            .iter()
            .map(|c| {
                let forwards = matches!(&c.config, ComponentConfig::Sink(s) if s.forwards());
                Arc::new(ComponentMetrics::new(
                    &c.name,
                    c.kind,
                    &c.type_name,
                    forwards,
                ))
            })
            .collect();
        Node {
            spec: Arc::new(plan.spec.node.clone()),
            plan: Arc::new(plan),
            policy,
            metrics,
        }
    }

    /// The node's totals so far.
    pub fn summary(&self) -> NodeSummary {
        NodeSummary::collect(
            &self.spec.id,
            &self.metrics,
            self.policy.applied_count(),
            self.policy.refused_count(),
        )
    }

    /// Counters of the component called `name`.
    pub fn component_metrics(&self, name: &str) -> Option<&Arc<ComponentMetrics>> {
        self.metrics.iter().find(|m| m.name == name)
    }
}

/// What a run produced.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// One summary per node, in the order given.
    pub nodes: Vec<NodeSummary>,
    /// Wall-clock duration of the run.
    pub elapsed: Duration,
}

/// Runs nodes together until every source has finished (or shutdown is requested).
pub fn run(nodes: &[Node], options: &RunOptions) -> Result<RunReport, EngineError> {
    let started = Instant::now();
    let hub = Arc::new(ChannelHub::new());
    let workers = options.workers.max(1);
    for node in nodes {
        for name in node.plan.channels().0 {
            hub.declare_senders(&name, workers);
        }
    }

    let mut handles = Vec::new();
    for node in nodes {
        let plan = node.plan.clone();
        let spec = node.spec.clone();
        let policy = node.policy.clone();
        let metrics = node.metrics.clone();
        let hub = hub.clone();
        let shutdown = options.shutdown.clone();
        let id = node.spec.id.clone();
        let sinks = plan
            .spec
            .components
            .iter()
            .filter(|c| c.kind == Kind::Sink)
            .count();
        let delivery = Arc::new(DeliveryTracker::new(sinks * workers));
        let handle = std::thread::Builder::new()
            .name(format!("isthmus-{id}"))
            .spawn(move || -> Result<(), EngineError> {
                let config = if workers == 1 {
                    timely::Config::thread()
                } else {
                    timely::Config::process(workers)
                };
                let guards = timely::execute(config, move |worker| {
                    let built = worker.dataflow::<Time, _, _>(|scope| {
                        let shared = Shared {
                            plan: &plan,
                            node: &spec,
                            policy: &policy,
                            metrics: &metrics,
                            hub: &hub,
                            shutdown: &shutdown,
                            delivery: &delivery,
                        };
                        build_graph(scope, &shared).map_err(|e| e.to_string())
                    });
                    if built.is_err() {
                        // A component could not start (a spool in use, say): stop the
                        // sources already built so the run ends now with the error, not
                        // when the sources run out.
                        shutdown.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    built
                })
                .map_err(EngineError::Internal)?;
                for result in guards.join() {
                    match result {
                        Ok(Ok(())) => {}
                        Ok(Err(message)) => return Err(EngineError::component(&id, message)),
                        Err(panic) => {
                            return Err(EngineError::Internal(format!(
                                "worker of node `{id}` panicked: {panic}"
                            )));
                        }
                    }
                }
                Ok(())
            })
            .map_err(|e| EngineError::io("cannot start a worker thread", e))?;
        handles.push(handle);
    }

    let mut last_progress = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(every) = options.progress_every
            && last_progress.elapsed() >= every
        {
            last_progress = Instant::now();
            for node in nodes {
                eprintln!("{}", node.summary().progress_line());
            }
        }
    }
    let mut first_error = None;
    for handle in handles {
        let result = handle
            .join()
            .unwrap_or_else(|_| Err(EngineError::Internal("node thread panicked".into())));
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    Ok(RunReport {
        nodes: nodes.iter().map(Node::summary).collect(),
        elapsed: started.elapsed(),
    })
}

/// Counts rows and bytes leaving a component.
fn count_out<'s>(stream: BatchStream<'s>, metrics: Arc<ComponentMetrics>) -> BatchStream<'s> {
    stream.inspect(move |b: &Batch| {
        ComponentMetrics::add(&metrics.rows_out, b.num_rows() as u64);
        ComponentMetrics::add(&metrics.bytes_out, b.byte_size() as u64);
    })
}

/// Counts rows and bytes entering a component; at sinks, records source→sink latency.
fn count_in<'s>(
    stream: BatchStream<'s>,
    metrics: Arc<ComponentMetrics>,
    is_sink: bool,
) -> BatchStream<'s> {
    stream.inspect(move |b: &Batch| {
        let rows = b.num_rows() as u64;
        ComponentMetrics::add(&metrics.rows_in, rows);
        ComponentMetrics::add(&metrics.bytes_in, b.byte_size() as u64);
        if is_sink {
            metrics.record_latency(now_ns().saturating_sub(b.created_ns) / 1000, rows);
        }
    })
}

/// Logs rows of a side output that nothing reads, so they are never silently lost: they
/// were already counted by the component (dead letters, late rows).
fn log_unread<'s>(stream: BatchStream<'s>, component: String, side: &'static str) {
    let mut seen: u64 = 0;
    stream.inspect(move |b: &Batch| {
        for row in 0..b.num_rows() {
            seen += 1;
            if seen <= 10 || seen.is_power_of_two() {
                let fields: Vec<String> = b
                    .data
                    .schema()
                    .fields()
                    .iter()
                    .zip(b.data.columns())
                    .map(|(f, c)| {
                        let v = arrow::util::display::array_value_to_string(c, row).unwrap_or_default();
                        format!("{}={v}", f.name())
                    })
                    .collect();
                tracing::warn!(component = %component, output = side, total = seen, "unread {side} row: {}", fields.join(" "));
            }
        }
    });
}

/// What every worker of a node shares while it builds the node's dataflow.
struct Shared<'a> {
    plan: &'a Plan,
    node: &'a Arc<NodeSpec>,
    policy: &'a Arc<PolicyStore>,
    metrics: &'a [Arc<ComponentMetrics>],
    hub: &'a Arc<ChannelHub>,
    shutdown: &'a Arc<AtomicBool>,
    delivery: &'a Arc<DeliveryTracker>,
}

fn build_graph<'s>(
    scope: timely::dataflow::Scope<'s, Time>,
    shared: &Shared<'_>,
) -> Result<(), EngineError> {
    let Shared {
        plan,
        node,
        policy,
        metrics,
        hub,
        shutdown,
        delivery,
    } = *shared;
    let spec = &plan.spec;
    let mut streams: HashMap<String, BatchStream<'s>> = HashMap::new();
    let mut read: BTreeMap<String, bool> = BTreeMap::new();
    for c in &spec.components {
        for input in &c.inputs {
            read.insert(input.text.clone(), true);
        }
    }
    for &i in &plan.order {
        let c = &spec.components[i];
        let m = metrics[i].clone();
        let input = if c.inputs.is_empty() {
            None
        } else {
            let mut inputs: Vec<BatchStream<'s>> = c
                .inputs
                .iter()
                .map(|r| {
                    streams.get(&r.text).cloned().ok_or_else(|| {
                        EngineError::Internal(format!("input `{}` not built", r.text))
                    })
                })
                .collect::<Result<_, _>>()?;
            let merged = if inputs.len() == 1 {
                inputs.pop().expect("one input")
            } else {
                scope.concatenate(inputs)
            };
            Some(count_in(merged, m.clone(), c.kind == Kind::Sink))
        };
        let cx = BuildContext {
            scope,
            name: c.name.clone(),
            node: node.clone(),
            policy: policy.clone(),
            metrics: m.clone(),
            channels: hub.clone(),
            shutdown: shutdown.clone(),
            input_schema: c
                .inputs
                .first()
                .and_then(|r| plan.schemas.get(&r.text).cloned()),
            base_dir: spec.base_dir.clone(),
            delivery: delivery.clone(),
        };
        let outputs: Option<Outputs<BatchStream<'s>>> = match (&c.config, input) {
            (ComponentConfig::Source(s), _) => Some(s.build(&cx)?),
            (ComponentConfig::Transform(t), Some(input)) => Some(t.build(input, &cx)?),
            (ComponentConfig::Sink(s), Some(input)) => {
                s.build(input, &cx)?;
                None
            }
            _ => {
                return Err(EngineError::Internal(format!(
                    "component `{}` has no input",
                    c.name
                )));
            }
        };
        if let Some(outputs) = outputs {
            streams.insert(c.name.clone(), count_out(outputs.main, m.clone()));
            for (side, stream) in outputs.side {
                let key = format!("{}.{side}", c.name);
                if read.contains_key(&key) {
                    streams.insert(key, stream);
                } else {
                    log_unread(stream, c.name.clone(), side);
                }
            }
        }
    }
    if scope.index() == 0 {
        for c in &spec.components {
            if c.kind != Kind::Sink && !read.contains_key(&c.name) {
                tracing::warn!(component = %c.name, "nothing reads `{}`: its rows are counted, then discarded", c.name);
            }
        }
    }
    if shutdown.load(Ordering::Relaxed) {
        tracing::info!("shutdown requested before start");
    }
    Ok(())
}
