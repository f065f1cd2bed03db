//! Test harness for component authors: run one source, transform or sink on real timely
//! workers with batches you give, and collect what comes out.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use timely::dataflow::operators::{Input, Inspect, Probe};
use timely::dataflow::{InputHandle, ProbeHandle};

use crate::batch::{Batch, BatchStream, Time};
use crate::channel::ChannelHub;
use crate::component::{BuildContext, Kind, Outputs, Sink, Source, Transform};
use crate::policy::PolicyStore;
use crate::spec::{NodeSpec, Role};
use crate::telemetry::ComponentMetrics;

/// What a component produced: rows of the main output and of each side output, with the
/// timely time each batch was sent at.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// Main output.
    pub main: Vec<(Time, RecordBatch)>,
    /// Side outputs by name.
    pub side: BTreeMap<String, Vec<(Time, RecordBatch)>>,
}

impl Collected {
    /// Rows of the main output.
    pub fn main_rows(&self) -> usize {
        self.main.iter().map(|(_, b)| b.num_rows()).sum()
    }

    /// Rows of side output `name`.
    pub fn side_rows(&self, name: &str) -> usize {
        self.side
            .get(name)
            .map(|v| v.iter().map(|(_, b)| b.num_rows()).sum())
            .unwrap_or(0)
    }

    /// The main output concatenated into one batch (None if empty).
    pub fn main_batch(&self) -> Option<RecordBatch> {
        let batches: Vec<RecordBatch> = self.main.iter().map(|(_, b)| b.clone()).collect();
        let schema = batches.first()?.schema();
        Some(arrow::compute::concat_batches(&schema, &batches).expect("same schema"))
    }
}

/// Environment for a harness run.
pub struct Harness {
    /// The node's policy.
    pub policy: Arc<PolicyStore>,
    /// The channels.
    pub channels: Arc<ChannelHub>,
    /// Counters of the component under test.
    pub metrics: Arc<ComponentMetrics>,
    /// Relative paths resolve against this directory.
    pub base_dir: PathBuf,
}

impl Default for Harness {
    fn default() -> Self {
        Harness {
            policy: Arc::new(PolicyStore::new(Default::default(), Default::default())),
            channels: Arc::new(ChannelHub::new()),
            metrics: Arc::new(ComponentMetrics::new(
                "under_test",
                Kind::Transform,
                "test",
                false,
            )),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Harness {
    fn context<'s>(
        &self,
        scope: crate::batch::Scope<'s>,
        input_schema: Option<SchemaRef>,
    ) -> BuildContext<'s> {
        BuildContext {
            scope,
            name: "under_test".into(),
            node: Arc::new(NodeSpec {
                id: "test-node".into(),
                role: Role::Standalone,
            }),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            channels: self.channels.clone(),
            shutdown: Arc::new(AtomicBool::new(false)),
            input_schema,
            base_dir: self.base_dir.clone(),
            delivery: Arc::new(crate::delivery::DeliveryTracker::new(0)),
        }
    }

    /// Runs a source to completion on one worker.
    pub fn run_source(&self, source: &dyn Source) -> Collected {
        let out: Rc<RefCell<Collected>> = Default::default();
        {
            let out = out.clone();
            run_single(move |scope, probe| {
                let outputs = source
                    .build(&self.context(scope, None))
                    .expect("source builds");
                collect(outputs, &out, probe);
            });
        }
        Rc::try_unwrap(out)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| rc.borrow().clone())
    }

    /// Runs a transform on one worker over `input`, given as (time, batch) pairs sent in order
    /// (the input's watermark advances to each batch's time before it is sent).
    pub fn run_transform(
        &self,
        transform: &dyn Transform,
        schema: SchemaRef,
        input: Vec<(Time, RecordBatch)>,
    ) -> Collected {
        let out: Rc<RefCell<Collected>> = Default::default();
        {
            let out = out.clone();
            run_with_input(input, move |scope, stream, probe| {
                let outputs = transform
                    .build(stream, &self.context(scope, Some(schema.clone())))
                    .expect("transform builds");
                collect(outputs, &out, probe);
            });
        }
        Rc::try_unwrap(out)
            .map(RefCell::into_inner)
            .unwrap_or_else(|rc| rc.borrow().clone())
    }

    /// Runs a sink on one worker over `input`.
    pub fn run_sink(&self, sink: &dyn Sink, schema: SchemaRef, input: Vec<(Time, RecordBatch)>) {
        run_with_input(input, move |scope, stream, probe| {
            let stream = stream.probe_with(probe);
            sink.build(stream, &self.context(scope, Some(schema.clone())))
                .expect("sink builds");
        });
    }
}

fn collect<'s>(
    outputs: Outputs<BatchStream<'s>>,
    out: &Rc<RefCell<Collected>>,
    probe: &mut ProbeHandle<Time>,
) {
    let o = out.clone();
    outputs
        .main
        .inspect_core(move |event| {
            if let Ok((stamp, data)) = event {
                let t = stamp.least().copied().unwrap_or_default();
                o.borrow_mut()
                    .main
                    .extend(data.iter().map(|b: &Batch| (t, b.data.clone())));
            }
        })
        .probe_with(probe);
    for (name, stream) in outputs.side {
        let o = out.clone();
        stream
            .inspect_core(move |event| {
                if let Ok((stamp, data)) = event {
                    let t = stamp.least().copied().unwrap_or_default();
                    o.borrow_mut()
                        .side
                        .entry(name.to_string())
                        .or_default()
                        .extend(data.iter().map(|b: &Batch| (t, b.data.clone())));
                }
            })
            .probe_with(probe);
    }
}

fn run_single<F>(build: F)
where
    F: for<'s> FnOnce(crate::batch::Scope<'s>, &mut ProbeHandle<Time>),
{
    let mut worker = timely::worker::Worker::new(
        timely::WorkerConfig::default(),
        timely::communication::Allocator::Thread(
            timely::communication::allocator::thread::Thread::default(),
        ),
        Some(std::time::Instant::now()),
    );
    let mut probe = ProbeHandle::new();
    worker.dataflow::<Time, _, _>(|scope| build(scope, &mut probe));
    while worker.has_dataflows() {
        worker.step_or_park(Some(std::time::Duration::from_millis(1)));
    }
}

fn run_with_input<F>(input: Vec<(Time, RecordBatch)>, build: F)
where
    F: for<'s> FnOnce(crate::batch::Scope<'s>, BatchStream<'s>, &mut ProbeHandle<Time>),
{
    let mut worker = timely::worker::Worker::new(
        timely::WorkerConfig::default(),
        timely::communication::Allocator::Thread(
            timely::communication::allocator::thread::Thread::default(),
        ),
        Some(std::time::Instant::now()),
    );
    let mut probe = ProbeHandle::new();
    let mut handle: InputHandle<Time, timely::container::CapacityContainerBuilder<Vec<Batch>>> =
        InputHandle::new();
    worker.dataflow::<Time, _, _>(|scope| {
        let stream = scope.input_from(&mut handle);
        build(scope, stream, &mut probe);
    });
    for (time, batch) in input {
        if time > *handle.time() {
            handle.advance_to(time);
        }
        handle.send(Batch::new(batch));
        worker.step();
    }
    drop(handle);
    while worker.has_dataflows() {
        worker.step_or_park(Some(std::time::Duration::from_millis(1)));
    }
}
