//! Retractable aggregate accumulators, one slot per group. Sums and counts take negative
//! weights directly; min and max keep a multiset of values per group (ordered by the row
//! encoding), so deleting the current minimum finds the next one.

use std::sync::Arc;

use changeflow_sql::plan::{AggregateCall, AggregateKind};
use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Float64Array, PrimitiveArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};
use rustc_hash::FxHashMap;

use super::byte_values::ByteValues;
use super::packed_values::{PACKED_BYTES, PackedMultisets, pack, pack_integers, unpack};
use super::state::{INT128, StateReader, int64_column, int128_column, multiset_batch, multiset_types, state_batch};
use crate::error::{EngineError, Result};
use crate::heap_bytes::HeapBytes;
use crate::rows::{Encoded, RowCodec, encode_rows};

/// The state of one aggregate call across all groups.
pub enum Accumulator {
    CountRows,
    Count {
        counts: Vec<i64>,
    },
    /// Exact sums of integers and decimals (as unscaled i128), with the count of non-NULL values.
    SumExact {
        sums: Vec<i128>,
        counts: Vec<i64>,
        output: DataType,
    },
    SumFloat {
        sums: Vec<f64>,
        counts: Vec<i64>,
    },
    AvgFloat {
        sums: Vec<f64>,
        counts: Vec<i64>,
    },
    AvgDecimal {
        sums: Vec<i128>,
        counts: Vec<i64>,
        input_scale: i8,
        output: DataType,
    },
    Extremum {
        values: OrderedValues,
        codec: RowCodec,
        max: bool,
        input: DataType,
        output: DataType,
    },
    CountDistinct {
        values: Vec<FxHashMap<Box<[u8]>, i64>>,
        codec: RowCodec,
    },
    /// A min or max of the same argument as the `Extremum` at position `of` among the
    /// aggregate's accumulators: it reads that one's values (one multiset serves both ends),
    /// keeping no state and doing no work per change.
    Mirror {
        of: usize,
        max: bool,
        output: DataType,
    },
}

/// The argument column of one batch, converted to what the accumulator reads.
pub enum Prepared {
    None,
    Nulls(ArrayRef),
    Int(ArrayRef),
    Float(ArrayRef),
    /// Encoded values, and the argument (for its NULLs).
    Encoded(Encoded, ArrayRef),
    /// Packed values (0: NULL), for a min/max whose values pack.
    Packed(Vec<u128>),
}

impl Accumulator {
    pub fn new(call: &AggregateCall) -> Result<Self> {
        let unsupported = || {
            EngineError::Sql(changeflow_sql::SqlError::NotIncremental(format!(
                "{} over {} (result type {}) is not supported",
                call.display,
                call.arg_type.as_ref().map(|t| t.to_string()).unwrap_or_default(),
                call.output_type
            )))
        };
        Ok(match call.kind {
            AggregateKind::CountRows => Accumulator::CountRows,
            AggregateKind::Count => Accumulator::Count { counts: Vec::new() },
            AggregateKind::Sum => match &call.output_type {
                DataType::Int64 | DataType::Decimal128(_, _) => {
                    Accumulator::SumExact { sums: Vec::new(), counts: Vec::new(), output: call.output_type.clone() }
                }
                DataType::Float64 => Accumulator::SumFloat { sums: Vec::new(), counts: Vec::new() },
                _ => return Err(unsupported()),
            },
            AggregateKind::Avg => match (&call.output_type, &call.arg_type) {
                (DataType::Float64, _) => Accumulator::AvgFloat { sums: Vec::new(), counts: Vec::new() },
                (DataType::Decimal128(_, _), Some(DataType::Decimal128(_, scale))) => Accumulator::AvgDecimal {
                    sums: Vec::new(),
                    counts: Vec::new(),
                    input_scale: *scale,
                    output: call.output_type.clone(),
                },
                _ => return Err(unsupported()),
            },
            AggregateKind::Min | AggregateKind::Max => {
                let input = call.arg_type.clone().ok_or_else(unsupported)?;
                Accumulator::Extremum {
                    values: OrderedValues::for_type(&input),
                    codec: RowCodec::new(std::slice::from_ref(&input))?,
                    max: call.kind == AggregateKind::Max,
                    input,
                    output: call.output_type.clone(),
                }
            }
            AggregateKind::CountDistinct => {
                let input = call.arg_type.clone().ok_or_else(unsupported)?;
                Accumulator::CountDistinct { values: Vec::new(), codec: RowCodec::new(&[input])? }
            }
        })
    }

