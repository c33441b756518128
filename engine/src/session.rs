//! One client's session over a shared [`Database`]: its own transaction block.
//!
//! Writes are serialized: a session holds the database's writer lease from the first write
//! of a transaction block to its COMMIT or ROLLBACK (and any write outside a block holds it
//! for that statement), so another session's writes wait for the block to end. A block that
//! only reads never takes the lease (drivers that open a block for every query do not stall
//! writers). Queries never wait for the lease, and do not see another session's uncommitted
//! changes; source epochs go on meanwhile.
//!
//! However a session ends (closed, dropped, or its connection's task panicked), its open
//! transaction is rolled back: [`Drop`] hands the rollback to the runtime, and whoever takes
//! the writer lease next rolls back any transaction the engine still holds first (it can
//! only belong to a session that is gone), so no later write joins a transaction nobody
//! will commit.

use std::sync::Arc;

use changeflow_sql::parser::{ParsedStatement, Statement};
use datafusion::sql::sqlparser::ast;
use tokio::sync::OwnedMutexGuard;

use crate::database::Database;
use crate::engine::Output;
use crate::error::{EngineError, Result};
use crate::interrupt::Interrupt;
use crate::prepared::{PreparedAction, PreparedStatements};

/// What [`Session::execute_streaming`] answers.
pub enum Streamed {
    Rows { schema: datafusion::arrow::datatypes::SchemaRef, rows: crate::RowStream },
    Output(Output),
}

pub struct Session {
    database: Arc<Database>,
    block: Block,
    /// Stops the session's running query (cancel requests, statement_timeout).
    interrupt: Arc<Interrupt>,
    /// Who the client connected as: `current_user` and `session_user`.
    user: String,
    /// What PREPARE made (EXECUTE runs it).
    prepared: PreparedStatements,
}

/// A statement ready to run, or the answer of one the session handled itself.
enum Resolved<'a> {
    Answered(Output),
    Run(std::borrow::Cow<'a, ParsedStatement>),
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
        Statement::Show(_) | Statement::ShowCreate { .. } | Statement::ExplainView(_) | Statement::Subscribe { .. } => {
            Access::Read
        }
        Statement::CreateSource(_)
        | Statement::DropSource { .. }
        | Statement::CreateSink(_)
        | Statement::DropSink { .. }
        | Statement::CreateSecret(_)
        | Statement::DropSecret { .. } => Access::Write,
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
        let user = changeflow_sql::postgres_functions::DEFAULT_USER.to_string();
        Self { database, block: Block::None, interrupt: Interrupt::new(), user, prepared: Default::default() }
    }

    /// Names the user the client connected as.
    pub fn set_user(&mut self, user: &str) {
        user.clone_into(&mut self.user);
    }

    /// PREPARE and DEALLOCATE are answered here; EXECUTE becomes the statement it runs;
    /// `current_user` and `session_user` are bound to this session's user.
    fn resolve<'a>(&mut self, statement: &'a ParsedStatement) -> Result<Resolved<'a>> {
        let statement = match self.prepared.handle(statement) {
            None => std::borrow::Cow::Borrowed(statement),
            Some(action) => match action? {
                PreparedAction::Done(tag) => return Ok(Resolved::Answered(Output::Command(tag.into()))),
                PreparedAction::Run(bound) => std::borrow::Cow::Owned(bound),
            },
        };
        let bound = match &statement.statement {
            Statement::Sql(sql) => changeflow_sql::postgres_functions::bind_session_user(sql, &self.user),
            _ => None,
        };
        Ok(Resolved::Run(match bound {
            Some(sql) => std::borrow::Cow::Owned(ParsedStatement {
                statement: Statement::Sql(Box::new(sql)),
                text: statement.text.clone(),
                position: statement.position,
            }),
            None => statement,
        }))
    }

    pub fn database(&self) -> &Arc<Database> {
        &self.database
    }

    /// Whether this session has a transaction block open.
    pub fn in_transaction(&self) -> bool {
        !matches!(self.block, Block::None)
    }

    /// What stops this session's running query: cancel it, or give it a timeout, from
    /// another task while the query runs.
    pub fn interrupt(&self) -> Arc<Interrupt> {
        Arc::clone(&self.interrupt)
    }

    /// Executes a statement; a query's rows come as a stream (computed as they are read,
    /// a few batches ahead), anything else as [`Session::execute`] answers.
    pub async fn execute_streaming(&mut self, statement: &ParsedStatement) -> Result<Streamed> {
        let statement = match self.resolve(statement)? {
            Resolved::Answered(output) => return Ok(Streamed::Output(output)),
            Resolved::Run(statement) => statement,
        };
        let statement = &*statement;
        if let Statement::Sql(sql) = &statement.statement
            && let ast::Statement::Query(query) = sql.as_ref()
        {
            self.interrupt.start();
            let writing = matches!(self.block, Block::Writing(_));
            let (schema, rows) = self.database.stream_query(query, writing, Some(&self.interrupt)).await?;
            return Ok(Streamed::Rows { schema, rows });
        }
        Ok(Streamed::Output(self.run(statement).await?))
    }

    pub async fn execute(&mut self, statement: &ParsedStatement) -> Result<Output> {
        let statement = match self.resolve(statement)? {
            Resolved::Answered(output) => return Ok(output),
            Resolved::Run(statement) => statement,
        };
        self.run(&statement).await
    }

    async fn run(&mut self, statement: &ParsedStatement) -> Result<Output> {
        let writing = matches!(self.block, Block::Writing(_));
        self.interrupt.start();
        match access(statement) {
            Access::Read => self.database.execute_as(statement, writing, Some(&self.interrupt)).await,
            Access::Write if writing => self.database.execute_as(statement, true, None).await,
            Access::Write if matches!(self.block, Block::Reading) => {
                // The block's first write opens the engine's transaction under the lease.
                let lease = self.database.writer_lease_for(&self.interrupt).await?;
                self.database.engine().await.execute_sql_text("BEGIN").await?;
                self.block = Block::Writing(lease);
                self.database.execute_as(statement, true, None).await
            }
            Access::Write => {
                let _lease = self.database.writer_lease_for(&self.interrupt).await?;
                self.database.execute_as(statement, true, None).await
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
                Block::Writing(_lease) => self.database.execute_as(statement, true, None).await,
            },
        }
    }

    /// Ends the session: an open transaction block is rolled back.
    pub async fn close(&mut self) {
        if let Block::Writing(_lease) = std::mem::replace(&mut self.block, Block::None) {
            self.database.roll_back_open_transaction().await;
        }
    }
}

