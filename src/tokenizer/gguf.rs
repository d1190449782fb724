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

/// llama.cpp's DEEPSEEK3_LLM splits (`deepseek-v3`, R1's tokenizer): digits
/// in threes, runs of CJK, then words and punctuation.
const DEEPSEEK_V3_SPLITS: &[&str] = &[
    "\\p{N}{1,3}",
    "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

/// llama.cpp's DEEPSEEK_LLM splits (`deepseek-llm`, DeepSeek-LLM/V2's
/// tokenizer): line breaks, Latin/Greek/Cyrillic-like words, ASCII and
/// full-width punctuation, trailing space, CJK/Hangul runs, digit runs.
const DEEPSEEK_LLM_SPLITS: &[&str] = &[
    "[\r\n]",
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+",
    "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
    "\\s+$",
    "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+",
    "\\p{N}+",
];

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
        "deepseek-v3" => (DEEPSEEK_V3_SPLITS, false),
        "deepseek-llm" => (DEEPSEEK_LLM_SPLITS, false),
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
                     (supported: llama-bpe, llama3, llama-v3, qwen2, deepseek-r1-qwen, deepseek-v3, \
                     deepseek-llm, smollm, gpt2, gpt-2)"
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
