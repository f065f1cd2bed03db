//! `isthmus eval`: scores anomaly detectors on the NAB and SKAB benchmarks by running them
//! through the engine, as a stream, exactly as a pipeline would run them.
//!
//! For every recording a pipeline is built from TOML text and run with
//! [`isthmus_engine::runtime::run`], the same call `isthmus run` makes:
//!
//! ```text
//! csv source (the recording, event time from its timestamp column)
//!   └─▶ the detector's transforms (a TOML fragment, see [`Detector`])
//!         └─▶ map: ts, <score column> AS eval_score
//!               └─▶ csv sink (a file in a temporary directory, read back)
//! ```
//!
//! The rows read back must match the recording's rows one for one, in order and by
//! timestamp; anything else is an error. NAB wants an anomaly likelihood in `[0, 1]` per row:
//! the detector's score is mapped through its [`Likelihood`]. SKAB wants alerts: a row is an
//! alert when its score reaches a threshold chosen on the fault-free recording.
//!
//! A detector is data, not code: the TOML of the transforms between source and sink, the
//! name of the column holding the score and the likelihood mapping. Adding one (for example
//! a trained model behind an `infer` transform) is adding a [`Detector`] value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use isthmus_engine::runtime::{Node, RunOptions};
use isthmus_engine::{ConfigErrors, EngineError};
use isthmus_eval::nab::{self, Corpus, ProfileResult, PublishedScore};
use isthmus_eval::skab::{self, SENSOR_COLUMNS, SkabFile, SkabFileResult, SkabTotals};
use isthmus_eval::{EvalError, report};
use isthmus_models::{ModelKind, TrainConfig, TrainingData};

/// Name of the source component in evaluation pipelines; detector fragments read from it
/// through the `{input}` placeholder.
pub const SOURCE_NAME: &str = "readings";

/// Placeholder in a detector fragment for the name of the component it reads.
pub const INPUT_PLACEHOLDER: &str = "{input}";

/// Placeholder in a detector fragment for the TOML array of the value columns to score
/// (`["value"]` for NAB, the eight sensors for SKAB).
pub const COLUMNS_PLACEHOLDER: &str = "{value_columns}";

/// Placeholder in a detector fragment for the path (a TOML string) of the model trained for
/// the recording (see [`Detector::training`]).
pub const MODEL_PLACEHOLDER: &str = "{model}";

/// Calibration half-life (rows) of the Burn detectors, which calibrate the model's error
/// on the linear scale. Chosen on our 42 NAB files (so the score flatters them a little),
/// forecaster, standard profile: on the log scale (`infer`'s default) 0.0 with a half-life
/// of 1000 rows, 2.9 with 20; on the linear scale 5.2 with 1000, 8.7 with 200, 12.6 with
/// 100, 11.4 with 50. The log scale puts a spike ten times the usual error only about two
/// deviations away, and long half-lives let noise-free series flood the scorer.
pub const CALIBRATION_HALF_LIFE: u32 = 100;

/// The column the evaluation pipeline writes the detector's score to.
const EVAL_SCORE_COLUMN: &str = "eval_score";

/// Everything that can go wrong while evaluating a detector.
#[derive(Debug)]
pub enum EvalRunError {
    /// The benchmark data could not be loaded or scored.
    Benchmark(EvalError),
    /// The pipeline built for a recording is invalid (usually a detector fragment's fault);
    /// the generated text is kept so the located errors can be read against it.
    Pipeline {
        /// The recording.
        recording: String,
        /// Every problem, with line and column in `text`.
        errors: ConfigErrors,
        /// The generated pipeline.
        text: String,
    },
    /// The engine failed while running a recording's pipeline.
    Engine {
        /// The recording.
        recording: String,
        /// What failed.
        source: EngineError,
    },
    /// A file could not be read, written or created.
    Io {
        /// The path concerned.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The rows that came out of the engine do not match the recording's rows.
    Mismatch {
        /// The recording.
        recording: String,
        /// What does not match.
        message: String,
    },
    /// The detector's model could not be trained for a recording.
    Training {
        /// The recording.
        recording: String,
        /// What failed.
        source: isthmus_models::ModelError,
    },
    /// No detector has this name.
    UnknownDetector {
        /// The name asked for.
        name: String,
        /// The names known.
        known: Vec<String>,
    },
}

impl fmt::Display for EvalRunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalRunError::Benchmark(e) => write!(f, "{e}"),
            EvalRunError::Pipeline {
                recording,
                errors,
                text,
            } => write!(
                f,
                "the evaluation pipeline for {recording} is invalid:\n{errors}\n--- generated pipeline ---\n{text}"
            ),
            EvalRunError::Engine { recording, source } => {
                write!(f, "running the pipeline for {recording}: {source}")
            }
            EvalRunError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            EvalRunError::Mismatch { recording, message } => write!(f, "{recording}: {message}"),
            EvalRunError::Training { recording, source } => {
                write!(f, "training the model for {recording}: {source}")
            }
            EvalRunError::UnknownDetector { name, known } => {
                write!(f, "unknown detector `{name}` (known: {})", known.join(", "))
            }
        }
    }
}

