//! Bad pipeline files get every problem reported at once, each with file, line, column
//! and key path; exit status 2; nothing runs.

use std::path::{Path, PathBuf};
use std::process::Command;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn validate(files: &[&Path]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .arg("validate")
        .args(files)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

const BAD: &str = r#"[node]
id = "edge-1"

[policy.tunables]
threshold = 4.0

[sources.sim]
type = "simulator"
devices = 4
duration = "10 parsecs"

[transforms.score]
type = "detect"
inputs = ["sim"]
columns = ["temperature"]
alhpa = 0.1

[transforms.alerts]
type = "filter"
inputs = ["scroe"]
predicate = "score > ${policy.treshold}"

[transforms.loop_a]
type = "map"
inputs = ["loop_b"]
select = ["ts"]

[transforms.loop_b]
type = "map"
inputs = ["loop_a"]
select = ["ts"]

[transforms.hot]
type = "filter"
inputs = ["sim"]
predicate = "temprature > 80"

[sinks.out]
type = "stdot"
inputs = ["alerts"]
"#;

#[test]
fn every_problem_is_reported_with_location_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "bad.toml", BAD);
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2, "{stderr}");
    let f = file.display().to_string();
    let expect = [
        // bad duration unit
        (format!("{f}:10:12: `sources.sim.duration`"), "unknown unit"),
        // misspelled key, with a suggestion
        (
            format!("{f}:16:1: `transforms.score.alhpa`"),
            "did you mean `alpha`?",
        ),
        // unknown policy reference
        (
            format!("{f}:21:13: `transforms.alerts.predicate`"),
            "did you mean `${policy.threshold}`?",
        ),
        // unknown type, with a suggestion
        (
            format!("{f}:39:8: `sinks.out.type`"),
            "did you mean `stdout`?",
        ),
    ];
    for (location, text) in &expect {
        assert!(
            stderr.contains(location.as_str()),
            "missing `{location}` in:\n{stderr}"
        );
        assert!(stderr.contains(text), "missing `{text}` in:\n{stderr}");
    }
    assert!(stderr.contains("nothing was run"), "{stderr}");
}

#[test]
fn graph_problems_are_reported_after_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let text = BAD
        .replace("duration = \"10 parsecs\"", "duration = \"10s\"")
        .replace("alhpa", "alpha")
        .replace("${policy.treshold}", "${policy.threshold}")
        .replace("stdot", "stdout");
    let file = write(dir.path(), "graph.toml", &text);
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2, "{stderr}");
    let f = file.display().to_string();
    // unknown input with a suggestion
    assert!(
        stderr.contains(&format!(
            "{f}:20:11: `transforms.alerts.inputs`: unknown input `scroe`"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean `score`?"), "{stderr}");
    // cycle
    assert!(
        stderr.contains("cycle: loop_a → loop_b → loop_a")
            || stderr.contains("cycle: loop_b → loop_a → loop_b"),
        "{stderr}"
    );
    // a column the input does not provide
    assert!(
        stderr.contains(&format!("{f}:36:1: `transforms.hot.predicate`")),
        "{stderr}"
    );
    assert!(stderr.contains("temprature"), "{stderr}");
}

#[test]
fn syntax_errors_and_unknown_sections_are_located() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "syntax.toml",
        "[node]\nid = \"x\"\n[sources.a]\ntype = \n",
    );
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains(&format!("{}:4:", file.display())),
        "{stderr}"
    );
    assert!(stderr.contains("invalid TOML"), "{stderr}");

    let file = write(
        dir.path(),
        "section.toml",
        "[node]\nid = \"x\"\n[source.a]\ntype = \"simulator\"\n",
    );
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2);
    assert!(stderr.contains("unknown section `source`"), "{stderr}");
    assert!(stderr.contains("did you mean `[sources]`?"), "{stderr}");
}

#[test]
fn kinds_are_not_confused_and_inputs_are_required() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "kinds.toml",
        "[node]\nid = \"x\"\n[sources.sim]\ntype = \"simulator\"\n[sinks.f]\ntype = \"filter\"\ninputs = [\"sim\"]\n[sinks.g]\ntype = \"null\"\n",
    );
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("`filter` is a transform; put it under [transforms.f]"),
        "{stderr}"
    );
    assert!(stderr.contains("missing `inputs` for sink `g`"), "{stderr}");
}

