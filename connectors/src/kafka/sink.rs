//! The `kafka` sink: rows → messages → a bounded buffer (memory, or a durable disk spool)
//! → an idempotent producer (`acks=all`). Rows count as delivered (for the sources'
//! offset commits) when the broker acknowledged them, or, with a disk buffer, as soon as
//! the spool holds them: the spool is replayed in order after an outage or a restart.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use isthmus_engine::batch::{BatchStream, Time};
use isthmus_engine::component::{BuildContext, CheckContext, Sink};
use isthmus_engine::delivery::DeliveryReporter;
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::units::{ByteSize, DurationSpec};
use isthmus_spool::{Buffer, MemoryBuffer, Spool, SpoolConfig, SpoolError, WhenFull};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use schemars::JsonSchema;
use serde::Deserialize;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Operator;

use super::codec::{Encoder, OutMessage, WireFormat, schema_fingerprint};
use super::source::check_librdkafka;
use super::{
    HEADER_EPOCH, HEADER_FORMAT, HEADER_NODE, HEADER_SCHEMA, HEADER_SEQ, HEADER_SINK,
    client_config, shared,
};
use crate::link::{Backoff, LinkState};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sinks.to_cloud]
type = "kafka"
inputs = ["sim"]
brokers = "127.0.0.1:9092"
topic = "isthmus.readings"
format = "json"
key = "device"
buffer = { type = "disk", path = "spool/to_cloud", max_bytes = "8 MiB", when_full = "block" }
"#;

/// Produces rows to a Kafka topic through a bounded buffer, with an idempotent producer
/// (`acks=all`). Every message carries the headers `isthmus-node`, `isthmus-sink`,
/// `isthmus-epoch`, `isthmus-seq`, `isthmus-schema` and `isthmus-format`; a `kafka` source
/// with `dedup = true` drops replayed duplicates by (node, sink, epoch, seq).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSink {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// The topic to write.
    pub topic: String,
    /// How rows are written: `json` (one object per message), `csv` (one record per
    /// message) or `arrow` (one lz4-compressed Arrow IPC message per batch and key).
    #[serde(default)]
    pub format: WireFormat,
    /// A column whose value keys each message (same key → same partition, in order).
    #[serde(default)]
    pub key: Option<String>,
    /// Where messages wait for the broker: `{ type = "memory", max_bytes = "64 MiB" }`
    /// (the default) or `{ type = "disk", path = "…", max_bytes = "…" }`, a durable spool
    /// that survives outages, restarts and `kill -9`.
    #[serde(default)]
    pub buffer: BufferConfig,
    /// A topic for messages the broker rejects for good (e.g. too large); without it they
    /// are logged and counted as dead letters.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// When its input ends, how long the sink waits for the buffer to drain. What a disk
    /// spool still holds then is sent at the next start; a memory buffer's rest is lost
    /// (and logged).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: DurationSpec,
    /// librdkafka producer properties, passed through verbatim.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn default_drain_timeout() -> DurationSpec {
    DurationSpec(Duration::from_millis(30_000))
}

/// The buffer between a sink and its broker.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum BufferConfig {
    /// In memory: fast, lost if the process dies; rows count as delivered only once the
    /// broker acknowledged them.
    Memory {
        /// Bytes held at most (messages as encoded).
        #[serde(default = "default_memory_bytes")]
        max_bytes: ByteSize,
        /// When full: `block` (backpressure to the sources) or `drop_oldest`.
        #[serde(default)]
        when_full: WhenFullConfig,
    },
    /// On disk: append-only checksummed lz4 segments, fsync'd before rows count as
    /// delivered; replayed in order after an outage or a restart.
    Disk {
        /// The spool directory (relative to the pipeline file).
        path: String,
        /// Bytes on disk at most (a few MiB is fine for small devices).
        max_bytes: ByteSize,
        /// When full: `block` (backpressure to the sources) or `drop_oldest`.
        #[serde(default)]
        when_full: WhenFullConfig,
    },
}

fn default_memory_bytes() -> ByteSize {
    ByteSize(64 << 20)
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig::Memory {
            max_bytes: default_memory_bytes(),
            when_full: WhenFullConfig::Block,
        }
    }
}

