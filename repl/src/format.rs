//! Printing query results: aligned tables with a row count (like psql), CSV and JSON lines.
//! Values print as PostgreSQL prints them: timestamps with a space, NULL as nothing.

use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

fn options() -> FormatOptions<'static> {
    FormatOptions::new()
        .with_null("")
        .with_timestamp_format(Some("%Y-%m-%d %H:%M:%S%.f"))
        .with_timestamp_tz_format(Some("%Y-%m-%d %H:%M:%S%.f%:z"))
        .with_types_info(false)
}

/// Every value of a result as text (None for NULL), row by row.
pub fn text_rows(batches: &[RecordBatch]) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let options = options();
    let mut rows = Vec::new();
    for batch in batches {
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .zip(&formatters)
                .map(|(column, formatter)| {
                    // A Null-typed column (`SELECT NULL`) has no validity bitmap.
                    let null = column.data_type().is_null() || column.is_null(row);
                    if !null && matches!(column.data_type(), DataType::List(_)) {
                        // Arrays as PostgreSQL prints them: `{a,"b c",NULL}`.
                        let element = |values: &dyn Array, i: usize| {
                            ArrayFormatter::try_new(values, &options)
                                .map(|f| f.value(i).to_string())
                                .unwrap_or_default()
                        };
                        return changeflow_sql::arrays::array_text(column.as_ref(), row, &element);
                    }
                    (!null).then(|| formatter.value(row).to_string())
                })
                .collect();
            rows.push(values);
        }
    }
    Ok(rows)
}

pub fn table(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<String> {
    let headers: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let rows = text_rows(batches)?;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, value) in row.iter().enumerate() {
            widths[i] = widths[i].max(value.as_deref().unwrap_or("").chars().count());
        }
    }
    let numeric: Vec<bool> = schema.fields().iter().map(|f| f.data_type().is_numeric()).collect();
    let pad = |text: &str, i: usize| {
        let fill = widths[i].saturating_sub(text.chars().count());
        if numeric[i] { format!("{}{text}", " ".repeat(fill)) } else { format!("{text}{}", " ".repeat(fill)) }
    };
    let mut out = String::new();
    let header: Vec<String> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let fill = widths[i] - h.chars().count();
            format!("{}{h}{}", " ".repeat(fill / 2), " ".repeat(fill - fill / 2))
        })
        .collect();
    out.push_str(&format!(" {} \n", header.join(" | ")));
    out.push_str(&format!("{}\n", widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+")));
    for row in &rows {
        let cells: Vec<String> = row.iter().enumerate().map(|(i, v)| pad(v.as_deref().unwrap_or(""), i)).collect();
        out.push_str(format!(" {} \n", cells.join(" | ")).trim_end());
        out.push('\n');
    }
    out.push_str(&format!("({} row{})\n", rows.len(), if rows.len() == 1 { "" } else { "s" }));
    Ok(out)
}

/// CSV as PostgreSQL's COPY writes it: NULL is nothing, an empty string is `""`.
pub fn csv(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<String> {
    let quote = |text: &str| {
        if text.is_empty() || text.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let header: Vec<String> = schema.fields().iter().map(|f| quote(f.name())).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in text_rows(batches)? {
        let cells: Vec<String> = row.iter().map(|v| v.as_deref().map(quote).unwrap_or_default()).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// One JSON object per row, its keys in the order of the columns; numbers and booleans
/// stay JSON numbers and booleans.
pub fn json(schema: &SchemaRef, batches: &[RecordBatch]) -> anyhow::Result<String> {
    let mut out = String::new();
    let rows = text_rows(batches)?;
    let types: Vec<DataType> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
    for row in rows {
        let mut members = Vec::with_capacity(row.len());
        for (i, value) in row.into_iter().enumerate() {
            let json = match value {
                None => serde_json::Value::Null,
                Some(text) => match &types[i] {
                    DataType::Boolean => serde_json::Value::Bool(text == "true"),
                    t if t.is_integer() || t.is_floating() => {
                        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
                    }
                    _ => serde_json::Value::String(text),
                },
            };
            members.push(format!("{}:{json}", serde_json::Value::String(schema.field(i).name().clone())));
        }
        out.push('{');
        out.push_str(&members.join(","));
        out.push_str("}\n");
    }
    Ok(out)
}