#[test]
fn shipped_pipelines_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for pair in [
        ["pipelines/demo/edge.toml", "pipelines/demo/cloud.toml"],
        ["pipelines/edge.toml", "pipelines/cloud.toml"],
    ] {
        let (code, stderr) = validate(&[&root.join(pair[0]), &root.join(pair[1])]);
        assert_eq!(code, 0, "{pair:?}: {stderr}");
    }
    let mut examples: Vec<PathBuf> = std::fs::read_dir(root.join("pipelines/examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    examples.sort();
    let has_data = root.join("../shared/data/nab").is_dir();
    for example in &examples {
        let needs_data = std::fs::read_to_string(example)
            .unwrap()
            .contains("shared/data");
        if needs_data && !has_data {
            eprintln!("SKIPPED: {} needs ../shared/data", example.display());
            continue;
        }
        let (code, stderr) = validate(&[example]);
        assert_eq!(code, 0, "{}: {stderr}", example.display());
    }
    // Alone, the cloud pipeline reads a channel nobody writes.
    let (code, stderr) = validate(&[&root.join("pipelines/demo/cloud.toml")]);
    assert_eq!(code, 2);
    assert!(stderr.contains("edge-anomalies"), "{stderr}");
}

#[test]
fn every_unknown_key_and_duplicate_input_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "keys.toml",
        "[node]\nid = \"x\"\nrolee = \"edge\"\n[sources.sim]\ntype = \"simulator\"\ndevics = 3\ndurration = \"1m\"\n\
         [transforms.f]\ntype = \"filter\"\ninput = [\"sim\"]\npredicat = \"true\"\n",
    );
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2);
    for (key, help) in [
        ("node.rolee", "did you mean `role`?"),
        ("sources.sim.devics", "did you mean `devices`?"),
        ("sources.sim.durration", "did you mean `duration`?"),
        ("transforms.f.predicat", "did you mean `predicate`?"),
        ("transforms.f.input", "did you mean `inputs`?"),
    ] {
        assert!(
            stderr.contains(&format!("`{key}`: unknown key")),
            "missing {key} in:\n{stderr}"
        );
        assert!(stderr.contains(help), "missing `{help}` in:\n{stderr}");
    }

    let file = write(
        dir.path(),
        "dup.toml",
        "[node]\nid = \"x\"\n[sources.sim]\ntype = \"simulator\"\n[sinks.out]\ntype = \"null\"\ninputs = [\"sim\", \"sim\"]\n",
    );
    let (code, stderr) = validate(&[&file]);
    assert_eq!(code, 2);
    assert!(stderr.contains("`sim` is listed twice"), "{stderr}");
}

#[test]
fn writers_of_one_channel_must_agree_on_columns() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(
        dir.path(),
        "v.csv",
        "timestamp,value\n2026-01-01 00:00:00,1.5\n",
    );
    let a = write(
        dir.path(),
        "a.toml",
        "[node]\nid = \"a\"\n[sources.sim]\ntype = \"simulator\"\n[sinks.out]\ntype = \"channel\"\ninputs = [\"sim\"]\nchannel = \"x\"\n",
    );
    let b = write(
        dir.path(),
        "b.toml",
        &format!(
            "[node]\nid = \"b\"\n[sources.f]\ntype = \"csv\"\npath = {:?}\n[sinks.out]\ntype = \"channel\"\ninputs = [\"f\"]\nchannel = \"x\"\n",
            csv.display().to_string()
        ),
    );
    let r = write(
        dir.path(),
        "r.toml",
        "[node]\nid = \"r\"\n[sources.x]\ntype = \"channel\"\nchannel = \"x\"\n[sinks.out]\ntype = \"null\"\ninputs = [\"x\"]\n",
    );
    let (code, stderr) = validate(&[&a, &b, &r]);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("channel `x` is written with different columns"),
        "{stderr}"
    );
}

#[test]
fn a_pipeline_that_fails_validation_never_touches_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let file = write(
        dir.path(),
        "edge.toml",
        &format!(
            r#"[node]
id = "edge-1"

[sources.sim]
type = "simulator"
devices = 2
duration = "1m"

[sinks.to_cloud]
type = "kafka"
inputs = ["sim"]
brokers = "127.0.0.1:9"
topic = "readings"
key = "devcie"
buffer = {{ type = "disk", path = "{}", max_bytes = "1 MiB" }}
"#,
            spool.display()
        ),
    );
    let (code, err) = validate(&[&file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("edge.toml:14:1") && err.contains("did you mean `device`"),
        "{err}"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .arg("run")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "run refuses the file too");
    assert!(!spool.exists(), "the spool directory was created");
}

/// A file sink writing the file a source reads would truncate the input: refused.
#[test]
fn a_sink_may_not_overwrite_a_file_a_source_reads() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("readings.csv");
    std::fs::write(&data, "ts,value\n2024-01-01 00:00:00,1.0\n").unwrap();
    let before = std::fs::read(&data).unwrap();
    let file = write(
        dir.path(),
        "loop.toml",
        r#"[node]
id = "n"

[sources.r]
type = "csv"
path = "readings.csv"
timestamp_column = "ts"

[sinks.out]
type = "csv"
inputs = ["r"]
path = "./readings.csv"
"#,
    );
    let (code, err) = validate(&[&file]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("loop.toml:12:1") && err.contains("`sources.r` reads"),
        "{err}"
    );
    let run = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .arg("run")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2));
    assert_eq!(
        std::fs::read(&data).unwrap(),
        before,
        "the input is untouched"
    );
}

#[test]
fn a_wrong_policy_section_is_reported_once_without_follow_on_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.toml",
        r#"[node]
id = "edge-1"

[policy]
trusted_key = ["keys/cloud.pub"]

[policy.tunables]
threshold = 4.0

[sources.sim]
type = "simulator"

[transforms.alerts]
type = "filter"
inputs = ["sim"]
predicate = "temperature > ${policy.threshold}"

[sinks.out]
type = "null"
inputs = ["alerts"]
"#,
    );
    let (code, err) = validate(&[&file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("trusted_key"), "{err}");
    assert!(!err.contains("no declared tunable"), "{err}");
}

#[test]
fn an_empty_trusted_keys_list_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "p.toml",
        "[node]\nid = \"e\"\n\n[policy]\ntrusted_keys = []\n\n[sources.sim]\ntype = \"simulator\"\n\n[sinks.out]\ntype = \"null\"\ninputs = [\"sim\"]\n",
    );
    let (code, err) = validate(&[&file]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("p.toml:5:"), "{err}");
    assert!(err.contains("`trusted_keys` is empty"), "{err}");
}
