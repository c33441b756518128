//! Arrow to the Postgres wire: the PostgreSQL type of each column (RowDescription) and each
//! value in text or binary format (DataRow), as PostgreSQL itself would send them.

use std::sync::Arc;

use changeflow_engine::ChangeBatch;
use chrono::{DateTime, NaiveDate, NaiveTime, TimeDelta, Utc};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, DurationMicrosecondType, Float32Type, Float64Type, Int8Type,
    Int16Type, Int32Type, Int64Type, IntervalMonthDayNanoType, Schema, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::util::display::array_value_to_string;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyEncoder, CopyTextOptions, DataRowEncoder, FieldFormat, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::messages::data::DataRow;
use pgwire::types::ToSqlText;
use rust_decimal::Decimal;

/// The PostgreSQL type a column of this Arrow type is sent as, and its type modifier
/// (-1 when none). Types without a PostgreSQL counterpart here (lists, structs) go as text.
pub fn pg_type(data_type: &DataType) -> (Type, i32) {
    let plain = |t: Type| (t, -1);
    match data_type {
        DataType::Boolean => plain(Type::BOOL),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => plain(Type::INT2),
        DataType::Int32 | DataType::UInt16 => plain(Type::INT4),
        DataType::Int64 | DataType::UInt32 => plain(Type::INT8),
        DataType::UInt64 => plain(Type::NUMERIC),
        DataType::Float16 | DataType::Float32 => plain(Type::FLOAT4),
        DataType::Float64 => plain(Type::FLOAT8),
        DataType::Decimal128(precision, scale) => {
            (Type::NUMERIC, ((i32::from(*precision) << 16) | i32::from(*scale).max(0)) + 4)
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => plain(Type::TEXT),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => plain(Type::BYTEA),
        DataType::Date32 | DataType::Date64 => plain(Type::DATE),
        DataType::Timestamp(_, None) => plain(Type::TIMESTAMP),
        DataType::Timestamp(_, Some(_)) => plain(Type::TIMESTAMPTZ),
        DataType::Time32(_) | DataType::Time64(_) => plain(Type::TIME),
        DataType::Interval(_) | DataType::Duration(TimeUnit::Microsecond) => plain(Type::INTERVAL),
        _ => plain(Type::TEXT),
    }
}

/// RowDescription fields for a schema, each in the format the client asked for.
pub fn fields(schema: &Schema, format: &Format) -> Vec<FieldInfo> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let (pg, modifier) = pg_type(field.data_type());
            FieldInfo::new(field.name().clone(), None, None, pg, format.format_for(i)).with_type_modifier(modifier)
        })
        .collect()
}

/// Text-format fields (the simple query protocol).
pub fn text_fields(schema: &Schema) -> Arc<Vec<FieldInfo>> {
    Arc::new(fields(schema, &Format::UnifiedText))
}

/// Encodes every row of the batches.
pub fn rows(fields: &Arc<Vec<FieldInfo>>, batches: &[RecordBatch]) -> PgWireResult<Vec<DataRow>> {
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let text = text_columns(fields, 0);
    let mut rows = Vec::with_capacity(batches.iter().map(RecordBatch::num_rows).sum());
    for batch in batches {
        for row in 0..batch.num_rows() {
            for (column, text) in batch.columns().iter().zip(&text) {
                encode_value(&mut encoder, column, row, *text)?;
            }
            rows.push(encoder.take_row());
        }
    }
    Ok(rows)
}

/// Where encoded values go: a DataRow, or a line of COPY text.
pub trait FieldSink {
    fn put<T: postgres_types::ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()>;
}

impl FieldSink for DataRowEncoder {
    fn put<T: postgres_types::ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()> {
        self.encode_field(value)
    }
}

impl FieldSink for CopyEncoder {
    fn put<T: postgres_types::ToSql + ToSqlText + Sized>(&mut self, value: &T) -> PgWireResult<()> {
        self.encode_field(value)
    }
}

