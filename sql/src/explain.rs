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

/// An expression as the user wrote it: DataFusion's human display, with string literals
/// quoted (`status <> 'cancelled'`, not `status <> cancelled`).
fn sql(expr: &Expr) -> String {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::common::{Column, ScalarValue};
    let quoted = expr.clone().transform_up(|e| match &e {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
            _,
        ) => {
            // Shown by its name, verbatim: the literal in SQL quotes.
            Ok(Transformed::yes(Expr::Column(Column::new_unqualified(format!("'{}'", s.replace('\'', "''"))))))
        }
        _ => Ok(Transformed::no(e)),
    });
    match quoted {
        Ok(quoted) => quoted.data.human_display().to_string(),
        Err(_) => expr.human_display().to_string(),
    }
}

fn list(exprs: &[Expr]) -> String {
    exprs.iter().map(sql).collect::<Vec<_>>().join(", ")
}

fn render(node: &PlanNode, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    let line = match &node.kind {
        NodeKind::Scan { relation, .. } => format!("Scan {relation}: changes of the relation"),
        NodeKind::Filter { predicate, .. } => format!("Filter {}: stateless", sql(predicate)),
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
            let keys: Vec<String> = on.iter().map(|(l, r)| format!("{} = {}", sql(l), sql(r))).collect();
            let mut line = if keys.is_empty() {
                format!("{join_type:?}Join (cross)")
            } else {
                format!("{join_type:?}Join on {}", keys.join(" AND "))
            };
            if let Some(filter) = filter {
                let _ = write!(line, " filter {}", sql(filter));
            }
            line.push_str(": state: both sides arranged by join key");
            line
        }
        NodeKind::Union { inputs } => format!("UnionAll of {}: stateless", inputs.len()),
        NodeKind::TopK { order, skip, fetch, .. } => {
            let keys: Vec<String> =
                order.iter().map(|k| format!("{}{}", sql(&k.expr), if k.descending { " DESC" } else { "" })).collect();
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

/// A line of DataFusion's plan display with its typed literals written as SQL:
/// `Utf8("x")` as `'x'`, `Int64(5)` as `5`, and `count(Int64(1))` as `count(*)`.
pub fn sql_literals(line: &str) -> String {
    const NUMERIC: [&str; 11] =
        ["Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64", "Float32", "Float64", "Boolean"];
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    'scan: while !rest.is_empty() {
        let boundary = out.chars().last().is_none_or(|c| !c.is_alphanumeric() && c != '_');
        if boundary {
            for text_type in ["Utf8View(\"", "LargeUtf8(\"", "Utf8(\""] {
                if let Some(body) = rest.strip_prefix(text_type) {
                    // The value as Rust's Debug writes it, up to the unescaped quote.
                    let mut value = String::new();
                    let mut chars = body.char_indices();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => value.extend(chars.next().map(|(_, escaped)| escaped)),
                            '"' if body[i + 1..].starts_with(')') => {
                                out.push('\'');
                                out.push_str(&value.replace('\'', "''"));
                                out.push('\'');
                                rest = &body[i + 2..];
                                continue 'scan;
                            }
                            c => value.push(c),
                        }
                    }
                }
            }
            // Decimal128(5.00,10,2): the value.
            if let Some(body) = rest.strip_prefix("Decimal128(")
                && let Some(end) = body.find(')')
                && let [value, precision, scale] = body[..end].split(',').collect::<Vec<_>>()[..]
                && precision.parse::<u8>().is_ok()
                && scale.parse::<i8>().is_ok()
            {
                out.push_str(value);
                rest = &body[end + 1..];
                continue 'scan;
            }
            for numeric in NUMERIC {
                if let Some(body) = rest.strip_prefix(numeric).and_then(|r| r.strip_prefix('('))
                    && let Some(end) = body.find(')')
                    && body[..end].chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '+'))
                {
                    out.push_str(&body[..end]);
                    rest = &body[end + 1..];
                    continue 'scan;
                }
            }
        }
        let mut chars = rest.chars();
        out.extend(chars.next());
        rest = chars.as_str();
    }
    out.replace("count(1)", "count(*)")
}

#[cfg(test)]
mod tests {
    use super::sql_literals;

    #[test]
    fn typed_literals_read_as_sql() {
        assert_eq!(
            sql_literals(r#"Filter: orders.status != Utf8("it's") AND orders.amount > Int32(5) AND f = Float64(-1.5)"#),
            "Filter: orders.status != 'it''s' AND orders.amount > 5 AND f = -1.5"
        );
        assert_eq!(
            sql_literals("Aggregate: groupBy=[[]], aggr=[[count(Int64(1)), sum(CAST(x AS Int64))]]"),
            "Aggregate: groupBy=[[]], aggr=[[count(*), sum(CAST(x AS Int64))]]"
        );
        assert_eq!(sql_literals(r#"a = Utf8View("x\"y")"#), "a = 'x\"y'");
        assert_eq!(sql_literals("MyInt64(3) and Boolean(true)"), "MyInt64(3) and true");
        assert_eq!(sql_literals("amount > Decimal128(5.00,10,2)"), "amount > 5.00");
    }
}
