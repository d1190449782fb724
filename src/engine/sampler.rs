//! Turning logits into tokens, one sequence at a time: the sequence's
//! logits processors (logit bias, min_tokens, reasoning control: see
//! [`super::logits`]), repetition/presence/frequency penalties,
//! temperature, top-k, top-p, min-p, a private seeded random stream, and
//! log-probabilities of the raw logits.
//!
//! Each sequence draws from its own RNG, so the tokens a seeded request gets
//! do not depend on what else is in the batch.

use super::types::{SamplingParams, TokenLogprob};
use crate::kernels::logits::{argmax, within, LogitsRow, RowNeed, TAIL_NATS};
use crate::types::TokenId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, HashSet};

/// Per-sequence sampling state.
pub struct SamplerState {
    rng: StdRng,
    /// Occurrences of each generated token, for presence/frequency penalties.
    output_counts: HashMap<TokenId, u32>,
    /// The distinct tokens of prompt and output, for the repetition
    /// penalty: built from the context at the first penalized step, then
    /// kept up to date one token at a time, so a step costs the distinct
    /// tokens, not a sort of the whole context.
    seen: Option<Seen>,
}

/// A set of tokens with its members in a list, for iteration in a fixed
/// order.
struct Seen {
    ids: Vec<TokenId>,
    set: HashSet<TokenId>,
}

impl Seen {
    fn new(tokens: &[TokenId]) -> Self {
        let mut seen = Seen {
            ids: Vec::new(),
            set: HashSet::new(),
        };
        for &t in tokens {
            seen.insert(t);
        }
        seen
    }

    fn insert(&mut self, token: TokenId) {
        if self.set.insert(token) {
            self.ids.push(token);
        }
    }
}

impl SamplerState {
    /// State for sample `index` of a request; a seeded request gives each of
    /// its samples a distinct but reproducible stream.
    pub fn new(seed: Option<u64>, index: usize) -> Self {
        let rng = match seed {
            Some(s) => {
                StdRng::seed_from_u64(s ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
            }
            None => StdRng::from_os_rng(),
        };
        Self {
            rng,
            output_counts: HashMap::new(),
            seen: None,
        }
    }

    /// Records a generated token.
    pub fn observe(&mut self, token: TokenId) {
        *self.output_counts.entry(token).or_default() += 1;
        if let Some(seen) = &mut self.seen {
            seen.insert(token);
        }
    }
}

/// Log-probabilities of `logits`.
pub(super) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f32 = logits.iter().map(|v| (v - max).exp()).sum();
    let lse = max + sum.ln();
    logits.iter().map(|v| v - lse).collect()
}

/// The `n` largest values with their indices, largest first (lower index
/// first on ties).
pub(super) fn top_n(values: &[f32], n: usize) -> Vec<(TokenId, f32)> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    let n = n.min(values.len());
    if n == 0 {
        return Vec::new();
    }
    idx.select_nth_unstable_by(n - 1, |&a, &b| {
        values[b].total_cmp(&values[a]).then(a.cmp(&b))
    });
    idx.truncate(n);
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    idx.into_iter().map(|i| (i as TokenId, values[i])).collect()
}

/// What [`sample`] will read of a sequence's next logits row: the whole
/// row when logits processors (`processed`), penalties or logprobs need
/// it, else the argmax (greedy) or the candidates of a random draw, which a
/// device can reduce the row to before it leaves device memory.
pub fn row_need(params: &SamplingParams, processed: bool) -> RowNeed {
    let penalized = params.repetition_penalty != 1.0
        || params.presence_penalty != 0.0
        || params.frequency_penalty != 0.0;
    if processed || penalized || params.logprobs.is_some() {
        RowNeed::Full
    } else if params.temperature <= 0.0 {
        RowNeed::Argmax
    } else {
        RowNeed::Within {
            nats: tail_nats(params),
            limit: params.top_k,
        }
    }
}

/// How far below the best logit a random draw looks.
fn tail_nats(params: &SamplingParams) -> f32 {
    TAIL_NATS * params.temperature
}