impl Drop for Session {
    /// A session dropped inside a transaction block (its task panicked or was aborted) has
    /// its transaction rolled back on the runtime, under the lease it still holds. Without a
    /// runtime, the next writer to take the lease rolls it back.
    fn drop(&mut self) {
        let Block::Writing(lease) = std::mem::replace(&mut self.block, Block::None) else { return };
        let database = Arc::clone(&self.database);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if database.roll_back_open_transaction().await {
                        tracing::warn!("rolled back the transaction of a session that ended without closing");
                    }
                    drop(lease);
                });
            }
            Err(_) => tracing::warn!(
                "a session ended in a transaction block outside a runtime; the next writer rolls it back"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::ConnectorRegistry;

    async fn run(session: &mut Session, sql: &str) -> Result<Output> {
        let mut last = Output::Command(String::new());
        for statement in changeflow_sql::parse_sql(sql)? {
            last = session.execute(&statement).await?;
        }
        Ok(last)
    }

    async fn count(session: &mut Session) -> usize {
        match run(session, "SELECT * FROM t").await.expect("select") {
            Output::Rows { batches, .. } => batches.iter().map(|b| b.num_rows()).sum(),
            other => panic!("a query answered {:?}", other.into_parts().1),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_dropped_in_a_transaction_block_is_rolled_back() {
        let database = Arc::new(Database::new(ConnectorRegistry::default()));
        let mut setup = Session::new(Arc::clone(&database));
        run(&mut setup, "CREATE TABLE t (id INT PRIMARY KEY)").await.expect("create");

        let mut gone = Session::new(Arc::clone(&database));
        run(&mut gone, "BEGIN; INSERT INTO t VALUES (1)").await.expect("open a block");
        drop(gone);

        let mut other = Session::new(Arc::clone(&database));
        run(&mut other, "INSERT INTO t VALUES (2)").await.expect("autocommit insert");
        assert_eq!(count(&mut setup).await, 1, "the autocommitted row is visible and the dropped block's is not");
        run(&mut other, "BEGIN; INSERT INTO t VALUES (3); COMMIT").await.expect("a later block commits");
        assert_eq!(count(&mut setup).await, 2);
        assert!(!database.engine().await.in_transaction());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_writer_rolls_back_a_transaction_whose_session_is_gone() {
        let database = Arc::new(Database::new(ConnectorRegistry::default()));
        let mut session = Session::new(Arc::clone(&database));
        run(&mut session, "CREATE TABLE t (id INT PRIMARY KEY)").await.expect("create");
        // A transaction the engine holds with no session (its session vanished without Drop).
        database.engine().await.execute_sql_text("BEGIN; INSERT INTO t VALUES (1)").await.expect("orphan");
        run(&mut session, "INSERT INTO t VALUES (2)").await.expect("insert");
        assert_eq!(count(&mut session).await, 1, "only the acknowledged row: the orphan was rolled back");
        assert!(!database.engine().await.in_transaction());
    }
}
