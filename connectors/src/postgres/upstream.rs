//! What the source needs from the upstream database before it reads anything: a server set
//! up for logical decoding, a user allowed to replicate, and captured tables whose columns
//! changeflow can carry and whose updates and deletes PostgreSQL identifies. Each refusal
//! says what to run to fix it. Also creates (or checks) the publication.

use changeflow_engine::connector::SourceRelationDef;
use changeflow_sql::parser::{SourceTable, SourceTables};
use tokio_postgres::Client;

use super::config::{PostgresConfig, quote_ident};
use super::error::PgError;
use super::types::{PgType, TypeInfo};

#[derive(Debug, Clone)]
pub struct UpstreamColumn {
    pub name: String,
    pub pg_type: PgType,
    pub not_null: bool,
    /// Declared when the source was created, gone upstream since: read as NULL.
    pub missing: bool,
}

/// A captured table as the upstream catalog describes it.
#[derive(Debug, Clone)]
pub struct UpstreamTable {
    pub schema: String,
    pub name: String,
    /// The changeflow relation it feeds.
    pub relation: String,
    pub columns: Vec<UpstreamColumn>,
    /// Columns identifying a row: the primary key, or the replica identity index. Empty for
    /// REPLICA IDENTITY FULL tables without a primary key (rows are then their own identity).
    pub key: Vec<usize>,
    pub estimated_rows: i64,
}

impl UpstreamTable {
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// `schema.table` for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// Checks that the server and user can run logical replication.
pub async fn check_server(client: &Client, config: &PostgresConfig) -> Result<(), PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user::text, \
             (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .await?;
    let wal_level: String = row.get(0);
    let user: String = row.get(1);
    let can_replicate: bool = row.get::<_, Option<bool>>(2).unwrap_or(false);
    if wal_level != "logical" {
        return Err(PgError::Setup(format!(
            "source \"{}\": PostgreSQL at {} has wal_level = {wal_level}, and logical replication needs \
             wal_level = logical. Run ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL.",
            config.source, config.display_url
        )));
    }
    if !can_replicate {
        return Err(PgError::Setup(format!(
            "source \"{}\": user \"{user}\" may not start replication. Run ALTER ROLE {} WITH REPLICATION; \
             as a superuser.",
            config.source,
            quote_ident(&user)
        )));
    }
    Ok(())
}

/// Describes the captured tables, refusing any that cannot be captured.
pub async fn describe_tables(client: &Client, config: &PostgresConfig) -> Result<Vec<UpstreamTable>, PgError> {
    let wanted: Vec<SourceTable> = match &config.tables {
        SourceTables::List(tables) => tables.clone(),
        SourceTables::All | SourceTables::Unspecified => all_tables(client, config).await?,
    };
    let mut tables: Vec<UpstreamTable> = Vec::with_capacity(wanted.len());
    for table in &wanted {
        let described = describe_table(client, config, table).await?;
        if let Some(other) = tables.iter().find(|t| t.relation == described.relation) {
            return Err(PgError::Config(format!(
                "source \"{}\": tables {} and {} would both be relation \"{}\"; name one with AS in FOR TABLES (...)",
                config.source,
                other.display(),
                described.display(),
                described.relation
            )));
        }
        tables.push(described);
    }
    if tables.is_empty() {
        return Err(PgError::Config(format!("source \"{}\": there are no tables to capture", config.source)));
    }
    Ok(tables)
}

/// FOR ALL TABLES: the publication's tables when it exists, else every user table.
async fn all_tables(client: &Client, config: &PostgresConfig) -> Result<Vec<SourceTable>, PgError> {
    let exists =
        !client.query("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&config.publication]).await?.is_empty();
    let rows = if exists {
        client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&config.publication],
            )
            .await?
    } else {
        client
            .query(
                "SELECT n.nspname::text, c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                 AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
                 ORDER BY 1, 2",
                &[],
            )
            .await?
    };
    Ok(rows.iter().map(|r| SourceTable { schema: Some(r.get(0)), table: r.get(1), alias: None }).collect())
}

