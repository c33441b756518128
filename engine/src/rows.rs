//! Row encoding with `arrow::row`: rows and keys become byte strings that hash, compare and
//! sort like the values they encode (NULLs included), and decode back to Arrow arrays. Rows
//! of integer-backed columns only (the keys of most groups and joins) decode without the row
//! format's general decoder, and encode without its general encoder, one pass per column: each
//! column sits at a fixed place in every row.

use datafusion::arrow::array::{Array, ArrayData, ArrayDataBuilder, ArrayRef, BinaryArray, make_array};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;

/// Encodes and decodes rows of a fixed list of column types.
#[derive(Debug)]
pub struct RowCodec {
    converter: RowConverter,
    width: usize,
    /// Each column's type and layout when every column is integer-backed and in the default
    /// order (see [`integer_layout`]).
    integers: Option<Vec<(DataType, IntegerLayout)>>,
}

/// Where an integer-backed value lies in the row format: a validity byte (1; 0 for NULL),
/// then `width` bytes big-endian, the sign bit flipped when `signed`.
#[derive(Debug, Clone, Copy)]
pub struct IntegerLayout {
    pub width: usize,
    pub signed: bool,
}

impl IntegerLayout {
    /// The bit the encoding flips in a value read as a `width`-byte number: its sign bit when
    /// signed (so that negative values order before positive ones as bytes), none otherwise.
    pub fn sign_bit(&self) -> u64 {
        if self.signed { 1 << (8 * self.width - 1) } else { 0 }
    }
}

/// The layout of an integer-backed type (integers, dates, times, timestamps, durations) in
/// the row format's default order; `None` for any other type.
pub fn integer_layout(data_type: &DataType) -> Option<IntegerLayout> {
    use DataType::*;
    let signed = match data_type {
        Int8 | Int16 | Int32 | Int64 | Date32 | Date64 | Time32(_) | Time64(_) | Timestamp(..) | Duration(_) => true,
        UInt8 | UInt16 | UInt32 | UInt64 => false,
        _ => return None,
    };
    Some(IntegerLayout { width: data_type.primitive_width()?, signed })
}

impl RowCodec {
    pub fn new(types: &[DataType]) -> Result<Self> {
        Self::sorted(types.iter().map(|t| (t.clone(), SortOptions::default())).collect())
    }

    /// A codec whose byte order is the given sort order (for ORDER BY keys).
    pub fn sorted(fields: Vec<(DataType, SortOptions)>) -> Result<Self> {
        let width = fields.len();
        let integers = fields
            .iter()
            .map(|(data_type, options)| {
                let layout = integer_layout(data_type).filter(|_| *options == SortOptions::default());
                layout.map(|layout| (data_type.clone(), layout))
            })
            .collect();
        let fields = fields.into_iter().map(|(t, o)| SortField::new_with_options(t, o)).collect();
        Ok(Self { converter: RowConverter::new(fields)?, width, integers })
    }

    pub fn for_schema(schema: &Schema) -> Result<Self> {
        let types: Vec<DataType> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
        Self::new(&types)
    }

    /// Number of columns; a zero-width codec encodes every row as the empty string.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Each column's type and layout when every column is integer-backed and in the default
    /// order.
    pub fn integer_columns(&self) -> Option<&[(DataType, IntegerLayout)]> {
        self.integers.as_deref()
    }

    pub fn encode(&self, columns: &[ArrayRef]) -> Result<Rows> {
        Ok(self.converter.convert_columns(columns)?)
    }

    /// An empty set of rows to push encoded rows into.
    pub fn empty_rows(&self, rows: usize, bytes: usize) -> Rows {
        self.converter.empty_rows(rows, bytes)
    }

    /// Decodes encoded rows (as stored byte strings) back into columns.
    pub fn decode<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        if let Some(columns) = &self.integers {
            let rows: Vec<&[u8]> = rows.into_iter().collect();
            if let Some(decoded) = decode_integer_rows(&rows, columns) {
                return decoded;
            }
            return self.decode_general(rows);
        }
        self.decode_general(rows)
    }

    fn decode_general<'a>(&self, rows: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(rows.into_iter().map(|bytes| parser.parse(bytes)))?;
        columns.into_iter().map(zero_null_slots).collect()
    }
}

