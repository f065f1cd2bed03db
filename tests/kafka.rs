//! Kafka and MQTT connectors against real brokers (Apache Kafka 4 in KRaft mode, Mosquitto),
//! through the `isthmus` binary as a user runs it: every event arrives, once.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::brokers::{KafkaBroker, Mosquitto, free_port};
use support::{isthmus, workdir};

/// Runs `isthmus run` on pipeline files and returns its output, panicking on failure.
fn run(files: &[&Path]) -> Output {
    let out = isthmus()
        .arg("run")
        .args(files)
        .output()
        .expect("run isthmus");
    assert!(
        out.status.success(),
        "isthmus run failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `isthmus run` in the background.
fn spawn(files: &[&Path], log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    isthmus()
        .arg("run")
        .args(files)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn isthmus")
}

/// Writes `n` events `{ts, id, device, value}` starting at `first_id` as JSON lines.
fn write_events(path: &Path, first_id: u64, n: u64) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("events file"));
    for i in first_id..first_id + n {
        writeln!(
            f,
            r#"{{"ts": {}, "id": {i}, "device": "d{}", "value": {}}}"#,
            1_700_000_000_000u64 + i * 10,
            i % 17,
            (i % 100) as f64 / 4.0
        )
        .expect("write");
    }
}

/// An edge pipeline: events file → kafka sink (`buffer` is a TOML inline table).
fn edge_pipeline(
    dir: &Path,
    node: &str,
    events: &Path,
    brokers: &str,
    topic: &str,
    format: &str,
    buffer: &str,
) -> PathBuf {
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "{node}"
role = "edge"

[sources.events]
type = "jsonl"
path = "{events}"
timestamp_column = "ts"
timestamp_format = "unix_ms"
columns = {{ id = "int64", device = "utf8", value = "float64" }}

[sinks.to_cloud]
type = "kafka"
inputs = ["events"]
brokers = "{brokers}"
topic = "{topic}"
format = "{format}"
key = "device"
buffer = {buffer}
drain_timeout = "120s"
"#,
            events = events.display()
        ),
    )
    .expect("write pipeline");
    path
}

/// A cloud pipeline: kafka source (dedup) → jsonl file; finishes after `idle` without messages.
fn cloud_pipeline(
    dir: &Path,
    brokers: &str,
    topic: &str,
    group: &str,
    format: &str,
    idle: &str,
) -> (PathBuf, PathBuf, PathBuf) {
    let path = dir.join(format!("cloud-{group}.toml"));
    let out = dir.join(format!("cloud-{group}.jsonl"));
    let dead = dir.join(format!("cloud-{group}.dead.jsonl"));
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "cloud"
role = "cloud"

[sources.from_edges]
type = "kafka"
brokers = "{brokers}"
topics = ["{topic}"]
group = "{group}"
format = "{format}"
dedup = true
columns = {{ id = "int64", device = "utf8", value = "float64" }}
stop_after_idle = "{idle}"

[sinks.rows]
type = "jsonl"
inputs = ["from_edges"]
path = "{out}"

[sinks.dead]
type = "jsonl"
inputs = ["from_edges.dead_letter"]
path = "{dead}"
"#,
            out = out.display(),
            dead = dead.display()
        ),
    )
    .expect("write pipeline");
    (path, out, dead)
}

/// The `id` of every row of a JSON-lines file (with repetitions).
fn ids(path: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json row");
            v["id"].as_u64().expect("id")
        })
        .collect()
}

/// Asserts that `got` holds each of `0..n` exactly once.
fn assert_exactly_once(got: &[u64], n: u64, what: &str) {
    let set: BTreeSet<u64> = got.iter().copied().collect();
    let missing: Vec<u64> = (0..n).filter(|i| !set.contains(i)).take(10).collect();
    assert!(
        missing.is_empty(),
        "{what}: missing ids, e.g. {missing:?} ({} of {n} arrived)",
        set.len()
    );
    assert_eq!(
        got.len() as u64,
        n,
        "{what}: {} rows for {n} ids: duplicates",
        got.len()
    );
}