async fn describe_table(
    client: &Client,
    config: &PostgresConfig,
    wanted: &SourceTable,
) -> Result<UpstreamTable, PgError> {
    let schema = wanted.schema.clone().unwrap_or_else(|| "public".into());
    let shown = format!("{schema}.{}", wanted.table);
    let found = client
        .query_opt(
            "SELECT c.oid::int8, c.relkind::text, c.relreplident::text, c.reltuples::int8, \
             has_table_privilege(c.oid, 'SELECT') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &wanted.table],
        )
        .await?
        .ok_or_else(|| {
            PgError::Config(format!("source \"{}\": table {shown} does not exist upstream", config.source))
        })?;
    let oid: i64 = found.get(0);
    let kind: String = found.get(1);
    let identity: String = found.get(2);
    let estimated_rows: i64 = found.get(3);
    let readable: bool = found.get(4);
    if kind != "r" && kind != "p" {
        return Err(PgError::Config(format!(
            "source \"{}\": {shown} is not a table (views and other relations have no change stream)",
            config.source
        )));
    }
    if !readable {
        return Err(PgError::Setup(format!(
            "source \"{}\": the user may not read {shown}. Run GRANT SELECT ON {} TO the source's user;",
            config.source,
            format_args!("{}.{}", quote_ident(&schema), quote_ident(&wanted.table))
        )));
    }
    let rows = client
        .query(
            "SELECT a.attname::text, a.atttypid::int8, a.atttypmod, a.attnotnull, t.typtype::text, \
             CASE WHEN t.typcategory = 'A' THEN t.typelem::int8 END, et.typtype::text, \
             format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A' \
             WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&oid],
        )
        .await?;
    let mut columns = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.get(0);
        let element: Option<i64> = row.get(5);
        let info = TypeInfo {
            oid: row.get::<_, i64>(1) as u32,
            typmod: row.get(2),
            kind: row.get::<_, String>(4).chars().next().unwrap_or('b'),
            element: element
                .map(|e| (e as u32, row.get::<_, Option<String>>(6).and_then(|k| k.chars().next()).unwrap_or('b'))),
            display: row.get(7),
        };
        let pg_type = PgType::from_info(&info).ok_or_else(|| {
            PgError::Config(format!(
                "source \"{}\": table {shown}, column \"{name}\" has type {}, which changeflow cannot carry \
                 (supported: bool, int2/4/8, float4/8, numeric(p<=38,s), text, varchar, char, date, time, \
                 timestamp, timestamptz, interval, uuid, json, jsonb, bytea, enums, and one-dimensional arrays of these)",
                config.source, info.display
            ))
        })?;
        columns.push(UpstreamColumn { name, pg_type, not_null: row.get(3), missing: false });
    }
    let key_columns = |flag: &'static str| {
        format!(
            "SELECT a.attname::text FROM pg_index i CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1::int8::oid AND i.{flag} ORDER BY k.ord"
        )
    };
    let primary_key: Vec<String> =
        client.query(&key_columns("indisprimary"), &[&oid]).await?.iter().map(|r| r.get(0)).collect();
    let identity_index: Vec<String> =
        client.query(&key_columns("indisreplident"), &[&oid]).await?.iter().map(|r| r.get(0)).collect();
    let quoted = format!("{}.{}", quote_ident(&schema), quote_ident(&wanted.table));
    let key_names = match identity.as_str() {
        // Only inserts count: rows need no identity, and the relation no key.
        _ if config.is_append_only(wanted.relation_name()) => Vec::new(),
        "n" => {
            return Err(PgError::Setup(format!(
                "source \"{}\": table {shown} has REPLICA IDENTITY NOTHING, so PostgreSQL does not say which row an \
                 update or delete changes. Run ALTER TABLE {quoted} REPLICA IDENTITY FULL; (or DEFAULT, with a primary key)",
                config.source
            )));
        }
        "d" if primary_key.is_empty() => {
            return Err(PgError::Setup(format!(
                "source \"{}\": table {shown} has no primary key, so PostgreSQL sends nothing to identify updated and \
                 deleted rows. Add a primary key, or run ALTER TABLE {quoted} REPLICA IDENTITY FULL;",
                config.source
            )));
        }
        "i" => identity_index,
        _ => primary_key,
    };
    let key = key_names
        .iter()
        .map(|name| columns.iter().position(|c| &c.name == name))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| PgError::protocol(format!("key columns of {shown} not found")))?;
    Ok(UpstreamTable {
        schema,
        name: wanted.table.clone(),
        relation: wanted.relation_name().to_string(),
        columns,
        key,
        estimated_rows: estimated_rows.max(0),
    })
}

