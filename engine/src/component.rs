//! The three extension points — [`Source`], [`Transform`], [`Sink`] — and the [`Registry`]
//! that maps each `type = "…"` to its typed config struct.
//!
//! Adding a component is one file with a config struct (its doc comments are the reference
//! documentation) that implements one of the traits, plus one line in the registry list
//! (`isthmus::components::registry`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use arrow::datatypes::SchemaRef;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::DeValue;

use crate::batch::{BatchStream, Scope};
use crate::channel::ChannelHub;
use crate::delivery::{DeliveryReporter, DeliveryTracker};
use crate::error::{EngineError, Problem};
use crate::policy::{PolicySnapshot, PolicyStore};
use crate::spec::NodeSpec;
use crate::telemetry::ComponentMetrics;

/// The kinds of component a pipeline file declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `[sources.NAME]`: produces a stream.
    Source,
    /// `[transforms.NAME]`: consumes streams and produces one.
    Transform,
    /// `[sinks.NAME]`: consumes streams.
    Sink,
}

impl Kind {
    /// The TOML table that holds components of this kind.
    pub fn table(&self) -> &'static str {
        match self {
            Kind::Source => "sources",
            Kind::Transform => "transforms",
            Kind::Sink => "sinks",
        }
    }

    /// A singular noun for messages.
    pub fn noun(&self) -> &'static str {
        match self {
            Kind::Source => "source",
            Kind::Transform => "transform",
            Kind::Sink => "sink",
        }
    }
}

/// Schemas (at check time) or streams (at build time) of a component's outputs: the main
/// output and named side outputs (`NAME.dead_letter`, `NAME.late`).
#[derive(Clone, Debug)]
pub struct Outputs<T> {
    /// The main output, referenced as `NAME`.
    pub main: T,
    /// Side outputs, referenced as `NAME.SIDE`.
    pub side: Vec<(&'static str, T)>,
}

impl<T> Outputs<T> {
    /// Just a main output.
    pub fn main(main: T) -> Self {
        Outputs {
            main,
            side: Vec::new(),
        }
    }

    /// Adds a side output.
    pub fn with_side(mut self, name: &'static str, stream: T) -> Self {
        self.side.push((name, stream));
        self
    }
}

/// What a component may look at while its config is checked (no I/O beyond reading the
/// headers of input files).
pub struct CheckContext<'a> {
    /// The node running the pipeline.
    pub node: &'a NodeSpec,
    /// The declared policy defaults.
    pub policy: &'a PolicySnapshot,
    /// Relative paths in the pipeline file are relative to this directory.
    pub base_dir: &'a std::path::Path,
    /// Schemas of the in-process channels written by the pipelines run together.
    pub channels: &'a BTreeMap<String, SchemaRef>,
}

impl CheckContext<'_> {
    /// Resolves a path from the pipeline file.
    pub fn path(&self, p: &str) -> PathBuf {
        resolve_path(self.base_dir, p)
    }
}

/// Resolves `p` against `base` unless it is absolute.
pub fn resolve_path(base: &std::path::Path, p: &str) -> PathBuf {
    let path = std::path::Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base.join(path)
    }
}

/// What a component gets while its timely operators are built, once per worker.
pub struct BuildContext<'s> {
    /// The dataflow scope (event-time timestamps).
    pub scope: Scope<'s>,
    /// The component's name in the pipeline file.
    pub name: String,
    /// The node running the pipeline.
    pub node: Arc<NodeSpec>,
    /// The node's live policy.
    pub policy: Arc<PolicyStore>,
    /// The component's counters, shared by all workers.
    pub metrics: Arc<ComponentMetrics>,
    /// In-process channels between pipelines.
    pub channels: Arc<ChannelHub>,
    /// Set when the process is asked to stop (Ctrl-C): sources finish early.
    pub shutdown: Arc<AtomicBool>,
    /// The schema of the component's input (transforms and sinks).
    pub input_schema: Option<SchemaRef>,
    /// Relative paths in the pipeline file are relative to this directory.
    pub base_dir: PathBuf,
    /// How far the node's sinks have durably delivered: sinks report to it, sources that
    /// acknowledge upstream read it.
    pub delivery: Arc<DeliveryTracker>,
}

impl BuildContext<'_> {
    /// Resolves a path from the pipeline file.
    pub fn path(&self, p: &str) -> PathBuf {
        resolve_path(&self.base_dir, p)
    }

    /// The schema of the component's input: always set for transforms and sinks.
    pub fn required_input_schema(&self) -> Result<SchemaRef, EngineError> {
        self.input_schema.clone().ok_or_else(|| {
            EngineError::Internal(format!(
                "component `{}` was built without an input schema",
                self.name
            ))
        })
    }

    /// This worker's index.
    pub fn worker_index(&self) -> usize {
        self.scope.index()
    }

    /// The number of workers.
    pub fn workers(&self) -> usize {
        self.scope.peers()
    }

    /// Registers this sink instance with the node's delivery tracker. Every sink reports
    /// how far it has delivered, so sources commit only what cannot be lost.
    pub fn delivery_reporter(&self) -> DeliveryReporter {
        self.delivery.register()
    }

    /// An error of this component.
    pub fn error(&self, message: impl std::fmt::Display) -> EngineError {
        EngineError::component(&self.name, message)
    }
}

