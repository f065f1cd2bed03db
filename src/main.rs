//! The `isthmus` command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use isthmus_engine::graph::{GraphFormat, render};
use isthmus_engine::runtime::{Node, RunOptions};
use isthmus_engine::{ConfigErrors, EngineError};

mod train;

/// Edge-to-cloud stream processing: TOML pipelines compiled to timely dataflow.
#[derive(Parser)]
#[command(name = "isthmus", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one or more pipeline files together in this process (they may talk through
    /// `channel` sources and sinks) until their sources finish or Ctrl-C.
    Run {
        /// Pipeline files (TOML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Timely worker threads per pipeline (1 to 64).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// Seconds between progress lines on stderr (0 turns them off).
        #[arg(long, default_value_t = 2.0)]
        progress_secs: f64,
    },
    /// Check pipeline files without running anything: every problem is reported with its
    /// file, line, column and key; the exit status is 2 when there is any.
    Validate {
        /// Pipeline files (TOML) that run together.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the compiled graph of pipeline files as DOT or Mermaid.
    Graph {
        /// Pipeline files (TOML) that run together; one graph each.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Dot)]
        format: Format,
    },
    /// Print the reference of every component type (generated from their config structs).
    Docs,
    /// Make an ed25519 key pair for signing policy changes: `DIR/NAME.key` (secret, for the
    /// cloud's `policy` transform `signing_key`) and `DIR/NAME.pub` (for the edges'
    /// `[policy] trusted_keys`). Never overwrites a key.
    Keygen {
        /// Directory to write the pair to.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Name of the pair: the files are NAME.key and NAME.pub.
        #[arg(long, default_value = "cloud")]
        name: String,
    },
    /// Train an anomaly model (autoencoder or forecaster) on normal-operation data and
    /// write the artifact directory that the `infer` transform loads.
    Train(train::TrainArgs),
    /// Score a detector on a labelled benchmark, running it through the engine as a stream.
    Eval {
        #[command(subcommand)]
        benchmark: Benchmark,
    },
}

#[derive(Subcommand)]
enum Benchmark {
    /// The Numenta Anomaly Benchmark: NAB scores under its three profiles, next to the
    /// published scoreboard of the same files.
    Nab {
        #[command(flatten)]
        options: EvalOptions,
    },
    /// The Skoltech Anomaly Benchmark: precision, recall, F1 and detection delay per file,
    /// with the alert threshold chosen on the fault-free recording.
    Skab {
        #[command(flatten)]
        options: EvalOptions,
    },
}

#[derive(clap::Args)]
struct EvalOptions {
    /// Folder holding `nab/` and `skab/` [default: $ISTHMUS_DATA, else ../shared/data
    /// relative to the current directory].
    #[arg(long)]
    data: Option<PathBuf>,
    /// The detector to score.
    #[arg(long, default_value = "detect")]
    detector: String,
    /// Also write the markdown report to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Recordings run at the same time (default: the number of cores, at most 4).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    threads: Option<u16>,
}

impl EvalOptions {
    fn data_dir(&self) -> PathBuf {
        self.data
            .clone()
            .or_else(|| std::env::var_os("ISTHMUS_DATA").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("../shared/data"))
    }

    fn threads(&self) -> usize {
        self.threads
            .map_or_else(isthmus::eval::default_threads, usize::from)
    }

    /// Prints the report and writes it to `--out` if given.
    fn publish(&self, markdown: &str) -> anyhow::Result<()> {
        out(markdown)?;
        if let Some(path) = &self.out {
            std::fs::write(path, markdown)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Dot,
    Mermaid,
}

/// Warnings, plus each link's up/down transitions (a link coming back is `info`).
const DEFAULT_LOG_FILTER: &str = "warn,isthmus_connectors::link=info";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigErrors>() {
                eprintln!("{config}");
                return ExitCode::from(2);
            }
            if let Some(EngineError::Config(config)) = e.downcast_ref::<EngineError>() {
                eprintln!("{config}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout; a closed pipe (`isthmus docs | head`) ends the output quietly.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Validate { files } => {
            let plans = isthmus::load(&files)?;
            for plan in &plans {
                out(&format!(
                    "{}: ok (node `{}`, {} components)\n",
                    plan.spec.file.display(),
                    plan.spec.node.id,
                    plan.spec.components.len()
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Graph { files, format } => {
            let plans = isthmus::load(&files)?;
            let format = match format {
                Format::Dot => GraphFormat::Dot,
                Format::Mermaid => GraphFormat::Mermaid,
            };
            for plan in &plans {
                out(&render(plan, format))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { benchmark } => {
            let (options, benchmark_dir) = match &benchmark {
                Benchmark::Nab { options } => (options, "nab"),
                Benchmark::Skab { options } => (options, "skab"),
            };
            let detector = isthmus::eval::Detector::named(&options.detector)?;
            let dir = options.data_dir().join(benchmark_dir);
            if !dir.is_dir() {
                anyhow::bail!(
                    "no benchmark data at {} (use --data or set ISTHMUS_DATA to the folder holding nab/ and skab/)",
                    dir.display()
                );
            }
            let markdown = match &benchmark {
                Benchmark::Nab { .. } => {
                    isthmus::eval::eval_nab(&dir, &detector, options.threads())?.markdown()
                }
                Benchmark::Skab { .. } => {
                    isthmus::eval::eval_skab(&dir, &detector, options.threads())?.markdown()
                }
            };
            options.publish(&markdown)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Train(args) => {
            train::run(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen { out: dir, name } => {
            let signer = isthmus_engine::signing::PolicySigner::generate();
            let (secret, public) = signer.write_pair(&dir, &name)?;
            out(&format!(
                "secret key: {} (keep it on the cloud node only: `signing_key` of its `policy` transform)\npublic key: {} = {}\n  (list it in every edge's [policy] trusted_keys)\n",
                secret.display(),
                public.display(),
                signer.public_key()
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Docs => {
            out(&isthmus::docs::reference(&isthmus::components::registry()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            files,
            workers,
            progress_secs,
        } => {
            let shutdown = Arc::new(AtomicBool::new(false));
            {
                let shutdown = shutdown.clone();
                ctrlc::set_handler(move || {
                    if shutdown.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                    eprintln!(
                        "stopping: sources finish, in-flight rows drain (Ctrl-C again to abort)"
                    );
                })
                .context("cannot install the Ctrl-C handler")?;
            }
            let workers = usize::from(workers);
            let options = RunOptions {
                workers,
                progress_every: (progress_secs > 0.0)
                    .then(|| Duration::from_secs_f64(progress_secs)),
                shutdown,
            };
            let plans = isthmus::load(&files)?;
            let nodes: Vec<Node> = plans.into_iter().map(Node::new).collect();
            let report = isthmus_engine::runtime::run(&nodes, &options)?;
            eprintln!(
                "\n== isthmus summary ({:.2}s, {} worker(s) per node) ==",
                report.elapsed.as_secs_f64(),
                workers
            );
            for summary in &report.nodes {
                eprintln!("{}", summary.report());
            }
            let seconds = report.elapsed.as_secs_f64();
            if seconds > 0.0 {
                for summary in &report.nodes {
                    eprintln!(
                        "throughput [{}]: {:.0} events/s in",
                        summary.node,
                        summary.events_in as f64 / seconds
                    );
                }
            }
            let lost: u64 = report.nodes.iter().map(|n| n.undelivered).sum();
            if lost > 0 {
                eprintln!(
                    "error: {lost} message(s) were accepted by a sink but never delivered (see the summary)"
                );
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
