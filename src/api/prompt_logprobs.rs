//! vLLM's `prompt_logprobs` on the wire: the engine's entries for a
//! prompt's tokens, with their texts, as one object per position.

use std::collections::BTreeMap;

use super::backend::PromptCodec;
use super::generation::token_text;
use super::protocol::{PromptLogprobs, PromptTokenLogprob};
use crate::engine::types::PromptLogprob;

/// The wire form of `entries` (one per prompt token after the first):
/// `null` for the first token, then the prompt token's entry together with
/// the most likely tokens, ranked 1, 2, ... in order.
pub fn wire(codec: &dyn PromptCodec, entries: &[PromptLogprob]) -> PromptLogprobs {
    let position = |entry: &PromptLogprob| {
        let mut tokens: BTreeMap<String, PromptTokenLogprob> = entry
            .top
            .iter()
            .enumerate()
            .map(|(i, &(id, logprob))| {
                let text = token_text(codec, id);
                (id.to_string(), logprob_of(logprob, i + 1, text))
            })
            .collect();
        let text = token_text(codec, entry.token);
        tokens.insert(
            entry.token.to_string(),
            logprob_of(entry.logprob, entry.rank, text),
        );
        Some(tokens)
    };
    std::iter::once(None)
        .chain(entries.iter().map(position))
        .collect()
}

fn logprob_of(logprob: f32, rank: usize, decoded_token: String) -> PromptTokenLogprob {
    PromptTokenLogprob {
        logprob,
        rank,
        decoded_token,
    }
}
