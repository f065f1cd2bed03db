//! Pipeline files: TOML → a typed, located [`PipelineSpec`].
//!
//! ```toml
//! [node]
//! id = "edge-1"
//! role = "edge"
//!
//! [policy]
//! remote = ["threshold"]          # tunables the cloud may change
//! trusted_keys = ["cloud.pub"]    # remote changes must be signed by one of these keys
//! [policy.tunables]
//! threshold = 4.0
//!
//! [sources.sim]
//! type = "simulator"
//!
//! [transforms.alerts]
//! type = "filter"
//! inputs = ["sim"]
//! predicate = "temperature > ${policy.threshold}"
//!
//! [sinks.out]
//! type = "stdout"
//! inputs = ["alerts"]
//! ```
//!
//! Parsing collects every problem it can find (syntax, unknown keys with a suggestion,
//! unknown types, bad values and units, undeclared policy references), each with file,
//! line, column and key path. Graph-level checks live in [`crate::validate`].

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::component::{ComponentConfig, Kind, Registry};
use crate::error::{ConfigError, ConfigErrors};
use crate::policy::{PolicyValue, references};

/// `[node]`: who runs this pipeline.
#[derive(Clone, Debug, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    /// The node's id, carried on everything it sends (for example `edge-7`).
    pub id: String,
    /// Where it runs: `edge`, `cloud` or `standalone`.
    #[serde(default)]
    pub role: Role,
}

/// Where a node runs.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Next to the machines: scores and filters locally.
    Edge,
    /// In the cloud: fleet analytics and policies.
    Cloud,
    /// Anything else (tools, tests, batch jobs).
    #[default]
    Standalone,
}

/// `[policy]`: the node's tunables.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    /// Tunables that the cloud may change remotely; any other change is refused.
    #[serde(default)]
    remote: Vec<Spanned<String>>,
    /// Named tunables with their defaults.
    #[serde(default)]
    tunables: BTreeMap<String, PolicyValue>,
    /// Public keys (base64, or paths of `.pub` files) whose signatures remote changes must
    /// carry; empty accepts unsigned changes.
    #[serde(default)]
    trusted_keys: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A reference to a component output in `inputs`: `NAME` or `NAME.SIDE`.
#[derive(Clone, Debug, PartialEq)]
pub struct InputRef {
    /// The text as written.
    pub text: String,
    /// Where it is written.
    pub span: Range<usize>,
}

impl InputRef {
    /// The referenced component and side output (`None` for the main output).
    pub fn split(&self) -> (&str, Option<&str>) {
        match self.text.split_once('.') {
            Some((name, side)) => (name, Some(side)),
            None => (&self.text, None),
        }
    }
}

/// One `[sources|transforms|sinks.NAME]` table.
#[derive(Clone)]
pub struct ComponentSpec {
    /// Source, transform or sink.
    pub kind: Kind,
    /// Its name.
    pub name: String,
    /// Its `type`.
    pub type_name: String,
    /// Its `inputs`, in order.
    pub inputs: Vec<InputRef>,
    /// The typed config.
    pub config: ComponentConfig,
    /// Where its name is written.
    pub span: Range<usize>,
    /// Where each of its keys is written (dotted paths inside the component).
    pub key_spans: BTreeMap<String, Range<usize>>,
}

impl ComponentSpec {
    /// The dotted key path of this component (`transforms.detect`).
    pub fn path(&self) -> String {
        format!("{}.{}", self.kind.table(), self.name)
    }
}

/// A parsed pipeline file.
#[derive(Clone)]
pub struct PipelineSpec {
    /// The file it came from.
    pub file: PathBuf,
    /// Relative paths inside it are relative to this directory.
    pub base_dir: PathBuf,
    /// Its text, for locating spans.
    pub text: Arc<str>,
    /// `[node]`.
    pub node: NodeSpec,
    /// `[policy.tunables]`.
    pub policy_defaults: BTreeMap<String, PolicyValue>,
    /// `[policy] remote`.
    pub remote: BTreeSet<String>,
    /// `[policy] trusted_keys`, read.
    pub trusted_keys: crate::signing::TrustedKeys,
    /// Components in file order.
    pub components: Vec<ComponentSpec>,
}

impl PipelineSpec {
    /// A located error in this file.
    pub fn error(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        locate(&self.file, &self.text, span, key, message)
    }

    /// The component called `name`.
    pub fn component(&self, name: &str) -> Option<&ComponentSpec> {
        self.components.iter().find(|c| c.name == name)
    }
}

