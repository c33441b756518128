//! PostgreSQL column types and their Arrow counterparts, and the conversion of PostgreSQL's
//! text output (what pgoutput and COPY send, with the session settings of
//! [`super::protocol::SESSION_SETTINGS`]) into Arrow arrays, a column at a time.
//!
//! Mapping: bool, int2/4/8, float4/8 as themselves; `numeric(p,s)` as Decimal128(p,s) and
//! unconstrained `numeric` as Decimal128(38,10) (values rounded half away from zero to 10
//! decimal places; larger ones refused); text, varchar, char, name, uuid, json, jsonb and
//! enums as Utf8; date as Date32; time as Time64(µs); timestamp as Timestamp(µs);
//! timestamptz as Timestamp(µs, UTC); interval as Interval(MonthDayNano); bytea as Binary;
//! one-dimensional arrays of those as List.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanArray, Decimal128Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, IntervalMonthDayNanoArray, ListArray, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, IntervalMonthDayNano, TimeUnit};
use datafusion::arrow::util::display::FormatOptions;

use super::error::PgError;

/// Decimal128(38, 10): where unconstrained `numeric` goes (as local NUMERIC does).
pub const UNCONSTRAINED_NUMERIC: (u8, i8) = (38, 10);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgType {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric { precision: u8, scale: i8 },
    Text,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Interval,
    Bytea,
    Array(Box<PgType>),
}

/// What the catalog says about a column's type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub oid: u32,
    pub typmod: i32,
    /// `typtype`: b(ase), e(num), d(omain), c(omposite), r(ange), p(seudo).
    pub kind: char,
    /// For arrays: the element type's oid and kind.
    pub element: Option<(u32, char)>,
    /// `format_type(oid, typmod)`, for messages.
    pub display: String,
}

impl PgType {
    /// The type of a column, or None when changeflow cannot carry it.
    pub fn from_info(info: &TypeInfo) -> Option<PgType> {
        if let Some((element, kind)) = info.element {
            let element = scalar(element, -1, kind)?;
            return Some(PgType::Array(Box::new(element)));
        }
        scalar(info.oid, info.typmod, info.kind)
    }

