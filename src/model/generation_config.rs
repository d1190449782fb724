//! Sampling defaults a model comes with, and the one order in which their
//! sources apply: the request, then `--override-generation-config` (vLLM's
//! flag), then the checkpoint's `generation_config.json`, then the
//! recommendation of the model card for the template's family (DeepSeek-R1:
//! temperature 0.6, top-p 0.95), then the plain sampler (temperature 1).

use anyhow::{bail, Result};
use serde_json::{Map, Value};

/// Sampling parameters a model or the server operator sets when a request
/// does not; `None` leaves the choice to the next source.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GenerationDefaults {
    /// Temperature, [0, 2].
    pub temperature: Option<f32>,
    /// Nucleus mass, (0, 1].
    pub top_p: Option<f32>,
    /// Top-k cutoff; `Some(0)` disables it.
    pub top_k: Option<u32>,
    /// Min-p cutoff, [0, 1].
    pub min_p: Option<f32>,
    /// Multiplicative repetition penalty, [0.01, 100].
    pub repetition_penalty: Option<f32>,
}

/// What the DeepSeek-R1 model card recommends for R1 and its distills.
pub const R1_DEFAULTS: GenerationDefaults = GenerationDefaults {
    temperature: Some(0.6),
    top_p: Some(0.95),
    top_k: None,
    min_p: None,
    repetition_penalty: None,
};

/// The keys this server reads, in `generation_config.json` and in
/// `--override-generation-config`.
const KEYS: [&str; 5] = [
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repetition_penalty",
];

impl GenerationDefaults {
    /// Each field from `self`, else from `fallback`: `self` is the source
    /// that takes precedence.
    pub fn or(self, fallback: Self) -> Self {
        Self {
            temperature: self.temperature.or(fallback.temperature),
            top_p: self.top_p.or(fallback.top_p),
            top_k: self.top_k.or(fallback.top_k),
            min_p: self.min_p.or(fallback.min_p),
            repetition_penalty: self.repetition_penalty.or(fallback.repetition_penalty),
        }
    }

    /// The defaults of a checkpoint's `generation_config.json`: the keys
    /// this server knows, each checked; other keys (EOS ids, `do_sample`,
    /// ...) are not sampling defaults and are left alone.
    pub fn from_generation_config(config: &Map<String, Value>) -> Result<Self> {
        Self::read(config)
    }

    /// The defaults of `--override-generation-config`: a JSON object of
    /// the keys this server knows; any other key is refused, since an
    /// operator who sets it expects it to act.
    pub fn from_override(json: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("--override-generation-config is not JSON: {e}"))?;
        let Value::Object(config) = value else {
            bail!("--override-generation-config must be a JSON object");
        };
        if let Some(key) = config.keys().find(|k| !KEYS.contains(&k.as_str())) {
            bail!(
                "--override-generation-config: '{key}' is not supported; the keys are {}",
                KEYS.join(", ")
            );
        }
        Self::read(&config).map_err(|e| e.context("--override-generation-config"))
    }

    /// The model card's defaults for a model served with chat template
    /// `template`: DeepSeek-R1's when the template is R1's (it writes the
    /// `<｜Assistant｜>` turn and strips reasoning up to `</think>`), else
    /// none.
    pub fn for_template(template: Option<&str>) -> Self {
        match template {
            Some(t) if t.contains("<｜Assistant｜>") && t.contains("</think>") => R1_DEFAULTS,
            _ => Self::default(),
        }
    }

    fn read(config: &Map<String, Value>) -> Result<Self> {
        let number = |key: &str, lo: f64, hi: f64| -> Result<Option<f32>> {
            match config.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => match n.as_f64() {
                    Some(v) if (lo..=hi).contains(&v) => Ok(Some(v as f32)),
                    _ => bail!("'{key}' must be between {lo} and {hi}, got {n}"),
                },
                Some(other) => bail!("'{key}' must be a number, got {other}"),
            }
        };
        let top_p = number("top_p", 0.0, 1.0)?;
        if top_p == Some(0.0) {
            bail!("'top_p' must be in (0, 1], got 0");
        }
        let top_k = match config.get("top_k") {
            None | Some(Value::Null) => None,
            // -1 and 0 both disable it, as in a request.
            Some(Value::Number(n)) => match n.as_i64() {
                Some(-1 | 0) => Some(0),
                Some(k) if k > 0 => Some(u32::try_from(k).unwrap_or(u32::MAX)),
                _ => bail!("'top_k' must be -1 (disabled) or a positive integer, got {n}"),
            },
            Some(other) => bail!("'top_k' must be an integer, got {other}"),
        };
        Ok(Self {
            temperature: number("temperature", 0.0, 2.0)?,
            top_p,
            top_k,
            min_p: number("min_p", 0.0, 1.0)?,
            repetition_penalty: number("repetition_penalty", 0.01, 100.0)?,
        })
    }
}

