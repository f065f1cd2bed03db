//! `isthmus train`: train an anomaly model on normal-operation data (a CSV file or the
//! built-in simulator with faults off) and write the artifact the `infer` transform loads.
//!
//! Training is deterministic: the same arguments give a byte-identical `model.bpk`, and the
//! manifest records the exact command line that reproduces it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use arrow::array::{Array, AsArray};
use arrow::datatypes::DataType;
use clap::ValueEnum;
use isthmus_connectors::simulator::SimulatorSource;
use isthmus_engine::units::DurationSpec;
use isthmus_models::{ModelKind, NormalisationMethod, TrainConfig, TrainedModel, TrainingData};

/// The model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// MLP autoencoder: scores a window by its reconstruction error.
    Autoencoder,
    /// MLP forecaster: scores a reading by its residual against the forecast.
    Forecaster,
}

/// The simulator's numeric features, in output order.
pub const SIMULATOR_FEATURES: [&str; 4] = ["temperature", "vibration", "pressure", "current"];

/// Arguments of `isthmus train`.
#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// Autoencoder or forecaster.
    #[arg(long, value_enum, default_value_t = Kind::Autoencoder)]
    pub kind: Kind,
    /// Readings per window.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Hidden layer widths, comma-separated (encoder half ending with the bottleneck for an
    /// autoencoder) [default: 32,8 for an autoencoder, 32,16 for a forecaster].
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<usize>,
    /// Passes over the training windows.
    #[arg(long, default_value_t = 10)]
    pub epochs: usize,
    /// Windows per Adam step.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    pub learning_rate: f64,
    /// Seed of weight initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scale inputs robustly (median and IQR) instead of by mean and standard deviation.
    #[arg(long)]
    pub robust: bool,
    /// Model version written to the manifest.
    #[arg(long, default_value = "1")]
    pub version: String,
    /// The artifact directory to write (created).
    #[arg(long)]
    pub out: PathBuf,
    /// Train on this CSV file of normal operation (with a header line; `,` or `;`).
    #[arg(
        long,
        conflicts_with = "simulator",
        required_unless_present = "simulator"
    )]
    pub csv: Option<PathBuf>,
    /// Feature columns, comma-separated [default: every numeric column but the timestamp;
    /// with --simulator: temperature,vibration,pressure,current].
    #[arg(long, value_delimiter = ',')]
    pub columns: Vec<String>,
    /// The CSV's timestamp column: rows must be in its order; it is never a feature.
    #[arg(long)]
    pub timestamp_column: Option<String>,
    /// Use only the first N data rows of the CSV (e.g. the anomaly-free start of a file).
    #[arg(long)]
    pub rows: Option<usize>,
    /// Train on the built-in simulator with faults off (one series per device).
    #[arg(long)]
    pub simulator: bool,
    /// Simulated devices.
    #[arg(long, default_value_t = 12)]
    pub sim_devices: usize,
    /// Simulated event time per device, e.g. "1h".
    #[arg(long, default_value = "1h")]
    pub sim_duration: String,
    /// Seed of the simulator.
    #[arg(long, default_value_t = 1)]
    pub sim_seed: u64,
    /// Readings per second per simulated device.
    #[arg(long, default_value_t = 1.0)]
    pub sim_rate_hz: f64,
}

impl TrainArgs {
    /// The training configuration these arguments describe.
    pub fn config(&self) -> TrainConfig {
        let base = match self.kind {
            Kind::Autoencoder => TrainConfig::autoencoder(self.window),
            Kind::Forecaster => TrainConfig::forecaster(self.window),
        };
        TrainConfig {
            hidden: if self.hidden.is_empty() {
                base.hidden.clone()
            } else {
                self.hidden.clone()
            },
            epochs: self.epochs,
            batch_size: self.batch_size,
            learning_rate: self.learning_rate,
            seed: self.seed,
            normalisation: if self.robust {
                NormalisationMethod::Robust
            } else {
                NormalisationMethod::Zscore
            },
            version: self.version.clone(),
            ..base
        }
    }

