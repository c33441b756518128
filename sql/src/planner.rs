//! The incremental planner: one walk over DataFusion's optimized `LogicalPlan`, one function
//! per node kind, emitting the dataflow plan. Anything that cannot be maintained
//! incrementally is refused with an error naming the construct.

use std::sync::Arc;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, JoinType, NullEquality};
use datafusion::logical_expr::expr::AggregateFunction;
use datafusion::logical_expr::logical_plan::{
    Aggregate, Distinct, EmptyRelation, FetchType, Filter, Join, Limit, Projection, SkipType, Sort, SubqueryAlias,
    TableScan, Union, Values,
};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, Volatility};
use datafusion::sql::sqlparser::ast;

use crate::context::PlanContext;
use crate::error::{Result, SqlError};
use crate::plan::{AggregateCall, AggregateKind, JoinKind, NodeKind, PlanNode, SortKey};

/// A planned materialized view: the optimized logical plan (its schema is the view's) and the
/// dataflow maintaining it, planned from that plan with aggregates pushed below joins where
/// they can be (see [`crate::eager_aggregation`]).
#[derive(Debug, Clone)]
pub struct PlannedView {
    pub logical: LogicalPlan,
    pub dataflow: PlanNode,
}

/// Plans a view's query into an incremental dataflow.
pub fn plan_view(context: &PlanContext<'_>, query: &ast::Query) -> Result<PlannedView> {
    let unoptimized = context.plan_query(query)?;
    check_time_independent(&unoptimized)?;
    let logical = context.optimize(&unoptimized)?;
    let eager = crate::eager_aggregation::push_aggregates_below_joins(logical.clone(), context.catalog());
    let dataflow = plan_node(context, &eager)?;
    Ok(PlannedView { logical, dataflow })
}