impl std::fmt::Display for GenerationDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn show<T: std::fmt::Display>(v: Option<T>, unset: &str) -> String {
            v.map_or_else(|| unset.to_string(), |v| v.to_string())
        }
        write!(
            f,
            "temperature={} top_p={} top_k={} min_p={} repetition_penalty={}",
            show(self.temperature, "1"),
            show(self.top_p, "1"),
            show(self.top_k, "off"),
            show(self.min_p, "0"),
            show(self.repetition_penalty, "1"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(t: f32) -> GenerationDefaults {
        GenerationDefaults {
            temperature: Some(t),
            ..Default::default()
        }
    }

    #[test]
    fn each_source_yields_only_to_the_ones_before_it() {
        // flag > generation_config > R1 > none, field by field.
        let flag = GenerationDefaults::from_override(r#"{"top_p": 0.5}"#).unwrap();
        let config: Map<String, Value> =
            serde_json::from_str(r#"{"temperature": 0.7, "top_k": 20, "eos_token_id": 2}"#)
                .unwrap();
        let config = GenerationDefaults::from_generation_config(&config).unwrap();
        let r1 = GenerationDefaults::for_template(Some("<｜Assistant｜>{{ c.split('</think>') }}"));
        let all = flag.or(config).or(r1);
        assert_eq!(all.top_p, Some(0.5), "the flag beats R1's 0.95");
        assert_eq!(
            all.temperature,
            Some(0.7),
            "generation_config beats R1's 0.6"
        );
        assert_eq!(all.top_k, Some(20));
        assert_eq!(all.min_p, None);
        let r1_only = GenerationDefaults::default().or(r1);
        assert_eq!(
            (r1_only.temperature, r1_only.top_p),
            (Some(0.6), Some(0.95))
        );
        assert_eq!(temp(0.0).or(temp(0.6)).temperature, Some(0.0));
    }

    #[test]
    fn only_r1_templates_get_r1_defaults() {
        let qwen = "<|im_start|>assistant\n<think>\n";
        assert_eq!(
            GenerationDefaults::for_template(Some(qwen)),
            Default::default()
        );
        assert_eq!(GenerationDefaults::for_template(None), Default::default());
        let r1 = "{{'<｜Assistant｜>' + content.split('</think>')[-1]}}";
        assert_eq!(GenerationDefaults::for_template(Some(r1)), R1_DEFAULTS);
    }

    #[test]
    fn the_flag_is_checked() {
        for bad in [
            "[1]",
            "not json",
            r#"{"temperature": 3}"#,
            r#"{"top_p": 0}"#,
            r#"{"top_k": 1.5}"#,
            r#"{"temperature": "hot"}"#,
            r#"{"max_new_tokens": 10}"#,
        ] {
            assert!(GenerationDefaults::from_override(bad).is_err(), "{bad}");
        }
        let ok = GenerationDefaults::from_override(
            r#"{"temperature": 0, "top_k": -1, "min_p": 0.1, "repetition_penalty": 1.1}"#,
        )
        .unwrap();
        assert_eq!(ok.temperature, Some(0.0));
        assert_eq!(ok.top_k, Some(0));
        assert_eq!(ok.min_p, Some(0.1));
        assert_eq!(ok.repetition_penalty, Some(1.1));
    }
}