/// Decodes rows of integer-backed columns one column at a time, each value from its fixed
/// place in its row straight into its column's buffer (the width chosen once per column);
/// `None` (the general decoder then decides) when a row is not laid out as expected.
pub fn decode_integer_rows(rows: &[&[u8]], columns: &[(DataType, IntegerLayout)]) -> Option<Result<Vec<ArrayRef>>> {
    let row_width = integer_row_width(columns);
    if rows.iter().any(|row| row.len() != row_width) {
        return None;
    }
    let mut decoded = Vec::with_capacity(columns.len());
    let mut at = 0;
    for (data_type, layout) in columns {
        // A validity byte is 1, or 0 for NULL.
        if rows.iter().any(|row| row[at] > 1) {
            return None;
        }
        let mut column = IntegerColumn::new(*layout, rows.len());
        let valid = |row: &[u8]| row[at] == 1;
        match layout.width {
            1 => column.extend_encoded(rows.iter().map(|row| (valid(row), u64::from(row[at + 1])))),
            2 => column.extend_encoded(
                rows.iter().map(|row| (valid(row), u64::from(u16::from_be_bytes(first_bytes(&row[at + 1..]))))),
            ),
            4 => column.extend_encoded(
                rows.iter().map(|row| (valid(row), u64::from(u32::from_be_bytes(first_bytes(&row[at + 1..]))))),
            ),
            _ => column
                .extend_encoded(rows.iter().map(|row| (valid(row), u64::from_be_bytes(first_bytes(&row[at + 1..]))))),
        }
        decoded.push(column.finish(data_type, |i| valid(rows[i])));
        at += 1 + layout.width;
    }
    Some(decoded.into_iter().collect())
}

/// The first `W` bytes (the caller checked there are as many), copied as one load.
#[inline]
pub(crate) fn first_bytes<const W: usize>(bytes: &[u8]) -> [u8; W] {
    let mut out = [0u8; W];
    out.copy_from_slice(&bytes[..W]);
    out
}

/// Bytes of a row of these integer-backed columns: a validity byte and the value's bytes each.
pub fn integer_row_width(columns: &[(DataType, IntegerLayout)]) -> usize {
    columns.iter().map(|(_, layout)| 1 + layout.width).sum()
}

/// One integer-backed column being decoded: the values so far (NULL as 0, as Arrow's builders
/// leave them).
pub(crate) struct IntegerColumn {
    /// The bit the encoding flipped ([`IntegerLayout::sign_bit`]).
    sign: u64,
    values: IntegerValues,
    nulls: usize,
}

/// Decoded values by width, in the native representation Arrow's buffers hold.
enum IntegerValues {
    W1(Vec<u8>),
    W2(Vec<u16>),
    W4(Vec<u32>),
    W8(Vec<u64>),
}

impl IntegerColumn {
    /// A column with room for `rows` values.
    pub(crate) fn new(layout: IntegerLayout, rows: usize) -> Self {
        let values = match layout.width {
            1 => IntegerValues::W1(Vec::with_capacity(rows)),
            2 => IntegerValues::W2(Vec::with_capacity(rows)),
            4 => IntegerValues::W4(Vec::with_capacity(rows)),
            _ => IntegerValues::W8(Vec::with_capacity(rows)),
        };
        Self { sign: layout.sign_bit(), values, nulls: 0 }
    }

    fn len(&self) -> usize {
        match &self.values {
            IntegerValues::W1(values) => values.len(),
            IntegerValues::W2(values) => values.len(),
            IntegerValues::W4(values) => values.len(),
            IntegerValues::W8(values) => values.len(),
        }
    }

    /// Adds values, each as whether it is set and its encoded bytes read as a big-endian
    /// number (the sign bit still flipped when signed; NULL decodes as 0), choosing the width
    /// once for all of them.
    pub(crate) fn extend_encoded(&mut self, values: impl Iterator<Item = (bool, u64)>) {
        fn extend<T>(
            out: &mut Vec<T>,
            values: impl Iterator<Item = (bool, u64)>,
            sign: u64,
            nulls: &mut usize,
            narrow: impl Fn(u64) -> T,
        ) {
            // One `extend` of an exactly sized iterator (no capacity check per value), the
            // NULLs counted in a local.
            let mut missing = 0;
            out.extend(values.map(|(valid, raw)| {
                missing += usize::from(!valid);
                narrow((raw ^ sign) & u64::from(valid).wrapping_neg())
            }));
            *nulls += missing;
        }
        let (sign, nulls) = (self.sign, &mut self.nulls);
        match &mut self.values {
            IntegerValues::W1(out) => extend(out, values, sign, nulls, |v| v as u8),
            IntegerValues::W2(out) => extend(out, values, sign, nulls, |v| v as u16),
            IntegerValues::W4(out) => extend(out, values, sign, nulls, |v| v as u32),
            IntegerValues::W8(out) => extend(out, values, sign, nulls, |v| v),
        }
    }