/// Builds a located error from a byte span of `text`.
pub fn locate(
    file: &Path,
    text: &str,
    span: Range<usize>,
    key: impl Into<String>,
    message: impl Into<String>,
) -> ConfigError {
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    ConfigError {
        file: file.to_path_buf(),
        line,
        column,
        key: key.into(),
        message: message.into(),
        help: None,
    }
}

/// The closest candidate to `word` (ignoring case), if one is close enough to be a likely
/// typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&word, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4) && *d < c.len().max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Reads and parses a pipeline file.
pub fn parse_file(path: &Path, registry: &Registry) -> Result<PipelineSpec, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read pipeline file: {e}"),
            help: None,
        }])
    })?;
    parse_str(&text, path, registry)
}

struct Parser<'a> {
    file: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

impl Parser<'_> {
    fn err(
        &mut self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> &mut ConfigError {
        self.errors
            .push(locate(self.file, self.text, span, key, message));
        self.errors.last_mut().expect("just pushed")
    }

    /// Converts a deserialization error inside the table at `prefix` into a located error.
    fn de_error(
        &mut self,
        error: toml::de::Error,
        prefix: &str,
        table: &DeTable<'_>,
        fallback: Range<usize>,
    ) {
        let span = error.span().unwrap_or(fallback.clone());
        let message = error.message().trim().to_string();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let field = rest.split('`').next().unwrap_or("").to_string();
            let expected: Vec<&str> = rest.split('`').skip(2).step_by(2).collect();
            let span = key_span(table, &field).unwrap_or(span);
            let e = self.err(
                span,
                format!("{prefix}.{field}"),
                format!("unknown key `{field}`"),
            );
            e.help = Some(match suggest(&field, expected.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if expected.is_empty() => "this component takes no other keys".to_string(),
                None => format!("known keys: {}", expected.join(", ")),
            });
            return;
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or("");
            self.err(
                fallback,
                format!("{prefix}.{field}"),
                format!("missing required key `{field}`"),
            );
            return;
        }
        let path = key_path_at(table, span.start);
        let key = if path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", path.join("."))
        };
        self.err(span, key, message);
    }
}

/// Reports every key of `table` that is not in `known` (with a suggestion); true if any.
fn unknown_keys(p: &mut Parser<'_>, prefix: &str, table: &DeTable<'_>, known: &[&str]) -> bool {
    let mut any = false;
    for (k, _) in table.iter() {
        let key = k.get_ref().as_ref();
        if known.contains(&key) {
            continue;
        }
        any = true;
        let help = match suggest(key, known.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None if known.is_empty() => "this component takes no other keys".to_string(),
            None => format!("known keys: {}", known.join(", ")),
        };
        p.err(
            k.span(),
            format!("{prefix}.{key}"),
            format!("unknown key `{key}`"),
        )
        .help = Some(help);
    }
    any
}

fn key_span(table: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(k, _)| k.span())
}

fn get<'t, 'i>(
    table: &'t DeTable<'i>,
    key: &str,
) -> Option<(
    &'t Spanned<std::borrow::Cow<'i, str>>,
    &'t Spanned<DeValue<'i>>,
)> {
    table.iter().find(|(k, _)| k.get_ref().as_ref() == key)
}

/// The key path inside `table` whose key or value covers `offset`.
fn key_path_at(table: &DeTable<'_>, offset: usize) -> Vec<String> {
    for (k, v) in table.iter() {
        let covers =
            k.span().contains(&offset) || v.span().contains(&offset) || v.span().start == offset;
        if covers {
            let mut path = vec![k.get_ref().to_string()];
            if let DeValue::Table(inner) = v.get_ref() {
                path.extend(key_path_at(inner, offset));
            }
            return path;
        }
    }
    Vec::new()
}

/// Collects `(key path, span, policy name)` for every `${policy.NAME}` in string values.
fn policy_refs(
    prefix: &str,
    value: &Spanned<DeValue<'_>>,
    out: &mut Vec<(String, Range<usize>, String)>,
) {
    match value.get_ref() {
        DeValue::String(s) => {
            for name in references(s) {
                out.push((prefix.to_string(), value.span(), name));
            }
        }
        DeValue::Array(items) => {
            for item in items.iter() {
                policy_refs(prefix, item, out);
            }
        }
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                policy_refs(&format!("{prefix}.{}", k.get_ref()), v, out);
            }
        }
        _ => {}
    }
}

fn record_key_spans(prefix: &str, table: &DeTable<'_>, out: &mut BTreeMap<String, Range<usize>>) {
    for (k, v) in table.iter() {
        let path = if prefix.is_empty() {
            k.get_ref().to_string()
        } else {
            format!("{prefix}.{}", k.get_ref())
        };
        out.insert(path.clone(), k.span());
        if let DeValue::Table(inner) = v.get_ref() {
            record_key_spans(&path, inner, out);
        }
    }
}