    /// A type whose [`Self::arrow_type`] is `data_type` (text-like types all come back as
    /// text): how a relation's column is read when its upstream column is gone.
    pub fn from_arrow(data_type: &DataType) -> Option<PgType> {
        Some(match data_type {
            DataType::Boolean => PgType::Bool,
            DataType::Int16 => PgType::Int2,
            DataType::Int32 => PgType::Int4,
            DataType::Int64 => PgType::Int8,
            DataType::Float32 => PgType::Float4,
            DataType::Float64 => PgType::Float8,
            DataType::Decimal128(precision, scale) => PgType::Numeric { precision: *precision, scale: *scale },
            DataType::Utf8 => PgType::Text,
            DataType::Date32 => PgType::Date,
            DataType::Time64(TimeUnit::Microsecond) => PgType::Time,
            DataType::Timestamp(TimeUnit::Microsecond, None) => PgType::Timestamp,
            DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => PgType::Timestamptz,
            DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano) => PgType::Interval,
            DataType::Binary => PgType::Bytea,
            DataType::List(element) => PgType::Array(Box::new(PgType::from_arrow(element.data_type())?)),
            _ => return None,
        })
    }

    pub fn arrow_type(&self) -> DataType {
        match self {
            PgType::Bool => DataType::Boolean,
            PgType::Int2 => DataType::Int16,
            PgType::Int4 => DataType::Int32,
            PgType::Int8 => DataType::Int64,
            PgType::Float4 => DataType::Float32,
            PgType::Float8 => DataType::Float64,
            PgType::Numeric { precision, scale } => DataType::Decimal128(*precision, *scale),
            PgType::Text => DataType::Utf8,
            PgType::Date => DataType::Date32,
            PgType::Time => DataType::Time64(TimeUnit::Microsecond),
            PgType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            PgType::Interval => DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
            PgType::Bytea => DataType::Binary,
            PgType::Array(element) => DataType::List(Arc::new(Field::new("item", element.arrow_type(), true))),
        }
    }

    /// Converts text values (NULL as None) into an array of [`Self::arrow_type`].
    pub fn convert(&self, text: &StringArray) -> Result<ArrayRef, PgError> {
        let values = || text.iter();
        Ok(match self {
            PgType::Bool => {
                Arc::new(values().map(|v| v.map(parse_bool).transpose()).collect::<Result<BooleanArray, _>>()?)
            }
            PgType::Int2 => {
                Arc::new(values().map(|v| v.map(parse_number).transpose()).collect::<Result<Int16Array, _>>()?)
            }
            PgType::Int4 => {
                Arc::new(values().map(|v| v.map(parse_number).transpose()).collect::<Result<Int32Array, _>>()?)
            }
            PgType::Int8 => {
                Arc::new(values().map(|v| v.map(parse_number).transpose()).collect::<Result<Int64Array, _>>()?)
            }
            PgType::Float4 => {
                Arc::new(values().map(|v| v.map(parse_number).transpose()).collect::<Result<Float32Array, _>>()?)
            }
            PgType::Float8 => {
                Arc::new(values().map(|v| v.map(parse_number).transpose()).collect::<Result<Float64Array, _>>()?)
            }
            PgType::Numeric { precision, scale } => Arc::new(
                values()
                    .map(|v| v.map(|v| parse_decimal(v, *precision, *scale)).transpose())
                    .collect::<Result<Decimal128Array, _>>()?
                    .with_precision_and_scale(*precision, *scale)?,
            ),
            PgType::Text => Arc::new(text.clone()),
            PgType::Date | PgType::Time | PgType::Timestamp => cast_text(text, &self.arrow_type())?,
            PgType::Timestamptz => {
                // TimeZone = UTC: every value ends in +00.
                let naive: StringArray = values().map(|v| v.map(|v| v.strip_suffix("+00").unwrap_or(v))).collect();
                let array = cast_text(&naive, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
                let array = array
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| PgError::Value("timestamp cast gave another type".into()))?
                    .clone()
                    .with_timezone("+00:00");
                Arc::new(array)
            }
            PgType::Interval => Arc::new(
                values()
                    .map(|v| v.map(parse_interval).transpose())
                    .collect::<Result<IntervalMonthDayNanoArray, _>>()?,
            ),
            PgType::Bytea => {
                let mut builder = BinaryBuilder::with_capacity(text.len(), text.value_data().len() / 2);
                for value in values() {
                    match value {
                        Some(value) => builder.append_value(parse_bytea(value)?),
                        None => builder.append_null(),
                    }
                }
                Arc::new(builder.finish())
            }
            PgType::Array(element) => convert_array(element, text)?,
        })
    }
}

fn scalar(oid: u32, typmod: i32, kind: char) -> Option<PgType> {
    if kind == 'e' {
        return Some(PgType::Text);
    }
    Some(match oid {
        16 => PgType::Bool,
        21 => PgType::Int2,
        23 => PgType::Int4,
        20 => PgType::Int8,
        700 => PgType::Float4,
        701 => PgType::Float8,
        1700 => {
            if typmod < 4 {
                let (precision, scale) = UNCONSTRAINED_NUMERIC;
                PgType::Numeric { precision, scale }
            } else {
                let precision = ((typmod - 4) >> 16) & 0xffff;
                let scale = (typmod - 4) & 0x7ff;
                // Negative scales (PostgreSQL 15) and precisions past Decimal128 are refused.
                if precision > 38 || scale > precision || (typmod - 4) & 0x400 != 0 {
                    return None;
                }
                PgType::Numeric { precision: precision as u8, scale: scale as i8 }
            }
        }
        // text, varchar, bpchar, name, "char", uuid, json, jsonb
        25 | 1043 | 1042 | 19 | 18 | 2950 | 114 | 3802 => PgType::Text,
        1082 => PgType::Date,
        1083 => PgType::Time,
        1114 => PgType::Timestamp,
        1184 => PgType::Timestamptz,
        1186 => PgType::Interval,
        17 => PgType::Bytea,
        _ => return None,
    })
}

fn cast_text(text: &StringArray, to: &DataType) -> Result<ArrayRef, PgError> {
    let options = CastOptions { safe: false, format_options: FormatOptions::default() };
    Ok(cast_with_options(text, to, &options)?)
}

