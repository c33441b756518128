//! One client's session over a shared [`Database`]: its own transaction block.
//!
//! Writes are serialized: a session holds the database's writer lease from the first write
//! of a transaction block to its COMMIT or ROLLBACK (and any write outside a block holds it
//! for that statement), so another session's writes wait for the block to end. A block that
//! only reads never takes the lease (drivers that open a block for every query do not stall
//! writers). Queries never wait for the lease, and do not see another session's uncommitted
//! changes; source epochs go on meanwhile.

use std::sync::Arc;

use changeflow_sql::parser::{ParsedStatement, Statement};
use datafusion::sql::sqlparser::ast;
use tokio::sync::OwnedMutexGuard;

use crate::database::Database;
use crate::engine::Output;
use crate::error::{EngineError, Result};

pub struct Session {
    database: Arc<Database>,
    block: Block,
}

/// The session's transaction block.
enum Block {
    None,
    /// BEGIN was run, nothing written yet: the engine has no transaction open.
    Reading,
    /// The block wrote: the engine's transaction is this session's, under the writer lease.
    Writing(OwnedMutexGuard<()>),
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
        Statement::CreateSource(_)
        | Statement::DropSource { .. }
        | Statement::CreateSink(_)
        | Statement::DropSink { .. } => Access::Write,
    }
}

fn end_tag(statement: &ParsedStatement) -> &'static str {
    match &statement.statement {
        Statement::Sql(sql) if matches!(sql.as_ref(), ast::Statement::Rollback { .. }) => "ROLLBACK",
        _ => "COMMIT",
    }
}

impl Session {
    pub fn new(database: Arc<Database>) -> Self {
        Self { database, block: Block::None }
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// Whether this session has a transaction block open.
    pub fn in_transaction(&self) -> bool {
        !matches!(self.block, Block::None)
    }

    pub async fn execute(&mut self, statement: &ParsedStatement) -> Result<Output> {
        let writing = matches!(self.block, Block::Writing(_));
        match access(statement) {
            Access::Read => self.database.execute_as(statement, writing).await,
            Access::Write if writing => self.database.execute_as(statement, true).await,
            Access::Write if matches!(self.block, Block::Reading) => {
                // The block's first write opens the engine's transaction under the lease.
                let lease = Arc::clone(&self.database.writer).lock_owned().await;
                self.database.engine().await.execute_sql_text("BEGIN").await?;
                self.block = Block::Writing(lease);
                self.database.execute_as(statement, true).await
            }
            Access::Write => {
                let _lease = Arc::clone(&self.database.writer).lock_owned().await;
                self.database.execute_as(statement, true).await
            }
            Access::Begin => {
                if self.in_transaction() {
                    return Err(EngineError::State("there is already a transaction in progress".into()));
                }
                self.block = Block::Reading;
                Ok(Output::Command("BEGIN".into()))
            }
            Access::End => match std::mem::replace(&mut self.block, Block::None) {
                Block::None => Err(EngineError::State("there is no transaction in progress".into())),
                // Nothing was written: nothing to commit or undo.
                Block::Reading => Ok(Output::Command(end_tag(statement).into())),
                // The block ends whatever the outcome (the engine has closed it); the lease
                // goes when this returns.
                Block::Writing(_lease) => self.database.execute_as(statement, true).await,
            },
        }
    }

    /// Ends the session: an open transaction block is rolled back.
    pub async fn close(&mut self) {
        if let Block::Writing(_lease) = std::mem::replace(&mut self.block, Block::None) {
            let mut engine = self.database.engine().await;
            if let Err(error) = engine.execute_sql_text("ROLLBACK").await {
                tracing::warn!(%error, "rolling back the transaction of a closed session failed");
            }
        }
    }
}
