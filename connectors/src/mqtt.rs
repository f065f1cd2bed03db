//! The `mqtt` source (rumqttc): subscribes to topic filters (wildcards `+` and `#`), QoS 0
//! or 1, JSON payloads. With QoS 1 a message is acknowledged to the broker only once every
//! sink of the node has delivered it, so a crash makes the broker send it again. The
//! connection is re-established after a broker restart with jittered exponential backoff.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, SchemaRef};
use crossbeam_channel::{Receiver, TryRecvError};
use isthmus_engine::batch::{Batch, BatchStream, TIME_COLUMN, Time, now_ms};
use isthmus_engine::component::{BuildContext, CheckContext, Outputs, Source};
use isthmus_engine::delivery::DeliveryTracker;
use isthmus_engine::error::{EngineError, Problem};
use isthmus_engine::ops::{DEAD_LETTER, DeadLetters, dead_letter_schema};
use isthmus_engine::telemetry::ComponentMetrics;
use isthmus_engine::units::DurationSpec;
use rumqttc::{Client, Event, MqttOptions, Packet, Publish, QoS};
use schemars::JsonSchema;
use serde::Deserialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::Capability;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use crate::kafka::codec::{Decoder, WireFormat, declared_schema};
use crate::link::{Backoff, LinkState};
use crate::replay::{ColumnType, TimeFormat, default_batch_rows, default_out_of_orderness};

/// An example pipeline fragment.
pub const EXAMPLE: &str = r#"[sources.sensors]
type = "mqtt"
broker = "127.0.0.1:1883"
topics = ["plant/+/line/+/temperature", "plant/#"]
qos = 1
columns = { device = "utf8", value = "float64" }
topic_column = "topic"
"#;

/// Subscribes to MQTT topics and reads one JSON object per message.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MqttSource {
    /// The broker, `host:port`.
    pub broker: String,
    /// Topic filters; `+` matches one level, `#` the rest.
    pub topics: Vec<String>,
    /// 0 (at most once) or 1 (at least once: acknowledged after the sinks delivered).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// The MQTT client id (a persistent session: QoS 1 messages sent while the edge was
    /// away are delivered when it reconnects). Default `isthmus-<node>-<name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The JSON keys to read besides the event time, with their types.
    pub columns: BTreeMap<String, ColumnType>,
    /// Put each message's topic in this column (e.g. to key by device).
    #[serde(default)]
    pub topic_column: Option<String>,
    /// The key holding the event time.
    #[serde(default = "default_ts_key")]
    pub timestamp_column: String,
    /// How the event time is written: `rfc3339`, `unix_ms`, `unix_s` or a strftime pattern.
    #[serde(default = "default_time_format")]
    pub timestamp_format: String,
    /// The watermark trails the largest event time seen by this much.
    #[serde(default = "default_out_of_orderness")]
    pub max_out_of_orderness: DurationSpec,
    /// With no message for this long, the watermark follows the wall clock (less
    /// `max_out_of_orderness`), so windows close while devices are quiet.
    #[serde(default = "default_idle")]
    pub idle_timeout: DurationSpec,
    /// Finish when no message arrived for this long (tests, batch jobs); by default the
    /// source runs until the process is stopped.
    #[serde(default)]
    pub stop_after_idle: Option<DurationSpec>,
    /// Rows per batch at most.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: usize,
}

fn default_qos() -> u8 {
    1
}
fn default_ts_key() -> String {
    TIME_COLUMN.to_string()
}
fn default_time_format() -> String {
    "rfc3339".to_string()
}
fn default_idle() -> DurationSpec {
    DurationSpec(Duration::from_millis(5000))
}

/// With messages waiting for their acknowledgement and none arriving for this long, the
/// flow is taken to be stalled on those acknowledgements (see `advance_watermark`).
const ACK_STALL: Duration = Duration::from_millis(50);

