//! How much of a logits row the sampler needs ([`RowNeed`]), and the host
//! reductions that give it ([`reduce_rows`]). A device with memory of its
//! own reduces each row before it leaves that memory, so a greedy stream
//! brings back one id instead of a vocabulary of floats; these functions
//! define the result, and a device's reduction must return the same ids and
//! values bit for bit.

use crate::types::TokenId;

/// A random draw at temperature `T` looks only at tokens at most
/// `TAIL_NATS · T` below the best logit: further down, a token's
/// probability is under e⁻³⁰ ≈ 1e-13 of the best's.
pub const TAIL_NATS: f32 = 30.0;

/// How much of one logits row the sampler needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RowNeed {
    /// Every value: logits processors, penalties and logprobs read them all.
    Full,
    /// Only the index of the largest value: greedy sampling.
    Argmax,
    /// The finite values at most `nats` below the largest, with their ids,
    /// the first `limit` of them (all when 0): what a random draw chooses
    /// among ([`within`]).
    Within {
        /// How far below the largest value.
        nats: f32,
        /// How many at most (a top-k), 0 for all.
        limit: usize,
    },
}

/// One logits row as a model step returns it, reduced as its [`RowNeed`]
/// asked.
#[derive(Clone, Debug, PartialEq)]
pub enum LogitsRow {
    /// Every value of the row.
    Full(Vec<f32>),
    /// The index of the largest value.
    Argmax(TokenId),
    /// `(id, logit)` pairs as [`within`] returns them.
    Within(Vec<(TokenId, f32)>),
}

impl LogitsRow {
    /// The whole row, when it came back whole.
    pub fn into_full(self) -> Option<Vec<f32>> {
        match self {
            LogitsRow::Full(v) => Some(v),
            _ => None,
        }
    }
}

/// The index of the largest value in Rust's total order (a NaN with the
/// sign bit clear is above +∞), the lowest index on ties; 0 for an empty
/// row.
pub fn argmax(values: &[f32]) -> TokenId {
    let mut best = 0;
    for (i, v) in values.iter().enumerate().skip(1) {
        if v.total_cmp(&values[best]).is_gt() {
            best = i;
        }
    }
    best as TokenId
}

/// The finite values no lower than `max − nats` (`max` the largest
/// non-NaN value, `nats` subtracted in f32), with their indices, largest
/// first and the lower index first on ties; the first `limit` of them when
/// `limit` is not 0.
pub fn within(values: &[f32], nats: f32, limit: usize) -> Vec<(TokenId, f32)> {
    let max = values.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let floor = max - nats;
    let mut kept: Vec<(TokenId, f32)> = values
        .iter()
        .enumerate()
        .filter(|(_, v)| **v >= floor && v.is_finite())
        .map(|(i, &v)| (i as TokenId, v))
        .collect();
    sort_candidates(&mut kept, limit);
    kept
}

/// Orders `(id, logit)` pairs as [`within`] returns them and keeps the
/// first `limit` (all when 0); a device that collects them in any order
/// sorts them with this. A limit selects before it sorts, so a top-k draw
/// at a high temperature does not sort the whole vocabulary.
pub fn sort_candidates(c: &mut Vec<(TokenId, f32)>, limit: usize) {
    let order = |a: &(TokenId, f32), b: &(TokenId, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    if limit > 0 && limit < c.len() {
        c.select_nth_unstable_by(limit - 1, order);
        c.truncate(limit);
    }
    c.sort_unstable_by(order);
}

/// Reduces one row as `need` asks.
pub fn reduce(row: &[f32], need: RowNeed) -> LogitsRow {
    match need {
        RowNeed::Full => LogitsRow::Full(row.to_vec()),
        RowNeed::Argmax => LogitsRow::Argmax(argmax(row)),
        RowNeed::Within { nats, limit } => LogitsRow::Within(within(row, nats, limit)),
    }
}

/// Splits `flat` (one row per entry of `needs`, row after row) and reduces
/// each row as its need asks. A single full row is `flat` itself, without
/// a vocabulary-sized copy per token.
pub fn reduce_rows(flat: Vec<f32>, needs: &[RowNeed]) -> Vec<LogitsRow> {
    if needs.is_empty() {
        return Vec::new();
    }
    if needs == [RowNeed::Full] {
        return vec![LogitsRow::Full(flat)];
    }
    let width = flat.len() / needs.len();
    flat.chunks_exact(width.max(1))
        .zip(needs)
        .map(|(row, &need)| reduce(row, need))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_orders_nan_on_top() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
        assert_eq!(argmax(&[1.0, f32::NAN, f32::INFINITY]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn within_keeps_the_finite_values_above_the_floor_in_order() {
        let row = [0.0, 5.0, f32::NEG_INFINITY, 2.0, 5.0, f32::NAN, -0.5, 2.0];
        assert_eq!(
            within(&row, 3.0, 0),
            vec![(1, 5.0), (4, 5.0), (3, 2.0), (7, 2.0)]
        );
        assert_eq!(within(&row, 3.0, 3), within(&row, 3.0, 0)[..3]);
        assert_eq!(within(&row, 3.0, 9), within(&row, 3.0, 0));
        // The floor itself is kept: 5 − 5.5 = −0.5.
        assert_eq!(within(&row, 5.5, 0).len(), 6);
        assert!(within(&[f32::NAN, f32::NEG_INFINITY], 30.0, 0).is_empty());
    }

    #[test]
    fn rows_are_reduced_each_as_asked() {
        let flat = vec![
            0.0, 2.0, 1.0, /* row 2 */ 3.0, 1.0, 3.0, /* row 3 */ 1.0, 0.0, -9.0,
        ];
        let rows = reduce_rows(
            flat,
            &[
                RowNeed::Argmax,
                RowNeed::Full,
                RowNeed::Within {
                    nats: 1.0,
                    limit: 0,
                },
            ],
        );
        assert_eq!(
            rows,
            vec![
                LogitsRow::Argmax(1),
                LogitsRow::Full(vec![3.0, 1.0, 3.0]),
                LogitsRow::Within(vec![(0, 1.0), (1, 0.0)]),
            ]
        );
        assert_eq!(
            reduce_rows(vec![1.0, 2.0], &[RowNeed::Full]),
            vec![LogitsRow::Full(vec![1.0, 2.0])]
        );
    }
}
