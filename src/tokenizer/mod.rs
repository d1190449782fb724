//! Text ↔ token ids for the served model, streaming detokenization and chat
//! templates.
//!
//! A [`Tokenizer`] is built either from a GGUF file's metadata
//! ([`Tokenizer::from_gguf`]) or from a Hugging Face model directory
//! ([`Tokenizer::from_hf_dir`]). Both end up as a `tokenizers::Tokenizer`
//! plus the few facts the server needs around it: BOS/EOS, whether BOS is
//! prepended, and the chat template source.

mod chat_encode;
mod detok;
mod gguf;
mod hf;
mod template;

use std::collections::HashSet;

use aho_corasick::{AhoCorasick, MatchKind};
use anyhow::{anyhow, Result};

use crate::types::TokenId;

pub use chat_encode::{ChatEnding, ChatInput, ChatPrompt, PromptTooLong};
pub use detok::IncrementalDecoder;
pub use template::ChatTemplate;

/// A token string together with its id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialToken {
    /// The token's text, e.g. `<｜begin▁of▁sentence｜>`.
    pub text: String,
    /// The token's id in the vocabulary.
    pub id: TokenId,
}

/// The model's tokenizer and the metadata that goes with it.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<SpecialToken>,
    eos_token: Option<String>,
    eos_ids: Vec<TokenId>,
    pad_id: Option<TokenId>,
    add_bos_token: bool,
    chat_template: Option<String>,
    /// Ids of added tokens marked special, cached because `is_special` runs
    /// for every generated token.
    special_ids: HashSet<TokenId>,
    /// The same tokenizer without its added vocabulary: text it encodes
    /// never yields an added token, whatever the text spells.
    plain: tokenizers::Tokenizer,
    /// Finds added-token strings, leftmost-longest as the added vocabulary
    /// matches them, with each pattern's id.
    added: AhoCorasick,
    added_ids: Vec<TokenId>,
    /// Ids, added tokens included. Cached: `tokenizers` counts them by
    /// cloning the whole vocabulary into a map (milliseconds for 151k
    /// tokens), and request validation asks for every request.
    vocab_size: usize,
}

impl Tokenizer {
    /// Wraps an already configured `tokenizers::Tokenizer`.
    ///
    /// `encode` never runs the inner tokenizer's post-processor: BOS is
    /// prepended here, driven by `add_bos_token`, so that the flag is the one
    /// place that decides it whatever the source of the tokenizer.
    pub(crate) fn from_parts(
        inner: tokenizers::Tokenizer,
        bos: Option<SpecialToken>,
        eos: Option<SpecialToken>,
        pad_id: Option<TokenId>,
        add_bos_token: bool,
        chat_template: Option<String>,
    ) -> Result<Self> {
        let added_tokens = inner.get_added_tokens_decoder();
        let special_ids = added_tokens
            .iter()
            .filter(|(_, token)| token.special)
            .map(|(&id, _)| id)
            .collect();
        let (added_ids, added_texts): (Vec<TokenId>, Vec<String>) = added_tokens
            .into_iter()
            .filter(|(_, token)| !token.content.is_empty())
            .map(|(id, token)| (id, token.content))
            .unzip();
        let added = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&added_texts)
            .map_err(|e| anyhow!("indexing {} added tokens: {e}", added_texts.len()))?;
        let mut plain = tokenizers::Tokenizer::new(inner.get_model().clone());
        plain.with_normalizer(inner.get_normalizer().cloned());
        plain.with_pre_tokenizer(inner.get_pre_tokenizer().cloned());
        let vocab_size = inner.get_vocab_size(true);
        let (eos_token, eos_ids) = match eos {
            Some(eos) => (Some(eos.text), vec![eos.id]),
            None => (None, Vec::new()),
        };
        Ok(Self {
            inner,
            bos,
            eos_token,
            eos_ids,
            pad_id,
            add_bos_token,
            chat_template,
            special_ids,
            plain,
            added,
            added_ids,
            vocab_size,
        })
    }

    /// Tokenizes `text`. Special-token strings in the text (`<think>`,
    /// `<|im_start|>`...) become their single ids. With `add_special_tokens`,
    /// BOS is prepended when the model asks for it (`add_bos_token`), as
    /// Hugging Face does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<TokenId>> {
        let encoding = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| anyhow!("tokenizing {} bytes of text: {e}", text.len()))?;
        let ids = encoding.get_ids();
        let bos = self
            .bos
            .as_ref()
            .filter(|_| add_special_tokens && self.add_bos_token);
        let mut out = Vec::with_capacity(ids.len() + usize::from(bos.is_some()));
        if let Some(bos) = bos {
            out.push(bos.id);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// Turns ids back into text; ids outside the vocabulary are ignored.
    pub fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow!("decoding {} token ids: {e}", ids.len()))
    }

    /// The id of a token given its text as stored in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<TokenId> {
        self.inner.token_to_id(token)
    }

    /// The vocabulary text of a token (byte-level spelling for BPE pieces).
    pub fn id_to_token(&self, id: TokenId) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Whether `id` is a special (control) token, the kind
    /// `skip_special_tokens` removes.
    pub fn is_special(&self, id: TokenId) -> bool {
        self.special_ids.contains(&id)
    }

    /// Ids that end generation: the tokenizer's EOS plus any added with
    /// [`Tokenizer::add_eos_ids`].
    pub fn eos_ids(&self) -> &[TokenId] {
        &self.eos_ids
    }

    /// Adds ids that also end generation (e.g. from `generation_config.json`);
    /// ids already present are not repeated.
    pub fn add_eos_ids(&mut self, ids: impl IntoIterator<Item = TokenId>) {
        for id in ids {
            if !self.eos_ids.contains(&id) {
                self.eos_ids.push(id);
            }
        }
    }

    /// The BOS token text, if the model has one.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|b| b.text.as_str())
    }

    /// The BOS token id, if the model has one.
    pub fn bos_id(&self) -> Option<TokenId> {
        self.bos.as_ref().map(|b| b.id)
    }

    /// The EOS token text, if the model has one.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The padding token id, if the model declares one.
    pub fn pad_id(&self) -> Option<TokenId> {
        self.pad_id
    }

    /// Whether `encode(.., true)` prepends BOS.
    pub fn add_bos_token(&self) -> bool {
        self.add_bos_token
    }

    /// The Jinja chat template source shipped with the model, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Replaces the chat template (e.g. with one given on the command line).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat_template = Some(template);
    }

    /// The wrapped `tokenizers` tokenizer, e.g. to save it as `tokenizer.json`.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