    /// The column as an array of `data_type`; `valid(i)` tells whether value `i` is set
    /// (asked only when some value is NULL).
    pub(crate) fn finish(self, data_type: &DataType, valid: impl Fn(usize) -> bool) -> Result<ArrayRef> {
        let len = self.len();
        let buffer = match self.values {
            IntegerValues::W1(values) => Buffer::from_vec(values),
            IntegerValues::W2(values) => Buffer::from_vec(values),
            IntegerValues::W4(values) => Buffer::from_vec(values),
            IntegerValues::W8(values) => Buffer::from_vec(values),
        };
        // Sixty-four values a word (collecting bools one at a time sets each bit apart).
        let nulls = (self.nulls > 0).then(|| NullBuffer::new(BooleanBuffer::collect_bool(len, valid)));
        let data = ArrayDataBuilder::new(data_type.clone()).len(len).add_buffer(buffer).nulls(nulls).build()?;
        Ok(make_array(data))
    }
}

/// Decoded NULLs of fixed-width types carry arbitrary values behind the null bit (i64::MIN
/// for timestamps). Some DataFusion kernels compute on those values and overflow, so the
/// slots are zeroed, as arrays built by Arrow's builders have them.
fn zero_null_slots(array: ArrayRef) -> Result<ArrayRef> {
    let Some(nulls) = array.logical_nulls() else { return Ok(array) };
    let Some(width) = array.data_type().primitive_width() else { return Ok(array) };
    if nulls.null_count() == 0 {
        return Ok(array);
    }
    let data = array.to_data();
    let start = data.offset() * width;
    let mut bytes = data.buffers()[0].as_slice()[start..start + data.len() * width].to_vec();
    for index in 0..data.len() {
        if nulls.is_null(index) {
            bytes[index * width..(index + 1) * width].fill(0);
        }
    }
    let zeroed = ArrayDataBuilder::new(data.data_type().clone())
        .len(data.len())
        .add_buffer(Buffer::from_vec(bytes))
        .nulls(Some(nulls))
        .build()?;
    Ok(make_array(zeroed))
}

/// Encodes the given columns row by row into owned byte strings; an empty column list gives
/// `len` empty keys (every row in one group).
pub fn encode_owned(codec: &RowCodec, columns: &[ArrayRef], len: usize) -> Result<Vec<Box<[u8]>>> {
    if codec.width() == 0 {
        return Ok(vec![Box::default(); len]);
    }
    let rows = codec.encode(columns)?;
    Ok(rows.iter().map(|row| Box::<[u8]>::from(row.data())).collect())
}

/// Encoded rows, borrowed one at a time without allocating.
pub enum Encoded {
    /// The rows' bytes in one buffer with 32-bit offsets (arrow-row's rows, converted without
    /// copying the bytes): reading a row is two loads, inlined where it is read.
    Bytes(BinaryArray),
    /// Rows whose bytes are too many for 32-bit offsets, as arrow-row made them.
    Rows(Rows),
    /// A zero-width codec: every row is the empty key.
    Empty,
    /// The first `len` bytes of each of these rows: the keys of rows whose key columns come
    /// first and encode to a fixed width, read off the rows without encoding them again.
    Prefixes(BinaryArray, usize),
}

impl Encoded {
    #[inline]
    pub fn get(&self, index: usize) -> &[u8] {
        match self {
            Encoded::Bytes(bytes) => bytes.value(index),
            Encoded::Rows(rows) => rows.row(index).data(),
            Encoded::Empty => &[],
            Encoded::Prefixes(rows, len) => &rows.value(index)[..*len],
        }
    }
}

