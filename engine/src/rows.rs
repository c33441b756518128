//! Row encoding with `arrow::row`: rows and keys become byte strings that hash, compare and
//! sort like the values they encode (NULLs included), and decode back to Arrow arrays.

use datafusion::arrow::array::{ArrayDataBuilder, ArrayRef, make_array};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::row::{RowConverter, Rows, SortField};

use crate::error::Result;

/// Encodes and decodes rows of a fixed list of column types.
#[derive(Debug)]
pub struct RowCodec {
    converter: RowConverter,
    width: usize,
}

impl RowCodec {
    pub fn new(types: &[DataType]) -> Result<Self> {
        Self::with_fields(types.iter().map(|t| SortField::new(t.clone())).collect())
    }

    /// A codec whose byte order is the given sort order (for ORDER BY keys).
    pub fn sorted(fields: Vec<(DataType, SortOptions)>) -> Result<Self> {
        Self::with_fields(fields.into_iter().map(|(t, o)| SortField::new_with_options(t, o)).collect())
    }

    fn with_fields(fields: Vec<SortField>) -> Result<Self> {
        let width = fields.len();
        Ok(Self { converter: RowConverter::new(fields)?, width })
    }

    pub fn for_schema(schema: &Schema) -> Result<Self> {
        let types: Vec<DataType> = schema.fields().iter().map(|f| f.data_type().clone()).collect();
        Self::new(&types)
    }

    /// Number of columns; a zero-width codec encodes every row as the empty string.
    pub fn width(&self) -> usize {
        self.width
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
        let parser = self.converter.parser();
        let columns = self.converter.convert_rows(rows.into_iter().map(|bytes| parser.parse(bytes)))?;
        columns.into_iter().map(zero_null_slots).collect()
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
    Rows(Rows),
    /// A zero-width codec: every row is the empty key.
    Empty,
}

impl Encoded {
    pub fn get(&self, index: usize) -> &[u8] {
        match self {
            Encoded::Rows(rows) => rows.row(index).data(),
            Encoded::Empty => &[],
        }
    }
}

/// Encodes the given columns; rows are then read with [`Encoded::get`].
pub fn encode_rows(codec: &RowCodec, columns: &[ArrayRef]) -> Result<Encoded> {
    if codec.width() == 0 {
        return Ok(Encoded::Empty);
    }
    Ok(Encoded::Rows(codec.encode(columns)?))
}
