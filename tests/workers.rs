//! The same graph gives identical results with 1 and 2 workers.

use std::path::{Path, PathBuf};

use isthmus_engine::runtime::RunOptions;

fn run(dir: &Path, workers: usize) -> (Vec<String>, Vec<String>) {
    let pipeline = format!(
        r#"
[node]
id = "workers-test"

[sources.sim]
type = "simulator"
devices = 24
duration = "20m"
seed = 11

[transforms.score]
type = "detect"
inputs = ["sim"]
key = ["device"]
columns = ["temperature", "vibration", "pressure"]

[transforms.alerts]
type = "filter"
inputs = ["score"]
predicate = "score > 3.0"

[transforms.per_line]
type = "window"
inputs = ["score"]
key = ["line"]
size = "5m"
slide = "1m"
aggregates = {{ temperature = ["avg", "max"], score = ["max"] }}

[sinks.scored]
type = "jsonl"
inputs = ["alerts"]
path = "alerts-{workers}.jsonl"

[sinks.windows]
type = "jsonl"
inputs = ["per_line"]
path = "windows-{workers}.jsonl"
"#
    );
    let file: PathBuf = dir.join(format!("p{workers}.toml"));
    std::fs::write(&file, pipeline).unwrap();
    let options = RunOptions {
        workers,
        ..RunOptions::default()
    };
    isthmus::run_files(&[file], &options).expect("pipeline runs");
    let read = |name: String| {
        let mut lines: Vec<String> = std::fs::read_to_string(dir.join(name))
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    };
    (
        read(format!("alerts-{workers}.jsonl")),
        read(format!("windows-{workers}.jsonl")),
    )
}

#[test]
fn one_and_two_workers_give_identical_results() {
    let dir = tempfile::tempdir().unwrap();
    let (alerts_1, windows_1) = run(dir.path(), 1);
    let (alerts_2, windows_2) = run(dir.path(), 2);
    assert!(
        !alerts_1.is_empty(),
        "the simulator's faults should raise alerts"
    );
    // 24 devices × 20 min; 6 lines; 1-minute slide over 20 minutes (+4 trailing windows).
    assert!(
        windows_1.len() >= 6 * 20,
        "expected sliding windows per line, got {}",
        windows_1.len()
    );
    assert_eq!(
        alerts_1, alerts_2,
        "filtered rows differ between 1 and 2 workers"
    );
    assert_eq!(
        windows_1, windows_2,
        "window results differ between 1 and 2 workers"
    );
}
