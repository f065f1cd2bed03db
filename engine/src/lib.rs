//! The Isthmus engine: pipeline spec, validation, graph compiler to timely, runtime,
//! policy store and telemetry.
//!
//! ```text
//!  pipeline.toml ──parse──▶ PipelineSpec ──validate──▶ Plan ──compile──▶ timely dataflow
//!   (spec.rs)               (typed configs,           (order,           (one per node,
//!                            spans for errors)         schemas)          N workers)
//!
//!   sources ──▶ transforms ──▶ sinks        streams of Arrow RecordBatch,
//!      │            │                       timely time = event time,
//!      └─ .dead_letter, .late side outputs  frontier = watermark
//! ```
//!
//! Components are plugged in through three traits — [`component::Source`],
//! [`component::Transform`], [`component::Sink`] — registered in one [`component::Registry`].
//! Their parameters may reference the node's live policy as `${policy.NAME}`
//! ([`policy::PolicyStore`]).

pub mod batch;
pub mod channel;
pub mod component;
pub mod delivery;
pub mod error;
pub mod graph;
pub mod ops;
pub mod policy;
pub mod runtime;
pub mod signing;
pub mod spec;
pub mod telemetry;
pub mod testing;
pub mod units;
pub mod validate;

pub use batch::{Batch, BatchStream, Scope, TIME_COLUMN, Time};
pub use component::{BuildContext, CheckContext, Kind, Outputs, Registry, Sink, Source, Transform};
pub use error::{ConfigError, ConfigErrors, EngineError, Problem};

/// Parses and validates pipeline files that run together.
pub fn load(
    paths: &[std::path::PathBuf],
    registry: &Registry,
) -> Result<Vec<validate::Plan>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut specs = Vec::new();
    for path in paths {
        match spec::parse_file(path, registry) {
            Ok(s) => specs.push(s),
            Err(e) => errors.extend(e.0),
        }
    }
    match validate::validate_all(specs) {
        Ok(plans) if errors.is_empty() => Ok(plans),
        Ok(_) => Err(ConfigErrors(errors)),
        Err(e) => {
            errors.extend(e.0);
            Err(ConfigErrors(errors))
        }
    }
}
