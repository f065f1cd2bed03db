//! Reconfiguration round trip over a real local broker: a signed policy change is produced
//! to the policies topic, an edge node (`isthmus run`: kafka source → `reconfigure` with
//! signature checks; `policy_acks` → kafka sink) applies it and acknowledges it, and the
//! acknowledgement is read back from the acks topic. Reported as p50/p99 next to a baseline
//! measured in the same run: the same two Kafka hops through a plain `kcat` relay (consume
//! one topic, produce each message to another), no engine. Every consumer (the edge's, the
//! relay's, the reader's) uses `fetch.wait.max.ms = 5` and every producer `linger.ms = 0`.
//!
//! `cargo bench --bench reconfig_roundtrip` (starts a broker with `scripts/kafka.sh`); under
//! `cargo test` it does nothing.

#[path = "../tests/support/brokers.rs"]
mod brokers;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use isthmus_engine::policy::{PolicyChange, PolicyScope, PolicyValue};
use isthmus_engine::signing::{PolicySigner, SignedFields};

/// Changes sent per measurement, one every `GAP`.
const CHANGES: u64 = 300;
const GAP: Duration = Duration::from_millis(20);

/// A kcat producer fed line by line, sending each message at once.
fn producer(brokers: &str, topic: &str) -> (Child, ChildStdin) {
    let mut child = Command::new("kcat")
        .args(["-P", "-b", brokers, "-t", topic, "-X", "linger.ms=0", "-q"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat producer");
    let stdin = child.stdin.take().expect("stdin");
    (child, stdin)
}

/// A kcat consumer from the end of `topic`; every line goes to the channel with its
/// arrival time.
fn consumer(brokers: &str, topic: &str) -> (Child, mpsc::Receiver<(String, Instant)>) {
    let mut child = Command::new("kcat")
        .args(["-C", "-b", brokers, "-t", topic, "-o", "end", "-u", "-q"])
        .args(["-X", "fetch.wait.max.ms=5"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kcat consumer");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send((line, Instant::now())).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// A signed policy change message (as the cloud's kafka json sink writes it) of `version`.
fn message(signer: &PolicySigner, version: u64) -> String {
    let change = PolicyChange {
        name: "threshold".into(),
        scope: Some(PolicyScope {
            key: "line".into(),
            value: format!("l{}", version % 10),
        }),
        value: PolicyValue::Float((version % 5) as f64 + 1.5),
        diff: 1,
        version,
    };
    let value = change.value.to_string();
    let scope = change.scope.as_ref().expect("scoped");
    let fields = SignedFields::of_change("*", &change, &value);
    serde_json::json!({
        "ts": "2026-01-01T00:00:00Z",
        "policy": change.name,
        "scope_key": scope.key,
        "scope_value": scope.value,
        "value": value,
        "diff": 1,
        "version": version,
        "node": "*",
        "signer": signer.public_key(),
        "signature": signer.sign(&fields),
    })
    .to_string()
}

/// The version a line carries.
fn version_of(line: &str) -> Option<u64> {
    serde_json::from_str::<serde_json::Value>(line).ok()?["version"].as_u64()
}

/// Sends `CHANGES` messages with versions from `first`, one every `GAP`, and returns each
/// round trip (send → the line with the same version read back).
fn measure(
    input: &mut ChildStdin,
    output: &mpsc::Receiver<(String, Instant)>,
    signer: &PolicySigner,
    first: u64,
) -> Vec<Duration> {
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    let mut got: HashMap<u64, Instant> = HashMap::new();
    let collect = |got: &mut HashMap<u64, Instant>, wait: Duration| {
        while let Ok((line, at)) = output.recv_timeout(wait) {
            if let Some(v) = version_of(&line) {
                got.entry(v).or_insert(at);
            }
        }
    };
    for version in first..first + CHANGES {
        let line = message(signer, version);
        sent.insert(version, Instant::now());
        writeln!(input, "{line}").expect("send");
        input.flush().expect("flush");
        collect(&mut got, GAP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while got.len() < sent.len() && Instant::now() < deadline {
        collect(&mut got, Duration::from_millis(200));
    }
    let mut trips: Vec<Duration> = sent
        .iter()
        .filter_map(|(v, t)| got.get(v).map(|a| a.duration_since(*t)))
        .collect();
    trips.sort();
    assert!(
        trips.len() as u64 >= CHANGES * 9 / 10,
        "only {} of {CHANGES} round trips completed",
        trips.len()
    );
    trips
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "reconfig_roundtrip: needs a broker; run `cargo bench --bench reconfig_roundtrip`"
        );
        return;
    }
    let broker = brokers::KafkaBroker::start(brokers::free_port());
    let b = broker.bootstrap();
    for topic in ["rt.policies", "rt.acks", "rt.relay.in", "rt.relay.out"] {
        broker.create_topic(topic, 1);
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let signer = PolicySigner::generate();
    let (_, public) = signer.write_pair(dir.path(), "cloud").expect("keys");
    let edge = dir.path().join("edge.toml");
    std::fs::write(
        &edge,
        format!(
            r#"[node]
id = "edge-rt"
role = "edge"

[policy]
remote = ["threshold"]
trusted_keys = ["{public}"]

[policy.tunables]
threshold = 6.0

[sources.from_cloud]
type = "kafka"
brokers = "{b}"
topics = ["rt.policies"]
group = "edge-rt"
start = "latest"
format = "json"
columns = {{ policy = "utf8", scope_key = "utf8", scope_value = "utf8", value = "utf8", diff = "int64", version = "int64", node = "utf8", signer = "utf8", signature = "utf8" }}
max_out_of_orderness = "0s"
librdkafka = {{ "fetch.wait.max.ms" = "5" }}

[sinks.apply]
type = "reconfigure"
inputs = ["from_cloud"]
log_changes = false

[sources.acks]
type = "policy_acks"

[sinks.acks_to_cloud]
type = "kafka"
inputs = ["acks"]
brokers = "{b}"
topic = "rt.acks"
format = "json"
key = "node"
librdkafka = {{ "linger.ms" = "0" }}
"#,
            public = public.display()
        ),
    )
    .expect("edge pipeline");

    // The engine: edge node between the two topics.
    let (mut acks_reader, acks) = consumer(&b, "rt.acks");
    let mut node = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["run", "--progress-secs", "0"])
        .arg(&edge)
        .stderr(Stdio::null())
        .spawn()
        .expect("edge node");
    let (mut producer_child, mut policies) = producer(&b, "rt.policies");
    // Warm up until the edge answers (its consumer group has joined).
    let mut version = 1;
    let ready = Instant::now() + Duration::from_secs(60);
    'warm: loop {
        assert!(Instant::now() < ready, "the edge never acknowledged");
        writeln!(policies, "{}", message(&signer, version)).unwrap();
        policies.flush().unwrap();
        while let Ok((line, _)) = acks.recv_timeout(Duration::from_millis(500)) {
            if version_of(&line).is_some() {
                break 'warm;
            }
        }
        version += 1;
    }
    std::thread::sleep(Duration::from_secs(1));
    while acks.try_recv().is_ok() {}
    let engine = measure(&mut policies, &acks, &signer, 1_000);

    // The baseline: a kcat relay between two topics (same two hops, no engine).
    let mut relay = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "kcat -C -b {b} -t rt.relay.in -o end -u -q -X fetch.wait.max.ms=5 | kcat -P -b {b} -t rt.relay.out -X linger.ms=0 -q"
        ))
        .spawn()
        .expect("relay");
    let (mut out_reader, relayed) = consumer(&b, "rt.relay.out");
    let (mut relay_producer, mut relay_in) = producer(&b, "rt.relay.in");
    let ready = Instant::now() + Duration::from_secs(60);
    'relay: loop {
        assert!(Instant::now() < ready, "the relay never answered");
        writeln!(relay_in, "{}", message(&signer, version)).unwrap();
        relay_in.flush().unwrap();
        while let Ok((line, _)) = relayed.recv_timeout(Duration::from_millis(500)) {
            if version_of(&line).is_some() {
                break 'relay;
            }
        }
        version += 1;
    }
    std::thread::sleep(Duration::from_secs(1));
    while relayed.try_recv().is_ok() {}
    let baseline = measure(&mut relay_in, &relayed, &signer, 100_000);

    for child in [
        &mut node,
        &mut producer_child,
        &mut acks_reader,
        &mut relay,
        &mut out_reader,
        &mut relay_producer,
    ] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = Command::new("pkill").args(["-f", "rt.relay.in"]).status();

    println!(
        "reconfiguration round trip over Kafka ({CHANGES} signed changes, one every {GAP:?}): produce → edge verifies and applies → acknowledgement read back"
    );
    println!("| path | p50 | p99 | max |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, trips) in [
        ("isthmus edge", &engine),
        ("kcat relay (baseline)", &baseline),
    ] {
        println!(
            "| {name} | {:.2?} | {:.2?} | {:.2?} |",
            percentile(trips, 0.5),
            percentile(trips, 0.99),
            trips[trips.len() - 1]
        );
    }
    println!(
        "isthmus / relay: p50 {:.2}×, p99 {:.2}×",
        percentile(&engine, 0.5).as_secs_f64() / percentile(&baseline, 0.5).as_secs_f64(),
        percentile(&engine, 0.99).as_secs_f64() / percentile(&baseline, 0.99).as_secs_f64()
    );
}
