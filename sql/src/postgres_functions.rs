//! Functions PostgreSQL users reach for first that DataFusion lacks or names differently:
//! `pg_typeof(x)`, a number times (or an interval divided by) a number for intervals
//! (`3 * interval '1 day'`, planned by [`IntervalArithmetic`]), and `generate_series(a, b
//! [, step])` as a table function whose column is named `generate_series`, as in PostgreSQL;
//! `current_user`, `session_user`, `user` and `current_catalog`, which a session binds to its
//! own values ([`bind_session_user`]).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, IntervalMonthDayNanoArray};
use datafusion::arrow::datatypes::{DataType, Field, IntervalMonthDayNano, IntervalUnit, Schema, SchemaRef};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl, TableProvider};
use datafusion::common::{DFSchema, Result as DFResult, ScalarValue, plan_err};
use datafusion::execution::SessionState;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TableType, Volatility,
};
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator};

/// Adds the functions and the interval arithmetic to a session.
pub fn register(state: &mut SessionState) -> DFResult<()> {
    use datafusion::execution::FunctionRegistry;
    state.register_udf(Arc::new(ScalarUDF::new_from_impl(PgTypeof::new())))?;
    state.register_udf(interval_times())?;
    state.register_expr_planner(Arc::new(IntervalArithmetic))?;
    for name in SESSION_NAMES {
        state.register_udf(Arc::new(datafusion::logical_expr::create_udf(
            name,
            vec![],
            DataType::Utf8,
            // Stable: a view may not use them (its rows would depend on who reads it).
            Volatility::Stable,
            Arc::new(move |_args: &[ColumnarValue]| {
                let value = if name == "current_catalog" { DATABASE } else { DEFAULT_USER };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(value.to_string()))))
            }),
        )))?;
    }
    Ok(())
}

/// The PostgreSQL version changeflow answers as (`server_version`, `version()`): psql
/// warns about servers newer than itself and picks its catalog queries by it.
pub const SERVER_VERSION: &str = "15.18";

/// [`SERVER_VERSION`] as `server_version_num`.
pub const SERVER_VERSION_NUM: &str = "150018";

/// The database name clients see (`current_database()`, `current_catalog`).
pub const DATABASE: &str = "changeflow";

/// The user of statements run outside a client session (`run`, the REPL).
pub const DEFAULT_USER: &str = "changeflow";

/// PostgreSQL's parenthesis-less functions about the session.
const SESSION_NAMES: [&str; 4] = ["current_user", "session_user", "user", "current_catalog"];

/// The session function a parenthesis-less call names (`current_user`, not `"current_user"`
/// or `current_user()`).
fn session_function(expr: &ast::Expr) -> Option<&'static str> {
    let ast::Expr::Function(function) = expr else { return None };
    if !matches!(function.args, ast::FunctionArguments::None) || function.name.0.len() != 1 {
        return None;
    }
    let ast::ObjectNamePart::Identifier(ident) = &function.name.0[0] else { return None };
    if ident.quote_style.is_some() {
        return None;
    }
    SESSION_NAMES.into_iter().find(|name| ident.value.eq_ignore_ascii_case(name))
}

/// Replaces `current_user`, `session_user` and `user` in a query or a write by the session's
/// user (PostgreSQL's values for a session without SET ROLE); `None` when the statement
/// names none of them. Views are left alone: the planner refuses them there.
pub fn bind_session_user(statement: &ast::Statement, user: &str) -> Option<ast::Statement> {
    use std::ops::ControlFlow;
    if !matches!(
        statement,
        ast::Statement::Query(_)
            | ast::Statement::Insert(_)
            | ast::Statement::Update { .. }
            | ast::Statement::Delete(_)
            | ast::Statement::Explain { .. }
    ) {
        return None;
    }
    let mentions = ast::visit_expressions(statement, |expr| match session_function(expr) {
        Some(_) => ControlFlow::Break(()),
        None => ControlFlow::Continue(()),
    });
    if mentions.is_continue() {
        return None;
    }
    let mut bound = statement.clone();
    if let ast::Statement::Query(query) = &mut bound {
        name_session_columns(&mut query.body);
    }
    let _ = ast::visit_expressions_mut(&mut bound, |expr| {
        match session_function(expr) {
            Some("current_catalog") => *expr = ast::Expr::value(ast::Value::SingleQuotedString(DATABASE.into())),
            Some(_) => *expr = ast::Expr::value(ast::Value::SingleQuotedString(user.into())),
            None => {}
        }
        ControlFlow::<()>::Continue(())
    });
    Some(bound)
}

