//! The `consensus` request extension (self-consistency, as the DeepSeek-R1
//! paper's cons@k): a chat request asks for k samples and a majority vote
//! over their final answers; the response carries the k choices, as `n = k`
//! would, and the vote.
//!
//! ```json
//! "consensus": {"samples": 8, "extract": "boxed" | "last_number" | {"regex": "Answer: (\\w+)"}}
//! ```

use regex::RegexBuilder;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

use super::MAX_N;
use crate::answers::extract::Extractor;
use crate::answers::vote::Tally;
use crate::api::error::ApiError;

/// Longest `extract.regex` pattern, in bytes: answer patterns are a line.
pub const MAX_CONSENSUS_REGEX_BYTES: usize = 1024;
/// Bound on the compiled pattern (the `regex` crate's size limit), so a
/// pattern such as `\w{1000}{1000}` is refused instead of costing
/// megabytes; matching is linear in the text for any pattern it accepts.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A checked `consensus` request.
#[derive(Clone, Debug)]
pub struct Consensus {
    /// k: the samples voting, which are the response's choices.
    pub samples: u32,
    /// How each sample's final answer is found in its answer text.
    pub extractor: Extractor,
    /// The `extract` rule as the client wrote it, for equality and logs.
    rule: Value,
}

impl PartialEq for Consensus {
    fn eq(&self, other: &Self) -> bool {
        self.samples == other.samples && self.rule == other.rule
    }
}

impl Consensus {
    /// Checks the field's value: `samples` in 1..=[`MAX_N`], and `extract`
    /// (default `"boxed"`): `"boxed"` takes the last `\boxed{…}`, else the
    /// last number (the R1 paper's rule); `"last_number"` the last number;
    /// `{"regex": P}` the last match of `P` (its first group if it has
    /// one), and no answer when `P` does not match.
    pub fn parse(value: &Value) -> Result<Self, ApiError> {
        let bad = |message: String| ApiError::bad_request("consensus", message);
        let Value::Object(fields) = value else {
            return Err(bad(
                "'consensus' must be an object: {\"samples\": k, \"extract\": ...}".into(),
            ));
        };
        if let Some(unknown) = fields
            .keys()
            .find(|k| !matches!(k.as_str(), "samples" | "extract"))
        {
            return Err(bad(format!(
                "'consensus' has an unknown field '{unknown}' (expected 'samples' and 'extract')"
            )));
        }
        let samples = match fields.get("samples").and_then(Value::as_i64) {
            Some(k) if (1..=MAX_N).contains(&k) => k as u32,
            _ => {
                return Err(bad(format!(
                    "'consensus.samples' must be an integer between 1 and {MAX_N}"
                )))
            }
        };
        let rule = fields
            .get("extract")
            .cloned()
            .unwrap_or_else(|| Value::from("boxed"));
        let extractor = match &rule {
            Value::String(s) if s == "boxed" => Extractor::new(),
            Value::String(s) if s == "last_number" => Extractor {
                skip_boxed: true,
                ..Extractor::default()
            },
            Value::Object(o) if o.len() == 1 && o.get("regex").is_some_and(Value::is_string) => {
                let pattern = o["regex"].as_str().unwrap_or_default();
                if pattern.len() > MAX_CONSENSUS_REGEX_BYTES {
                    return Err(bad(format!(
                        "'consensus.extract.regex' is {} bytes long; at most \
                         {MAX_CONSENSUS_REGEX_BYTES} are allowed",
                        pattern.len()
                    )));
                }
                let regex = RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| bad(format!("invalid 'consensus.extract.regex': {e}")))?;
                Extractor {
                    regex: Some(regex),
                    skip_boxed: true,
                    skip_number: true,
                }
            }
            _ => {
                return Err(bad(
                    "'consensus.extract' must be \"boxed\", \"last_number\" or {\"regex\": \
                     \"...\"}"
                        .into(),
                ))
            }
        };
        Ok(Self {
            samples,
            extractor,
            rule,
        })
    }

    /// The vote over the choices' answer texts, in choice order (`None`
    /// for a choice that never reached its answer).
    pub fn vote<'a>(&self, answers: impl IntoIterator<Item = Option<&'a str>>) -> ConsensusResult {
        let mut tally = Tally::default();
        let mut total = 0;
        let mut no_answer = 0;
        for (i, text) in answers.into_iter().enumerate() {
            total += 1;
            match text.and_then(|t| self.extractor.extract(t)) {
                Some(answer) => tally.add_answer(&answer, i),
                None => no_answer += 1,
            }
        }
        let mut votes: Vec<(String, u32)> = tally
            .candidates()
            .iter()
            .map(|c| (c.answer.clone(), c.votes as u32))
            .collect();
        // Most votes first; equal counts keep the order answers appeared in.
        votes.sort_by_key(|v| std::cmp::Reverse(v.1));
        ConsensusResult {
            answer: tally.winner().map(|w| w.answer.clone()),
            votes: VoteCounts(votes),
            total,
            no_answer,
        }
    }
}

