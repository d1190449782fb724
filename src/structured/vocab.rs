//! The served model's vocabulary as the grammar engine sees it: the bytes
//! of every token id, in a trie, with the tokenizer behind it.
//!
//! Built once at start; building the trie over a 150k vocabulary takes
//! about a tenth of a second, after which every grammar of every request
//! shares it.

use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::ParserFactory;

use crate::tokenizer::Tokenizer;
use crate::types::TokenId;

/// The tokenizer behind the trie, for the text the grammar engine has to
/// tokenize itself (forced literals).
struct Env {
    trie: TokTrie,
    tokenizer: Tokenizer,
}

impl TokenizerEnv for Env {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode(text, false) {
                Ok(ids) => ids,
                Err(_) => self.trie.greedy_tokenize(s),
            },
            // Bytes that are not text (a split character) have no
            // tokenizer spelling; the trie's greedy one is as valid.
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The vocabulary with the grammar engine's factory over it.
pub struct GrammarVocab {
    factory: ParserFactory,
    eos: Vec<TokenId>,
    vocab_size: usize,
}

impl GrammarVocab {
    /// Indexes `tokenizer`'s vocabulary for a model with `vocab_size`
    /// logits (at least the tokenizer's size; ids past it have no text and
    /// are never allowed by a grammar).
    pub fn new(tokenizer: &Tokenizer, vocab_size: usize) -> Result<Self> {
        let json: serde_json::Value = tokenizer
            .inner()
            .to_string(false)
            .map_err(|e| anyhow!("serializing the tokenizer: {e}"))
            .and_then(|s| serde_json::from_str(&s).context("re-reading the tokenizer"))?;
        // The crate asserts on vocabularies it does not expect instead of
        // returning an error: contain it, since a tokenizer it cannot read
        // only disables structured outputs.
        let bytes = std::panic::catch_unwind(|| llguidance::token_bytes_from_tokenizer_json(&json))
            .map_err(|_| anyhow!("the grammar engine cannot read this tokenizer's vocabulary"))?
            .context("reading token bytes for the grammar engine")?;
        let mut words = bytes;
        if words.len() > vocab_size {
            bail!(
                "the tokenizer has {} tokens but the model only {vocab_size} logits",
                words.len()
            );
        }
        words.resize(vocab_size, Vec::new());
        let eos = tokenizer.eos_ids().to_vec();
        let Some(&first_eos) = eos.first() else {
            bail!("the tokenizer has no end-of-sequence token to end a constrained answer with");
        };
        let info = TokRxInfo::new(vocab_size as u32, first_eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Env {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env)
            .map_err(|e| anyhow!("starting the grammar engine: {e}"))?;
        factory.quiet();
        Ok(Self {
            factory,
            eos,
            vocab_size,
        })
    }

    /// The factory that compiles grammars over this vocabulary.
    pub fn factory(&self) -> &ParserFactory {
        &self.factory
    }

    /// Every id that ends the model's output; a grammar that is complete
    /// allows all of them.
    pub fn eos(&self) -> &[TokenId] {
        &self.eos
    }

    /// The id of the token spelled exactly `text`, special or not.
    pub fn single_token(&self, text: &str) -> Option<TokenId> {
        let trie = self.factory.tok_env().tok_trie();
        let mut special = vec![TokTrie::SPECIAL_TOKEN_MARKER];
        special.extend_from_slice(text.as_bytes());
        trie.token_id_at_bytes(&special)
            .or_else(|| trie.token_id_at_bytes(text.as_bytes()))
    }

    /// Logits per step.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

impl std::fmt::Debug for GrammarVocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarVocab")
            .field("vocab_size", &self.vocab_size)
            .field("eos", &self.eos)
            .finish()
    }
}
