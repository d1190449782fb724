//! The request fields that bound a reasoning model's thinking, in the
//! dialects clients send: vLLM's `thinking_token_budget`, OpenAI's
//! `reasoning_effort`, OpenRouter's `reasoning: {effort, max_tokens,
//! exclude, enabled}`, and r1serve's `answer_token_reserve`.

use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;

/// Most tokens a budget or reserve may name; larger values could never
/// take effect within any context and are refused as mistakes.
const MAX_THINKING_TOKENS: i64 = 1 << 24;

/// How hard a client asks the model to think.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effort {
    /// The first of `--reasoning-effort-budgets`.
    Low,
    /// The second.
    Medium,
    /// The third.
    High,
}

impl Effort {
    fn parse(param: &str, value: &Value) -> Result<Self, ApiError> {
        match value.as_str() {
            Some("low") => Ok(Effort::Low),
            Some("medium") => Ok(Effort::Medium),
            Some("high") => Ok(Effort::High),
            _ => Err(ApiError::bad_request(
                param,
                format!("'{param}' must be \"low\", \"medium\" or \"high\", got {value}"),
            )),
        }
    }
}

/// The thinking fields as sent (flattened into the chat request).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct ThinkingFields {
    /// vLLM: most reasoning tokens.
    #[serde(default)]
    pub thinking_token_budget: Option<Value>,
    /// OpenAI: `low`, `medium` or `high`.
    #[serde(default)]
    pub reasoning_effort: Option<Value>,
    /// OpenRouter: `{effort, max_tokens, exclude, enabled}`.
    #[serde(default)]
    pub reasoning: Option<Value>,
    /// Tokens kept for the answer under the token limit.
    #[serde(default)]
    pub answer_token_reserve: Option<Value>,
}

/// What a request asks of its reasoning, checked but not yet resolved
/// against the server's defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThinkingRequest {
    /// Explicit budget in tokens (`thinking_token_budget`,
    /// `reasoning.max_tokens`, or 0 for `reasoning.enabled: false`).
    pub budget: Option<u32>,
    /// Effort level, when no explicit budget is given.
    pub effort: Option<Effort>,
    /// Tokens reserved for the answer.
    pub answer_reserve: Option<u32>,
    /// `reasoning.exclude`: the reasoning is not returned.
    pub exclude: bool,
}

impl ThinkingRequest {
    /// Whether the request asks to bound its reasoning at all.
    pub fn asks_for_control(&self) -> bool {
        self.budget.is_some() || self.effort.is_some() || self.answer_reserve.is_some()
    }
}

fn tokens(param: &str, value: &Value) -> Result<Option<u32>, ApiError> {
    if value.is_null() {
        return Ok(None);
    }
    match value.as_i64() {
        Some(v) if (0..=MAX_THINKING_TOKENS).contains(&v) => Ok(Some(v as u32)),
        _ => Err(ApiError::bad_request(
            param,
            format!(
                "'{param}' must be an integer between 0 and {MAX_THINKING_TOKENS}, got {value}"
            ),
        )),
    }
}

fn flag(param: &str, value: &Value) -> Result<Option<bool>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        other => Err(ApiError::bad_request(
            param,
            format!("'{param}' must be a boolean, got {other}"),
        )),
    }
}

