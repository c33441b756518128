//! `COPY table TO STDOUT` and `COPY (SELECT ...) TO STDOUT` in PostgreSQL's text, csv and
//! binary formats (how drivers and psql's `\copy` export): the query runs as any query does
//! (in the session's snapshot, cancellable) and its rows stream out as COPY data.

use std::sync::Arc;

use changeflow_engine::RowStream;
use changeflow_sql::parser::{ParsedStatement, Statement};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::sql::sqlparser::ast;
use futures_util::{StreamExt, stream};
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyCsvOptions, CopyEncoder, CopyResponse, CopyTextOptions, Response};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;

use super::encode;
use super::statement::{engine_error, user_error};

/// How the rows of a COPY TO go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text { delimiter: char, null: String },
    Csv { delimiter: char, null: String, header: bool },
    Binary,
}

/// A `COPY ... TO STDOUT`: the query whose rows it sends, and how. `None` for any other
/// statement; an error for a COPY changeflow does not run (to or from a file or program,
/// FROM STDIN), naming what it accepts.
pub fn copy_out(statement: &ParsedStatement) -> PgWireResult<Option<(ParsedStatement, CopyFormat)>> {
    let Statement::Sql(sql) = &statement.statement else { return Ok(None) };
    let ast::Statement::Copy { source, to, target, options, legacy_options, .. } = sql.as_ref() else {
        return Ok(None);
    };
    if !*to {
        return Err(unsupported(
            "COPY FROM is not supported: write rows with INSERT (drivers' executemany); COPY runs as COPY table \
             TO STDOUT or COPY (SELECT ...) TO STDOUT",
        ));
    }
    if *target != ast::CopyTarget::Stdout {
        return Err(unsupported(
            "COPY to a file or a program is not supported: use COPY ... TO STDOUT (psql's \\copy writes the file)",
        ));
    }
    let query = match source {
        ast::CopySource::Query(query) => query.as_ref().clone(),
        ast::CopySource::Table { table_name, columns } => {
            let projection = if columns.is_empty() {
                "*".to_string()
            } else {
                columns.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            };
            let text = format!("SELECT {projection} FROM {table_name}");
            match changeflow_sql::parse_sql(&text).map_err(|e| engine_error(e.into()))?.pop() {
                Some(ParsedStatement { statement: Statement::Sql(sql), .. }) => match *sql {
                    ast::Statement::Query(query) => *query,
                    _ => return Err(unsupported("COPY of a table")),
                },
                _ => return Err(unsupported("COPY of a table")),
            }
        }
    };
    let format = copy_format(options, legacy_options)?;
    let statement = ParsedStatement {
        statement: Statement::Sql(Box::new(ast::Statement::Query(Box::new(query)))),
        text: statement.text.clone(),
        position: statement.position,
    };
    Ok(Some((statement, format)))
}

fn unsupported(message: &str) -> PgWireError {
    user_error("0A000", message.to_string())
}

fn copy_format(options: &[ast::CopyOption], legacy: &[ast::CopyLegacyOption]) -> PgWireResult<CopyFormat> {
    let (mut name, mut delimiter, mut null, mut header) = ("text".to_string(), None, None, false);
    for option in options {
        match option {
            ast::CopyOption::Format(format) => name = format.value.to_ascii_lowercase(),
            ast::CopyOption::Delimiter(c) => delimiter = Some(*c),
            ast::CopyOption::Null(text) => null = Some(text.clone()),
            ast::CopyOption::Header(on) => header = *on,
            ast::CopyOption::Encoding(encoding) if encoding.eq_ignore_ascii_case("utf8") => {}
            other => return Err(unsupported(&format!("COPY option {other} is not supported"))),
        }
    }
    for option in legacy {
        match option {
            ast::CopyLegacyOption::Binary => name = "binary".into(),
            ast::CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            ast::CopyLegacyOption::Null(text) => null = Some(text.clone()),
            ast::CopyLegacyOption::Csv(csv) => {
                name = "csv".into();
                for option in csv {
                    match option {
                        ast::CopyLegacyCsvOption::Header => header = true,
                        other => return Err(unsupported(&format!("COPY option {other} is not supported"))),
                    }
                }
            }
            other => return Err(unsupported(&format!("COPY option {other} is not supported"))),
        }
    }
    match name.as_str() {
        "text" if !header => {
            Ok(CopyFormat::Text { delimiter: delimiter.unwrap_or('\t'), null: null.unwrap_or_else(|| "\\N".into()) })
        }
        "text" => Err(unsupported("COPY HEADER is available only in CSV mode")),
        "csv" => Ok(CopyFormat::Csv { delimiter: delimiter.unwrap_or(','), null: null.unwrap_or_default(), header }),
        "binary" if delimiter.is_none() && null.is_none() && !header => Ok(CopyFormat::Binary),
        "binary" => Err(unsupported("cannot specify DELIMITER, NULL or HEADER in BINARY mode")),
        other => Err(user_error("22023", format!("COPY format \"{other}\" not recognized; use text, csv or binary"))),
    }
}

