//! Eager aggregation: an aggregate over an inner join whose aggregate arguments all come
//! from one side is computed in two steps. That side is first aggregated by the columns the
//! join and the grouping read from it (a partial aggregate), the partial rows are joined, and
//! a final aggregate combines them: count becomes a sum of counts, sum a sum of sums, min and
//! max a min or max of the partial ones.
//!
//! For a fact table joined to a dimension and grouped by a dimension attribute (sessions
//! joined to their experience, grouped by city) the join then holds one row per join key
//! instead of one per fact row, and a change to a fact row reaches the join only when it
//! changes its key's partial row: the join's state and work shrink by the number of fact
//! rows per key. The rewrite keeps the aggregate's output schema (names, qualifiers, types and
//! nullability) exactly; when any condition below does not hold, or the rebuilt plan's schema
//! differs, the plan is left as it was.
//!
//! Conditions: an inner join; aggregates count, sum, min and max only, without DISTINCT,
//! FILTER or ORDER BY; sums over integers or decimals only (a float sum added in another order
//! rounds differently); every aggregate argument reads one side only; the join is many to
//! one: the other side is known to be unique on its join key (a table whose primary key is
//! among the join's columns), and the aggregated side is not known to be unique on the
//! partial aggregate's key (else there would be nothing to combine).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DFSchema, JoinType, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, Case};
use datafusion::logical_expr::logical_plan::{Aggregate, Join, Projection};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan};

use crate::catalog::Catalog;

/// Rewrites every aggregate of `plan` that qualifies (see the module comment); any other
/// plan comes back as it was.
pub fn push_aggregates_below_joins(plan: LogicalPlan, catalog: &Catalog) -> LogicalPlan {
    let rewritten = plan.clone().transform_up(|node| {
        Ok(match &node {
            LogicalPlan::Aggregate(aggregate) => match eager(aggregate, catalog) {
                Some(plan) => Transformed::yes(plan),
                None => Transformed::no(node),
            },
            _ => Transformed::no(node),
        })
    });
    match rewritten {
        Ok(rewritten) => rewritten.data,
        Err(_) => plan,
    }
}

/// The kinds of aggregate a partial aggregate can combine.
#[derive(Clone, Copy, PartialEq)]
enum Combine {
    /// count(...): the final value is the sum of the partial counts, 0 when there are none.
    Count,
    /// sum, min, max: the same function over the partial values.
    Same,
}

/// An aggregate call that qualifies, with the function that combines its partial values.
struct Call {
    function: AggregateFunction,
    combine: Combine,
}