impl ThinkingFields {
    /// Checks the fields; two budgets that disagree are refused rather than
    /// one of them silently winning.
    pub fn validate(&self) -> Result<ThinkingRequest, ApiError> {
        let mut out = ThinkingRequest::default();
        let direct = match &self.thinking_token_budget {
            Some(v) => tokens("thinking_token_budget", v)?,
            None => None,
        };
        let mut effort = match &self.reasoning_effort {
            Some(Value::Null) | None => None,
            Some(v) => Some(Effort::parse("reasoning_effort", v)?),
        };
        let mut routed = None;
        match &self.reasoning {
            None | Some(Value::Null) => {}
            Some(Value::Object(object)) => {
                for (key, value) in object {
                    let param = format!("reasoning.{key}");
                    match key.as_str() {
                        "effort" if !value.is_null() => {
                            let e = Effort::parse(&param, value)?;
                            if effort.is_some_and(|other| other != e) {
                                return Err(ApiError::bad_request(
                                    param,
                                    "'reasoning.effort' and 'reasoning_effort' disagree",
                                ));
                            }
                            effort = Some(e);
                        }
                        "effort" => {}
                        "max_tokens" => routed = routed.or(tokens(&param, value)?),
                        "exclude" => out.exclude = flag(&param, value)?.unwrap_or(false),
                        "enabled" => {
                            if flag(&param, value)? == Some(false) {
                                routed = Some(0);
                            }
                        }
                        _ => {
                            return Err(ApiError::bad_request(
                                param,
                                format!(
                                    "unknown field '{key}' in 'reasoning' (expected effort, \
                                     max_tokens, exclude or enabled)"
                                ),
                            ))
                        }
                    }
                }
            }
            Some(other) => {
                return Err(ApiError::bad_request(
                    "reasoning",
                    format!("'reasoning' must be an object, got {other}"),
                ))
            }
        }
        out.budget = match (direct, routed) {
            (Some(a), Some(b)) if a != b => {
                return Err(ApiError::bad_request(
                    "thinking_token_budget",
                    format!(
                        "'thinking_token_budget' ({a}) and the budget in 'reasoning' ({b}) disagree"
                    ),
                ))
            }
            (a, b) => a.or(b),
        };
        out.effort = effort;
        out.answer_reserve = match &self.answer_token_reserve {
            Some(v) => tokens("answer_token_reserve", v)?,
            None => None,
        };
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(body: Value) -> Result<ThinkingRequest, ApiError> {
        serde_json::from_value::<ThinkingFields>(body)
            .unwrap()
            .validate()
    }

    #[test]
    fn every_dialect_gives_the_same_request() {
        let budget = ThinkingRequest {
            budget: Some(64),
            ..Default::default()
        };
        assert_eq!(check(json!({"thinking_token_budget": 64})).unwrap(), budget);
        assert_eq!(
            check(json!({"reasoning": {"max_tokens": 64}})).unwrap(),
            budget
        );
        let high = check(json!({"reasoning_effort": "high"})).unwrap();
        assert_eq!(high.effort, Some(Effort::High));
        assert_eq!(
            check(json!({"reasoning": {"effort": "high"}})).unwrap(),
            high
        );
        let off = check(json!({"reasoning": {"enabled": false, "exclude": true}})).unwrap();
        assert_eq!((off.budget, off.exclude), (Some(0), true));
        assert!(!check(json!({})).unwrap().asks_for_control());
    }

    #[test]
    fn bad_values_name_their_field() {
        for (body, param) in [
            (
                json!({"thinking_token_budget": -1}),
                "thinking_token_budget",
            ),
            (
                json!({"thinking_token_budget": "8"}),
                "thinking_token_budget",
            ),
            (json!({"reasoning_effort": "extreme"}), "reasoning_effort"),
            (json!({"reasoning": {"effort": 3}}), "reasoning.effort"),
            (
                json!({"reasoning": {"max_tokens": 1.5}}),
                "reasoning.max_tokens",
            ),
            (json!({"reasoning": {"bogus": 1}}), "reasoning.bogus"),
            (json!({"reasoning": "high"}), "reasoning"),
            (json!({"answer_token_reserve": -3}), "answer_token_reserve"),
            (
                json!({"thinking_token_budget": 8, "reasoning": {"max_tokens": 9}}),
                "thinking_token_budget",
            ),
            (
                json!({"reasoning_effort": "low", "reasoning": {"effort": "high"}}),
                "reasoning.effort",
            ),
        ] {
            let error = check(body.clone()).unwrap_err();
            assert_eq!(error.param.as_deref(), Some(param), "{body}");
        }
    }
}
