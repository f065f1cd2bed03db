//! The `kafka` source: consumes topics in a consumer group and commits offsets only once
//! every sink of the node has delivered what the records became.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::SchemaRef;
use isthmus_engine::batch::{Batch, BatchStream, TIME_COLUMN, Time};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Source};
use isthmus_engine::delivery::DeliveryTracker;
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{DEAD_LETTER, DeadLetters, dead_letter_schema};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::units::DurationSpec;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use super::codec::{Decoder, WireFormat, declared_schema};
use super::{HEADER_EPOCH, HEADER_NODE, HEADER_SEQ, HEADER_SINK, client_config, shared};
use crate::link::LinkState;
use crate::replay::{ColumnType, TimeFormat, default_batch_rows, default_out_of_orderness};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sources.from_edges]
type = "kafka"
brokers = "127.0.0.1:9092"
topics = ["isthmus.readings"]
group = "isthmus-cloud"
format = "json"
dedup = true
columns = { device = "utf8", line = "utf8", value = "float64", score = "float64" }
"#;

/// Consumes Kafka topics. Offsets are committed only for the contiguous prefix of records
/// that every sink of this node has delivered (or that were filtered out), so a crash
/// replays what was not delivered: at-least-once, exactly-once in effect with `dedup`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KafkaSource {
    /// Bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Consumer group id; workers and processes in one group share the partitions.
    pub group: String,
    /// How rows are written in messages: `json`, `csv` or `arrow` (lz4-compressed IPC).
    #[serde(default)]
    pub format: WireFormat,
    /// The columns to read besides the event time, with their types (`utf8`, `float64`,
    /// `int64`, `bool`). Other keys are ignored; missing ones are null.
    pub columns: BTreeMap<String, ColumnType>,
    /// The key (json) or first field (csv) holding the event time.
    #[serde(default = "default_ts_key")]
    pub timestamp_column: String,
    /// How the event time is written in json and csv: `rfc3339` (as the kafka sink writes
    /// it), `unix_ms`, `unix_s` or a strftime pattern.
    #[serde(default = "default_wire_time_format")]
    pub timestamp_format: String,
    /// Where a new group starts: `earliest` or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Drop messages whose producer headers (node, sink, epoch, sequence) were already seen,
    /// so a replayed edge spool is counted once.
    #[serde(default)]
    pub dedup: bool,
    /// Sequences remembered per producer for `dedup`.
    #[serde(default = "default_dedup_window")]
    pub dedup_window: usize,
    /// The watermark trails the largest event time seen by this much.
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness: DurationSpec,
    /// A worker that received nothing for this long follows the other workers' watermark
    /// (a worker may own no partition).
    #[serde(default = "default_idle")]
    pub idle_timeout: DurationSpec,
    /// Finish when no message arrived for this long (batch jobs and tests); by default the
    /// source runs until the process is stopped.
    #[serde(default)]
    pub stop_after_idle: Option<DurationSpec>,
    /// How often delivered offsets are committed.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: DurationSpec,
    /// Rows per batch at most.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
    /// librdkafka properties, passed through verbatim (e.g. `"security.protocol"`).
    #[serde(default)]
    pub librdkafka: BTreeMap<String, String>,
}

fn default_ts_key() -> String {
    TIME_COLUMN.to_string()
}
fn default_wire_time_format() -> String {
    "rfc3339".to_string()
}
fn default_start() -> String {
    "earliest".to_string()
}
fn default_dedup_window() -> usize {
    1_000_000
}
fn default_idle() -> DurationSpec {
    DurationSpec(Duration::from_millis(1000))
}
fn default_commit_interval() -> DurationSpec {
    DurationSpec(Duration::from_millis(1000))
}

