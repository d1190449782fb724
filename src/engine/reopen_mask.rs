//! Keeping a closed reasoning block closed: the tokens that would write
//! the opening tag next, given the text generated so far. The same tables
//! over the closing tag, restricted to tokens that run past it, make a
//! constrained answer start exactly at a token boundary.
//!
//! Where `<think>` is one token, masking it is enough. Where it is text
//! spelled by several tokens (and BPE merges its last character with what
//! follows: `>\n` is one token in Qwen's vocabulary), every token that
//! completes the tag after the generated text is masked: the ones whose
//! text holds the whole tag, and, when the text ends with a proper prefix
//! of the tag, the ones whose text starts with the rest of it. Token texts
//! are vocabulary spellings, in which the tag's printable ASCII characters
//! stand for themselves in every tokenizer family.

use std::sync::Arc;

use crate::types::TokenId;

/// The masking tables of one tag over one vocabulary.
#[derive(Clone, Debug)]
pub struct ReopenMask {
    tag: String,
    /// Spelling of every token, by id.
    pieces: Arc<[Box<str>]>,
    /// Tokens whose text contains the whole tag.
    whole: Vec<TokenId>,
    /// `completing[k]`: tokens whose text starts with `tag[k..]`, which
    /// complete the tag after text ending with `tag[..k]` (k ≥ 1).
    completing: Vec<Vec<TokenId>>,
}

impl ReopenMask {
    /// Tables for `tag` over a vocabulary given as `pieces[id]`.
    pub fn new(tag: &str, pieces: Arc<[Box<str>]>) -> Self {
        Self::build(tag, pieces, false)
    }

    /// Tables of only the tokens that complete `tag` and carry text after
    /// it: masking them makes the tag end exactly at a token's end.
    pub fn overrunning(tag: &str, pieces: Arc<[Box<str>]>) -> Self {
        Self::build(tag, pieces, true)
    }

    fn build(tag: &str, pieces: Arc<[Box<str>]>, overrun_only: bool) -> Self {
        let mut whole = Vec::new();
        let mut completing = vec![Vec::new(); tag.len()];
        for (id, piece) in pieces.iter().enumerate() {
            let id = id as TokenId;
            if piece.contains(tag) && !(overrun_only && piece.ends_with(tag)) {
                whole.push(id);
            }
            for (k, slot) in completing.iter_mut().enumerate().skip(1) {
                let rest = tag.get(k..).unwrap_or_default();
                let overruns = piece.len() > rest.len();
                if tag.is_char_boundary(k)
                    && !piece.is_empty()
                    && piece.starts_with(rest)
                    && (overruns || !overrun_only)
                {
                    slot.push(id);
                }
            }
        }
        Self {
            tag: tag.to_string(),
            pieces,
            whole,
            completing,
        }
    }

    /// Keeps in `tail` the end of the generated text that can still grow
    /// into the tag, after `token`.
    pub fn advance(&self, tail: &mut String, token: TokenId) {
        if let Some(piece) = self.pieces.get(token as usize) {
            tail.push_str(piece);
        }
        let keep = self.tag.len().saturating_sub(1);
        if tail.len() > keep {
            let mut cut = tail.len() - keep;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
    }

    /// Whether `token` completes the tag after text ending in `tail`.
    pub fn completes(&self, tail: &str, token: TokenId) -> bool {
        let Some(piece) = self.pieces.get(token as usize) else {
            return false;
        };
        let mut text = String::with_capacity(tail.len() + piece.len());
        text.push_str(tail);
        text.push_str(piece);
        text.contains(self.tag.as_str())
    }

    /// Masks every token that would complete the tag after text ending in
    /// `tail`.
    pub fn apply(&self, tail: &str, logits: &mut [f32]) {
        let mut mask = |ids: &[TokenId]| {
            for &id in ids {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = f32::NEG_INFINITY;
                }
            }
        };
        mask(&self.whole);
        for (k, ids) in self.completing.iter().enumerate().skip(1) {
            if self.tag.is_char_boundary(k) && tail.ends_with(&self.tag[..k]) {
                mask(ids);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Arc<[Box<str>]> {
        [
            "<",
            "think",
            ">",
            ">\n",
            "th",
            "ink>",
            "x",
            "<think>",
            "a<think>b",
            "<th",
        ]
        .into_iter()
        .map(Box::from)
        .collect()
    }

    /// The tokens masked after `history`.
    fn masked(mask: &ReopenMask, history: &[TokenId]) -> Vec<TokenId> {
        let mut tail = String::new();
        for &t in history {
            mask.advance(&mut tail, t);
        }
        let n = mask.pieces.len();
        let mut logits = vec![0.0; n];
        mask.apply(&tail, &mut logits);
        (0..n as TokenId)
            .filter(|&i| logits[i as usize].is_infinite())
            .collect()
    }

    #[test]
    fn every_spelling_of_the_tag_is_masked_where_it_would_complete() {
        let mask = ReopenMask::new("<think>", vocab());
        // Anywhere: the tokens holding the whole tag.
        assert_eq!(masked(&mask, &[6]), vec![7, 8]);
        // After "<think": '>' and the merged '>\n'.
        assert_eq!(masked(&mask, &[0, 1]), vec![2, 3, 7, 8]);
        assert_eq!(masked(&mask, &[9, 4, 6, 0, 4]), vec![5, 7, 8]);
        // After "<": "think" alone does not complete it.
        assert_eq!(masked(&mask, &[6, 0]), vec![7, 8]);
    }

    #[test]
    fn overrunning_tables_keep_only_tokens_that_run_past_the_tag() {
        let pieces: Arc<[Box<str>]> = ["</", "think", ">", ">\n\n", "</think>", "</think>\n", "x"]
            .into_iter()
            .map(Box::from)
            .collect();
        let mask = ReopenMask::overrunning("</think>", pieces);
        assert_eq!(masked(&mask, &[6]), vec![5]);
        assert_eq!(masked(&mask, &[0, 1]), vec![3, 5]);
        let mut tail = String::new();
        for t in [0, 1] {
            mask.advance(&mut tail, t);
        }
        assert!(mask.completes(&tail, 2) && mask.completes(&tail, 3));
        assert!(!mask.completes(&tail, 6));
        assert!(mask.completes("", 4) && !mask.completes("", 2));
    }

    #[test]
    fn the_tail_stays_short() {
        let mask = ReopenMask::new("<think>", vocab());
        let mut tail = String::new();
        for _ in 0..100 {
            mask.advance(&mut tail, 8);
        }
        assert!(tail.len() < "<think>".len());
    }
}
