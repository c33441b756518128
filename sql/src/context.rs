//! DataFusion's `ContextProvider` over the catalog: name resolution, types and functions for
//! DataFusion's SQL planner. Views are inlined by re-planning their query; stored relations
//! resolve to a table source that is schema-only for planning, or to the data the engine
//! supplies for executing a query.

use std::borrow::Cow;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::default_table_source::provider_as_source;
use datafusion::common::TableReference;
use datafusion::config::ConfigOptions;
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::{DataFusionError, Result as DFResult};
use datafusion::execution::SessionState;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::planner::{ExprPlanner, TypePlanner};
use datafusion::logical_expr::{
    AggregateUDF, Expr, HigherOrderUDF, LogicalPlan, LogicalPlanBuilder, ScalarUDF, TableSource, WindowUDF,
};
use datafusion::prelude::SessionConfig;
use datafusion::sql::planner::{ContextProvider, ParserOptions, SqlToRel};
use datafusion::sql::sqlparser::ast;

use crate::catalog::{Catalog, Relation, RelationKind};
use crate::error::Result;

/// Supplies the contents of stored relations when a query is executed.
pub trait RelationData {
    fn provider(&self, relation: &Relation) -> DFResult<Arc<dyn TableProvider>>;
}

/// A DataFusion session configured the way changeflow plans and runs SQL: PostgreSQL
/// dialect, plain UTF-8 strings, a single partition (queries are small and local).
pub fn new_session_state() -> SessionState {
    let mut config = SessionConfig::new().with_target_partitions(1).with_information_schema(false);
    let options = config.options_mut();
    options.sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    options.sql_parser.map_string_types_to_utf8view = false;
    options.execution.time_zone = Some("+00:00".into());
    let mut state = SessionStateBuilder::new().with_config(config).with_default_features().build();
    // `SELECT version()` answers like PostgreSQL does, naming changeflow: clients parse it.
    let version = format!(
        "PostgreSQL {} (changeflow {}), an incremental view engine",
        crate::postgres_functions::SERVER_VERSION,
        env!("CARGO_PKG_VERSION")
    );
    let udf = datafusion::logical_expr::create_udf(
        "version",
        vec![],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(move |_args: &[datafusion::logical_expr::ColumnarValue]| {
            Ok(datafusion::logical_expr::ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Utf8(Some(
                version.clone(),
            ))))
        }),
    );
    // Registering replaces DataFusion's own `version()`; there is no failure to report.
    let _ = datafusion::execution::FunctionRegistry::register_udf(&mut state, Arc::new(udf));
    crate::system_catalog::register_functions(&mut state);
    // Registering replaces functions of the same name; nothing can fail.
    let _ = crate::postgres_functions::register(&mut state);
    state
}

pub fn parser_options() -> ParserOptions {
    ParserOptions { map_string_types_to_utf8view: false, enable_ident_normalization: true, ..ParserOptions::new() }
}

/// Resolves names against the catalog for one planning or execution.
pub struct PlanContext<'a> {
    catalog: &'a Catalog,
    state: &'a SessionState,
    data: Option<&'a dyn RelationData>,
}

impl<'a> PlanContext<'a> {
    /// A context for planning only: stored relations have their schema but no rows.
    pub fn for_planning(catalog: &'a Catalog, state: &'a SessionState) -> Self {
        Self { catalog, state, data: None }
    }

    /// A context whose stored relations read the engine's current contents.
    pub fn for_execution(catalog: &'a Catalog, state: &'a SessionState, data: &'a dyn RelationData) -> Self {
        Self { catalog, state, data: Some(data) }
    }

    pub fn catalog(&self) -> &Catalog {
        self.catalog
    }

    pub fn state(&self) -> &SessionState {
        self.state
    }

    /// Plans any SQL statement DataFusion's planner understands (queries and DML).
    pub fn plan_statement(&self, statement: &ast::Statement) -> Result<LogicalPlan> {
        let planner = SqlToRel::new_with_options(self, parser_options());
        let mut statement = statement.clone();
        crate::system_catalog::normalize(&mut statement);
        crate::postgres_functions::call_session_functions(&mut statement);
        crate::names::name_duplicate_items(&mut statement);
        crate::arrays::read_array_literals(&mut statement, self.catalog)?;
        Ok(planner.sql_statement_to_plan(statement)?)
    }