/// The message already includes the underlying error, so no `source` is chained (it
/// would be printed twice).
impl std::error::Error for EvalRunError {}

impl From<EvalError> for EvalRunError {
    fn from(e: EvalError) -> Self {
        EvalRunError::Benchmark(e)
    }
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, EvalRunError>;

/// How a detector's score becomes NAB's anomaly likelihood in `[0, 1]`.
///
/// Any strictly increasing mapping gives the same NAB score (the threshold sweep visits
/// every distinct value), as long as it keeps distinct scores distinct and stays `<= 1`:
/// NAB's sweep starts at 1.1, where nothing fires.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Likelihood {
    /// For unbounded non-negative scores such as z-scores: `s / (s + half)`, which is 0 at
    /// 0, 0.5 at `half` and tends to 1. Unlike `1 - e^{-s/k}` it does not round large
    /// scores to exactly 1.0, so distinct scores stay distinct. Negative scores give 0.
    Saturating {
        /// The score that maps to 0.5.
        half: f64,
    },
    /// For scores that already are probabilities: clamped to `[0, 1]`.
    Clamped,
}

impl Likelihood {
    /// The likelihood of `score` (NaN gives 0).
    pub fn apply(&self, score: f64) -> f64 {
        if score.is_nan() {
            return 0.0;
        }
        match *self {
            Likelihood::Saturating { half } => {
                let s = score.max(0.0);
                if s.is_infinite() { 1.0 } else { s / (s + half) }
            }
            Likelihood::Clamped => score.clamp(0.0, 1.0),
        }
    }

    /// The score whose likelihood is `likelihood` (infinite at 1 for
    /// [`Likelihood::Saturating`]), to report thresholds in the detector's own units.
    pub fn score_at(&self, likelihood: f64) -> f64 {
        match *self {
            Likelihood::Saturating { .. } if likelihood >= 1.0 => f64::INFINITY,
            Likelihood::Saturating { half } => half * likelihood / (1.0 - likelihood),
            Likelihood::Clamped => likelihood,
        }
    }

    /// A one-line description for reports.
    pub fn describe(&self) -> String {
        match self {
            Likelihood::Saturating { half } => {
                format!("likelihood = score / (score + {half})")
            }
            Likelihood::Clamped => "likelihood = score clamped to [0, 1]".to_string(),
        }
    }
}

/// A detector as the evaluation runs it: the transforms between the source and the sink.
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    /// The name selected with `--detector`, e.g. `detect`.
    pub name: String,
    /// The name in reports, e.g. `isthmus detect`.
    pub label: String,
    /// TOML `[transforms.*]` tables. `{input}` stands for the component to read (the csv
    /// source) and `{value_columns}` for the TOML array of the recording's value columns.
    pub fragment: String,
    /// The component of the fragment whose output carries the score.
    pub output: String,
    /// The score column of that output.
    pub score_column: String,
    /// How the score becomes NAB's anomaly likelihood.
    pub likelihood: Likelihood,
    /// A Burn model to train before running, which `{model}` in the fragment names: on NAB
    /// one per series, on that series' probationary period (its first 15 %, the rows NAB
    /// does not score); on SKAB one for all files, on the fault-free recording.
    pub training: Option<TrainConfig>,
}