    /// The command line that reproduces this training run (recorded in the manifest).
    pub fn command_line(&self) -> String {
        let config = self.config();
        let kind = match config.kind {
            ModelKind::Autoencoder => "autoencoder",
            ModelKind::Forecaster => "forecaster",
        };
        let hidden: Vec<String> = config.hidden.iter().map(|h| h.to_string()).collect();
        let mut cmd = format!(
            "isthmus train --kind {kind} --window {} --hidden {} --epochs {} --batch-size {} \
             --learning-rate {} --seed {}",
            self.window,
            hidden.join(","),
            self.epochs,
            self.batch_size,
            self.learning_rate,
            self.seed
        );
        if self.robust {
            cmd.push_str(" --robust");
        }
        if self.version != "1" {
            cmd.push_str(&format!(" --version {}", self.version));
        }
        if self.simulator {
            cmd.push_str(&format!(
                " --simulator --sim-devices {} --sim-duration {} --sim-seed {} --sim-rate-hz {}",
                self.sim_devices, self.sim_duration, self.sim_seed, self.sim_rate_hz
            ));
        }
        if let Some(csv) = &self.csv {
            cmd.push_str(&format!(" --csv {}", csv.display()));
            if let Some(ts) = &self.timestamp_column {
                cmd.push_str(&format!(" --timestamp-column {ts}"));
            }
            if let Some(rows) = self.rows {
                cmd.push_str(&format!(" --rows {rows}"));
            }
        }
        if !self.columns.is_empty() {
            cmd.push_str(&format!(" --columns {}", self.columns.join(",")));
        }
        cmd.push_str(&format!(" --out {}", self.out.display()));
        cmd
    }

    /// Loads the training data the arguments name.
    pub fn training_data(&self) -> anyhow::Result<TrainingData> {
        if self.simulator {
            simulator_data(self)
        } else if let Some(csv) = &self.csv {
            csv_data(self, csv)
        } else {
            bail!("give --csv FILE or --simulator")
        }
    }
}

