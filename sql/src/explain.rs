//! Renders a dataflow plan as an indented tree for `EXPLAIN CREATE MATERIALIZED VIEW`,
//! naming each operator and the state it keeps.

use std::fmt::Write;

use datafusion::logical_expr::Expr;

use crate::plan::{AggregateKind, NodeKind, PlanNode};

pub fn explain(view: &str, root: &PlanNode) -> String {
    let mut out = format!("Materialize {view}: stores the view's rows\n");
    render(root, 1, &mut out);
    out
}

fn list(exprs: &[Expr]) -> String {
    exprs.iter().map(|e| e.human_display().to_string()).collect::<Vec<_>>().join(", ")
}

fn render(node: &PlanNode, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let line = match &node.kind {
        NodeKind::Scan { relation, .. } => format!("Scan {relation}: changes of the relation"),
        NodeKind::Filter { predicate, .. } => format!("Filter {}: stateless", predicate.human_display()),
        NodeKind::Project { exprs, .. } => format!("Project {}: stateless", list(exprs)),
        NodeKind::Aggregate { group_exprs, aggregates, .. } => {
            let calls: Vec<String> = aggregates.iter().map(|a| a.display.clone()).collect();
            let multisets = aggregates
                .iter()
                .filter(|a| matches!(a.kind, AggregateKind::Min | AggregateKind::Max | AggregateKind::CountDistinct))
                .count();
            let state = if multisets > 0 {
                "state: per-group accumulators, value multisets for min/max/count(DISTINCT)"
            } else {
                "state: per-group accumulators"
            };
            if group_exprs.is_empty() {
                format!("Aggregate (one group) [{}]: {state}", calls.join(", "))
            } else {
                format!("Aggregate group by [{}] [{}]: {state}", list(group_exprs), calls.join(", "))
            }
        }
        NodeKind::Join { on, filter, join_type, .. } => {
            let keys: Vec<String> =
                on.iter().map(|(l, r)| format!("{} = {}", l.human_display(), r.human_display())).collect();
            let mut line = if keys.is_empty() {
                format!("{join_type:?}Join (cross)")
            } else {
                format!("{join_type:?}Join on {}", keys.join(" AND "))
            };
            if let Some(filter) = filter {
                let _ = write!(line, " filter {}", filter.human_display());
            }
            line.push_str(": state: both sides arranged by join key");
            line
        }
        NodeKind::Union { inputs } => format!("UnionAll of {}: stateless", inputs.len()),
        NodeKind::TopK { order, skip, fetch, .. } => {
            let keys: Vec<String> = order
                .iter()
                .map(|k| format!("{}{}", k.expr.human_display(), if k.descending { " DESC" } else { "" }))
                .collect();
            let offset = if *skip > 0 { format!(" offset {skip}") } else { String::new() };
            format!("TopK order by [{}] limit {fetch}{offset}: state: ordered input rows", keys.join(", "))
        }
        NodeKind::Constant { rows } => format!("Constant {} row(s)", rows.len()),
    };
    let _ = writeln!(out, "{indent}{line}");
    for input in node.inputs() {
        render(input, depth + 1, out);
    }
}