/// The encoded width of rows of these types when it is the same for every row (integer-backed
/// columns in the default order), `None` otherwise.
pub fn fixed_width(codec: &RowCodec) -> Option<usize> {
    codec.integer_columns().map(integer_row_width)
}

/// Encodes the given columns; rows are then read with [`Encoded::get`].
pub fn encode_rows(codec: &RowCodec, columns: &[ArrayRef]) -> Result<Encoded> {
    if codec.width() == 0 {
        return Ok(Encoded::Empty);
    }
    if let Some(layouts) = codec.integer_columns()
        && let Some(rows) = encode_integer_rows(columns, layouts)
    {
        return Ok(Encoded::Bytes(rows));
    }
    let rows = codec.encode(columns)?;
    // `size` counts the buffer's capacity and more: under the limit, the conversion succeeds.
    if rows.size() > i32::MAX as usize {
        return Ok(Encoded::Rows(rows));
    }
    Ok(Encoded::Bytes(rows.try_into_binary()?))
}

/// Encodes columns of integer-backed types (in the default order) byte for byte as the row
/// format does, one column at a time into rows of a fixed width: a validity byte of 1 and the
/// value's bytes big-endian with the sign bit flipped when signed, or all zeros for NULL.
/// `None` (the general encoder then encodes) when a column is not of its layout's type or the
/// rows would not fit 32-bit offsets.
pub fn encode_integer_rows(columns: &[ArrayRef], layouts: &[(DataType, IntegerLayout)]) -> Option<BinaryArray> {
    let len = columns.first()?.len();
    let row_width = integer_row_width(layouts);
    let fits = i32::try_from(len.checked_mul(row_width)?).is_ok();
    let typed = columns.len() == layouts.len()
        && columns.iter().zip(layouts).all(|(column, (data_type, _))| column.data_type() == data_type);
    if !fits || !typed || columns.iter().any(|column| column.len() != len) {
        return None;
    }
    let mut bytes = vec![0u8; len * row_width];
    let mut at = 0;
    for (column, (_, layout)) in columns.iter().zip(layouts) {
        let data = column.to_data();
        let sign = layout.sign_bit();
        match layout.width {
            1 => put_values(&mut bytes, row_width, at, data.buffer::<u8>(0).iter().map(|v| [v ^ sign as u8])),
            2 => put_values(&mut bytes, row_width, at, big_endian(&data, |v: u16| (v ^ sign as u16).to_be_bytes())),
            4 => put_values(&mut bytes, row_width, at, big_endian(&data, |v: u32| (v ^ sign as u32).to_be_bytes())),
            _ => put_values(&mut bytes, row_width, at, big_endian(&data, |v: u64| (v ^ sign).to_be_bytes())),
        }
        if let Some(nulls) = data.nulls().filter(|nulls| nulls.null_count() > 0) {
            for row in (0..len).filter(|&row| nulls.is_null(row)) {
                bytes[row * row_width + at..row * row_width + at + 1 + layout.width].fill(0);
            }
        }
        at += 1 + layout.width;
    }
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(row_width, len));
    Some(BinaryArray::new(offsets, Buffer::from_vec(bytes), None))
}

/// A column's values (as unsigned numbers of their width) in their encoded form.
fn big_endian<'a, T: datafusion::arrow::datatypes::ArrowNativeType, const W: usize>(
    data: &'a ArrayData,
    encode: impl Fn(T) -> [u8; W] + 'a,
) -> impl Iterator<Item = [u8; W]> + 'a {
    data.buffer::<T>(0).iter().map(move |&value| encode(value))
}