/// Splits `host:port`.
fn host_port(broker: &str) -> Option<(String, u16)> {
    let (host, port) = broker.rsplit_once(':')?;
    let port = port.parse().ok()?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

impl MqttSource {
    fn check(&self) -> Result<(SchemaRef, Vec<ColumnType>, TimeFormat), Problem> {
        if host_port(&self.broker).is_none() {
            return Err(
                Problem::at("broker", format!("`{}` is not host:port", self.broker))
                    .with_help("e.g. broker = \"127.0.0.1:1883\""),
            );
        }
        if self.topics.is_empty() {
            return Err(Problem::at("topics", "give at least one topic filter"));
        }
        for t in &self.topics {
            if let Err(reason) = check_filter(t) {
                return Err(Problem::at("topics", format!("`{t}`: {reason}")));
            }
        }
        if self.qos > 1 {
            return Err(
                Problem::at("qos", format!("QoS {} is not supported", self.qos))
                    .with_help("use 0 (at most once) or 1 (at least once)"),
            );
        }
        if self.batch_rows == 0 {
            return Err(Problem::at("batch_rows", "batch_rows must be at least 1"));
        }
        if self.columns.contains_key(TIME_COLUMN) {
            return Err(Problem::at(
                "columns",
                format!("`{TIME_COLUMN}` is the event-time column"),
            )
            .with_help("leave it out of `columns`: it is read from `timestamp_column`"));
        }
        if let Some(tc) = &self.topic_column
            && (self.columns.contains_key(tc) || tc == TIME_COLUMN)
        {
            return Err(Problem::at(
                "topic_column",
                format!("`{tc}` is already a column"),
            ));
        }
        let time_format = TimeFormat::check(&self.timestamp_format)?;
        let columns: Vec<(String, ColumnType)> =
            self.columns.iter().map(|(k, t)| (k.clone(), *t)).collect();
        let types = columns.iter().map(|(_, t)| *t).collect();
        Ok((declared_schema(&columns), types, time_format))
    }

    fn output_schema(&self, payload: &SchemaRef) -> SchemaRef {
        match &self.topic_column {
            None => payload.clone(),
            Some(tc) => {
                let mut fields: Vec<Field> = payload
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.push(Field::new(tc, DataType::Utf8, false));
                Arc::new(arrow::datatypes::Schema::new(fields))
            }
        }
    }
}

/// Checks an MQTT topic filter: `#` only last and alone in its level, `+` alone in its level.
fn check_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("an empty topic filter".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err("`#` must be the whole last level".into());
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

enum Incoming {
    Message(Publish),
}

impl Source for MqttSource {
    fn schemas(&self, _cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem> {
        let (schema, _, _) = self.check()?;
        Ok(Outputs::main(self.output_schema(&schema)).with_side(DEAD_LETTER, dead_letter_schema()))
    }

    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError> {
        let (schema, types, time_format) = self.check().map_err(|p| cx.error(p.message))?;
        let output = self.output_schema(&schema);
        let mut builder = OperatorBuilder::new(format!("Mqtt({})", cx.name), cx.scope);
        let activator = cx.scope.activator_for(builder.operator_info().address);
        let (main_out, main_stream) = builder.new_output::<Vec<Batch>>();
        let (dead_out, dead_stream) = builder.new_output::<Vec<Batch>>();
        let mut main_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(main_out);
        let mut dead_out = OutputBuilder::<_, CapacityContainerBuilder<Vec<Batch>>>::from(dead_out);
        // One connection per source, on worker 0.
        let session = if cx.worker_index() == 0 {
            Some(self.connect(cx)?)
        } else {
            None
        };
        let decoder = Decoder::new(
            WireFormat::Json,
            schema,
            &types,
            self.timestamp_column.clone(),
            time_format,
        );
        let settings = (
            cx.name.clone(),
            self.batch_rows,
            self.max_out_of_orderness.as_millis(),
            self.idle_timeout.0,
            self.stop_after_idle.map(|d| d.0),
        );
        let metrics = cx.metrics.clone();
        let delivery = cx.delivery.clone();
        let shutdown = cx.shutdown.clone();
        builder.build_reschedule(move |mut caps| {
            let dead_cap = caps.pop().expect("dead-letter capability");
            let main_cap = caps.pop().expect("main capability");
            let mut state = session.map(|(client, rx, stop)| {
                activator.activate();
                Reader {
                    client,
                    rx,
                    stop,
                    decoder,
                    output,
                    name: settings.0.clone(),
                    batch_rows: settings.1,
                    out_of_orderness_ms: settings.2,
                    idle: settings.3,
                    stop_after_idle: settings.4,
                    metrics: metrics.clone(),
                    delivery: delivery.clone(),
                    caps: Some((main_cap, dead_cap)),
                    dead: DeadLetters::default(),
                    topics: Vec::new(),
                    batch: Vec::new(),
                    pending: VecDeque::new(),
                    max_seen: None,
                    min_ts: i64::MAX,
                    last_message: Instant::now(),
                    finished_at: None,
                }
            });
            move |_frontiers| {
                let Some(reader) = state.as_mut() else {
                    return false;
                };
                if reader.caps.is_none() {
                    if reader.drain() {
                        activator.activate_after(Duration::from_millis(20));
                        return true;
                    }
                    state = None;
                    return false;
                }
                let mut main = main_out.activate();
                let mut dead = dead_out.activate();
                let busy = reader.step(&mut main, &mut dead, shutdown.load(Ordering::Relaxed));
                match busy {
                    Some(true) => activator.activate(),
                    Some(false) => activator.activate_after(Duration::from_millis(5)),
                    None => {
                        reader.caps = None;
                        reader.finished_at = Some(Instant::now());
                        activator.activate();
                    }
                }
                true
            }
        });
        Ok(Outputs::main(main_stream).with_side(DEAD_LETTER, dead_stream))
    }
}

type Session = (Client, Receiver<Incoming>, Arc<AtomicBool>);

impl MqttSource {
    /// Starts the connection thread: it (re)connects with backoff, (re)subscribes and
    /// forwards publishes.
    fn connect(&self, cx: &BuildContext<'_>) -> Result<Session, EngineError> {
        let (host, port) = host_port(&self.broker)
            .ok_or_else(|| cx.error(format!("`{}` is not host:port", self.broker)))?;
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| format!("isthmus-{}-{}", cx.node.id, cx.name));
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(self.qos == 0)
            .set_manual_acks(true)
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 1024);
        let qos = if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        let (tx, rx) = crossbeam_channel::bounded::<Incoming>(65_536);
        let stop = Arc::new(AtomicBool::new(false));
        let topics = self.topics.clone();
        let subscriber = client.clone();
        let name = cx.name.clone();
        let what = format!("MQTT {}", self.broker);
        let stop_flag = stop.clone();
        std::thread::Builder::new()
            .name(format!("mqtt-{}", cx.name))
            .spawn(move || {
                let mut link = LinkState::new(&name, what);
                let mut backoff = Backoff::default();
                for event in connection.iter() {
                    if stop_flag.load(Ordering::Relaxed) {
                        break;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            link.up();
                            backoff.reset();
                            for t in &topics {
                                if let Err(e) = subscriber.try_subscribe(t.clone(), qos) {
                                    tracing::error!(component = %name, "cannot subscribe to `{t}`: {e}");
                                }
                            }
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if tx.send(Incoming::Message(p)).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            link.down(&e.to_string());
                            let delay = backoff.next_delay();
                            std::thread::sleep(delay);
                        }
                    }
                }
            })
            .map_err(|e| EngineError::io("cannot start the MQTT thread", e))?;
        Ok((client, rx, stop))
    }
}