impl KafkaSource {
    fn check(&self) -> Result<(SchemaRef, Vec<ColumnType>, TimeFormat), Problem> {
        if self.brokers.trim().is_empty() {
            return Err(Problem::at("brokers", "no bootstrap server given")
                .with_help("e.g. brokers = \"127.0.0.1:9092\""));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(Problem::at("topics", "give at least one non-empty topic"));
        }
        if self.group.trim().is_empty() {
            return Err(Problem::at("group", "the consumer group id is empty"));
        }
        if !matches!(self.start.as_str(), "earliest" | "latest") {
            return Err(
                Problem::at("start", format!("`{}` is not a start position", self.start))
                    .with_help("use \"earliest\" or \"latest\""),
            );
        }
        if self.batch_rows == 0 {
            return Err(Problem::at("batch_rows", "batch_rows must be at least 1"));
        }
        if self.dedup && self.dedup_window == 0 {
            return Err(Problem::at(
                "dedup_window",
                "dedup_window must be at least 1",
            ));
        }
        if self.columns.contains_key(TIME_COLUMN) {
            return Err(Problem::at(
                "columns",
                format!("`{TIME_COLUMN}` is the event-time column"),
            )
            .with_help("leave it out of `columns`: it is always read, from `timestamp_column`"));
        }
        let time_format = TimeFormat::check(&self.timestamp_format)?;
        check_librdkafka(&self.librdkafka, &self.brokers, "consumer")?;
        let columns: Vec<(String, ColumnType)> =
            self.columns.iter().map(|(k, t)| (k.clone(), *t)).collect();
        let types = columns.iter().map(|(_, t)| *t).collect();
        Ok((declared_schema(&columns), types, time_format))
    }
}

/// Checks that librdkafka accepts the pass-through properties (names and values), as a
/// problem at `librdkafka`.
pub(crate) fn check_librdkafka(
    user: &BTreeMap<String, String>,
    brokers: &str,
    kind: &str,
) -> Result<(), Problem> {
    if user.is_empty() {
        return Ok(());
    }
    let config = client_config(brokers, user);
    let result = if kind == "consumer" {
        let mut config = config;
        config.set("group.id", "isthmus-validate");
        config.create::<BaseConsumer>().map(|_| ())
    } else {
        config
            .create::<rdkafka::producer::BaseProducer>()
            .map(|_| ())
    };
    result.map_err(|e| {
        Problem::at(
            "librdkafka",
            format!("librdkafka refuses these properties: {e}"),
        )
        .with_help("names and values are passed to librdkafka verbatim; see its CONFIGURATION.md")
    })
}

impl Source for KafkaSource {
    fn schemas(&self, _cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        let (schema, _, _) = self.check()?;
        Ok(Outputs::main(schema).with_side(DEAD_LETTER, dead_letter_schema()))
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let (schema, types, time_format) = self.check().map_err(|p| cx.error(p.message))?;
        let context = SourceContext {
            link: Mutex::new(LinkState::new(&cx.name, format!("Kafka {}", self.brokers))),
        };
        let mut config = client_config(&self.brokers, &BTreeMap::new());
        config
            .set("group.id", &self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &self.start)
            .set("enable.partition.eof", "false");
        for (k, v) in &self.librdkafka {
            config.set(k, v);
        }
        let consumer: BaseConsumer<SourceContext> = config
            .create_with_context(context)
            .map_err(|e| cx.error(format!("cannot create a Kafka consumer: {e}")))?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|e| cx.error(format!("cannot subscribe to {topics:?}: {e}")))?;

        let key = format!("kafka-source/{}/{}", cx.node.id, cx.name);
        let common = shared(&key, || Common {
            watermark: AtomicU64::new(0),
            joined: AtomicBool::new(false),
            dedup: Mutex::new(Dedup::new(self.dedup_window)),
        });
        let decoder = Decoder::new(
            self.format,
            schema,
            &types,
            self.timestamp_column.clone(),
            time_format,
        );

