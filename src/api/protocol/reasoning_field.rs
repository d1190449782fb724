//! The name under which chat responses carry the reasoning text.
//!
//! Clients split into two dialects: `reasoning_content` (DeepSeek's API,
//! SGLang, llama.cpp) and `reasoning` (vLLM since 2026, OpenRouter). The
//! server picks one with `--reasoning-field`, a request may pick another
//! with its `reasoning_field`, and `both` sends the same text under each
//! name for clients that are being migrated. Incoming assistant messages
//! accept either name regardless (see [`super::text_messages`]).

use std::fmt;
use std::str::FromStr;

/// Which field(s) of `choices[].message` and `choices[].delta` carry the
/// reasoning text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReasoningField {
    /// `reasoning_content`, DeepSeek's name and the default.
    #[default]
    ReasoningContent,
    /// `reasoning`, vLLM's and OpenRouter's name.
    Reasoning,
    /// Both names, each with the whole text.
    Both,
}

impl ReasoningField {
    /// Every value, in the order the error message lists them.
    pub const ALL: [ReasoningField; 3] = [
        ReasoningField::ReasoningContent,
        ReasoningField::Reasoning,
        ReasoningField::Both,
    ];

    /// The name accepted by [`FromStr`], on the command line and in requests.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningField::ReasoningContent => "reasoning_content",
            ReasoningField::Reasoning => "reasoning",
            ReasoningField::Both => "both",
        }
    }

    /// `text` under the configured names, as the pair
    /// `(reasoning_content, reasoning)` of a message or delta.
    pub fn place(self, text: Option<String>) -> (Option<String>, Option<String>) {
        match self {
            ReasoningField::ReasoningContent => (text, None),
            ReasoningField::Reasoning => (None, text),
            ReasoningField::Both => (text.clone(), text),
        }
    }
}

impl fmt::Display for ReasoningField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a reasoning field name that is not one of [`ReasoningField::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown reasoning field '{0}' (expected 'reasoning_content', 'reasoning' or 'both')")]
pub struct UnknownReasoningField(pub String);

impl FromStr for ReasoningField {
    type Err = UnknownReasoningField;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|field| field.as_str() == s)
            .ok_or_else(|| UnknownReasoningField(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_others_are_refused() {
        for field in ReasoningField::ALL {
            assert_eq!(field.as_str().parse::<ReasoningField>(), Ok(field));
            assert_eq!(field.to_string(), field.as_str());
        }
        for bad in ["", "Reasoning", "reasoning_text", "both "] {
            assert_eq!(
                bad.parse::<ReasoningField>(),
                Err(UnknownReasoningField(bad.to_string()))
            );
        }
        assert_eq!(ReasoningField::default(), ReasoningField::ReasoningContent);
    }

    #[test]
    fn text_goes_under_the_configured_names() {
        let text = || Some("why".to_string());
        let why = text();
        assert_eq!(
            ReasoningField::ReasoningContent.place(text()),
            (why.clone(), None)
        );
        assert_eq!(ReasoningField::Reasoning.place(text()), (None, why.clone()));
        assert_eq!(ReasoningField::Both.place(text()), (why.clone(), why));
        for field in ReasoningField::ALL {
            assert_eq!(field.place(None), (None, None));
        }
    }
}
