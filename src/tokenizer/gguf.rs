//! Building a [`Tokenizer`] from the `tokenizer.*` metadata of a GGUF file,
//! the way llama.cpp reads it.

use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::{SpecialToken, Tokenizer};
use crate::types::TokenId;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The split applied by llama.cpp for GPT-2 style vocabularies. llama.cpp
/// keeps the text a regex does not match as pieces of its own, which is what
/// the trailing `|\s+` of the original GPT-2 regex amounts to.
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// llama.cpp's LLAMA3 split: the `tokenizer.json` regex with `(?i:...)`
/// spelled out as character classes.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's QWEN2 split: like LLAMA3 but digits one at a time.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes for a given `tokenizer.ggml.pre`.
struct PreTokenizerSpec {
    /// Regexes applied one after the other, each splitting the pieces the
    /// previous one produced.
    splits: &'static [&'static str],
    /// Look a whole pre-token up in the vocabulary before merging (llama 3).
    ignore_merges: bool,
}

fn pre_tokenizer_spec(pre: &str) -> Option<PreTokenizerSpec> {
    let (splits, ignore_merges): (&'static [&'static str], bool) = match pre {
        "llama3" | "llama-v3" | "llama-bpe" => (&[LLAMA3_SPLIT], true),
        "qwen2" | "deepseek-r1-qwen" => (&[QWEN2_SPLIT], false),
        // SmolLM (like StarCoder) isolates every digit before the GPT-2 split.
        "smollm" => (&[r"\p{N}", GPT2_SPLIT], false),
        "gpt2" | "gpt-2" => (&[GPT2_SPLIT], false),
        _ => return None,
    };
    Some(PreTokenizerSpec {
        splits,
        ignore_merges,
    })
}

/// Typed access to GGUF metadata with errors that name the file.
struct Meta<'a> {
    content: &'a Content,
    path: &'a Path,
}