/// Messages in a topic, counted by kcat.
fn kcat_count(brokers: &str, topic: &str) -> usize {
    let out = Command::new("kcat")
        .args(["-C", "-b", brokers, "-t", topic, "-e", "-q", "-f", "%o\n"])
        .output()
        .expect("kcat");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

#[test]
fn a_edge_to_cloud_every_event_arrives_once() {
    let broker = KafkaBroker::shared();
    let dir = workdir("a");
    let n = 20_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    broker.create_topic("a.readings", 3);
    let edge = edge_pipeline(
        dir.path(),
        "edge-a",
        &events,
        &broker.bootstrap(),
        "a.readings",
        "json",
        r#"{ type = "memory", max_bytes = "16 MiB" }"#,
    );
    run(&[&edge]);
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "a.readings",
        "cloud-a",
        "json",
        "4s",
    );
    run(&[&cloud]);
    assert_exactly_once(&ids(&rows), n, "edge → Kafka → cloud");
    assert_eq!(
        kcat_count(&broker.bootstrap(), "a.readings"),
        n as usize,
        "one message per event"
    );
}

#[test]
fn a_arrow_lz4_format_round_trips() {
    let broker = KafkaBroker::shared();
    let dir = workdir("arrow");
    let n = 5_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    let edge = edge_pipeline(
        dir.path(),
        "edge-arrow",
        &events,
        &broker.bootstrap(),
        "arrow.readings",
        "arrow",
        r#"{ type = "memory" }"#,
    );
    run(&[&edge]);
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "arrow.readings",
        "cloud-arrow",
        "arrow",
        "4s",
    );
    run(&[&cloud]);
    assert_exactly_once(&ids(&rows), n, "arrow + lz4");
    // One message per batch and key, far fewer than rows.
    let messages = kcat_count(&broker.bootstrap(), "arrow.readings");
    assert!(
        messages < n as usize / 10,
        "{messages} messages for {n} rows"
    );
}

#[test]
fn b_broker_down_at_start_then_up_everything_arrives() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = workdir("b");
    let n = 5_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    let spool = dir.path().join("spool");
    let edge = edge_pipeline(
        dir.path(),
        "edge-b",
        &events,
        &brokers,
        "b.readings",
        "json",
        &format!(
            r#"{{ type = "disk", path = "{}", max_bytes = "4 MiB" }}"#,
            spool.display()
        ),
    );
    let log = dir.path().join("edge.log");
    let mut child = spawn(&[&edge], &log);
    // The edge runs (and spools) while no broker exists.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().expect("edge status").is_none(),
        "the edge must keep running while the broker is down"
    );
    let broker = KafkaBroker::start(port);
    let status = wait(&mut child, Duration::from_secs(120));
    assert!(
        status.success(),
        "edge failed:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("link down"), "the outage is logged:\n{text}");
    assert_eq!(
        text.matches("link down").count(),
        1,
        "logged once per transition:\n{text}"
    );
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "b.readings",
        "cloud-b",
        "json",
        "4s",
    );
    run(&[&cloud]);
    assert_exactly_once(&ids(&rows), n, "broker down at start");
}

fn wait(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("child status") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("process still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn c_kill_9_with_a_full_spool_then_restart_delivers_all_once() {
    let port = free_port();
    let brokers = format!("127.0.0.1:{port}");
    let dir = workdir("c");
    let n = 8_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    let empty = dir.path().join("nothing-new.jsonl");
    std::fs::write(&empty, "").expect("empty input");
    let spool = dir.path().join("spool");
    let buffer = format!(
        r#"{{ type = "disk", path = "{}", max_bytes = "8 MiB" }}"#,
        spool.display()
    );
    let edge = edge_pipeline(
        dir.path(),
        "edge-c",
        &events,
        &brokers,
        "c.readings",
        "json",
        &buffer,
    );
    let log = dir.path().join("edge-1.log");
    let mut child = spawn(&[&edge], &log);
    // Wait until every event is in the spool (the broker is down), then kill -9.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("link down")
            && spool_bytes(&spool) > 0
            && started.elapsed() > Duration::from_secs(3)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the edge never spooled:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(spool_bytes(&spool) > 0, "the spool survives kill -9");

    let broker = KafkaBroker::start(port);
    // Restart with no new input: the spool alone is replayed.
    let restarted = edge_pipeline(
        dir.path(),
        "edge-c",
        &empty,
        &brokers,
        "c.readings",
        "json",
        &buffer,
    );
    let out = run(&[&restarted]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("spool opened with messages to replay"),
        "{text}"
    );
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "c.readings",
        "cloud-c",
        "json",
        "4s",
    );
    run(&[&cloud]);
    assert_exactly_once(&ids(&rows), n, "kill -9 and restart");
}