        let mut builder = OperatorBuilder::new(format!("Kafka({})", cx.name), cx.scope);
        let activator = cx.scope.activator_for(builder.operator_info().address);
        let (main_out, main_stream) = builder.new_output::<Vec<Batch>>();
        let (dead_out, dead_stream) = builder.new_output::<Vec<Batch>>();
        let mut main_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(main_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(dead_out);
        let settings = Settings {
            name: cx.name.clone(),
            dedup: self.dedup,
            batch_rows: self.batch_rows,
            out_of_orderness_ms: self.max_out_of_orderness.as_millis(),
            idle: self.idle_timeout.0,
            stop_after_idle: self.stop_after_idle.map(|d| d.0),
            commit_interval: self.commit_interval.0,
        };
        let metrics = cx.metrics.clone();
        let delivery = cx.delivery.clone();
        let shutdown = cx.shutdown.clone();
        builder.build_reschedule(move |mut caps| {
            let dead_cap = caps.pop().expect("dead-letter capability");
            let main_cap = caps.pop().expect("main capability");
            activator.activate();
            let mut state = Some(Consume {
                decoder,
                settings,
                metrics,
                delivery,
                common,
                caps: Some((main_cap, dead_cap)),
                dead: DeadLetters::default(),
                batch_offsets: Vec::new(),
                pending: HashMap::new(),
                committed: HashMap::new(),
                max_seen: None,
                last_message: Instant::now(),
                created: Instant::now(),
                joined: false,
                last_commit: Instant::now(),
                duplicates: 0,
                min_ts: i64::MAX,
            });
            move |_frontiers| {
                let Some(consume) = state.as_mut() else {
                    return false;
                };
                if consume.caps.is_none() {
                    // Finished: keep committing while the sinks deliver the rest.
                    if consume.drain(&consumer) {
                        activator.activate_after(Duration::from_millis(20));
                        return true;
                    }
                    state = None;
                    return false;
                }
                let mut main = main_out.activate();
                let mut dead = dead_out.activate();
                let stop = shutdown.load(Ordering::Relaxed);
                match consume.step(&consumer, &mut main, &mut dead, stop) {
                    Step::Busy => activator.activate(),
                    Step::Idle => activator.activate_after(Duration::from_millis(5)),
                    Step::Done => {
                        consume.caps = None;
                        activator.activate();
                    }
                }
                true
            }
        });
        Ok(Outputs::main(main_stream).with_side(DEAD_LETTER, dead_stream))
    }
}

/// Logs broker link transitions.
struct SourceContext {
    link: Mutex<LinkState>,
}

impl ClientContext for SourceContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        super::log_librdkafka("consumer", level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let mut link = self.link.lock().unwrap_or_else(|e| e.into_inner());
        if super::is_link_failure(&error) {
            link.down(reason);
        } else {
            tracing::debug!("kafka consumer: {error}: {reason}");
        }
    }
}

impl ConsumerContext for SourceContext {}

/// A (topic, partition) pair.
type Partition = (Arc<str>, i32);

/// Shared by the workers of one source.
struct Common {
    /// The largest watermark of any worker (idle workers follow it).
    watermark: AtomicU64,
    /// Whether the group has assigned partitions to any worker.
    joined: AtomicBool,
    dedup: Mutex<Dedup>,
}

/// Recently seen (node, sink, epoch) → sequences, bounded per producer.
struct Dedup {
    window: usize,
    producers: HashMap<(String, String, u64), SeqWindow>,
}

#[derive(Default)]
struct SeqWindow {
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Dedup {
    fn new(window: usize) -> Self {
        Dedup {
            window: window.max(1),
            producers: HashMap::new(),
        }
    }

    /// Whether this message was seen before (and remembers it).
    fn is_duplicate(&mut self, node: &str, sink: &str, epoch: u64, seq: u64) -> bool {
        let w = self
            .producers
            .entry((node.to_string(), sink.to_string(), epoch))
            .or_default();
        if !w.seen.insert(seq) {
            return true;
        }
        w.order.push_back(seq);
        if w.order.len() > self.window
            && let Some(old) = w.order.pop_front()
        {
            w.seen.remove(&old);
        }
        false
    }
}

struct Settings {
    name: String,
    dedup: bool,
    batch_rows: usize,
    out_of_orderness_ms: u64,
    idle: Duration,
    stop_after_idle: Option<Duration>,
    commit_interval: Duration,
}

type Output<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Time,
    CapacityContainerBuilder<Vec<Batch>>,
>;

enum Step {
    Busy,
    Idle,
    Done,
}

/// One worker's consumer and its bookkeeping.
struct Consume {
    decoder: Decoder,
    settings: Settings,
    metrics: Arc<ComponentMetrics>,
    delivery: Arc<DeliveryTracker>,
    common: Arc<Common>,
    /// Main and dead-letter capabilities; `None` once the source finished.
    caps: Option<(Capability<Time>, Capability<Time>)>,
    dead: DeadLetters,
    /// (topic, partition, offset) of the messages in the batch being built.
    batch_offsets: Vec<(Arc<str>, i32, i64)>,
    /// Per (topic, partition): offsets emitted and the time they were sent at, in order.
    pending: HashMap<Partition, VecDeque<(i64, Time)>>,
    /// Per (topic, partition): the next offset to commit (everything before is delivered).
    committed: HashMap<Partition, (i64, bool)>,
    max_seen: Option<i64>,
    last_message: Instant,
    /// When this consumer was created.
    created: Instant,
    /// Whether the group has assigned partitions (to any worker of this source).
    joined: bool,
    last_commit: Instant,
    duplicates: u64,
    min_ts: i64,
}

/// Header value as text.
fn header<'a>(msg: &'a rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<&'a [u8]> {
    let headers = msg.headers()?;
    headers.iter().find(|h| h.key == key).and_then(|h| h.value)
}