/// Output columns that are a session function keep its name once it is bound to a value
/// (`SELECT current_user` answers a column named `current_user`).
fn name_session_columns(body: &mut ast::SetExpr) {
    match body {
        ast::SetExpr::Select(select) => {
            for item in &mut select.projection {
                if let ast::SelectItem::UnnamedExpr(expr) = item
                    && let Some(name) = session_function(expr)
                {
                    *item = ast::SelectItem::ExprWithAlias { expr: expr.clone(), alias: ast::Ident::new(name) };
                }
            }
        }
        ast::SetExpr::SetOperation { left, right, .. } => {
            name_session_columns(left);
            name_session_columns(right);
        }
        ast::SetExpr::Query(query) => name_session_columns(&mut query.body),
        _ => {}
    }
}

/// Turns the parenthesis-less session functions left in a statement into calls DataFusion
/// plans (it would read them as column names).
pub fn call_session_functions(statement: &mut ast::Statement) {
    let _ = ast::visit_expressions_mut(statement, |expr| {
        if session_function(expr).is_some()
            && let ast::Expr::Function(function) = expr
        {
            function.args = ast::FunctionArguments::List(ast::FunctionArgumentList {
                duplicate_treatment: None,
                args: vec![],
                clauses: vec![],
            });
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// `pg_typeof(x)`: the PostgreSQL name of the argument's type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTypeof {
    signature: Signature,
}

impl PgTypeof {
    fn new() -> Self {
        Self { signature: Signature::any(1, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for PgTypeof {
    fn name(&self) -> &str {
        "pg_typeof"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DFResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DFResult<ColumnarValue> {
        let data_type = args.arg_fields.first().map(|f| f.data_type().clone()).unwrap_or(DataType::Null);
        let name = match &data_type {
            DataType::Null => "unknown".to_string(),
            DataType::Decimal128(..) => "numeric".to_string(),
            other => crate::ddl::postgres_type_name(other).unwrap_or_else(|| other.to_string().to_ascii_lowercase()),
        };
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name))))
    }
}

/// `interval_times(interval, factor)`: what `interval * number` means in PostgreSQL. The
/// fraction of a month becomes days (30 a month) and the fraction of a day time.
fn interval_times() -> Arc<ScalarUDF> {
    Arc::new(datafusion::logical_expr::create_udf(
        "interval_times",
        vec![DataType::Interval(IntervalUnit::MonthDayNano), DataType::Float64],
        DataType::Interval(IntervalUnit::MonthDayNano),
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let intervals = arrays[0].as_primitive::<datafusion::arrow::datatypes::IntervalMonthDayNanoType>();
            let factors = arrays[1].as_primitive::<datafusion::arrow::datatypes::Float64Type>();
            let product: IntervalMonthDayNanoArray = intervals
                .iter()
                .zip(factors.iter())
                .map(|(interval, factor)| Some(times(interval?, factor?)))
                .collect();
            let product: ArrayRef = Arc::new(product);
            Ok(if args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_))) {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&product, 0)?)
            } else {
                ColumnarValue::Array(product)
            })
        }),
    ))
}

fn times(interval: IntervalMonthDayNano, factor: f64) -> IntervalMonthDayNano {
    const NANOS_PER_DAY: f64 = 86_400_000_000_000.0;
    let months = f64::from(interval.months) * factor;
    let whole_months = months.trunc();
    let days = f64::from(interval.days) * factor + (months - whole_months) * 30.0;
    let whole_days = days.trunc();
    let nanos = interval.nanoseconds as f64 * factor + (days - whole_days) * NANOS_PER_DAY;
    IntervalMonthDayNano::new(whole_months as i32, whole_days as i32, nanos.round() as i64)
}

/// Plans `number * interval`, `interval * number` and `interval / number`, which
/// DataFusion's type coercion refuses, as [`interval_times`].
#[derive(Debug)]
pub struct IntervalArithmetic;