impl Detector {
    /// The engine's `detect` transform with its defaults (EWMA z-score of each value and of
    /// its change, `alpha = 0.05`, 30 warm-up rows), one set of statistics per recording.
    /// With several value columns its score is the largest over them.
    pub fn detect() -> Self {
        Detector {
            name: "detect".to_string(),
            label: "isthmus detect".to_string(),
            fragment: format!(
                "[transforms.detector]\ntype = \"detect\"\ninputs = [\"{INPUT_PLACEHOLDER}\"]\ncolumns = {COLUMNS_PLACEHOLDER}\n"
            ),
            output: "detector".to_string(),
            score_column: isthmus_operators::detect::SCORE_COLUMN.to_string(),
            likelihood: Likelihood::Saturating { half: 5.0 },
            training: None,
        }
    }

    /// The `infer` transform with a Burn model of `kind` trained for the recording (see
    /// [`Detector::training`]), its error calibrated per recording by `infer` on the linear
    /// scale with a short half-life ([`CALIBRATION_HALF_LIFE`] rows): NAB rewards the first
    /// alert after a change, and a calibration that follows the new regime quickly stops
    /// alerting on it.
    pub fn infer(kind: ModelKind) -> Self {
        let (name, label, config) = match kind {
            ModelKind::Autoencoder => (
                "autoencoder",
                "isthmus infer (Burn MLP autoencoder)",
                TrainConfig {
                    hidden: vec![16, 4],
                    epochs: 40,
                    ..TrainConfig::autoencoder(8)
                },
            ),
            ModelKind::Forecaster => (
                "forecaster",
                "isthmus infer (Burn MLP forecaster)",
                TrainConfig {
                    hidden: vec![32, 16],
                    epochs: 40,
                    ..TrainConfig::forecaster(8)
                },
            ),
        };
        Detector {
            name: name.to_string(),
            label: label.to_string(),
            fragment: format!(
                "[transforms.detector]\ntype = \"infer\"\ninputs = [\"{INPUT_PLACEHOLDER}\"]\nmodel = {MODEL_PLACEHOLDER}\ncolumns = {COLUMNS_PLACEHOLDER}\ncalibration = {{ half_life = {CALIBRATION_HALF_LIFE}, warmup = 30, scale = \"linear\" }}\n"
            ),
            output: "detector".to_string(),
            score_column: "score".to_string(),
            likelihood: Likelihood::Saturating { half: 5.0 },
            training: Some(config),
        }
    }

    /// Every built-in detector.
    pub fn builtin() -> Vec<Detector> {
        vec![
            Detector::detect(),
            Detector::infer(ModelKind::Autoencoder),
            Detector::infer(ModelKind::Forecaster),
        ]
    }

    /// Trains the detector's model (if it has one) on `data` and writes it to `dir`.
    fn train(&self, recording: &str, data: &TrainingData, dir: &Path) -> Result<Option<PathBuf>> {
        let Some(config) = &self.training else {
            return Ok(None);
        };
        let failed = |source| EvalRunError::Training {
            recording: recording.to_string(),
            source,
        };
        let trained = isthmus_models::train(config.clone(), data, |_| {}).map_err(failed)?;
        trained.save(dir).map_err(failed)?;
        Ok(Some(dir.to_path_buf()))
    }

    /// The built-in detector called `name`.
    pub fn named(name: &str) -> Result<Detector> {
        let all = Detector::builtin();
        let known = all.iter().map(|d| d.name.clone()).collect();
        all.into_iter()
            .find(|d| d.name == name)
            .ok_or_else(|| EvalRunError::UnknownDetector {
                name: name.to_string(),
                known,
            })
    }

    /// The fragment with its placeholders filled in.
    fn transforms(&self, value_columns: &[&str], model: Option<&Path>) -> String {
        let columns: Vec<String> = value_columns.iter().map(|c| toml_string(c)).collect();
        let model = model.map_or_else(String::new, |m| toml_string(&m.to_string_lossy()));
        self.fragment
            .replace(INPUT_PLACEHOLDER, SOURCE_NAME)
            .replace(COLUMNS_PLACEHOLDER, &format!("[{}]", columns.join(", ")))
            .replace(MODEL_PLACEHOLDER, &model)
    }
}

/// A recording to replay: a CSV file and how to read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Recording<'a> {
    /// Its name in messages, e.g. `realKnownCause/nyc_taxi.csv`.
    pub name: &'a str,
    /// The CSV file.
    pub path: &'a Path,
    /// Field separator.
    pub delimiter: char,
    /// The column holding the event time (`%Y-%m-%d %H:%M:%S`).
    pub timestamp_column: &'a str,
    /// The numeric columns the detector sees; the others (labels) are not read.
    pub value_columns: &'a [&'a str],
    /// The model trained for this recording, if the detector has one.
    pub model: Option<&'a Path>,
}

