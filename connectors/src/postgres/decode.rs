//! Rows of a captured table, gathered as text and turned into Arrow a column at a time:
//! from COPY's text format during the snapshot and from pgoutput tuples while streaming.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions, StringBuilder};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};

use super::error::PgError;
use super::upstream::UpstreamTable;

/// The relation's schema as changeflow declares it (NOT NULL where upstream says so).
pub fn declared_schema(table: &UpstreamTable) -> SchemaRef {
    Arc::new(Schema::new(
        table.columns.iter().map(|c| Field::new(&c.name, c.pg_type.arrow_type(), !c.not_null)).collect::<Vec<_>>(),
    ))
}

/// The same columns, all nullable: key-only and TOAST-incomplete tuples have holes.
pub fn tuple_schema(table: &UpstreamTable) -> SchemaRef {
    Arc::new(Schema::new(
        table.columns.iter().map(|c| Field::new(&c.name, c.pg_type.arrow_type(), true)).collect::<Vec<_>>(),
    ))
}

/// Text values of rows being gathered, one builder per column.
pub struct TextColumns {
    columns: Vec<StringBuilder>,
    rows: usize,
}

impl TextColumns {
    pub fn new(width: usize) -> Self {
        Self { columns: (0..width).map(|_| StringBuilder::new()).collect(), rows: 0 }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn column(&mut self, index: usize) -> &mut StringBuilder {
        &mut self.columns[index]
    }

    /// Marks the end of a row whose columns were all appended.
    pub fn end_row(&mut self) -> u32 {
        self.rows += 1;
        (self.rows - 1) as u32
    }

    /// Appends one COPY text-format line (without its newline).
    pub fn push_copy_line(&mut self, line: &[u8]) -> Result<(), PgError> {
        let mut fields = line.split(|b| *b == b'\t');
        // Fields without a backslash need no unescaping (most of them).
        for column in 0..self.columns.len() {
            let field = fields
                .next()
                .ok_or_else(|| PgError::protocol(format!("COPY row has fewer than {} columns", self.columns.len())))?;
            let builder = &mut self.columns[column];
            if field == b"\\N" {
                builder.append_null();
            } else if memchr::memchr(b'\\', field).is_some() {
                builder.append_value(unescape_copy(field)?);
            } else {
                builder.append_value(
                    std::str::from_utf8(field).map_err(|_| PgError::Value("COPY row is not UTF-8".into()))?,
                );
            }
        }
        self.end_row();
        Ok(())
    }

    /// Converts the gathered rows to a batch of `schema`, naming the column that fails.
    pub fn finish(&mut self, table: &UpstreamTable, schema: &SchemaRef) -> Result<RecordBatch, PgError> {
        let rows = std::mem::take(&mut self.rows);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (builder, column) in self.columns.iter_mut().zip(&table.columns) {
            let text = builder.finish();
            let array = column
                .pg_type
                .convert(&text)
                .map_err(|e| PgError::Value(format!("table {}, column \"{}\": {e}", table.display(), column.name)))?;
            arrays.push(array);
        }
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )?)
    }
}

/// Undoes COPY text-format escapes: `\t`, `\n`, `\\`, `\r`, `\b`, `\f`, `\v`, octal and `\x` hex.
fn unescape_copy(field: &[u8]) -> Result<String, PgError> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let byte = field[i];
        i += 1;
        if byte != b'\\' || i == field.len() {
            out.push(byte);
            continue;
        }
        let escaped = field[i];
        i += 1;
        match escaped {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut value = (escaped - b'0') as u32;
                let mut digits = 1;
                while digits < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    value = value * 8 + (field[i] - b'0') as u32;
                    i += 1;
                    digits += 1;
                }
                out.push(value as u8);
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    value = value * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    digits += 1;
                }
                out.push(value as u8);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| PgError::Value("COPY value is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_escapes() {
        assert_eq!(unescape_copy(br"a\tb\\c\nd").expect("unescapes"), "a\tb\\c\nd");
        assert_eq!(unescape_copy(br"\101\x42").expect("unescapes"), "AB");
        assert_eq!(unescape_copy(br"\\x0a").expect("unescapes"), "\\x0a");
    }
}