/// `aggregate` computed through a partial aggregate below its join, or `None` when it does not
/// qualify.
fn eager(aggregate: &Aggregate, catalog: &Catalog) -> Option<LogicalPlan> {
    // Plain column projections and computed ones between the aggregate and the join are
    // folded into the aggregate's expressions.
    let mut group_exprs = aggregate.group_expr.clone();
    let mut aggr_exprs = aggregate.aggr_expr.clone();
    let mut input = aggregate.input.as_ref();
    while let LogicalPlan::Projection(projection) = input {
        group_exprs = group_exprs.into_iter().map(|e| inline(e, projection)).collect::<Option<_>>()?;
        aggr_exprs = aggr_exprs.into_iter().map(|e| inline(e, projection)).collect::<Option<_>>()?;
        input = projection.input.as_ref();
    }
    let LogicalPlan::Join(join) = input else { return None };
    if join.join_type != JoinType::Inner || group_exprs.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
        return None;
    }
    let calls = aggr_exprs.iter().map(|e| call(e, join.schema.as_ref())).collect::<Option<Vec<Call>>>()?;

    // The side holding every aggregate argument (either, for count(*) alone; the left one
    // first) that joins many rows to one: the other side is known to be unique on its join
    // key, and this one is not known to be unique on the partial aggregate's key. Where
    // neither is known (tables without primary keys) the join is left as written: a side
    // with one row per key would only gain an aggregate to maintain.
    let argument_columns: Vec<&Column> =
        calls.iter().flat_map(|c| c.function.params.args.iter()).flat_map(Expr::column_refs).collect();
    let (pushed_left, key) = [true, false].into_iter().find_map(|left| {
        let (side, other) = if left { (&join.left, &join.right) } else { (&join.right, &join.left) };
        if !argument_columns.iter().all(|c| side.schema().has_column(c)) {
            return None;
        }
        let other_key: Vec<Column> =
            join.on.iter().flat_map(|(l, r)| if left { r } else { l }.column_refs()).cloned().collect();
        let key = partial_key(join, left, &group_exprs);
        (unique_on(other, &other_key, catalog) && !unique_on(side, &key, catalog)).then_some((left, key))
    })?;
    let side = if pushed_left { &join.left } else { &join.right };

    // Partial values are named as the aggregate they stand for (`sum(s.sold)`), and combined
    // by DataFusion's names (`sum(sum(s.sold))`): EXPLAIN reads as what it computes. A name
    // the other side already has fails the join's schema, and the plan stays as it was.
    let partial_name = |i: usize| aggregate.schema.field(aggregate.group_expr.len() + i).name().clone();
    let partial_exprs: Vec<Expr> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| Expr::AggregateFunction(c.function.clone()).alias(partial_name(i)))
        .collect();
    // Grouping expressions of the side alone are named in the partial aggregate's output as
    // in the aggregate's; the final aggregate groups by those columns.
    let group_name = |i: usize| aggregate.schema.field(i).name().clone();
    let computed: Vec<usize> = (0..group_exprs.len()).filter(|&i| computed_on(&group_exprs[i], side)).collect();
    let partial_key: Vec<Expr> = key
        .into_iter()
        .map(Expr::Column)
        .chain(computed.iter().map(|&i| group_exprs[i].clone().alias(group_name(i))))
        .collect();
    let partial = Aggregate::try_new(Arc::clone(side), partial_key, partial_exprs).ok()?;
    // The partial aggregate may itself sit over a join (a chain of joins).
    let partial = Arc::new(eager(&partial, catalog).unwrap_or(LogicalPlan::Aggregate(partial)));
    let (left, right) =
        if pushed_left { (partial, Arc::clone(&join.right)) } else { (Arc::clone(&join.left), partial) };
    let joined = Join::try_new(
        left,
        right,
        join.on.clone(),
        join.filter.clone(),
        join.join_type,
        join.join_constraint,
        join.null_equality,
        join.null_aware,
    )
    .ok()?;

    let final_exprs: Vec<Expr> = calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let function = match c.combine {
                Combine::Count => datafusion::functions_aggregate::sum::sum_udaf(),
                Combine::Same => Arc::clone(&c.function.func),
            };
            let partial = Expr::Column(Column::new_unqualified(partial_name(i)));
            Expr::AggregateFunction(AggregateFunction::new_udf(function, vec![partial], false, None, vec![], None))
        })
        .collect();
    let final_groups: Vec<Expr> = group_exprs
        .iter()
        .enumerate()
        .map(|(i, e)| match computed.contains(&i) {
            true => Expr::Column(Column::new_unqualified(group_name(i))),
            false => e.clone(),
        })
        .collect();
    let combined = Aggregate::try_new(Arc::new(LogicalPlan::Join(joined)), final_groups, final_exprs).ok()?;
    let combined = Arc::new(LogicalPlan::Aggregate(combined));

    // The original output, column for column.
    let original = aggregate.schema.as_ref();
    let combined_schema = Arc::clone(combined.schema());
    let outputs = (0..original.fields().len())
        .map(|i| {
            let (qualifier, field) = original.qualified_field(i);
            let (combined_qualifier, combined_field) = combined_schema.qualified_field(i);
            let mut expr = Expr::Column(Column::new(combined_qualifier.cloned(), combined_field.name()));
            if i >= group_exprs.len() && calls[i - group_exprs.len()].combine == Combine::Count {
                // A count is never NULL: 0 when no partial rows were combined (an aggregate
                // without GROUP BY over no rows). Written as the CASE coalesce() becomes,
                // which the operators evaluate as it is.
                let zero = Expr::Literal(ScalarValue::Int64(Some(0)), None);
                let when = Box::new(expr.clone().is_not_null());
                expr = Expr::Case(Case::new(None, vec![(when, Box::new(expr))], Some(Box::new(zero))));
            }
            if expr.get_type(&combined_schema).ok()? != *field.data_type() {
                expr = expr.cast_to(field.data_type(), &combined_schema).ok()?;
            }
            Some(expr.alias_qualified(qualifier.cloned(), field.name()))
        })
        .collect::<Option<Vec<Expr>>>()?;
    let projection = Projection::try_new(outputs, combined).ok()?;
    same_schema(original, projection.schema.as_ref()).then_some(LogicalPlan::Projection(projection))
}

