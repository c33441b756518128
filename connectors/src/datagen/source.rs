//! The DATAGEN source: declares the scenario's relations, then emits one transaction per
//! tick (`rate / tps` changes each), paced in real time, until `limit` transactions. Its
//! progress is the number of transactions emitted; resuming regenerates and skips them.

use std::time::Duration;

use async_trait::async_trait;
use changeflow_engine::ChangeBatch;
use changeflow_engine::connector::{
    Progress, SourceChanges, SourceConnector, SourceEvent, SourceMonitor, SourceReader, SourceRelationDef,
    SourceResume, UpstreamTransaction,
};
use changeflow_engine::error::{EngineError, Result};
use changeflow_sql::parser::{CreateSource, SourceTables};

use super::config::DatagenConfig;
use super::scenario::SessionsScenario;

pub struct DatagenConnector;

#[async_trait]
impl SourceConnector for DatagenConnector {
    async fn describe(&self, create: &CreateSource) -> Result<Vec<SourceRelationDef>> {
        refuse_tables(create)?;
        let config = DatagenConfig::from_options(&create.name, &create.options)?;
        Ok(SessionsScenario::new(&config.prefix, config.seed, config.experiences).relations())
    }

    async fn open(
        &self,
        create: &CreateSource,
        resume: SourceResume,
        _relations: &[SourceRelationDef],
        monitor: SourceMonitor,
    ) -> Result<Box<dyn SourceReader>> {
        let config = DatagenConfig::from_options(&create.name, &create.options)?;
        monitor.set_state("running");
        let scenario = SessionsScenario::new(&config.prefix, config.seed, config.experiences);
        let interval = tokio::time::interval(Duration::from_micros(1_000_000 / config.transactions_per_second));
        let mut reader = DatagenReader { config, scenario, interval, emitted: 0 };
        // The data is a function of the seed: resuming regenerates what was applied already
        // and goes on after it.
        if let Some(progress) = resume.progress {
            let applied =
                progress.0.strip_prefix("transaction ").and_then(|n| n.parse::<u64>().ok()).ok_or_else(|| {
                    EngineError::Connector(format!("source \"{}\": cannot resume from \"{}\"", create.name, progress.0))
                })?;
            while reader.emitted < applied {
                reader.generate()?;
            }
        }
        Ok(Box::new(reader))
    }
}

impl DatagenReader {
    /// The next transaction's changes.
    fn generate(&mut self) -> Result<Vec<(String, ChangeBatch)>> {
        let changes = if self.emitted == 0 {
            self.scenario.initial()?
        } else {
            let per_transaction = (self.config.rate / self.config.transactions_per_second).max(1) as usize;
            self.scenario.transaction(per_transaction)?
        };
        self.emitted += 1;
        Ok(changes)
    }
}

struct DatagenReader {
    config: DatagenConfig,
    scenario: SessionsScenario,
    interval: tokio::time::Interval,
    emitted: u64,
}

#[async_trait]
impl SourceReader for DatagenReader {
    async fn next(&mut self) -> Result<Option<SourceEvent>> {
        if self.config.limit.is_some_and(|limit| self.emitted >= limit) {
            return Ok(None);
        }
        if self.emitted > 0 {
            self.interval.tick().await;
        }
        let changes = self.generate()?;
        let changes = changes.into_iter().map(|(relation, batch)| (relation, SourceChanges::Weighted(batch))).collect();
        // Each generated transaction is one upstream transaction, numbered from 1.
        let commit_micros =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
        let transaction = UpstreamTransaction { id: self.emitted as i64, commit_micros };
        Ok(Some(SourceEvent::Transaction {
            changes,
            progress: Progress(format!("transaction {}", self.emitted)),
            transaction: Some(transaction),
        }))
    }

    async fn commit(&mut self, _upto: &Progress) -> Result<()> {
        Ok(())
    }
}

/// DATAGEN's relations come from its scenario: a FOR TABLES clause means nothing to it.
fn refuse_tables(create: &CreateSource) -> Result<()> {
    match create.tables {
        SourceTables::Unspecified => Ok(()),
        _ => Err(EngineError::Connector(format!(
            "source \"{}\": DATAGEN takes no FOR TABLES clause; its scenario decides the relations",
            create.name
        ))),
    }
}