/// Replaces `${env.NAME}` and `${env.NAME:-default}` with environment variables, so one
/// pipeline file serves several deployments (node ids, broker addresses). An unset variable
/// without a default is an error at its offset. Other `${…}` (e.g. `${policy.X}`) are kept.
pub fn expand_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (usize, String)> {
    const OPEN: &str = "${env.";
    if !text.contains(OPEN) {
        return Ok(text.to_string());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let Some(end) = after.find('}') else {
            return Err((offset + start, "`${env.` is not closed by `}`".into()));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err((
                offset + start,
                format!("`{name}` is not an environment variable name"),
            ));
        }
        match lookup(name).or_else(|| default.map(str::to_string)) {
            Some(value) => out.push_str(&value),
            None => {
                return Err((
                    offset + start,
                    format!(
                        "environment variable `{name}` is not set (give a default: `${{env.{name}:-value}}`)"
                    ),
                ));
            }
        }
        let consumed = start + OPEN.len() + end + 1;
        rest = &rest[consumed..];
        offset += consumed;
    }
    out.push_str(rest);
    Ok(out)
}

const TOP_LEVEL: [&str; 5] = ["node", "policy", "sources", "transforms", "sinks"];

/// Parses pipeline text; `file` is used for messages and to resolve relative paths.
pub fn parse_str(
    text: &str,
    file: &Path,
    registry: &Registry,
) -> Result<PipelineSpec, ConfigErrors> {
    let expanded = match expand_env(text, |name| std::env::var(name).ok()) {
        Ok(expanded) => expanded,
        Err((offset, message)) => {
            let mut p = Parser {
                file,
                text,
                errors: Vec::new(),
            };
            p.err(offset..offset, "", message);
            return Err(ConfigErrors(p.errors));
        }
    };
    let text = expanded.as_str();
    let mut p = Parser {
        file,
        text,
        errors: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            p.err(span, "", format!("invalid TOML: {}", e.message().trim()));
            return Err(ConfigErrors(p.errors));
        }
    };
    let root_span = root.span();
    let root = root.into_inner();

    for (k, _) in root.iter() {
        let key = k.get_ref().as_ref();
        if !TOP_LEVEL.contains(&key) {
            let help = suggest(key, TOP_LEVEL).map(|s| format!("did you mean `[{s}]`?"));
            let e = p.err(k.span(), key, format!("unknown section `{key}`"));
            e.help = help.or_else(|| Some(format!("sections are: {}", TOP_LEVEL.join(", "))));
        }
    }

    // [node]
    let node = match get(&root, "node") {
        None => {
            p.err(
                root_span.start..root_span.start,
                "node",
                "missing `[node]` section",
            )
            .help = Some("add `[node]` with `id = \"…\"` (and `role = \"edge\"|\"cloud\"`)".into());
            None
        }
        Some((k, v)) => match v.get_ref() {
            DeValue::Table(t) if unknown_keys(&mut p, "node", t, &["id", "role"]) => None,
            DeValue::Table(t) => {
                use serde::de::IntoDeserializer;
                let table = t.clone();
                match NodeSpec::deserialize(v.clone().into_deserializer()) {
                    Ok(n) => Some(n),
                    Err(e) => {
                        p.de_error(e, "node", &table, k.span());
                        None
                    }
                }
            }
            _ => {
                p.err(v.span(), "node", "`node` must be a table");
                None
            }
        },
    };

    // [policy]
    let mut policy = PolicySection::default();
    // When `[policy]` itself is wrong, its tunables are unknown: references are not checked.
    let mut policy_known = true;
    if let Some((k, v)) = get(&root, "policy") {
        use serde::de::IntoDeserializer;
        let empty = DeTable::default();
        let table = match v.get_ref() {
            DeValue::Table(t) => t.clone(),
            _ => empty,
        };
        if unknown_keys(
            &mut p,
            "policy",
            &table,
            &["remote", "tunables", "trusted_keys"],
        ) {
            policy_known = false;
        } else {
            match PolicySection::deserialize(v.clone().into_deserializer()) {
                Ok(section) => policy = section,
                Err(e) => {
                    policy_known = false;
                    p.de_error(e, "policy", &table, k.span());
                }
            }
        }
    }
    for name in &policy.remote {
        if !policy.tunables.contains_key(name.get_ref()) {
            let help = suggest(name.get_ref(), policy.tunables.keys().map(String::as_str))
                .map(|s| format!("did you mean `{s}`?"))
                .unwrap_or_else(|| "declare it under [policy.tunables] with its default".into());
            p.err(
                name.span(),
                "policy.remote",
                format!("`{}` is not a declared tunable", name.get_ref()),
            )
            .help = Some(help);
        }
    }

    let base_dir = match file.parent().map(Path::to_path_buf) {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => PathBuf::from("."),
    };
    let mut trusted_keys = Vec::new();
    if let Some(list) = &policy.trusted_keys
        && list.get_ref().is_empty()
    {
        p.err(
            list.span(),
            "policy.trusted_keys",
            "`trusted_keys` is empty: no change could ever be verified",
        )
        .help = Some(
            "list the cloud's public key (`isthmus keygen` makes one), or leave `trusted_keys` out to accept unsigned changes".into(),
        );
    }
    for entry in policy.trusted_keys.iter().flat_map(|l| l.get_ref()) {
        match crate::signing::TrustedKeys::parse(entry.get_ref(), &base_dir) {
            Ok(key) => trusted_keys.push(key),
            Err(e) => {
                p.err(entry.span(), "policy.trusted_keys", e.to_string()).help = Some(
                    "give a public key (base64) or the path of a `.pub` file made by `isthmus keygen`".into(),
                );
            }
        }
    }

    // components
    let mut components = Vec::new();
    let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
    for kind in [Kind::Source, Kind::Transform, Kind::Sink] {
        let Some((_, section)) = get(&root, kind.table()) else {
            continue;
        };
        let DeValue::Table(section) = section.get_ref() else {
            p.err(
                section.span(),
                kind.table(),
                format!(
                    "`{}` must be a table of {} tables",
                    kind.table(),
                    kind.noun()
                ),
            );
            continue;
        };
        for (name_key, value) in section.iter() {
            let name = name_key.get_ref().to_string();
            let path = format!("{}.{}", kind.table(), name);
            if name.contains('.') || name.is_empty() {
                p.err(
                    name_key.span(),
                    &path,
                    "component names may not be empty or contain `.`",
                );
                continue;
            }
            if seen.insert(name.clone(), name_key.span()).is_some() {
                p.err(
                    name_key.span(),
                    &path,
                    format!("component name `{name}` is used twice"),
                )
                .help = Some("names must be unique across sources, transforms and sinks".into());
                continue;
            }
            if let Some(c) = parse_component(&mut p, registry, kind, &name, name_key.span(), value)
            {
                components.push(c);
            }
        }
    }

    // ${policy.NAME} references must name declared tunables.
    for kind in [Kind::Source, Kind::Transform, Kind::Sink] {
        if !policy_known {
            break;
        }
        let Some((_, section)) = get(&root, kind.table()) else {
            continue;
        };
        let mut refs = Vec::new();
        policy_refs(kind.table(), section, &mut refs);
        for (key, span, name) in refs {
            if !policy.tunables.contains_key(&name) {
                let help = suggest(&name, policy.tunables.keys().map(String::as_str))
                    .map(|s| format!("did you mean `${{policy.{s}}}`?"))
                    .unwrap_or_else(|| format!("declare `{name}` under [policy.tunables]"));
                p.err(
                    span,
                    key,
                    format!("`${{policy.{name}}}` names no declared tunable"),
                )
                .help = Some(help);
            }
        }
    }

    if !p.errors.is_empty() {
        return Err(ConfigErrors(p.errors));
    }
    Ok(PipelineSpec {
        file: file.to_path_buf(),
        base_dir,
        text: Arc::from(text),
        node: node.expect("no errors means [node] parsed"),
        policy_defaults: policy.tunables,
        remote: policy.remote.into_iter().map(|s| s.into_inner()).collect(),
        trusted_keys: crate::signing::TrustedKeys::new(trusted_keys),
        components,
    })
}

