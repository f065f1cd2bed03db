//! Kafka connectors against a real local broker, each next to a baseline measured in the
//! same run, plus the bytes each event costs on the wire:
//!
//! 1. bytes per event for `json` versus `arrow` (lz4-compressed Arrow IPC) messages of the
//!    simulator's readings: the bandwidth the arrow format saves, as a ratio;
//! 2. the `kafka` sink (simulator → kafka, idempotent, acks=all): messages/s and MB/s next
//!    to Kafka's own `ProducerPerformance` tool with records of the same size;
//! 3. the `kafka` source (kafka → null): messages/s next to `kcat` consuming the same topic.
//!
//! `cargo bench --bench kafka_throughput` runs all three (it starts a broker with
//! `scripts/kafka.sh`); under `cargo test` only part 1 runs, at a tiny size, as a smoke test.

#[path = "../tests/support/brokers.rs"]
mod brokers;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isthmus_connectors::kafka::codec::{Encoder, OutMessage, WireFormat};
use isthmus_connectors::simulator::SimulatorSource;
use isthmus_engine::runtime::RunOptions;
use isthmus_engine::testing::Harness;
use isthmus_engine::units::DurationSpec;

/// Bytes per event of the simulator's readings in each wire format.
fn wire_sizes(devices: usize, seconds: u64) -> Vec<(&'static str, f64, usize)> {
    let sim = SimulatorSource {
        devices,
        duration: DurationSpec(Duration::from_secs(seconds)),
        seed: 3,
        ..Default::default()
    };
    let batches = Harness::default().run_source(&sim).main;
    let rows: usize = batches.iter().map(|(_, b)| b.num_rows()).sum();
    let mut out = Vec::new();
    for (name, format, key) in [
        ("json", WireFormat::Json, Some("device")),
        ("csv", WireFormat::Csv, Some("device")),
        ("arrow+lz4 (per batch)", WireFormat::Arrow, None),
        (
            "arrow+lz4 (per batch and key)",
            WireFormat::Arrow,
            Some("device"),
        ),
    ] {
        let encoder = Encoder::new(format, key.map(String::from));
        let mut messages: Vec<OutMessage> = Vec::new();
        for (_, b) in &batches {
            encoder.encode(b, &mut messages).expect("encode");
        }
        let bytes: usize = messages
            .iter()
            .map(|m| m.payload.len() + m.key.as_ref().map_or(0, Vec::len))
            .sum();
        out.push((name, bytes as f64 / rows as f64, messages.len()));
    }
    out
}

/// Writes a pipeline file named `name` whose node is `name`, with `text` as its components.
fn write_pipeline(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, format!("[node]\nid = \"{name}\"\n\n{text}")).expect("write pipeline");
    path
}

fn run(path: &Path) -> (Duration, u64) {
    let started = Instant::now();
    let (_, report) =
        isthmus::run_files(&[path.to_path_buf()], &RunOptions::default()).expect("pipeline runs");
    (started.elapsed(), report.nodes[0].events_in)
}

/// Messages in a topic and their payload bytes, read with kcat, and how long kcat took.
fn kcat_consume(brokers: &str, topic: &str) -> (usize, usize, Duration) {
    let started = Instant::now();
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            brokers,
            "-t",
            topic,
            "-e",
            "-q",
            "-o",
            "beginning",
            "-f",
            "%S\n",
        ])
        .output()
        .expect("kcat");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    let sizes: Vec<usize> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    (sizes.len(), sizes.iter().sum(), elapsed)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        println!(
            "smoke run (tiny sizes, no broker): not a benchmark; run `cargo bench --bench kafka_throughput`"
        );
    }
    let (devices, seconds) = if bench { (200, 600) } else { (10, 30) };
    println!(
        "bytes per event on the wire ({devices} devices × {seconds} s of simulator readings, 9 columns)"
    );
    let sizes = wire_sizes(devices, seconds);
    let json = sizes[0].1;
    for (name, per_event, messages) in &sizes {
        println!(
            "  {name:<30} {per_event:>7.1} B/event  {messages:>8} messages  json/this = {:.1}×",
            json / per_event
        );
    }
    if !bench {
        return;
    }

    let broker = brokers::KafkaBroker::start(brokers::free_port());
    let b = broker.bootstrap();
    let dir = tempfile::tempdir().expect("temp dir");
    let (devices, seconds) = (500, 400); // 200,000 readings
    for format in ["json", "arrow"] {
        let topic = format!("bench.{format}");
        broker.create_topic(&topic, 1);
        let sink = write_pipeline(
            dir.path(),
            &format!("sink-{format}"),
            &format!(
                r#"[sources.sim]
type = "simulator"
devices = {devices}
duration = "{seconds}s"
seed = 5

[sinks.out]
type = "kafka"
inputs = ["sim"]
brokers = "{b}"
topic = "{topic}"
format = "{format}"
key = "device"
"#
            ),
        );
        let (elapsed, events) = run(&sink);
        let (messages, bytes, kcat_time) = kcat_consume(&b, &topic);
        let rate = messages as f64 / elapsed.as_secs_f64();
        let mbps = bytes as f64 / elapsed.as_secs_f64() / 1e6;
        println!(
            "kafka sink ({format}): {events} events → {messages} messages, {bytes} bytes in {elapsed:.2?}: {rate:.0} msg/s, {mbps:.1} MB/s, {:.0} events/s",
            events as f64 / elapsed.as_secs_f64()
        );
        // Baseline producer: Kafka's own tool, same number and size of records.
        let record_size = (bytes / messages.max(1)).max(1);
        let perf = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh"))
            .args([
                "perf-producer",
                "--port",
                &broker.port.to_string(),
                "--topic",
                &format!("perf.{format}"),
                "--records",
                &messages.to_string(),
                "--record-size",
                &record_size.to_string(),
            ])
            .output()
            .expect("perf producer");
        let summary = String::from_utf8_lossy(&perf.stdout);
        // The summary line: "N records sent, R records/sec (M MB/sec), …".
        let perf_rate: f64 = summary
            .lines()
            .rev()
            .flat_map(|line| line.split(','))
            .find(|part| part.contains("records/sec"))
            .and_then(|part| part.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        println!(
            "  ProducerPerformance ({messages} × {record_size} B, acks=all): {}",
            summary.trim()
        );
        if perf_rate > 0.0 {
            println!(
                "  isthmus sink / ProducerPerformance = {:.2}× the messages per second",
                rate / perf_rate
            );
        }

        // Source: the same topic read by a new group into a null sink, next to kcat.
        let idle = Duration::from_secs(2);
        let source = write_pipeline(
            dir.path(),
            &format!("source-{format}"),
            &format!(
                r#"[sources.k]
type = "kafka"
brokers = "{b}"
topics = ["{topic}"]
group = "bench-{format}"
format = "{format}"
columns = {{ device = "utf8", temperature = "float64" }}
stop_after_idle = "2s"

[sinks.out]
type = "null"
inputs = ["k"]
"#
            ),
        );
        let (elapsed, rows) = run(&source);
        let busy = elapsed.saturating_sub(idle);
        let rate = messages as f64 / busy.as_secs_f64();
        let kcat_rate = messages as f64 / kcat_time.as_secs_f64();
        println!(
            "kafka source ({format}): {messages} messages ({rows} rows) in {busy:.2?} (after subtracting the 2 s idle stop): {rate:.0} msg/s; kcat: {kcat_rate:.0} msg/s; isthmus/kcat = {:.2}×",
            rate / kcat_rate
        );
    }
}