fn header_u64(msg: &rdkafka::message::BorrowedMessage<'_>, key: &str) -> Option<u64> {
    std::str::from_utf8(header(msg, key)?).ok()?.parse().ok()
}

impl Consume {
    fn step(
        &mut self,
        consumer: &BaseConsumer<SourceContext>,
        main: &mut Output<'_>,
        dead: &mut Output<'_>,
        stop: bool,
    ) -> Step {
        if stop {
            self.emit(main, dead);
            return Step::Done;
        }
        let started = Instant::now();
        let mut received = 0usize;
        while self.decoder.rows() < self.settings.batch_rows
            && started.elapsed() < Duration::from_millis(10)
        {
            match consumer.poll(Duration::ZERO) {
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(component = %self.settings.name, "kafka poll: {e}");
                    break;
                }
                Some(Ok(msg)) => {
                    received += 1;
                    self.take_message(&msg);
                }
            }
        }
        if received > 0 {
            self.last_message = Instant::now();
            self.joined = true;
            consumer
                .context()
                .link
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .up();
        }
        self.emit(main, dead);
        self.advance_watermark();
        self.commit(consumer, false);
        if received > 0 {
            return Step::Busy;
        }
        if let Some(limit) = self.settings.stop_after_idle {
            if !self.joined(consumer) {
                return Step::Idle;
            }
            if self.last_message.elapsed() >= limit {
                return Step::Done;
            }
        }
        Step::Idle
    }

    /// Whether the group has given this source partitions yet. Until then `stop_after_idle`
    /// does not count: joining a group can take a session timeout (a crashed member must
    /// expire first). Idleness counts from the join; after [`JOIN_LIMIT`] it counts anyway.
    fn joined(&mut self, consumer: &BaseConsumer<SourceContext>) -> bool {
        if self.joined {
            return true;
        }
        let assigned = self.common.joined.load(Ordering::Relaxed)
            || consumer.assignment().is_ok_and(|a| a.count() > 0);
        if assigned || self.created.elapsed() >= JOIN_LIMIT {
            if !assigned {
                tracing::warn!(component = %self.settings.name, "no partition assigned after {JOIN_LIMIT:?}; counting idleness anyway");
            }
            self.common.joined.store(true, Ordering::Relaxed);
            self.joined = true;
            self.last_message = Instant::now();
        }
        self.joined
    }

    fn take_message(&mut self, msg: &rdkafka::message::BorrowedMessage<'_>) {
        let topic: Arc<str> = Arc::from(msg.topic());
        self.batch_offsets
            .push((topic, msg.partition(), msg.offset()));
        if self.settings.dedup
            && let (Some(node), Some(sink), Some(epoch), Some(seq)) = (
                header(msg, HEADER_NODE),
                header(msg, HEADER_SINK),
                header_u64(msg, HEADER_EPOCH),
                header_u64(msg, HEADER_SEQ),
            )
        {
            let node = String::from_utf8_lossy(node);
            let sink = String::from_utf8_lossy(sink);
            let mut dedup = self.common.dedup.lock().unwrap_or_else(|e| e.into_inner());
            if dedup.is_duplicate(&node, &sink, epoch, seq) {
                self.duplicates += 1;
                if self.duplicates.is_power_of_two() {
                    tracing::info!(component = %self.settings.name, duplicates = self.duplicates, "dropped a message already received (node {node}, seq {seq})");
                }
                return;
            }
        }
        let Some(payload) = msg.payload() else {
            self.dead_letter("the message has no payload", b"", msg);
            return;
        };
        match self.decoder.push(payload) {
            Ok((lo, hi)) => {
                self.min_ts = self.min_ts.min(lo);
                self.max_seen = Some(self.max_seen.map_or(hi, |m| m.max(hi)));
            }
            Err(reason) => self.dead_letter(&reason, payload, msg),
        }
    }

    fn dead_letter(
        &mut self,
        reason: &str,
        payload: &[u8],
        msg: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let t = self.caps.as_ref().map_or(0, |(_, d)| *d.time());
        let where_ = format!(
            "{} [{}] @{}: {reason}",
            msg.topic(),
            msg.partition(),
            msg.offset()
        );
        self.dead.push(
            t,
            &self.settings.name,
            &where_,
            &String::from_utf8_lossy(payload),
        );
    }

    /// Sends the batch and dead letters, and remembers at which time its offsets went out.
    fn emit(&mut self, main: &mut Output<'_>, dead: &mut Output<'_>) {
        let Some((main_cap, dead_cap)) = self.caps.as_ref() else {
            return;
        };
        let mut at = *main_cap.time();
        if let Some(batch) = self.decoder.take() {
            at = (self.min_ts.max(0) as Time).max(*main_cap.time());
            main.session(&main_cap.delayed(&at)).give(Batch::new(batch));
        }
        self.min_ts = i64::MAX;
        if let Some(letters) = self.dead.take() {
            ComponentMetrics::add(&self.metrics.dead_letters, letters.num_rows() as u64);
            dead.session(dead_cap).give(letters);
        }
        for (topic, partition, offset) in self.batch_offsets.drain(..) {
            self.pending
                .entry((topic, partition))
                .or_default()
                .push_back((offset, at));
        }
    }

    fn advance_watermark(&mut self) {
        let mut watermark = match self.max_seen {
            Some(max) => {
                (max.saturating_sub(self.settings.out_of_orderness_ms as i64)).max(0) as Time
            }
            None => 0,
        };
        self.common
            .watermark
            .fetch_max(watermark, Ordering::Relaxed);
        if self.last_message.elapsed() >= self.settings.idle {
            watermark = watermark.max(self.common.watermark.load(Ordering::Relaxed));
        }
        if let Some((main_cap, dead_cap)) = self.caps.as_mut()
            && watermark > *main_cap.time()
        {
            main_cap.downgrade(&watermark);
            dead_cap.downgrade(&watermark);
        }
    }

    /// Commits, per partition, the offsets after the delivered prefix.
    fn commit(&mut self, consumer: &BaseConsumer<SourceContext>, now: bool) {
        let delivered = self.delivery.frontier();
        for (key, queue) in &mut self.pending {
            let mut next = None;
            while let Some(&(offset, at)) = queue.front() {
                if at >= delivered {
                    break;
                }
                next = Some(offset + 1);
                queue.pop_front();
            }
            if let Some(next) = next {
                self.committed.insert(key.clone(), (next, true));
            }
        }
        if !now && self.last_commit.elapsed() < self.settings.commit_interval {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), (next, dirty)) in &mut self.committed {
            if *dirty
                && tpl
                    .add_partition_offset(topic, *partition, Offset::Offset(*next))
                    .is_ok()
            {
                *dirty = false;
            }
        }
        self.last_commit = Instant::now();
        if tpl.count() == 0 {
            return;
        }
        let mode = if now {
            CommitMode::Sync
        } else {
            CommitMode::Async
        };
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!(component = %self.settings.name, "cannot commit offsets (they will be committed later or replayed): {e}");
            for (_, (_, dirty)) in self.committed.iter_mut() {
                *dirty = true;
            }
        }
    }

    /// After the source finished: commits as the sinks deliver; true while still waiting.
    fn drain(&mut self, consumer: &BaseConsumer<SourceContext>) -> bool {
        let everything = self.pending.values().all(VecDeque::is_empty);
        let sinks_done = self.delivery.frontier() == Time::MAX;
        if everything || sinks_done || self.last_message.elapsed() > DRAIN_LIMIT {
            self.commit(consumer, true);
            if !self.pending.values().all(VecDeque::is_empty) {
                tracing::warn!(component = %self.settings.name, "stopping with offsets the sinks have not delivered: they are not committed and will be read again");
            }
            if self.duplicates > 0 {
                tracing::info!(component = %self.settings.name, duplicates = self.duplicates, "duplicates dropped");
            }
            return false;
        }
        self.commit(consumer, false);
        true
    }
}

/// How long a finished source waits for its sinks before it stops without committing the rest.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// How long `stop_after_idle` waits for the group to assign partitions before it counts.
const JOIN_LIMIT: Duration = Duration::from_secs(90);
