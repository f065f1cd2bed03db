//! The test brokers are real: a Kafka broker stores messages across a restart and a
//! Mosquitto broker delivers MQTT messages, both driven by their own command-line clients.

mod support;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use support::brokers::{KafkaBroker, Mosquitto, free_port};

/// Produces `(key, value)` messages to `topic` with `kcat -P` (keys pick the partition).
fn kcat_produce(broker: &KafkaBroker, topic: &str, messages: &[(String, String)]) {
    let mut child = Command::new("kcat")
        .args(["-P", "-b", &broker.bootstrap(), "-t", topic, "-K", ":"])
        .args(["-X", "acks=all"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn kcat -P");
    {
        let mut stdin = child.stdin.take().expect("kcat stdin");
        for (key, value) in messages {
            writeln!(stdin, "{key}:{value}").expect("write to kcat");
        }
    }
    let status = child.wait().expect("wait for kcat -P");
    assert!(status.success(), "kcat -P failed: {status}");
}

/// Reads `topic` from the beginning to its end with `kcat -C -e`: `(partition, key, value)`.
fn kcat_consume(broker: &KafkaBroker, topic: &str) -> Vec<(u32, String, String)> {
    let output = Command::new("kcat")
        .args(["-C", "-b", &broker.bootstrap(), "-t", topic])
        .args(["-o", "beginning", "-e", "-q", "-f", "%p\t%k\t%s\n"])
        .output()
        .expect("run kcat -C");
    assert!(
        output.status.success(),
        "kcat -C failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("kcat output is UTF-8")
        .lines()
        .map(|line| {
            let mut fields = line.splitn(3, '\t');
            let partition = fields.next().unwrap_or_default();
            let key = fields.next().unwrap_or_default();
            let value = fields.next().unwrap_or_default();
            (
                partition
                    .parse()
                    .unwrap_or_else(|_| panic!("bad kcat line {line:?}")),
                key.to_string(),
                value.to_string(),
            )
        })
        .collect()
}

/// Values of consumed messages, sorted, for comparison with what was produced.
fn sorted_values(consumed: &[(u32, String, String)]) -> Vec<String> {
    let mut values: Vec<String> = consumed.iter().map(|(_, _, v)| v.clone()).collect();
    values.sort();
    values
}

#[test]
fn kafka_broker_serves_messages_and_keeps_them_across_a_restart() {
    let broker = KafkaBroker::start(free_port());
    let topic = "sensor-readings";
    broker.create_topic(topic, 3);

    let messages: Vec<(String, String)> = (0..100)
        .map(|i| {
            (
                format!("device-{:02}", i % 10),
                format!(r#"{{"seq":{i:03},"temperature":{}.5}}"#, 20 + i % 7),
            )
        })
        .collect();
    let mut expected: Vec<String> = messages.iter().map(|(_, v)| v.clone()).collect();
    expected.sort();
    kcat_produce(&broker, topic, &messages);

    let consumed = kcat_consume(&broker, topic);
    assert_eq!(consumed.len(), 100, "all 100 messages come back");
    assert_eq!(sorted_values(&consumed), expected);
    let partitions: BTreeSet<u32> = consumed.iter().map(|(p, _, _)| *p).collect();
    assert!(
        partitions.len() > 1 && partitions.iter().all(|p| *p < 3),
        "ten keys spread over the 3 partitions, got {partitions:?}"
    );
    // Each key always lands in the same partition.
    for (partition, key, _) in &consumed {
        let first = consumed
            .iter()
            .find(|(_, k, _)| k == key)
            .expect("key seen");
        assert_eq!(*partition, first.0, "key {key} stays in one partition");
    }

    broker.restart();
    let after_restart = kcat_consume(&broker, topic);
    assert_eq!(after_restart.len(), 100, "messages survive a restart");
    assert_eq!(sorted_values(&after_restart), expected);

    // The restarted broker still accepts writes.
    kcat_produce(
        &broker,
        topic,
        &[("device-00".into(), "after-restart".into())],
    );
    let values = sorted_values(&kcat_consume(&broker, topic));
    assert_eq!(values.len(), 101);
    assert!(values.contains(&"after-restart".to_string()));
}

/// Opens a persistent MQTT session for `client_id` subscribed to `topic` (QoS 1), then leaves,
/// so the broker queues what is published meanwhile.
fn mqtt_subscribe_session(broker: &Mosquitto, client_id: &str, topic: &str) {
    let status = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-i", client_id, "-c", "-q", "1", "-t", topic, "-E"])
        .status()
        .expect("run mosquitto_sub -E");
    assert!(status.success(), "mosquitto_sub -E failed: {status}");
}

fn mqtt_publish(broker: &Mosquitto, topic: &str, payload: &str) {
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-t", topic, "-m", payload])
        .status()
        .expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// Resumes `client_id`'s session and returns the first `count` messages (10 s at most).
fn mqtt_receive(broker: &Mosquitto, client_id: &str, topic: &str, count: usize) -> Vec<String> {
    let output = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-i", client_id, "-c", "-q", "1", "-t", topic])
        .args(["-C", &count.to_string(), "-W", "10", "-v"])
        .output()
        .expect("run mosquitto_sub");
    assert!(
        output.status.success(),
        "mosquitto_sub did not receive {count} messages: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn mosquitto_broker_delivers_messages_before_and_after_a_restart() {
    let broker = Mosquitto::start(free_port());
    let topic = "plant/line-1/temperature";

    mqtt_subscribe_session(&broker, "isthmus-test-reader", "plant/+/temperature");
    for value in ["21.5", "21.7", "22.0"] {
        mqtt_publish(&broker, topic, value);
    }
    let received = mqtt_receive(&broker, "isthmus-test-reader", "plant/+/temperature", 3);
    assert_eq!(
        received,
        [
            "plant/line-1/temperature 21.5",
            "plant/line-1/temperature 21.7",
            "plant/line-1/temperature 22.0"
        ]
    );

    broker.restart();
    mqtt_subscribe_session(&broker, "isthmus-test-reader-2", topic);
    mqtt_publish(&broker, topic, "23.1");
    let received = mqtt_receive(&broker, "isthmus-test-reader-2", topic, 1);
    assert_eq!(received, ["plant/line-1/temperature 23.1"]);
}
