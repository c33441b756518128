//! One Arrow value as JSON, faithfully: integers and floats as numbers, decimals as strings
//! (or numbers when asked), timestamps in ISO 8601 with their zone (UTC: `Z`), dates and
//! times in ISO 8601, bytea as base64, JSON columns embedded as JSON, lists as arrays,
//! structs (the `before` / `after` of `changes(...)`) as objects.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use datafusion::arrow::array::{
    Array, AsArray, BinaryArray, BooleanArray, Decimal128Array, Float32Array, Float64Array, Int16Array, Int32Array,
    Int64Array, LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::array_value_to_string;
use serde_json::{Number, Value};

/// How values are written.
#[derive(Debug, Clone, Default)]
pub struct ValueOptions {
    pub decimals_as_numbers: bool,
    /// Text columns holding JSON documents, embedded as JSON rather than as strings.
    pub json_columns: Vec<String>,
}

fn float(value: f64) -> Value {
    Number::from_f64(value).map(Value::Number).unwrap_or_else(|| Value::String(value.to_string()))
}

/// The value at `row` of `array` as JSON text; structs keep their fields in order.
pub fn json_text(array: &dyn Array, row: usize, column: &str, options: &ValueOptions) -> String {
    if let DataType::Struct(fields) = array.data_type()
        && !array.is_null(row)
    {
        let parts = array.as_struct();
        let inner: Vec<String> = fields
            .iter()
            .enumerate()
            .map(|(i, field)| {
                let name = Value::String(field.name().clone()).to_string();
                format!("{name}:{}", json_text(parts.column(i).as_ref(), row, field.name(), options))
            })
            .collect();
        return format!("{{{}}}", inner.join(","));
    }
    json_value(array, row, column, options).to_string()
}

/// The value at `row` of `array` (a column named `column`).
pub fn json_value(array: &dyn Array, row: usize, column: &str, options: &ValueOptions) -> Value {
    // A Null-typed column (`SELECT NULL AS n`) has no validity bitmap.
    if array.data_type().is_null() || array.is_null(row) {
        return Value::Null;
    }
    let any = array.as_any();
    let text = |s: &str| {
        if options.json_columns.iter().any(|c| c == column) {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
        } else {
            Value::String(s.to_string())
        }
    };
    match array.data_type() {
        DataType::Boolean => any.downcast_ref::<BooleanArray>().map(|a| Value::Bool(a.value(row))),
        DataType::Int16 => any.downcast_ref::<Int16Array>().map(|a| Value::from(a.value(row))),
        DataType::Int32 => any.downcast_ref::<Int32Array>().map(|a| Value::from(a.value(row))),
        DataType::Int64 => any.downcast_ref::<Int64Array>().map(|a| Value::from(a.value(row))),
        DataType::Float32 => any.downcast_ref::<Float32Array>().map(|a| float(a.value(row) as f64)),
        DataType::Float64 => any.downcast_ref::<Float64Array>().map(|a| float(a.value(row))),
        DataType::Decimal128(_, _) => any.downcast_ref::<Decimal128Array>().map(|a| {
            let text = a.value_as_string(row);
            if options.decimals_as_numbers {
                text.parse::<f64>().map(float).unwrap_or(Value::String(text))
            } else {
                Value::String(text)
            }
        }),
        DataType::Utf8 => any.downcast_ref::<StringArray>().map(|a| text(a.value(row))),
        DataType::LargeUtf8 => any.downcast_ref::<LargeStringArray>().map(|a| text(a.value(row))),
        DataType::Utf8View => any.downcast_ref::<StringViewArray>().map(|a| text(a.value(row))),
        DataType::Binary => any.downcast_ref::<BinaryArray>().map(|a| Value::String(BASE64.encode(a.value(row)))),
        DataType::Timestamp(_, zone) => array_value_to_string(array, row).ok().map(|s| {
            // Arrow writes `2026-12-01T18:00:00` (and `Z` with a UTC zone): a timestamp
            // without zone is UTC here.
            if zone.is_some() || s.ends_with('Z') { Value::String(s) } else { Value::String(format!("{s}Z")) }
        }),
        DataType::Struct(fields) => {
            let parts = array.as_struct();
            let mut object = serde_json::Map::new();
            for (i, field) in fields.iter().enumerate() {
                object.insert(field.name().clone(), json_value(parts.column(i).as_ref(), row, field.name(), options));
            }
            Some(Value::Object(object))
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            let values = list.value(row);
            Some(Value::Array((0..values.len()).map(|i| json_value(values.as_ref(), i, column, options)).collect()))
        }
        _ => array_value_to_string(array, row).ok().map(Value::String),
    }
    .unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, TimestampMicrosecondArray};

    use super::*;

    #[test]
    fn values_are_written_faithfully() {
        let options = ValueOptions { decimals_as_numbers: false, json_columns: vec!["doc".into()] };
        let decimal: ArrayRef =
            Arc::new(Decimal128Array::from(vec![12345]).with_precision_and_scale(10, 2).expect("decimal"));
        assert_eq!(json_value(decimal.as_ref(), 0, "d", &options), Value::String("123.45".into()));
        let numbers = ValueOptions { decimals_as_numbers: true, ..options.clone() };
        assert_eq!(json_value(decimal.as_ref(), 0, "d", &numbers), serde_json::json!(123.45));
        let at: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![1_796_148_000_000_000]));
        assert_eq!(json_value(at.as_ref(), 0, "t", &options), Value::String("2026-12-01T18:00:00Z".into()));
        let zoned: ArrayRef =
            Arc::new(TimestampMicrosecondArray::from(vec![1_796_148_000_000_000]).with_timezone("UTC"));
        assert_eq!(json_value(zoned.as_ref(), 0, "t", &options), Value::String("2026-12-01T18:00:00Z".into()));
        let bytes: ArrayRef = Arc::new(BinaryArray::from(vec![b"\x00\xffhi".as_ref()]));
        assert_eq!(json_value(bytes.as_ref(), 0, "b", &options), Value::String("AP9oaQ==".into()));
        let docs: ArrayRef = Arc::new(StringArray::from(vec!["{\"a\": [1, 2]}"]));
        assert_eq!(json_value(docs.as_ref(), 0, "doc", &options), serde_json::json!({"a": [1, 2]}));
        assert_eq!(json_value(docs.as_ref(), 0, "other", &options), Value::String("{\"a\": [1, 2]}".into()));
    }
}