fn parse_bool(value: &str) -> Result<bool, PgError> {
    match value {
        "t" => Ok(true),
        "f" => Ok(false),
        other => Err(PgError::Value(format!("'{other}' is not a boolean"))),
    }
}

fn parse_number<T: std::str::FromStr>(value: &str) -> Result<T, PgError> {
    value.parse().map_err(|_| PgError::Value(format!("'{value}' is not a valid {}", std::any::type_name::<T>())))
}

/// A decimal string as an integer scaled by `10^scale`, rounded half away from zero.
pub fn parse_decimal(value: &str, precision: u8, scale: i8) -> Result<i128, PgError> {
    let bad = || PgError::Value(format!("'{value}' does not fit numeric({precision},{scale})"));
    let (negative, digits) = match value.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, value.strip_prefix('+').unwrap_or(value)),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() && fraction.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(PgError::Value(format!(
            "'{value}' is not a number changeflow can carry (NaN and infinities are not)"
        )));
    }
    let scale = scale.max(0) as usize;
    let mut result: i128 = 0;
    for digit in whole.bytes().chain(fraction.bytes().chain(std::iter::repeat(b'0')).take(scale)) {
        result = result.checked_mul(10).and_then(|r| r.checked_add((digit - b'0') as i128)).ok_or_else(bad)?;
    }
    if fraction.len() > scale && fraction.as_bytes()[scale] >= b'5' {
        result = result.checked_add(1).ok_or_else(bad)?;
    }
    if result >= 10i128.pow(precision as u32) {
        return Err(bad());
    }
    Ok(if negative { -result } else { result })
}

/// An ISO 8601 interval as PostgreSQL writes it with `IntervalStyle = iso_8601`:
/// `P1Y2M3DT4H5M6.5S`, components possibly negative.
pub fn parse_interval(value: &str) -> Result<IntervalMonthDayNano, PgError> {
    let bad = || PgError::Value(format!("'{value}' is not an ISO 8601 interval"));
    let body = value.strip_prefix('P').ok_or_else(bad)?;
    let (mut months, mut days, mut nanos) = (0i64, 0i64, 0i64);
    let mut in_time = false;
    let mut number = String::new();
    for c in body.chars() {
        match c {
            'T' if number.is_empty() => in_time = true,
            '0'..='9' | '.' | '-' | '+' => number.push(c),
            unit => {
                let amount: f64 = number.parse().map_err(|_| bad())?;
                if !amount.is_finite() || amount.abs() >= i64::MAX as f64 {
                    return Err(bad());
                }
                let whole = amount as i64;
                // Every step is checked: a value out of range is an error, never a wrap.
                let add = |total: i64, amount: Option<i64>| amount.and_then(|a| total.checked_add(a)).ok_or_else(bad);
                match (in_time, unit) {
                    (false, 'Y') => months = add(months, whole.checked_mul(12))?,
                    (false, 'M') => months = add(months, Some(whole))?,
                    (false, 'W') => days = add(days, whole.checked_mul(7))?,
                    (false, 'D') => days = add(days, Some(whole))?,
                    (true, 'H') => nanos = add(nanos, whole.checked_mul(3_600_000_000_000))?,
                    (true, 'M') => nanos = add(nanos, whole.checked_mul(60_000_000_000))?,
                    (true, 'S') => {
                        // Seconds carry up to six decimals: parse them exactly.
                        let (int, fraction) = number.split_once('.').unwrap_or((&number, ""));
                        let seconds: i64 = int.parse().map_err(|_| bad())?;
                        let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
                        let mut micros: i64 = digits.parse().map_err(|_| bad())?;
                        if int.starts_with('-') {
                            micros = -micros;
                        }
                        let total = seconds.checked_mul(1_000_000_000).and_then(|s| s.checked_add(micros * 1_000));
                        nanos = add(nanos, total)?;
                    }
                    _ => return Err(bad()),
                }
                number.clear();
            }
        }
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(IntervalMonthDayNano::new(
        i32::try_from(months).map_err(|_| bad())?,
        i32::try_from(days).map_err(|_| bad())?,
        nanos,
    ))
}

/// `\x0a1b` (bytea_output = hex) as bytes.
pub fn parse_bytea(value: &str) -> Result<Vec<u8>, PgError> {
    let bad = || PgError::Value(format!("'{value}' is not hex-encoded bytea"));
    let hex = value.strip_prefix("\\x").ok_or_else(bad)?;
    if hex.len() % 2 != 0 {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).ok_or_else(bad)?, 16).map_err(|_| bad()))
        .collect()
}