/// Writes each value of a column, behind its validity byte of 1, at `at` of its row.
fn put_values<const W: usize>(bytes: &mut [u8], row_width: usize, at: usize, values: impl Iterator<Item = [u8; W]>) {
    for (row, value) in bytes.chunks_exact_mut(row_width).zip(values) {
        row[at] = 1;
        row[at + 1..at + 1 + W].copy_from_slice(&value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray};

    use super::*;
    use crate::test_random::integer_columns;

    fn round_trip(codec: &RowCodec, columns: &[ArrayRef]) -> Vec<ArrayRef> {
        let rows = codec.encode(columns).expect("encode");
        codec.decode(rows.iter().map(|row| row.data())).expect("decode")
    }

    #[test]
    fn integer_columns_encode_as_the_row_format_does() {
        let columns = integer_columns();
        let general = |codec: &RowCodec, columns: &[ArrayRef]| -> Vec<Vec<u8>> {
            codec.encode(columns).expect("encode").iter().map(|row| row.data().to_vec()).collect()
        };
        let fast = |codec: &RowCodec, columns: &[ArrayRef]| -> Vec<Vec<u8>> {
            let layouts = codec.integer_columns().expect("integer columns");
            let rows = encode_integer_rows(columns, layouts).expect("encoded");
            rows.iter().map(|row| row.expect("row").to_vec()).collect()
        };
        for column in &columns {
            let codec = RowCodec::new(&[column.data_type().clone()]).expect("codec");
            let one = std::slice::from_ref(column);
            assert_eq!(fast(&codec, one), general(&codec, one), "{}", column.data_type());
            // A slice starts part way into its buffers.
            let sliced = [column.slice(3, column.len() - 5)];
            assert_eq!(fast(&codec, &sliced), general(&codec, &sliced), "{} sliced", column.data_type());
        }
        let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
        let codec = RowCodec::new(&types).expect("codec");
        assert_eq!(fast(&codec, &columns), general(&codec, &columns));
        let Encoded::Bytes(rows) = encode_rows(&codec, &columns).expect("encode") else { panic!("not bytes") };
        assert_eq!(rows.len(), columns[0].len());
        // A column of another type than the codec's is left to the general encoder.
        let layouts = codec.integer_columns().expect("integer columns");
        let mut mistyped = columns.clone();
        mistyped.swap(0, 1);
        assert!(encode_integer_rows(&mistyped, layouts).is_none());
    }

    #[test]
    fn integer_columns_decode_as_the_general_decoder_does() {
        let columns = integer_columns();
        // One column at a time, then all of them in one row.
        for column in &columns {
            let codec = RowCodec::new(&[column.data_type().clone()]).expect("codec");
            assert!(codec.integers.is_some(), "{}", column.data_type());
            let decoded = round_trip(&codec, std::slice::from_ref(column));
            assert_eq!(decoded[0].to_data(), column.to_data(), "{}", column.data_type());
        }
        let types: Vec<DataType> = columns.iter().map(|c| c.data_type().clone()).collect();
        let codec = RowCodec::new(&types).expect("codec");
        let rows = codec.encode(&columns).expect("encode");
        let fast = codec.decode(rows.iter().map(|row| row.data())).expect("decode");
        let general = codec.decode_general(rows.iter().map(|row| row.data())).expect("decode");
        for ((fast, general), original) in fast.iter().zip(&general).zip(&columns) {
            assert_eq!(fast.to_data(), general.to_data(), "{}", original.data_type());
            assert_eq!(fast.to_data(), original.to_data(), "{}", original.data_type());
        }
    }

    #[test]
    fn other_columns_and_orders_take_the_general_decoder() {
        let ids: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), None, Some(-5)]));
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
        let codec = RowCodec::new(&[DataType::Int64, DataType::Utf8]).expect("codec");
        assert!(codec.integers.is_none());
        let decoded = round_trip(&codec, &[ids.clone(), names.clone()]);
        assert_eq!(decoded[0].to_data(), ids.to_data());
        assert_eq!(decoded[1].to_data(), names.to_data());
        let descending = SortOptions { descending: true, nulls_first: false };
        let codec = RowCodec::sorted(vec![(DataType::Int64, descending)]).expect("codec");
        assert!(codec.integers.is_none());
        assert_eq!(round_trip(&codec, std::slice::from_ref(&ids))[0].to_data(), ids.to_data());
        // A row not laid out as the columns are (here: too short) is left to the general
        // decoder.
        let codec = RowCodec::new(&[DataType::Int64]).expect("codec");
        let integers = codec.integers.as_deref().expect("integers");
        assert!(decode_integer_rows(&[&[1u8, 0, 0][..]], integers).is_none());
        // Or whose validity byte is neither 0 nor 1, in any row.
        let valid = [1u8, 0, 0, 0, 0, 0, 0, 0, 7];
        let invalid = [2u8, 0, 0, 0, 0, 0, 0, 0, 7];
        assert!(decode_integer_rows(&[&valid[..], &valid[..]], integers).is_some());
        assert!(decode_integer_rows(&[&valid[..], &invalid[..]], integers).is_none());
    }
}