/// The columns of the partial aggregate's key on the `left` (or right) side of `join`: every
/// column of the side that the join reads, or a grouping expression that reads the other side
/// too (or is a plain column), in the order first read. A grouping expression that reads this
/// side alone is computed by the partial aggregate itself (see [`computed_on`]).
fn partial_key(join: &Join, left: bool, group_exprs: &[Expr]) -> Vec<Column> {
    let side = if left { &join.left } else { &join.right };
    let join_keys = join.on.iter().map(|(l, r)| if left { l } else { r });
    let grouping = group_exprs.iter().filter(|e| !computed_on(e, side));
    let mut key: Vec<Column> = Vec::new();
    for expr in join_keys.chain(join.filter.iter()).chain(grouping) {
        for column in expr.column_refs() {
            if side.schema().has_column(column) && !key.contains(column) {
                key.push(column.clone());
            }
        }
    }
    key
}

/// Whether the grouping expression `expr` is computed from `side`'s columns alone (and is not
/// just one of them): the partial aggregate groups by the expression (by day, not by every
/// timestamp), and the final one by the partial aggregate's column of it.
fn computed_on(expr: &Expr, side: &LogicalPlan) -> bool {
    let columns = expr.column_refs();
    !matches!(expr, Expr::Column(_)) && !columns.is_empty() && columns.iter().all(|c| side.schema().has_column(c))
}

/// `expr` with the columns of `projection`'s output replaced by the expressions computing
/// them.
fn inline(expr: Expr, projection: &Projection) -> Option<Expr> {
    expr.transform_up(|e| {
        let Expr::Column(column) = &e else { return Ok(Transformed::no(e)) };
        match projection.schema.index_of_column(column) {
            Ok(i) => Ok(Transformed::yes(projection.expr[i].clone().unalias())),
            Err(_) => Ok(Transformed::no(e)),
        }
    })
    .ok()
    .map(|t| t.data)
}

/// The aggregate call of `expr` when a partial aggregate can compute it.
fn call(expr: &Expr, input: &DFSchema) -> Option<Call> {
    let mut inner = expr;
    while let Expr::Alias(alias) = inner {
        inner = &alias.expr;
    }
    let Expr::AggregateFunction(function) = inner else { return None };
    let params = &function.params;
    if params.distinct || params.filter.is_some() || !params.order_by.is_empty() || params.null_treatment.is_some() {
        return None;
    }
    let combine = match function.func.name().to_ascii_lowercase().as_str() {
        "count" => Combine::Count,
        "sum" => {
            let [arg] = params.args.as_slice() else { return None };
            let exact = matches!(
                arg.get_type(input).ok()?,
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
                    | DataType::Decimal128(..)
            );
            if !exact {
                return None;
            }
            Combine::Same
        }
        "min" | "max" => Combine::Same,
        _ => return None,
    };
    Some(Call { function: function.clone(), combine })
}

/// Whether `side`'s rows are known to be unique on `key`: a table (under aliases, filters and
/// plain column projections) whose primary key's columns are all in `key`.
fn unique_on(side: &LogicalPlan, key: &[Column], catalog: &Catalog) -> bool {
    let mut plan = side;
    loop {
        plan = match plan {
            LogicalPlan::SubqueryAlias(alias) => alias.input.as_ref(),
            LogicalPlan::Filter(filter) => filter.input.as_ref(),
            LogicalPlan::Projection(projection) if projection.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                projection.input.as_ref()
            }
            LogicalPlan::TableScan(scan) => {
                let Some(relation) = catalog.relation(scan.table_name.table()) else { return false };
                return !relation.primary_key.is_empty()
                    && relation.primary_key.iter().all(|&i| {
                        let name = relation.schema.field(i).name();
                        key.iter().any(|column| &column.name == name)
                    });
            }
            _ => return false,
        };
    }
}

/// Same names, qualifiers, types and nullability, column for column.
fn same_schema(a: &DFSchema, b: &DFSchema) -> bool {
    a.fields().len() == b.fields().len()
        && a.iter().zip(b.iter()).all(|((qa, fa), (qb, fb))| {
            qa == qb
                && fa.name() == fb.name()
                && fa.data_type() == fb.data_type()
                && fa.is_nullable() == fb.is_nullable()
        })
}
