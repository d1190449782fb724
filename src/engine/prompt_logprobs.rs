//! Logprobs of a prompt's own tokens (vLLM's `prompt_logprobs`): the
//! logits at position `p` give the distribution of token `p + 1`, so a
//! prompt of `n` tokens has `n - 1` entries (the first token has none).
//!
//! Only the first sample of a request collects them, during its prefill: its
//! model rows are all kept for that, which costs a `vocab`-sized row per
//! prompt token, so the scheduler computes at most [`MAX_PROMPT_LOGIT_ROWS`]
//! such tokens per step, all requests together; and it does not take prompt
//! blocks from the prefix cache, whose positions would have no logits (vLLM
//! does the same).

use super::sampler::{log_softmax, top_n};
use super::types::PromptLogprob;
use crate::types::TokenId;

/// Most prompt tokens per step, all sequences together, whose logits are
/// kept for prompt logprobs: bounds the extra logits a step returns to this
/// many rows (64 rows of a 152k-token vocabulary are 39 MB).
pub const MAX_PROMPT_LOGIT_ROWS: usize = 64;

/// The entry of `token` under `logits`, with the `k` most likely tokens.
/// Logprobs are of the raw logits, as generated tokens' are; `rank` is 1
/// plus the number of tokens strictly more likely.
pub fn entry(logits: &[f32], token: TokenId, k: usize) -> PromptLogprob {
    let logprobs = log_softmax(logits);
    let logprob = logprobs
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    PromptLogprob {
        token,
        logprob,
        rank: 1 + logprobs.iter().filter(|&&l| l > logprob).count(),
        top: top_n(&logprobs, k),
    }
}

/// Adds the entries that the logit `rows` of positions `start..` give
/// about `prompt` (rows past the prompt's last token predict generated
/// tokens and are skipped). Positions already collected, as when a
/// preempted sequence recomputes its prompt, are not collected again.
pub fn collect(
    entries: &mut Vec<PromptLogprob>,
    prompt: &[TokenId],
    start: usize,
    rows: &[Vec<f32>],
    k: usize,
) {
    for (p, row) in (start..).zip(rows) {
        if p == entries.len() && p + 1 < prompt.len() {
            entries.push(entry(row, prompt[p + 1], k));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_log_softmax_with_rank_and_top() {
        // ln(e^2 + e^1 + e^0 + e^1) = 2.7873; logprobs -0.787, -1.787, -2.787.
        let row = [2.0, 1.0, 0.0, 1.0];
        let e = entry(&row, 3, 2);
        let lse = (2f32.exp() + 2.0 * 1f32.exp() + 1.0).ln();
        assert!((e.logprob - (1.0 - lse)).abs() < 1e-6);
        assert_eq!(e.rank, 2, "only token 0 is strictly more likely");
        assert_eq!(e.top.len(), 2);
        assert_eq!(e.top[0].0, 0);
        assert_eq!(entry(&row, 2, 0).rank, 4);
    }

    #[test]
    fn collection_follows_positions_and_skips_recomputed_ones() {
        let prompt = [5, 0, 1, 2];
        let rows: Vec<Vec<f32>> = (0..4).map(|i| vec![i as f32; 4]).collect();
        let mut entries = Vec::new();
        collect(&mut entries, &prompt, 0, &rows[..2], 0);
        assert_eq!(entries.iter().map(|e| e.token).collect::<Vec<_>>(), [0, 1]);
        // A recomputation from 0 adds nothing twice; the row of the last
        // prompt position predicts a generated token and adds nothing.
        collect(&mut entries, &prompt, 0, &rows, 0);
        assert_eq!(
            entries.iter().map(|e| e.token).collect::<Vec<_>>(),
            [0, 1, 2]
        );
    }
}