/// Worker 0's reader of the connection thread's messages.
struct Reader {
    client: Client,
    rx: Receiver<Incoming>,
    stop: Arc<AtomicBool>,
    decoder: Decoder,
    output: SchemaRef,
    name: String,
    batch_rows: usize,
    out_of_orderness_ms: u64,
    idle: Duration,
    stop_after_idle: Option<Duration>,
    metrics: Arc<ComponentMetrics>,
    delivery: Arc<DeliveryTracker>,
    caps: Option<(Capability<Time>, Capability<Time>)>,
    dead: DeadLetters,
    /// Topic of each decoded row (for `topic_column`).
    topics: Vec<String>,
    /// Publishes in the batch being built (acknowledged once delivered).
    batch: Vec<Publish>,
    /// Publishes sent at a time, waiting for the sinks.
    pending: VecDeque<(Publish, Time)>,
    max_seen: Option<i64>,
    min_ts: i64,
    last_message: Instant,
    finished_at: Option<Instant>,
}

type Output<'a> = timely::dataflow::operators::generic::OutputBuilderSession<
    'a,
    Time,
    CapacityContainerBuilder<Vec<Batch>>,
>;

impl Reader {
    /// Reads what arrived: `Some(busy)`, or `None` when the source is done.
    fn step(&mut self, main: &mut Output<'_>, dead: &mut Output<'_>, stop: bool) -> Option<bool> {
        if stop {
            self.emit(main, dead);
            return None;
        }
        let mut received = 0;
        while self.decoder.rows() < self.batch_rows {
            match self.rx.try_recv() {
                Ok(Incoming::Message(p)) => {
                    received += 1;
                    self.take(p);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.emit(main, dead);
                    return None;
                }
            }
        }
        if received > 0 {
            self.last_message = Instant::now();
        }
        self.emit(main, dead);
        self.advance_watermark();
        self.acknowledge();
        if received > 0 {
            return Some(true);
        }
        if let Some(limit) = self.stop_after_idle
            && self.last_message.elapsed() >= limit
        {
            return None;
        }
        Some(false)
    }

