//! The seam between the HTTP layer and the model: one trait for the engine
//! and one for prompt text ↔ tokens.
//!
//! Handlers depend only on these traits (modelled on TGI's `Backend` trait in
//! `router/src/infer/mod.rs`), so that the whole request path — validation,
//! streaming, reasoning split, usage, metrics — can be unit-tested against a
//! scripted engine, and so that the HTTP code never names engine internals.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use serde_json::{Map, Value};

use crate::engine::types::{EngineError, EngineRequest, EngineStats, RequestOutput};
use crate::engine::EngineHandle;
use crate::tokenizer::{ChatEnding, ChatInput, ChatPrompt, ChatTemplate, Tokenizer};
use crate::types::TokenId;

/// A request's outputs as they are produced. Dropping it aborts the request
/// in the engine, which is how a client disconnect frees KV blocks.
pub type OutputStream = Pin<Box<dyn Stream<Item = RequestOutput> + Send>>;

/// What the HTTP layer needs from the inference engine.
pub trait InferenceBackend: Send + Sync + 'static {
    /// Queues a request; the stream yields its outputs until `finished`.
    fn add_request(&self, request: EngineRequest) -> Result<OutputStream, EngineError>;
    /// Current queue, cache and counter values, for `/metrics`.
    fn stats(&self) -> EngineStats;
    /// Stops the engine after the HTTP server has drained.
    fn shutdown(&self);
    /// Why the engine can no longer serve, if it died; `None` while healthy.
    fn failure(&self) -> Option<String>;
}

/// What the HTTP layer needs from the tokenizer and chat template. Calls may
/// take milliseconds on long prompts, so handlers run them on the blocking
/// pool.
pub trait PromptCodec: Send + Sync + 'static {
    /// Tokenizes `text`, adding BOS when `add_special_tokens` and the
    /// tokenizer has one.
    fn encode(&self, text: &str, add_special_tokens: bool) -> anyhow::Result<Vec<TokenId>>;
    /// Turns ids back into text.
    fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> anyhow::Result<String>;
    /// Number of ids the model can emit; larger `logit_bias` keys are
    /// rejected.
    fn vocab_size(&self) -> usize;
    /// The most bytes of text one token can stand for, when the tokenizer
    /// guarantees a bound: a text of more than `n` times this many bytes
    /// then has more than `n` tokens, and can be refused without being
    /// tokenized. `None` when no bound holds (a normalizer that may shrink
    /// the text, an unknown token that may swallow a whole word).
    fn max_token_bytes(&self) -> Option<usize>;
    /// Renders a conversation (a JSON array of messages), ending as
    /// `ending` says, with the chat template, with `tools` (a JSON array of
    /// tool definitions) when the model may call them, and tokenizes it:
    /// message text as plain text,
    /// only the template's markup as special tokens. A rendering longer than
    /// `max_bytes` fails with [`crate::tokenizer::PromptTooLong`] before it
    /// is tokenized.
    fn encode_chat(
        &self,
        messages: &Value,
        ending: ChatEnding,
        tools: Option<&Value>,
        extra: &Map<String, Value>,
        add_special_tokens: bool,
        max_bytes: Option<usize>,
    ) -> anyhow::Result<ChatPrompt>;
}

impl InferenceBackend for EngineHandle {
    fn add_request(&self, request: EngineRequest) -> Result<OutputStream, EngineError> {
        EngineHandle::add_request(self, request).map(|stream| Box::pin(stream) as OutputStream)
    }

    fn stats(&self) -> EngineStats {
        EngineHandle::stats(self)
    }

    fn shutdown(&self) {
        EngineHandle::shutdown(self);
    }

    fn failure(&self) -> Option<String> {
        EngineHandle::failure(self)
    }
}

/// The model's tokenizer together with the chat template being served
/// (the model's own or `--chat-template`) and the one for requests with
/// tools (`--tool-call-template`), if different.
pub struct TokenizerCodec {
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    tool_template: Option<ChatTemplate>,
    max_token_bytes: Option<usize>,
}

impl TokenizerCodec {
    /// Pairs a tokenizer with a template; without one, chat requests fail
    /// with a 400 that points at `--chat-template`. `tool_template`, when
    /// given, renders the requests that show the model tools.
    pub fn new(
        tokenizer: Arc<Tokenizer>,
        template: Option<ChatTemplate>,
        tool_template: Option<ChatTemplate>,
    ) -> Self {
        let max_token_bytes = max_token_bytes(tokenizer.inner());
        Self {
            tokenizer,
            template,
            tool_template,
            max_token_bytes,
        }
    }
}

/// The most input bytes one token of `tokenizer` can cover, if bounded.
///
/// A BPE token covers exactly the text of its vocabulary string, and that
/// string is never shorter in UTF-8 than the input bytes it stands for:
/// byte-level BPE spells each byte as one character of one or two bytes,
/// SentencePiece spells a one-byte space as the three-byte `▁` and a byte
/// fallback as `<0xNN>`. An unknown token covers one character (at most 4
/// bytes) unless unknowns are fused. A normalizer breaks the argument, as
/// NFC, NFKC, lowercasing or stripping can shrink the text before it is
/// split, so a tokenizer with one has no bound here.
fn max_token_bytes(tokenizer: &tokenizers::Tokenizer) -> Option<usize> {
    if tokenizer.get_normalizer().is_some() {
        return None;
    }
    let tokenizers::ModelWrapper::BPE(bpe) = tokenizer.get_model() else {
        return None;
    };
    if bpe.unk_token.is_some() && bpe.fuse_unk {
        return None;
    }
    let longest = tokenizer
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(0);
    Some(longest.max(char::MAX.len_utf8()))
}

impl PromptCodec for TokenizerCodec {
    fn encode(&self, text: &str, add_special_tokens: bool) -> anyhow::Result<Vec<TokenId>> {
        self.tokenizer.encode(text, add_special_tokens)
    }

    fn decode(&self, ids: &[TokenId], skip_special_tokens: bool) -> anyhow::Result<String> {
        self.tokenizer.decode(ids, skip_special_tokens)
    }

    fn vocab_size(&self) -> usize {
        self.tokenizer.vocab_size()
    }

    fn max_token_bytes(&self) -> Option<usize> {
        self.max_token_bytes
    }

    fn encode_chat(
        &self,
        messages: &Value,
        ending: ChatEnding,
        tools: Option<&Value>,
        extra: &Map<String, Value>,
        add_special_tokens: bool,
        max_bytes: Option<usize>,
    ) -> anyhow::Result<ChatPrompt> {
        let tool_template = tools.and(self.tool_template.as_ref());
        let template = tool_template.or(self.template.as_ref()).ok_or_else(|| {
            anyhow::anyhow!(
                "the model has no chat template; start the server with --chat-template or use /v1/completions"
            )
        })?;
        let input = ChatInput {
            messages,
            ending,
            tools,
            extra,
        };
        template.encode(&self.tokenizer, &input, add_special_tokens, max_bytes)
    }
}
