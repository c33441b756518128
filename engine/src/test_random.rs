//! A seeded pseudo-random sequence for the model tests (xorshift64: fixed seeds, no
//! dependency, the same sequence on every machine), and columns of every integer-backed type
//! for the tests of their encodings.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// The sequence from `state` (not zero).
pub fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    }
}

/// One column of each integer-backed type (integers, dates, times, timestamps, durations): each
/// type's limits, values around powers of two, NULLs and seeded random values, cast from
/// 64-bit integers (a value that does not fit a type becomes NULL).
pub fn integer_columns() -> Vec<ArrayRef> {
    let mut values: Vec<Option<i64>> = vec![Some(i64::MIN), Some(i64::MAX), None, Some(0), Some(-1), Some(1)];
    for shift in [7, 8, 15, 16, 31, 32, 62] {
        let power = 1i64 << shift;
        values.extend([Some(power), Some(-power), Some(power - 1), Some(-power + 7), None]);
    }
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    values.extend((0..500).map(|i| (i % 7 != 0).then(|| next() as i64 >> (next() % 64))));
    let int64: ArrayRef = Arc::new(Int64Array::from(values));
    let types = [
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt8,
        DataType::UInt16,
        DataType::UInt32,
        DataType::UInt64,
        DataType::Date32,
        DataType::Date64,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Time64(TimeUnit::Nanosecond),
        DataType::Duration(TimeUnit::Millisecond),
    ];
    let options = CastOptions { safe: true, ..Default::default() };
    types.iter().map(|t| cast_with_options(&int64, t, &options).expect("cast")).collect()
}