fn parse_component(
    p: &mut Parser<'_>,
    registry: &Registry,
    kind: Kind,
    name: &str,
    name_span: Range<usize>,
    value: &Spanned<DeValue<'_>>,
) -> Option<ComponentSpec> {
    let path = format!("{}.{}", kind.table(), name);
    let DeValue::Table(table) = value.get_ref() else {
        p.err(
            value.span(),
            &path,
            format!("a {} must be a table with `type = \"…\"`", kind.noun()),
        );
        return None;
    };
    let mut key_spans = BTreeMap::new();
    record_key_spans("", table, &mut key_spans);

    let types = registry.type_names(kind);
    let type_name = match get(table, "type") {
        None => {
            p.err(
                name_span.clone(),
                format!("{path}.type"),
                format!("missing `type` for {} `{name}`", kind.noun()),
            )
            .help = Some(format!("one of: {}", types.join(", ")));
            None
        }
        Some((_, v)) => match v.get_ref() {
            DeValue::String(s) => Some((s.to_string(), v.span())),
            _ => {
                p.err(v.span(), format!("{path}.type"), "`type` must be a string");
                None
            }
        },
    };

    let mut inputs = Vec::new();
    match (kind, get(table, "inputs")) {
        (Kind::Source, Some((k, _))) => {
            p.err(
                k.span(),
                format!("{path}.inputs"),
                "sources take no `inputs`",
            );
        }
        (Kind::Source, None) => {}
        (_, None) => {
            p.err(
                name_span.clone(),
                format!("{path}.inputs"),
                format!("missing `inputs` for {} `{name}`", kind.noun()),
            )
            .help = Some("list the components it reads from, e.g. `inputs = [\"sim\"]`".into());
        }
        (_, Some((_, v))) => match v.get_ref() {
            DeValue::Array(items) if !items.is_empty() => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::String(s) => inputs.push(InputRef {
                            text: s.to_string(),
                            span: item.span(),
                        }),
                        _ => {
                            p.err(
                                item.span(),
                                format!("{path}.inputs"),
                                "inputs must be strings",
                            );
                        }
                    }
                }
            }
            _ => {
                p.err(
                    v.span(),
                    format!("{path}.inputs"),
                    "`inputs` must be a non-empty list of component names",
                );
            }
        },
    }

    let (type_name, type_span) = type_name?;
    let Some(registration) = registry.get(kind, &type_name) else {
        let mut help = match suggest(&type_name, types.iter().copied()) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("{} types: {}", kind.noun(), types.join(", ")),
        };
        for other in [Kind::Source, Kind::Transform, Kind::Sink] {
            if other != kind && registry.get(other, &type_name).is_some() {
                help = format!(
                    "`{type_name}` is a {}; put it under [{}.{name}]",
                    other.noun(),
                    other.table()
                );
            }
        }
        p.err(
            type_span,
            format!("{path}.type"),
            format!("unknown {} type `{type_name}`", kind.noun()),
        )
        .help = Some(help);
        return None;
    };

    let mut params = DeTable::default();
    for (k, v) in table.iter() {
        let key = k.get_ref().as_ref();
        if key != "type" && key != "inputs" {
            params.insert(k.clone(), v.clone());
        }
    }
    // Report every unknown key at once (serde stops at the first).
    let schema = (registration.schema)();
    let mut known: Vec<&str> = schema
        .as_value()
        .get("properties")
        .and_then(|p| p.as_object())
        .map(|props| props.keys().map(String::as_str).collect())
        .unwrap_or_default();
    if kind != Kind::Source {
        known.push("inputs");
    }
    if unknown_keys(p, &path, &params, &known) {
        return None;
    }
    let params_value = Spanned::new(value.span(), DeValue::Table(params.clone()));
    match (registration.parse)(params_value) {
        Ok(config) => Some(ComponentSpec {
            kind,
            name: name.to_string(),
            type_name,
            inputs,
            config,
            span: name_span,
            key_spans,
        }),
        Err(e) => {
            p.de_error(e, &path, &params, name_span);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::suggest;

    #[test]
    fn suggestions_find_close_names_ignoring_case() {
        assert_eq!(
            suggest("timestamp", ["datetime", "Timestamp", "value"]),
            Some("Timestamp")
        );
        assert_eq!(
            suggest("thresold", ["threshold", "alpha"]),
            Some("threshold")
        );
        assert_eq!(suggest("zzz", ["datetime", "value"]), None);
    }
}

#[cfg(test)]
mod env_tests {
    use super::expand_env;

    #[test]
    fn env_references_are_expanded_with_defaults() {
        let lookup = |n: &str| (n == "NODE").then(|| "edge-2".to_string());
        assert_eq!(
            expand_env(
                r#"id = "${env.NODE}" b = "${env.BROKERS:-127.0.0.1:9092}" p = "${policy.x}""#,
                lookup
            )
            .unwrap(),
            r#"id = "edge-2" b = "127.0.0.1:9092" p = "${policy.x}""#
        );
        let err = expand_env("x\ny = \"${env.MISSING}\"", lookup).unwrap_err();
        assert_eq!(err.0, 7);
        assert!(err.1.contains("MISSING"), "{}", err.1);
        assert!(expand_env("${env.bad-name}", lookup).is_err());
        assert!(expand_env("${env.OPEN", lookup).is_err());
    }
}