/// Normal-operation readings of the simulator (faults off), one series per device.
fn simulator_data(args: &TrainArgs) -> anyhow::Result<TrainingData> {
    let columns: Vec<String> = if args.columns.is_empty() {
        SIMULATOR_FEATURES.iter().map(|s| s.to_string()).collect()
    } else {
        args.columns.clone()
    };
    let picks: Vec<usize> = columns
        .iter()
        .map(|c| {
            SIMULATOR_FEATURES
                .iter()
                .position(|f| f == c)
                .with_context(|| {
                    format!("the simulator has no column `{c}` (it has {SIMULATOR_FEATURES:?})")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    let duration = DurationSpec::parse(&args.sim_duration).map_err(anyhow::Error::msg)?;
    let sim = SimulatorSource {
        devices: args.sim_devices,
        seed: args.sim_seed,
        rate_hz: args.sim_rate_hz,
        duration,
        faults: false,
        ..SimulatorSource::default()
    };
    let mut series: Vec<Vec<f32>> = vec![Vec::new(); args.sim_devices];
    sim.for_each_reading(|_, device, r| {
        let all = [r.temperature, r.vibration, r.pressure, r.current];
        series[device].extend(picks.iter().map(|p| all[*p] as f32));
    })
    .map_err(|p| anyhow::anyhow!("simulator: {}", p.message))?;
    let source = format!(
        "simulator, faults off: {} devices × {} at {} Hz, seed {}; reproduce with: {}",
        args.sim_devices,
        args.sim_duration,
        args.sim_rate_hz,
        args.sim_seed,
        args.command_line()
    );
    let mut data = TrainingData::new(columns, source)?;
    for s in &series {
        data.push_series(s)?;
    }
    Ok(data)
}

/// Guesses the delimiter from the header line: `;` (SKAB) if it has more `;` than `,`.
fn delimiter(path: &Path) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let header = text.lines().next().unwrap_or_default();
    Ok(
        if header.matches(';').count() > header.matches(',').count() {
            b';'
        } else {
            b','
        },
    )
}

/// Readings of the chosen columns of a CSV file; a row with a missing or non-numeric
/// value ends a series (windows never span it).
fn csv_data(args: &TrainArgs, path: &Path) -> anyhow::Result<TrainingData> {
    use arrow::csv::ReaderBuilder;
    use arrow::csv::reader::Format;
    let format = Format::default()
        .with_header(true)
        .with_delimiter(delimiter(path)?);
    let open =
        || std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()));
    let (schema, _) = format
        .infer_schema(open()?, Some(10_000))
        .with_context(|| format!("cannot read the header of {}", path.display()))?;
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    if let Some(ts) = &args.timestamp_column
        && !names.contains(&ts.as_str())
    {
        bail!(
            "{} has no timestamp column `{ts}` (columns: {names:?})",
            path.display()
        );
    }
    let columns: Vec<String> = if args.columns.is_empty() {
        schema
            .fields()
            .iter()
            .filter(|f| f.data_type().is_numeric())
            .filter(|f| Some(f.name()) != args.timestamp_column.as_ref())
            .map(|f| f.name().clone())
            .collect()
    } else {
        args.columns.clone()
    };
    if columns.is_empty() {
        bail!("{} has no numeric column to train on", path.display());
    }
    for c in &columns {
        if !names.contains(&c.as_str()) {
            bail!(
                "{} has no column `{c}` (columns: {names:?})",
                path.display()
            );
        }
        if Some(c) == args.timestamp_column.as_ref() {
            bail!("`{c}` is the timestamp column, not a feature");
        }
    }
    // Read every column as text and parse the features ourselves, so one odd value does
    // not make the whole column a string.
    let text_schema = arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| arrow::datatypes::Field::new(f.name(), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    );
    let reader = ReaderBuilder::new(std::sync::Arc::new(text_schema))
        .with_format(format)
        .build(open()?)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let limit = args.rows.unwrap_or(usize::MAX);
    let mut data = TrainingData::new(
        columns.clone(),
        format!(
            "{} ({}); reproduce with: {}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            args.rows
                .map_or("all rows".to_string(), |r| format!("first {r} rows")),
            args.command_line()
        ),
    )?;
    let mut series: Vec<f32> = Vec::new();
    let mut read = 0usize;
    let mut last_ts: Option<String> = None;
    'batches: for batch in reader {
        let batch = batch.with_context(|| format!("cannot read {}", path.display()))?;
        let ts = match &args.timestamp_column {
            Some(name) => batch
                .column_by_name(name)
                .map(|c| c.as_string::<i32>().clone()),
            None => None,
        };
        let values: Vec<_> = columns
            .iter()
            .map(|c| {
                batch
                    .column_by_name(c)
                    .expect("checked above")
                    .as_string::<i32>()
                    .clone()
            })
            .collect();
        for row in 0..batch.num_rows() {
            if read >= limit {
                break 'batches;
            }
            read += 1;
            if let Some(ts) = &ts
                && ts.is_valid(row)
            {
                let t = ts.value(row).to_string();
                if let Some(last) = &last_ts
                    && t_less(&t, last)
                {
                    bail!(
                        "{} is not in timestamp order: row {read} has {t} after {last}",
                        path.display()
                    );
                }
                last_ts = Some(t);
            }
            let parsed: Option<Vec<f32>> = values
                .iter()
                .map(|v| {
                    v.is_valid(row)
                        .then(|| v.value(row).trim().parse::<f32>().ok())
                        .flatten()
                        .filter(|x| x.is_finite())
                })
                .collect();
            match parsed {
                Some(reading) => series.extend(reading),
                None => {
                    data.push_series(&series)?;
                    series.clear();
                }
            }
        }
    }
    data.push_series(&series)?;
    if data.reading_count() == 0 {
        bail!(
            "{} has no complete numeric row in {columns:?}",
            path.display()
        );
    }
    Ok(data)
}

/// Timestamp order: numerically if both parse as numbers, else as text (ISO 8601 sorts).
fn t_less(a: &str, b: &str) -> bool {
    match (a.trim().parse::<f64>(), b.trim().parse::<f64>()) {
        (Ok(x), Ok(y)) => x < y,
        _ => a < b,
    }
}

