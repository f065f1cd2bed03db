//! Cloud insight → edge reconfiguration over a real Kafka broker, through the `isthmus`
//! binary: the cloud signs the policy changes its rules produce, the edge verifies and
//! applies them live and acknowledges each one on a Kafka topic the cloud reads back; forged,
//! replayed, stale, untrusted and out-of-scope changes are refused and acknowledged as such.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use isthmus_engine::policy::{PolicyChange, PolicyScope, PolicyValue};
use isthmus_engine::signing::{PolicySigner, SignedFields};
use support::brokers::KafkaBroker;
use support::{isthmus, workdir};

/// The tests of this file run one at a time: each starts several nodes, and on two cores
/// two such tests at once starve each other's timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Starts `isthmus run FILE` in the background, logging to `FILE.log`.
fn spawn(file: &Path) -> Child {
    let log = std::fs::File::create(file.with_extension("log")).expect("log file");
    isthmus()
        .arg("run")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn isthmus")
}

/// Waits for a child to end (at most `limit`), returning its log.
fn finish(mut child: Child, file: &Path, limit: Duration) -> String {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!(
                "{} still running after {limit:?}:\n{}",
                file.display(),
                std::fs::read_to_string(file.with_extension("log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(file.with_extension("log")).unwrap_or_default();
    assert!(
        status.success(),
        "{} failed ({status}):\n{log}",
        file.display()
    );
    log
}

/// Runs `isthmus keygen` into `dir` and returns the secret and public key files.
fn keygen(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let out = isthmus()
        .args(["keygen", "--out"])
        .arg(dir)
        .args(["--name", name])
        .output()
        .expect("keygen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let public = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    assert!(
        text.contains(public.trim()),
        "keygen prints the public key: {text}"
    );
    // A second run never overwrites the pair.
    let again = isthmus()
        .args(["keygen", "--out"])
        .arg(dir)
        .args(["--name", name])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    )
}

/// The columns a kafka source declares to read a signed policy stream.
const POLICY_COLUMNS: &str = r#"{ policy = "utf8", scope_key = "utf8", scope_value = "utf8", value = "utf8", diff = "int64", version = "int64", node = "utf8", signer = "utf8", signature = "utf8" }"#;
/// The columns of acknowledgements.
const ACK_COLUMNS: &str = r#"{ node = "utf8", policy = "utf8", scope_key = "utf8", scope_value = "utf8", value = "utf8", diff = "int64", version = "int64", status = "utf8", reason = "utf8" }"#;

/// The edge half of the loop: policies from Kafka applied (verified with `trusted`),
/// acknowledgements to Kafka, and optionally the simulated machines whose anomalies go to
/// the cloud.
fn edge_pipeline(
    dir: &Path,
    node: &str,
    brokers: &str,
    trusted: &Path,
    with_machines: bool,
) -> PathBuf {
    let machines = if with_machines {
        format!(
            r#"
[sources.sensors]
type = "simulator"
devices = 24
plants = 1
lines_per_plant = 3
rate_hz = 1.0
duration = "2h"
realtime_speed = 900.0
mean_time_between_faults = "20m"
seed = 11

[transforms.score]
type = "detect"
inputs = ["sensors"]
key = ["device"]
columns = ["temperature", "vibration", "pressure"]

[transforms.alerts]
type = "filter"
inputs = ["score"]
predicate = "score > ${{policy.threshold}}"

[sinks.to_cloud]
type = "kafka"
inputs = ["alerts"]
brokers = "{brokers}"
topic = "loop.anomalies"
format = "arrow"
key = "device"
"#
        )
    } else {
        String::new()
    };
    let path = dir.join(format!("{node}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "{node}"
role = "edge"

[policy]
remote = ["threshold"]
trusted_keys = ["{trusted}"]

[policy.tunables]
threshold = 6.0
sample_every = 10
{machines}
[sources.from_cloud]
type = "kafka"
brokers = "{brokers}"
topics = ["loop.policies"]
group = "{node}"
format = "json"
columns = {POLICY_COLUMNS}
max_out_of_orderness = "0s"
stop_after_idle = "12s"

[sinks.apply]
type = "reconfigure"
inputs = ["from_cloud"]

[sources.acks]
type = "policy_acks"

[sinks.acks_to_cloud]
type = "kafka"
inputs = ["acks"]
brokers = "{brokers}"
topic = "loop.acks"
format = "json"
key = "node"
"#,
            trusted = trusted.display()
        ),
    )
    .unwrap();
    path
}

/// The cloud half: anomalies → fleet → signed policy rules → Kafka; acknowledgements back
/// from Kafka into `acks.jsonl`.
fn cloud_pipeline(dir: &Path, brokers: &str, key: &Path) -> (PathBuf, PathBuf) {
    let path = dir.join("cloud.toml");
    let acks = dir.join("acks.jsonl");
    std::fs::write(
        &path,
        format!(
            r#"[node]
id = "cloud"
role = "cloud"

[sources.anomalies]
type = "kafka"
brokers = "{brokers}"
topics = ["loop.anomalies"]
group = "loop-cloud"
format = "arrow"
dedup = true
columns = {{ device = "utf8", plant = "utf8", line = "utf8", score = "float64" }}
stop_after_idle = "10s"

[transforms.fleet]
type = "fleet"
inputs = ["anomalies"]
group_by = ["plant", "line"]
anomalous_for = "10m"

[transforms.rules]
type = "policy"
inputs = ["fleet"]
scope = "line"
signing_key = "{key}"

[[transforms.rules.rules]]
when = "anomalous_devices >= 1"
set = {{ threshold = 3.0 }}

[sinks.to_edges]
type = "kafka"
inputs = ["rules"]
brokers = "{brokers}"
topic = "loop.policies"
format = "json"
key = "node"

[sources.acks]
type = "kafka"
brokers = "{brokers}"
topics = ["loop.acks"]
group = "loop-cloud-acks"
format = "json"
columns = {ACK_COLUMNS}
stop_after_idle = "25s"

[sinks.node_versions]
type = "jsonl"
inputs = ["acks"]
path = "{acks}"
"#,
            key = key.display(),
            acks = acks.display()
        ),
    )
    .unwrap();
    (path, acks)
}

fn json_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

#[test]
fn the_cloud_reconfigures_two_edges_over_kafka_and_sees_their_acknowledgements() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = KafkaBroker::shared();
    let brokers = broker.bootstrap();
    for topic in ["loop.anomalies", "loop.policies", "loop.acks"] {
        broker.create_topic(topic, 1);
    }
    let dir = workdir("loop");
    let (secret, public) = keygen(dir.path(), "cloud");
    let (cloud, acks) = cloud_pipeline(dir.path(), &brokers, &secret);
    let edges: Vec<PathBuf> = ["edge-1", "edge-2"]
        .iter()
        .map(|node| edge_pipeline(dir.path(), node, &brokers, &public, true))
        .collect();
    let cloud_run = spawn(&cloud);
    let edge_runs: Vec<Child> = edges.iter().map(|e| spawn(e)).collect();
    let edge_logs: Vec<String> = edge_runs
        .into_iter()
        .zip(&edges)
        .map(|(child, file)| finish(child, file, Duration::from_secs(300)))
        .collect();
    let cloud_log = finish(cloud_run, &cloud, Duration::from_secs(300));

    // Both edges applied the cloud's signed changes and refused none.
    for (log, node) in edge_logs.iter().zip(["edge-1", "edge-2"]) {
        assert!(
            log.contains("policy change applied: set threshold for line = "),
            "{node} applied a signed change:\n{log}"
        );
        assert!(!log.contains("policy change refused"), "{node}:\n{log}");
    }
    // The cloud read back one acknowledgement per change per edge, all applied.
    let acks = json_lines(&acks);
    assert!(
        !acks.is_empty(),
        "no acknowledgements reached the cloud:\n{cloud_log}"
    );
    for node in ["edge-1", "edge-2"] {
        let mine: Vec<&serde_json::Value> = acks.iter().filter(|a| a["node"] == node).collect();
        assert!(
            !mine.is_empty(),
            "no acknowledgement from {node}: {acks:#?}"
        );
        assert!(
            mine.iter()
                .all(|a| a["status"] == "applied" && a["policy"] == "threshold"),
            "{mine:#?}"
        );
        assert!(mine.iter().any(|a| a["value"] == "3.0" && a["diff"] == 1));
    }
    // Both edges received the same changes in the same order (every change is addressed to
    // `*`); one may have stopped before the cloud's last changes (its policy source ends
    // after 12 s without messages), so one sequence is a prefix of the other.
    let seen = |node: &str| -> Vec<String> {
        acks.iter()
            .filter(|a| a["node"] == node)
            .map(|a| {
                format!(
                    "{} {} {} {}",
                    a["version"], a["scope_value"], a["value"], a["diff"]
                )
            })
            .collect()
    };
    let (one, two) = (seen("edge-1"), seen("edge-2"));
    let common = one.len().min(two.len());
    assert_eq!(one[..common], two[..common], "{acks:#?}");
}

/// One message of a signed policy stream, as the kafka json sink writes it.
fn message(
    change: &PolicyChange,
    node: &str,
    signer: Option<&PolicySigner>,
    tamper: Option<&str>,
) -> String {
    let value = change.value.to_string();
    let fields = SignedFields::of_change(node, change, &value);
    let signature = signer.map(|s| s.sign(&fields));
    serde_json::json!({
        "ts": "2026-01-01T00:00:00Z",
        "policy": change.name,
        "scope_key": fields.scope_key,
        "scope_value": fields.scope_value,
        "value": tamper.unwrap_or(&value),
        "diff": change.diff,
        "version": change.version,
        "node": node,
        "signer": signer.map(|s| s.public_key()),
        "signature": signature,
    })
    .to_string()
}

fn change(name: &str, line: Option<&str>, value: f64, version: u64) -> PolicyChange {
    PolicyChange {
        name: name.into(),
        scope: line.map(|l| PolicyScope {
            key: "line".into(),
            value: l.into(),
        }),
        value: PolicyValue::Float(value),
        diff: 1,
        version,
    }
}

#[test]
fn forged_replayed_stale_untrusted_and_out_of_scope_changes_are_refused_and_acknowledged() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let broker = KafkaBroker::shared();
    let brokers = broker.bootstrap();
    // Topic names of the edge pipeline, unique to this test.
    let dir = workdir("refuse");
    let (secret, public) = keygen(dir.path(), "cloud");
    let cloud = PolicySigner::from_file(&secret).unwrap();
    let intruder = PolicySigner::generate();
    let edge = edge_pipeline(dir.path(), "edge-r", &brokers, &public, false);
    let text = std::fs::read_to_string(&edge)
        .unwrap()
        .replace("loop.policies", "refuse.policies")
        .replace("loop.acks", "refuse.acks");
    std::fs::write(&edge, text).unwrap();
    broker.create_topic("refuse.policies", 1);
    broker.create_topic("refuse.acks", 1);

    let good = change("threshold", Some("p1-l1"), 2.5, 100);
    let lines = [
        // 0: signed by the trusted key: applied.
        message(&good, "edge-r", Some(&cloud), None),
        // 1: the same message again: a replay.
        message(&good, "edge-r", Some(&cloud), None),
        // 2: the value altered after signing: forged.
        message(
            &change("threshold", Some("p1-l2"), 2.5, 100),
            "*",
            Some(&cloud),
            Some("0.1"),
        ),
        // 3: signed, by a key the edge does not trust.
        message(
            &change("threshold", None, 0.1, 100),
            "edge-r",
            Some(&intruder),
            None,
        ),
        // 4: correctly signed, but a tunable the cloud may not change.
        message(
            &change("sample_every", None, 1.0, 100),
            "edge-r",
            Some(&cloud),
            None,
        ),
        // 5: an older version of the applied override: stale.
        message(
            &change("threshold", Some("p1-l1"), 9.0, 50),
            "*",
            Some(&cloud),
            None,
        ),
        // 6: unsigned.
        message(
            &change("threshold", Some("p1-l3"), 1.0, 100),
            "*",
            None,
            None,
        ),
        // 7: for another node: not for this edge, skipped without an acknowledgement.
        message(
            &change("threshold", None, 5.0, 100),
            "edge-x",
            Some(&cloud),
            None,
        ),
        // 8: a newer version, for every node: applied.
        message(
            &change("threshold", Some("p1-l1"), 2.0, 200),
            "*",
            Some(&cloud),
            None,
        ),
    ];
    let input = dir.path().join("policies.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for line in &lines {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let produced = Command::new("kcat")
        .args(["-P", "-b", &brokers, "-t", "refuse.policies", "-l"])
        .arg(&input)
        .output()
        .expect("kcat");
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );

    let log = finish(spawn(&edge), &edge, Duration::from_secs(120));
    let out = Command::new("kcat")
        .args(["-C", "-b", &brokers, "-t", "refuse.acks", "-e", "-q"])
        .output()
        .expect("kcat");
    let acks: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("ack json"))
        .collect();
    let outcomes: Vec<String> = acks
        .iter()
        .map(|a| {
            format!(
                "{} {}",
                a["status"].as_str().unwrap(),
                a["reason"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 8, "{outcomes:#?}\n{log}");
    assert_eq!(outcomes[0].trim(), "applied");
    assert!(outcomes[1].starts_with("refused replay"), "{}", outcomes[1]);
    assert!(
        outcomes[2].starts_with("refused bad signature"),
        "{}",
        outcomes[2]
    );
    assert!(
        outcomes[3].starts_with("refused signed by an untrusted key"),
        "{}",
        outcomes[3]
    );
    assert!(
        outcomes[4].contains("may not be changed remotely"),
        "{}",
        outcomes[4]
    );
    assert!(
        outcomes[5].starts_with("refused stale: version 50"),
        "{}",
        outcomes[5]
    );
    assert!(
        outcomes[6].starts_with("refused unsigned"),
        "{}",
        outcomes[6]
    );
    assert_eq!(outcomes[7].trim(), "applied");
    assert!(acks.iter().all(|a| a["node"] == "edge-r"));
    // Each refusal is logged, and counted in the summary.
    assert_eq!(log.matches("policy change refused").count(), 6, "{log}");
    assert!(log.contains("6 refused"), "{log}");
}