    fn take(&mut self, p: Publish) {
        match self.decoder.push(&p.payload) {
            Ok((lo, hi)) => {
                self.min_ts = self.min_ts.min(lo);
                self.max_seen = Some(self.max_seen.map_or(hi, |m| m.max(hi)));
                self.topics.push(p.topic.clone());
            }
            Err(reason) => {
                let t = self.caps.as_ref().map_or(0, |(_, d)| *d.time());
                let raw = String::from_utf8_lossy(&p.payload).into_owned();
                self.dead
                    .push(t, &self.name, &format!("topic {}: {reason}", p.topic), &raw);
            }
        }
        self.batch.push(p);
    }

    fn emit(&mut self, main: &mut Output<'_>, dead: &mut Output<'_>) {
        let Some((main_cap, dead_cap)) = self.caps.as_ref() else {
            return;
        };
        let mut at = *main_cap.time();
        if let Some(batch) = self.decoder.take() {
            at = (self.min_ts.max(0) as Time).max(*main_cap.time());
            let batch = if self.output.fields().len() > batch.num_columns() {
                let topics: ArrayRef =
                    Arc::new(StringArray::from(std::mem::take(&mut self.topics)));
                let mut columns = batch.columns().to_vec();
                columns.push(topics);
                RecordBatch::try_new(self.output.clone(), columns)
            } else {
                self.topics.clear();
                Ok(batch)
            };
            match batch {
                Ok(b) => main.session(&main_cap.delayed(&at)).give(Batch::new(b)),
                Err(e) => tracing::error!(component = %self.name, "cannot build a batch: {e}"),
            }
        }
        self.min_ts = i64::MAX;
        if let Some(letters) = self.dead.take() {
            ComponentMetrics::add(&self.metrics.dead_letters, letters.num_rows() as u64);
            dead.session(dead_cap).give(letters);
        }
        for p in self.batch.drain(..) {
            self.pending.push_back((p, at));
        }
    }

    fn advance_watermark(&mut self) {
        let mut watermark = match self.max_seen {
            Some(max) => (max.saturating_sub(self.out_of_orderness_ms as i64)).max(0) as Time,
            None => 0,
        };
        if self.last_message.elapsed() >= self.idle {
            watermark = watermark.max(now_ms().saturating_sub(self.out_of_orderness_ms));
        }
        if !self.pending.is_empty()
            && self.last_message.elapsed() >= ACK_STALL
            && let Some(max) = self.max_seen
        {
            // The broker sends a QoS 1 client only so many unacknowledged messages (20 by
            // Mosquitto's default), and they are acknowledged once the watermark passes
            // them: with the flow stalled on those acks, close event time up to the newest
            // reading so that they can be delivered and acknowledged.
            watermark = watermark.max(max.max(0) as Time + 1);
        }
        if let Some((main_cap, dead_cap)) = self.caps.as_mut()
            && watermark > *main_cap.time()
        {
            main_cap.downgrade(&watermark);
            dead_cap.downgrade(&watermark);
        }
    }

    /// Acknowledges (QoS 1) the messages every sink has delivered, in order.
    fn acknowledge(&mut self) {
        let delivered = self.delivery.frontier();
        while let Some((_, at)) = self.pending.front() {
            if *at >= delivered {
                break;
            }
            let (p, _) = self.pending.pop_front().expect("front exists");
            if p.qos != QoS::AtMostOnce
                && let Err(e) = self.client.try_ack(&p)
            {
                tracing::warn!(component = %self.name, "cannot acknowledge a message (the broker will send it again): {e}");
            }
        }
    }

    /// After the source finished: acknowledges as the sinks deliver; true while waiting.
    fn drain(&mut self) -> bool {
        self.acknowledge();
        let waited = self.finished_at.map_or(Duration::ZERO, |t| t.elapsed());
        if self.pending.is_empty() || waited > Duration::from_secs(60) {
            self.stop.store(true, Ordering::Relaxed);
            // Give the connection thread a moment to send the last acknowledgements.
            std::thread::sleep(Duration::from_millis(100));
            let _ = self.client.try_disconnect();
            return false;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_are_checked() {
        assert!(check_filter("plant/+/line/#").is_ok());
        assert!(check_filter("#").is_ok());
        assert!(check_filter("a/#/b").is_err());
        assert!(check_filter("a/b#").is_err());
        assert!(check_filter("a/x+").is_err());
        assert!(check_filter("").is_err());
    }

    #[test]
    fn broker_must_be_host_port() {
        assert_eq!(
            host_port("127.0.0.1:1883"),
            Some(("127.0.0.1".into(), 1883))
        );
        assert_eq!(host_port("localhost"), None);
        assert_eq!(host_port(":1883"), None);
        assert_eq!(host_port("h:port"), None);
    }
}