/// One-dimensional array literals (`{1,2,NULL}`, `{"a b","c\"d"}`) into a list array.
fn convert_array(element: &PgType, text: &StringArray) -> Result<ArrayRef, PgError> {
    let mut elements = StringBuilder::new();
    let mut offsets = vec![0i32];
    let mut count = 0i32;
    for value in text.iter() {
        if let Some(value) = value {
            count += parse_array_literal(value, &mut elements)?;
        }
        offsets.push(count);
    }
    let values = element.convert(&elements.finish())?;
    let field = Arc::new(Field::new("item", element.arrow_type(), true));
    let nulls = text.nulls().cloned();
    Ok(Arc::new(ListArray::try_new(field, OffsetBuffer::new(offsets.into()), values, nulls)?))
}

/// Appends the elements of one array literal (PostgreSQL's text, read by the parser local
/// tables use too); returns how many there were.
fn parse_array_literal(value: &str, out: &mut StringBuilder) -> Result<i32, PgError> {
    let elements = changeflow_sql::arrays::parse_array_text(value).map_err(|e| PgError::Value(e.to_string()))?;
    for element in &elements {
        match element {
            Some(text) => out.append_value(text),
            None => out.append_null(),
        }
    }
    i32::try_from(elements.len()).map_err(|_| PgError::Value(format!("array '{value}' has too many elements")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_scale_and_round_half_away_from_zero() {
        assert_eq!(parse_decimal("12.345", 10, 2).expect("fits"), 1235);
        assert_eq!(parse_decimal("-0.5", 5, 0).expect("fits"), -1);
        assert_eq!(parse_decimal("7", 5, 3).expect("fits"), 7000);
        assert!(parse_decimal("123.4", 3, 1).is_err());
        assert!(parse_decimal("NaN", 10, 2).expect_err("NaN").to_string().contains("NaN"));
    }

    #[test]
    fn intervals_in_iso_8601() {
        let value = parse_interval("P1Y2M3DT4H5M6.5S").expect("parses");
        assert_eq!((value.months, value.days), (14, 3));
        assert_eq!(value.nanoseconds, ((4 * 60 + 5) * 60 + 6) * 1_000_000_000 + 500_000_000);
        let negative = parse_interval("P-1DT-0.25S").expect("parses");
        assert_eq!((negative.days, negative.nanoseconds), (-1, -250_000_000));
        assert_eq!(parse_interval("PT0S").expect("zero").nanoseconds, 0);
        // Out of range is an error, never a value that wrapped around.
        for huge in ["P999999999999999999Y", "PT9999999999H", "PT9223372036854775807S", "P1e300D", "PT3000000H4000000H"]
        {
            assert!(parse_interval(huge).is_err(), "{huge} was accepted");
        }
    }

    #[test]
    fn random_text_never_panics_a_value_parser() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(25);
        let pieces = [
            "P", "T", "Y", "M", "D", "H", "S", "W", "-", "+", ".", "9", "0", "{", "}", ",", "\"", "\\", "x", "é",
            "NULL", " ",
        ];
        for _ in 0..20_000 {
            let text: String =
                (0..rng.random_range(0..12)).map(|_| pieces[rng.random_range(0..pieces.len())]).collect();
            let _ = parse_interval(&text);
            let _ = parse_bytea(&text);
            let _ = parse_decimal(&text, 10, 2);
            let _ = parse_array_literal(&text, &mut StringBuilder::new());
        }
    }

    #[test]
    fn array_literals_with_quotes_and_nulls() {
        let mut out = StringBuilder::new();
        assert_eq!(parse_array_literal(r#"{a,"b c",NULL,"NULL","x\"y"}"#, &mut out).expect("parses"), 5);
        let values = out.finish();
        assert_eq!(values.value(1), "b c");
        assert!(values.is_null(2));
        assert_eq!(values.value(3), "NULL");
        assert_eq!(values.value(4), "x\"y");
        assert!(parse_array_literal("{{1,2},{3,4}}", &mut StringBuilder::new()).is_err());
    }
}