impl<'a> Meta<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => bail!(
                "{}: metadata {key} should be a string, found {:?}",
                self.path.display(),
                v.value_type()
            ),
        }
    }

    fn int(&self, key: &str) -> Result<Option<i64>> {
        self.get(key).map(|v| self.to_int(key, v)).transpose()
    }

    fn to_int(&self, key: &str, v: &Value) -> Result<i64> {
        Ok(match v {
            Value::U8(x) => i64::from(*x),
            Value::I8(x) => i64::from(*x),
            Value::U16(x) => i64::from(*x),
            Value::I16(x) => i64::from(*x),
            Value::U32(x) => i64::from(*x),
            Value::I32(x) => i64::from(*x),
            Value::I64(x) => *x,
            Value::U64(x) => i64::try_from(*x).with_context(|| {
                format!(
                    "{}: metadata {key} value {x} is too large",
                    self.path.display()
                )
            })?,
            v => bail!(
                "{}: metadata {key} should be an integer, found {:?}",
                self.path.display(),
                v.value_type()
            ),
        })
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => bail!(
                "{}: metadata {key} should be a bool, found {:?}",
                self.path.display(),
                v.value_type()
            ),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key) {
            Some(Value::Array(a)) => Ok(a),
            Some(v) => bail!(
                "{}: metadata {key} should be an array, found {:?}",
                self.path.display(),
                v.value_type()
            ),
            None => bail!("{}: metadata {key} is missing", self.path.display()),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => bail!(
                    "{}: {key}[{i}] should be a string, found {:?}",
                    self.path.display(),
                    v.value_type()
                ),
            })
            .collect()
    }

    /// A token id stored under `key`, checked against the vocabulary size.
    fn token_id(&self, key: &str, n_tokens: usize) -> Result<Option<TokenId>> {
        let Some(id) = self.int(key)? else {
            return Ok(None);
        };
        match TokenId::try_from(id) {
            Ok(id) if (id as usize) < n_tokens => Ok(Some(id)),
            _ => bail!(
                "{}: metadata {key} = {id} is not a token id (vocabulary has {n_tokens} tokens)",
                self.path.display()
            ),
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's metadata.
    ///
    /// Only byte-level BPE (`tokenizer.ggml.model = gpt2`) is supported. The
    /// pre-tokenizer is chosen from `tokenizer.ggml.pre` with llama.cpp's
    /// regexes; an unknown or missing value is an error rather than a guess,
    /// since a wrong split silently changes every prompt. `path` is only used
    /// in error messages.
    pub fn from_gguf(content: &Content, path: &Path) -> Result<Self> {
        let meta = Meta { content, path };
        let file = path.display();

        match meta.string("tokenizer.ggml.model")? {
            Some("gpt2") => {}
            Some(other) => bail!(
                "{file}: tokenizer.ggml.model = {other:?} is not supported (only byte-level BPE, \"gpt2\")"
            ),
            None => bail!("{file}: metadata tokenizer.ggml.model is missing"),
        }
        let spec = match meta.string("tokenizer.ggml.pre")? {
            Some(pre) => pre_tokenizer_spec(pre).with_context(|| {
                format!(
                    "{file}: tokenizer.ggml.pre = {pre:?} is not a known pre-tokenizer \
                     (supported: llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen, smollm, gpt2, gpt-2)"
                )
            })?,
            None => bail!(
                "{file}: metadata tokenizer.ggml.pre is missing; refusing to guess how to split text"
            ),
        };

        let tokens = meta.strings("tokenizer.ggml.tokens")?;
        let n_tokens = tokens.len();
        let token_types = match meta.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(_) => {
                let types = meta.array("tokenizer.ggml.token_type")?;
                if types.len() != n_tokens {
                    bail!(
                        "{file}: tokenizer.ggml.token_type has {} entries for {n_tokens} tokens",
                        types.len()
                    );
                }
                types
                    .iter()
                    .map(|v| meta.to_int("tokenizer.ggml.token_type", v))
                    .collect::<Result<Vec<_>>>()?
            }
        };

        // llama.cpp renames empty tokens the same way, so they stay addressable.
        let texts: Vec<String> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if t.is_empty() {
                    format!("[EMPTY_{i}]")
                } else {
                    (*t).to_owned()
                }
            })
            .collect();
        let mut vocab = tokenizers::models::bpe::Vocab::with_capacity(n_tokens);
        for (id, text) in texts.iter().enumerate() {
            let id = TokenId::try_from(id)
                .with_context(|| format!("{file}: vocabulary has more than 2^32 tokens"))?;
            vocab.insert(text.clone(), id);
        }
        let merges = meta
            .strings("tokenizer.ggml.merges")?
            .into_iter()
            .enumerate()
            .map(|(i, merge)| {
                // Split at the first space after the first byte, as llama.cpp
                // does, so that a piece that is itself a space still parses.
                let first = merge.chars().next().map_or(0, char::len_utf8);
                let at = merge[first..]
                    .find(' ')
                    .map(|p| p + first)
                    .with_context(|| {
                        format!("{file}: tokenizer.ggml.merges[{i}] = {merge:?} is not a pair")
                    })?;
                Ok((merge[..at].to_owned(), merge[at + 1..].to_owned()))
            })
            .collect::<Result<Vec<_>>>()?;

        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(spec.ignore_merges)
            .build()
            .map_err(|e| anyhow::anyhow!("{file}: building the BPE model: {e}"))?;

        let mut splits = Vec::with_capacity(spec.splits.len() + 1);
        for regex in spec.splits {
            let split = Split::new(
                SplitPattern::Regex((*regex).to_owned()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| anyhow::anyhow!("{file}: compiling pre-tokenizer regex: {e}"))?;
            splits.push(PreTokenizerWrapper::Split(split));
        }
        splits.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(
            false, true, false,
        )));

        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(splits)));
        inner.with_decoder(Some(ByteLevelDecoder::default()));

        // Control and user-defined tokens are matched whole in the text, as
        // llama.cpp does; they keep their vocabulary ids because their text is
        // already in the vocabulary.
        let added = |kind: i64, special: bool| -> Vec<AddedToken> {
            texts
                .iter()
                .zip(&token_types)
                .filter(|(_, t)| **t == kind)
                .map(|(text, _)| AddedToken::from(text.clone(), special).normalized(false))
                .collect()
        };
        inner.add_special_tokens(&added(TOKEN_TYPE_CONTROL, true));
        inner.add_tokens(&added(TOKEN_TYPE_USER_DEFINED, false));

        let special = |key: &str| -> Result<Option<SpecialToken>> {
            Ok(meta.token_id(key, n_tokens)?.map(|id| SpecialToken {
                text: texts[id as usize].clone(),
                id,
            }))
        };
        let bos = special("tokenizer.ggml.bos_token_id")?;
        let eos = special("tokenizer.ggml.eos_token_id")?;
        let pad_id = meta.token_id("tokenizer.ggml.padding_token_id", n_tokens)?;
        let add_bos_token = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        if add_bos_token && bos.is_none() {
            bail!("{file}: tokenizer.ggml.add_bos_token is set but there is no bos_token_id");
        }
        let chat_template = meta.string("tokenizer.chat_template")?.map(str::to_owned);

        Tokenizer::from_parts(inner, bos, eos, pad_id, add_bos_token, chat_template)
    }
}
