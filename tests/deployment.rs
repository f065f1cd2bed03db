//! `docker-compose.yml` cannot run here (no Docker), so this keeps it honest: every topic,
//! address and pipeline file it names agrees with the pipelines, and each service's pipeline
//! validates with the environment the service gives it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use isthmus::engine::spec::expand_env;
use yaml_rust2::{Yaml, YamlLoader};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Yaml {
    let text = std::fs::read_to_string(repo().join("docker-compose.yml")).expect("compose file");
    YamlLoader::load_from_str(&text)
        .expect("docker-compose.yml is YAML")
        .remove(0)
}

fn str_list(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn environment(service: &Yaml) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(map) = service["environment"].as_hash() {
        for (k, v) in map {
            let value = match v {
                Yaml::String(s) => s.clone(),
                Yaml::Integer(i) => i.to_string(),
                other => panic!("unexpected environment value {other:?}"),
            };
            env.insert(k.as_str().expect("variable name").to_string(), value);
        }
    }
    env
}

/// An Isthmus service: its name, pipeline files (repository paths) and environment.
struct NodeService {
    name: String,
    files: Vec<PathBuf>,
    env: BTreeMap<String, String>,
}

fn node_services(compose: &Yaml) -> Vec<NodeService> {
    let services = compose["services"].as_hash().expect("services");
    let mut out = Vec::new();
    for (name, service) in services {
        if service["build"].as_str() != Some(".") {
            continue;
        }
        let command = str_list(&service["command"]);
        assert_eq!(
            command.first().map(String::as_str),
            Some("run"),
            "{name:?} runs pipelines"
        );
        let files = command[1..]
            .iter()
            .filter(|a| a.ends_with(".toml"))
            .map(|f| {
                let inside = f.strip_prefix("/pipelines/").unwrap_or_else(|| {
                    panic!("{f}: the Dockerfile copies pipelines/ to /pipelines/")
                });
                repo().join("pipelines").join(inside)
            })
            .collect();
        out.push(NodeService {
            name: name.as_str().unwrap().to_string(),
            files,
            env: environment(service),
        });
    }
    out
}

/// Kafka topics a pipeline reads and writes, and the brokers it names.
#[derive(Default)]
struct KafkaUse {
    reads: BTreeSet<String>,
    writes: BTreeSet<String>,
    brokers: BTreeSet<String>,
    spools: BTreeSet<String>,
    node: String,
}

fn kafka_use(file: &Path, env: &BTreeMap<String, String>) -> KafkaUse {
    let text = std::fs::read_to_string(file).expect("pipeline file");
    let text = expand_env(&text, |name| env.get(name).cloned()).expect("env expands");
    let table: toml::Table = toml::from_str(&text).expect("pipeline is TOML");
    let mut used = KafkaUse {
        node: table["node"]["id"].as_str().unwrap().to_string(),
        ..Default::default()
    };
    let components = |kind: &str| -> Vec<toml::Table> {
        table
            .get(kind)
            .and_then(|t| t.as_table())
            .map(|t| t.values().filter_map(|c| c.as_table()).cloned().collect())
            .unwrap_or_default()
    };
    for source in components("sources") {
        if source["type"].as_str() == Some("kafka") {
            used.brokers
                .insert(source["brokers"].as_str().unwrap().to_string());
            for t in source["topics"].as_array().unwrap() {
                used.reads.insert(t.as_str().unwrap().to_string());
            }
        }
    }
    for sink in components("sinks") {
        if sink["type"].as_str() == Some("kafka") {
            used.brokers
                .insert(sink["brokers"].as_str().unwrap().to_string());
            used.writes
                .insert(sink["topic"].as_str().unwrap().to_string());
            if let Some(path) = sink.get("buffer").and_then(|b| b.get("path")) {
                used.spools.insert(path.as_str().unwrap().to_string());
            }
        }
    }
    used
}

#[test]
fn compose_agrees_with_the_pipelines() {
    let compose = compose();
    let services = &compose["services"];

    // The broker: the version the tests run, and the address the nodes are given.
    let kafka = &services["kafka"];
    let image = kafka["image"].as_str().expect("kafka image");
    let script = std::fs::read_to_string(repo().join("scripts/kafka.sh")).unwrap();
    let tested = script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\"${KAFKA_VERSION:-"))
        .and_then(|l| l.strip_suffix("}\""))
        .expect("scripts/kafka.sh names its Kafka version");
    assert_eq!(
        image,
        format!("apache/kafka:{tested}"),
        "compose runs the Kafka the tests run"
    );
    let advertised = environment(kafka)["KAFKA_ADVERTISED_LISTENERS"].clone();
    let broker_address = advertised
        .strip_prefix("PLAINTEXT://")
        .expect("a PLAINTEXT listener")
        .to_string();

    // The topics the init service creates.
    let init = str_list(&services["topics"]["command"]).join(" ");
    let created: BTreeSet<String> = init
        .split("--topic ")
        .skip(1)
        .map(|rest| rest.split_whitespace().next().unwrap().to_string())
        .collect();

    let nodes = node_services(&compose);
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["cloud", "edge-1", "edge-2"]));

    let mut reads = BTreeSet::new();
    let mut writes = BTreeSet::new();
    let mut node_ids = BTreeSet::new();
    let mut spools = BTreeSet::new();
    for node in &nodes {
        for file in &node.files {
            assert!(
                file.is_file(),
                "{}: {} does not exist",
                node.name,
                file.display()
            );
            // The pipeline validates with the service's environment.
            let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
                .arg("validate")
                .arg(file)
                .env_clear()
                .envs(&node.env)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {} does not validate:\n{}",
                node.name,
                file.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let used = kafka_use(file, &node.env);
            for b in &used.brokers {
                assert_eq!(
                    b,
                    &broker_address,
                    "{}: {} names broker {b}",
                    node.name,
                    file.display()
                );
            }
            assert!(
                node_ids.insert(used.node.clone()),
                "node id {} used twice",
                used.node
            );
            for s in &used.spools {
                assert!(
                    s.starts_with("/spool/"),
                    "{}: spool {s} is not on the service's volume",
                    node.name
                );
                assert!(spools.insert(s.clone()), "two edges share the spool {s}");
            }
            reads.extend(used.reads);
            writes.extend(used.writes);
        }
        if node.name.starts_with("edge") {
            let volumes = str_list(&services[node.name.as_str()]["volumes"]);
            assert!(
                volumes.iter().any(|v| v.ends_with(":/spool")),
                "{}: the spool needs a volume",
                node.name
            );
        }
    }
    assert_eq!(
        reads, writes,
        "every topic read is written by some node, and the reverse"
    );
    assert_eq!(
        created, reads,
        "the init service creates exactly the topics in use"
    );
}
