//! Graph-level validation of parsed pipelines: inputs exist, no cycles, schemas flow (every
//! column an operator needs is provided by its input), channels are written and read.
//! Every problem is collected and reported together.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow::datatypes::SchemaRef;

use crate::component::{CheckContext, ComponentConfig, Kind};
use crate::error::{ConfigError, ConfigErrors, Problem};
use crate::policy::PolicyStore;
use crate::spec::{PipelineSpec, suggest};

/// A validated pipeline: components in an order where inputs come first, with the schema
/// of every output.
#[derive(Clone)]
pub struct Plan {
    /// The parsed file.
    pub spec: PipelineSpec,
    /// Indices into `spec.components`, inputs before consumers.
    pub order: Vec<usize>,
    /// Schema of every output reference (`NAME` or `NAME.SIDE`).
    pub schemas: BTreeMap<String, SchemaRef>,
}

impl Plan {
    /// The channel names this pipeline writes (with `channel` sinks) and reads.
    pub fn channels(&self) -> (Vec<String>, Vec<String>) {
        let mut writes = Vec::new();
        let mut reads = Vec::new();
        for c in &self.spec.components {
            match &c.config {
                ComponentConfig::Sink(s) => writes.extend(s.writes_channel()),
                ComponentConfig::Source(s) => reads.extend(s.reads_channel()),
                ComponentConfig::Transform(_) => {}
            }
        }
        (writes, reads)
    }
}

fn problem_error(spec: &PipelineSpec, index: usize, problem: Problem) -> ConfigError {
    let c = &spec.components[index];
    let (span, key) = match &problem.key {
        Some(k) => (
            c.key_spans.get(k).cloned().unwrap_or(c.span.clone()),
            format!("{}.{k}", c.path()),
        ),
        None => (c.span.clone(), c.path()),
    };
    let mut e = spec.error(span, key, problem.message);
    e.help = problem.help;
    e
}

