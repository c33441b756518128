//! SQL-level prepared statements of a session: `PREPARE name [(types)] AS statement`,
//! `EXECUTE name [(values)]` and `DEALLOCATE [PREPARE] name | ALL`, as psql users and
//! drivers in simple-query mode use them. A statement is kept as parsed; EXECUTE binds its
//! values in place of `$1`, `$2`, ... (cast to the declared types) and runs it.

use std::collections::HashMap;
use std::ops::ControlFlow;

use changeflow_sql::parser::{ParsedStatement, Statement, placeholder_number as placeholder};
use datafusion::sql::sqlparser::ast;

use crate::error::{EngineError, Result};

/// What a session prepared, by name.
#[derive(Default)]
pub struct PreparedStatements {
    statements: HashMap<String, Prepared>,
}

struct Prepared {
    types: Vec<ast::DataType>,
    statement: ast::Statement,
    /// The highest `$n` the statement uses.
    parameters: usize,
}

/// What a session does with one of these statements.
pub enum PreparedAction {
    /// PREPARE or DEALLOCATE was done: answer this command tag.
    Done(&'static str),
    /// EXECUTE: run this statement.
    Run(ParsedStatement),
}

fn error(sqlstate: &'static str, message: String) -> EngineError {
    EngineError::Prepared { sqlstate, message }
}

impl PreparedStatements {
    /// Handles PREPARE, EXECUTE and DEALLOCATE; `None` for any other statement.
    pub fn handle(&mut self, statement: &ParsedStatement) -> Option<Result<PreparedAction>> {
        let Statement::Sql(sql) = &statement.statement else { return None };
        Some(match sql.as_ref() {
            ast::Statement::Prepare { name, data_types, statement: inner } => {
                self.prepare(&name.value, data_types, inner).map(|()| PreparedAction::Done("PREPARE"))
            }
            ast::Statement::Execute { name: Some(name), parameters, immediate: false, .. } => {
                self.bind(&name.to_string(), parameters, statement).map(PreparedAction::Run)
            }
            ast::Statement::Deallocate { name, .. } => {
                self.deallocate(name).map(|()| PreparedAction::Done("DEALLOCATE"))
            }
            _ => return None,
        })
    }

    fn prepare(&mut self, name: &str, types: &[ast::DataType], statement: &ast::Statement) -> Result<()> {
        if self.statements.contains_key(name) {
            return Err(error("42P05", format!("prepared statement \"{name}\" already exists")));
        }
        // PostgreSQL's preparable statements.
        if !matches!(
            statement,
            ast::Statement::Query(_)
                | ast::Statement::Insert(_)
                | ast::Statement::Update(_)
                | ast::Statement::Delete(_)
        ) {
            return Err(error("42601", "PREPARE takes SELECT, VALUES, INSERT, UPDATE or DELETE".into()));
        }
        let mut parameters = 0;
        let _ = ast::visit_expressions(statement, |expr| {
            if let Some(n) = placeholder(expr) {
                parameters = parameters.max(n);
            }
            ControlFlow::<()>::Continue(())
        });
        if parameters > types.len() && !types.is_empty() {
            return Err(error("42P18", format!("could not determine data type of parameter ${}", types.len() + 1)));
        }
        let parameters = parameters.max(types.len());
        let prepared = Prepared { types: types.to_vec(), statement: statement.clone(), parameters };
        self.statements.insert(name.to_string(), prepared);
        Ok(())
    }

    fn bind(&self, name: &str, values: &[ast::Expr], original: &ParsedStatement) -> Result<ParsedStatement> {
        let prepared = self
            .statements
            .get(name)
            .ok_or_else(|| error("26000", format!("prepared statement \"{name}\" does not exist")))?;
        if values.len() != prepared.parameters {
            return Err(error(
                "42601",
                format!(
                    "wrong number of parameters for prepared statement \"{name}\": expected {}, got {}",
                    prepared.parameters,
                    values.len()
                ),
            ));
        }
        let mut statement = prepared.statement.clone();
        let _ = ast::visit_expressions_mut(&mut statement, |expr| {
            if let Some(n) = placeholder(expr)
                && let Some(value) = values.get(n - 1)
            {
                *expr = match prepared.types.get(n - 1) {
                    Some(data_type) => ast::Expr::Cast {
                        kind: ast::CastKind::DoubleColon,
                        expr: Box::new(ast::Expr::Nested(Box::new(value.clone()))),
                        data_type: data_type.clone(),
                        array: false,
                        format: None,
                    },
                    None => ast::Expr::Nested(Box::new(value.clone())),
                };
            }
            ControlFlow::<()>::Continue(())
        });
        Ok(ParsedStatement {
            text: statement.to_string(),
            statement: Statement::Sql(Box::new(statement)),
            position: original.position,
        })
    }

    fn deallocate(&mut self, name: &ast::Ident) -> Result<()> {
        if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") {
            self.statements.clear();
            return Ok(());
        }
        match self.statements.remove(&name.value) {
            Some(_) => Ok(()),
            None => Err(error("26000", format!("prepared statement \"{}\" does not exist", name.value))),
        }
    }
}