/// Bytes of spool segment files.
fn spool_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn c_kill_9_while_sending_replays_and_dedup_counts_once() {
    let broker = KafkaBroker::shared();
    let dir = workdir("c2");
    let n = 60_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    let empty = dir.path().join("nothing-new.jsonl");
    std::fs::write(&empty, "").expect("empty input");
    let spool = dir.path().join("spool");
    let buffer = format!(
        r#"{{ type = "disk", path = "{}", max_bytes = "2 MiB" }}"#,
        spool.display()
    );
    let edge = edge_pipeline(
        dir.path(),
        "edge-c2",
        &events,
        &broker.bootstrap(),
        "c2.readings",
        "json",
        &buffer,
    );
    let log = dir.path().join("edge-1.log");
    let mut child = spawn(&[&edge], &log);
    // Kill once messages are flowing.
    let started = Instant::now();
    while kcat_count(&broker.bootstrap(), "c2.readings") < 1_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "nothing was sent"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    let sent_before = kcat_count(&broker.bootstrap(), "c2.readings");
    // Restart with the rest of the input (the source's own progress is not kept: the file
    // from where the first run was killed is what a device would still have to send).
    let restarted = edge_pipeline(
        dir.path(),
        "edge-c2",
        &empty,
        &broker.bootstrap(),
        "c2.readings",
        "json",
        &buffer,
    );
    run(&[&restarted]);
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "c2.readings",
        "cloud-c2",
        "json",
        "4s",
    );
    run(&[&cloud]);
    let got = ids(&rows);
    let total = kcat_count(&broker.bootstrap(), "c2.readings");
    eprintln!(
        "kill -9 mid-send: {sent_before} messages before the kill, {total} on the topic after the replay, {} rows after dedup",
        got.len()
    );
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    assert_eq!(unique.len(), got.len(), "no duplicate after dedup");
    // Everything the spool had accepted is there: a prefix of the input, in full.
    let max = unique.iter().next_back().copied().unwrap_or(0);
    assert_exactly_once(&got, max + 1, "kill -9 while sending");
    assert!(
        max + 1 >= sent_before as u64,
        "the replay reached at least what was sent before the kill"
    );
}

#[test]
fn d_kafka_to_kafka_consumer_restarted_mid_stream_loses_nothing() {
    let broker = KafkaBroker::shared();
    let dir = workdir("d");
    let n = 40_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    broker.create_topic("d.in", 2);
    let edge = edge_pipeline(
        dir.path(),
        "edge-d",
        &events,
        &broker.bootstrap(),
        "d.in",
        "json",
        r#"{ type = "memory" }"#,
    );
    run(&[&edge]);
    let relay = dir.path().join("relay.toml");
    std::fs::write(
        &relay,
        format!(
            r#"[node]
id = "relay"

[sources.inbound]
type = "kafka"
brokers = "{b}"
topics = ["d.in"]
group = "relay"
columns = {{ id = "int64", device = "utf8", value = "float64" }}
batch_rows = 200
stop_after_idle = "4s"
# A killed member's partitions move on after its session times out (Kafka's minimum).
librdkafka = {{ "session.timeout.ms" = "6000" }}

[sinks.outbound]
type = "kafka"
inputs = ["inbound"]
brokers = "{b}"
topic = "d.out"
key = "device"
"#,
            b = broker.bootstrap()
        ),
    )
    .expect("relay pipeline");
    let log = dir.path().join("relay-1.log");
    let mut child = spawn(&[&relay], &log);
    let started = Instant::now();
    while kcat_count(&broker.bootstrap(), "d.out") < 2_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay never produced:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().expect("kill -9 the consumer");
    child.wait().expect("reaped");
    let before = kcat_count(&broker.bootstrap(), "d.out");
    run(&[&relay]);
    let (cloud, rows, _) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "d.out",
        "cloud-d",
        "json",
        "4s",
    );
    run(&[&cloud]);
    let got = ids(&rows);
    let unique: BTreeSet<u64> = got.iter().copied().collect();
    eprintln!(
        "relay killed after {before} messages; {} rows read back, {} unique",
        got.len(),
        unique.len()
    );
    let missing: Vec<u64> = (0..n).filter(|i| !unique.contains(i)).take(10).collect();
    assert!(missing.is_empty(), "lost ids, e.g. {missing:?}");
}