/// Quotes `text` as a TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The evaluation pipeline for one recording: csv source → detector → map → csv sink
/// writing `ts` and the score to `out`.
pub fn pipeline_toml(detector: &Detector, recording: &Recording<'_>, out: &Path) -> String {
    let columns: Vec<String> = recording
        .value_columns
        .iter()
        .map(|c| format!("{} = \"float64\"", toml_string(c)))
        .collect();
    let score = format!(
        "\"{}\" AS {EVAL_SCORE_COLUMN}",
        detector.score_column.replace('"', "\"\"")
    );
    format!(
        r#"[node]
id = "eval"
role = "standalone"

[sources.{SOURCE_NAME}]
type = "csv"
path = {path}
delimiter = {delimiter}
timestamp_column = {timestamp_column}
columns = {{ {columns} }}
batch_rows = 4096

{transforms}
[transforms.eval_score]
type = "map"
inputs = [{output}]
select = ["ts", {score}]

[sinks.eval_out]
type = "csv"
inputs = ["eval_score"]
path = {out}
"#,
        path = toml_string(&recording.path.to_string_lossy()),
        delimiter = toml_string(&recording.delimiter.to_string()),
        timestamp_column = toml_string(recording.timestamp_column),
        columns = columns.join(", "),
        transforms = detector.transforms(recording.value_columns, recording.model),
        output = toml_string(&detector.output),
        score = toml_string(&score),
        out = toml_string(&out.to_string_lossy()),
    )
}

/// Runs `detector` over one recording through the engine and returns `(ts_ms, score)` of
/// every row in the order the sink received them. `work_dir` holds the sink's file.
pub fn run_detector(
    detector: &Detector,
    recording: &Recording<'_>,
    work_dir: &Path,
) -> Result<Vec<(i64, f64)>> {
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let out = work_dir.join(format!("scores-{run}.csv"));
    let text = pipeline_toml(detector, recording, &out);
    let pipeline_file = work_dir.join(format!("pipeline-{run}.toml"));
    let invalid = |errors: ConfigErrors| EvalRunError::Pipeline {
        recording: recording.name.to_string(),
        errors,
        text: text.clone(),
    };
    let spec =
        isthmus_engine::spec::parse_str(&text, &pipeline_file, &crate::components::registry())
            .map_err(invalid)?;
    let plans = isthmus_engine::validate::validate_all(vec![spec]).map_err(invalid)?;
    let nodes: Vec<Node> = plans.into_iter().map(Node::new).collect();
    let report =
        isthmus_engine::runtime::run(&nodes, &RunOptions::default()).map_err(|source| {
            EvalRunError::Engine {
                recording: recording.name.to_string(),
                source,
            }
        })?;
    let summary = &report.nodes[0];
    if summary.dead_letters > 0 || summary.late > 0 {
        return Err(EvalRunError::Mismatch {
            recording: recording.name.to_string(),
            message: format!(
                "{} rows were dead-lettered and {} were late in the engine",
                summary.dead_letters, summary.late
            ),
        });
    }
    let rows = read_scores(&out, recording.name);
    // The file is only needed until it is read.
    let _ = std::fs::remove_file(&out);
    rows
}

/// `path` made absolute (against the current directory), without touching the disk.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|source| EvalRunError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads the `ts,eval_score` file the evaluation sink wrote.
fn read_scores(path: &Path, recording: &str) -> Result<Vec<(i64, f64)>> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalRunError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let bad = |line: usize, message: String| EvalRunError::Mismatch {
        recording: recording.to_string(),
        message: format!("{}:{line}: {message}", path.display()),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        // An empty file: no row reached the sink (the header comes with the first batch).
        None => return Ok(Vec::new()),
        Some((_, header)) if header == format!("ts,{EVAL_SCORE_COLUMN}") => {}
        Some((_, header)) => {
            return Err(bad(1, format!("unexpected header `{header}`")));
        }
    }
    let mut rows = Vec::new();
    for (index, line) in lines {
        if line.is_empty() {
            continue;
        }
        let (ts, score) = line
            .split_once(',')
            .ok_or_else(|| bad(index + 1, format!("expected `ts,score`: `{line}`")))?;
        let ts = isthmus_eval::parse_timestamp_ms(ts)
            .ok_or_else(|| bad(index + 1, format!("bad timestamp `{ts}`")))?;
        let score = if score.is_empty() {
            f64::NAN
        } else {
            score
                .parse::<f64>()
                .map_err(|_| bad(index + 1, format!("bad score `{score}`")))?
        };
        rows.push((ts, score));
    }
    Ok(rows)
}