    /// Converts the argument column once per batch.
    pub fn prepare(&self, arg: Option<&ArrayRef>) -> Result<Prepared> {
        let Some(arg) = arg else { return Ok(Prepared::None) };
        if arg.null_count() == arg.len() && !matches!(self, Accumulator::CountRows) {
            return Ok(Prepared::Nulls(arg.clone()));
        }
        Ok(match self {
            Accumulator::CountRows | Accumulator::Mirror { .. } => Prepared::None,
            Accumulator::Count { .. } => Prepared::Nulls(arg.clone()),
            Accumulator::SumExact { output, .. } => Prepared::Int(cast(arg, output)?),
            Accumulator::AvgDecimal { input_scale, .. } => {
                Prepared::Int(cast(arg, &DataType::Decimal128(38, *input_scale))?)
            }
            Accumulator::SumFloat { .. } | Accumulator::AvgFloat { .. } => {
                Prepared::Float(cast(arg, &DataType::Float64)?)
            }
            Accumulator::Extremum { values: OrderedValues::Packed(_), codec, .. } => match pack_integers(arg) {
                Some(packed) => Prepared::Packed(packed),
                None => {
                    let keys = encode_rows(codec, std::slice::from_ref(arg))?;
                    let packed = (0..arg.len()).map(|i| if arg.is_valid(i) { pack(keys.get(i)) } else { Ok(0) });
                    Prepared::Packed(packed.collect::<Result<_>>()?)
                }
            },
            Accumulator::Extremum { codec, .. } | Accumulator::CountDistinct { codec, .. } => {
                Prepared::Encoded(encode_rows(codec, std::slice::from_ref(arg))?, arg.clone())
            }
        })
    }

    /// Heap bytes of the state of every group.
    pub fn heap_bytes(&self) -> usize {
        match self {
            Accumulator::CountRows | Accumulator::Mirror { .. } => 0,
            Accumulator::Count { counts } => counts.heap_bytes(),
            Accumulator::SumExact { sums, counts, .. } | Accumulator::AvgDecimal { sums, counts, .. } => {
                sums.heap_bytes() + counts.heap_bytes()
            }
            Accumulator::SumFloat { sums, counts } | Accumulator::AvgFloat { sums, counts } => {
                sums.heap_bytes() + counts.heap_bytes()
            }
            Accumulator::Extremum { values: OrderedValues::Packed(values), .. } => values.heap_bytes(),
            Accumulator::Extremum { values: OrderedValues::Bytes(values), .. } => values.heap_bytes(),
            Accumulator::CountDistinct { values, .. } => values.heap_bytes(),
        }
    }

    /// Makes room for group `group` (a new or reused slot) with an empty state.
    pub fn reset(&mut self, group: usize) {
        fn slot<T: Default>(v: &mut Vec<T>, group: usize) {
            if v.len() <= group {
                v.resize_with(group + 1, T::default);
            } else {
                v[group] = T::default();
            }
        }
        match self {
            Accumulator::CountRows => {}
            Accumulator::Count { counts } => slot(counts, group),
            Accumulator::SumExact { sums, counts, .. } | Accumulator::AvgDecimal { sums, counts, .. } => {
                slot(sums, group);
                slot(counts, group);
            }
            Accumulator::SumFloat { sums, counts } | Accumulator::AvgFloat { sums, counts } => {
                slot(sums, group);
                slot(counts, group);
            }
            Accumulator::Extremum { values: OrderedValues::Packed(values), .. } => values.reset(group),
            Accumulator::Extremum { values: OrderedValues::Bytes(values), .. } => slot(values, group),
            Accumulator::CountDistinct { values, .. } => slot(values, group),
            Accumulator::Mirror { .. } => {}
        }
    }