/// The COPY OUT response of a query's rows: one COPY data message per row (after a CSV
/// header line, when asked for). An error before the first rows answers the statement.
pub async fn response(schema: &SchemaRef, rows: RowStream, format: CopyFormat) -> PgWireResult<Response> {
    let batches = super::handler::batches_once_started(rows).await?;
    let binary = format == CopyFormat::Binary;
    let wire_format = if binary { Format::UnifiedBinary } else { Format::UnifiedText };
    let fields = Arc::new(encode::fields(schema, &wire_format));
    let columns = fields.len();
    let header = match &format {
        CopyFormat::Csv { header: true, delimiter, .. } => {
            let names: Vec<String> = schema.fields().iter().map(|f| csv_field(f.name(), *delimiter)).collect();
            Some(CopyData::new(format!("{}\n", names.join(&delimiter.to_string())).into_bytes().into()))
        }
        _ => None,
    };
    let mut encoder = match &format {
        CopyFormat::Text { delimiter, null } => CopyEncoder::new_text(
            Arc::clone(&fields),
            CopyTextOptions { delimiter: delimiter.to_string().into(), null_string: null.as_str().into() },
        ),
        CopyFormat::Csv { delimiter, null, .. } => CopyEncoder::new_csv(
            Arc::clone(&fields),
            CopyCsvOptions {
                delimiter: delimiter.to_string().into(),
                null_string: null.as_str().into(),
                ..Default::default()
            },
        ),
        CopyFormat::Binary => CopyEncoder::new_binary(Arc::clone(&fields)),
    };
    // The header goes out with the first row (a message is counted as a row in `COPY n`),
    // or alone when there are none.
    let header = Arc::new(std::sync::Mutex::new(header));
    let unsent = Arc::clone(&header);
    let data = batches.flat_map(move |batch| {
        let lines = batch.map_err(engine_error).and_then(|batch| {
            let mut lines = Vec::with_capacity(batch.num_rows());
            for row in 0..batch.num_rows() {
                for column in batch.columns() {
                    encode::encode_value(&mut encoder, column, row, !binary)?;
                }
                let line = encoder.take_copy();
                lines.push(match header.lock().ok().and_then(|mut h| h.take()) {
                    Some(header) => CopyData::new([header.data.as_ref(), line.data.as_ref()].concat().into()),
                    None => line,
                });
            }
            Ok(lines)
        });
        stream::iter(match lines {
            Ok(lines) => lines.into_iter().map(Ok).collect::<Vec<_>>(),
            Err(error) => vec![Err(error)],
        })
    });
    let data = data.chain(
        stream::once(async move { unsent.lock().ok().and_then(|mut h| h.take()) })
            .filter_map(|header| async move { header.map(Ok) }),
    );
    Ok(Response::CopyOut(CopyResponse::new(if binary { 1 } else { 0 }, columns, data)))
}

/// A CSV header field, quoted when it must be.
fn csv_field(name: &str, delimiter: char) -> String {
    if name.contains([delimiter, '"', '\n', '\r']) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_string()
    }
}
