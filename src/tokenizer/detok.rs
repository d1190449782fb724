//! Streaming detokenization: turning one generated id at a time into text
//! deltas that concatenate to the full decoded text.

use anyhow::Result;

use super::Tokenizer;
use crate::types::TokenId;

/// Ids held back waiting for the rest of a UTF-8 character. A character is at
/// most four bytes and every byte-level token carries at least one, so past
/// this many ids the replacement character is real and gets emitted rather
/// than held (and the window kept growing) forever.
const MAX_PENDING: usize = 8;

/// Incremental detokenizer for one sequence.
///
/// Decoding single ids separately is wrong for byte-level BPE (a character can
/// span tokens) and for decoders that depend on context (SentencePiece strips
/// a leading space). So each step decodes a small window: the ids of the last
/// emitted chunk (the "prefix", which gives the context) plus the ids not yet
/// emitted, and returns what the window adds beyond the prefix's text. Ids
/// before the window are dropped, so the cost per id is bounded.
#[derive(Clone, Debug)]
pub struct IncrementalDecoder {
    skip_special_tokens: bool,
    /// The window: `ids[..read_offset]` is the prefix, already emitted;
    /// `ids[read_offset..]` is pending.
    ids: Vec<TokenId>,
    read_offset: usize,
    /// `ids[..read_offset]` decoded on its own, kept so each push decodes
    /// the window once.
    prefix_text: String,
}

impl IncrementalDecoder {
    /// A decoder for a new sequence; `skip_special_tokens` drops special
    /// tokens from the text as [`Tokenizer::decode`] does.
    pub fn new(skip_special_tokens: bool) -> Self {
        Self {
            skip_special_tokens,
            ids: Vec::new(),
            read_offset: 0,
            prefix_text: String::new(),
        }
    }

    /// Adds one generated id and returns the text it completes; empty while
    /// the id ends in the middle of a UTF-8 character.
    pub fn push(&mut self, tok: &Tokenizer, id: TokenId) -> Result<String> {
        self.ids.push(id);
        let full = tok.decode(&self.ids, self.skip_special_tokens)?;
        let pending = self.ids.len() - self.read_offset;
        if full.len() <= self.prefix_text.len() && pending < MAX_PENDING {
            return Ok(String::new());
        }
        if full.ends_with(char::REPLACEMENT_CHARACTER) && pending < MAX_PENDING {
            return Ok(String::new());
        }
        let delta = suffix_after(&full, &self.prefix_text).to_owned();
        // The newly emitted ids become the next prefix.
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        self.prefix_text = tok.decode(&self.ids, self.skip_special_tokens)?;
        Ok(delta)
    }

    /// Returns whatever is still held back (an incomplete character decodes to
    /// U+FFFD) and resets the decoder.
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let full = tok.decode(&self.ids, self.skip_special_tokens)?;
        let delta = suffix_after(&full, &self.prefix_text).to_owned();
        self.ids.clear();
        self.read_offset = 0;
        self.prefix_text.clear();
        Ok(delta)
    }
}

/// The part of `full` after `prefix`. Decoders extend their output
/// monotonically, so `prefix` is normally a prefix of `full`; if some decoder
/// rewrites earlier text, emit from the first differing character rather than
/// lose or repeat text.
fn suffix_after<'a>(full: &'a str, prefix: &str) -> &'a str {
    if let Some(rest) = full.strip_prefix(prefix) {
        return rest;
    }
    let common = full
        .char_indices()
        .zip(prefix.chars())
        .find(|((_, a), b)| a != b)
        .map(|((i, _), _)| i)
        .unwrap_or_else(|| prefix.len().min(full.len()));
    full.get(common..).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::suffix_after;

    #[test]
    fn suffix_after_prefix() {
        assert_eq!(suffix_after("hello world", "hello"), " world");
        assert_eq!(suffix_after("héllo", "h"), "éllo");
        assert_eq!(suffix_after("abc", "abc"), "");
    }

    #[test]
    fn suffix_after_rewritten_prefix() {
        assert_eq!(suffix_after("ab😀d", "ab\u{FFFD}"), "😀d");
        assert_eq!(suffix_after("ab", "abcd"), "");
    }
}