/// A subscription's rows as lines of `COPY ... TO STDOUT` text (tab-separated, `\N` NULLs).
pub fn change_copy_lines(
    fields: &Arc<Vec<FieldInfo>>,
    epoch: u64,
    change: &ChangeBatch,
) -> PgWireResult<Vec<CopyData>> {
    let mut encoder = CopyEncoder::new_text(Arc::clone(fields), CopyTextOptions::default());
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    let mut lines = Vec::with_capacity(change.len());
    for (row, weight) in change.weights.iter().enumerate() {
        encoder.put(&epoch)?;
        encoder.put(weight)?;
        for column in change.data.columns() {
            encode_value(&mut encoder, column, row, true)?;
        }
        lines.push(encoder.take_copy());
    }
    Ok(lines)
}

/// Encodes a subscription's rows: `epoch`, `weight`, then the columns. A row with weight
/// 3 goes out as three rows of weight 1 would not: the weight is the multiplicity.
pub fn change_rows(fields: &Arc<Vec<FieldInfo>>, epoch: u64, change: &ChangeBatch) -> PgWireResult<Vec<DataRow>> {
    let mut encoder = DataRowEncoder::new(Arc::clone(fields));
    let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
    let text = text_columns(fields, 2);
    let mut rows = Vec::with_capacity(change.len());
    for (row, weight) in change.weights.iter().enumerate() {
        encoder.encode_field(&epoch)?;
        encoder.encode_field(weight)?;
        for (column, text) in change.data.columns().iter().zip(&text) {
            encode_value(&mut encoder, column, row, *text)?;
        }
        rows.push(encoder.take_row());
    }
    Ok(rows)
}

/// Which columns (from `skip` on) go in text format.
fn text_columns(fields: &[FieldInfo], skip: usize) -> Vec<bool> {
    fields.iter().skip(skip).map(|f| f.format() == FieldFormat::Text).collect()
}

fn encode_error(message: String) -> PgWireError {
    PgWireError::ApiError(message.into())
}

