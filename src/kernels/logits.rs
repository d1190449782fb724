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

/// Values per chunk of the passes over a row: fixed-size chunks of plain
/// comparisons, which the compiler turns into vector code, so a 152k-entry
/// row costs microseconds on the engine thread.
const CHUNK: usize = 16;

/// The largest non-NaN value (−∞ when there is none) and whether any value
/// is NaN.
fn max_and_nan(values: &[f32]) -> (f32, bool) {
    let mut m = [f32::NEG_INFINITY; CHUNK];
    let mut nan = [false; CHUNK];
    let chunks = values.chunks_exact(CHUNK);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..CHUNK {
            // A NaN compares false, so it never replaces the maximum.
            m[j] = if c[j] > m[j] { c[j] } else { m[j] };
            nan[j] |= c[j].is_nan();
        }
    }
    let mut max = f32::NEG_INFINITY;
    let mut any_nan = false;
    for &v in m.iter().chain(tail) {
        max = if v > max { v } else { max };
        any_nan |= v.is_nan();
    }
    (max, any_nan || nan.iter().any(|&n| n))
}

/// The index of the largest value in Rust's total order (a NaN with the
/// sign bit clear is above +∞, and +0 above −0), the lowest index on ties;
/// 0 for an empty row.
pub fn argmax(values: &[f32]) -> TokenId {
    let (max, nan) = max_and_nan(values);
    if nan || max == 0.0 {
        // Where total order and `>` differ: NaNs, and the two zeros.
        return argmax_total(values);
    }
    // `max` is then the total order's maximum too, and equal values are
    // equal bits: the first of them.
    let at = values
        .chunks(CHUNK)
        .position(|c| c.iter().fold(false, |hit, &v| hit | (v == max)))
        .unwrap_or(0);
    let inner = values[at * CHUNK..]
        .iter()
        .position(|&v| v == max)
        .unwrap_or(0);
    (at * CHUNK + inner) as TokenId
}

/// [`argmax`] one comparison at a time: its definition.
fn argmax_total(values: &[f32]) -> TokenId {
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
    let floor = max_and_nan(values).0 - nats;
    let keep = |v: f32| v >= floor && v.is_finite();
    let mut kept = Vec::new();
    for (n, c) in values.chunks(CHUNK).enumerate() {
        // Most chunks of a row hold no candidate: one test for all of them.
        if c.iter().fold(false, |hit, &v| hit | (v >= floor)) {
            for (j, &v) in c.iter().enumerate() {
                if keep(v) {
                    kept.push(((n * CHUNK + j) as TokenId, v));
                }
            }
        }
    }
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
        assert_eq!(argmax(&[-1.0, -0.0, 0.0, -0.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    /// The chunked passes give the one-comparison-at-a-time definitions'
    /// results on rows of every length around the chunk size, with ties,
    /// masks, zeros and NaNs anywhere.
    #[test]
    fn chunked_passes_match_their_definitions() {
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 40) as usize
        };
        let specials = [
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NAN,
            -f32::NAN,
            0.0,
            -0.0,
        ];
        for len in (0..70).chain([151_936]) {
            for case in 0..12 {
                let mut row: Vec<f32> =
                    (0..len).map(|_| (next() % 64) as f32 / 4.0 - 8.0).collect();
                for _ in 0..case % 4 {
                    if len > 0 {
                        let at = next() % len;
                        row[at] = specials[next() % specials.len()];
                    }
                }
                if case >= 8 {
                    row.iter_mut().for_each(|v| *v = v.min(0.0) - 0.0);
                }
                assert_eq!(argmax(&row), argmax_total(&row), "len {len}: {row:?}");
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                for nats in [0.0, 1.5, 30.0] {
                    let mut want: Vec<(TokenId, f32)> = row
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v >= max - nats && v.is_finite())
                        .map(|(i, &v)| (i as TokenId, v))
                        .collect();
                    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    let got = within(&row, nats, 0);
                    let bits = |c: &[(TokenId, f32)]| {
                        c.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>()
                    };
                    assert_eq!(bits(&got), bits(&want), "len {len}, nats {nats}");
                }
            }
        }
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
