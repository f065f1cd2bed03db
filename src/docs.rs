//! The component reference, generated from the config structs' JSON schemas (their doc
//! comments and defaults), so the documentation cannot drift from the code.

use std::fmt::Write as _;

use isthmus_engine::Registry;
use isthmus_engine::component::Kind;
use serde_json::Value;

fn resolve<'a>(root: &'a Value, v: &'a Value) -> &'a Value {
    if let Some(r) = v.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/$defs/")
        && let Some(def) = root.get("$defs").and_then(|d| d.get(name))
    {
        return def;
    }
    v
}

fn type_name(root: &Value, v: &Value) -> String {
    if let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let name = r.rsplit('/').next().unwrap_or(r);
        return match name {
            "DurationSpec" => "duration".into(),
            "ByteSize" => "size".into(),
            "PolicyValue" => "scalar".into(),
            n if n.starts_with("Param") => "number or `${policy.NAME}`".into(),
            _ => {
                let def = resolve(root, v);
                if let Some(values) = def.get("enum").and_then(Value::as_array) {
                    values
                        .iter()
                        .filter_map(Value::as_str)
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join(" \\| ")
                } else if let Some(one) = def.get("oneOf").and_then(Value::as_array) {
                    let consts: Vec<String> = one
                        .iter()
                        .filter_map(|o| {
                            o.get("const")
                                .and_then(Value::as_str)
                                .map(|s| format!("`{s}`"))
                        })
                        .collect();
                    if consts.len() == one.len() {
                        consts.join(" \\| ")
                    } else {
                        "table".into()
                    }
                } else {
                    def.get("type")
                        .map(|t| t.to_string().replace('"', ""))
                        .unwrap_or_else(|| "table".into())
                }
            }
        };
    }
    if let Some(any) = v.get("anyOf").and_then(Value::as_array) {
        let parts: Vec<String> = any
            .iter()
            .filter(|x| x.get("type") != Some(&Value::from("null")))
            .map(|x| type_name(root, x))
            .collect();
        return parts.join(" or ");
    }
    match v.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let item = v
                .get("items")
                .map(|i| type_name(root, i))
                .unwrap_or_default();
            format!("list of {item}")
        }
        Some(Value::String(t)) if t == "object" => match v.get("additionalProperties") {
            Some(inner) if inner.is_object() => format!("table of {}", type_name(root, inner)),
            _ => "table".into(),
        },
        Some(Value::String(t)) => match t.as_str() {
            "number" => "float".into(),
            "integer" => "integer".into(),
            other => other.into(),
        },
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

/// Markdown reference of every registered component: summary, keys with type, default and
/// description, and an example.
pub fn reference(registry: &Registry) -> String {
    let mut out = String::new();
    for kind in [Kind::Source, Kind::Transform, Kind::Sink] {
        let _ = writeln!(out, "### {}s\n", capitalize(kind.noun()));
        for r in registry.all().filter(|r| r.kind == kind) {
            let schema = (r.schema)();
            let root = schema.as_value();
            let _ = writeln!(out, "#### `type = \"{}\"` ({})\n", r.type_name, kind.noun());
            if let Some(d) = root.get("description").and_then(Value::as_str) {
                let _ = writeln!(out, "{}\n", d.trim());
            }
            let required: Vec<&str> = root
                .get("required")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if let Some(props) = root.get("properties").and_then(Value::as_object)
                && !props.is_empty()
            {
                out.push_str("| key | type | default | description |\n| --- | --- | --- | --- |\n");
                for (name, p) in props {
                    let default = match p.get("default") {
                        Some(d) => format!("`{d}`"),
                        None if required.contains(&name.as_str()) => "required".into(),
                        None => "—".into(),
                    };
                    let desc = p
                        .get("description")
                        .and_then(Value::as_str)
                        .or_else(|| resolve(root, p).get("description").and_then(Value::as_str));
                    let _ = writeln!(
                        out,
                        "| `{name}` | {} | {default} | {} |",
                        type_name(root, p),
                        one_line(desc.unwrap_or(""))
                    );
                }
                out.push('\n');
            } else {
                out.push_str("No keys besides `type` and `inputs`.\n\n");
            }
            let _ = writeln!(out, "```toml\n{}\n```\n", r.example.trim());
        }
    }
    out
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}
