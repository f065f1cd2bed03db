//! Isthmus: edge-to-cloud stream processing in one binary.
//!
//! Declarative pipelines (TOML) are compiled into timely dataflow graphs and run the same
//! on edge nodes and cloud clusters. This crate ties the engine ([`isthmus_engine`]) to the
//! components ([`isthmus_operators`], [`isthmus_connectors`]) and builds the `isthmus`
//! binary. See `ARCHITECTURE.md` for the code map.

pub mod components;
pub mod docs;
pub mod eval;

pub use isthmus_engine as engine;

use std::path::PathBuf;

use isthmus_engine::runtime::{Node, RunOptions, RunReport};
use isthmus_engine::{ConfigErrors, EngineError};

/// Parses and validates pipeline files with every known component type.
pub fn load(paths: &[PathBuf]) -> Result<Vec<isthmus_engine::validate::Plan>, ConfigErrors> {
    isthmus_engine::load(paths, &components::registry())
}

/// Loads pipeline files and runs them together until their sources finish.
pub fn run_files(
    paths: &[PathBuf],
    options: &RunOptions,
) -> Result<(Vec<Node>, RunReport), EngineError> {
    let plans = load(paths)?;
    let nodes: Vec<Node> = plans.into_iter().map(Node::new).collect();
    let report = isthmus_engine::runtime::run(&nodes, options)?;
    Ok((nodes, report))
}