    /// The state of `groups` (in this order) for a checkpoint: per-group values aligned with
    /// `groups`, or multiset rows naming a group by its position there. None for count(*),
    /// whose value is the group's row count.
    pub fn save(&self, groups: &[usize]) -> Result<Option<RecordBatch>> {
        let counts_of = |counts: &[i64]| int64_column(groups.iter().map(|&g| counts[g]));
        Ok(Some(match self {
            Accumulator::CountRows | Accumulator::Mirror { .. } => return Ok(None),
            Accumulator::Count { counts } => state_batch(vec![("count", counts_of(counts))])?,
            Accumulator::SumExact { sums, counts, .. } | Accumulator::AvgDecimal { sums, counts, .. } => {
                state_batch(vec![
                    ("sum", int128_column(groups.iter().map(|&g| sums[g]))?),
                    ("count", counts_of(counts)),
                ])?
            }
            Accumulator::SumFloat { sums, counts } | Accumulator::AvgFloat { sums, counts } => state_batch(vec![
                ("sum", Arc::new(Float64Array::from_iter_values(groups.iter().map(|&g| sums[g])))),
                ("count", counts_of(counts)),
            ])?,
            Accumulator::Extremum { values: OrderedValues::Packed(values), .. } => {
                let rows = groups.iter().enumerate().flat_map(|(ordinal, &g)| {
                    values.entries(g).map(move |(value, count)| (ordinal as u32, unpack(value), count))
                });
                multiset_batch(&rows.collect::<Vec<_>>())?
            }
            Accumulator::Extremum { values: OrderedValues::Bytes(values), .. } => {
                multiset_batch(&multiset_rows(groups, |g| values[g].entries()))?
            }
            Accumulator::CountDistinct { values, .. } => {
                multiset_batch(&multiset_rows(groups, |g| values[g].iter().map(|(v, c)| (v.as_ref(), *c))))?
            }
        }))
    }

    /// Replaces the whole state with `groups` groups read from what [`Accumulator::save`]
    /// wrote.
    pub fn load(&mut self, groups: usize, state: &mut StateReader) -> Result<()> {
        fn aligned(len: usize, groups: usize, what: &str) -> Result<()> {
            if len != groups {
                return Err(EngineError::Durability(format!(
                    "checkpointed operator state does not fit the view: {what} has {len} groups where {groups} were expected"
                )));
            }
            Ok(())
        }
        fn cleared<T: Default>(values: &mut Vec<T>, groups: usize) {
            values.clear();
            values.resize_with(groups, T::default);
        }
        match self {
            Accumulator::CountRows | Accumulator::Mirror { .. } => {}
            Accumulator::Count { counts } => {
                let batch = state.next("a count's state", &[DataType::Int64])?;
                aligned(batch.len(), groups, "a count's state")?;
                *counts = batch.int64(0).values().to_vec();
            }
            Accumulator::SumExact { sums, counts, .. } | Accumulator::AvgDecimal { sums, counts, .. } => {
                let batch = state.next("a sum's state", &[INT128, DataType::Int64])?;
                aligned(batch.len(), groups, "a sum's state")?;
                *sums = (0..groups).map(|row| batch.int128(0, row)).collect::<Result<_>>()?;
                *counts = batch.int64(1).values().to_vec();
            }
            Accumulator::SumFloat { sums, counts } | Accumulator::AvgFloat { sums, counts } => {
                let batch = state.next("a sum's state", &[DataType::Float64, DataType::Int64])?;
                aligned(batch.len(), groups, "a sum's state")?;
                *sums = batch.float64(0).values().to_vec();
                *counts = batch.int64(1).values().to_vec();
            }
            Accumulator::Extremum { values, .. } => {
                let batch = state.next("a min/max's values", &multiset_types())?;
                match values {
                    OrderedValues::Packed(values) => {
                        values.clear(groups);
                        for row in 0..batch.len() {
                            let group = batch.ordinal(0, row, groups)?;
                            values.adjust(group, pack(batch.binary(1).value(row))?, batch.int64(2).value(row))?;
                        }
                    }
                    OrderedValues::Bytes(values) => {
                        cleared(values, groups);
                        for row in 0..batch.len() {
                            let group = batch.ordinal(0, row, groups)?;
                            adjust(&mut values[group], batch.binary(1).value(row), batch.int64(2).value(row))?;
                        }
                    }
                }
            }
            Accumulator::CountDistinct { values, .. } => {
                let batch = state.next("a count(DISTINCT)'s values", &multiset_types())?;
                cleared(values, groups);
                for row in 0..batch.len() {
                    let group = batch.ordinal(0, row, groups)?;
                    adjust(&mut values[group], batch.binary(1).value(row), batch.int64(2).value(row))?;
                }
            }
        }
        Ok(())
    }