    pub fn plan_query(&self, query: &ast::Query) -> Result<LogicalPlan> {
        self.plan_statement(&ast::Statement::Query(Box::new(query.clone())))
    }

    /// Runs DataFusion's analyzer (type coercion) and optimizer over a plan.
    pub fn optimize(&self, plan: &LogicalPlan) -> Result<LogicalPlan> {
        optimize(self.state, plan)
    }
}

/// A view: DataFusion's planner inlines the plan returned by `get_logical_plan`.
struct ViewSource {
    plan: LogicalPlan,
    schema: SchemaRef,
}

impl TableSource for ViewSource {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn get_logical_plan(&self) -> Option<Cow<'_, LogicalPlan>> {
        Some(Cow::Borrowed(&self.plan))
    }
}

impl ContextProvider for PlanContext<'_> {
    fn get_table_source(&self, name: TableReference) -> DFResult<Arc<dyn TableSource>> {
        if name.schema() == Some(crate::system_catalog::INFORMATION_SCHEMA)
            && let Some(table) = crate::system_catalog::information_schema_table(self.catalog, name.table())?
        {
            return Ok(provider_as_source(table));
        }
        if crate::system_catalog::is_system(name.schema(), name.table(), self.catalog)
            && let Some(table) = crate::system_catalog::table(self.catalog, name.table())?
        {
            return Ok(provider_as_source(table));
        }
        if let Some(schema) = name.schema()
            && schema != "public"
        {
            return Err(DataFusionError::Plan(format!("schema \"{schema}\" does not exist")));
        }
        let relation = self
            .catalog
            .relation(name.table())
            .ok_or_else(|| DataFusionError::Plan(format!("relation \"{}\" does not exist", name.table())))?;
        match relation.kind {
            RelationKind::View => {
                let query = relation
                    .query
                    .as_ref()
                    .ok_or_else(|| DataFusionError::Internal(format!("view {} has no query", relation.name)))?;
                let plan = self
                    .plan_query(query)
                    .map_err(|e| DataFusionError::Plan(format!("in view \"{}\": {e}", relation.name)))?;
                Ok(Arc::new(ViewSource { plan, schema: Arc::clone(&relation.schema) }))
            }
            _ => match self.data {
                Some(data) => Ok(provider_as_source(data.provider(relation)?)),
                None => Ok(provider_as_source(Arc::new(EmptyTable::new(Arc::clone(&relation.schema))))),
            },
        }
    }

    /// `changes(relation)`: the relation's change stream, which the engine registers before
    /// planning a view or sink over it. Ad-hoc queries cannot read it (nothing is stored).
    fn get_table_function_source(&self, name: &str, args: Vec<Expr>) -> DFResult<Arc<dyn TableSource>> {
        if name.eq_ignore_ascii_case("generate_series") {
            use datafusion::catalog::{TableFunctionArgs, TableFunctionImpl};
            let series = crate::postgres_functions::GenerateSeries;
            return Ok(provider_as_source(series.call_with_args(TableFunctionArgs::new(&args, self.state))?));
        }
        if !name.eq_ignore_ascii_case("changes") {
            return Err(DataFusionError::Plan(format!("table function {name}(...) does not exist")));
        }
        let base = match args.as_slice() {
            [Expr::Column(column)] => column.name.clone(),
            [Expr::Literal(datafusion::common::ScalarValue::Utf8(Some(name)), _)] => name.clone(),
            _ => {
                return Err(DataFusionError::Plan(
                    "changes(...) takes one relation name, as in changes(orders)".into(),
                ));
            }
        };
        let stream = crate::change_stream::stream_name(&base);
        if self.data.is_some() {
            return Err(DataFusionError::Plan(format!(
                "{stream} is a stream of change events and keeps no rows to query; read it in CREATE MATERIALIZED \
                 VIEW ... AS SELECT ... FROM {stream}, or deliver it with CREATE SINK ... FROM {stream}"
            )));
        }
        let relation = match self.catalog.relation(&stream) {
            Some(relation) => relation.clone(),
            None => crate::change_stream::stream_relation(self.catalog, &base)
                .map_err(|e| DataFusionError::Plan(e.to_string()))?,
        };
        let plan = LogicalPlanBuilder::scan(
            stream.as_str(),
            provider_as_source(Arc::new(EmptyTable::new(Arc::clone(&relation.schema)))),
            None,
        )?
        .build()?;
        Ok(Arc::new(ViewSource { plan, schema: relation.schema }))
    }

    fn get_expr_planners(&self) -> &[Arc<dyn ExprPlanner>] {
        self.state.expr_planners()
    }

    fn get_type_planner(&self) -> Option<Arc<dyn TypePlanner>> {
        None
    }

    fn get_function_meta(&self, name: &str) -> Option<Arc<ScalarUDF>> {
        self.state.scalar_functions().get(name).cloned()
    }

    fn get_higher_order_meta(&self, name: &str) -> Option<Arc<HigherOrderUDF>> {
        self.state.higher_order_functions().get(name).cloned()
    }

    fn get_aggregate_meta(&self, name: &str) -> Option<Arc<AggregateUDF>> {
        self.state.aggregate_functions().get(name).cloned()
    }

    fn get_window_meta(&self, name: &str) -> Option<Arc<WindowUDF>> {
        self.state.window_functions().get(name).cloned()
    }

    fn get_variable_type(&self, _variable_names: &[String]) -> Option<DataType> {
        None
    }

    fn options(&self) -> &ConfigOptions {
        self.state.config_options()
    }

    fn udf_names(&self) -> Vec<String> {
        self.state.scalar_functions().keys().cloned().collect()
    }

    fn higher_order_function_names(&self) -> Vec<String> {
        self.state.higher_order_functions().keys().cloned().collect()
    }

    fn udaf_names(&self) -> Vec<String> {
        self.state.aggregate_functions().keys().cloned().collect()
    }

    fn udwf_names(&self) -> Vec<String> {
        self.state.window_functions().keys().cloned().collect()
    }
}