/// Same field names and types, ignoring metadata and nullability.
fn same_shape(a: &SchemaRef, b: &SchemaRef) -> bool {
    a.fields().len() == b.fields().len()
        && a.fields()
            .iter()
            .zip(b.fields().iter())
            .all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// Validates one parsed pipeline on its own (channels it reads have no known schema).
pub fn validate(spec: PipelineSpec) -> Result<Plan, ConfigErrors> {
    let (order, schemas, errors) = check(&spec, &BTreeMap::new());
    if errors.is_empty() {
        Ok(Plan {
            spec,
            order,
            schemas,
        })
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The input schema of every `channel` sink whose input schema is known; a sink whose
/// schema differs from another writer's of the same channel is reported.
fn channel_schemas(
    spec: &PipelineSpec,
    schemas: &BTreeMap<String, SchemaRef>,
    out: &mut BTreeMap<String, SchemaRef>,
    errors: &mut Vec<ConfigError>,
) {
    for c in &spec.components {
        if let ComponentConfig::Sink(s) = &c.config
            && let (Some(name), Some(input)) = (s.writes_channel(), c.inputs.first())
            && let Some(schema) = schemas.get(&input.text)
        {
            match out.get(&name) {
                None => {
                    out.insert(name, schema.clone());
                }
                Some(first) if !same_shape(first, schema) => {
                    let mut e = spec.error(
                        c.key_spans
                            .get("channel")
                            .cloned()
                            .unwrap_or(c.span.clone()),
                        format!("{}.channel", c.path()),
                        format!(
                            "channel `{name}` is written with different columns by another pipeline"
                        ),
                    );
                    e.help = Some(format!(
                        "every writer of a channel must send the same columns; this one sends [{}], the other [{}]",
                        columns(schema),
                        columns(first)
                    ));
                    errors.push(e);
                }
                Some(_) => {}
            }
        }
    }
}

fn columns(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}: {}", f.name(), f.data_type()))
        .collect::<Vec<_>>()
        .join(", ")
}

type Checked = (Vec<usize>, BTreeMap<String, SchemaRef>, Vec<ConfigError>);

/// Checks one pipeline given the schemas of the channels written by the others.
fn check(spec: &PipelineSpec, channels: &BTreeMap<String, SchemaRef>) -> Checked {
    let mut errors = Vec::new();
    let index: HashMap<&str, usize> = spec
        .components
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let names: Vec<&str> = spec.components.iter().map(|c| c.name.as_str()).collect();

    // Inputs exist and are not sinks.
    let mut edges: Vec<Vec<usize>> = vec![Vec::new(); spec.components.len()];
    let mut broken: BTreeSet<usize> = BTreeSet::new();
    for (i, c) in spec.components.iter().enumerate() {
        for (k, input) in c.inputs.iter().enumerate() {
            if c.inputs[..k]
                .iter()
                .any(|earlier| earlier.text == input.text)
            {
                errors.push(spec.error(
                    input.span.clone(),
                    format!("{}.inputs", c.path()),
                    format!(
                        "`{}` is listed twice: its rows would be read twice",
                        input.text
                    ),
                ));
                broken.insert(i);
            }
            let (name, _) = input.split();
            match index.get(name) {
                None => {
                    let mut e = spec.error(
                        input.span.clone(),
                        format!("{}.inputs", c.path()),
                        format!("unknown input `{name}`"),
                    );
                    e.help = Some(match suggest(name, names.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("components are: {}", names.join(", ")),
                    });
                    errors.push(e);
                    broken.insert(i);
                }
                Some(&j) if spec.components[j].kind == Kind::Sink => {
                    errors.push(spec.error(
                        input.span.clone(),
                        format!("{}.inputs", c.path()),
                        format!("`{name}` is a sink: it has no output to read"),
                    ));
                    broken.insert(i);
                }
                Some(&j) => edges[i].push(j),
            }
        }
    }

    // Topological order, reporting cycles.
    let mut order = Vec::new();
    let mut state = vec![0u8; spec.components.len()]; // 0 new, 1 visiting, 2 done
    fn visit(
        i: usize,
        edges: &[Vec<usize>],
        state: &mut [u8],
        order: &mut Vec<usize>,
        stack: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match state[i] {
            2 => return None,
            1 => {
                let start = stack.iter().position(|&x| x == i).unwrap_or(0);
                return Some(stack[start..].to_vec());
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &j in &edges[i] {
            if let Some(cycle) = visit(j, edges, state, order, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        None
    }
    for i in 0..spec.components.len() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(i, &edges, &mut state, &mut order, &mut stack) {
            let names: Vec<&str> = cycle
                .iter()
                .map(|&k| spec.components[k].name.as_str())
                .collect();
            let first = &spec.components[cycle[0]];
            errors.push(spec.error(
                first.span.clone(),
                format!("{}.inputs", first.path()),
                format!("cycle: {} → {}", names.join(" → "), names[0]),
            ));
            for &k in &cycle {
                state[k] = 2;
                broken.insert(k);
            }
        }
    }

    // Schemas flow through the graph.
    let snapshot = PolicyStore::new(spec.policy_defaults.clone(), spec.remote.clone())
        .with_trusted_keys(spec.trusted_keys.clone())
        .snapshot();
    let cx = CheckContext {
        node: &spec.node,
        policy: &snapshot,
        base_dir: &spec.base_dir,
        channels,
    };
    let mut schemas: BTreeMap<String, SchemaRef> = BTreeMap::new();
    for &i in &order {
        let c = &spec.components[i];
        if broken.contains(&i) {
            continue;
        }
        let mut input_schema: Option<SchemaRef> = None;
        let mut missing = false;
        for input in &c.inputs {
            let (name, side) = input.split();
            match schemas.get(&input.text) {
                Some(s) => match &input_schema {
                    None => input_schema = Some(s.clone()),
                    Some(first) if !same_shape(first, s) => {
                        let mut e = spec.error(
                            input.span.clone(),
                            format!("{}.inputs", c.path()),
                            format!(
                                "input `{}` has a different schema than `{}`",
                                input.text, c.inputs[0].text
                            ),
                        );
                        e.help = Some("inputs of one component must have the same columns; add a `map` to align them".into());
                        errors.push(e);
                        missing = true;
                    }
                    Some(_) => {}
                },
                None => {
                    if let Some(side) = side
                        && index.get(name).is_some_and(|j| !broken.contains(j))
                        && schemas.contains_key(name)
                    {
                        let sides: Vec<&str> = schemas
                            .keys()
                            .filter_map(|k| k.strip_prefix(&format!("{name}.")))
                            .collect();
                        let mut e = spec.error(
                            input.span.clone(),
                            format!("{}.inputs", c.path()),
                            format!("`{name}` has no output `{side}`"),
                        );
                        e.help = Some(if sides.is_empty() {
                            format!("`{name}` has only its main output")
                        } else {
                            format!("its side outputs are: {}", sides.join(", "))
                        });
                        errors.push(e);
                    }
                    missing = true;
                }
            }
        }
        if missing {
            continue;
        }
        let result = match (&c.config, &input_schema) {
            (ComponentConfig::Source(s), _) => s.schemas(&cx).map(Some),
            (ComponentConfig::Transform(t), Some(input)) => t.schemas(input, &cx).map(Some),
            (ComponentConfig::Sink(s), Some(input)) => s.check(input, &cx).map(|_| None),
            _ => Ok(None),
        };
        match result {
            Ok(Some(outputs)) => {
                schemas.insert(c.name.clone(), outputs.main);
                for (side, schema) in outputs.side {
                    schemas.insert(format!("{}.{side}", c.name), schema);
                }
            }
            Ok(None) => {}
            Err(problem) => errors.push(problem_error(spec, i, problem)),
        }
    }

    if spec.components.iter().all(|c| c.kind != Kind::Source) {
        errors.push(spec.error(0..0, "sources", "the pipeline has no source"));
    }

    (order, schemas, errors)
}

/// `path` (relative to `base_dir`) as one spelling per file: canonical when it exists.
fn resolved_file(base_dir: &std::path::Path, path: &str) -> std::path::PathBuf {
    let joined = base_dir.join(path);
    joined
        .canonicalize()
        .unwrap_or_else(|_| std::path::absolute(&joined).unwrap_or(joined))
}

/// Sinks that would write a file a source of the same run reads: the sink truncates it
/// before the source has read it all, so the input would be lost.
fn overwritten_inputs(specs: &[PipelineSpec]) -> Vec<ConfigError> {
    let mut read = BTreeMap::new();
    for spec in specs {
        for c in &spec.components {
            if let ComponentConfig::Source(s) = &c.config
                && let Some(path) = s.reads_file()
            {
                read.insert(resolved_file(&spec.base_dir, &path), c.path());
            }
        }
    }
    let mut errors = Vec::new();
    for spec in specs {
        for c in &spec.components {
            if let ComponentConfig::Sink(s) = &c.config
                && let Some(path) = s.writes_file()
                && let Some(source) = read.get(&resolved_file(&spec.base_dir, &path))
            {
                let span = c.key_spans.get("path").cloned().unwrap_or(c.span.clone());
                let mut e = spec.error(
                    span,
                    format!("{}.path", c.path()),
                    format!("`{path}` is the file that `{source}` reads: writing it would destroy the input"),
                );
                e.help = Some("write the output to another file".to_string());
                errors.push(e);
            }
        }
    }
    errors
}

/// Validates pipelines that run together: each alone, then channels and node ids across
/// them. Every problem of every file is reported.
pub fn validate_all(specs: Vec<PipelineSpec>) -> Result<Vec<Plan>, ConfigErrors> {
    // Channel schemas flow from writer to reader pipelines, which may feed each other in a
    // loop: check every pipeline until no new channel schema is learned.
    let mut channels = BTreeMap::new();
    let mut results: Vec<Checked>;
    let channel_errors: Vec<ConfigError>;
    loop {
        results = specs.iter().map(|s| check(s, &channels)).collect();
        let mut learned = channels.clone();
        let mut mismatches = Vec::new();
        for (spec, (_, schemas, _)) in specs.iter().zip(&results) {
            channel_schemas(spec, schemas, &mut learned, &mut mismatches);
        }
        if learned.len() == channels.len() {
            channel_errors = mismatches;
            break;
        }
        channels = learned;
    }
    let mut errors = channel_errors;
    errors.extend(overwritten_inputs(&specs));
    let mut plans = Vec::new();
    for (spec, (order, schemas, errs)) in specs.into_iter().zip(results) {
        if errs.is_empty() {
            plans.push(Plan {
                spec,
                order,
                schemas,
            });
        } else {
            errors.extend(errs);
        }
    }
    let mut ids: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in plans.iter().enumerate() {
        if let Some(j) = ids.insert(p.spec.node.id.as_str(), i) {
            let mut e = p.spec.error(
                0..0,
                "node.id",
                format!(
                    "node id `{}` is also used by {}",
                    p.spec.node.id,
                    plans[j].spec.file.display()
                ),
            );
            e.help = Some("each pipeline run together needs its own [node] id".into());
            errors.push(e);
        }
    }
    let mut writers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let mut readers: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, p) in plans.iter().enumerate() {
        let (w, r) = p.channels();
        for name in w {
            writers.entry(name).or_default().push(i);
        }
        for name in r {
            readers.entry(name).or_default().push(i);
        }
    }
    for (name, rs) in &readers {
        if !writers.contains_key(name) {
            let p = &plans[rs[0]];
            errors.push(p.spec.error(
                0..0,
                "sources",
                format!("channel `{name}` is read here but no pipeline run with it writes it"),
            ));
        }
        if rs.len() > 1 {
            let p = &plans[rs[1]];
            errors.push(p.spec.error(
                0..0,
                "sources",
                format!("channel `{name}` is read by more than one channel source"),
            ));
        }
    }
    for (name, ws) in &writers {
        if !readers.contains_key(name) {
            let p = &plans[ws[0]];
            let mut e = p.spec.error(
                0..0,
                "sinks",
                format!("channel `{name}` is written here but no pipeline run with it reads it"),
            );
            e.help = Some("run the reading pipeline in the same `isthmus run` command".into());
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(plans)
    } else {
        Err(ConfigErrors(errors))
    }
}