/// Encodes one value. Dates and times in text format are written the way PostgreSQL writes
/// them (`2026-12-01 18:00:00`, fractional seconds only when there are some, `+00` zones).
pub fn encode_value<E: FieldSink>(encoder: &mut E, array: &ArrayRef, row: usize, text: bool) -> PgWireResult<()> {
    // An untyped NULL (`SELECT NULL`) is a Null-typed column, which has no validity bitmap.
    if array.data_type().is_null() || array.is_null(row) {
        return encoder.put(&None::<i32>);
    }
    match array.data_type() {
        DataType::Boolean => encoder.put(&array.as_boolean().value(row)),
        DataType::Int8 => encoder.put(&i16::from(array.as_primitive::<Int8Type>().value(row))),
        DataType::Int16 => encoder.put(&array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => encoder.put(&array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => encoder.put(&array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => encoder.put(&i16::from(array.as_primitive::<UInt8Type>().value(row))),
        DataType::UInt16 => encoder.put(&i32::from(array.as_primitive::<UInt16Type>().value(row))),
        DataType::UInt32 => encoder.put(&i64::from(array.as_primitive::<UInt32Type>().value(row))),
        DataType::UInt64 => encoder.put(&Decimal::from(array.as_primitive::<UInt64Type>().value(row))),
        DataType::Float32 => encoder.put(&array.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => encoder.put(&array.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            let value = array.as_primitive::<Decimal128Type>().value(row);
            let decimal = u32::try_from(*scale)
                .ok()
                .and_then(|scale| Decimal::try_from_i128_with_scale(value, scale).ok())
                .ok_or_else(|| {
                    encode_error(format!(
                        "numeric value {} has more than 28 significant digits, which the wire encoder cannot send",
                        array_value_to_string(array, row).unwrap_or_default()
                    ))
                })?;
            encoder.put(&decimal)
        }
        DataType::Utf8 => encoder.put(&array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => encoder.put(&array.as_string::<i64>().value(row)),
        DataType::Utf8View => encoder.put(&array.as_string_view().value(row)),
        DataType::Binary => encoder.put(&array.as_binary::<i32>().value(row)),
        DataType::LargeBinary => encoder.put(&array.as_binary::<i64>().value(row)),
        DataType::BinaryView => encoder.put(&array.as_binary_view().value(row)),
        DataType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            encoder.put(&date_from_days(i64::from(days))?)
        }
        DataType::Date64 => {
            let millis = array.as_primitive::<Date64Type>().value(row);
            encoder.put(&date_from_days(millis.div_euclid(86_400_000))?)
        }
        DataType::Timestamp(unit, zone) => {
            let micros = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row).saturating_mul(1_000_000),
                TimeUnit::Millisecond => {
                    array.as_primitive::<TimestampMillisecondType>().value(row).saturating_mul(1_000)
                }
                TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().value(row),
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row).div_euclid(1_000),
            };
            let time = DateTime::<Utc>::from_timestamp_micros(micros)
                .ok_or_else(|| encode_error(format!("timestamp {micros} us is out of range")))?;
            match (zone, text) {
                (Some(_), true) => encoder.put(&format!("{}+00", postgres_time(&time.naive_utc().to_string()))),
                (None, true) => encoder.put(&postgres_time(&time.naive_utc().to_string())),
                (Some(_), false) => encoder.put(&time),
                (None, false) => encoder.put(&time.naive_utc()),
            }
        }
        DataType::Time32(unit) => {
            let seconds_or_millis = match unit {
                TimeUnit::Second => i64::from(array.as_primitive::<Time32SecondType>().value(row)) * 1_000_000,
                _ => i64::from(array.as_primitive::<Time32MillisecondType>().value(row)) * 1_000,
            };
            encode_time(encoder, time_from_micros(seconds_or_millis)?, text)
        }
        DataType::Time64(unit) => {
            let micros = match unit {
                TimeUnit::Nanosecond => array.as_primitive::<Time64NanosecondType>().value(row) / 1_000,
                _ => array.as_primitive::<Time64MicrosecondType>().value(row),
            };
            encode_time(encoder, time_from_micros(micros)?, text)
        }
        DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano) => {
            let value = array.as_primitive::<IntervalMonthDayNanoType>().value(row);
            encoder.put(&pg_interval::Interval::new(value.months, value.days, value.nanoseconds / 1_000))
        }
        DataType::Duration(TimeUnit::Microsecond) => {
            let micros = array.as_primitive::<DurationMicrosecondType>().value(row);
            encoder.put(&pg_interval::Interval::new(0, 0, micros))
        }
        DataType::List(_) => {
            // PostgreSQL's array text (`{a,"b c",NULL}`), sent as text (see pg_type).
            let element = |values: &dyn Array, i: usize| array_value_to_string(values, i).unwrap_or_default();
            encoder.put(&changeflow_sql::arrays::array_text(array.as_ref(), row, &element).unwrap_or_default())
        }
        _ => {
            // Sent as text (see pg_type): structs and other Arrow-only types.
            let text = array_value_to_string(array, row).map_err(|e| encode_error(e.to_string()))?;
            encoder.put(&text)
        }
    }
}

fn encode_time<E: FieldSink>(encoder: &mut E, time: NaiveTime, text: bool) -> PgWireResult<()> {
    if text { encoder.put(&postgres_time(&time.to_string())) } else { encoder.put(&time) }
}

/// chrono writes `18:00:00.500` or `18:00:00`; PostgreSQL trims trailing zeros the same way,
/// so only a bare `.` or trailing zeros of the fraction need removing.
fn postgres_time(text: &str) -> String {
    match text.split_once('.') {
        Some((whole, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() { whole.to_string() } else { format!("{whole}.{fraction}") }
        }
        None => text.to_string(),
    }
}

fn date_from_days(days: i64) -> PgWireResult<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)
        .and_then(|epoch| epoch.checked_add_signed(TimeDelta::try_days(days)?))
        .ok_or_else(|| encode_error(format!("date {days} days after 1970-01-01 is out of range")))
}

fn time_from_micros(micros: i64) -> PgWireResult<NaiveTime> {
    let seconds = u32::try_from(micros.div_euclid(1_000_000)).ok();
    let nanos = u32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok();
    seconds
        .zip(nanos)
        .and_then(|(s, n)| NaiveTime::from_num_seconds_from_midnight_opt(s, n))
        .ok_or_else(|| encode_error(format!("time {micros} us after midnight is out of range")))
}
