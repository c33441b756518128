//! One client's session over a shared [`Database`]: its own transaction block.
//!
//! Writes are serialized: a session holds the database's writer lease from BEGIN to COMMIT
//! or ROLLBACK (and any write outside a block holds it for that statement), so another
//! session's writes wait for the block to end. Queries never wait for the lease, and do
//! not see another session's uncommitted changes; source epochs go on meanwhile.

use std::sync::Arc;

use changeflow_sql::parser::{ParsedStatement, Statement};
use datafusion::sql::sqlparser::ast;
use tokio::sync::OwnedMutexGuard;

use crate::database::Database;
use crate::engine::Output;
use crate::error::{EngineError, Result};

pub struct Session {
    database: Arc<Database>,
    /// The writer lease, held while this session has a transaction block open.
    lease: Option<OwnedMutexGuard<()>>,
}

/// How a statement relates to transactions.
enum Access {
    Read,
    Write,
    Begin,
    End,
}

fn access(statement: &ParsedStatement) -> Access {
    match &statement.statement {
        Statement::Sql(sql) => match sql.as_ref() {
            ast::Statement::Query(_) | ast::Statement::Explain { .. } => Access::Read,
            ast::Statement::StartTransaction { .. } => Access::Begin,
            ast::Statement::Commit { .. } | ast::Statement::Rollback { .. } => Access::End,
            _ => Access::Write,
        },
        Statement::Show(_) | Statement::ExplainView(_) | Statement::Subscribe { .. } => Access::Read,
        Statement::CreateSource(_) | Statement::DropSource { .. } => Access::Write,
    }
}

impl Session {
    pub fn new(database: Arc<Database>) -> Self {
        Self { database, lease: None }
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// Whether this session has a transaction block open.
    pub fn in_transaction(&self) -> bool {
        self.lease.is_some()
    }

    pub async fn execute(&mut self, statement: &ParsedStatement) -> Result<Output> {
        match access(statement) {
            Access::Read => self.database.execute_as(statement, self.lease.is_some()).await,
            Access::Write if self.lease.is_some() => self.database.execute_as(statement, true).await,
            Access::Write => {
                let _lease = Arc::clone(&self.database.writer).lock_owned().await;
                self.database.execute_as(statement, true).await
            }
            Access::Begin => {
                if self.lease.is_some() {
                    return Err(EngineError::State("there is already a transaction in progress".into()));
                }
                let lease = Arc::clone(&self.database.writer).lock_owned().await;
                let output = self.database.execute_as(statement, true).await?;
                self.lease = Some(lease);
                Ok(output)
            }
            Access::End => {
                if self.lease.is_none() {
                    return Err(EngineError::State("there is no transaction in progress".into()));
                }
                // The block ends whatever the outcome: the engine has closed it.
                let output = self.database.execute_as(statement, true).await;
                self.lease = None;
                output
            }
        }
    }

    /// Ends the session: an open transaction block is rolled back.
    pub async fn close(&mut self) {
        if self.lease.is_some() {
            let mut engine = self.database.engine().await;
            if let Err(error) = engine.execute_sql_text("ROLLBACK").await {
                tracing::warn!(%error, "rolling back the transaction of a closed session failed");
            }
            drop(engine);
            self.lease = None;
        }
    }
}
