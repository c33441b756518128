//! An aggregate's per-group results, taken before and after an epoch's changes as plain
//! values where they are plain (counts, exact sums with their value counts, packed extremes)
//! rather than as Arrow arrays: the two are compared value by value to find the groups whose
//! row changed, and only the rows the output picks are built into its columns. Results of
//! other kinds (float sums, averages, min/max of types that do not pack) are taken as the
//! accumulator's Arrow values and compared and picked with Arrow's kernels.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Decimal128Array, Int64Array};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::interleave;
use datafusion::arrow::compute::kernels::cmp::not_distinct;
use datafusion::arrow::datatypes::DataType;

use super::accumulator::{Accumulator, OrderedValues};
use super::packed_values::decode_integers;
use crate::error::{EngineError, Result};
use crate::rows::{RowCodec, integer_layout};

/// One accumulator's results for an epoch's touched groups, in the order given.
pub enum GroupResults {
    /// Counts, never NULL: count(*), count(x), count(DISTINCT x).
    Counts(Vec<i64>),
    /// Exact sums with the number of values behind each (NULL at 0), into `output`
    /// (BIGINT or NUMERIC).
    Sums { sums: Vec<i128>, counts: Vec<i64>, output: DataType },
    /// Packed extremes (0: no value, NULL) of the integer-backed type `input`, cast to `output`.
    Extremes { values: Vec<u128>, input: DataType, output: DataType },
    /// Any other result, as its values.
    Values(ArrayRef),
}

impl Accumulator {
    /// The results of `groups` (`rows[i]` rows in `groups[i]`). A mirror is read through the
    /// accumulator it mirrors (see [`Accumulator::extreme_results`]).
    pub fn results(&self, groups: &[usize], rows: &[i64]) -> Result<GroupResults> {
        let gather = |values: &[i64]| groups.iter().map(|&g| values[g]).collect();
        Ok(match self {
            Accumulator::CountRows => GroupResults::Counts(rows.to_vec()),
            Accumulator::Count { counts } => GroupResults::Counts(gather(counts)),
            Accumulator::CountDistinct { values, .. } => {
                GroupResults::Counts(groups.iter().map(|&g| values[g].len() as i64).collect())
            }
            Accumulator::SumExact { sums, counts, output } => GroupResults::Sums {
                sums: groups.iter().map(|&g| sums[g]).collect(),
                counts: gather(counts),
                output: output.clone(),
            },
            Accumulator::Extremum { max, output, .. } => self.extreme_results(groups, *max, output)?,
            Accumulator::Mirror { .. } => {
                return Err(EngineError::Internal("a mirrored min/max is read through the one it mirrors".into()));
            }
            other => GroupResults::Values(other.values(groups)?),
        })
    }

    /// The smallest (with `max`, largest) values of `groups` of a min/max, as `output`.
    pub fn extreme_results(&self, groups: &[usize], max: bool, output: &DataType) -> Result<GroupResults> {
        if let Accumulator::Extremum { values: OrderedValues::Packed(packed), input, .. } = self
            && integer_layout(input).is_some()
        {
            // 0: the group has no value (a packed value never is 0).
            let values = groups.iter().map(|&g| packed.extreme(g, max).unwrap_or(0)).collect();
            return Ok(GroupResults::Extremes { values, input: input.clone(), output: output.clone() });
        }
        Ok(GroupResults::Values(self.extremes(groups, max, output)?))
    }
}

impl GroupResults {
    /// Clears `same[i]` where the result of touched group `i` differs between `self` (before
    /// the epoch) and `after` (NULLs equal, as the rows' encodings would compare).
    pub fn mark_changed(&self, after: &GroupResults, same: &mut [bool]) -> Result<()> {
        match (self, after) {
            (GroupResults::Counts(before), GroupResults::Counts(after)) => {
                same.iter_mut().zip(before.iter().zip(after)).for_each(|(same, (b, a))| *same &= b == a);
            }
            (
                GroupResults::Sums { sums: sums_before, counts: counts_before, .. },
                GroupResults::Sums { sums: sums_after, counts: counts_after, .. },
            ) => {
                for (i, same) in same.iter_mut().enumerate() {
                    let (null_before, null_after) = (counts_before[i] == 0, counts_after[i] == 0);
                    *same &= null_before == null_after && (null_before || sums_before[i] == sums_after[i]);
                }
            }
            (GroupResults::Extremes { values: before, .. }, GroupResults::Extremes { values: after, .. }) => {
                same.iter_mut().zip(before.iter().zip(after)).for_each(|(same, (b, a))| *same &= b == a);
            }
            (GroupResults::Values(before), GroupResults::Values(after)) => {
                let equal = match not_distinct(before, after) {
                    Ok(equal) => equal,
                    // Nested types: compare their row encodings.
                    Err(_) => {
                        let codec = RowCodec::new(&[before.data_type().clone()])?;
                        let encode = |array: &ArrayRef| codec.encode(std::slice::from_ref(array));
                        let (before, after) = (encode(before)?, encode(after)?);
                        BooleanArray::from_iter((0..same.len()).map(|i| Some(before.row(i) == after.row(i))))
                    }
                };
                same.iter_mut().enumerate().for_each(|(i, same)| *same &= equal.value(i));
            }
            _ => return Err(mismatched()),
        }
        Ok(())
    }