/// Runs DataFusion's analyzer (type coercion), then changeflow's literal normalization, then
/// DataFusion's optimizer.
pub fn optimize(state: &SessionState, plan: &LogicalPlan) -> Result<LogicalPlan> {
    let analyzed = state.analyzer().execute_and_check(plan.clone(), state.config_options(), |_, _| {})?;
    let normalized = normalize_time_literals(analyzed)?;
    Ok(state.optimizer().optimize(normalized, state, |_, _| {})?)
}

/// A timestamp as PostgreSQL writes and reads it, in the form Arrow's parser takes:
/// seconds added when absent (`2026-12-01 18:00`), and a zone offset of hours only (`+00`,
/// `-08`, as PostgreSQL prints timestamptz) or without a colon (`+0530`) written `+HH:MM`.
/// `None` when the text has another shape (it is then left to Arrow as it is).
pub fn postgres_timestamp_text(text: &str) -> Option<String> {
    let text = text.trim();
    let bytes = text.as_bytes();
    let date_ok = bytes.len() >= 16
        && bytes[..10].iter().enumerate().all(|(i, b)| if i == 4 || i == 7 { *b == b'-' } else { b.is_ascii_digit() })
        && matches!(bytes[10], b' ' | b'T');
    if !date_ok {
        return None;
    }
    let rest = &text[11..];
    let zone_at = rest.find(['+', '-', 'Z', 'z']).unwrap_or(rest.len());
    let (time, zone) = rest.split_at(zone_at);
    let time = time.trim_end();
    let digits_at = |s: &str, at: &[usize]| at.iter().all(|&i| s.as_bytes().get(i).is_some_and(u8::is_ascii_digit));
    let time = match time.len() {
        5 if digits_at(time, &[0, 1, 3, 4]) && &time[2..3] == ":" => format!("{time}:00"),
        n if n >= 8 && digits_at(time, &[0, 1, 3, 4, 6, 7]) && &time[2..3] == ":" && &time[5..6] == ":" => {
            time.to_string()
        }
        _ => return None,
    };
    let zone = match zone.len() {
        0 => String::new(),
        1 => "+00:00".to_string(),
        3 if digits_at(zone, &[1, 2]) => format!("{zone}:00"),
        5 if digits_at(zone, &[1, 2, 3, 4]) => format!("{}:{}", &zone[..3], &zone[3..]),
        6 if digits_at(zone, &[1, 2, 4, 5]) && &zone[3..4] == ":" => zone.to_string(),
        _ => return None,
    };
    let normalized = format!("{} {time}{zone}", &text[..10]);
    (normalized != text).then_some(normalized)
}