/// What a full buffer does.
#[derive(Debug, Clone, Copy, Default, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenFullConfig {
    /// Wait until the broker takes messages (backpressure to the sources).
    #[default]
    Block,
    /// Drop the oldest messages (counted) to make room.
    DropOldest,
}

impl From<WhenFullConfig> for WhenFull {
    fn from(w: WhenFullConfig) -> Self {
        match w {
            WhenFullConfig::Block => WhenFull::Block,
            WhenFullConfig::DropOldest => WhenFull::DropOldest,
        }
    }
}

impl KafkaSink {
    fn check_config(&self, schema: Option<&SchemaRef>) -> Result<(), Problem> {
        if self.brokers.trim().is_empty() {
            return Err(Problem::at("brokers", "no bootstrap server given")
                .with_help("e.g. brokers = \"127.0.0.1:9092\""));
        }
        if self.topic.trim().is_empty() {
            return Err(Problem::at("topic", "the topic is empty"));
        }
        if let (Some(key), Some(schema)) = (&self.key, schema)
            && schema.field_with_name(key).is_err()
        {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            let help = match isthmus_engine::spec::suggest(key, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`? (columns: {})", names.join(", ")),
                None => format!("the columns are: {}", names.join(", ")),
            };
            return Err(
                Problem::at("key", format!("the input has no column `{key}`")).with_help(help),
            );
        }
        match &self.buffer {
            BufferConfig::Memory { max_bytes, .. } | BufferConfig::Disk { max_bytes, .. }
                if max_bytes.0 < 64 * 1024 =>
            {
                return Err(Problem::at(
                    "buffer.max_bytes",
                    format!("{} is too small for a buffer", max_bytes.0),
                )
                .with_help("give at least 64 KiB; a few MiB suits small devices"));
            }
            BufferConfig::Disk { path, .. } if path.trim().is_empty() => {
                return Err(Problem::at("buffer.path", "the spool directory is empty"));
            }
            _ => {}
        }
        check_librdkafka(&self.librdkafka, &self.brokers, "producer")
    }
}

impl Sink for KafkaSink {
    fn check(&self, input: &SchemaRef, cx: &CheckContext<'_>) -> Result<(), Problem> {
        if let BufferConfig::Disk { path, .. } = &self.buffer {
            let dir = cx.base_dir.join(path);
            if dir.exists() && !dir.is_dir() {
                return Err(Problem::at(
                    "buffer.path",
                    format!("`{}` exists and is not a directory", dir.display()),
                )
                .with_help("a disk spool is a directory of its own; name one that does not exist yet or is a spool"));
            }
        }
        self.check_config(Some(input))
    }

    fn forwards(&self) -> bool {
        true
    }

    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError> {
        let schema = cx.required_input_schema()?;
        self.check_config(Some(&schema))
            .map_err(|p| cx.error(p.message))?;
        let key = format!("kafka-sink/{}/{}", cx.node.id, cx.name);
        // Every worker's closure holds the slot, so the workers of this process share one
        // link (one producer, one spool) however far apart their dataflows are built.
        let slot = shared(&key, || Mutex::new(None::<Arc<Link>>));
        let link = {
            let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
            match slot.as_ref() {
                Some(l) => l.clone(),
                None => {
                    let made = Arc::new(Link::start(self, cx, &schema)?);
                    *slot = Some(made.clone());
                    made
                }
            }
        };
        let worker = Arc::new(Mutex::new(WorkerDelivery {
            reporter: cx.delivery_reporter(),
            marks: VecDeque::new(),
        }));
        link.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker.clone());
        let encoder = Encoder::new(self.format, self.key.clone());
        let name = cx.name.clone();
        let metrics = cx.metrics.clone();
        let shutdown = cx.shutdown.clone();
        let drain_timeout = self.drain_timeout.0;
        let mut finished = false;
        let mut messages: Vec<OutMessage> = Vec::new();
        let mut last_seq: Option<u64> = None;
        input.sink(Pipeline, &cx.name, move |(input, frontier)| {
            let _shared_by_workers = &slot;
            input.for_each_stamp(|_cap, data| {
                for container in data {
                    for batch in container.drain(..) {
                        messages.clear();
                        if let Err(e) = encoder.encode(&batch.data, &mut messages) {
                            ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
                            tracing::error!(component = %name, "cannot encode {} rows: {e}", batch.num_rows());
                            continue;
                        }
                        let frames: Vec<Vec<u8>> = messages.iter().map(frame).collect();
                        match link.append(&frames, &shutdown) {
                            Ok(Some(seq)) => last_seq = Some(seq),
                            Ok(None) => {}
                            Err(e) => {
                                ComponentMetrics::add(&metrics.dead_letters, batch.num_rows() as u64);
                                tracing::error!(component = %name, "{} rows not buffered: {e}", batch.num_rows());
                            }
                        }
                    }
                }
            });
            let time = frontier.frontier().iter().copied().min().unwrap_or(Time::MAX);
            {
                let mut w = worker.lock().unwrap_or_else(|e| e.into_inner());
                w.marks.push_back((time, last_seq));
                w.advance(link.durable());
            }
            if time == Time::MAX && !finished {
                finished = true;
                link.drain(drain_timeout, &name, &metrics);
            }
        });
        Ok(())
    }
}

/// Frame layout in the buffer: key length (u32 LE, `u32::MAX` for none), key, payload.
fn frame(m: &OutMessage) -> Vec<u8> {
    let key_len = m.key.as_ref().map_or(0, Vec::len);
    let mut out = Vec::with_capacity(4 + key_len + m.payload.len());
    match &m.key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
    out.extend_from_slice(&m.payload);
    out
}

/// Splits a frame into key and payload.
fn unframe(bytes: &[u8]) -> Option<(Option<&[u8]>, &[u8])> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?);
    if len == u32::MAX {
        return Some((None, &bytes[4..]));
    }
    let end = 4usize.checked_add(len as usize)?;
    Some((Some(bytes.get(4..end)?), &bytes[end..]))
}

/// A worker's promise marks: "everything before `time` is in frames up to `seq`".
struct WorkerDelivery {
    reporter: DeliveryReporter,
    marks: VecDeque<(Time, Option<u64>)>,
}

impl WorkerDelivery {
    /// Reports the marks whose frames are durable (`durable` = highest durable seq).
    fn advance(&mut self, durable: Option<u64>) {
        while let Some(&(time, seq)) = self.marks.front() {
            let done = match seq {
                None => true,
                Some(s) => durable.is_some_and(|d| d >= s),
            };
            if !done {
                break;
            }
            self.reporter.delivered_before(time);
            self.marks.pop_front();
        }
    }
}

/// The delivery marks of every worker of one sink (shared with the sender thread, which
/// reports a memory buffer's deliveries as the broker acknowledges them).
type Workers = Arc<Mutex<Vec<Arc<Mutex<WorkerDelivery>>>>>;

/// Reports to every worker's tracker what is durable now.
fn report_durable(workers: &Workers, durable: Option<u64>) {
    for w in workers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        w.lock().unwrap_or_else(|e| e.into_inner()).advance(durable);
    }
}

/// The buffer, the producer thread and the bookkeeping shared by a sink's workers.
struct Link {
    buffer: Arc<Buffer>,
    disk: bool,
    /// Highest seq acknowledged by the broker, contiguous from the start (+1; 0 = none).
    acked_next: Arc<AtomicU64>,
    workers: Workers,
    stop: Arc<AtomicBool>,
    sender: Mutex<Option<JoinHandle<()>>>,
    component: String,
}

impl Link {
    fn start(
        sink: &KafkaSink,
        cx: &BuildContext<'_>,
        schema: &SchemaRef,
    ) -> Result<Self, EngineError> {
        let (buffer, disk, epoch) = match &sink.buffer {
            BufferConfig::Memory {
                max_bytes,
                when_full,
            } => {
                let buffer = Buffer::Memory(
                    MemoryBuffer::new(max_bytes.0, (*when_full).into())
                        .map_err(|e| cx.error(format!("cannot create the buffer: {e}")))?,
                );
                // A fresh incarnation: its sequences never collide with an earlier run's.
                let epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64);
                (buffer, false, epoch)
            }
            BufferConfig::Disk {
                path,
                max_bytes,
                when_full,
            } => {
                let dir = cx.path(path);
                let config = SpoolConfig::new(max_bytes.0).with_when_full((*when_full).into());
                let spool = Spool::open(&dir, config).map_err(|e| {
                    cx.error(format!("cannot open the spool `{}`: {e}", dir.display()))
                })?;
                let stats = spool.stats();
                if stats.frames > 0 || stats.quarantined_segments > 0 {
                    tracing::info!(component = %cx.name, frames = stats.frames, bytes = stats.bytes, quarantined = stats.quarantined_segments, "spool opened with messages to replay");
                }
                // Frame numbers continue across restarts of the spool; with its
                // incarnation they name a message uniquely, so dedup sees replays.
                let epoch = spool.incarnation();
                let buffer = Buffer::Disk(spool);
                (buffer, true, epoch)
            }
        };
        let buffer = Arc::new(buffer);
        let mut config = client_config(&sink.brokers, &BTreeMap::new());
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "15000")
            .set("linger.ms", "5")
            .set("compression.type", "lz4");
        for (k, v) in &sink.librdkafka {
            config.set(k, v);
        }
        let acks = Arc::new(Mutex::new(Acks::default()));
        let context = SinkContext {
            acks: acks.clone(),
            link: Mutex::new(LinkState::new(&cx.name, format!("Kafka {}", sink.brokers))),
        };
        let producer: ThreadedProducer<SinkContext> = config
            .create_with_context(context)
            .map_err(|e| cx.error(format!("cannot create a Kafka producer: {e}")))?;
        let stop = Arc::new(AtomicBool::new(false));
        let acked_next = Arc::new(AtomicU64::new(0));
        let workers: Workers = Arc::default();
        let headers = StaticHeaders {
            node: cx.node.id.clone(),
            sink: cx.name.clone(),
            epoch: epoch.to_string(),
            schema: schema_fingerprint(schema),
            format: sink.format.name().to_string(),
        };
        let sender = Sender {
            buffer: buffer.clone(),
            producer,
            acks,
            topic: sink.topic.clone(),
            dead_letter_topic: sink.dead_letter_topic.clone(),
            headers,
            stop: stop.clone(),
            acked_next: acked_next.clone(),
            component: cx.name.clone(),
            metrics: cx.metrics.clone(),
            disk,
            workers: workers.clone(),
        };
        let link = Link {
            buffer,
            disk,
            acked_next,
            workers,
            stop,
            sender: Mutex::new(None),
            component: cx.name.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("kafka-{}", cx.name))
            .spawn(move || sender.run())
            .map_err(|e| EngineError::io("cannot start the Kafka sender thread", e))?;
        *link.sender.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(link)
    }

    /// Appends frames (blocking while the buffer is full, unless shutting down); returns
    /// the last sequence number given.
    fn append(&self, frames: &[Vec<u8>], shutdown: &AtomicBool) -> Result<Option<u64>, String> {
        if frames.is_empty() {
            return Ok(None);
        }
        loop {
            match self
                .buffer
                .append_batch_timeout(frames, Duration::from_millis(200))
            {
                Ok(range) => return Ok(range.end.checked_sub(1)),
                Err(SpoolError::Full { .. }) => {
                    if shutdown.load(Ordering::Relaxed) {
                        return Err("the buffer is full and the process is stopping".into());
                    }
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The highest sequence that counts as delivered: appended (disk) or acknowledged by
    /// the broker (memory).
    fn durable(&self) -> Option<u64> {
        if self.disk {
            self.buffer.stats().next_seq.checked_sub(1)
        } else {
            self.acked_next.load(Ordering::Acquire).checked_sub(1)
        }
    }

    /// Waits until the buffer is empty, the timeout passes, or the process stops.
    /// Waits until the broker acknowledged everything or `timeout` passed, also after Ctrl-C
    /// (a second Ctrl-C aborts the process).
    fn drain(&self, timeout: Duration, name: &str, metrics: &ComponentMetrics) {
        let started = Instant::now();
        while self.buffer.stats().frames > 0 {
            if started.elapsed() >= timeout {
                let left = self.buffer.stats().frames;
                if self.disk {
                    tracing::warn!(component = %name, "{left} messages stay in the spool; they are sent at the next start");
                } else {
                    ComponentMetrics::add(&metrics.undelivered, left);
                    tracing::error!(component = %name, "{left} messages were not acknowledged by the broker and are lost (use a disk buffer to keep them)");
                }
                return;
            }
            self.report_all();
            std::thread::sleep(Duration::from_millis(10));
        }
        self.report_all();
    }

    fn report_all(&self) {
        report_durable(&self.workers, self.durable());
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.sender.lock().unwrap_or_else(|e| e.into_inner()).take()
            && handle.join().is_err()
        {
            tracing::error!(component = %self.component, "the Kafka sender thread panicked");
        }
    }
}

/// Delivery results from librdkafka's thread.
#[derive(Default)]
struct Acks {
    ok: HashSet<u64>,
    /// Sequences that failed for now (broker unreachable, timed out): sent again.
    retry: Vec<(u64, String)>,
    /// Sequences the broker rejected for good.
    rejected: Vec<(u64, String)>,
}

struct SinkContext {
    acks: Arc<Mutex<Acks>>,
    link: Mutex<LinkState>,
}

impl ClientContext for SinkContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::log_librdkafka("producer", level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if super::is_link_failure(&error) {
            self.link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .down(reason);
        } else {
            tracing::debug!("kafka producer: {error}: {reason}");
        }
    }
}

impl ProducerContext for SinkContext {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: Self::DeliveryOpaque) {
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(_) => {
                acks.ok.insert(*seq);
                drop(acks);
                self.link.lock().unwrap_or_else(|e| e.into_inner()).up();
            }
            Err((e, _)) => {
                if is_permanent(e) {
                    acks.rejected.push((*seq, e.to_string()));
                } else {
                    acks.retry.push((*seq, e.to_string()));
                    drop(acks);
                    self.link
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .down(&e.to_string());
                }
            }
        }
    }
}

/// Errors no retry can fix: the message itself is refused.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::InvalidMessageSize
        )
    )
}

struct StaticHeaders {
    node: String,
    sink: String,
    epoch: String,
    schema: String,
    format: String,
}

/// Moves frames from the buffer to the producer, in order, and acknowledges the buffer's
/// contiguous delivered prefix.
struct Sender {
    buffer: Arc<Buffer>,
    producer: ThreadedProducer<SinkContext>,
    acks: Arc<Mutex<Acks>>,
    topic: String,
    dead_letter_topic: Option<String>,
    headers: StaticHeaders,
    stop: Arc<AtomicBool>,
    acked_next: Arc<AtomicU64>,
    component: String,
    metrics: Arc<ComponentMetrics>,
    disk: bool,
    workers: Workers,
}

/// Frames in flight at most.
const IN_FLIGHT: usize = 4096;

/// The oldest unacknowledged frames after `after` (up to `max` frames from the oldest).
fn peek_after(
    buffer: &Buffer,
    after: Option<u64>,
    max: usize,
) -> Result<Vec<(u64, Vec<u8>)>, SpoolError> {
    Ok(buffer
        .peek(max, 16 << 20)?
        .into_iter()
        .filter(|f| after.is_none_or(|a| f.seq > a))
        .map(|f| (f.seq, f.payload))
        .collect())
}

impl Sender {
    fn run(self) {
        let mut in_flight: VecDeque<u64> = VecDeque::new();
        let mut done: HashSet<u64> = HashSet::new();
        // In flight, but failed for now: sent again once everything in flight resolved.
        let mut failed: HashSet<u64> = HashSet::new();
        let mut sent_through: Option<u64> = None;
        let mut backoff = Backoff::default();
        let mut retry_at: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::Relaxed);
            // Collect delivery results.
            let (ok, retry, rejected) = {
                let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
                (
                    std::mem::take(&mut a.ok),
                    std::mem::take(&mut a.retry),
                    std::mem::take(&mut a.rejected),
                )
            };
            if !ok.is_empty() {
                backoff.reset();
            }
            done.extend(ok);
            for (seq, reason) in rejected {
                self.reject(seq, &reason);
                done.insert(seq);
            }
            failed.extend(retry.iter().map(|(seq, _)| *seq));
            if !retry.is_empty() {
                // Send everything from the oldest unacknowledged frame again, after a pause.
                let delay = backoff.next_delay();
                tracing::debug!(component = %self.component, "{} messages not delivered ({}); retrying in {delay:?}", retry.len(), retry[0].1);
                retry_at = Some(Instant::now() + delay);
            }
            let mut acked = None;
            while let Some(&front) = in_flight.front() {
                if !done.remove(&front) {
                    break;
                }
                acked = Some(front);
                in_flight.pop_front();
            }
            if let Some(seq) = acked {
                if let Err(e) = self.buffer.ack(seq) {
                    tracing::error!(component = %self.component, "cannot acknowledge the buffer: {e}");
                }
                self.acked_next.store(seq + 1, Ordering::Release);
                if !self.disk {
                    // A memory buffer's rows count as delivered once the broker has them.
                    report_durable(&self.workers, Some(seq));
                }
            }
            if retry_at.is_some() {
                // Wait for everything in flight to resolve before sending again.
                let resolved = in_flight
                    .iter()
                    .all(|s| done.contains(s) || failed.contains(s));
                if resolved && retry_at.is_some_and(|t| Instant::now() >= t) {
                    retry_at = None;
                    in_flight.clear();
                    done.clear();
                    failed.clear();
                    sent_through = None;
                } else {
                    if stopping {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
            }
            if stopping {
                break;
            }
            // Send what is not in flight yet.
            let room = IN_FLIGHT.saturating_sub(in_flight.len());
            let frames = if room == 0 {
                Vec::new()
            } else {
                match peek_after(&self.buffer, sent_through, in_flight.len() + room) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing::error!(component = %self.component, "cannot read the buffer: {e}");
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                }
            };
            if frames.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            for (seq, bytes) in frames {
                if !self.send(seq, &bytes, &self.topic) {
                    break;
                }
                sent_through = Some(seq);
                in_flight.push_back(seq);
            }
        }
        let _ = self
            .producer
            .flush(Duration::from_secs(if self.disk { 1 } else { 5 }));
    }

    /// Hands one frame to librdkafka; false if it must be tried again later.
    fn send(&self, seq: u64, bytes: &[u8], topic: &str) -> bool {
        let Some((key, payload)) = unframe(bytes) else {
            tracing::error!(component = %self.component, seq, "a buffered frame is malformed; skipped");
            self.acks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .rejected
                .push((seq, "malformed frame".into()));
            return true;
        };
        let seq_text = seq.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_NODE,
                value: Some(self.headers.node.as_bytes()),
            })
            .insert(Header {
                key: HEADER_SINK,
                value: Some(self.headers.sink.as_bytes()),
            })
            .insert(Header {
                key: HEADER_EPOCH,
                value: Some(self.headers.epoch.as_bytes()),
            })
            .insert(Header {
                key: HEADER_SEQ,
                value: Some(seq_text.as_bytes()),
            })
            .insert(Header {
                key: HEADER_SCHEMA,
                value: Some(self.headers.schema.as_bytes()),
            })
            .insert(Header {
                key: HEADER_FORMAT,
                value: Some(self.headers.format.as_bytes()),
            });
        let mut record: BaseRecord<'_, [u8], [u8], Box<u64>> =
            BaseRecord::with_opaque_to(topic, Box::new(seq))
                .payload(payload)
                .headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return true,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    if self.stop.load(Ordering::Relaxed) {
                        return false;
                    }
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => {
                    if is_permanent(&e) {
                        self.acks
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .rejected
                            .push((seq, e.to_string()));
                        return true;
                    }
                    tracing::warn!(component = %self.component, "cannot enqueue a message: {e}");
                    self.acks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .retry
                        .push((seq, e.to_string()));
                    return true;
                }
            }
        }
    }

    /// A message the broker refuses for good: to the dead-letter topic, or logged.
    fn reject(&self, seq: u64, reason: &str) {
        ComponentMetrics::add(&self.metrics.dead_letters, 1);
        tracing::error!(component = %self.component, seq, "the broker rejected a message for good: {reason}");
        if let Some(topic) = &self.dead_letter_topic
            && let Ok(frames) = peek_after(&self.buffer, seq.checked_sub(1), IN_FLIGHT)
            && let Some((_, bytes)) = frames.into_iter().find(|(s, _)| *s == seq)
            && let Some((key, payload)) = unframe(&bytes)
        {
            let mut record: BaseRecord<'_, [u8], [u8], Box<u64>> =
                BaseRecord::with_opaque_to(topic, Box::new(u64::MAX)).payload(payload);
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Err((e, _)) = self.producer.send(record) {
                tracing::error!(component = %self.component, "cannot write to the dead-letter topic `{topic}`: {e}");
            }
        }
    }
}