/// The vote, in the response (and the final stream chunk) as `consensus`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsensusResult {
    /// The winning answer as its first voter wrote it; `null` when no
    /// sample gave an answer.
    pub answer: Option<String>,
    /// Votes per distinct answer (equivalent spellings counted as one,
    /// under the first), most votes first.
    pub votes: VoteCounts,
    /// Samples that voted or abstained: k.
    pub total: u32,
    /// Samples with no answer to extract; `votes` and these sum to `total`.
    pub no_answer: u32,
}

/// Answer → votes, serialized as a JSON object in vote order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VoteCounts(pub Vec<(String, u32)>);

impl Serialize for VoteCounts {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (answer, votes) in &self.0 {
            map.serialize_entry(answer, votes)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for VoteCounts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct CountsVisitor;
        impl<'de> Visitor<'de> for CountsVisitor {
            type Value = VoteCounts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object from answers to vote counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VoteCounts, A::Error> {
                let mut counts = Vec::new();
                while let Some(entry) = map.next_entry::<String, u32>()? {
                    counts.push(entry);
                }
                Ok(VoteCounts(counts))
            }
        }
        deserializer.deserialize_map(CountsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<Consensus, String> {
        Consensus::parse(&value).map_err(|e| e.to_string())
    }

    #[test]
    fn rules_and_their_limits() {
        assert_eq!(parse(json!({"samples": 4})).unwrap().samples, 4);
        for bad in [
            json!(4),
            json!({}),
            json!({"samples": 0}),
            json!({"samples": MAX_N + 1}),
            json!({"samples": 2.5}),
            json!({"samples": 2, "extract": "first"}),
            json!({"samples": 2, "extract": {"regex": "("}}),
            json!({"samples": 2, "extract": {"regex": "a".repeat(MAX_CONSENSUS_REGEX_BYTES + 1)}}),
            json!({"samples": 2, "extract": {"regex": "\\w{1000}{1000}"}}),
            json!({"samples": 2, "extract": {"regex": "a", "flags": "i"}}),
            json!({"samples": 2, "vote": "majority"}),
        ] {
            assert!(parse(bad.clone()).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn votes_group_equal_answers_and_count_abstentions() {
        let c = parse(json!({"samples": 5})).unwrap();
        let result = c.vote([
            Some("so \\boxed{\\frac{1}{2}}"),
            Some("it is 0.5"),
            None,
            Some("\\boxed{3}"),
            Some("no number"),
        ]);
        assert_eq!(result.answer.as_deref(), Some("\\frac{1}{2}"));
        assert_eq!(
            result.votes,
            VoteCounts(vec![("\\frac{1}{2}".into(), 2), ("3".into(), 1)])
        );
        assert_eq!((result.total, result.no_answer), (5, 2));
        let wire = serde_json::to_value(&result).unwrap();
        assert_eq!(wire["votes"], json!({"\\frac{1}{2}": 2, "3": 1}));
    }

    #[test]
    fn each_rule_finds_its_answer() {
        let text = "\\boxed{7} so the answer: B after 12 steps";
        let answer = |rule: Value| {
            parse(json!({"samples": 1, "extract": rule}))
                .unwrap()
                .vote([Some(text)])
                .answer
        };
        assert_eq!(answer(json!("boxed")).as_deref(), Some("7"));
        assert_eq!(answer(json!("last_number")).as_deref(), Some("12"));
        assert_eq!(
            answer(json!({"regex": "answer: ([A-E])"})).as_deref(),
            Some("B")
        );
        assert_eq!(answer(json!({"regex": "final: (\\d+)"})), None);
    }
}