/// Uses the configured publication when it exists (checking it covers every captured table),
/// else creates it. Returns whether it was created.
pub async fn ensure_publication(
    client: &Client,
    config: &PostgresConfig,
    tables: &[UpstreamTable],
) -> Result<bool, PgError> {
    let exists =
        !client.query("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&config.publication]).await?.is_empty();
    if !exists {
        let target = match config.tables {
            SourceTables::All => "ALL TABLES".to_string(),
            _ => format!("TABLE {}", tables.iter().map(UpstreamTable::qualified).collect::<Vec<_>>().join(", ")),
        };
        client.batch_execute(&format!("CREATE PUBLICATION {} FOR {target}", quote_ident(&config.publication))).await?;
        return Ok(true);
    }
    let published: Vec<(String, String)> = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&config.publication],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for table in tables {
        if !published.iter().any(|(s, t)| s == &table.schema && t == &table.name) {
            return Err(PgError::Setup(format!(
                "source \"{}\": publication \"{}\" does not include {}. Run ALTER PUBLICATION {} ADD TABLE {};",
                config.source,
                config.publication,
                table.display(),
                quote_ident(&config.publication),
                table.qualified()
            )));
        }
    }
    Ok(false)
}

/// What [`keep_declared_columns`] found changed upstream since the source was created.
#[derive(Debug, Default)]
pub struct SchemaChanges {
    /// Per relation, declared columns gone upstream (read as NULL from now on).
    pub dropped: Vec<(String, Vec<String>)>,
    /// Messages for SHOW SOURCES and the log: columns added upstream (not read) and dropped.
    pub warnings: Vec<String>,
}

/// Shapes each described table as the relation the engine holds for it: exactly the
/// declared columns, in their order, by name. Columns added upstream since are left out (not
/// read), declared columns gone upstream are kept as `missing` (NULL), and a declared column
/// whose type changed upstream is an error that names it. Tables without a declared relation
/// (a first open) are kept as described.
pub fn keep_declared_columns(
    tables: Vec<UpstreamTable>,
    declared: &[SourceRelationDef],
    config: &PostgresConfig,
) -> Result<(Vec<UpstreamTable>, SchemaChanges), PgError> {
    let mut changes = SchemaChanges::default();
    let mut kept = Vec::with_capacity(tables.len());
    for mut table in tables {
        let Some(relation) = declared.iter().find(|r| r.name == table.relation) else {
            kept.push(table);
            continue;
        };
        let key_names: Vec<String> = table.key.iter().map(|&i| table.columns[i].name.clone()).collect();
        let mut columns = Vec::with_capacity(relation.schema.fields().len());
        let mut dropped = Vec::new();
        for field in relation.schema.fields() {
            match table.columns.iter().find(|c| &c.name == field.name()) {
                Some(column) if column.pg_type.arrow_type() != *field.data_type() => {
                    return Err(PgError::Config(format!(
                        "source \"{}\": column \"{}\" of {} changed type upstream (relation \"{}\" has {}, the \
                         table now has {}); changeflow cannot convert it. DROP SOURCE and CREATE SOURCE again to \
                         capture the new type",
                        config.source,
                        field.name(),
                        table.display(),
                        table.relation,
                        field.data_type(),
                        column.pg_type.arrow_type()
                    )));
                }
                Some(column) => columns.push(UpstreamColumn { not_null: !field.is_nullable(), ..column.clone() }),
                None => {
                    let pg_type = PgType::from_arrow(field.data_type()).ok_or_else(|| {
                        PgError::protocol(format!(
                            "relation \"{}\" has a column of type {}",
                            table.relation,
                            field.data_type()
                        ))
                    })?;
                    dropped.push(field.name().clone());
                    columns.push(UpstreamColumn {
                        name: field.name().clone(),
                        pg_type,
                        not_null: false,
                        missing: true,
                    });
                }
            }
        }
        let added: Vec<&str> = table
            .columns
            .iter()
            .filter(|c| relation.schema.field_with_name(&c.name).is_err())
            .map(|c| c.name.as_str())
            .collect();
        if !added.is_empty() {
            changes.warnings.push(format!(
                "column(s) {} of {} were added upstream after CREATE SOURCE; relation \"{}\" does not read them",
                added.join(", "),
                table.display(),
                table.relation
            ));
        }
        if !dropped.is_empty() {
            changes.warnings.push(format!(
                "column(s) {} of {} were dropped upstream; relation \"{}\" reads them as NULL, and views reading \
                 them fail",
                dropped.join(", "),
                table.display(),
                table.relation
            ));
            changes.dropped.push((table.relation.clone(), dropped));
        }
        table.key = key_names
            .iter()
            .map(|name| columns.iter().position(|c| !c.missing && &c.name == name))
            .collect::<Option<Vec<usize>>>()
            .ok_or_else(|| {
                PgError::Config(format!(
                    "source \"{}\": the key of {} ({}) is no longer among the columns of relation \"{}\"; DROP SOURCE \
                     and CREATE SOURCE again",
                    config.source,
                    table.display(),
                    key_names.join(", "),
                    table.relation
                ))
            })?;
        table.columns = columns;
        kept.push(table);
    }
    Ok((kept, changes))
}