/// The scores of one recording's rows, checked to match its timestamps one for one.
fn aligned_scores(recording: &str, expected_ts: &[i64], rows: Vec<(i64, f64)>) -> Result<Vec<f64>> {
    let mismatch = |message: String| EvalRunError::Mismatch {
        recording: recording.to_string(),
        message,
    };
    if rows.len() != expected_ts.len() {
        return Err(mismatch(format!(
            "{} rows in the recording but {} came out of the engine",
            expected_ts.len(),
            rows.len()
        )));
    }
    if let Some(i) = rows
        .iter()
        .zip(expected_ts)
        .position(|((ts, _), expected)| ts != expected)
    {
        return Err(mismatch(format!(
            "row {i} came out with timestamp {} ms, the recording has {} ms",
            rows[i].0, expected_ts[i]
        )));
    }
    Ok(rows.into_iter().map(|(_, score)| score).collect())
}

/// A scratch directory removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let path =
            std::env::temp_dir().join(format!("isthmus-eval-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| EvalRunError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `job(i)` for `i` in `0..count` on up to `threads` threads; results in index order.
fn run_parallel<T: Send>(
    count: usize,
    threads: usize,
    job: impl Fn(usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let next = AtomicUsize::new(0);
    let results: Mutex<BTreeMap<usize, Result<T>>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, count.max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let result = job(i);
                    let failed = result.is_err();
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(i, result);
                    if failed {
                        // Stop handing out work; the first error is reported.
                        next.store(count, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    // In index order, so the first error is the one of the earliest recording.
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_values()
        .collect()
}

/// Threads used when none are asked for: the machine's parallelism, at most 4.
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(4)
}

/// A detector's NAB evaluation.
#[derive(Debug, Clone)]
pub struct NabEvaluation {
    /// The detector.
    pub detector: Detector,
    /// The corpus scored.
    pub corpus: Corpus,
    /// Per series (in corpus order), the anomaly likelihood of every row.
    pub likelihoods: Vec<Vec<f64>>,
    /// Results under the standard, reward_low_FP and reward_low_FN profiles.
    pub results: [ProfileResult; 3],
    /// The published scores on the same subset (`SCOREBOARD-subset.md`), if present.
    pub published: Vec<PublishedScore>,
    /// Wall-clock time spent running the detector through the engine.
    pub engine_time: Duration,
}

/// Runs `detector` through the engine over every NAB series present in `nab_dir` (the
/// directory holding `combined_windows.json`) and scores it under NAB's three profiles.
pub fn eval_nab(nab_dir: &Path, detector: &Detector, threads: usize) -> Result<NabEvaluation> {
    // The generated pipelines live in a temporary directory: give them absolute paths.
    let nab_dir = &absolute(nab_dir)?;
    let corpus = nab::load_corpus(nab_dir)?;
    let work = WorkDir::new()?;
    let started = Instant::now();
    let likelihoods = run_parallel(corpus.series.len(), threads, |i| {
        let series = &corpus.series[i];
        let path = nab_dir.join(&series.name);
        let probation = nab::probation_length(series.values.len());
        let normal: Vec<f32> = series.values[..probation]
            .iter()
            .map(|&v| v as f32)
            .collect();
        let model = match &detector.training {
            None => None,
            Some(_) => {
                let data = TrainingData::univariate(
                    "value",
                    &normal,
                    format!("the probationary period of NAB {}", series.name),
                )
                .map_err(|source| EvalRunError::Training {
                    recording: series.name.clone(),
                    source,
                })?;
                detector.train(&series.name, &data, &work.0.join(format!("model-{i}")))?
            }
        };
        let recording = Recording {
            name: &series.name,
            path: &path,
            delimiter: ',',
            timestamp_column: "timestamp",
            value_columns: &["value"],
            model: model.as_deref(),
        };
        let rows = run_detector(detector, &recording, &work.0)?;
        let scores = aligned_scores(&series.name, &series.timestamps, rows)?;
        Ok(scores
            .into_iter()
            .map(|s| detector.likelihood.apply(s))
            .collect::<Vec<f64>>())
    })?;
    let engine_time = started.elapsed();
    let scored: Vec<(&nab::Series, &[f64])> = corpus
        .series
        .iter()
        .zip(&likelihoods)
        .map(|(s, l)| (s, l.as_slice()))
        .collect();
    let results = nab::score_all_profiles(&scored)?;
    let scoreboard = nab_dir.join("SCOREBOARD-subset.md");
    let published = if scoreboard.is_file() {
        nab::load_scoreboard(&scoreboard)?
    } else {
        Vec::new()
    };
    Ok(NabEvaluation {
        detector: detector.clone(),
        corpus,
        likelihoods,
        results,
        published,
        engine_time,
    })
}

impl NabEvaluation {
    /// The report: corpus summary, our scores next to the published ones, and the
    /// threshold chosen for each profile.
    pub fn markdown(&self) -> String {
        let d = &self.detector;
        let ours = [(d.label.as_str(), self.results)];
        let mut out = format!(
            "# NAB: {label}\n\n{summary}\n\nEach series ran through the engine as a stream \
             (csv source → {name} → csv sink), {rows} rows in {secs:.1} s. \
             Score column `{column}`, {mapping}.\n\n",
            label = d.label,
            summary = self.corpus.summary(),
            name = d.name,
            rows = self.corpus.row_count(),
            secs = self.engine_time.as_secs_f64(),
            column = d.score_column,
            mapping = d.likelihood.describe(),
        );
        out.push_str(&report::nab_table(&ours, &self.published));
        out.push_str("\n## Thresholds per profile\n\n");
        out.push_str(&report::nab_detail_table(&ours));
        out.push_str(&format!(
            "\nAs `{}` scores: a row is a detection when its score is at least ",
            d.score_column
        ));
        let in_score_units: Vec<String> = self
            .results
            .iter()
            .map(|r| {
                if r.threshold > 1.0 {
                    format!("{}: never", r.profile.name)
                } else {
                    format!(
                        "{}: {:.3}",
                        r.profile.name,
                        d.likelihood.score_at(r.threshold)
                    )
                }
            })
            .collect();
        out.push_str(&in_score_units.join(", "));
        out.push_str(".\n");
        out
    }
}

/// How the SKAB alert threshold is derived from the scores of the fault-free recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ThresholdRule {
    /// The largest score: no alert on the fault-free run.
    Max,
    /// A quantile in `[0, 1]` of the scores (nearest rank), e.g. 0.999.
    Quantile(f64),
}

impl ThresholdRule {
    /// The threshold for these scores (NaN ignored; 0 if none).
    pub fn threshold(&self, scores: &[f64]) -> f64 {
        let mut sorted: Vec<f64> = scores.iter().copied().filter(|s| !s.is_nan()).collect();
        sorted.sort_by(f64::total_cmp);
        let Some(&max) = sorted.last() else {
            return 0.0;
        };
        match *self {
            ThresholdRule::Max => max,
            ThresholdRule::Quantile(q) => {
                let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
                sorted[rank.clamp(1, sorted.len()) - 1]
            }
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            ThresholdRule::Max => "max".to_string(),
            ThresholdRule::Quantile(q) => format!("p{}", q * 100.0),
        }
    }
}

/// The threshold rule `isthmus eval skab` reports in detail: the 99.9th percentile of the
/// fault-free run's scores.
pub const SKAB_THRESHOLD_RULE: ThresholdRule = ThresholdRule::Quantile(0.999);

/// One SKAB threshold and what it gives.
#[derive(Debug, Clone)]
pub struct SkabOutcome {
    /// How the threshold was chosen.
    pub rule: ThresholdRule,
    /// The threshold, in score units: a row is an alert when its score is `>=` this.
    pub threshold: f64,
    /// Per labelled file.
    pub files: Vec<SkabFileResult>,
    /// Totals over the labelled files.
    pub totals: SkabTotals,
}

/// A detector's SKAB evaluation.
#[derive(Debug, Clone)]
pub struct SkabEvaluation {
    /// The detector.
    pub detector: Detector,
    /// Rows of the fault-free recording the threshold was chosen on.
    pub fault_free_rows: usize,
    /// The detailed outcome ([`SKAB_THRESHOLD_RULE`]) first, then the other rules.
    pub outcomes: Vec<SkabOutcome>,
    /// Wall-clock time spent running the detector through the engine.
    pub engine_time: Duration,
}

/// Runs `detector` through the engine over every SKAB file in `skab_dir` (one run per file,
/// fresh state each time), chooses alert thresholds on `anomaly-free/anomaly-free.csv` and
/// scores the labelled files with them.
pub fn eval_skab(skab_dir: &Path, detector: &Detector, threads: usize) -> Result<SkabEvaluation> {
    let skab_dir = &absolute(skab_dir)?;
    let files = skab::load_skab_dir(skab_dir)?;
    let work = WorkDir::new()?;
    let started = Instant::now();
    let model = match &detector.training {
        None => None,
        Some(_) => {
            let free = files.iter().find(|f| f.anomaly.is_none()).ok_or_else(|| {
                EvalRunError::Mismatch {
                    recording: skab_dir.display().to_string(),
                    message: "no file without labels (anomaly-free/anomaly-free.csv) to train on"
                        .to_string(),
                }
            })?;
            let failed = |source| EvalRunError::Training {
                recording: free.name.clone(),
                source,
            };
            let names = SENSOR_COLUMNS.iter().map(|c| c.to_string()).collect();
            let mut data = TrainingData::new(names, format!("the fault-free SKAB {}", free.name))
                .map_err(failed)?;
            let values: Vec<f32> = free.sensors.iter().flatten().map(|&v| v as f32).collect();
            data.push_series(&values).map_err(failed)?;
            detector.train(&free.name, &data, &work.0.join("model"))?
        }
    };
    let scores = run_parallel(files.len(), threads, |i| {
        let file = &files[i];
        let path = skab_dir.join(&file.name);
        let recording = Recording {
            name: &file.name,
            path: &path,
            delimiter: ';',
            timestamp_column: "datetime",
            value_columns: &SENSOR_COLUMNS,
            model: model.as_deref(),
        };
        let rows = run_detector(detector, &recording, &work.0)?;
        aligned_scores(&file.name, &file.timestamps, rows)
    })?;
    let engine_time = started.elapsed();
    let (free, labelled): (Vec<(&SkabFile, &Vec<f64>)>, Vec<_>) = files
        .iter()
        .zip(&scores)
        .partition(|(f, _)| f.anomaly.is_none());
    let Some((free_file, free_scores)) = free.first() else {
        return Err(EvalRunError::Mismatch {
            recording: skab_dir.display().to_string(),
            message: "no file without labels (anomaly-free/anomaly-free.csv) to choose the \
                      threshold on"
                .to_string(),
        });
    };
    let mut outcomes = Vec::new();
    for rule in [SKAB_THRESHOLD_RULE, ThresholdRule::Max] {
        let threshold = rule.threshold(free_scores);
        let results = labelled
            .iter()
            .map(|(file, scores)| {
                let alerts: Vec<bool> = scores.iter().map(|&s| s >= threshold).collect();
                skab::evaluate_file(file, &alerts)
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        outcomes.push(SkabOutcome {
            rule,
            threshold,
            totals: skab::totals(&results),
            files: results,
        });
    }
    Ok(SkabEvaluation {
        detector: detector.clone(),
        fault_free_rows: free_file.timestamps.len(),
        outcomes,
        engine_time,
    })
}

impl SkabEvaluation {
    /// The outcome of the detailed rule ([`SKAB_THRESHOLD_RULE`]).
    pub fn main_outcome(&self) -> &SkabOutcome {
        &self.outcomes[0]
    }

    /// The report: per-file metrics at the detailed threshold, then totals at every
    /// threshold rule.
    pub fn markdown(&self) -> String {
        let d = &self.detector;
        let main = self.main_outcome();
        let mut out = format!(
            "# SKAB: {label}\n\nEach file ran through the engine as a stream (csv source → \
             {name} over the {sensors} sensor columns → csv sink), fresh state per file, in \
             {secs:.1} s. The combined score of a row is `{column}` (for `detect`: the largest \
             z-score over the sensors and their changes). A row is an alert when its score is \
             at least a threshold chosen on the fault-free run (anomaly-free.csv, {rows} rows): \
             {rules}.\n\n## Per file ({main_rule} of the fault-free scores: {main_threshold:.3})\n\n",
            label = d.label,
            name = d.name,
            sensors = SENSOR_COLUMNS.len(),
            secs = self.engine_time.as_secs_f64(),
            column = d.score_column,
            rows = self.fault_free_rows,
            rules = self
                .outcomes
                .iter()
                .map(|o| format!("{} = {:.3}", o.rule.describe(), o.threshold))
                .collect::<Vec<_>>()
                .join(", "),
            main_rule = main.rule.describe(),
            main_threshold = main.threshold,
        );
        out.push_str(&report::skab_file_table(&main.files));
        out.push_str("\n## Totals\n\n");
        let labels: Vec<String> = self
            .outcomes
            .iter()
            .map(|o| format!("{} (threshold {})", d.label, o.rule.describe()))
            .collect();
        let rows: Vec<(&str, &SkabTotals)> = labels
            .iter()
            .zip(&self.outcomes)
            .map(|(label, o)| (label.as_str(), &o.totals))
            .collect();
        out.push_str(&report::skab_summary_table(&rows));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_likelihood_is_monotone_and_below_one() {
        let l = Likelihood::Saturating { half: 5.0 };
        assert_eq!(l.apply(0.0), 0.0);
        assert_eq!(l.apply(5.0), 0.5);
        assert_eq!(l.apply(-3.0), 0.0);
        assert_eq!(l.apply(f64::NAN), 0.0);
        assert_eq!(l.apply(f64::INFINITY), 1.0);
        let scores = [0.1, 1.0, 3.0, 10.0, 1e3, 1e6, 1e9, f64::MAX];
        let mapped: Vec<f64> = scores.iter().map(|&s| l.apply(s)).collect();
        assert!(mapped.iter().all(|&p| (0.0..=1.0).contains(&p)));
        // Distinct up to 1e9: large z-scores are not merged into 1.0.
        assert!(mapped.windows(2).take(6).all(|w| w[0] < w[1]), "{mapped:?}");
        assert!((l.score_at(l.apply(7.5)) - 7.5).abs() < 1e-9);
        assert_eq!(Likelihood::Clamped.apply(1.7), 1.0);
    }

    #[test]
    fn threshold_rules() {
        let scores: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(ThresholdRule::Max.threshold(&scores), 1000.0);
        assert_eq!(ThresholdRule::Quantile(0.999).threshold(&scores), 999.0);
        assert_eq!(ThresholdRule::Quantile(0.5).threshold(&scores), 500.0);
        assert_eq!(ThresholdRule::Max.threshold(&[]), 0.0);
    }

    #[test]
    fn pipeline_text_is_valid_and_quotes_names() {
        let recording = Recording {
            name: "x.csv",
            path: Path::new("/data/with \"quote\".csv"),
            delimiter: ';',
            timestamp_column: "datetime",
            value_columns: &["Volume Flow RateRMS", "Current"],
            model: None,
        };
        let text = pipeline_toml(&Detector::detect(), &recording, Path::new("/tmp/out.csv"));
        assert!(
            text.contains(r#"path = "/data/with \"quote\".csv""#),
            "{text}"
        );
        assert!(
            text.contains(r#"columns = ["Volume Flow RateRMS", "Current"]"#),
            "{text}"
        );
        assert!(
            text.contains(r#"select = ["ts", "\"score\" AS eval_score"]"#),
            "{text}"
        );
        // Parses (validation would need the file).
        isthmus_engine::spec::parse_str(
            &text,
            Path::new("/tmp/eval.toml"),
            &crate::components::registry(),
        )
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn unknown_detector_lists_the_known_ones() {
        let e = Detector::named("nope").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown detector `nope` (known: detect, autoencoder, forecaster)"
        );
    }

    #[test]
    fn scores_must_align_with_the_recording() {
        let ok = aligned_scores("s", &[1, 2], vec![(1, 0.5), (2, 0.7)]).unwrap();
        assert_eq!(ok, vec![0.5, 0.7]);
        let short = aligned_scores("s", &[1, 2], vec![(1, 0.5)]).unwrap_err();
        assert!(
            short.to_string().contains("2 rows in the recording but 1"),
            "{short}"
        );
        let moved = aligned_scores("s", &[1, 2], vec![(1, 0.5), (3, 0.7)]).unwrap_err();
        assert!(moved.to_string().contains("row 1 came out"), "{moved}");
    }
}