    /// The output column of the `picked` rows, each `(0: before / 1: after, touched group)`.
    pub fn column(before: &GroupResults, after: &GroupResults, picked: &[(usize, usize)]) -> Result<ArrayRef> {
        Ok(match (before, after) {
            (GroupResults::Counts(before), GroupResults::Counts(after)) => {
                let sides = [before, after];
                Arc::new(Int64Array::from_iter_values(picked.iter().map(|&(side, i)| sides[side][i])))
            }
            (
                GroupResults::Sums { sums: sums_before, counts: counts_before, output },
                GroupResults::Sums { sums: sums_after, counts: counts_after, .. },
            ) => {
                let (sums, counts) = ([sums_before, sums_after], [counts_before, counts_after]);
                let sum_of = |&(side, i): &(usize, usize)| sums[side][i];
                let nulls = picked
                    .iter()
                    .any(|&(side, i)| counts[side][i] == 0)
                    .then(|| NullBuffer::from_iter(picked.iter().map(|&(side, i)| counts[side][i] != 0)));
                match output {
                    DataType::Int64 => {
                        // Narrowed in one pass that notes whether a sum with values (one that is
                        // not NULL) did not fit, rather than stopping at it: no branch per value.
                        let mut out_of_range = false;
                        let values: Vec<i64> = picked
                            .iter()
                            .map(|&(side, i)| {
                                let (sum, narrow) = (sums[side][i], sums[side][i] as i64);
                                out_of_range |= i128::from(narrow) != sum && counts[side][i] != 0;
                                narrow
                            })
                            .collect();
                        if out_of_range {
                            return Err(EngineError::Constraint("bigint out of range in sum".into()));
                        }
                        Arc::new(Int64Array::new(values.into(), nulls))
                    }
                    DataType::Decimal128(precision, scale) => {
                        let values: Vec<i128> = picked.iter().map(sum_of).collect();
                        Arc::new(
                            Decimal128Array::new(values.into(), nulls).with_precision_and_scale(*precision, *scale)?,
                        )
                    }
                    other => return Err(EngineError::Internal(format!("sum into {other}"))),
                }
            }
            (
                GroupResults::Extremes { values: before, input, output },
                GroupResults::Extremes { values: after, .. },
            ) => {
                let sides = [before, after];
                let values: Vec<u128> = picked.iter().map(|&(side, i)| sides[side][i]).collect();
                let array = decode_integers(&values, input)
                    .ok_or_else(|| EngineError::Internal(format!("min/max values of {input} that do not decode")))??;
                if input != output { cast(&array, output)? } else { array }
            }
            (GroupResults::Values(before), GroupResults::Values(after)) => {
                interleave(&[before.as_ref(), after.as_ref()], picked)?
            }
            _ => return Err(mismatched()),
        })
    }
}

fn mismatched() -> EngineError {
    EngineError::Internal("an aggregate's results before and after an epoch are of different kinds".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_compare_and_pick_as_their_values_with_no_values_as_null() {
        let before = GroupResults::Sums { sums: vec![5, 0, 7, 3], counts: vec![1, 0, 2, 1], output: DataType::Int64 };
        let after = GroupResults::Sums { sums: vec![5, 0, 7, 0], counts: vec![2, 0, 0, 1], output: DataType::Int64 };
        let mut same = vec![true; 4];
        before.mark_changed(&after, &mut same).expect("same kinds");
        // Group 0 has another value adding nothing; 1 stays NULL; 2 becomes NULL; 3 changes.
        assert_eq!(same, [true, true, false, false]);
        let column = GroupResults::column(&before, &after, &[(0, 2), (1, 2), (1, 3), (0, 0)]).expect("column");
        let column = column.as_any().downcast_ref::<Int64Array>().expect("BIGINT");
        let values: Vec<Option<i64>> = column.iter().collect();
        assert_eq!(values, [Some(7), None, Some(0), Some(5)]);
    }

    #[test]
    fn a_bigint_sum_out_of_range_is_refused_only_where_it_is_output() {
        let big = i128::from(i64::MAX) + 1;
        let before = GroupResults::Sums { sums: vec![big, 1], counts: vec![2, 1], output: DataType::Int64 };
        let after = GroupResults::Sums { sums: vec![0, big], counts: vec![0, 2], output: DataType::Int64 };
        assert!(GroupResults::column(&before, &after, &[(1, 0)]).is_ok(), "a NULL sum is not out of range");
        let refused = GroupResults::column(&before, &after, &[(1, 1)]).expect_err("out of range");
        assert!(refused.to_string().contains("bigint out of range in sum"), "{refused}");
    }

    #[test]
    fn results_of_different_kinds_are_refused() {
        let counts = GroupResults::Counts(vec![1]);
        let values = GroupResults::Values(Arc::new(Int64Array::from(vec![1])));
        assert!(counts.mark_changed(&values, &mut [true]).is_err());
        assert!(GroupResults::column(&counts, &values, &[(0, 0)]).is_err());
    }
}