/// A source: produces batches with an event-time column `ts`.
pub trait Source: Send + Sync + 'static {
    /// The schemas of its outputs. Called by `isthmus validate` and before every run.
    fn schemas(&self, cx: &CheckContext<'_>) -> Result<Outputs<SchemaRef>, Problem>;
    /// Builds its timely operators on one worker.
    fn build<'s>(&self, cx: &BuildContext<'s>) -> Result<Outputs<BatchStream<'s>>, EngineError>;
    /// The in-process channel it reads, if it is a channel source.
    fn reads_channel(&self) -> Option<String> {
        None
    }
    /// The file it reads, as written in its config (relative to the pipeline file), if it
    /// reads one: validation refuses a sink that would overwrite it.
    fn reads_file(&self) -> Option<String> {
        None
    }
}

/// A transform: consumes the union of its inputs (which share one schema) and produces a
/// stream.
pub trait Transform: Send + Sync + 'static {
    /// The schemas of its outputs given its input's schema.
    fn schemas(
        &self,
        input: &SchemaRef,
        cx: &CheckContext<'_>,
    ) -> Result<Outputs<SchemaRef>, Problem>;
    /// Builds its timely operators on one worker.
    fn build<'s>(
        &self,
        input: BatchStream<'s>,
        cx: &BuildContext<'s>,
    ) -> Result<Outputs<BatchStream<'s>>, EngineError>;
}

/// A sink: consumes the union of its inputs.
pub trait Sink: Send + Sync + 'static {
    /// Checks that it can consume `input`.
    fn check(&self, input: &SchemaRef, cx: &CheckContext<'_>) -> Result<(), Problem>;
    /// Builds its timely operators on one worker.
    fn build<'s>(&self, input: BatchStream<'s>, cx: &BuildContext<'s>) -> Result<(), EngineError>;
    /// Whether what it receives leaves the node (counted as "forwarded" in the summary).
    fn forwards(&self) -> bool {
        false
    }
    /// The in-process channel it writes, if it is a channel sink.
    fn writes_channel(&self) -> Option<String> {
        None
    }
    /// The file it writes, as written in its config (relative to the pipeline file), if it
    /// writes one.
    fn writes_file(&self) -> Option<String> {
        None
    }
}

/// A parsed component config of any kind.
#[derive(Clone)]
pub enum ComponentConfig {
    /// A source.
    Source(Arc<dyn Source>),
    /// A transform.
    Transform(Arc<dyn Transform>),
    /// A sink.
    Sink(Arc<dyn Sink>),
}

type ParseFn = fn(Spanned<DeValue<'_>>) -> Result<ComponentConfig, toml::de::Error>;

/// One registered component type.
#[derive(Clone)]
pub struct Registration {
    /// Source, transform or sink.
    pub kind: Kind,
    /// The `type = "…"` that selects it.
    pub type_name: &'static str,
    /// Parses its typed config from a TOML table (without `type` and `inputs`).
    pub parse: ParseFn,
    /// The JSON schema of its config, generated from the config struct and its doc comments.
    pub schema: fn() -> schemars::Schema,
    /// An example pipeline fragment using it (round-tripped by a test).
    pub example: &'static str,
}

/// All component types, by kind and type name.
#[derive(Clone, Default)]
pub struct Registry {
    entries: BTreeMap<(Kind, &'static str), Registration>,
}

fn parse_as<C: DeserializeOwned>(value: Spanned<DeValue<'_>>) -> Result<C, toml::de::Error> {
    use serde::de::IntoDeserializer;
    C::deserialize(value.into_deserializer())
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a source type.
    pub fn source<C: Source + DeserializeOwned + JsonSchema>(
        &mut self,
        type_name: &'static str,
        example: &'static str,
    ) -> &mut Self {
        self.insert(
            Kind::Source,
            type_name,
            example,
            |v| Ok(ComponentConfig::Source(Arc::new(parse_as::<C>(v)?))),
            || schemars::schema_for!(C),
        )
    }

    /// Registers a transform type.
    pub fn transform<C: Transform + DeserializeOwned + JsonSchema>(
        &mut self,
        type_name: &'static str,
        example: &'static str,
    ) -> &mut Self {
        self.insert(
            Kind::Transform,
            type_name,
            example,
            |v| Ok(ComponentConfig::Transform(Arc::new(parse_as::<C>(v)?))),
            || schemars::schema_for!(C),
        )
    }

    /// Registers a sink type.
    pub fn sink<C: Sink + DeserializeOwned + JsonSchema>(
        &mut self,
        type_name: &'static str,
        example: &'static str,
    ) -> &mut Self {
        self.insert(
            Kind::Sink,
            type_name,
            example,
            |v| Ok(ComponentConfig::Sink(Arc::new(parse_as::<C>(v)?))),
            || schemars::schema_for!(C),
        )
    }

    fn insert(
        &mut self,
        kind: Kind,
        type_name: &'static str,
        example: &'static str,
        parse: ParseFn,
        schema: fn() -> schemars::Schema,
    ) -> &mut Self {
        let previous = self.entries.insert(
            (kind, type_name),
            Registration {
                kind,
                type_name,
                parse,
                schema,
                example,
            },
        );
        assert!(
            previous.is_none(),
            "{} type `{type_name}` registered twice",
            kind.noun()
        );
        self
    }

    /// The registration of `type_name` among components of `kind`.
    pub fn get(&self, kind: Kind, type_name: &str) -> Option<&Registration> {
        self.entries
            .iter()
            .find(|((k, t), _)| *k == kind && *t == type_name)
            .map(|(_, r)| r)
    }

    /// Type names of `kind`, sorted.
    pub fn type_names(&self, kind: Kind) -> Vec<&'static str> {
        self.entries
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, t)| *t)
            .collect()
    }

    /// Every registration, by kind then type name.
    pub fn all(&self) -> impl Iterator<Item = &Registration> {
        self.entries.values()
    }
}
