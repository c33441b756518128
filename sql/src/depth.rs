//! How deeply a parsed statement nests, checked before anything walks it. The parser reads
//! chains of operators (`1+1+...+1`, `a OR b OR ...`, `x::int::int`, `SELECT ... UNION
//! SELECT ...`) in a loop, but the tree it builds is as deep as the chain is long, and every
//! later walk of it (clone, planning, drop) recurses: a few kilobytes of text could exhaust a
//! thread's stack and abort the process. A statement deeper than [`MAX_DEPTH`] is refused
//! with an error, and its tree is dropped on a thread whose stack is sized for it.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, Query, SetExpr, Visit, Visitor};

use crate::error::{Result, SqlError};

/// The deepest nesting of expressions (and of set operations) a statement may have.
/// PostgreSQL's own limit depends on its stack (`max_stack_depth`); this one keeps planning
/// a statement well under a second.
pub const MAX_DEPTH: usize = 1_000;

/// Refuses a statement that nests deeper than [`MAX_DEPTH`]; `text_len` sizes the stack of
/// the thread that drops its tree.
pub fn check_depth(statement: ast::Statement, text_len: usize) -> Result<ast::Statement> {
    let mut meter = DepthMeter { depth: 0 };
    let exceeded = statement.visit(&mut meter).is_break();
    if !exceeded {
        return Ok(statement);
    }
    drop_deep(statement, text_len);
    Err(SqlError::TooComplex(format!(
        "the statement nests more than {MAX_DEPTH} levels deep (a chain of operators counts one level per \
         operator); split it up, or use IN (...) or a join instead of a long chain of OR"
    )))
}

/// Drops a tree that may be deeper than this thread's stack allows, on a thread with a
/// stack sized by the text it came from (every level takes at least one byte of text). The
/// tree is handed over only once that thread runs: when none can be started, it is leaked
/// rather than dropped here.
pub(crate) fn drop_deep<T: Send + 'static>(tree: T, text_len: usize) {
    let stack = (64 << 20) + text_len.saturating_mul(512);
    let (hand_over, receive) = std::sync::mpsc::channel::<T>();
    let dropper = std::thread::Builder::new().name("changeflow-drop".into()).stack_size(stack).spawn(move || {
        if let Ok(tree) = receive.recv() {
            drop(tree);
        }
    });
    match dropper {
        Ok(handle) => {
            if let Err(std::sync::mpsc::SendError(tree)) = hand_over.send(tree) {
                std::mem::forget(tree);
            }
            let _ = handle.join();
        }
        Err(_) => std::mem::forget(tree),
    }
}

/// Counts nesting while the visitor descends, and stops it past the limit (so the visit
/// itself never goes deeper than the limit).
struct DepthMeter {
    depth: usize,
}

impl DepthMeter {
    fn enter(&mut self, levels: usize) -> ControlFlow<()> {
        self.depth += levels;
        if self.depth > MAX_DEPTH { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    }
}

impl Visitor for DepthMeter {
    type Break = ();

    fn pre_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.enter(1)
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<()> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    /// A query counts as deep as its chain of set operations, measured without recursion
    /// before the visitor descends into it.
    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.enter(set_operation_depth(&query.body) + 1)
    }

    fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        self.depth -= set_operation_depth(&query.body) + 1;
        ControlFlow::Continue(())
    }
}

/// How deep the set operations of a query body nest, walked with an explicit stack.
fn set_operation_depth(body: &SetExpr) -> usize {
    let mut deepest = 0;
    let mut pending = vec![(body, 0)];
    while let Some((set, depth)) = pending.pop() {
        deepest = deepest.max(depth);
        if deepest > MAX_DEPTH {
            break;
        }
        if let SetExpr::SetOperation { left, right, .. } = set {
            pending.push((left, depth + 1));
            pending.push((right, depth + 1));
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use crate::parser::parse_sql;

    fn chain(term: &str, operator: &str, count: usize) -> String {
        vec![term; count].join(operator)
    }

    #[test]
    fn long_chains_are_refused_and_short_ones_parse() {
        for (prefix, term, operator) in [
            ("SELECT ", "1", "+"),
            ("SELECT * FROM t WHERE ", "a = 1", " OR "),
            ("SELECT 1", "", "::int"),
            ("", "SELECT 1", " UNION ALL "),
        ] {
            let ok = format!("{prefix}{}", chain(term, operator, 200));
            assert!(parse_sql(&ok).is_ok(), "{}", &ok[..40.min(ok.len())]);
            for count in [2_000, 100_000] {
                let deep = format!("{prefix}{}", chain(term, operator, count));
                let error = parse_sql(&deep).expect_err("too deep").to_string();
                assert!(error.contains("nests more than 1000 levels"), "{error}");
            }
        }
    }
}
