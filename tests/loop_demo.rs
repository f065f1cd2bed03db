//! The whole loop in one process: edge scores with the shipped Burn model and forwards anomalies → cloud counts
//! anomalous devices per line (differential) → policy rules → the edge's threshold for that
//! line changes, live, and the edge forwards rows it would not have forwarded before.

use std::path::Path;

use isthmus_engine::runtime::RunOptions;
use serde_json::Value;

#[test]
fn cloud_policies_reach_the_edge_and_change_what_it_forwards() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/demo");
    let dir = tempfile::tempdir().unwrap();
    let edge = std::fs::read_to_string(root.join("edge.toml"))
        .unwrap()
        .replace("realtime_speed = 900.0", "realtime_speed = 2700.0");
    assert!(
        edge.contains("realtime_speed = 2700.0"),
        "the shipped edge pipeline is paced"
    );
    // The copy runs from a temporary directory: point it at the shipped model.
    let model = root.join("../../models/shipped/sim-autoencoder");
    let edge = edge.replace(
        "model = \"../../models/shipped/sim-autoencoder\"",
        &format!("model = {:?}", model.display().to_string()),
    );
    assert!(
        edge.contains("type = \"infer\""),
        "the demo scores with the shipped model"
    );
    let archive = dir.path().join("forwarded.jsonl");
    let cloud = format!(
        "{}\n[sinks.archive]\ntype = \"jsonl\"\ninputs = [\"anomalies\"]\npath = {:?}\n",
        std::fs::read_to_string(root.join("cloud.toml"))
            .unwrap()
            .replace(
                "[sinks.policy_log]\ntype = \"stdout\"",
                "[sinks.policy_log]\ntype = \"null\""
            ),
        archive.display().to_string()
    );
    let edge_file = dir.path().join("edge.toml");
    let cloud_file = dir.path().join("cloud.toml");
    std::fs::write(&edge_file, edge).unwrap();
    std::fs::write(&cloud_file, cloud).unwrap();

    let (nodes, report) =
        isthmus::run_files(&[edge_file, cloud_file], &RunOptions::default()).expect("loop runs");
    let edge = &report.nodes[0];
    let cloud = &report.nodes[1];
    println!("{}\n{}", edge.report(), cloud.report());

    // 60 devices × 1 Hz × 3 h, minus dropouts.
    assert!(
        edge.events_in > 500_000,
        "edge read {} events",
        edge.events_in
    );
    assert!(
        edge.events_forwarded > 0 && edge.events_forwarded < edge.events_in / 20,
        "edge forwards only anomalies"
    );
    assert!(edge.bandwidth_saved_pct() > 90.0);
    assert_eq!(
        cloud.events_in, edge.events_forwarded,
        "everything forwarded reaches the cloud"
    );
    assert!(edge.policy_applied > 0, "policy changes reached the edge");
    assert_eq!(edge.policy_refused, 0);
    assert!(nodes[0].policy.applied_count() > 0);

    // Rows scored between the lowered (3.0) and the default (6.0) threshold can only have
    // been forwarded because the cloud lowered that line's threshold.
    let forwarded: Vec<Value> = std::fs::read_to_string(&archive)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(forwarded.len() as u64, cloud.events_in);
    let below_default = forwarded
        .iter()
        .filter(|r| r["score"].as_f64().unwrap() <= 6.0)
        .count();
    assert!(
        below_default > 0,
        "no row was forwarded under a lowered threshold"
    );
    assert!(
        forwarded.iter().all(|r| r["score"].as_f64().unwrap() > 3.0),
        "nothing below the lowest threshold is forwarded"
    );
    assert!(edge.latency_p99_us > 0);
}