    /// Adds every row of a batch: row `i` (prepared argument value `i`) goes to group
    /// `groups[i]` with weight `weights[i]`. One pass per accumulator, one downcast per batch.
    pub fn update_batch(&mut self, groups: &[usize], prepared: &Prepared, weights: &[i64]) -> Result<()> {
        fn add_exact(sums: &mut [i128], counts: &mut [i64], group: usize, value: i128, weight: i64) -> Result<()> {
            sums[group] = value
                .checked_mul(weight as i128)
                .and_then(|v| sums[group].checked_add(v))
                .ok_or_else(|| EngineError::Constraint("sum is out of range".into()))?;
            counts[group] += weight;
            Ok(())
        }
        match (self, prepared) {
            (Accumulator::CountRows, _) | (_, Prepared::None) => {}
            (Accumulator::Count { counts }, Prepared::Nulls(arg)) => {
                for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        counts[group] += weight;
                    }
                }
            }
            (_, Prepared::Nulls(_)) => {}
            (
                Accumulator::SumExact { sums, counts, .. } | Accumulator::AvgDecimal { sums, counts, .. },
                Prepared::Int(arg),
            ) => match arg.data_type() {
                DataType::Int64 => {
                    let values = arg.as_primitive::<Int64Type>();
                    for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                        if values.is_valid(i) {
                            add_exact(sums, counts, group, values.value(i) as i128, weight)?;
                        }
                    }
                }
                _ => {
                    let values = arg.as_primitive::<Decimal128Type>();
                    for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                        if values.is_valid(i) {
                            add_exact(sums, counts, group, values.value(i), weight)?;
                        }
                    }
                }
            },
            (Accumulator::SumFloat { sums, counts } | Accumulator::AvgFloat { sums, counts }, Prepared::Float(arg)) => {
                let values = arg.as_primitive::<Float64Type>();
                for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                    if values.is_valid(i) {
                        sums[group] += values.value(i) * weight as f64;
                        counts[group] += weight;
                    }
                }
            }
            (Accumulator::Extremum { values: OrderedValues::Packed(values), .. }, Prepared::Packed(packed)) => {
                values.adjust_rows(groups, packed, weights)?;
            }
            (Accumulator::Extremum { values: OrderedValues::Bytes(values), .. }, Prepared::Encoded(keys, arg)) => {
                for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        adjust(&mut values[group], keys.get(i), weight)?;
                    }
                }
            }
            (Accumulator::CountDistinct { values, .. }, Prepared::Encoded(keys, arg)) => {
                for (i, (&group, &weight)) in groups.iter().zip(weights).enumerate() {
                    if arg.is_valid(i) {
                        adjust(&mut values[group], keys.get(i), weight)?;
                    }
                }
            }
            _ => return Err(EngineError::Internal("aggregate argument prepared for another accumulator".into())),
        }
        Ok(())
    }

    /// The values of float sums and averages for several groups at once, built straight into
    /// typed arrays. The other kinds' results are plain values ([`Accumulator::results`]).
    pub fn values(&self, groups: &[usize]) -> Result<ArrayRef> {
        Ok(match self {
            Accumulator::SumFloat { sums, counts } => {
                Arc::new(per_group::<Float64Type>(groups, |g| (counts[g] != 0).then_some(sums[g])))
            }
            Accumulator::AvgFloat { sums, counts } => {
                Arc::new(per_group::<Float64Type>(groups, |g| (counts[g] != 0).then(|| sums[g] / counts[g] as f64)))
            }
            Accumulator::AvgDecimal { sums, counts, input_scale, output: DataType::Decimal128(precision, scale) } => {
                let shift = 10i128.pow((*scale - *input_scale).max(0) as u32);
                let averages = per_group::<Decimal128Type>(groups, |g| {
                    (counts[g] != 0).then(|| rounded_quotient(sums[g] * shift, counts[g]))
                });
                Arc::new(averages.with_precision_and_scale(*precision, *scale)?)
            }
            Accumulator::AvgDecimal { output, .. } => {
                return Err(EngineError::Internal(format!("avg into {output}")));
            }
            _ => return Err(EngineError::Internal("counts, exact sums and extremes are read as plain results".into())),
        })
    }

    /// The smallest (or with `max` largest) value of each group as `output`, for a min/max
    /// or a mirror of it.
    pub fn extremes(&self, groups: &[usize], max: bool, output: &DataType) -> Result<ArrayRef> {
        if let Accumulator::Extremum { values, codec, input, .. } = self {
            let extremes: Vec<Option<Extreme>> = groups.iter().map(|&g| values.extreme(g, max)).collect();
            let present: Vec<&[u8]> = extremes.iter().flatten().map(Extreme::bytes).collect();
            let decoded = if present.is_empty() {
                datafusion::arrow::array::new_empty_array(input)
            } else {
                codec.decode(present)?.remove(0)
            };
            let mut next = 0u32;
            let indices = UInt32Array::from_iter(extremes.iter().map(|e| {
                e.as_ref().map(|_| {
                    next += 1;
                    next - 1
                })
            }));
            let array = take(decoded.as_ref(), &indices, None)?;
            return Ok(if input != output { cast(&array, output)? } else { array });
        }
        Err(EngineError::Internal("min/max values read from an accumulator that keeps none".into()))
    }
}

