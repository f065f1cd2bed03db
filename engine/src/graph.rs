//! The compiled graph of a pipeline as DOT or Mermaid text, for `isthmus graph`.

use std::fmt::Write as _;

use crate::component::Kind;
use crate::validate::Plan;

/// Output format of [`render`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// Mermaid flowchart.
    Mermaid,
}

fn label(plan: &Plan, name: &str) -> String {
    let c = plan.spec.component(name).expect("component exists");
    let columns = plan
        .schemas
        .get(name)
        .map(|s| {
            s.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    if columns.is_empty() {
        format!("{name}\\n{}", c.type_name)
    } else {
        format!("{name}\\n{}\\n[{columns}]", c.type_name)
    }
}

/// Escapes text for a double-quoted DOT string.
fn dot(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The Mermaid node id of component `index` (names may hold characters Mermaid reserves).
fn mermaid_id(plan: &Plan, name: &str) -> String {
    let index = plan
        .spec
        .components
        .iter()
        .position(|c| c.name == name)
        .unwrap_or(0);
    format!("c{index}")
}

/// Renders the plan's components and edges (side outputs are labelled edges).
pub fn render(plan: &Plan, format: GraphFormat) -> String {
    let mut out = String::new();
    let spec = &plan.spec;
    match format {
        GraphFormat::Dot => {
            let _ = writeln!(out, "digraph \"{}\" {{\n  rankdir=LR;", dot(&spec.node.id));
            for &i in &plan.order {
                let c = &spec.components[i];
                let shape = match c.kind {
                    Kind::Source => "invhouse",
                    Kind::Transform => "box",
                    Kind::Sink => "house",
                };
                let _ = writeln!(
                    out,
                    "  \"{}\" [shape={shape}, label=\"{}\"];",
                    dot(&c.name),
                    dot(&label(plan, &c.name)).replace("\\\\n", "\\n")
                );
            }
            for &i in &plan.order {
                let c = &spec.components[i];
                for input in &c.inputs {
                    let (from, side) = input.split();
                    match side {
                        Some(side) => {
                            let _ = writeln!(
                                out,
                                "  \"{}\" -> \"{}\" [label=\"{}\", style=dashed];",
                                dot(from),
                                dot(&c.name),
                                dot(side)
                            );
                        }
                        None => {
                            let _ = writeln!(out, "  \"{}\" -> \"{}\";", dot(from), dot(&c.name));
                        }
                    }
                }
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for &i in &plan.order {
                let c = &spec.components[i];
                let text = label(plan, &c.name)
                    .replace('"', "#quot;")
                    .replace("\\n", "<br/>");
                let (open, close) = match c.kind {
                    Kind::Source => ("[/", "/]"),
                    Kind::Transform => ("[", "]"),
                    Kind::Sink => ("[\\", "\\]"),
                };
                let _ = writeln!(
                    out,
                    "  {}{open}\"{text}\"{close}",
                    mermaid_id(plan, &c.name)
                );
            }
            for &i in &plan.order {
                let c = &spec.components[i];
                for input in &c.inputs {
                    let (from, side) = input.split();
                    match side {
                        Some(side) => {
                            let _ = writeln!(
                                out,
                                "  {} -. \"{side}\" .-> {}",
                                mermaid_id(plan, from),
                                mermaid_id(plan, &c.name)
                            );
                        }
                        None => {
                            let _ = writeln!(
                                out,
                                "  {} --> {}",
                                mermaid_id(plan, from),
                                mermaid_id(plan, &c.name)
                            );
                        }
                    }
                }
            }
        }
    }
    out
}