/// Samples one token from a logits `row` and returns it with the raw
/// distribution's log-probabilities when the request asked for logprobs
/// (see [`logprob_entry`]). A whole row is modified in place: `process`
/// runs the sequence's logits processors, then the penalties apply
/// (`all_tokens`, prompt and output, feed the repetition penalty). A
/// reduced row is what [`row_need`] asked for, so none of those apply, and
/// it gives the token the whole row would.
pub fn sample(
    row: LogitsRow,
    params: &SamplingParams,
    state: &mut SamplerState,
    all_tokens: &[TokenId],
    process: impl FnOnce(&mut [f32]),
) -> (TokenId, Option<Vec<f32>>) {
    let mut logits = match row {
        LogitsRow::Full(logits) => logits,
        LogitsRow::Argmax(token) => return (token, None),
        LogitsRow::Within(cand) => return (sample_random(cand, params, &mut state.rng), None),
    };
    // Log-probabilities are reported on the model's raw distribution, as
    // OpenAI and vLLM do, before any request-specific processing.
    let raw_logprobs = params.logprobs.map(|_| log_softmax(&logits));

    process(&mut logits);
    if params.repetition_penalty != 1.0 {
        let seen = state.seen.get_or_insert_with(|| Seen::new(all_tokens));
        for &t in &seen.ids {
            if let Some(l) = logits.get_mut(t as usize) {
                *l = if *l > 0.0 {
                    *l / params.repetition_penalty
                } else {
                    *l * params.repetition_penalty
                };
            }
        }
    }
    if params.presence_penalty != 0.0 || params.frequency_penalty != 0.0 {
        for (&t, &c) in &state.output_counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.presence_penalty + params.frequency_penalty * c as f32;
            }
        }
    }

    let token = if params.temperature <= 0.0 {
        argmax(&logits)
    } else {
        let cand = within(&logits, tail_nats(params), params.top_k);
        sample_random(cand, params, &mut state.rng)
    };

    (token, raw_logprobs)
}

/// The logprob entry of `token` with the `k` most likely alternatives,
/// from the log-probabilities [`sample`] returned.
pub fn logprob_entry(raw_logprobs: &[f32], token: TokenId, k: usize) -> TokenLogprob {
    TokenLogprob {
        token,
        logprob: raw_logprobs
            .get(token as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY),
        top: top_n(raw_logprobs, k),
    }
}