/// A primitive array of `value(group)` for each of `groups` (`None`: NULL), built in one pass
/// into a plain vector; the validity bitmap, in a second pass, only when a value is NULL.
fn per_group<T: ArrowPrimitiveType>(groups: &[usize], value: impl Fn(usize) -> Option<T::Native>) -> PrimitiveArray<T> {
    let mut values = Vec::with_capacity(groups.len());
    let mut all_valid = true;
    for &group in groups {
        match value(group) {
            Some(v) => values.push(v),
            None => {
                all_valid = false;
                values.push(T::Native::default());
            }
        }
    }
    let nulls = (!all_valid).then(|| NullBuffer::from_iter(groups.iter().map(|&g| value(g).is_some())));
    PrimitiveArray::new(values.into(), nulls)
}

/// `numerator / count` rounded half away from zero, as PostgreSQL rounds numeric.
fn rounded_quotient(numerator: i128, count: i64) -> i128 {
    let count = count as i128;
    let quotient = numerator / count;
    let remainder = numerator % count;
    if remainder.abs() * 2 >= count.abs() { quotient + numerator.signum() * count.signum() } else { quotient }
}

/// Each group's values of a min or max with their multiplicities, ordered as their row
/// encoding orders them.
pub enum OrderedValues {
    /// Values of fixed-width types of at most 8 bytes, whose encodings are packed into a
    /// `u128` that orders the same way (and stored as its 8 bytes after the validity byte):
    /// no allocation and no `memcmp` per value.
    Packed(PackedMultisets),
    /// Any other values, as encoded byte strings.
    Bytes(Vec<ByteValues>),
}