#[test]
fn e_kcat_reads_the_json_sink_and_writes_the_json_source() {
    let broker = KafkaBroker::shared();
    let dir = workdir("e");
    let n = 1_000;
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, n);
    let edge = edge_pipeline(
        dir.path(),
        "edge-e",
        &events,
        &broker.bootstrap(),
        "e.readings",
        "json",
        r#"{ type = "memory" }"#,
    );
    run(&[&edge]);
    // kcat reads it: JSON objects, with our headers.
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            &broker.bootstrap(),
            "-t",
            "e.readings",
            "-e",
            "-q",
            "-f",
            "%k\t%h\t%s\n",
        ])
        .output()
        .expect("kcat");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), n as usize);
    let first: Vec<&str> = lines[0].splitn(3, '\t').collect();
    assert!(first[0].starts_with('d'), "key is the device: {}", lines[0]);
    assert!(
        first[1].contains("isthmus-node=edge-e") && first[1].contains("isthmus-seq="),
        "headers: {}",
        first[1]
    );
    let row: serde_json::Value = serde_json::from_str(first[2]).expect("a JSON object");
    assert!(
        row["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{row}"
    );
    assert!(
        row["id"].is_u64() && row["device"].is_string() && row["value"].is_number(),
        "{row}"
    );

    // kcat writes it: the json source reads every good line; the bad ones are dead letters.
    let mut input = String::new();
    for i in 0..500u64 {
        input.push_str(&format!("{{\"ts\":\"2024-05-01T00:00:{:02}.{:03}Z\",\"id\":{i},\"device\":\"k\",\"value\":1.5}}\n", (i / 1000) % 60, i % 1000));
    }
    input.push_str("this is not json\n{\"id\": 7}\n");
    let mut kcat = Command::new("kcat")
        .args(["-P", "-b", &broker.bootstrap(), "-t", "e.manual"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("kcat -P");
    kcat.stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    assert!(kcat.wait().expect("kcat").success());
    let (cloud, rows, dead) = cloud_pipeline(
        dir.path(),
        &broker.bootstrap(),
        "e.manual",
        "cloud-e",
        "json",
        "4s",
    );
    run(&[&cloud]);
    assert_exactly_once(&ids(&rows), 500, "written by kcat");
    let dead = std::fs::read_to_string(&dead).expect("dead letters");
    assert_eq!(dead.lines().count(), 2, "two malformed messages:\n{dead}");
    assert!(
        dead.contains("e.manual [0]") && dead.contains("no timestamp"),
        "{dead}"
    );
}

#[test]
fn f_mqtt_to_edge_to_kafka_survives_a_broker_restart() {
    let kafka = KafkaBroker::shared();
    let mqtt = Mosquitto::start(free_port());
    let dir = workdir("f");
    let edge = dir.path().join("edge-f.toml");
    std::fs::write(
        &edge,
        format!(
            r#"[node]
id = "edge-f"
role = "edge"

[sources.sensors]
type = "mqtt"
broker = "{m}"
topics = ["plant/+/temp"]
qos = 1
columns = {{ id = "int64", value = "float64" }}
topic_column = "device"
timestamp_format = "unix_ms"
stop_after_idle = "6s"

[sinks.to_cloud]
type = "kafka"
inputs = ["sensors"]
brokers = "{k}"
topic = "f.readings"
key = "device"
"#,
            m = mqtt.address(),
            k = kafka.bootstrap()
        ),
    )
    .expect("edge pipeline");
    let log = dir.path().join("edge.log");
    let mut child = spawn(&[&edge], &log);
    std::thread::sleep(Duration::from_secs(2)); // subscribed
    let publish = |from: u64, to: u64| {
        let mut lines = String::new();
        for i in from..to {
            lines.push_str(&format!(
                "{{\"ts\": {}, \"id\": {i}, \"value\": {}}}\n",
                1_700_000_000_000u64 + i,
                i as f64
            ));
        }
        let mut p = Command::new("mosquitto_pub")
            .args([
                "-p",
                &mqtt.port.to_string(),
                "-h",
                "127.0.0.1",
                "-q",
                "1",
                "-t",
                &format!("plant/{}/temp", from % 3),
                "-l",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("mosquitto_pub");
        p.stdin
            .take()
            .expect("stdin")
            .write_all(lines.as_bytes())
            .expect("publish");
        assert!(p.wait().expect("mosquitto_pub").success());
    };
    publish(0, 500);
    std::thread::sleep(Duration::from_secs(2));
    mqtt.restart();
    // The restarted broker keeps no sessions (no persistence): what is published before the
    // edge has reconnected and subscribed again has no subscriber. Wait for the reconnect
    // (jittered backoff, so its delay varies), then for the subscription to be granted.
    let reconnected = Instant::now();
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("link up")
    {
        assert!(
            reconnected.elapsed() < Duration::from_secs(60),
            "the edge did not reconnect to the restarted MQTT broker"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    publish(500, 1000);
    let status = wait(&mut child, Duration::from_secs(90));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "edge failed:\n{text}");
    assert!(
        text.contains("link down") && text.contains("link up"),
        "the restart is logged:\n{text}"
    );
    // Read what reached Kafka.
    let out = Command::new("kcat")
        .args([
            "-C",
            "-b",
            &kafka.bootstrap(),
            "-t",
            "f.readings",
            "-e",
            "-q",
            "-f",
            "%s\n",
        ])
        .output()
        .expect("kcat");
    let mut seen = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json");
        *seen.entry(v["id"].as_u64().expect("id")).or_insert(0) += 1;
        assert!(
            v["device"]
                .as_str()
                .is_some_and(|d| d.starts_with("plant/")),
            "{v}"
        );
    }
    let missing: Vec<u64> = (0..1000)
        .filter(|i| !seen.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "lost MQTT messages, e.g. {missing:?}:\n{text}"
    );
}

/// A second edge pointed at a spool another process holds fails at start, at once and
/// with the reason, instead of running without a sink until its sources end.
#[test]
fn a_spool_held_by_another_process_fails_the_second_edge_at_start() {
    let dir = workdir("spool-lock");
    let spool = dir.path().join("spool");
    let pipeline = |node: &str| {
        let path = dir.path().join(format!("{node}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"[node]
id = "{node}"

[sources.sim]
type = "simulator"
devices = 2
duration = "1h"
realtime_speed = 120.0

[sinks.to_cloud]
type = "kafka"
inputs = ["sim"]
brokers = "127.0.0.1:9"
topic = "lock.readings"
buffer = {{ type = "disk", path = "{}", max_bytes = "1 MiB" }}
"#,
                spool.display()
            ),
        )
        .expect("pipeline");
        path
    };
    let first_log = dir.path().join("first.log");
    let mut first = spawn(&[&pipeline("edge-a")], &first_log);
    let started = Instant::now();
    while !spool.join("lock").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the first edge never opened its spool"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second_log = dir.path().join("second.log");
    let mut second = spawn(&[&pipeline("edge-b")], &second_log);
    let status = wait(&mut second, Duration::from_secs(20));
    let text = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(!status.success(), "the second edge must fail:\n{text}");
    assert!(text.contains("cannot open the spool"), "{text}");
    let _ = first.kill();
    let _ = first.wait();
}

/// Messages a memory buffer could not deliver before the node stopped are reported as
/// lost, and the run fails: never a clean exit after losing data.
#[test]
fn undelivered_messages_of_a_memory_buffer_fail_the_run() {
    let dir = workdir("undelivered");
    let events = dir.path().join("events.jsonl");
    write_events(&events, 0, 50);
    let edge = edge_pipeline(
        dir.path(),
        "edge-lost",
        &events,
        "127.0.0.1:9",
        "lost.readings",
        "json",
        r#"{ type = "memory", max_bytes = "1 MiB" }"#,
    );
    let text = std::fs::read_to_string(&edge).unwrap();
    std::fs::write(
        &edge,
        text.replace("drain_timeout = \"120s\"", "drain_timeout = \"2s\""),
    )
    .unwrap();
    let output = isthmus().arg("run").arg(&edge).output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("UNDELIVERED (lost)"), "{stderr}");
    assert!(stderr.contains("never delivered"), "{stderr}");
}
