//! The source's replication slot: found or created (with an exported snapshot when one is
//! wanted), checked against a checkpoint's position on restart, dropped when this source
//! made it; and the resume state (position, what was created upstream) the engine keeps.

use std::time::Duration;

use changeflow_engine::connector::{OPENING, SourceResume};

use super::config::{PostgresConfig, quote_ident};
use super::error::PgError;
use super::pgoutput::{format_lsn, parse_lsn};
use super::protocol::ReplicationConnection;

/// Uses the configured slot, or creates it (exporting a snapshot when one is wanted).
/// Returns the replication connection, the snapshot to copy, whether the slot was
/// created (now, or by this source before a restart), and the position streaming
/// starts from.
pub(super) async fn open_slot(
    config: &PostgresConfig,
    client: &tokio_postgres::Client,
    resume: &Resume,
) -> Result<(ReplicationConnection, Option<(String, u64)>, bool, u64), PgError> {
    let existing = client
        .query_opt(
            "SELECT plugin::text, database::text = current_database(), confirmed_flush_lsn::text \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&config.slot],
        )
        .await?;
    let mut connection = ReplicationConnection::connect(&config.endpoint).await?;
    if let Some(resume_at) = resume.lsn {
        // A restart: the slot must still hold everything after the checkpoint.
        let Some(slot) = existing else {
            return Err(PgError::Setup(format!(
                "source \"{}\": replication slot \"{}\" no longer exists, so the changes after the checkpoint \
                 (LSN {}) cannot be read. DROP SOURCE {} and create it again to take a new snapshot",
                config.source,
                config.slot,
                format_lsn(resume_at),
                config.source
            )));
        };
        let confirmed = slot.get::<_, Option<String>>(2).as_deref().and_then(parse_lsn).unwrap_or(0);
        if confirmed > resume_at {
            return Err(PgError::Setup(format!(
                "source \"{}\": replication slot \"{}\" has confirmed LSN {}, past the checkpoint's {}: the \
                 changes between are gone (was the slot used by another consumer?). DROP SOURCE {} and create it \
                 again to take a new snapshot",
                config.source,
                config.slot,
                format_lsn(confirmed),
                format_lsn(resume_at),
                config.source
            )));
        }
        tracing::info!(source = %config.source, slot = %config.slot, lsn = %format_lsn(resume_at), "resuming from the checkpoint");
        return Ok((connection, None, resume.created_slot, resume_at));
    }
    let existing = match existing {
        Some(_) if resume.created_slot => {
            // This source made the slot, but its snapshot never reached a checkpoint:
            // start over with a new slot and snapshot.
            tracing::info!(source = %config.source, slot = %config.slot, "the snapshot was interrupted; taking it again with a new slot");
            drop_slot(client, &config.slot).await?;
            None
        }
        other => other,
    };
    if let Some(slot) = existing {
        let plugin: Option<String> = slot.get(0);
        let same_database: Option<bool> = slot.get(1);
        if plugin.as_deref() != Some("pgoutput") || same_database != Some(true) {
            return Err(PgError::Setup(format!(
                "source \"{}\": replication slot \"{}\" exists but is not a pgoutput slot of this database; \
                 choose another slot name",
                config.source, config.slot
            )));
        }
        if config.snapshot {
            return Err(PgError::Setup(format!(
                "source \"{}\": replication slot \"{}\" already exists, so a snapshot cannot be matched to its \
                 position. Use snapshot = 'never' to stream from the slot, or drop it first with \
                 SELECT pg_drop_replication_slot('{}');",
                config.source, config.slot, config.slot
            )));
        }
        let confirmed = slot.get::<_, Option<String>>(2).as_deref().and_then(parse_lsn).unwrap_or(0);
        return Ok((connection, None, false, confirmed));
    }
    let export = if config.snapshot { "EXPORT_SNAPSHOT" } else { "NOEXPORT_SNAPSHOT" };
    let rows = connection
        .simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {export}", quote_ident(&config.slot)))
        .await?;
    let row = rows.first().ok_or_else(|| PgError::protocol("CREATE_REPLICATION_SLOT returned no row"))?;
    let consistent_point = row
        .get(1)
        .and_then(|v| v.as_deref())
        .and_then(parse_lsn)
        .ok_or_else(|| PgError::protocol("CREATE_REPLICATION_SLOT returned no consistent point"))?;
    let snapshot = match row.get(2).cloned().flatten() {
        Some(name) if config.snapshot => Some((name, consistent_point)),
        _ => None,
    };
    tracing::info!(source = %config.source, slot = %config.slot, lsn = %format_lsn(consistent_point), "created replication slot");
    Ok((connection, snapshot, true, consistent_point))
}

/// Drops a replication slot, waiting (up to 5 s) for a walsender to let go of it.
pub(super) async fn drop_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), PgError> {
    let mut attempts = 0;
    loop {
        let dropped = client
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await;
        match dropped {
            Ok(_) => return Ok(()),
            Err(error) if attempts < 50 => {
                tracing::debug!(%error, "slot still in use");
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Where a reopened source resumes: the end LSN of the last transaction the checkpoint
/// holds (none while the snapshot never reached one), and what it had created upstream.
#[derive(Debug, Default)]
pub(super) struct Resume {
    pub lsn: Option<u64>,
    pub created_slot: bool,
    pub created_publication: bool,
}

impl Resume {
    pub(super) fn parse(config: &PostgresConfig, resume: &SourceResume) -> Result<Self, PgError> {
        let lsn = match &resume.progress {
            Some(progress) => Some(parse_lsn(&progress.0).ok_or_else(|| {
                PgError::Setup(format!("source \"{}\": cannot resume from position \"{}\"", config.source, progress.0))
            })?),
            None => None,
        };
        if resume.upstream.as_deref() == Some(OPENING) {
            // The first open was interrupted: with a snapshot wanted, an existing slot can
            // only be the one it created (a slot that was there before is refused).
            return Ok(Self { lsn, created_slot: config.snapshot, created_publication: false });
        }
        let created: Vec<&str> = resume
            .upstream
            .as_deref()
            .and_then(|u| u.strip_prefix("created="))
            .map(|list| list.split(',').collect())
            .unwrap_or_default();
        Ok(Self { lsn, created_slot: created.contains(&"slot"), created_publication: created.contains(&"publication") })
    }

    pub(super) fn upstream_state(created_slot: bool, created_publication: bool) -> Option<String> {
        let created: Vec<&str> = [(created_slot, "slot"), (created_publication, "publication")]
            .into_iter()
            .filter_map(|(created, what)| created.then_some(what))
            .collect();
        (!created.is_empty()).then(|| format!("created={}", created.join(",")))
    }
}