impl OrderedValues {
    fn for_type(input: &DataType) -> Self {
        // A fixed-width value encodes as a validity byte and its bytes.
        match input.primitive_width().and_then(PackedMultisets::new) {
            Some(multisets) => OrderedValues::Packed(multisets),
            None => OrderedValues::Bytes(Vec::new()),
        }
    }

    /// The smallest (or with `max`, largest) value of a group.
    fn extreme(&self, group: usize, max: bool) -> Option<Extreme<'_>> {
        match self {
            OrderedValues::Packed(values) => values.extreme(group, max).map(|k| Extreme::Packed(k.to_be_bytes())),
            OrderedValues::Bytes(values) => values[group].extreme(max).map(Extreme::Bytes),
        }
    }
}

/// A group's extreme value, encoded.
enum Extreme<'a> {
    Packed([u8; 16]),
    Bytes(&'a [u8]),
}

impl Extreme<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Extreme::Packed(packed) => &packed[..packed[PACKED_BYTES] as usize],
            Extreme::Bytes(bytes) => bytes,
        }
    }
}

/// The multiset rows of `groups` (by position) for a checkpoint.
fn multiset_rows<'a, I>(groups: &[usize], entries: impl Fn(usize) -> I) -> Vec<(u32, Vec<u8>, i64)>
where
    I: Iterator<Item = (&'a [u8], i64)>,
{
    let mut rows = Vec::new();
    for (ordinal, &group) in groups.iter().enumerate() {
        rows.extend(entries(group).map(|(value, count)| (ordinal as u32, value.to_vec(), count)));
    }
    rows
}

/// A map from encoded values to multiplicities.
trait Multiset {
    fn count_mut(&mut self, key: &[u8]) -> Option<&mut i64>;
    fn put(&mut self, key: Box<[u8]>, count: i64);
    fn delete(&mut self, key: &[u8]);
}

impl Multiset for ByteValues {
    fn count_mut(&mut self, key: &[u8]) -> Option<&mut i64> {
        ByteValues::count_mut(self, key)
    }
    fn put(&mut self, key: Box<[u8]>, count: i64) {
        ByteValues::put(self, key, count);
    }
    fn delete(&mut self, key: &[u8]) {
        ByteValues::delete(self, key);
    }
}

impl Multiset for FxHashMap<Box<[u8]>, i64> {
    fn count_mut(&mut self, key: &[u8]) -> Option<&mut i64> {
        self.get_mut(key)
    }
    fn put(&mut self, key: Box<[u8]>, count: i64) {
        self.insert(key, count);
    }
    fn delete(&mut self, key: &[u8]) {
        self.remove(key);
    }
}

/// Adds `weight` to the multiplicity of `key`, removing it at zero.
fn adjust(map: &mut impl Multiset, key: &[u8], weight: i64) -> Result<()> {
    match map.count_mut(key) {
        Some(count) => {
            *count += weight;
            if *count == 0 {
                map.delete(key);
            } else if *count < 0 {
                return Err(EngineError::Internal("a value was retracted more often than inserted".into()));
            }
        }
        None if weight > 0 => map.put(key.into(), weight),
        None => return Err(EngineError::Internal("a value was retracted that was never inserted".into())),
    }
    Ok(())
}