impl ExprPlanner for IntervalArithmetic {
    fn plan_binary_op(&self, expr: RawBinaryExpr, schema: &DFSchema) -> DFResult<PlannerResult<RawBinaryExpr>> {
        let is_interval = |e: &Expr| matches!(e.get_type(schema), Ok(DataType::Interval(_)));
        let is_number = |e: &Expr| e.get_type(schema).is_ok_and(|t| t.is_numeric());
        let (interval, factor) = match expr.op {
            BinaryOperator::Multiply if is_interval(&expr.left) && is_number(&expr.right) => {
                (expr.left.clone(), expr.right.clone().cast_to(&DataType::Float64, schema)?)
            }
            BinaryOperator::Multiply if is_number(&expr.left) && is_interval(&expr.right) => {
                (expr.right.clone(), expr.left.clone().cast_to(&DataType::Float64, schema)?)
            }
            BinaryOperator::Divide if is_interval(&expr.left) && is_number(&expr.right) => {
                let divisor = expr.right.clone().cast_to(&DataType::Float64, schema)?;
                (expr.left.clone(), Expr::Literal(ScalarValue::Float64(Some(1.0)), None) / divisor)
            }
            _ => return Ok(PlannerResult::Original(expr)),
        };
        let interval = interval.cast_to(&DataType::Interval(IntervalUnit::MonthDayNano), schema)?;
        Ok(PlannerResult::Planned(Expr::ScalarFunction(ScalarFunction::new_udf(
            interval_times(),
            vec![interval, factor],
        ))))
    }
}

/// `generate_series(start, stop [, step])` over integers, dates or timestamps (DataFusion's),
/// with its column named `generate_series` as PostgreSQL names it.
#[derive(Debug)]
pub struct GenerateSeries;

impl TableFunctionImpl for GenerateSeries {
    fn call_with_args(&self, args: TableFunctionArgs) -> DFResult<Arc<dyn TableProvider>> {
        // Arguments such as '2026-12-01'::timestamp are constants once simplified.
        let simplifier = datafusion::optimizer::simplify_expressions::ExprSimplifier::new(
            datafusion::logical_expr::simplify::SimplifyContext::default(),
        );
        let exprs = args
            .exprs()
            .iter()
            .map(|e| {
                use datafusion::common::tree_node::TreeNode;
                simplifier.simplify(e.clone().transform_up(crate::context::complete_time_literal)?.data)
            })
            .collect::<DFResult<Vec<_>>>()?;
        let series = datafusion::functions_table::generate_series::GenerateSeriesFunc {};
        let inner = series.call_with_args(TableFunctionArgs::new(&exprs, args.session()))?;
        let fields = inner
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_name("generate_series"))
            .collect::<Vec<Field>>();
        if fields.len() != 1 {
            return plan_err!("generate_series yields one column");
        }
        Ok(Arc::new(Renamed { schema: Arc::new(Schema::new(fields)), inner }))
    }
}

/// A one-column table provider under another column name.
#[derive(Debug)]
struct Renamed {
    schema: SchemaRef,
    inner: Arc<dyn TableProvider>,
}

#[async_trait]
impl TableProvider for Renamed {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DFResult<Arc<dyn ExecutionPlan>> {
        let plan = self.inner.scan(state, projection, filters, limit).await?;
        if plan.schema().fields().is_empty() {
            return Ok(plan);
        }
        let column: Arc<dyn datafusion::physical_expr::PhysicalExpr> =
            Arc::new(PhysicalColumn::new(plan.schema().field(0).name(), 0));
        Ok(Arc::new(ProjectionExec::try_new(vec![(column, "generate_series".to_string())], plan)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interval_times_a_number_carries_fractions_down() {
        let month_and_day = IntervalMonthDayNano::new(1, 1, 0);
        assert_eq!(times(month_and_day, 3.0), IntervalMonthDayNano::new(3, 3, 0));
        // 1.5 months = 1 month 15 days; 1.5 days = 1 day 12 hours.
        assert_eq!(times(month_and_day, 1.5), IntervalMonthDayNano::new(1, 16, 43_200_000_000_000));
        assert_eq!(times(IntervalMonthDayNano::new(0, 0, 3_600_000_000_000), 0.5).nanoseconds, 1_800_000_000_000);
    }
}