/// PostgreSQL's timestamp texts that Arrow's parser does not take (see
/// [`postgres_timestamp_text`]) are rewritten where they are cast to a timestamp, and
/// nowhere else.
fn normalize_time_literals(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::common::tree_node::TreeNode;

    // Output columns keep the names they had (the literal as written).
    let rewritten = plan.transform_up_with_subqueries(|node| {
        let names = datafusion::logical_expr::expr_rewriter::NamePreserver::new(&node);
        node.map_expressions(|e| {
            let saved = names.save(&e);
            Ok(e.transform_up(complete_time_literal)?.update_data(|e| saved.restore(e)))
        })
    })?;
    Ok(rewritten.data)
}

/// A cast of a PostgreSQL timestamp text to a timestamp, with the text in the form Arrow's
/// parser takes (see [`postgres_timestamp_text`]).
pub(crate) fn complete_time_literal(
    expr: datafusion::logical_expr::Expr,
) -> datafusion::error::Result<datafusion::common::tree_node::Transformed<datafusion::logical_expr::Expr>> {
    use datafusion::common::ScalarValue;
    use datafusion::common::tree_node::Transformed;
    use datafusion::logical_expr::{Cast, Expr, TryCast};
    let (inner, data_type, is_try) = match &expr {
        Expr::Cast(Cast { expr, field }) => (expr.as_ref(), field.data_type().clone(), false),
        Expr::TryCast(TryCast { expr, field }) => (expr.as_ref(), field.data_type().clone(), true),
        _ => return Ok(Transformed::no(expr)),
    };
    if !matches!(data_type, DataType::Timestamp(_, _)) {
        return Ok(Transformed::no(expr));
    }
    let Expr::Literal(
        ScalarValue::Utf8(Some(text)) | ScalarValue::LargeUtf8(Some(text)) | ScalarValue::Utf8View(Some(text)),
        _,
    ) = inner
    else {
        return Ok(Transformed::no(expr));
    };
    let Some(completed) = postgres_timestamp_text(text) else { return Ok(Transformed::no(expr)) };
    let literal = Expr::Literal(ScalarValue::Utf8(Some(completed)), None);
    Ok(Transformed::yes(if is_try {
        Expr::TryCast(TryCast::new(Box::new(literal), data_type))
    } else {
        Expr::Cast(Cast::new(Box::new(literal), data_type))
    }))
}

#[cfg(test)]
mod tests {
    use super::postgres_timestamp_text;

    #[test]
    fn postgresql_timestamp_texts_become_what_arrow_parses() {
        for (given, expected) in [
            ("2026-12-01 18:00", Some("2026-12-01 18:00:00")),
            ("2026-12-01 10:00+00", Some("2026-12-01 10:00:00+00:00")),
            ("2026-12-01 10:00:05.25-08", Some("2026-12-01 10:00:05.25-08:00")),
            ("2026-12-01T10:00:00+0530", Some("2026-12-01 10:00:00+05:30")),
            ("2026-12-01 10:00:00Z", Some("2026-12-01 10:00:00+00:00")),
            ("2026-12-01 10:00:00", None),
            ("2026-12-01 10:00:00+05:30", None),
            ("2026-12-01", None),
            ("tomorrow at 10", None),
            ("2026-12-01 10:0x", None),
        ] {
            assert_eq!(postgres_timestamp_text(given).as_deref(), expected, "{given}");
        }
    }
}