/// Functions whose result depends on when they run (now(), random()) would be frozen at
/// creation by the optimizer's constant folding: refuse them instead of showing stale rows.
fn check_time_independent(plan: &LogicalPlan) -> Result<()> {
    let mut offending: Option<String> = None;
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::ScalarFunction(function) = e
                    && function.func.signature().volatility != Volatility::Immutable
                {
                    offending = Some(function.func.name().to_string());
                    return Ok(TreeNodeRecursion::Stop);
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    match offending {
        Some(name) => Err(SqlError::NotIncremental(format!(
            "{name}() changes value over time or between calls; a materialized view cannot use it"
        ))),
        None => Ok(()),
    }
}

fn plan_node(context: &PlanContext<'_>, plan: &LogicalPlan) -> Result<PlanNode> {
    match plan {
        LogicalPlan::TableScan(scan) => plan_scan(context, scan),
        LogicalPlan::Projection(projection) => plan_projection(context, projection),
        LogicalPlan::Filter(filter) => plan_filter(context, filter),
        LogicalPlan::Aggregate(aggregate) => plan_aggregate(context, aggregate),
        LogicalPlan::Join(join) => plan_join(context, join),
        LogicalPlan::Union(union) => plan_union(context, union),
        LogicalPlan::Distinct(distinct) => plan_distinct(context, distinct),
        LogicalPlan::Sort(sort) => plan_sort(context, sort, 0, sort.fetch),
        LogicalPlan::Limit(limit) => plan_limit(context, limit),
        LogicalPlan::SubqueryAlias(alias) => plan_alias(context, alias),
        LogicalPlan::Values(values) => plan_values(values),
        LogicalPlan::EmptyRelation(empty) => plan_empty(empty),
        LogicalPlan::Repartition(repartition) => plan_node(context, &repartition.input),
        LogicalPlan::Window(_) => Err(not_incremental("window functions (... OVER (...))")),
        LogicalPlan::RecursiveQuery(_) => Err(not_incremental("recursive queries (WITH RECURSIVE)")),
        LogicalPlan::Subquery(_) => Err(not_incremental("a subquery that cannot be rewritten as a join")),
        LogicalPlan::Unnest(_) => Err(not_incremental("UNNEST")),
        other => Err(not_incremental(&format!("the plan node {}", other.display()))),
    }
}

fn not_incremental(construct: &str) -> SqlError {
    SqlError::NotIncremental(format!("{construct} is not supported"))
}

fn check_expr(expr: &Expr) -> Result<()> {
    let mut found: Option<&'static str> = None;
    expr.apply(|e| {
        found = match e {
            Expr::ScalarSubquery(subquery) if subquery.outer_ref_columns.is_empty() => {
                Some("a scalar subquery used as a value ((SELECT avg(y) FROM b) compared with each row)")
            }
            Expr::Exists(exists) if exists.subquery.outer_ref_columns.is_empty() => {
                Some("an EXISTS (SELECT ...) that does not refer to the row, under OR or in the SELECT list")
            }
            Expr::InSubquery(_) => Some("an IN (SELECT ...) under OR or in the SELECT list"),
            Expr::ScalarSubquery(_) | Expr::Exists(_) => {
                Some("a correlated subquery that cannot be rewritten as a join")
            }
            Expr::OuterReferenceColumn(..) => Some("a correlated subquery"),
            Expr::WindowFunction(_) => Some("window functions (... OVER (...))"),
            Expr::Placeholder(_) => Some("parameters ($1)"),
            _ => None,
        };
        Ok(if found.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    })?;
    match found {
        Some(construct) => Err(not_incremental(construct)),
        None => Ok(()),
    }
}

fn plan_scan(context: &PlanContext<'_>, scan: &TableScan) -> Result<PlanNode> {
    let name = scan.table_name.table().to_string();
    if name.starts_with("generate_series") && context.catalog().relation(&name).is_none() {
        return Err(not_incremental("generate_series(...) (load its rows into a table, and use the table)"));
    }
    let relation = context.catalog().require_relation(&name)?;
    if !relation.kind.is_stored() {
        return Err(SqlError::Catalog(format!("view \"{name}\" was not inlined")));
    }
    if scan.fetch.is_some() {
        return Err(not_incremental("LIMIT without ORDER BY"));
    }
    let full_schema = Arc::new(DFSchema::try_from_qualified_schema(scan.table_name.clone(), &relation.schema)?);
    let mut columns: Vec<String> = match &scan.projection {
        Some(projection) => projection.iter().map(|&i| relation.schema.field(i).name().clone()).collect(),
        None => relation.schema.fields().iter().map(|f| f.name().clone()).collect(),
    };
    for predicate in &scan.filters {
        for column in predicate.column_refs() {
            if !columns.contains(&column.name) {
                columns.push(column.name.clone());
            }
        }
    }
    let mut node = PlanNode { kind: NodeKind::Scan { relation: name, columns }, schema: Arc::clone(&full_schema) };
    for predicate in &scan.filters {
        check_expr(predicate)?;
        node = PlanNode {
            kind: NodeKind::Filter { input: Box::new(node), predicate: predicate.clone() },
            schema: Arc::clone(&full_schema),
        };
    }
    if let Some(projection) = &scan.projection {
        let exprs = projection
            .iter()
            .map(|&i| {
                let (qualifier, field) = full_schema.qualified_field(i);
                Expr::Column(datafusion::common::Column::new(qualifier.cloned(), field.name()))
            })
            .collect();
        node = PlanNode {
            kind: NodeKind::Project { input: Box::new(node), exprs },
            schema: Arc::clone(&scan.projected_schema),
        };
    }
    Ok(node)
}

fn plan_projection(context: &PlanContext<'_>, projection: &Projection) -> Result<PlanNode> {
    for expr in &projection.expr {
        check_expr(expr)?;
    }
    let input = plan_node(context, &projection.input)?;
    Ok(PlanNode {
        kind: NodeKind::Project { input: Box::new(input), exprs: projection.expr.clone() },
        schema: Arc::clone(&projection.schema),
    })
}

fn plan_filter(context: &PlanContext<'_>, filter: &Filter) -> Result<PlanNode> {
    check_expr(&filter.predicate)?;
    let input = plan_node(context, &filter.input)?;
    let schema = Arc::clone(&input.schema);
    Ok(PlanNode { kind: NodeKind::Filter { input: Box::new(input), predicate: filter.predicate.clone() }, schema })
}

fn plan_aggregate(context: &PlanContext<'_>, aggregate: &Aggregate) -> Result<PlanNode> {
    for expr in &aggregate.group_expr {
        if matches!(expr, Expr::GroupingSet(_)) {
            return Err(not_incremental("GROUPING SETS, ROLLUP and CUBE"));
        }
        check_expr(expr)?;
    }
    let input = plan_node(context, &aggregate.input)?;
    let group_count = aggregate.group_expr.len();
    let mut aggregates = Vec::new();
    for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
        let output_type = aggregate.schema.field(group_count + i).data_type().clone();
        aggregates.push(plan_aggregate_call(expr, &input.schema, output_type)?);
    }
    Ok(PlanNode {
        kind: NodeKind::Aggregate { input: Box::new(input), group_exprs: aggregate.group_expr.clone(), aggregates },
        schema: Arc::clone(&aggregate.schema),
    })
}

fn plan_aggregate_call(
    expr: &Expr,
    input_schema: &DFSchema,
    output_type: datafusion::arrow::datatypes::DataType,
) -> Result<AggregateCall> {
    let display = expr.schema_name().to_string();
    let mut inner = expr;
    while let Expr::Alias(alias) = inner {
        inner = &alias.expr;
    }
    let Expr::AggregateFunction(AggregateFunction { func, params }) = inner else {
        return Err(not_incremental(&format!("the aggregate expression {expr}")));
    };
    let name = func.name().to_ascii_lowercase();
    if params.filter.is_some() {
        return Err(not_incremental(&format!("{name}(...) FILTER (WHERE ...)")));
    }
    if !params.order_by.is_empty() && !matches!(name.as_str(), "min" | "max" | "count" | "sum" | "avg") {
        return Err(not_incremental(&format!("{name}(... ORDER BY ...)")));
    }
    for arg in &params.args {
        check_expr(arg)?;
    }
    let single_arg = || -> Result<Expr> {
        match params.args.as_slice() {
            [arg] => Ok(arg.clone()),
            _ => Err(not_incremental(&format!("{name} with {} arguments", params.args.len()))),
        }
    };
    let (kind, arg) = match (name.as_str(), params.distinct) {
        ("count", false) => match params.args.as_slice() {
            [] => (AggregateKind::CountRows, None),
            [Expr::Literal(value, _)] if !value.is_null() => (AggregateKind::CountRows, None),
            _ => (AggregateKind::Count, Some(single_arg()?)),
        },
        ("count", true) => (AggregateKind::CountDistinct, Some(single_arg()?)),
        ("sum", false) => (AggregateKind::Sum, Some(single_arg()?)),
        ("avg" | "mean", false) => (AggregateKind::Avg, Some(single_arg()?)),
        ("min" | "bool_and", _) => (AggregateKind::Min, Some(single_arg()?)),
        ("max" | "bool_or", _) => (AggregateKind::Max, Some(single_arg()?)),
        (other, true) => return Err(not_incremental(&format!("{other}(DISTINCT ...)"))),
        (other, false) => {
            return Err(not_incremental(&format!(
                "the aggregate function {other}() (count, count(DISTINCT), sum, avg, min, max, bool_and and bool_or are)"
            )));
        }
    };
    let arg_type = match &arg {
        Some(arg) => Some(arg.get_type(input_schema)?),
        None => None,
    };
    let display = if kind == AggregateKind::CountRows { "count(*)".to_string() } else { display };
    Ok(AggregateCall { kind, arg, arg_type, output_type, display })
}

fn plan_join(context: &PlanContext<'_>, join: &Join) -> Result<PlanNode> {
    let join_type = match join.join_type {
        JoinType::Inner => JoinKind::Inner,
        JoinType::Left => JoinKind::Left,
        JoinType::Right => JoinKind::Right,
        JoinType::Full => JoinKind::Full,
        JoinType::LeftSemi => JoinKind::LeftSemi,
        JoinType::RightSemi => JoinKind::RightSemi,
        JoinType::LeftAnti if !join.null_aware => JoinKind::LeftAnti,
        JoinType::RightAnti => JoinKind::RightAnti,
        JoinType::LeftAnti => return Err(not_incremental("NOT IN (subquery); use NOT EXISTS")),
        other => return Err(not_incremental(&format!("{other} joins"))),
    };
    for (l, r) in &join.on {
        check_expr(l)?;
        check_expr(r)?;
    }
    if let Some(filter) = &join.filter {
        check_expr(filter)?;
    }
    let left = plan_node(context, &join.left)?;
    let right = plan_node(context, &join.right)?;
    Ok(PlanNode {
        kind: NodeKind::Join {
            left: Box::new(left),
            right: Box::new(right),
            on: join.on.clone(),
            filter: join.filter.clone(),
            join_type,
            nulls_equal: join.null_equality == NullEquality::NullEqualsNull,
        },
        schema: Arc::clone(&join.schema),
    })
}

fn plan_union(context: &PlanContext<'_>, union: &Union) -> Result<PlanNode> {
    let inputs = union.inputs.iter().map(|input| plan_node(context, input)).collect::<Result<Vec<_>>>()?;
    Ok(PlanNode { kind: NodeKind::Union { inputs }, schema: Arc::clone(&union.schema) })
}

fn plan_distinct(context: &PlanContext<'_>, distinct: &Distinct) -> Result<PlanNode> {
    match distinct {
        Distinct::All(input) => {
            let input = plan_node(context, input)?;
            let group_exprs = input.schema.columns().into_iter().map(Expr::Column).collect();
            let schema = Arc::clone(&input.schema);
            Ok(PlanNode {
                kind: NodeKind::Aggregate { input: Box::new(input), group_exprs, aggregates: Vec::new() },
                schema,
            })
        }
        Distinct::On(_) => Err(not_incremental("DISTINCT ON")),
    }
}

fn plan_sort(context: &PlanContext<'_>, sort: &Sort, skip: usize, fetch: Option<usize>) -> Result<PlanNode> {
    let input = plan_node(context, &sort.input)?;
    let Some(fetch) = fetch else {
        // A view is a set: without LIMIT its order means nothing. Queries order their results.
        return Ok(input);
    };
    let order = sort
        .expr
        .iter()
        .map(|s| {
            check_expr(&s.expr)?;
            Ok(SortKey { expr: s.expr.clone(), descending: !s.asc, nulls_first: s.nulls_first })
        })
        .collect::<Result<Vec<_>>>()?;
    let schema = Arc::clone(&input.schema);
    Ok(PlanNode { kind: NodeKind::TopK { input: Box::new(input), order, skip, fetch }, schema })
}

fn plan_limit(context: &PlanContext<'_>, limit: &Limit) -> Result<PlanNode> {
    let skip = match limit.get_skip_type()? {
        SkipType::Literal(skip) => skip,
        SkipType::UnsupportedExpr => return Err(not_incremental("OFFSET with a non-constant expression")),
    };
    let fetch = match limit.get_fetch_type()? {
        FetchType::Literal(fetch) => fetch,
        FetchType::UnsupportedExpr => return Err(not_incremental("LIMIT with a non-constant expression")),
    };
    match limit.input.as_ref() {
        LogicalPlan::Sort(sort) => {
            let fetch = match (fetch, sort.fetch) {
                (Some(f), Some(s)) => Some(f.min(s.saturating_sub(skip))),
                (f, s) => f.or(s.map(|s| s.saturating_sub(skip))),
            };
            match fetch {
                Some(fetch) => plan_sort(context, sort, skip, Some(fetch)),
                None => Err(not_incremental("OFFSET without LIMIT")),
            }
        }
        _ => Err(not_incremental("LIMIT or OFFSET without ORDER BY (the rows kept would be arbitrary)")),
    }
}

fn plan_alias(context: &PlanContext<'_>, alias: &SubqueryAlias) -> Result<PlanNode> {
    let input = plan_node(context, &alias.input)?;
    // Same columns in the same order: only the qualifiers change.
    Ok(PlanNode { kind: input.kind, schema: Arc::clone(&alias.schema) })
}

fn plan_values(values: &Values) -> Result<PlanNode> {
    for row in &values.values {
        for expr in row {
            check_expr(expr)?;
        }
    }
    Ok(PlanNode { kind: NodeKind::Constant { rows: values.values.clone() }, schema: Arc::clone(&values.schema) })
}

fn plan_empty(empty: &EmptyRelation) -> Result<PlanNode> {
    let rows = if empty.produce_one_row { vec![Vec::new()] } else { Vec::new() };
    Ok(PlanNode { kind: NodeKind::Constant { rows }, schema: Arc::clone(&empty.schema) })
}