/// Draws among `cand` (the tokens within [`tail_nats`] of the best, as
/// [`within`] orders them, perhaps cut to the top-k already) after top-k,
/// top-p and min-p cut the tail.
/// Tokens further down than the tail would have probability under 1e-13,
/// so the draw does not look at them, with or without top-k.
fn sample_random(
    mut cand: Vec<(TokenId, f32)>,
    params: &SamplingParams,
    rng: &mut StdRng,
) -> TokenId {
    let inv_t = 1.0 / params.temperature;
    if params.top_k > 0 {
        cand.truncate(params.top_k);
    }
    if cand.is_empty() {
        return 0;
    }
    let max = cand[0].1;
    let mut probs: Vec<f32> = cand
        .iter()
        .map(|(_, l)| ((l - max) * inv_t).exp())
        .collect();
    let total: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    let mut keep = probs.len();
    if params.top_p < 1.0 {
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if acc >= params.top_p {
                keep = i + 1;
                break;
            }
        }
    }
    if params.min_p > 0.0 {
        let floor = params.min_p * probs[0];
        keep = keep.min(probs.iter().take_while(|&&p| p >= floor).count().max(1));
    }
    let total: f32 = probs[..keep].iter().sum();
    let mut u: f32 = rng.random::<f32>() * total;
    for (i, p) in probs[..keep].iter().enumerate() {
        if u < *p {
            return cand[i].0;
        }
        u -= p;
    }
    cand[keep - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::logits::reduce;

    fn draw(
        logits: &mut [f32],
        p: &SamplingParams,
        s: &mut SamplerState,
        all: &[TokenId],
    ) -> (TokenId, Option<Vec<f32>>) {
        sample(LogitsRow::Full(logits.to_vec()), p, s, all, |_| {})
    }

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = SamplerState::new(Some(1), 0);
        let (t, _) = draw(&mut [0.1, 3.0, 2.0], &greedy(), &mut s, &[]);
        assert_eq!(t, 1);
    }

    /// The greedy pick is the first of `top_n`'s order: the largest value,
    /// the lowest index on ties, NaN ordered as `total_cmp` orders it.
    #[test]
    fn argmax_agrees_with_top_n() {
        let cases: [&[f32]; 5] = [
            &[0.5],
            &[1.0, 3.0, 3.0, -2.0],
            &[f32::NEG_INFINITY, f32::NEG_INFINITY],
            &[-0.0, 0.0, -1.0],
            &[2.0, f32::NAN, 7.0],
        ];
        for values in cases {
            assert_eq!(argmax(values), top_n(values, 1)[0].0, "{values:?}");
        }
    }

    /// Dropping the far tail before sorting keeps the candidates and the
    /// order `top_n` over the whole vocabulary gives (largest first, lower
    /// index on ties), so seeded draws are unchanged.
    #[test]
    fn tail_cut_keeps_the_candidate_order() {
        let p = SamplingParams {
            temperature: 0.5,
            ..Default::default()
        };
        let mut logits = vec![-100.0f32; 1000];
        for (i, l) in [(7, 1.0), (3, 1.0), (500, 2.0), (999, -5.0), (10, -12.9)] {
            logits[i] = l;
        }
        logits[11] = f32::NAN;
        let floor = 2.0 - 30.0 * p.temperature;
        let reference: Vec<_> = top_n(&logits, logits.len())
            .into_iter()
            .filter(|(_, l)| *l >= floor && l.is_finite())
            .collect();
        assert_eq!(
            reference.iter().map(|c| c.0).collect::<Vec<_>>(),
            [500, 3, 7, 999, 10]
        );
        assert_eq!(within(&logits, tail_nats(&p), 0), reference);
    }

    /// A row reduced as `row_need` asks gives, draw after draw of the same
    /// seed, the tokens the whole row gives: what lets a device send back
    /// only the candidates.
    #[test]
    fn reduced_rows_draw_the_tokens_of_whole_rows() {
        let mut rng = StdRng::seed_from_u64(5);
        let rows: Vec<Vec<f32>> = (0..40)
            .map(|_| {
                (0..300)
                    .map(|i| rng.random::<f32>() * 25.0 - (i % 3) as f32 * 10.0)
                    .collect()
            })
            .collect();
        let settings = [
            (0.0, 0, 1.0, 0.0),
            (1.0, 0, 1.0, 0.0),
            (0.6, 0, 0.95, 0.0),
            (0.3, 40, 1.0, 0.0),
            (1.3, 500, 0.9, 0.05),
            (2.0, 0, 1.0, 0.1),
        ];
        for (temperature, top_k, top_p, min_p) in settings {
            let p = SamplingParams {
                temperature,
                top_k,
                top_p,
                min_p,
                ..Default::default()
            };
            let need = row_need(&p, false);
            assert_ne!(need, RowNeed::Full);
            let (mut whole, mut reduced) =
                (SamplerState::new(Some(9), 0), SamplerState::new(Some(9), 0));
            for row in &rows {
                let a = sample(LogitsRow::Full(row.clone()), &p, &mut whole, &[], |_| {});
                let b = sample(reduce(row, need), &p, &mut reduced, &[], |_| {});
                assert_eq!(a, b, "temperature {temperature}, top_k {top_k}");
            }
        }
        let full = |p: SamplingParams, processed| row_need(&p, processed) == RowNeed::Full;
        assert!(full(greedy(), true));
        assert!(full(
            SamplingParams {
                logprobs: Some(0),
                ..greedy()
            },
            false
        ));
        assert!(full(
            SamplingParams {
                repetition_penalty: 1.1,
                ..greedy()
            },
            false
        ));
        assert!(full(
            SamplingParams {
                presence_penalty: 0.5,
                ..greedy()
            },
            false
        ));
        assert!(full(
            SamplingParams {
                frequency_penalty: -0.5,
                ..greedy()
            },
            false
        ));
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let mut s = SamplerState::new(Some(1), 0);
        assert_eq!(draw(&mut [0.1, 3.0, 2.0], &p, &mut s, &[1]).0, 2);
    }

    /// The context is read once; later tokens join the set as they are
    /// generated, without rereading the context.
    #[test]
    fn repetition_penalty_follows_generated_tokens() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            ..greedy()
        };
        let mut s = SamplerState::new(Some(1), 0);
        assert_eq!(draw(&mut [0.1, 3.0, 2.5, 2.4], &p, &mut s, &[1]).0, 2);
        s.observe(2);
        assert_eq!(draw(&mut [0.1, 3.0, 2.5, 2.4], &p, &mut s, &[1]).0, 3);
    }

    #[test]
    fn presence_and_frequency_penalties_use_output_counts() {
        for (pres, freq) in [(1.5, 0.0), (0.0, 0.6)] {
            let p = SamplingParams {
                presence_penalty: pres,
                frequency_penalty: freq,
                ..greedy()
            };
            let mut s = SamplerState::new(Some(1), 0);
            s.observe(1);
            s.observe(1);
            assert_eq!(draw(&mut [0.1, 3.0, 2.0], &p, &mut s, &[]).0, 2);
        }
    }

    fn histogram(p: &SamplingParams, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut s = SamplerState::new(Some(7), 0);
        let mut h = vec![0; logits.len()];
        for _ in 0..draws {
            let mut l = logits.to_vec();
            h[draw(&mut l, p, &mut s, &[]).0 as usize] += 1;
        }
        h
    }

    #[test]
    fn top_k_top_p_and_min_p_cut_the_tail() {
        let logits = [2.0, 1.9, 1.8, -1.0];
        let base = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        assert!(histogram(&base, &logits, 2000)[3] > 0);
        let k = SamplingParams {
            top_k: 2,
            ..base.clone()
        };
        let h = histogram(&k, &logits, 2000);
        assert!(h[2] == 0 && h[3] == 0 && h[0] > 0 && h[1] > 0);
        let tp = SamplingParams {
            top_p: 0.5,
            ..base.clone()
        };
        let h = histogram(&tp, &logits, 2000);
        assert!(h[2] == 0 && h[3] == 0, "{h:?}");
        let mp = SamplingParams {
            min_p: 0.5,
            ..base.clone()
        };
        assert_eq!(histogram(&mp, &logits, 2000)[3], 0);
    }

    #[test]
    fn temperature_sharpens() {
        let logits = [1.0, 0.0];
        let hot = SamplingParams {
            temperature: 2.0,
            ..Default::default()
        };
        let cold = SamplingParams {
            temperature: 0.2,
            ..Default::default()
        };
        assert!(histogram(&hot, &logits, 3000)[1] > histogram(&cold, &logits, 3000)[1] * 5);
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let p = SamplingParams {
            temperature: 1.0,
            ..Default::default()
        };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed, index| {
            let mut s = SamplerState::new(Some(seed), index);
            (0..20)
                .map(|_| draw(&mut logits.clone(), &p, &mut s, &[]).0)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3, 0), run(3, 0));
        assert_ne!(run(3, 0), run(4, 0));
        assert_ne!(run(3, 0), run(3, 1));
    }

    #[test]
    fn logprobs_are_log_softmax_of_raw_logits() {
        let p = SamplingParams {
            logprobs: Some(2),
            ..greedy()
        };
        let mut s = SamplerState::new(Some(1), 0);
        let row = LogitsRow::Full(vec![0.0, 1.0, 0.5]);
        let (t, raw) = sample(row, &p, &mut s, &[], |l| l[0] += 10.0);
        let lp = logprob_entry(&raw.unwrap(), t, 2);
        assert_eq!(t, 0);
        let lse = (1f32.exp() + 1.0 + 0.5f32.exp()).ln();
        assert!((lp.logprob - (0.0 - lse)).abs() < 1e-6);
        assert_eq!(lp.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
    }
}