/// Trains as `args` say, printing progress to stderr, and writes the artifact.
pub fn run(args: &TrainArgs) -> anyhow::Result<TrainedModel> {
    let data = args.training_data()?;
    let config = args.config();
    eprintln!(
        "training {} (window {}, hidden {:?}) on {} readings of {:?} for {} epochs",
        match config.kind {
            ModelKind::Autoencoder => "autoencoder",
            ModelKind::Forecaster => "forecaster",
        },
        config.window,
        config.hidden,
        data.reading_count(),
        data.feature_names(),
        config.epochs
    );
    let trained = isthmus_models::train(config, &data, |report| {
        eprintln!(
            "epoch {:>3}/{}: loss {:.6} ({:.2}s)",
            report.epoch,
            report.epochs,
            report.loss,
            report.elapsed.as_secs_f64()
        );
    })?;
    let manifest = trained
        .save(&args.out)
        .with_context(|| format!("cannot write the model to {}", args.out.display()))?;
    eprintln!(
        "wrote {} ({} bytes of weights, fnv1a64 {})",
        args.out.display(),
        manifest.weights.bytes,
        manifest.weights.fnv1a64
    );
    Ok(trained)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn parse(line: &str) -> TrainArgs {
        Cli::try_parse_from(std::iter::once("train").chain(line.split_whitespace()))
            .expect("valid arguments")
            .args
    }

    fn manifest(dir: &Path) -> isthmus_models::Manifest {
        isthmus_models::ModelArtifact::read_manifest(dir).expect("manifest")
    }

    #[test]
    fn simulator_training_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let line = |out: &str| {
            format!(
                "--simulator --sim-devices 3 --sim-duration 10m --window 4 --hidden 8,4 \
                 --epochs 2 --seed 3 --out {}",
                dir.path().join(out).display()
            )
        };
        let first = run(&parse(&line("a"))).unwrap();
        run(&parse(&line("b"))).unwrap();
        assert_eq!(first.history.len(), 2);
        assert!(first.history[1].loss < first.history[0].loss);
        let (a, b) = (
            manifest(&dir.path().join("a")),
            manifest(&dir.path().join("b")),
        );
        assert_eq!(a.weights.fnv1a64, b.weights.fnv1a64);
        assert_eq!(
            std::fs::read(dir.path().join("a/model.bpk")).unwrap(),
            std::fs::read(dir.path().join("b/model.bpk")).unwrap()
        );
        assert_eq!(a.input_features, SIMULATOR_FEATURES);
        assert!(
            a.training
                .data_source
                .contains("isthmus train --kind autoencoder")
        );
        // A different seed gives different weights.
        run(&parse(&line("c").replace("--seed 3", "--seed 4"))).unwrap();
        assert_ne!(
            manifest(&dir.path().join("c")).weights.fnv1a64,
            a.weights.fnv1a64
        );
    }

    /// The shipped model is exactly what its recorded command produces.
    #[test]
    fn shipped_model_is_reproduced_by_its_command() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let shipped = root.join("models/shipped/sim-autoencoder");
        let recorded = manifest(&shipped);
        let command = recorded
            .training
            .data_source
            .split("reproduce with: ")
            .nth(1)
            .expect("the manifest records the command")
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("model");
        let command = command.replace(
            "--out models/shipped/sim-autoencoder",
            &format!("--out {}", out.display()),
        );
        let args = parse(command.trim_start_matches("isthmus train"));
        run(&args).unwrap();
        let again = manifest(&out);
        assert_eq!(again.weights.fnv1a64, recorded.weights.fnv1a64);
        assert_eq!(
            std::fs::read(out.join("model.bpk")).unwrap(),
            std::fs::read(shipped.join("model.bpk")).unwrap()
        );
    }

    #[test]
    fn csv_training_reads_features_and_checks_columns() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("normal.csv");
        let mut text = String::from("datetime;a;b;label\n");
        for t in 0..400 {
            let x = (t as f32 * 0.3).sin();
            text.push_str(&format!(
                "2020-01-01 00:{:02}:{:02};{x};{};0\n",
                t / 60,
                t % 60,
                2.0 * x
            ));
        }
        std::fs::write(&csv, text).unwrap();
        let out = dir.path().join("m");
        let args = parse(&format!(
            "--csv {} --columns a,b --timestamp-column datetime --rows 300 --window 4 \
             --hidden 8,2 --epochs 2 --out {}",
            csv.display(),
            out.display()
        ));
        run(&args).unwrap();
        let m = manifest(&out);
        assert_eq!(m.input_features, ["a", "b"]);
        assert_eq!(m.training.readings, 300);
        let bad = parse(&format!(
            "--csv {} --columns a,c --window 4 --out {}",
            csv.display(),
            out.display()
        ));
        let e = run(&bad).unwrap_err().to_string();
        assert!(e.contains("no column `c`"), "{e}");
    }
}
